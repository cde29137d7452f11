//! Tasks → workflows. A submitted task is a row in `app.task` first (so nothing accepted is
//! lost), then a run, schedule or cron on the engine. A background loop dispatches what
//! could not be dispatched at once, and follows the runs: their states from the engine's
//! run list, their results from GetRunDetails, and live progress from the workers' stream
//! events while they run.

pub mod link;
pub mod metrics;
mod reconcile;
pub mod record;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sfp_workflows::{SourcePolicy, StepInput, TaskType};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use link::{EngineLink, LinkError};
pub use record::{Priority, ScheduleType, TaskRow, status_of_run};

/// The task service every handler shares.
#[derive(Clone)]
pub struct Tasks {
    pub pool: PgPool,
    pub link: Option<EngineLink>,
    pub sources: SourcePolicy,
    pub metrics: metrics::TaskMetrics,
    wake: Arc<Notify>,
    /// Whether the task workflows are registered with the engine (a task submitted before the
    /// background loop got there registers them itself instead of failing on an unknown workflow).
    registered: Arc<std::sync::atomic::AtomicBool>,
}

impl Tasks {
    pub fn new(pool: PgPool, link: Option<EngineLink>, sources: SourcePolicy) -> Self {
        Self {
            pool,
            link,
            sources,
            metrics: metrics::TaskMetrics::default(),
            wake: Arc::new(Notify::new()),
            registered: Arc::default(),
        }
    }

    /// Has the background loop look at the tasks now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Hands a recorded task to the engine. On success the row says how; on failure it stays
    /// undispatched and the background loop tries again.
    pub async fn dispatch(&self, task: &TaskRow) -> Result<(), LinkError> {
        let Some(link) = &self.link else {
            return Err(LinkError::Unreachable("this server runs without an engine".into()));
        };
        if !self.registered.load(std::sync::atomic::Ordering::SeqCst) {
            link.register_workflows().await?;
            self.registered.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let task_type: TaskType = task.task_type.parse().map_err(LinkError::Refused)?;
        let input = serde_json::to_value(StepInput {
            task_id: task.id,
            task_type,
            data: task.data.clone(),
            timeout_seconds: task.timeout_seconds as u64,
            retries: task.retries as u32,
        })
        .unwrap_or_default();
        let priority = Priority::parse(&task.priority).map_or(2, Priority::engine_priority);
        let result = match ScheduleType::parse(&task.schedule_type) {
            Some(ScheduleType::Scheduled) => {
                let at = task.scheduled_for.unwrap_or_else(Utc::now);
                link.schedule(task_type, task.id, &input, priority, at).await.map(|s| (None, Some(s)))
            }
            Some(ScheduleType::Recurring) => {
                let cron = task.cron.clone().unwrap_or_default();
                link.create_cron(task_type, task.id, &input, priority, &cron).await.map(|c| (None, Some(c)))
            }
            _ => {
                // A run may exist from an earlier try whose answer was lost: never start a second.
                match self.existing_run(link, task).await? {
                    Some(run) => Ok((Some(run), None)),
                    None => link.trigger(task_type, task.id, &input, priority).await.map(|r| (Some(r), None)),
                }
            }
        };
        match result {
            Ok((run, schedule)) => {
                sqlx::query(
                    "UPDATE app.task SET dispatched_at = now(), dispatch_error = NULL, run_id = COALESCE($2, run_id), \
                     engine_schedule = COALESCE($3, engine_schedule), updated_at = now() WHERE id = $1",
                )
                .bind(task.id)
                .bind(run)
                .bind(schedule)
                .execute(&self.pool)
                .await
                .map_err(|e| LinkError::Unexpected(e.to_string()))?;
                self.wake();
                Ok(())
            }
            Err(e) => {
                let refused = matches!(e, LinkError::Refused(_));
                sqlx::query(
                    "UPDATE app.task SET dispatch_error = $2, updated_at = now(), \
                     status = CASE WHEN $3 THEN 'failed' ELSE status END, \
                     error = CASE WHEN $3 THEN jsonb_build_object('message', $2::text) ELSE error END, \
                     finished_at = CASE WHEN $3 THEN now() ELSE finished_at END \
                     WHERE id = $1",
                )
                .bind(task.id)
                .bind(e.to_string())
                .bind(refused)
                .execute(&self.pool)
                .await
                .map_err(|e| LinkError::Unexpected(e.to_string()))?;
                Err(e)
            }
        }
    }

    async fn existing_run(&self, link: &EngineLink, task: &TaskRow) -> Result<Option<Uuid>, LinkError> {
        if task.dispatch_error.is_none() {
            return Ok(None); // first try
        }
        let (runs, _) = link.runs_since(task.created_at - chrono::Duration::minutes(1), Some(task.id), 0, 1).await?;
        Ok(runs.first().map(|r| r.run_id))
    }

    /// The background loop: registers the workflows, then dispatches and follows tasks until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(link) = self.link.clone() else { return };
        let mut backoff = Duration::from_millis(250);
        loop {
            match link.register_workflows().await {
                Ok(()) => {
                    self.registered.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot register the task workflows yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::info!("task workflows registered");
        let mut follower = reconcile::Follower::new(self.clone(), link);
        loop {
            if let Err(e) = follower.tick().await {
                tracing::warn!(error = %e, "following tasks failed; trying again");
            }
            let pause = if follower.has_open() { Duration::from_millis(500) } else { Duration::from_secs(5) };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        follower.stop().await;
    }
}

/// The error body of a task: what the step reported.
pub fn error_json(message: &str) -> Value {
    json!({ "message": message })
}

/// When a row counts as finished.
pub fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

pub type Timestamp = DateTime<Utc>;
