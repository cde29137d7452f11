//! What workers report about their tasks. Every report is one transaction: the attempt's
//! runtime row is the proof that the report is current; reports for other attempts are
//! ignored (a late event from a timed-out or re-queued attempt changes nothing).

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::model::retry_backoff;

/// A worker's report about one attempt.
#[derive(Debug, Clone)]
pub struct StepEvent {
    pub worker_id: Option<Uuid>,
    pub task_id: Uuid,
    pub retry_count: Option<i32>,
    pub kind: StepEventKind,
}

#[derive(Debug, Clone)]
pub enum StepEventKind {
    Started,
    Acknowledged,
    Completed { payload: String },
    Failed { error: String, should_not_retry: bool },
    Cancelled,
}

/// What a report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    /// The attempt is not current (or the task does not exist any more): nothing changed.
    Stale,
}

#[derive(sqlx::FromRow)]
struct Attempt {
    run_id: Uuid,
    readable_id: String,
    retry_count: i32,
    app_retries: i32,
    retries: i32,
    backoff_factor: Option<f64>,
    backoff_max_seconds: Option<i32>,
    worker_id: Uuid,
    slot_units: i32,
}

impl Engine {
    pub async fn step_event(&self, event: StepEvent) -> Result<Outcome, EngineError> {
        match event.kind {
            StepEventKind::Acknowledged => Ok(Outcome::Recorded),
            StepEventKind::Started => self.started(&event).await,
            StepEventKind::Completed { ref payload } => {
                let parsed =
                    if payload.trim().is_empty() { Ok(Value::Null) } else { serde_json::from_str::<Value>(payload) };
                match parsed {
                    Ok(output) => self.finish(&event, Finish::Completed(output)).await,
                    // Hatchet turns an output that is not JSON into a failure.
                    Err(e) => {
                        let error = format!("the task's output is not valid JSON: {e}");
                        self.finish(&event, Finish::Failed { error, should_not_retry: true }).await
                    }
                }
            }
            StepEventKind::Failed { ref error, should_not_retry } => {
                self.finish(&event, Finish::Failed { error: error.clone(), should_not_retry }).await
            }
            StepEventKind::Cancelled => self.finish(&event, Finish::Cancelled).await,
        }
    }

    async fn started(&self, event: &StepEvent) -> Result<Outcome, EngineError> {
        // Duplicate STARTED events (Python sends two) only refresh the same row.
        let done = sqlx::query(
            "INSERT INTO engine.task_event (task_id, retry_count, event_type, worker_id) \
             SELECT t.id, t.retry_count, 'STARTED', $3 FROM engine.task t \
             JOIN engine.task_runtime rt ON rt.task_id = t.id AND rt.retry_count = coalesce($2, t.retry_count) \
             WHERE t.id = $1 AND t.tenant_id = $4 \
             ON CONFLICT (task_id, retry_count) WHERE event_type = 'STARTED' DO NOTHING",
        )
        .bind(event.task_id)
        .bind(event.retry_count)
        .bind(event.worker_id)
        .bind(self.tenant_id())
        .execute(self.pool())
        .await?;
        Ok(if done.rows_affected() > 0 { Outcome::Recorded } else { Outcome::Stale })
    }

    async fn finish(&self, event: &StepEvent, finish: Finish) -> Result<Outcome, EngineError> {
        let mut tx = self.pool().begin().await?;
        let Some(attempt) = lock_attempt(&mut tx, self.tenant_id(), event.task_id, event.retry_count).await? else {
            tx.commit().await?;
            return Ok(Outcome::Stale);
        };
        sqlx::query("DELETE FROM engine.task_runtime WHERE task_id = $1 AND retry_count = $2")
            .bind(event.task_id)
            .bind(attempt.retry_count)
            .execute(&mut *tx)
            .await?;
        let finished_run = match finish {
            Finish::Completed(output) => {
                record(&mut tx, event.task_id, attempt.retry_count, "COMPLETED", attempt.worker_id, "").await?;
                sqlx::query(
                    "UPDATE engine.task SET status = 'COMPLETED', output = $2, error = NULL, finished_at = now() WHERE id = $1",
                )
                .bind(event.task_id)
                .bind(&output)
                .execute(&mut *tx)
                .await?;
                release_children(&mut tx, self.tenant_id(), attempt.run_id, &attempt.readable_id).await?;
                finalize_run(&mut tx, attempt.run_id).await?
            }
            Finish::Failed { error, should_not_retry } => {
                let can_retry = !should_not_retry && attempt.app_retries < attempt.retries;
                if can_retry {
                    record(&mut tx, event.task_id, attempt.retry_count, "FAILED", attempt.worker_id, &error).await?;
                    let next = attempt.retry_count + 1;
                    let backoff =
                        retry_backoff(attempt.backoff_factor, attempt.backoff_max_seconds, attempt.app_retries + 1);
                    requeue(&mut tx, self.tenant_id(), event.task_id, next, backoff, &error, true).await?;
                    None
                } else {
                    record(&mut tx, event.task_id, attempt.retry_count, "FAILED", attempt.worker_id, &error).await?;
                    sqlx::query(
                        "UPDATE engine.task SET status = 'FAILED', error = $2, finished_at = now() WHERE id = $1",
                    )
                    .bind(event.task_id)
                    .bind(&error)
                    .execute(&mut *tx)
                    .await?;
                    cancel_descendants(&mut tx, attempt.run_id, &attempt.readable_id, "a parent task failed").await?;
                    finalize_run(&mut tx, attempt.run_id).await?
                }
            }
            Finish::Cancelled => {
                record(&mut tx, event.task_id, attempt.retry_count, "CANCELLED", attempt.worker_id, "").await?;
                sqlx::query("UPDATE engine.task SET status = 'CANCELLED', finished_at = now() WHERE id = $1")
                    .bind(event.task_id)
                    .execute(&mut *tx)
                    .await?;
                cancel_descendants(&mut tx, attempt.run_id, &attempt.readable_id, "a parent task was cancelled")
                    .await?;
                finalize_run(&mut tx, attempt.run_id).await?
            }
        };
        tx.commit().await?;
        self.release_slots(attempt.worker_id, attempt.slot_units);
        if let Some(run) = finished_run {
            self.announce_finished(&[run]);
        }
        Ok(Outcome::Recorded)
    }

    /// Stores a log line of a task.
    pub async fn put_log(
        &self,
        task_id: Uuid,
        retry: Option<i32>,
        level: &str,
        message: &str,
        metadata: Value,
    ) -> Result<(), EngineError> {
        let done = sqlx::query(
            "INSERT INTO engine.log_line (task_id, retry_count, level, message, metadata) \
             SELECT t.id, coalesce($2, t.retry_count), $3, $4, $5 FROM engine.task t WHERE t.id = $1 AND t.tenant_id = $6",
        )
        .bind(task_id)
        .bind(retry)
        .bind(level)
        .bind(message)
        .bind(metadata)
        .bind(self.tenant_id())
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(EngineError::NotFound(format!("task run {task_id} not found")));
        }
        Ok(())
    }
}

enum Finish {
    Completed(Value),
    Failed { error: String, should_not_retry: bool },
    Cancelled,
}

/// Locks the task if `retry_count` (or, when absent, its current attempt) holds a runtime row.
async fn lock_attempt(
    tx: &mut PgConnection,
    tenant: Uuid,
    task_id: Uuid,
    retry_count: Option<i32>,
) -> Result<Option<Attempt>, EngineError> {
    let attempt = sqlx::query_as(
        "SELECT t.run_id, t.readable_id, rt.retry_count, t.app_retries, s.retries, s.backoff_factor, \
                s.backoff_max_seconds, rt.worker_id, rt.slot_units \
         FROM engine.task t \
         JOIN engine.step s ON s.id = t.step_id \
         JOIN engine.task_runtime rt ON rt.task_id = t.id AND rt.retry_count = coalesce($2, t.retry_count) \
         WHERE t.id = $1 AND t.tenant_id = $3 \
         FOR UPDATE OF t",
    )
    .bind(task_id)
    .bind(retry_count)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(attempt)
}

async fn record(
    tx: &mut PgConnection,
    task_id: Uuid,
    retry_count: i32,
    kind: &str,
    worker: Uuid,
    message: &str,
) -> Result<(), EngineError> {
    sqlx::query(
        "INSERT INTO engine.task_event (task_id, retry_count, event_type, worker_id, message) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(task_id)
    .bind(retry_count)
    .bind(kind)
    .bind(worker)
    .bind(message)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Queues attempt `next` of a task, now or after `backoff`. `app_failure` spends one of the
/// task's retries (worker loss and timeouts handled elsewhere may not).
pub(crate) async fn requeue(
    tx: &mut PgConnection,
    tenant: Uuid,
    task_id: Uuid,
    next: i32,
    backoff: Option<std::time::Duration>,
    error: &str,
    app_failure: bool,
) -> Result<(), EngineError> {
    sqlx::query(
        "UPDATE engine.task SET status = 'QUEUED', retry_count = $2, error = $3, worker_id = NULL, queued_at = now(), \
           app_retries = app_retries + CASE WHEN $4 THEN 1 ELSE 0 END WHERE id = $1",
    )
    .bind(task_id)
    .bind(next)
    .bind(error)
    .bind(app_failure)
    .execute(&mut *tx)
    .await?;
    match backoff {
        Some(delay) if !delay.is_zero() => {
            sqlx::query(
                "INSERT INTO engine.retry_queue_item (task_id, retry_count, retry_after) \
                 VALUES ($1, $2, now() + make_interval(secs => $3))",
            )
            .bind(task_id)
            .bind(next)
            .bind(delay.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        }
        _ => {
            sqlx::query(
                "INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
                 SELECT $1, t.id, $3, t.action, t.priority, now() + make_interval(secs => s.schedule_timeout_ms / 1000.0) \
                 FROM engine.task t JOIN engine.step s ON s.id = t.step_id WHERE t.id = $2",
            )
            .bind(tenant)
            .bind(task_id)
            .bind(next)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// A parent completed: children waiting only for it become queued.
async fn release_children(tx: &mut PgConnection, tenant: Uuid, run_id: Uuid, parent: &str) -> Result<(), EngineError> {
    sqlx::query(
        "WITH ready AS ( \
           UPDATE engine.task c SET pending_parents = c.pending_parents - 1, \
             status = CASE WHEN c.pending_parents = 1 THEN 'QUEUED' ELSE c.status END, \
             queued_at = CASE WHEN c.pending_parents = 1 THEN now() ELSE c.queued_at END \
           FROM engine.step s \
           WHERE s.id = c.step_id AND c.run_id = $1 AND c.status = 'PENDING' AND $2 = ANY(s.parents) \
           RETURNING c.id, c.action, c.priority, c.pending_parents, s.schedule_timeout_ms) \
         INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
         SELECT $3, id, 0, action, priority, now() + make_interval(secs => schedule_timeout_ms / 1000.0) \
         FROM ready WHERE pending_parents = 0",
    )
    .bind(run_id)
    .bind(parent)
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Tasks that can never run because `task` did not complete.
pub(crate) async fn cancel_descendants(
    tx: &mut PgConnection,
    run_id: Uuid,
    task: &str,
    why: &str,
) -> Result<(), EngineError> {
    sqlx::query(
        "WITH RECURSIVE below(readable_id) AS ( \
           SELECT $2::text \
           UNION \
           SELECT c.readable_id FROM engine.task c JOIN engine.step s ON s.id = c.step_id \
           JOIN below b ON b.readable_id = ANY(s.parents) WHERE c.run_id = $1) \
         UPDATE engine.task SET status = 'CANCELLED', error = $3, finished_at = now() \
         WHERE run_id = $1 AND status = 'PENDING' AND readable_id IN (SELECT readable_id FROM below)",
    )
    .bind(run_id)
    .bind(task)
    .bind(why)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// When every task of the run is final, the run is too: FAILED if a task failed, CANCELLED if
/// one was cancelled, COMPLETED otherwise. Returns the run when it just finished.
pub(crate) async fn finalize_run(tx: &mut PgConnection, run_id: Uuid) -> Result<Option<Uuid>, EngineError> {
    let finished: Option<Uuid> = sqlx::query_scalar(
        "WITH s AS ( \
           SELECT count(*) FILTER (WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')) AS open, \
                  bool_or(status = 'FAILED') AS failed, bool_or(status = 'CANCELLED') AS cancelled, \
                  (array_agg(error ORDER BY finished_at) FILTER (WHERE status = 'FAILED'))[1] AS error \
           FROM engine.task WHERE run_id = $1) \
         UPDATE engine.workflow_run r SET \
           status = CASE WHEN s.failed THEN 'FAILED' WHEN s.cancelled THEN 'CANCELLED' ELSE 'COMPLETED' END, \
           error = s.error, finished_at = now(), started_at = coalesce(r.started_at, now()) \
         FROM s WHERE r.id = $1 AND s.open = 0 AND r.finished_at IS NULL \
         RETURNING r.id",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(finished)
}

impl Engine {
    /// The worker keeps running the task but gives its slot back (a long wait inside a task).
    pub async fn release_slot(&self, task_id: Uuid) -> Result<(), EngineError> {
        let released: Option<(Uuid, i32)> = sqlx::query_as(
            "WITH current AS ( \
               SELECT rt.task_id, rt.retry_count, rt.worker_id, rt.slot_units FROM engine.task_runtime rt \
               JOIN engine.task t ON t.id = rt.task_id AND t.retry_count = rt.retry_count \
               WHERE rt.task_id = $1 AND t.tenant_id = $2 FOR UPDATE OF rt) \
             UPDATE engine.task_runtime rt SET slot_units = 0 FROM current c \
             WHERE rt.task_id = c.task_id AND rt.retry_count = c.retry_count \
             RETURNING c.worker_id, c.slot_units",
        )
        .bind(task_id)
        .bind(self.tenant_id())
        .fetch_optional(self.pool())
        .await?;
        let Some((worker_id, units)) = released else {
            return Err(EngineError::NotFound(format!("task run {task_id} is not running")));
        };
        if units > 0 {
            self.release_slots(worker_id, units);
        }
        Ok(())
    }

    /// Pushes the running attempt's execution deadline `by` further; returns the new deadline.
    pub async fn refresh_timeout(
        &self,
        task_id: Uuid,
        by: std::time::Duration,
    ) -> Result<chrono::DateTime<chrono::Utc>, EngineError> {
        let deadline: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "UPDATE engine.task_runtime rt SET timeout_at = rt.timeout_at + make_interval(secs => $3) \
             FROM engine.task t \
             WHERE rt.task_id = $1 AND t.id = rt.task_id AND rt.retry_count = t.retry_count AND t.tenant_id = $2 \
             RETURNING rt.timeout_at",
        )
        .bind(task_id)
        .bind(self.tenant_id())
        .bind(by.as_secs_f64())
        .fetch_optional(self.pool())
        .await?;
        deadline.ok_or_else(|| EngineError::NotFound(format!("task run {task_id} is not running")))
    }
}
