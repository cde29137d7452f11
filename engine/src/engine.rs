//! The shared engine handle: database pool, configuration, the workers whose streams this
//! process holds, and the wake-ups between the parts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::EngineConfig;
use crate::reports::{ReportReceiver, ReportSender};
use crate::signals::{Signal, SignalReceiver, SignalSender};
use crate::workers::ConnectedWorker;

/// Errors of engine operations; the gRPC and REST layers map them to their status codes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<EngineError> for tonic::Status {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            EngineError::NotFound(m) => tonic::Status::not_found(m),
            EngineError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            EngineError::Unavailable(m) => {
                tracing::warn!(error = %m, "engine unavailable");
                tonic::Status::unavailable("the engine could not record this now; try again")
            }
            EngineError::Database(e) => {
                tracing::error!(error = %e, "engine database error");
                tonic::Status::unavailable("the engine's database is not available; try again")
            }
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub pool: PgPool,
    pub config: EngineConfig,
    /// Workers with a live `Listen`/`ListenV2` stream on this process.
    pub workers: Mutex<HashMap<Uuid, ConnectedWorker>>,
    /// Wakes the assigner: new queue items, freed slots, new streams.
    pub assign_wake: Notify,
    /// Wakes the scheduler: a cron or scheduled run was added or changed here.
    pub schedules_changed: Notify,
    /// Whether queue items may be waiting that this process could assign: set by whatever
    /// queues work or makes it assignable, cleared by a pass that drained what it could see.
    pub work_waiting: std::sync::atomic::AtomicBool,
    /// Whether queued work is waiting for free slots: the next release wakes the assigner.
    pub needs_capacity: std::sync::atomic::AtomicBool,
    /// Runs that reached a final status (for run subscriptions).
    pub run_finished: broadcast::Sender<Uuid>,
    /// Runs with new task events or stream chunks (for run event streams).
    pub run_activity: broadcast::Sender<Uuid>,
    /// Cancelled when the engine shuts down: open streams end so the servers can stop.
    pub closing: CancellationToken,
    /// When the earliest retry queued by this process becomes due (the assigner's alarm).
    pub retry_due: Mutex<std::collections::BinaryHeap<std::cmp::Reverse<std::time::Instant>>>,
    /// This process, in the signals it sends to the others.
    pub process_id: Uuid,
    /// Whether other engine processes share the database (then signals are published).
    pub has_peers: std::sync::atomic::AtomicBool,
    /// Signals for other engine processes, and the other end, taken by `serve`.
    pub signals: SignalSender,
    pub signal_queue: Mutex<Option<SignalReceiver>>,
    /// Worker reports waiting for the next group commit (`reports`).
    pub reports: ReportSender,
    /// The other end, taken by `serve` for the flusher.
    pub report_queue: Mutex<Option<ReportReceiver>>,
    /// Set by a drain: no new work is assigned by this process.
    pub draining: std::sync::atomic::AtomicBool,
    /// Held by each assignment pass; a drain takes it once after setting `draining`, so that a
    /// pass begun before the drain cannot hand out work after the drain has answered.
    pub pass_lock: tokio::sync::Mutex<()>,
    pub metrics: crate::metrics::EngineMetrics,
    /// When this process started (the unstarted-attempt sweep waits as long as it allows).
    pub started: std::time::Instant,
}

impl Engine {
    pub fn new(pool: PgPool, config: EngineConfig) -> Engine {
        let (run_finished, _) = broadcast::channel(4096);
        let (run_activity, _) = broadcast::channel(4096);
        let (reports, report_queue) = crate::reports::channel();
        let (signals, signal_queue) = crate::signals::channel();
        Engine {
            inner: Arc::new(Inner {
                pool,
                config,
                workers: Mutex::new(HashMap::new()),
                assign_wake: Notify::new(),
                schedules_changed: Notify::new(),
                work_waiting: std::sync::atomic::AtomicBool::new(true),
                needs_capacity: std::sync::atomic::AtomicBool::new(false),
                run_finished,
                run_activity,
                closing: CancellationToken::new(),
                retry_due: Mutex::new(std::collections::BinaryHeap::new()),
                process_id: Uuid::new_v4(),
                has_peers: std::sync::atomic::AtomicBool::new(false),
                signals,
                signal_queue: Mutex::new(Some(signal_queue)),
                reports,
                report_queue: Mutex::new(Some(report_queue)),
                draining: std::sync::atomic::AtomicBool::new(false),
                pass_lock: tokio::sync::Mutex::new(()),
                metrics: crate::metrics::EngineMetrics::new(),
                started: std::time::Instant::now(),
            }),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn tenant_id(&self) -> Uuid {
        self.inner.config.tenant_id
    }

    /// Work may be waiting (queued, or newly assignable): the assigner looks at once.
    pub(crate) fn wake_assigner(&self) {
        self.inner.work_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.assign_wake.notify_one();
    }

    pub(crate) fn connected(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, ConnectedWorker>> {
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a finished attempt's slot units back to its worker, if its stream is here.
    pub(crate) fn release_slots(&self, worker_id: Uuid, units: i32) {
        if let Some(w) = self.connected().get_mut(&worker_id) {
            w.free_slots += units;
        }
        // Freed capacity matters only when work is waiting for it; otherwise a pass would
        // find nothing and only take time from the reports and triggers that are running.
        if self.inner.needs_capacity.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.wake_assigner();
        } else if self.inner.work_waiting.load(std::sync::atomic::Ordering::SeqCst) {
            self.inner.assign_wake.notify_one();
        }
    }

    /// Ends every open stream (assignments, run subscriptions): workers reconnect to
    /// whichever engine comes up next, as they do after any disconnect.
    pub(crate) fn close_streams(&self) {
        self.inner.closing.cancel();
        self.connected().clear();
    }

    /// Wakes the event streams following these runs, here and in other engine processes.
    pub(crate) fn announce_activity(&self, run_ids: impl IntoIterator<Item = Uuid>) {
        let ids: Vec<Uuid> = run_ids.into_iter().collect();
        if ids.is_empty() {
            return;
        }
        if self.inner.run_activity.receiver_count() > 0 {
            for id in &ids {
                let _ = self.inner.run_activity.send(*id);
            }
        }
        self.signal(Signal::Activity(ids));
    }

    /// Tells run subscribers, here and in other engine processes, that these runs finished.
    pub(crate) fn announce_finished(&self, run_ids: &[Uuid]) {
        for id in run_ids {
            let _ = self.inner.run_finished.send(*id);
        }
        self.signal(Signal::Finished(run_ids.to_vec()));
    }

    /// Work was queued: other engine processes' assigners look too.
    pub(crate) fn announce_queued(&self) {
        self.signal(Signal::Queued);
    }

    fn signal(&self, signal: Signal) {
        let _ = self.inner.signals.send(signal);
    }
}

/// A page request: `limit` between 1 and `max`, `offset` not negative.
pub(crate) fn check_page(offset: i64, limit: i64, max: i64) -> Result<(), EngineError> {
    if !(1..=max).contains(&limit) {
        return Err(EngineError::InvalidArgument(format!("limit must be between 1 and {max}")));
    }
    if offset < 0 {
        return Err(EngineError::InvalidArgument("offset must not be negative".into()));
    }
    Ok(())
}

/// Parses a UUID given by a client, naming the field when it is not one.
pub(crate) fn parse_id(value: &str, field: &str) -> Result<Uuid, EngineError> {
    Uuid::parse_str(value.trim()).map_err(|_| EngineError::InvalidArgument(format!("{field} {value:?} is not a UUID")))
}

/// Parses a JSON document given by a client; an empty string is `{}`.
pub(crate) fn parse_json(value: &str, field: &str) -> Result<serde_json::Value, EngineError> {
    if value.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(value).map_err(|e| EngineError::InvalidArgument(format!("{field} is not valid JSON: {e}")))
}
