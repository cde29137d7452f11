//! Group commit of worker reports. Reports (STARTED, COMPLETED, FAILED, CANCELLED) go into
//! one queue; a flusher takes everything that arrived while the previous group was being
//! written and applies the whole group in one transaction with set-based statements, then
//! answers each caller. Nothing is acknowledged before its transaction committed, and one
//! commit now carries hundreds of reports instead of one.
//!
//! A group that fails as a whole (a database error caused by one report, say an output
//! PostgreSQL cannot store) is retried report by report, so one bad report fails only its
//! own caller.
//!
//! Concurrency: the runs touched are locked first, in id order, then the tasks, in id order.
//! Locking the run makes "was this the run's last open task?" exact even when two engine
//! processes finish the last two tasks of one run at the same moment.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::model::retry_backoff;
use crate::task_events::{Outcome, StepEvent, StepEventKind, cancel_descendants, requeue};

/// Most reports applied in one transaction.
const MAX_GROUP: usize = 1000;

pub(crate) struct Report {
    event: StepEvent,
    reply: oneshot::Sender<Result<Outcome, EngineError>>,
}

pub(crate) type ReportSender = mpsc::Sender<Report>;
pub(crate) type ReportReceiver = mpsc::Receiver<Report>;

pub(crate) fn channel() -> (ReportSender, ReportReceiver) {
    mpsc::channel(4 * MAX_GROUP)
}

impl Engine {
    /// Applies a worker's report; returns once it is committed.
    pub async fn step_event(&self, event: StepEvent) -> Result<Outcome, EngineError> {
        if matches!(event.kind, StepEventKind::Acknowledged) {
            return Ok(Outcome::Recorded);
        }
        let (reply, answer) = oneshot::channel();
        let closed = || EngineError::Unavailable("the engine is shutting down".into());
        self.inner.reports.send(Report { event, reply }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// The flusher: runs until `shutdown`, then applies what is still queued and stops.
pub(crate) async fn run(engine: Engine, mut queue: ReportReceiver, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            report = queue.recv() => report,
            _ = shutdown.cancelled() => break,
        };
        let Some(first) = first else { return };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(report) => group.push(report),
                Err(_) => break,
            }
        }
        engine.flush(group).await;
    }
    queue.close();
    let mut rest = Vec::new();
    while let Some(report) = queue.recv().await {
        rest.push(report);
    }
    if !rest.is_empty() {
        engine.flush(rest).await;
    }
}

impl Engine {
    async fn flush(&self, group: Vec<Report>) {
        let (events, replies): (Vec<StepEvent>, Vec<_>) = group.into_iter().map(|r| (r.event, r.reply)).unzip();
        match self.apply(&events).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) if events.len() > 1 => {
                tracing::warn!(error = %e, reports = events.len(), "a group of reports failed; applying them one by one");
                for (event, reply) in events.into_iter().zip(replies) {
                    let result = self.apply(std::slice::from_ref(&event)).await.map(|mut o| o.remove(0));
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(EngineError::Unavailable(e.to_string())));
                }
            }
        }
    }

    /// Applies `events` in one transaction; one outcome per event, in order.
    pub(crate) async fn apply(&self, events: &[StepEvent]) -> Result<Vec<Outcome>, EngineError> {
        let mut outcomes = vec![Outcome::Stale; events.len()];
        let mut active_runs: HashSet<Uuid> = HashSet::new();
        let mut tx = self.pool().begin().await?;

        // STARTED first: within a group it always precedes the same attempt's result.
        let started: Vec<usize> =
            (0..events.len()).filter(|&i| matches!(events[i].kind, StepEventKind::Started)).collect();
        if !started.is_empty() {
            let ids: Vec<Uuid> = started.iter().map(|&i| events[i].task_id).collect();
            let retries: Vec<Option<i32>> = started.iter().map(|&i| events[i].retry_count).collect();
            let workers: Vec<Option<Uuid>> = started.iter().map(|&i| events[i].worker_id).collect();
            // Duplicate STARTED events (Python sends two) leave one row.
            let recorded: Vec<(Uuid, Uuid)> = sqlx::query_as(
                "INSERT INTO engine.task_event (task_id, retry_count, event_type, worker_id) \
                 SELECT t.id, t.retry_count, 'STARTED', x.w \
                 FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS x(id, r, w) \
                 JOIN engine.task t ON t.id = x.id AND t.tenant_id = $4 \
                 JOIN engine.task_runtime rt ON rt.task_id = t.id AND rt.retry_count = coalesce(x.r, t.retry_count) \
                 ON CONFLICT (task_id, retry_count) WHERE event_type = 'STARTED' DO NOTHING \
                 RETURNING task_id, (SELECT run_id FROM engine.task WHERE id = task_id)",
            )
            .bind(&ids)
            .bind(&retries)
            .bind(&workers)
            .bind(self.tenant_id())
            .fetch_all(&mut *tx)
            .await?;
            active_runs.extend(recorded.iter().map(|(_, run)| *run));
            let recorded: HashSet<Uuid> = recorded.into_iter().map(|(task, _)| task).collect();
            for &i in &started {
                if recorded.contains(&events[i].task_id) {
                    outcomes[i] = Outcome::Recorded;
                }
            }
        }

        // Results: the first report of a task in the group counts, later ones are stale.
        let mut seen = HashSet::new();
        let finishes: Vec<(usize, Finish)> = (0..events.len())
            .filter_map(|i| Finish::from_kind(&events[i].kind).map(|f| (i, f)))
            .filter(|(i, _)| seen.insert(events[*i].task_id))
            .collect();
        let mut finished_runs = Vec::new();
        let mut freed: Vec<(Uuid, i32)> = Vec::new();
        let mut retry_alarms = Vec::new();
        let mut retried = 0;
        let mut observed = Vec::new();
        let mut queued = false;
        if !finishes.is_empty() {
            let ids: Vec<Uuid> = finishes.iter().map(|(i, _)| events[*i].task_id).collect();
            let retries: Vec<Option<i32>> = finishes.iter().map(|(i, _)| events[*i].retry_count).collect();
            let attempts = lock_attempts(&mut tx, self.tenant_id(), &ids, &retries).await?;
            let mut done = Done::default();
            for (i, finish) in finishes {
                let Some(attempt) = attempts.get(&events[i].task_id) else { continue };
                outcomes[i] = Outcome::Recorded;
                observed.push((attempt.workflow_name.clone(), finish.outcome(), attempt.started_at));
                freed.push((attempt.worker_id, attempt.slot_units));
                active_runs.insert(attempt.run_id);
                done.add(attempt, finish);
            }
            retry_alarms.extend(done.retried.iter().filter_map(|(_, _, backoff, _)| *backoff));
            retried = done.retried.len();
            (finished_runs, queued) = done.write(&mut tx, self.tenant_id()).await?;
        }
        tx.commit().await?;

        self.observe(observed, retried);
        for (worker, units) in freed {
            self.release_slots(worker, units);
        }
        if queued {
            self.wake_assigner();
            self.announce_queued();
        }
        for backoff in retry_alarms.into_iter().filter(|b| !b.is_zero()) {
            self.note_retry(backoff);
        }
        if !finished_runs.is_empty() {
            self.announce_finished(&finished_runs);
        }
        self.announce_activity(active_runs);
        Ok(outcomes)
    }
}

/// What a result report asks for.
enum Finish {
    Completed(Value),
    Failed { error: String, should_not_retry: bool },
    Cancelled,
    TimedOut { error: String },
    WorkerLost { reason: String },
}

impl Finish {
    /// The outcome label of the attempt metrics.
    fn outcome(&self) -> &'static str {
        match self {
            Finish::Completed(_) => "completed",
            Finish::Failed { .. } => "failed",
            Finish::Cancelled => "cancelled",
            Finish::TimedOut { .. } => "timed_out",
            Finish::WorkerLost { .. } => "worker_lost",
        }
    }

    fn from_kind(kind: &StepEventKind) -> Option<Finish> {
        match kind {
            StepEventKind::Started | StepEventKind::Acknowledged => None,
            StepEventKind::Completed { payload } => {
                let parsed =
                    if payload.trim().is_empty() { Ok(Value::Null) } else { serde_json::from_str::<Value>(payload) };
                Some(match parsed {
                    // PostgreSQL cannot store U+0000 in JSON; say so rather than failing to write.
                    Ok(output) if contains_nul(&output) => Finish::Failed {
                        error: "the task's output contains the character U+0000, which cannot be stored".into(),
                        should_not_retry: true,
                    },
                    Ok(output) => Finish::Completed(output),
                    // Hatchet turns an output that is not JSON into a failure.
                    Err(e) => Finish::Failed {
                        error: format!("the task's output is not valid JSON: {e}"),
                        should_not_retry: true,
                    },
                })
            }
            StepEventKind::Failed { error, should_not_retry } => {
                Some(Finish::Failed { error: error.replace('\0', "\u{FFFD}"), should_not_retry: *should_not_retry })
            }
            StepEventKind::Cancelled => Some(Finish::Cancelled),
            StepEventKind::TimedOut { error } => Some(Finish::TimedOut { error: error.clone() }),
            StepEventKind::WorkerLost { reason } => Some(Finish::WorkerLost { reason: reason.clone() }),
        }
    }
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[derive(sqlx::FromRow)]
struct Attempt {
    task_id: Uuid,
    run_id: Uuid,
    readable_id: String,
    retry_count: i32,
    app_retries: i32,
    retries: i32,
    backoff_factor: Option<f64>,
    backoff_max_seconds: Option<i32>,
    worker_id: Uuid,
    slot_units: i32,
    workflow_name: String,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// Locks the runs and tasks whose attempt named by the report (or, without a retry count,
/// the current one) holds a runtime row, in run order then task order. Tasks without one
/// are stale reports.
async fn lock_attempts(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    ids: &[Uuid],
    retries: &[Option<i32>],
) -> Result<HashMap<Uuid, Attempt>, EngineError> {
    let attempts: Vec<Attempt> = sqlx::query_as(
        "SELECT t.id AS task_id, t.run_id, t.readable_id, rt.retry_count, t.app_retries, s.retries, \
                s.backoff_factor, s.backoff_max_seconds, rt.worker_id, rt.slot_units, w.name AS workflow_name, rt.started_at \
         FROM unnest($1::uuid[], $2::int[]) AS x(id, r) \
         JOIN engine.task t ON t.id = x.id AND t.tenant_id = $3 \
         JOIN engine.workflow_run wr ON wr.id = t.run_id \
         JOIN engine.workflow w ON w.id = wr.workflow_id \
         JOIN engine.step s ON s.id = t.step_id \
         JOIN engine.task_runtime rt ON rt.task_id = t.id AND rt.retry_count = coalesce(x.r, t.retry_count) \
         ORDER BY t.run_id, t.id FOR UPDATE OF wr, t",
    )
    .bind(ids)
    .bind(retries)
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    Ok(attempts.into_iter().map(|a| (a.task_id, a)).collect())
}

/// The writes of a group, collected per kind so each kind is one statement.
#[derive(Default)]
struct Done {
    // every attempt that ended: its runtime row goes, an event is recorded
    ended_tasks: Vec<Uuid>,
    ended_retries: Vec<i32>,
    ended_workers: Vec<Uuid>,
    ended_kinds: Vec<&'static str>,
    ended_messages: Vec<String>,
    runs: Vec<Uuid>,
    // completed: output stored, children released
    completed_ids: Vec<Uuid>,
    completed_outputs: Vec<String>,
    completed_runs: Vec<Uuid>,
    completed_names: Vec<String>,
    // failed with retries left: queued again (after the backoff)
    retried: Vec<(Uuid, i32, Option<std::time::Duration>, String)>,
    // the worker was lost: queued again at once, no retry spent
    lost: Vec<(Uuid, i32)>,
    // failed for good or cancelled: final, descendants cancelled
    final_ids: Vec<Uuid>,
    final_statuses: Vec<&'static str>,
    final_errors: Vec<Option<String>>,
    final_runs: Vec<(Uuid, String, &'static str)>,
}

impl Done {
    fn add(&mut self, a: &Attempt, finish: Finish) {
        self.ended_tasks.push(a.task_id);
        self.ended_retries.push(a.retry_count);
        self.ended_workers.push(a.worker_id);
        self.runs.push(a.run_id);
        match finish {
            Finish::Completed(output) => {
                self.ended_kinds.push("COMPLETED");
                self.ended_messages.push(String::new());
                self.completed_ids.push(a.task_id);
                self.completed_outputs.push(output.to_string());
                self.completed_runs.push(a.run_id);
                self.completed_names.push(a.readable_id.clone());
            }
            Finish::WorkerLost { reason } => {
                self.ended_kinds.push("REQUEUED");
                self.ended_messages.push(reason);
                self.lost.push((a.task_id, a.retry_count + 1));
            }
            Finish::TimedOut { error } => self.failed(a, "TIMED_OUT", error, false),
            Finish::Failed { error, should_not_retry } => self.failed(a, "FAILED", error, should_not_retry),
            Finish::Cancelled => {
                self.ended_kinds.push("CANCELLED");
                self.ended_messages.push(String::new());
                self.final_ids.push(a.task_id);
                self.final_statuses.push("CANCELLED");
                self.final_errors.push(None);
                self.final_runs.push((a.run_id, a.readable_id.clone(), "a parent task was cancelled"));
            }
        }
    }

    fn failed(&mut self, a: &Attempt, kind: &'static str, error: String, should_not_retry: bool) {
        self.ended_kinds.push(kind);
        self.ended_messages.push(error.clone());
        if !should_not_retry && a.app_retries < a.retries {
            let backoff = retry_backoff(a.backoff_factor, a.backoff_max_seconds, a.app_retries + 1);
            self.retried.push((a.task_id, a.retry_count + 1, backoff, error));
        } else {
            self.final_ids.push(a.task_id);
            self.final_statuses.push("FAILED");
            self.final_errors.push(Some(error));
            self.final_runs.push((a.run_id, a.readable_id.clone(), "a parent task failed"));
        }
    }

    /// Writes everything; returns the runs that just finished and whether work was queued.
    async fn write(self, tx: &mut sqlx::PgConnection, tenant: Uuid) -> Result<(Vec<Uuid>, bool), EngineError> {
        if self.ended_tasks.is_empty() {
            return Ok((Vec::new(), false));
        }
        // The attempts end (runtime rows go, events are recorded), completed tasks keep
        // their output, and children whose parents have all completed are queued: one
        // statement, since none of its parts reads what another writes.
        let released = sqlx::query(
            "WITH ended AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::uuid[], $5::text[]) \
                              AS x(t, r, k, w, m)), \
             gone AS ( \
               DELETE FROM engine.task_runtime rt USING ended x WHERE rt.task_id = x.t AND rt.retry_count = x.r), \
             recorded AS ( \
               INSERT INTO engine.task_event (task_id, retry_count, event_type, worker_id, message) \
               SELECT t, r, k, w, m FROM ended), \
             completed AS ( \
               UPDATE engine.task t SET status = 'COMPLETED', output = x.o::jsonb, error = NULL, finished_at = now() \
               FROM unnest($6::uuid[], $7::text[]) AS x(id, o) WHERE t.id = x.id), \
             done AS (SELECT * FROM unnest($8::uuid[], $9::text[]) AS d(run_id, parent)), \
             hits AS ( \
               SELECT c.id, count(*)::int AS n FROM done d \
               JOIN engine.task c ON c.run_id = d.run_id AND c.status = 'PENDING' \
               JOIN engine.step s ON s.id = c.step_id AND d.parent = ANY(s.parents) \
               GROUP BY c.id), \
             ready AS ( \
               UPDATE engine.task c SET pending_parents = c.pending_parents - h.n, \
                 status = CASE WHEN c.pending_parents <= h.n THEN 'QUEUED' ELSE c.status END, \
                 queued_at = CASE WHEN c.pending_parents <= h.n THEN now() ELSE c.queued_at END \
               FROM hits h WHERE c.id = h.id \
               RETURNING c.id, c.action, c.priority, c.status, c.step_id) \
             INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
             SELECT $10, r.id, 0, r.action, r.priority, now() + make_interval(secs => s.schedule_timeout_ms / 1000.0) \
             FROM ready r JOIN engine.step s ON s.id = r.step_id WHERE r.status = 'QUEUED'",
        )
        .bind(&self.ended_tasks)
        .bind(&self.ended_retries)
        .bind(&self.ended_kinds)
        .bind(&self.ended_workers)
        .bind(&self.ended_messages)
        .bind(&self.completed_ids)
        .bind(&self.completed_outputs)
        .bind(&self.completed_runs)
        .bind(&self.completed_names)
        .bind(tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let queued = released > 0
            || !self.lost.is_empty()
            || self.retried.iter().any(|(_, _, b, _)| b.is_none_or(|b| b.is_zero()));
        for (task_id, next) in &self.lost {
            requeue(tx, tenant, *task_id, *next, None, "the worker was lost", false).await?;
        }
        for (task_id, next, backoff, error) in &self.retried {
            requeue(tx, tenant, *task_id, *next, *backoff, error, true).await?;
        }
        if !self.final_ids.is_empty() {
            sqlx::query(
                "UPDATE engine.task t SET status = x.s, error = coalesce(x.e, t.error), finished_at = now() \
                 FROM unnest($1::uuid[], $2::text[], $3::text[]) AS x(id, s, e) WHERE t.id = x.id",
            )
            .bind(&self.final_ids)
            .bind(&self.final_statuses)
            .bind(&self.final_errors)
            .execute(&mut *tx)
            .await?;
            for (run, task, why) in &self.final_runs {
                cancel_descendants(tx, *run, task, why).await?;
            }
        }
        Ok((finalize_runs(tx, &self.runs).await?, queued))
    }
}

/// Runs among `runs` whose every task is final become final too: FAILED if a task failed,
/// CANCELLED if one was cancelled, COMPLETED otherwise. Returns those that just finished.
pub(crate) async fn finalize_runs(tx: &mut sqlx::PgConnection, runs: &[Uuid]) -> Result<Vec<Uuid>, EngineError> {
    let finished = sqlx::query_scalar(
        "WITH s AS ( \
           SELECT run_id, \
                  count(*) FILTER (WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')) AS open, \
                  bool_or(status = 'FAILED') AS failed, bool_or(status = 'CANCELLED') AS cancelled, \
                  (array_agg(error ORDER BY finished_at) FILTER (WHERE status = 'FAILED'))[1] AS error \
           FROM engine.task WHERE run_id = ANY($1) GROUP BY run_id) \
         UPDATE engine.workflow_run r SET \
           status = CASE WHEN s.failed THEN 'FAILED' WHEN s.cancelled THEN 'CANCELLED' ELSE 'COMPLETED' END, \
           error = s.error, finished_at = now(), started_at = coalesce(r.started_at, now()) \
         FROM s WHERE r.id = s.run_id AND s.open = 0 AND r.finished_at IS NULL \
         RETURNING r.id",
    )
    .bind(runs)
    .fetch_all(&mut *tx)
    .await?;
    Ok(finished)
}
