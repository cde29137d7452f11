//! Cancelling and replaying tasks, named by task or run id or chosen by a filter
//! (v1.AdminService CancelTasks / ReplayTasks and their REST twins).
//!
//! Cancel: waiting tasks are cancelled at once; running ones go through the locked report
//! path (their runtime row goes, the slot is freed, a late report is stale) and their worker
//! is told to stop. Replay: a finished task and everything below it run again as a new
//! attempt; completed parents keep their outputs, so a pipeline resumes at the step that
//! failed.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::sweeper::{RUNNING_ATTEMPT, RunningAttempt};
use crate::task_events::{Outcome, StepEvent, StepEventKind, cancel_descendants};

/// Which tasks: ids of tasks or runs, and/or a filter over runs.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<Uuid>,
    pub filter: Option<Filter>,
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    /// Run statuses (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED); empty: any.
    pub statuses: Vec<String>,
    pub workflow_ids: Vec<Uuid>,
    /// `key:value` pairs the run's additional metadata must all have.
    pub additional_metadata: Vec<String>,
}

impl Engine {
    async fn select(&self, selection: &Selection, task_statuses: &[&str]) -> Result<Vec<Uuid>, EngineError> {
        let statuses: Vec<String> = task_statuses.iter().map(|s| s.to_string()).collect();
        let (use_filter, since, until, run_statuses, workflows, metadata) = match &selection.filter {
            Some(f) => {
                let mut meta = Map::new();
                for pair in &f.additional_metadata {
                    let (k, v) = pair.split_once(':').ok_or_else(|| {
                        EngineError::InvalidArgument(format!("additional metadata filter {pair:?} is not key:value"))
                    })?;
                    meta.insert(k.to_owned(), Value::String(v.to_owned()));
                }
                (true, Some(f.since), f.until, f.statuses.clone(), f.workflow_ids.clone(), Value::Object(meta))
            }
            None => (false, None, None, Vec::new(), Vec::new(), Value::Object(Map::new())),
        };
        if !use_filter && selection.ids.is_empty() {
            return Err(EngineError::InvalidArgument("name the tasks or runs, or give a filter".into()));
        }
        let ids = sqlx::query_scalar(
            "SELECT t.id FROM engine.task t JOIN engine.workflow_run r ON r.id = t.run_id \
             WHERE t.tenant_id = $1 AND t.status = ANY($2) AND ( \
               t.id = ANY($3) OR t.run_id = ANY($3) OR ($4 AND r.created_at >= $5 \
                 AND ($6::timestamptz IS NULL OR r.created_at <= $6) \
                 AND (cardinality($7::text[]) = 0 OR r.status = ANY($7)) \
                 AND (cardinality($8::uuid[]) = 0 OR r.workflow_id = ANY($8)) \
                 AND r.additional_metadata @> $9)) \
             ORDER BY t.run_id, t.task_number LIMIT 10000",
        )
        .bind(self.tenant_id())
        .bind(&statuses)
        .bind(&selection.ids)
        .bind(use_filter)
        .bind(since)
        .bind(until)
        .bind(&run_statuses)
        .bind(&workflows)
        .bind(&metadata)
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// Cancels the selected tasks that have not finished; returns the ids cancelled.
    pub async fn cancel_tasks(&self, selection: &Selection) -> Result<Vec<Uuid>, EngineError> {
        let targets = self.select(selection, &["PENDING", "QUEUED", "RUNNING"]).await?;
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut cancelled = Vec::new();

        // Waiting tasks: cancelled in one transaction with their queue and retry items.
        let mut tx = self.pool().begin().await?;
        lock_runs_of(&mut tx, &targets).await?;
        let waiting: Vec<(Uuid, Uuid, String, i32)> = sqlx::query_as(
            "UPDATE engine.task SET status = 'CANCELLED', error = 'cancelled', finished_at = now() \
             WHERE id = ANY($1) AND status IN ('PENDING', 'QUEUED') \
             RETURNING id, run_id, readable_id, retry_count",
        )
        .bind(&targets)
        .fetch_all(&mut *tx)
        .await?;
        let waiting_ids: Vec<Uuid> = waiting.iter().map(|w| w.0).collect();
        sqlx::query("DELETE FROM engine.queue_item WHERE task_id = ANY($1)")
            .bind(&waiting_ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM engine.retry_queue_item WHERE task_id = ANY($1)")
            .bind(&waiting_ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO engine.task_event (task_id, retry_count, event_type, message) \
             SELECT t, r, 'CANCELLED', 'cancelled' FROM unnest($1::uuid[], $2::int[]) AS x(t, r)",
        )
        .bind(&waiting_ids)
        .bind(waiting.iter().map(|w| w.3).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        for (_, run, readable, _) in &waiting {
            cancel_descendants(&mut tx, *run, readable, "a parent task was cancelled").await?;
        }
        let runs: Vec<Uuid> = waiting.iter().map(|w| w.1).collect();
        let finished = crate::reports::finalize_runs(&mut tx, &runs).await?;
        tx.commit().await?;
        cancelled.extend(waiting_ids);
        if !finished.is_empty() {
            self.announce_finished(&finished);
        }
        self.announce_activity(runs);

        // Running tasks: the same path as a worker's CANCELLED report; then the worker stops.
        let running: Vec<RunningAttempt> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUNNING_ATTEMPT} \
             FROM engine.task_runtime rt JOIN engine.task t ON t.id = rt.task_id AND t.retry_count = rt.retry_count \
             JOIN engine.step s ON s.id = t.step_id WHERE rt.task_id = ANY($1)"
        )))
        .bind(&targets)
        .fetch_all(self.pool())
        .await?;
        if !running.is_empty() {
            let events: Vec<StepEvent> = running
                .iter()
                .map(|r| StepEvent {
                    worker_id: Some(r.worker_id),
                    task_id: r.task_id,
                    retry_count: Some(r.retry_count),
                    kind: StepEventKind::Cancelled,
                })
                .collect();
            let outcomes = self.apply(&events).await?;
            for (r, outcome) in running.iter().zip(outcomes) {
                if outcome == Outcome::Recorded {
                    self.send_cancel(r);
                    cancelled.push(r.task_id);
                }
            }
        }
        tracing::info!(tasks = cancelled.len(), "tasks cancelled");
        Ok(cancelled)
    }

    /// Runs the selected finished tasks, and every task below them, again as new attempts.
    pub async fn replay_tasks(&self, selection: &Selection) -> Result<Vec<Uuid>, EngineError> {
        let targets = self.select(selection, &["COMPLETED", "FAILED", "CANCELLED"]).await?;
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin().await?;
        lock_runs_of(&mut tx, &targets).await?;
        // Asking for a run replays what did not complete; asking for a task replays that task.
        let reset: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "WITH RECURSIVE chosen AS ( \
               SELECT t.id, t.run_id, t.readable_id FROM engine.task t \
               WHERE t.id = ANY($1) AND (t.id = ANY($2) OR t.status <> 'COMPLETED')), \
             below(id, run_id, readable_id) AS ( \
               SELECT id, run_id, readable_id FROM chosen \
               UNION \
               SELECT c.id, c.run_id, c.readable_id FROM engine.task c JOIN engine.step s ON s.id = c.step_id \
               JOIN below b ON b.run_id = c.run_id AND b.readable_id = ANY(s.parents)) \
             UPDATE engine.task t SET status = 'PENDING', output = NULL, error = NULL, finished_at = NULL, \
               started_at = NULL, worker_id = NULL, retry_count = t.retry_count + 1, app_retries = 0 \
             WHERE t.id IN (SELECT id FROM below) AND t.status IN ('COMPLETED', 'FAILED', 'CANCELLED') \
             RETURNING t.id, t.run_id",
        )
        .bind(&targets)
        .bind(&selection.ids)
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = reset.iter().map(|r| r.0).collect();
        let runs: Vec<Uuid> = reset.iter().map(|r| r.1).collect();
        // Each reset task waits for its parents that have not completed; the rest queue now.
        sqlx::query(
            "WITH counts AS ( \
               SELECT c.id, (SELECT count(*) FROM engine.task p WHERE p.run_id = c.run_id \
                 AND p.readable_id = ANY(s.parents) AND p.status <> 'COMPLETED')::int AS open \
               FROM engine.task c JOIN engine.step s ON s.id = c.step_id WHERE c.id = ANY($1)), \
             ready AS ( \
               UPDATE engine.task t SET pending_parents = counts.open, \
                 status = CASE WHEN counts.open = 0 THEN 'QUEUED' ELSE 'PENDING' END, \
                 queued_at = CASE WHEN counts.open = 0 THEN now() END \
               FROM counts WHERE t.id = counts.id RETURNING t.id, t.retry_count, t.action, t.priority, t.step_id, t.status) \
             INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
             SELECT $2, r.id, r.retry_count, r.action, r.priority, now() + make_interval(secs => s.schedule_timeout_ms / 1000.0) \
             FROM ready r JOIN engine.step s ON s.id = r.step_id WHERE r.status = 'QUEUED'",
        )
        .bind(&ids)
        .bind(self.tenant_id())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO engine.task_event (task_id, retry_count, event_type, message) \
             SELECT id, retry_count, 'REPLAYED', 'replayed' FROM engine.task WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE engine.workflow_run r SET finished_at = NULL, error = NULL, \
               status = CASE WHEN EXISTS (SELECT 1 FROM engine.task t WHERE t.run_id = r.id AND t.status = 'COMPLETED') \
                             THEN 'RUNNING' ELSE 'QUEUED' END \
             WHERE r.id = ANY($1)",
        )
        .bind(&runs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wake_assigner();
        self.announce_queued();
        self.announce_activity(runs);
        tracing::info!(tasks = ids.len(), "tasks replayed");
        Ok(ids)
    }
}

/// Locks the runs of these tasks, in id order (the order every writer of runs uses).
async fn lock_runs_of(tx: &mut sqlx::PgConnection, tasks: &[Uuid]) -> Result<(), EngineError> {
    sqlx::query(
        "SELECT r.id FROM engine.workflow_run r WHERE r.id IN \
           (SELECT run_id FROM engine.task WHERE id = ANY($1)) ORDER BY r.id FOR UPDATE",
    )
    .bind(tasks)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
