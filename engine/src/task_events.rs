//! What workers report about their tasks, and the task-level writes shared by the report
//! path (`reports`) and the maintenance loops. The attempt's runtime row is the proof that a
//! report is current; reports for other attempts are ignored (a late event from a timed-out
//! or re-queued attempt changes nothing).

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};

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
    Completed {
        payload: String,
    },
    Failed {
        error: String,
        should_not_retry: bool,
    },
    Cancelled,
    /// The engine's own verdict: the attempt ran past its deadline (retried if it may).
    TimedOut {
        error: String,
    },
    /// The engine's own verdict: the attempt's worker is gone (or never started it); it
    /// runs again elsewhere without spending a retry.
    WorkerLost {
        reason: String,
    },
}

/// What a report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    /// The attempt is not current (or the task does not exist any more): nothing changed.
    Stale,
}

impl Engine {
    /// Stores a chunk a task streams (`PutStreamEvent`) and wakes the run's event streams.
    pub async fn put_stream_chunk(
        &self,
        task_id: Uuid,
        payload: &[u8],
        event_index: Option<i64>,
    ) -> Result<(), EngineError> {
        let run: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO engine.task_event (task_id, retry_count, event_type, worker_id, payload, event_index) \
             SELECT t.id, t.retry_count, 'STREAM', t.worker_id, $2, $3 FROM engine.task t \
             WHERE t.id = $1 AND t.tenant_id = $4 \
             RETURNING (SELECT run_id FROM engine.task WHERE id = $1)",
        )
        .bind(task_id)
        .bind(payload)
        .bind(event_index)
        .bind(self.tenant_id())
        .fetch_optional(self.pool())
        .await?;
        let run = run.ok_or_else(|| EngineError::NotFound(format!("task run {task_id} not found")))?;
        self.announce_activity([run]);
        Ok(())
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
        .bind(level.replace('\0', ""))
        .bind(message.replace('\0', "\u{FFFD}"))
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
