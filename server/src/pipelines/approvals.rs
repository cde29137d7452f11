//! The approval worker: the control plane registers with the engine as a worker for the
//! approval action only (many slots, none of any pool's), takes each gate step as it comes
//! due, records it as waiting, and reports it COMPLETED when an owner approves, FAILED when
//! one rejects, or FAILED when its timeout passes undecided. A decision is a row, so it
//! reaches the step whichever server process holds it; after a restart the engine hands the
//! waiting step to the new process (heartbeat timeout), which finds the decision (or the
//! wait, with its first deadline) in the database.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use sfp_protocol::client::{HatchetClient, now};
use sfp_protocol::pb;
use sfp_workflows::pipeline::APPROVAL_ACTION;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SLOTS: i32 = 1000;

/// A gate step this process holds.
struct Held {
    event: pb::StepActionEvent,
}

pub async fn run(client: HatchetClient, pool: PgPool, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        if let Err(e) = serve(&client, &pool, &shutdown).await {
            tracing::warn!(error = %e, retry_in = ?backoff, "the approval worker lost the engine; reconnecting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn serve(client: &HatchetClient, pool: &PgPool, shutdown: &CancellationToken) -> Result<(), tonic::Status> {
    let registered = client
        .dispatcher()
        .register(pb::WorkerRegisterRequest {
            worker_name: format!("sfp-server-approvals-{}", std::process::id()),
            actions: vec![APPROVAL_ACTION.to_string()],
            services: vec!["default".into()],
            slots: Some(SLOTS),
            ..Default::default()
        })
        .await?;
    let worker_id = registered.into_inner().worker_id;
    let mut stream =
        client.dispatcher().listen_v2(pb::WorkerListenRequest { worker_id: worker_id.clone() }).await?.into_inner();
    tracing::info!(worker = %worker_id, "approval worker listening");
    let mut held: HashMap<Uuid, Held> = HashMap::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(4));
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = client.dispatcher().unsubscribe(pb::WorkerUnsubscribeRequest { worker_id: worker_id.clone() }).await;
                return Ok(());
            }
            message = stream.next() => match message {
                Some(Ok(action)) => take(client, pool, &worker_id, action, &mut held).await,
                Some(Err(status)) => return Err(status),
                None => return Err(tonic::Status::unavailable("the assignment stream ended")),
            },
            _ = heartbeat.tick() => {
                let _ = client.dispatcher().heartbeat(pb::HeartbeatRequest { worker_id: worker_id.clone(), heartbeat_at: Some(now()) }).await;
            }
            _ = poll.tick(), if !held.is_empty() => decide(client, pool, &mut held).await,
        }
    }
}

async fn take(
    client: &HatchetClient,
    pool: &PgPool,
    worker_id: &str,
    action: pb::AssignedAction,
    held: &mut HashMap<Uuid, Held>,
) {
    let Ok(task_run) = Uuid::parse_str(&action.task_run_external_id) else { return };
    if action.action_type == pb::ActionType::CancelStepRun as i32 {
        held.remove(&task_run);
        return;
    }
    let event = pb::StepActionEvent {
        worker_id: worker_id.to_string(),
        job_id: action.job_id.clone(),
        job_run_id: action.job_run_id.clone(),
        task_id: action.task_id.clone(),
        task_run_external_id: action.task_run_external_id.clone(),
        action_id: action.action_id.clone(),
        event_timestamp: Some(now()),
        event_type: pb::StepActionEventType::StepEventTypeStarted as i32,
        event_payload: String::new(),
        retry_count: Some(action.retry_count),
        should_not_retry: None,
        retry_after_ms: None,
    };
    let payload: Value = serde_json::from_str(&action.action_payload).unwrap_or_default();
    let gate = &payload["input"]["steps"][&action.task_name]["approval"];
    let run = gate["pipelineRun"].as_str().and_then(|r| Uuid::parse_str(r).ok());
    let timeout = gate["timeoutSeconds"].as_i64().unwrap_or(86_400);
    let Some(run) = run else {
        let mut failed = event.clone();
        failed.event_type = pb::StepActionEventType::StepEventTypeFailed as i32;
        failed.event_payload = "the approval step's input names no pipeline run".into();
        failed.should_not_retry = Some(true);
        let _ = client.dispatcher().send_step_action_event(failed).await;
        return;
    };
    let recorded = sqlx::query(
        "INSERT INTO app.pipeline_approval (task_run_id, pipeline_run, step, message, status, expires_at) \
         VALUES ($1, $2, $3, $4, 'waiting', now() + make_interval(secs => $5)) ON CONFLICT (task_run_id) DO NOTHING",
    )
    .bind(task_run)
    .bind(run)
    .bind(&action.task_name)
    .bind(gate["message"].as_str())
    .bind(timeout as f64)
    .execute(pool)
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "cannot record an approval; the engine will hand it out again");
        return;
    }
    let _ = client.dispatcher().send_step_action_event(event.clone()).await;
    tracing::info!(run = %run, step = %action.task_name, "waiting for approval");
    held.insert(task_run, Held { event });
    // A decision taken while no process held the step is reported at once.
    decide(client, pool, held).await;
}

async fn decide(client: &HatchetClient, pool: &PgPool, held: &mut HashMap<Uuid, Held>) {
    let ids: Vec<Uuid> = held.keys().copied().collect();
    // The deadline is the one set when the gate first waited, whichever process holds it now;
    // the engine's own timeout starts over when the gate is handed to another process.
    if let Err(e) = sqlx::query(
        "UPDATE app.pipeline_approval SET status = 'expired', decided_at = now() \
         WHERE task_run_id = ANY($1) AND status = 'waiting' AND expires_at <= now()",
    )
    .bind(&ids)
    .execute(pool)
    .await
    {
        tracing::warn!(error = %e, "cannot expire approvals; trying again");
    }
    let decided: Vec<(Uuid, String, Option<String>, Option<String>)> = match sqlx::query_as(
        "SELECT a.task_run_id, a.status, a.comment, u.email FROM app.pipeline_approval a \
         LEFT JOIN auth.users u ON u.id = a.decided_by WHERE a.task_run_id = ANY($1) AND a.status <> 'waiting'",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    {
        Ok(d) => d,
        Err(_) => return,
    };
    for (task_run, status, comment, by) in decided {
        let Some(h) = held.get(&task_run) else { continue };
        let mut event = h.event.clone();
        event.event_timestamp = Some(now());
        if status == "approved" {
            event.event_type = pb::StepActionEventType::StepEventTypeCompleted as i32;
            event.event_payload = json!({"approved": true, "by": by, "comment": comment}).to_string();
        } else if status == "expired" {
            event.event_type = pb::StepActionEventType::StepEventTypeFailed as i32;
            event.event_payload = "no decision before the approval's timeout".into();
            event.should_not_retry = Some(true);
        } else {
            event.event_type = pb::StepActionEventType::StepEventTypeFailed as i32;
            event.event_payload = format!(
                "rejected by {}{}",
                by.unwrap_or_else(|| "an owner".into()),
                comment.map(|c| format!(": {c}")).unwrap_or_default()
            );
            event.should_not_retry = Some(true);
        }
        match client.dispatcher().send_step_action_event(event).await {
            Ok(_) => {
                held.remove(&task_run);
            }
            Err(e) => tracing::warn!(error = %e.message(), "cannot report an approval yet; retrying"),
        }
    }
}
