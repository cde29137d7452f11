//! `SubscribeToWorkflowEvents`: what happens inside runs, live. Every event comes from the
//! task event log (lifecycle events and the chunks tasks stream with `PutStreamEvent`), so a
//! subscriber that arrives late still receives everything from the start of the run, in
//! order, and nothing twice. A subscription to one run ends (`hangup`) with the run's own
//! final event; a subscription by additional metadata follows every matching run until the
//! client leaves.
//!
//! Wake-ups come from this process's writes; a one-second poll covers the writes of other
//! engine processes on the same database.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde_json::Value;
use sfp_protocol::pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::model::RunStatus;

/// Whose events a subscription wants.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    Run(Uuid),
    Metadata { key: String, value: String },
}

/// Rows whose transaction began longer ago than this are taken as committed in id order;
/// newer ones are re-read until then, because a transaction that took a lower id may commit
/// after one with a higher id (the engine's transactions last milliseconds).
const SETTLE: Duration = Duration::from_secs(10);
const PAGE: i64 = 500;

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    run_id: Uuid,
    task_id: Uuid,
    retry_count: i32,
    event_type: String,
    message: String,
    payload: Option<Vec<u8>>,
    event_index: Option<i64>,
    created_at: DateTime<Utc>,
    output: Option<Value>,
    retries: i32,
}

pub(crate) async fn open(
    engine: Engine,
    filter: Filter,
) -> Result<impl Stream<Item = Result<pb::WorkflowEvent, Status>>, EngineError> {
    if let Filter::Run(id) = &filter {
        // Fails with NotFound for a run that does not exist.
        engine.run_view(*id).await?;
    }
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        if let Err(e) = follow(&engine, &filter, &tx).await {
            tracing::warn!(error = %e, ?filter, "run event stream ended");
            let _ = tx.send(Err(Status::from(e))).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

async fn follow(
    engine: &Engine,
    filter: &Filter,
    tx: &mpsc::Sender<Result<pb::WorkflowEvent, Status>>,
) -> Result<(), EngineError> {
    let mut activity = engine.inner.run_activity.subscribe();
    let mut low = 0i64; // every event with an id up to here was sent (or skipped) for good
    let mut seen: HashSet<i64> = HashSet::new();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    loop {
        let rows = read(engine, filter, low).await?;
        let settled_before = Utc::now() - chrono::Duration::from_std(SETTLE).unwrap_or_default();
        let full_page = rows.len() as i64 == PAGE;
        for row in rows {
            if !seen.insert(row.id) {
                continue;
            }
            if let Some(event) = to_event(&row)
                && tx.send(Ok(event)).await.is_err()
            {
                return Ok(());
            }
            if row.created_at < settled_before {
                low = low.max(row.id);
            }
        }
        seen.retain(|&id| id > low);
        if full_page {
            continue;
        }
        if let Filter::Run(run_id) = filter {
            let run = engine.run_view(*run_id).await?;
            if run.status.is_final() {
                // Everything the run wrote is committed with its final status: one last read.
                for row in read(engine, filter, low).await? {
                    if seen.insert(row.id)
                        && let Some(event) = to_event(&row)
                        && tx.send(Ok(event)).await.is_err()
                    {
                        return Ok(());
                    }
                }
                let _ = tx.send(Ok(run_finished(*run_id, run.status, run.error.clone(), run.finished_at))).await;
                return Ok(());
            }
        }
        tokio::select! {
            woken = activity.recv() => match woken {
                Ok(id) if matches!(filter, Filter::Run(r) if *r != id) => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = poll.tick() => {}
            _ = tx.closed() => return Ok(()),
            _ = engine.inner.closing.cancelled() => return Ok(()),
        }
    }
}

async fn read(engine: &Engine, filter: &Filter, after: i64) -> Result<Vec<EventRow>, EngineError> {
    let (run, key, value) = match filter {
        Filter::Run(id) => (Some(*id), None, None),
        Filter::Metadata { key, value } => (None, Some(key.as_str()), Some(value.as_str())),
    };
    let rows = sqlx::query_as(
        "SELECT e.id, t.run_id, e.task_id, e.retry_count, e.event_type, e.message, e.payload, e.event_index, \
                e.created_at, t.output, s.retries \
         FROM engine.task_event e \
         JOIN engine.task t ON t.id = e.task_id \
         JOIN engine.step s ON s.id = t.step_id \
         JOIN engine.workflow_run r ON r.id = t.run_id \
         WHERE r.tenant_id = $1 AND e.id > $2 \
           AND e.event_type IN ('STARTED', 'COMPLETED', 'FAILED', 'CANCELLED', 'TIMED_OUT', 'STREAM') \
           AND (($3::uuid IS NOT NULL AND t.run_id = $3) \
                OR ($4::text IS NOT NULL AND r.additional_metadata ->> $4 = $5)) \
         ORDER BY e.id LIMIT $6",
    )
    .bind(engine.tenant_id())
    .bind(after)
    .bind(run)
    .bind(key)
    .bind(value)
    .bind(PAGE)
    .fetch_all(engine.pool())
    .await?;
    Ok(rows)
}

fn to_event(row: &EventRow) -> Option<pb::WorkflowEvent> {
    use pb::ResourceEventType as E;
    let (kind, payload) = match row.event_type.as_str() {
        "STARTED" => (E::Started, String::new()),
        "COMPLETED" => (E::Completed, row.output.clone().unwrap_or(Value::Null).to_string()),
        "FAILED" => (E::Failed, row.message.clone()),
        "CANCELLED" => (E::Cancelled, row.message.clone()),
        "TIMED_OUT" => (E::TimedOut, row.message.clone()),
        "STREAM" => (E::Stream, String::from_utf8_lossy(row.payload.as_deref().unwrap_or_default()).into_owned()),
        _ => return None,
    };
    Some(pb::WorkflowEvent {
        workflow_run_id: row.run_id.to_string(),
        resource_type: pb::ResourceType::StepRun as i32,
        event_type: kind as i32,
        resource_id: row.task_id.to_string(),
        event_timestamp: Some(super::timestamp(row.created_at)),
        event_payload: payload,
        hangup: false,
        task_retries: Some(row.retries),
        retry_count: Some(row.retry_count),
        event_index: row.event_index,
    })
}

/// The run's own last event: its final status, and the end of the subscription.
fn run_finished(
    run_id: Uuid,
    status: RunStatus,
    error: Option<String>,
    at: Option<DateTime<Utc>>,
) -> pb::WorkflowEvent {
    use pb::ResourceEventType as E;
    let kind = match status {
        RunStatus::Failed => E::Failed,
        RunStatus::Cancelled => E::Cancelled,
        _ => E::Completed,
    };
    pb::WorkflowEvent {
        workflow_run_id: run_id.to_string(),
        resource_type: pb::ResourceType::WorkflowRun as i32,
        event_type: kind as i32,
        resource_id: run_id.to_string(),
        event_timestamp: Some(super::timestamp(at.unwrap_or_else(Utc::now))),
        event_payload: error.unwrap_or_default(),
        hangup: true,
        task_retries: None,
        retry_count: None,
        event_index: None,
    }
}
