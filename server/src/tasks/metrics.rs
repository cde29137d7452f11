//! Task metrics on `/metrics`: tasks by type and status, the queue by priority (both read
//! from the database at each scrape), and how long finished tasks took (observed by the
//! follower when a task ends).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub r#type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub r#type: String,
    pub outcome: String,
}

#[derive(Clone)]
pub struct TaskMetrics {
    tasks: Family<StateLabels, Gauge>,
    queued: Family<PriorityLabels, Gauge>,
    durations: Family<OutcomeLabels, Histogram>,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        Self {
            tasks: Family::default(),
            queued: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0])
            }),
        }
    }
}

impl TaskMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("tasks", "Tasks by type and status", self.tasks.clone());
        registry.register("tasks_queued", "Tasks waiting for a worker, by priority class", self.queued.clone());
        registry.register(
            "task_duration_seconds",
            "Time from start to end of finished tasks, by type and outcome",
            self.durations.clone(),
        );
    }

    pub fn observe(&self, task_type: &str, outcome: &str, seconds: f64) {
        self.durations
            .get_or_create(&OutcomeLabels { r#type: task_type.to_string(), outcome: outcome.to_string() })
            .observe(seconds.max(0.0));
    }

    /// Reads the gauges from the database.
    pub async fn refresh(&self, pool: &PgPool) -> sqlx::Result<()> {
        let states: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT type, status, count(*) FROM app.task GROUP BY type, status").fetch_all(pool).await?;
        let queued: Vec<(String, i64)> =
            sqlx::query_as("SELECT priority, count(*) FROM app.task WHERE status = 'pending' GROUP BY priority")
                .fetch_all(pool)
                .await?;
        self.tasks.clear();
        for (task_type, status, n) in states {
            self.tasks.get_or_create(&StateLabels { r#type: task_type, status }).set(n);
        }
        self.queued.clear();
        for p in ["critical", "normal", "batch"] {
            let n = queued.iter().find(|(q, _)| q == p).map_or(0, |(_, n)| *n);
            self.queued.get_or_create(&PriorityLabels { priority: p.to_string() }).set(n);
        }
        Ok(())
    }
}
