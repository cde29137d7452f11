//! The engine's own verdicts, swept every `sweep_interval`: attempts past their execution
//! deadline fail as timed out (and run again if they have retries left; their worker is told
//! to cancel them), attempts whose worker is gone (no heartbeat, or no stream, for the
//! heartbeat timeout) run again elsewhere without spending a retry, and queued tasks that no
//! worker took within their schedule timeout fail.
//!
//! Each verdict goes through the same locked, committed path as a worker's report, so a
//! verdict and a late report for the same attempt cannot both count, and several engine
//! processes sweeping at once decide each attempt once.

use std::time::Duration;

use sfp_protocol::pb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::task_events::{Outcome, StepEvent, StepEventKind};

const BATCH: i64 = 500;

pub(crate) async fn run(engine: Engine, shutdown: CancellationToken) {
    let every = engine.config().sweep_interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = engine.sweep().await {
            tracing::warn!(error = %e, "sweep failed; trying again at the next one");
        }
    }
}

/// A running attempt, with what its worker needs to be told to stop it.
#[derive(sqlx::FromRow)]
pub(crate) struct RunningAttempt {
    pub task_id: Uuid,
    pub retry_count: i32,
    pub worker_id: Uuid,
    pub run_id: Uuid,
    pub step_id: Uuid,
    pub readable_id: String,
    pub action: String,
    pub timeout_ms: i64,
}

/// The columns of a `RunningAttempt`, for `FROM engine.task_runtime rt JOIN engine.task t
/// JOIN engine.step s`.
pub(crate) const RUNNING_ATTEMPT: &str =
    "rt.task_id, rt.retry_count, rt.worker_id, t.run_id, t.step_id, t.readable_id, t.action, s.timeout_ms";

impl Engine {
    pub(crate) async fn sweep(&self) -> Result<(), EngineError> {
        self.sweep_timeouts().await?;
        self.sweep_lost_workers().await?;
        self.sweep_unstarted().await?;
        self.sweep_schedule_timeouts().await?;
        Ok(())
    }

    async fn sweep_timeouts(&self) -> Result<(), EngineError> {
        let expired: Vec<RunningAttempt> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUNNING_ATTEMPT} \
             FROM engine.task_runtime rt JOIN engine.task t ON t.id = rt.task_id JOIN engine.step s ON s.id = t.step_id \
             WHERE t.tenant_id = $1 AND rt.timeout_at <= now() ORDER BY rt.timeout_at LIMIT $2"
        )))
        .bind(self.tenant_id())
        .bind(BATCH)
        .fetch_all(self.pool())
        .await?;
        if expired.is_empty() {
            return Ok(());
        }
        let events: Vec<StepEvent> = expired
            .iter()
            .map(|e| StepEvent {
                worker_id: Some(e.worker_id),
                task_id: e.task_id,
                retry_count: Some(e.retry_count),
                kind: StepEventKind::TimedOut {
                    error: format!("the task ran longer than its timeout of {}", human(e.timeout_ms)),
                },
            })
            .collect();
        let outcomes = self.apply(&events).await?;
        for (e, outcome) in expired.iter().zip(outcomes) {
            if outcome == Outcome::Recorded {
                tracing::info!(task = %e.task_id, attempt = e.retry_count, "task timed out");
                self.send_cancel(e);
            }
        }
        Ok(())
    }

    /// Attempts their worker never started (no STARTED report within the start timeout):
    /// the assignment was lost on the way, for instance because the engine process that sent
    /// it died right after committing it. They run again as a new attempt without spending a
    /// retry; the worker is told to cancel the old one in case it has it after all. Not
    /// before this process has been up for the start timeout itself, so that workers
    /// reconnecting after an engine restart can deliver the reports they held back.
    async fn sweep_unstarted(&self) -> Result<(), EngineError> {
        let wait = self.config().start_timeout;
        if self.inner.started.elapsed() < wait {
            return Ok(());
        }
        let stuck: Vec<RunningAttempt> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUNNING_ATTEMPT} \
             FROM engine.task_runtime rt JOIN engine.task t ON t.id = rt.task_id JOIN engine.step s ON s.id = t.step_id \
             WHERE t.tenant_id = $1 AND rt.started_at < now() - make_interval(secs => $2) \
               AND NOT EXISTS (SELECT 1 FROM engine.task_event e WHERE e.task_id = rt.task_id \
                               AND e.retry_count = rt.retry_count AND e.event_type = 'STARTED') \
             LIMIT $3"
        )))
        .bind(self.tenant_id())
        .bind(wait.as_secs_f64())
        .bind(BATCH)
        .fetch_all(self.pool())
        .await?;
        if stuck.is_empty() {
            return Ok(());
        }
        let reason =
            format!("the worker did not start the task within {}; it runs again", human(wait.as_millis() as i64));
        let events: Vec<StepEvent> = stuck
            .iter()
            .map(|a| StepEvent {
                worker_id: Some(a.worker_id),
                task_id: a.task_id,
                retry_count: Some(a.retry_count),
                kind: StepEventKind::WorkerLost { reason: reason.clone() },
            })
            .collect();
        let outcomes = self.apply(&events).await?;
        for (a, outcome) in stuck.iter().zip(outcomes) {
            if outcome == Outcome::Recorded {
                tracing::warn!(task = %a.task_id, attempt = a.retry_count, "assignment never started; queued again");
                self.send_cancel(a);
            }
        }
        Ok(())
    }

    async fn sweep_lost_workers(&self) -> Result<(), EngineError> {
        let timeout = self.config().heartbeat_timeout.as_secs_f64();
        // Silent workers, and workers whose stream has been gone for as long, are inactive.
        let lost: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE engine.worker SET is_active = false \
             WHERE tenant_id = $1 AND (last_heartbeat_at < now() - make_interval(secs => $2) \
                   OR (NOT is_active AND last_listener_at < now() - make_interval(secs => $2))) \
               AND EXISTS (SELECT 1 FROM engine.task_runtime rt WHERE rt.worker_id = engine.worker.id) \
             RETURNING id",
        )
        .bind(self.tenant_id())
        .bind(timeout)
        .fetch_all(self.pool())
        .await?;
        if lost.is_empty() {
            return Ok(());
        }
        {
            let mut here = self.connected();
            for id in &lost {
                // A stream held here of a worker that stopped heartbeating: it gets no more work.
                here.remove(id);
            }
        }
        let attempts: Vec<(Uuid, i32, Uuid)> = sqlx::query_as(
            "SELECT task_id, retry_count, worker_id FROM engine.task_runtime WHERE worker_id = ANY($1) LIMIT $2",
        )
        .bind(&lost)
        .bind(BATCH)
        .fetch_all(self.pool())
        .await?;
        let events: Vec<StepEvent> = attempts
            .iter()
            .map(|(task_id, retry_count, worker)| StepEvent {
                worker_id: Some(*worker),
                task_id: *task_id,
                retry_count: Some(*retry_count),
                kind: StepEventKind::WorkerLost { reason: "the worker was lost; the task runs again".into() },
            })
            .collect();
        if !events.is_empty() {
            let outcomes = self.apply(&events).await?;
            let requeued = outcomes.iter().filter(|o| **o == Outcome::Recorded).count();
            tracing::warn!(workers = lost.len(), requeued, "workers lost; their tasks run again elsewhere");
        }
        Ok(())
    }

    async fn sweep_schedule_timeouts(&self) -> Result<(), EngineError> {
        let mut tx = self.pool().begin().await?;
        let expired: Vec<(Uuid, Uuid, String, i64)> = sqlx::query_as(
            "WITH expired AS ( \
               DELETE FROM engine.queue_item q WHERE q.id IN ( \
                 SELECT id FROM engine.queue_item WHERE tenant_id = $1 AND schedule_timeout_at <= now() \
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
               RETURNING q.task_id, q.retry_count) \
             SELECT t.id, t.run_id, t.readable_id, s.schedule_timeout_ms FROM expired e \
             JOIN engine.task t ON t.id = e.task_id AND t.retry_count = e.retry_count \
             JOIN engine.step s ON s.id = t.step_id",
        )
        .bind(self.tenant_id())
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if expired.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        let runs: Vec<Uuid> = expired.iter().map(|e| e.1).collect();
        sqlx::query("SELECT id FROM engine.workflow_run WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&runs)
            .execute(&mut *tx)
            .await?;
        for (task, run, readable, ms) in &expired {
            let error = format!("no worker took the task within its schedule timeout of {}", human(*ms));
            sqlx::query(
                "UPDATE engine.task SET status = 'FAILED', error = $2, finished_at = now() WHERE id = $1 AND status = 'QUEUED'",
            )
            .bind(task)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO engine.task_event (task_id, retry_count, event_type, message) \
                 SELECT id, retry_count, 'SCHEDULING_TIMED_OUT', $2 FROM engine.task WHERE id = $1",
            )
            .bind(task)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
            crate::task_events::cancel_descendants(&mut tx, *run, readable, "a parent task failed").await?;
        }
        let finished = crate::reports::finalize_runs(&mut tx, &runs).await?;
        tx.commit().await?;
        tracing::warn!(tasks = expired.len(), "tasks failed: not scheduled within their schedule timeout");
        if !finished.is_empty() {
            self.announce_finished(&finished);
        }
        self.announce_activity(runs);
        Ok(())
    }

    /// Tells the attempt's worker, if its stream is held here, to stop the task.
    pub(crate) fn send_cancel(&self, a: &RunningAttempt) {
        let action = pb::AssignedAction {
            tenant_id: self.tenant_id().to_string(),
            workflow_run_id: a.run_id.to_string(),
            job_id: a.step_id.to_string(),
            job_name: a.readable_id.clone(),
            job_run_id: a.task_id.to_string(),
            task_id: a.step_id.to_string(),
            task_run_external_id: a.task_id.to_string(),
            action_id: a.action.clone(),
            action_type: pb::ActionType::CancelStepRun as i32,
            action_payload: "{}".into(),
            task_name: a.readable_id.clone(),
            retry_count: a.retry_count,
            ..Default::default()
        };
        if let Some(w) = self.connected().get(&a.worker_id)
            && w.sender.try_send(Ok(action)).is_err()
        {
            tracing::warn!(worker = %a.worker_id, "could not deliver a cancellation");
        }
    }
}

fn human(ms: i64) -> String {
    let d = Duration::from_millis(ms.max(0) as u64);
    if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
