//! Drain: this process stops handing out new work and waits until the tasks its workers are
//! running have finished (or been handed back), so it can be stopped or upgraded without
//! cutting a step short. Queued work stays queued (nothing is lost): other engine processes
//! keep assigning it, and this one resumes when told to or when the next one starts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainState {
    pub draining: bool,
    /// Task attempts still held by workers connected to this process.
    pub in_flight: i64,
    /// Draining and nothing in flight: safe to stop.
    pub drained: bool,
}

impl Engine {
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Stops assigning and waits up to `wait` for in-flight attempts to end.
    pub async fn drain(&self, wait: Duration) -> Result<DrainState, EngineError> {
        if !self.inner.draining.swap(true, Ordering::SeqCst) {
            tracing::info!("draining: no new work is assigned by this process");
        }
        // A pass that began before the flag was set finishes first; every later one sees it.
        drop(self.inner.pass_lock.lock().await);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let state = self.drain_state().await?;
            if state.drained || tokio::time::Instant::now() >= deadline {
                return Ok(state);
            }
            tokio::time::sleep(Duration::from_millis(100).min(deadline - tokio::time::Instant::now())).await;
        }
    }

    /// Assigns again after a drain.
    pub fn resume(&self) {
        if self.inner.draining.swap(false, Ordering::SeqCst) {
            tracing::info!("drain ended: assigning work again");
        }
        self.wake_assigner();
    }

    pub async fn drain_state(&self) -> Result<DrainState, EngineError> {
        let ids: Vec<Uuid> = self.connected().keys().copied().collect();
        let in_flight: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.task_runtime WHERE worker_id = ANY($1)")
            .bind(&ids)
            .fetch_one(self.pool())
            .await?;
        let draining = self.is_draining();
        Ok(DrainState { draining, in_flight, drained: draining && in_flight == 0 })
    }
}
