//! The assigner: hands queued tasks to workers with free slots, highest priority first and
//! first-in first-out within a priority, in batches (one transaction per pass).
//!
//! Each engine process assigns only to the workers whose streams it holds and claims queue
//! items with `FOR UPDATE SKIP LOCKED`, so several engine processes can share one database
//! without handing a task out twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sfp_protocol::pb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};

pub(crate) async fn run(engine: Engine, shutdown: CancellationToken) {
    let poll = engine.config().poll_interval;
    let mut next_sweep = Instant::now();
    let mut next_poll = Instant::now();
    loop {
        // Register for a wake-up before looking, so none is lost while we work.
        let woken = engine.inner.assign_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Retries whose backoff passed: when one of ours is due, and every poll interval for
        // those of other engine processes. Not on every pass: it is off the hot path.
        let now = Instant::now();
        if now >= next_sweep || engine.retry_due(now) {
            next_sweep = now + poll;
            match engine.requeue_due_retries().await {
                Ok(moved) if moved > 0 => {
                    engine.inner.work_waiting.store(true, Ordering::SeqCst);
                    engine.announce_queued();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "moving due retries to the queue failed"),
            }
        }
        // A pass when work may be waiting, and every poll interval for work queued by
        // other engine processes.
        let waiting = engine.inner.work_waiting.swap(false, Ordering::SeqCst);
        if waiting || now >= next_poll {
            next_poll = now + poll;
            match engine.assign_pass().await {
                Ok(Pass { more: true, .. }) => {
                    engine.inner.work_waiting.store(true, Ordering::SeqCst);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    engine.inner.work_waiting.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, "assignment pass failed");
                }
            }
        }
        let wait = next_sweep.min(next_poll).min(engine.next_retry_due().unwrap_or(next_sweep));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = &mut woken => {},
            _ = tokio::time::sleep_until(wait.into()) => {},
        }
    }
}

/// What a pass did: how many tasks it assigned, and whether more may be waiting (a claim
/// took as many items as it could).
pub(crate) struct Pass {
    pub assigned: usize,
    pub more: bool,
}

/// Workers with the same actions share one claim.
struct Group {
    actions: Vec<String>,
    workers: Vec<(Uuid, i32)>,
}

impl Engine {
    /// Remembers that a retry queued by this process becomes due after `backoff`.
    pub(crate) fn note_retry(&self, backoff: Duration) {
        self.retry_alarms().push(std::cmp::Reverse(Instant::now() + backoff));
        self.wake_assigner();
    }

    fn retry_alarms(&self) -> std::sync::MutexGuard<'_, std::collections::BinaryHeap<std::cmp::Reverse<Instant>>> {
        self.inner.retry_due.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_retry_due(&self) -> Option<Instant> {
        self.retry_alarms().peek().map(|r| r.0)
    }

    /// Whether a retry noted here is due; clears those notes (one sweep takes every due retry).
    fn retry_due(&self, now: Instant) -> bool {
        let mut alarms = self.retry_alarms();
        let mut due = false;
        while alarms.peek().is_some_and(|r| r.0 <= now) {
            alarms.pop();
            due = true;
        }
        due
    }

    /// Retries whose backoff has passed go back to the queue (safe with several engine
    /// processes: each due item is taken by one of them).
    pub(crate) async fn requeue_due_retries(&self) -> Result<u64, EngineError> {
        let moved = sqlx::query(
            "WITH due AS ( \
               DELETE FROM engine.retry_queue_item r WHERE (r.task_id, r.retry_count) IN ( \
                 SELECT task_id, retry_count FROM engine.retry_queue_item WHERE retry_after <= now() \
                 ORDER BY retry_after LIMIT 1000 FOR UPDATE SKIP LOCKED) \
               RETURNING r.task_id, r.retry_count) \
             INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
             SELECT t.tenant_id, t.id, d.retry_count, t.action, t.priority, \
                    now() + make_interval(secs => s.schedule_timeout_ms / 1000.0) \
             FROM due d JOIN engine.task t ON t.id = d.task_id JOIN engine.step s ON s.id = t.step_id \
             WHERE t.tenant_id = $1 AND t.status = 'QUEUED' AND t.retry_count = d.retry_count",
        )
        .bind(self.tenant_id())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(moved)
    }

    /// One pass: claims what the connected workers can take and sends it to them.
    pub(crate) async fn assign_pass(&self) -> Result<Pass, EngineError> {
        let _pass = self.inner.pass_lock.lock().await;
        if self.is_draining() {
            return Ok(Pass { assigned: 0, more: false });
        }
        let groups = self.groups();
        let mut pass = Pass { assigned: 0, more: false };
        for group in groups {
            let capacity: i32 = group.workers.iter().map(|(_, free)| *free).sum();
            let limit = i64::from(capacity).min(self.config().assign_batch);
            let claim = self.assign_group(group, limit).await?;
            pass.assigned += claim.assigned;
            self.metrics().assignments.inc_by(claim.assigned as u64);
            pass.more |= claim.more;
        }
        Ok(pass)
    }

    fn groups(&self) -> Vec<Group> {
        let workers = self.connected();
        let mut by_actions: BTreeMap<Vec<String>, Vec<(Uuid, i32)>> = BTreeMap::new();
        for (id, w) in workers.iter() {
            if w.paused || w.free_slots <= 0 || w.actions.is_empty() {
                continue;
            }
            let mut actions = w.actions.clone();
            actions.sort();
            by_actions.entry(actions).or_default().push((*id, w.free_slots));
        }
        by_actions.into_iter().map(|(actions, workers)| Group { actions, workers }).collect()
    }

    async fn assign_group(&self, mut group: Group, limit: i64) -> Result<Pass, EngineError> {
        if limit <= 0 {
            return Ok(Pass { assigned: 0, more: false });
        }
        let mut tx = self.pool().begin().await?;
        let claimed = claim(&mut tx, self.tenant_id(), &group.actions, limit).await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Pass { assigned: 0, more: false });
        }
        let full = claimed.len() as i64 >= limit;
        if full {
            // Probably more in the queue than the workers could take now.
            self.inner.needs_capacity.store(true, Ordering::SeqCst);
        }
        // Place each claimed item on the worker with the most free slots that fits it, other
        // than the one that lost its previous attempt when another can take it.
        let mut placed: Vec<(ClaimRow, Uuid)> = Vec::with_capacity(claimed.len());
        let mut unplaced = Vec::new();
        for item in claimed {
            group.workers.sort_by_key(|(_, free)| std::cmp::Reverse(*free));
            let fits = |(id, free): &(Uuid, i32)| *free >= item.slot_units && Some(*id) != item.avoid_worker;
            let choice = match group.workers.iter().position(fits) {
                Some(i) => Some(i),
                None => group.workers.iter().position(|(_, free)| *free >= item.slot_units),
            };
            match choice.map(|i| &mut group.workers[i]) {
                Some((worker, free)) => {
                    *free -= item.slot_units;
                    placed.push((item, *worker));
                }
                None => unplaced.push(item),
            }
        }
        for item in &unplaced {
            sqlx::query(
                "INSERT INTO engine.queue_item (id, tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
                 OVERRIDING SYSTEM VALUE \
                 SELECT $1, $2, $3, $4, t.action, $5, $6 FROM engine.task t WHERE t.id = $3",
            )
            .bind(item.queue_id)
            .bind(self.tenant_id())
            .bind(item.task_id)
            .bind(item.retry_count)
            .bind(item.priority)
            .bind(item.schedule_timeout_at)
            .execute(&mut *tx)
            .await?;
        }
        if !unplaced.is_empty() {
            // Some items need more free slots than any worker has: a release brings them.
            self.inner.needs_capacity.store(true, Ordering::SeqCst);
        }
        if placed.is_empty() {
            tx.commit().await?;
            return Ok(Pass { assigned: 0, more: false });
        }
        let more = full;
        let task_ids: Vec<Uuid> = placed.iter().map(|(c, _)| c.task_id).collect();
        let retries: Vec<i32> = placed.iter().map(|(c, _)| c.retry_count).collect();
        let workers: Vec<Uuid> = placed.iter().map(|(_, w)| *w).collect();
        let units: Vec<i32> = placed.iter().map(|(c, _)| c.slot_units).collect();
        let timeouts: Vec<i64> = placed.iter().map(|(c, _)| c.timeout_ms).collect();
        let run_ids: Vec<Uuid> = placed.iter().map(|(c, _)| c.run_id).collect();
        // One statement for every write of the assignment: runtime rows (the proof that a
        // later report is current), task and run status, the ASSIGNED events.
        sqlx::query(
            "WITH x AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::int[], $5::bigint[]) \
                          AS x(t, r, w, u, ms)), \
             runtime AS ( \
               INSERT INTO engine.task_runtime (task_id, retry_count, worker_id, slot_units, timeout_at) \
               SELECT t, r, w, u, now() + make_interval(secs => ms / 1000.0) FROM x), \
             tasks AS ( \
               UPDATE engine.task k SET status = 'RUNNING', worker_id = x.w, started_at = coalesce(k.started_at, now()) \
               FROM x WHERE k.id = x.t), \
             events AS ( \
               INSERT INTO engine.task_event (task_id, retry_count, event_type, worker_id) \
               SELECT t, r, 'ASSIGNED', w FROM x) \
             UPDATE engine.workflow_run SET status = 'RUNNING', started_at = coalesce(started_at, now()) \
             WHERE id IN (SELECT id FROM engine.workflow_run WHERE id = ANY($6) AND status = 'QUEUED' \
                          ORDER BY id FOR UPDATE SKIP LOCKED)",
        )
        .bind(&task_ids)
        .bind(&retries)
        .bind(&workers)
        .bind(&units)
        .bind(&timeouts)
        .bind(&run_ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;

        // Committed: now tell the workers. A worker whose stream vanished meanwhile keeps the
        // assignment until the worker-loss sweep re-queues it.
        let tenant = self.tenant_id().to_string();
        let count = placed.len();
        let mut by_worker: HashMap<Uuid, Vec<(pb::AssignedAction, i32)>> = HashMap::new();
        for (item, worker) in placed {
            let units = item.slot_units;
            by_worker.entry(worker).or_default().push((assigned_action(&tenant, item), units));
        }
        let mut workers = self.connected();
        for (worker_id, actions) in by_worker {
            let Some(w) = workers.get_mut(&worker_id) else { continue };
            for (action, units) in actions {
                w.free_slots -= units;
                if w.sender.try_send(Ok(action)).is_err() {
                    tracing::warn!(%worker_id, "could not deliver an assignment; the worker-loss sweep will re-queue it");
                }
            }
        }
        Ok(Pass { assigned: count, more })
    }
}

/// Removes up to `limit` queue items of `actions` (highest priority, then oldest) and reads
/// what their assignments need.
async fn claim(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    actions: &[String],
    limit: i64,
) -> Result<Vec<ClaimRow>, EngineError> {
    let rows: Vec<ClaimRow> = sqlx::query_as(
        // Per action, an ordered index scan that stops after `limit` rows; then the best of
        // those across the group's actions. (`action = ANY(..)` in one scan cannot use the
        // index's order, so it sorted the whole backlog on every pass.)
        "WITH picked AS ( \
           SELECT p.id FROM unnest($2::text[]) AS a(action) \
           CROSS JOIN LATERAL ( \
             SELECT q.id, q.priority FROM engine.queue_item q WHERE q.action = a.action AND q.tenant_id = $1 \
             ORDER BY q.priority DESC, q.id LIMIT $3 FOR UPDATE SKIP LOCKED) p \
           ORDER BY p.priority DESC, p.id LIMIT $3), \
         claimed AS ( \
           DELETE FROM engine.queue_item q USING picked WHERE q.id = picked.id \
           RETURNING q.id, q.task_id, q.retry_count, q.priority, q.schedule_timeout_at) \
         SELECT c.id AS queue_id, t.id AS task_id, c.retry_count, c.priority, c.schedule_timeout_at, s.slot_units, s.timeout_ms, \
                r.id AS run_id, r.workflow_id, r.workflow_version_id AS version_id, s.id AS step_id, \
                t.readable_id, t.action, r.additional_metadata, r.input, \
                (SELECT coalesce(jsonb_object_agg(p.readable_id, coalesce(p.output, '{}'::jsonb)), '{}'::jsonb) \
                   FROM engine.task p WHERE p.run_id = t.run_id AND p.readable_id = ANY(s.parents)) AS parents, \
                pt.run_id AS parent_run_id, r.child_index, r.child_key, t.created_at AS inserted_at, \
                CASE WHEN c.retry_count > 0 THEN ( \
                  SELECT e.worker_id FROM engine.task_event e WHERE e.task_id = t.id AND e.event_type = 'REQUEUED' \
                    AND e.retry_count = c.retry_count - 1 LIMIT 1) END AS avoid_worker \
         FROM claimed c \
         JOIN engine.task t ON t.id = c.task_id \
         JOIN engine.step s ON s.id = t.step_id \
         JOIN engine.workflow_run r ON r.id = t.run_id \
         LEFT JOIN engine.task pt ON pt.id = r.parent_task_id \
         ORDER BY c.priority DESC, c.id",
    )
    .bind(tenant)
    .bind(actions)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows)
}

/// A claimed queue item with what its assignment needs.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    /// The worker whose previous attempt of this task was lost or never started.
    avoid_worker: Option<Uuid>,
    queue_id: i64,
    task_id: Uuid,
    retry_count: i32,
    priority: i32,
    schedule_timeout_at: DateTime<Utc>,
    slot_units: i32,
    timeout_ms: i64,
    run_id: Uuid,
    workflow_id: Uuid,
    version_id: Uuid,
    step_id: Uuid,
    readable_id: String,
    action: String,
    additional_metadata: Value,
    input: Value,
    parents: Value,
    parent_run_id: Option<Uuid>,
    child_index: Option<i32>,
    child_key: Option<String>,
    inserted_at: DateTime<Utc>,
}

fn assigned_action(tenant: &str, d: ClaimRow) -> pb::AssignedAction {
    // The payload every SDK parses: `input` must always be there (the Rust crate panics
    // otherwise), `parents` holds the outputs of completed parents by readable id.
    let payload = json!({
        "input": d.input,
        "parents": d.parents,
        "triggered_by": "manual",
        "triggers": {"filter_payload": {}},
        "user_data": {},
        "overrides": {},
        "step_run_errors": {},
    });
    pb::AssignedAction {
        tenant_id: tenant.to_owned(),
        workflow_run_id: d.run_id.to_string(),
        get_group_key_run_id: String::new(),
        job_id: d.step_id.to_string(),
        job_name: d.readable_id.clone(),
        job_run_id: d.task_id.to_string(),
        task_id: d.step_id.to_string(),
        task_run_external_id: d.task_id.to_string(),
        action_id: d.action,
        action_type: pb::ActionType::StartStepRun as i32,
        action_payload: payload.to_string(),
        task_name: d.readable_id,
        retry_count: d.retry_count,
        additional_metadata: Some(d.additional_metadata.to_string()),
        child_workflow_index: d.child_index,
        child_workflow_key: d.child_key,
        parent_workflow_run_id: d.parent_run_id.map(|id| id.to_string()),
        priority: d.priority,
        workflow_id: Some(d.workflow_id.to_string()),
        workflow_version_id: Some(d.version_id.to_string()),
        triggering_event_external_id: None,
        triggering_event_key: None,
        task_inserted_at: Some(prost_types::Timestamp {
            seconds: d.inserted_at.timestamp(),
            nanos: d.inserted_at.timestamp_subsec_nanos() as i32,
        }),
    }
}
