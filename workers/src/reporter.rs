//! Reports to the engine: a step's lifecycle events (retried until the engine has them),
//! its output lines (`PutLog`) and its progress (`PutStreamEvent`).

use std::time::Duration;

use sfp_protocol::client::{HatchetClient, now};
use sfp_protocol::pb;
use tokio::sync::mpsc;
use tonic::Code;
use uuid::Uuid;

use crate::step::Report;

/// The attempt a report is about, as the engine assigned it.
#[derive(Debug, Clone)]
pub struct Attempt {
    worker_id: Uuid,
    job_id: String,
    job_run_id: String,
    task_id: String,
    task_run: String,
    action_id: String,
    retry_count: i32,
}

impl Attempt {
    pub fn new(worker_id: Uuid, action: &pb::AssignedAction) -> Self {
        Self {
            worker_id,
            job_id: action.job_id.clone(),
            job_run_id: action.job_run_id.clone(),
            task_id: action.task_id.clone(),
            task_run: action.task_run_external_id.clone(),
            action_id: action.action_id.clone(),
            retry_count: action.retry_count,
        }
    }
}

/// How long a final report is retried while the engine is unreachable. Past that the
/// engine's own timeouts take over (it re-runs a step whose worker went quiet).
const REPORT_PATIENCE: Duration = Duration::from_secs(300);

pub async fn send_event(
    client: &HatchetClient,
    attempt: &Attempt,
    kind: pb::StepActionEventType,
    payload: String,
    should_not_retry: Option<bool>,
) {
    let event = pb::StepActionEvent {
        worker_id: attempt.worker_id.to_string(),
        job_id: attempt.job_id.clone(),
        job_run_id: attempt.job_run_id.clone(),
        task_id: attempt.task_id.clone(),
        task_run_external_id: attempt.task_run.clone(),
        action_id: attempt.action_id.clone(),
        event_timestamp: Some(now()),
        event_type: kind as i32,
        event_payload: payload,
        retry_count: Some(attempt.retry_count),
        should_not_retry,
        retry_after_ms: None,
    };
    let give_up = tokio::time::Instant::now() + REPORT_PATIENCE;
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.dispatcher().send_step_action_event(event.clone()).await {
            Ok(_) => return,
            Err(status) if retryable(status.code()) && tokio::time::Instant::now() < give_up => {
                tracing::warn!(task = %attempt.task_run, ?kind, error = %status.message(), retry_in = ?backoff, "report failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(status) => {
                // Refused for good: the attempt is over on the engine's side (cancelled, timed out,
                // reassigned) or the engine stayed away too long.
                tracing::warn!(task = %attempt.task_run, ?kind, code = ?status.code(), error = %status.message(), "report not accepted");
                return;
            }
        }
    }
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// Sends a step's reports in order until the step drops its sender. A report that cannot
/// be delivered after a few tries is dropped (they are for watching, not for the result).
pub async fn forward(client: HatchetClient, attempt: Attempt, mut reports: mpsc::UnboundedReceiver<Report>) {
    let mut events = client.events();
    let mut index: i64 = 0;
    let mut dropped = 0u64;
    while let Some(report) = reports.recv().await {
        let mut tries = 0;
        loop {
            let result = match &report {
                Report::Log { level, message } => events
                    .put_log(pb::PutLogRequest {
                        task_run_external_id: attempt.task_run.clone(),
                        created_at: Some(now()),
                        message: message.clone(),
                        level: Some((*level).to_string()),
                        metadata: String::new(),
                        task_retry_count: Some(attempt.retry_count),
                    })
                    .await
                    .map(|_| ()),
                Report::Progress(p) => events
                    .put_stream_event(pb::PutStreamEventRequest {
                        task_run_external_id: attempt.task_run.clone(),
                        created_at: Some(now()),
                        message: serde_json::to_vec(p).unwrap_or_default(),
                        metadata: String::new(),
                        event_index: Some(index),
                    })
                    .await
                    .map(|_| ()),
            };
            match result {
                Ok(()) => break,
                Err(status) if retryable(status.code()) && tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(status) => {
                    dropped += 1;
                    tracing::debug!(error = %status.message(), "a log line or progress report was not delivered");
                    break;
                }
            }
        }
        if matches!(report, Report::Progress(_)) {
            index += 1;
        }
    }
    if dropped > 0 {
        tracing::warn!(task = %attempt.task_run, dropped, "some log lines or progress reports were not delivered");
    }
}
