//! The embedded durable workflow engine. It speaks the Hatchet protocol (gRPC for workers
//! and clients, a REST subset for run details and workers), keeps every state change in
//! PostgreSQL (schema `engine`) before acknowledging it, and pushes assignments to the
//! workers whose `ListenV2` streams this process holds.
//!
//! [`serve`] runs the gRPC and REST servers on listeners the caller bound, with the
//! background loops (assignment), until the cancellation token fires.

mod assign;
pub mod cancel;
pub mod config;
pub mod crons;
mod drain;
mod engine;
mod events;
pub mod grpc;
pub mod history;
pub mod listing;
mod metrics;
pub mod model;
mod reports;
pub mod rest;
mod runs;
pub mod schedules;
mod signals;
mod sweeper;
mod task_events;
pub mod tenant;
mod workers;
mod workflows;

pub use config::EngineConfig;
pub use drain::DrainState;
pub use engine::{Engine, EngineError};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the engine until `shutdown` is cancelled.
pub async fn serve(
    engine: Engine,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let closer = engine.clone();
    let closing = shutdown.clone();
    tokio::spawn(async move {
        closing.cancelled().await;
        closer.close_streams();
    });
    let assigner = tokio::spawn(assign::run(engine.clone(), shutdown.clone()));
    let sweeper = tokio::spawn(sweeper::run(engine.clone(), shutdown.clone()));
    let scheduler = tokio::spawn(crons::run(engine.clone(), shutdown.clone()));
    let report_queue = engine.inner.report_queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    let flusher = report_queue.map(|queue| tokio::spawn(reports::run(engine.clone(), queue, shutdown.clone())));
    let signal_queue = engine.inner.signal_queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(queue) = signal_queue {
        let listener = signals::subscribe(&engine)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "could not listen for other engine processes"))
            .ok();
        if let Err(e) = signals::announce(&engine).await {
            tracing::warn!(error = %e, "could not register this engine process");
        }
        tokio::spawn(signals::listen(engine.clone(), listener, shutdown.clone()));
        tokio::spawn(signals::keep_presence(engine.clone(), shutdown.clone()));
        tokio::spawn(signals::publish(engine.clone(), queue, shutdown.clone()));
    }
    let grpc = tokio::spawn(grpc::serve(engine.clone(), grpc_listener, shutdown.clone()));
    let rest = tokio::spawn(rest::serve(engine.clone(), http_listener, shutdown.clone()));
    let (a, g, r) = tokio::join!(assigner, grpc, rest);
    if let Some(flusher) = flusher {
        flusher.await?;
    }
    sweeper.await?;
    scheduler.await?;
    a?;
    g??;
    r??;
    Ok(())
}
