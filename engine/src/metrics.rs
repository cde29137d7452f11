//! The engine's Prometheus metrics, served on `/metrics` of its REST port: what happened
//! in this process (assignments, finished attempts and their durations by workflow,
//! retries, timeouts) counted as it happens, and the state of the queue and the workers
//! (queue depth by action and priority, active workers, free and used slots) read from the
//! database at each scrape, so every engine process reports the same totals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{Engine, EngineError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AttemptLabels {
    pub workflow: String,
    /// completed, failed, cancelled, timed_out, worker_lost
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    action: String,
    priority: i64,
}

pub(crate) struct EngineMetrics {
    registry: Registry,
    pub assignments: Counter,
    pub retries: Counter,
    pub timeouts: Counter,
    pub durations: Family<AttemptLabels, Histogram>,
    queue_depth: Family<QueueLabels, Gauge>,
    retry_waiting: Gauge,
    workers_active: Gauge,
    slots_free: Gauge,
    slots_used: Gauge,
    draining: Gauge,
}

impl EngineMetrics {
    pub fn new() -> EngineMetrics {
        let mut registry = Registry::with_prefix("sfp_engine");
        let assignments = Counter::default();
        registry.register("assignments", "Task attempts assigned to workers by this process", assignments.clone());
        let retries = Counter::default();
        registry.register("retries", "Failed attempts queued again because retries were left", retries.clone());
        let timeouts = Counter::default();
        registry.register("timeouts", "Attempts that exceeded their execution timeout", timeouts.clone());
        let durations = Family::<AttemptLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0])
        });
        registry.register(
            "task_duration_seconds",
            "Duration of finished task attempts (assignment to result), by workflow and outcome",
            durations.clone(),
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register("queue_depth", "Tasks waiting for a worker, by action and priority", queue_depth.clone());
        let retry_waiting = Gauge::default();
        registry.register("retry_waiting", "Retries waiting for their backoff to pass", retry_waiting.clone());
        let workers_active = Gauge::default();
        registry.register("workers_active", "Workers with a live stream", workers_active.clone());
        let slots_free = Gauge::default();
        registry.register("slots_free", "Free slots of active workers", slots_free.clone());
        let slots_used = Gauge::default();
        registry.register("slots_used", "Slots of active workers held by running tasks", slots_used.clone());
        let draining = Gauge::default();
        registry.register("draining", "1 while this process assigns no new work (drain)", draining.clone());
        EngineMetrics {
            registry,
            assignments,
            retries,
            timeouts,
            durations,
            queue_depth,
            retry_waiting,
            workers_active,
            slots_free,
            slots_used,
            draining,
        }
    }
}

impl Engine {
    pub(crate) fn metrics(&self) -> &EngineMetrics {
        &self.inner.metrics
    }

    /// Counts finished attempts (workflow, outcome, when the attempt started) and retries.
    pub(crate) fn observe(&self, attempts: Vec<(String, &'static str, chrono::DateTime<chrono::Utc>)>, retried: usize) {
        let m = self.metrics();
        let now = chrono::Utc::now();
        for (workflow, outcome, started) in attempts {
            let seconds = (now - started).to_std().unwrap_or_default().as_secs_f64();
            m.durations.get_or_create(&AttemptLabels { workflow, outcome: outcome.into() }).observe(seconds);
            if outcome == "timed_out" {
                m.timeouts.inc();
            }
        }
        m.retries.inc_by(retried as u64);
    }

    /// The Prometheus text exposition, with the queue and worker gauges read now.
    pub async fn render_metrics(&self) -> Result<String, EngineError> {
        let tenant = self.tenant_id();
        let depth: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT action, priority, count(*) FROM engine.queue_item WHERE tenant_id = $1 GROUP BY action, priority",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        let (active, slots, used, retrying): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM engine.worker WHERE tenant_id = $1 AND is_active), \
                    (SELECT coalesce(sum(slots), 0)::bigint FROM engine.worker WHERE tenant_id = $1 AND is_active), \
                    (SELECT coalesce(sum(rt.slot_units), 0)::bigint FROM engine.task_runtime rt \
                       JOIN engine.worker w ON w.id = rt.worker_id WHERE w.tenant_id = $1 AND w.is_active), \
                    (SELECT count(*) FROM engine.retry_queue_item r JOIN engine.task t ON t.id = r.task_id \
                       WHERE t.tenant_id = $1)",
        )
        .bind(tenant)
        .fetch_one(self.pool())
        .await?;
        let m = self.metrics();
        m.queue_depth.clear();
        for (action, priority, count) in depth {
            m.queue_depth.get_or_create(&QueueLabels { action, priority: i64::from(priority) }).set(count);
        }
        m.retry_waiting.set(retrying);
        m.workers_active.set(active);
        m.slots_used.set(used);
        m.slots_free.set((slots - used).max(0));
        m.draining.set(i64::from(self.is_draining()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry)
            .map_err(|_| EngineError::Unavailable("the metrics could not be encoded".into()))?;
        Ok(out)
    }
}
