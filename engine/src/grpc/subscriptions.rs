//! `SubscribeToWorkflowRuns`: a client writes run ids on a shared stream and gets one
//! FINISHED event per run, with every task's result, also for runs that had already
//! finished when it subscribed.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::Stream;
use sfp_protocol::pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use uuid::Uuid;

use crate::engine::Engine;
use crate::model::RunStatus;

pub(crate) fn run_events(
    engine: Engine,
    mut incoming: Streaming<pb::SubscribeToWorkflowRunsRequest>,
) -> impl Stream<Item = Result<pb::WorkflowRunEvent, Status>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut finished = engine.inner.run_finished.subscribe();
        let mut pending: HashSet<Uuid> = HashSet::new();
        let mut reading = true;
        // Runs finished by another engine process reach us through this poll.
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            let mut ready: Vec<Uuid> = Vec::new();
            tokio::select! {
                message = incoming.message(), if reading => match message {
                    Ok(Some(req)) => match Uuid::parse_str(req.workflow_run_id.trim()) {
                        Ok(id) => {
                            if pending.insert(id) {
                                ready.extend(engine.finished_among(&[id]).await.unwrap_or_default());
                            }
                        }
                        Err(_) => tracing::debug!(run = %req.workflow_run_id, "subscription to a run id that is not a UUID"),
                    },
                    _ => reading = false,
                },
                event = finished.recv() => match event {
                    Ok(id) if pending.contains(&id) => ready.push(id),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let ids: Vec<Uuid> = pending.iter().copied().collect();
                        ready.extend(engine.finished_among(&ids).await.unwrap_or_default());
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = poll.tick() => {
                    if !pending.is_empty() {
                        let ids: Vec<Uuid> = pending.iter().copied().collect();
                        ready.extend(engine.finished_among(&ids).await.unwrap_or_default());
                    }
                }
                _ = tx.closed() => break,
                _ = engine.inner.closing.cancelled() => break,
            }
            for id in ready {
                if !pending.remove(&id) {
                    continue;
                }
                match finished_event(&engine, id).await {
                    Ok(event) => {
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(run = %id, error = %e, "could not build a run-finished event");
                        pending.insert(id);
                    }
                }
            }
            if !reading && pending.is_empty() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The FINISHED event of a run: one result per task (never empty: the TypeScript SDK falls
/// back to REST when it is).
pub(crate) async fn finished_event(engine: &Engine, run_id: Uuid) -> Result<pb::WorkflowRunEvent, crate::EngineError> {
    let run = engine.run_view(run_id).await?;
    let results = run
        .tasks
        .iter()
        .map(|t| pb::StepRunResult {
            task_run_external_id: t.id.to_string(),
            task_name: t.readable_id.clone(),
            job_run_id: t.id.to_string(),
            error: match t.status {
                RunStatus::Failed | RunStatus::Cancelled => {
                    Some(t.error.clone().unwrap_or_else(|| format!("task {}", t.status.as_str().to_lowercase())))
                }
                _ => None,
            },
            output: match t.status {
                RunStatus::Completed => Some(t.output.clone().unwrap_or(serde_json::Value::Null).to_string()),
                _ => None,
            },
        })
        .collect();
    Ok(pb::WorkflowRunEvent {
        workflow_run_id: run_id.to_string(),
        event_type: pb::WorkflowRunEventType::Finished as i32,
        event_timestamp: Some(super::timestamp(run.finished_at.unwrap_or_else(chrono::Utc::now))),
        results,
    })
}
