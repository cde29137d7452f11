//! Workers: registration, the assignment stream each holds, heartbeats, pausing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::Stream;
use sfp_protocol::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};

/// A worker whose assignment stream this process holds.
pub(crate) struct ConnectedWorker {
    pub session: u64,
    pub actions: Vec<String>,
    pub free_slots: i32,
    pub paused: bool,
    pub sender: mpsc::Sender<Result<pb::AssignedAction, tonic::Status>>,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

pub struct Registration {
    pub worker_name: String,
    pub actions: Vec<String>,
    pub slots: i32,
    pub labels: serde_json::Value,
    pub runtime_info: Option<serde_json::Value>,
}

/// The stream returned by `Listen`/`ListenV2`; when the client goes away the worker stops
/// getting work.
pub struct AssignmentStream {
    inner: ReceiverStream<Result<pb::AssignedAction, tonic::Status>>,
    guard: Option<(Engine, Uuid, u64)>,
}

impl Stream for AssignmentStream {
    type Item = Result<pb::AssignedAction, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for AssignmentStream {
    fn drop(&mut self) {
        if let Some((engine, worker_id, session)) = self.guard.take() {
            engine.disconnect(worker_id, session);
        }
    }
}

/// A worker update that matched no row names the worker that does not exist.
fn found(done: sqlx::postgres::PgQueryResult, worker_id: Uuid) -> Result<(), EngineError> {
    if done.rows_affected() == 0 {
        return Err(EngineError::NotFound(format!("worker {worker_id} is not registered")));
    }
    Ok(())
}

impl Engine {
    pub async fn register_worker(&self, reg: Registration) -> Result<Uuid, EngineError> {
        if reg.worker_name.trim().is_empty() {
            return Err(EngineError::InvalidArgument("worker_name is required".into()));
        }
        if reg.slots < 1 {
            return Err(EngineError::InvalidArgument("a worker needs at least one slot".into()));
        }
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO engine.worker (id, tenant_id, name, actions, slots, labels, runtime_info) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(self.tenant_id())
        .bind(&reg.worker_name)
        .bind(&reg.actions)
        .bind(reg.slots)
        .bind(&reg.labels)
        .bind(&reg.runtime_info)
        .execute(self.pool())
        .await?;
        tracing::info!(worker_id = %id, name = %reg.worker_name, actions = reg.actions.len(), slots = reg.slots, "worker registered");
        Ok(id)
    }

    /// Opens the worker's assignment stream, replacing an earlier one of the same worker.
    pub async fn listen(&self, worker_id: Uuid) -> Result<AssignmentStream, EngineError> {
        let row: Option<(Vec<String>, i32, bool, i64)> = sqlx::query_as(
            "UPDATE engine.worker w SET is_active = true, last_listener_at = now(), last_heartbeat_at = now() \
             WHERE w.id = $1 AND w.tenant_id = $2 \
             RETURNING w.actions, w.slots, w.is_paused, \
               (SELECT coalesce(sum(rt.slot_units), 0) FROM engine.task_runtime rt WHERE rt.worker_id = w.id)::bigint",
        )
        .bind(worker_id)
        .bind(self.tenant_id())
        .fetch_optional(self.pool())
        .await?;
        let Some((actions, slots, paused, used)) = row else {
            return Err(EngineError::NotFound(format!("worker {worker_id} is not registered")));
        };
        let (sender, receiver) = mpsc::channel(slots.clamp(16, 10_000) as usize);
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let worker = ConnectedWorker { session, actions, free_slots: slots - used as i32, paused, sender };
        if self.inner.closing.is_cancelled() {
            return Err(EngineError::FailedPrecondition("the engine is shutting down".into()));
        }
        self.connected().insert(worker_id, worker);
        self.wake_assigner();
        Ok(AssignmentStream { inner: ReceiverStream::new(receiver), guard: Some((self.clone(), worker_id, session)) })
    }

    /// The stream of `session` ended: the worker gets no more work until it listens again.
    fn disconnect(&self, worker_id: Uuid, session: u64) {
        let removed = {
            let mut workers = self.connected();
            match workers.get(&worker_id) {
                Some(w) if w.session == session => workers.remove(&worker_id).is_some(),
                _ => false,
            }
        };
        if removed {
            let engine = self.clone();
            tokio::spawn(async move {
                let result =
                    sqlx::query("UPDATE engine.worker SET is_active = false, last_listener_at = now() WHERE id = $1")
                        .bind(worker_id)
                        .execute(engine.pool())
                        .await;
                if let Err(e) = result {
                    tracing::warn!(%worker_id, error = %e, "could not mark worker inactive");
                }
            });
            tracing::info!(%worker_id, "worker stream closed");
        }
    }

    pub async fn heartbeat(&self, worker_id: Uuid) -> Result<(), EngineError> {
        let done = sqlx::query("UPDATE engine.worker SET last_heartbeat_at = now() WHERE id = $1 AND tenant_id = $2")
            .bind(worker_id)
            .bind(self.tenant_id())
            .execute(self.pool())
            .await?;
        found(done, worker_id)?;
        Ok(())
    }

    /// The worker leaves: no more work, its stream ends.
    pub async fn unsubscribe(&self, worker_id: Uuid) -> Result<(), EngineError> {
        let done = sqlx::query(
            "UPDATE engine.worker SET is_active = false, last_listener_at = now() WHERE id = $1 AND tenant_id = $2",
        )
        .bind(worker_id)
        .bind(self.tenant_id())
        .execute(self.pool())
        .await?;
        found(done, worker_id)?;
        self.connected().remove(&worker_id);
        Ok(())
    }

    /// Pauses or resumes a worker: a paused worker keeps its running tasks but gets no new ones.
    pub async fn set_paused(&self, worker_id: Uuid, paused: bool) -> Result<(), EngineError> {
        let done = sqlx::query("UPDATE engine.worker SET is_paused = $3 WHERE id = $1 AND tenant_id = $2")
            .bind(worker_id)
            .bind(self.tenant_id())
            .bind(paused)
            .execute(self.pool())
            .await?;
        found(done, worker_id)?;
        if let Some(w) = self.connected().get_mut(&worker_id) {
            w.paused = paused;
        }
        self.wake_assigner();
        Ok(())
    }

    pub async fn upsert_labels(
        &self,
        worker_id: Uuid,
        labels: HashMap<String, serde_json::Value>,
    ) -> Result<(), EngineError> {
        let done = sqlx::query("UPDATE engine.worker SET labels = labels || $3 WHERE id = $1 AND tenant_id = $2")
            .bind(worker_id)
            .bind(self.tenant_id())
            .bind(serde_json::to_value(labels).unwrap_or_default())
            .execute(self.pool())
            .await?;
        found(done, worker_id)?;
        Ok(())
    }
}
