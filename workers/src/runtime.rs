//! The worker: registers its pool's actions, listens for assignments (reconnecting with
//! backoff), heartbeats, runs each step on its own task and reports it, and drains on
//! shutdown: no new work, running steps finish (or are handed back after the drain
//! timeout), then it unsubscribes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sfp_protocol::client::{ClientConfig, HatchetClient, now};
use sfp_protocol::pb;
use sfp_workflows::{Pool, StepInput, references};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use uuid::Uuid;

use crate::reporter::{self, Attempt};
use crate::step::{self, Toolbox};
use crate::workdir;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub client: ClientConfig,
    pub pool: Pool,
    pub name: String,
    pub slots: u32,
    pub tools: Toolbox,
    pub heartbeat_interval: Duration,
    /// How long running steps may take to finish on shutdown before they are handed back.
    pub drain_timeout: Duration,
}

/// A step running here: how to stop it, and why it was stopped.
struct Running {
    cancel: CancellationToken,
}

#[derive(Clone)]
struct Shared {
    client: HatchetClient,
    config: Arc<WorkerConfig>,
    running: Arc<Mutex<HashMap<Uuid, Running>>>,
}

/// Runs the worker until `shutdown`, then drains. Returns once it is gone from the engine.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = HatchetClient::new(&config.client)?;
    let swept = workdir::sweep_stale(&config.tools.work_root);
    if swept > 0 {
        tracing::info!(swept, "removed folders of steps whose worker died");
    }
    let shared = Shared { client, config: Arc::new(config), running: Arc::default() };
    let Some(worker_id) = register(&shared, &shutdown).await else { return Ok(()) };
    let (id_tx, id_rx) = watch::channel(worker_id);
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeats(shared.clone(), id_rx.clone(), heartbeat_stop.clone()));
    let sweeper = tokio::spawn(sweep_loop(shared.config.tools.work_root.clone(), heartbeat_stop.clone()));
    let mut steps = JoinSet::new();

    let mut backoff = Duration::from_millis(500);
    'listen: while !shutdown.is_cancelled() {
        let worker_id = *id_rx.borrow();
        let mut dispatcher = shared.client.dispatcher();
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = dispatcher.listen_v2(pb::WorkerListenRequest { worker_id: worker_id.to_string() }) => s,
        };
        let mut stream = match stream {
            Ok(s) => {
                backoff = Duration::from_millis(500);
                tracing::info!(worker = %worker_id, pool = %shared.config.pool, "listening for steps");
                s.into_inner()
            }
            Err(status) => {
                if matches!(status.code(), Code::NotFound | Code::InvalidArgument) {
                    // The engine no longer knows this worker (e.g. a new database): start over.
                    if let Some(id) = register(&shared, &shutdown).await {
                        let _ = id_tx.send(id);
                    }
                    continue;
                }
                tracing::warn!(error = %status.message(), code = ?status.code(), retry_in = ?backoff, "cannot listen");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break 'listen,
                m = stream.next() => m,
                Some(_) = steps.join_next(), if !steps.is_empty() => continue,
            };
            match message {
                Some(Ok(action)) => handle(&shared, worker_id, action, &mut steps),
                Some(Err(status)) => {
                    tracing::warn!(error = %status.message(), "the assignment stream broke; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("the engine closed the assignment stream; reconnecting");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
    }

    let worker_id = *id_rx.borrow();
    drain(&shared, worker_id, &mut steps).await;
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    let _ = sweeper.await;
    let _ =
        shared.client.dispatcher().unsubscribe(pb::WorkerUnsubscribeRequest { worker_id: worker_id.to_string() }).await;
    tracing::info!(worker = %worker_id, "worker stopped");
    Ok(())
}

async fn register(shared: &Shared, shutdown: &CancellationToken) -> Option<Uuid> {
    let config = &shared.config;
    let actions: Vec<String> = config.pool.task_types().map(|t| t.action()).collect();
    let mut labels = HashMap::new();
    labels.insert("pool".to_string(), pb::WorkerLabels { str_value: Some(config.pool.to_string()), int_value: None });
    let request = pb::WorkerRegisterRequest {
        worker_name: config.name.clone(),
        actions,
        services: vec!["default".into()],
        slots: Some(config.slots as i32),
        labels,
        runtime_info: Some(pb::RuntimeInfo {
            sdk_version: Some(env!("CARGO_PKG_VERSION").into()),
            language: None,
            language_version: None,
            os: Some(std::env::consts::OS.into()),
            extra: Some("sfp-worker".into()),
        }),
        ..Default::default()
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        match shared.client.dispatcher().register(request.clone()).await {
            Ok(r) => match Uuid::parse_str(&r.get_ref().worker_id) {
                Ok(id) => {
                    tracing::info!(worker = %id, pool = %config.pool, slots = config.slots, "registered");
                    return Some(id);
                }
                Err(_) => {
                    tracing::error!(id = %r.get_ref().worker_id, "the engine answered a worker id that is not a UUID")
                }
            },
            Err(status) => {
                tracing::warn!(error = %status.message(), code = ?status.code(), retry_in = ?backoff, "cannot register")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

fn handle(shared: &Shared, worker_id: Uuid, action: pb::AssignedAction, steps: &mut JoinSet<()>) {
    let Ok(task_run) = Uuid::parse_str(&action.task_run_external_id) else {
        tracing::error!(task = %action.task_run_external_id, "an assignment whose task id is not a UUID");
        return;
    };
    match pb::ActionType::try_from(action.action_type) {
        Ok(pb::ActionType::StartStepRun) => {
            let cancel = CancellationToken::new();
            {
                let mut running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
                if running.contains_key(&task_run) {
                    tracing::debug!(task = %task_run, "an assignment already running here; ignored");
                    return;
                }
                running.insert(task_run, Running { cancel: cancel.clone() });
            }
            let shared = shared.clone();
            steps.spawn(async move {
                run_step(&shared, worker_id, task_run, action, cancel).await;
                shared.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&task_run);
            });
        }
        Ok(pb::ActionType::CancelStepRun) => {
            if let Some(r) = shared.running.lock().unwrap_or_else(|e| e.into_inner()).get(&task_run) {
                tracing::info!(task = %task_run, "cancelled by the engine; stopping the step");
                r.cancel.cancel();
            }
        }
        _ => tracing::debug!(kind = action.action_type, "an assignment type this worker does not run"),
    }
}

async fn run_step(
    shared: &Shared,
    worker_id: Uuid,
    task_run: Uuid,
    action: pb::AssignedAction,
    cancel: CancellationToken,
) {
    let attempt = Attempt::new(worker_id, &action);
    let client = &shared.client;
    reporter::send_event(client, &attempt, pb::StepActionEventType::StepEventTypeStarted, String::new(), None).await;
    let input = match parse_input(&action.action_payload, &action.task_name) {
        Ok(i) => i,
        Err(e) => {
            let message = format!("cannot start the step: {e}");
            reporter::send_event(client, &attempt, pb::StepActionEventType::StepEventTypeFailed, message, Some(true))
                .await;
            return;
        }
    };
    tracing::info!(task = %input.task_id, run = %action.workflow_run_id, step = %task_run, kind = %input.task_type, attempt = action.retry_count, "step started");
    let (reports, receiver) = mpsc::unbounded_channel();
    let forwarding = tokio::spawn(reporter::forward(client.clone(), attempt.clone(), receiver));
    let identity = crate::credentials::StepIdentity {
        task_id: input.task_id,
        run_id: Uuid::parse_str(&action.workflow_run_id).unwrap_or_default(),
        step_run_id: task_run,
        attempt: action.retry_count,
        step: action.task_name.clone(),
    };
    let end = step::execute(&shared.config.tools, &input, identity, &cancel, &reports).await;
    drop(reports);
    // Logs and progress reach the engine before the step's final event.
    let _ = forwarding.await;
    match end {
        step::StepEnd::Completed(output) => {
            let payload = serde_json::to_string(&output).unwrap_or_else(|_| "{}".into());
            tracing::info!(task = %input.task_id, step = %task_run, "step completed");
            reporter::send_event(client, &attempt, pb::StepActionEventType::StepEventTypeCompleted, payload, None)
                .await;
        }
        step::StepEnd::Failed { message, retryable } => {
            let last_try = action.retry_count.max(0) as u32 >= input.retries;
            tracing::warn!(task = %input.task_id, step = %task_run, error = %message, retryable, last_try, "step failed");
            let no_retry = Some(!retryable || last_try);
            reporter::send_event(client, &attempt, pb::StepActionEventType::StepEventTypeFailed, message, no_retry)
                .await;
        }
        step::StepEnd::Cancelled => {
            // Cancelled by the engine (nothing to report) or handed back on shutdown (the engine
            // runs it again elsewhere once this worker is gone).
            tracing::info!(task = %input.task_id, step = %task_run, "step stopped");
        }
    }
}

/// A task's run input is its step input; a pipeline's holds one per step, by step id, and
/// a pipeline step's data may refer to the outputs of the steps it needs, which the engine
/// hands over as `parents`.
fn parse_input(payload: &str, step: &str) -> Result<StepInput, String> {
    let value: serde_json::Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let parents = value.get("parents").cloned().unwrap_or_default();
    let input = value.get("input").cloned().unwrap_or(value);
    let Some(steps) = input.get("steps") else {
        // A task's data is what was submitted: references belong to pipelines only.
        return serde_json::from_value(input).map_err(|e| e.to_string());
    };
    let input = steps.get(step).cloned().ok_or_else(|| format!("the pipeline input has no step {step:?}"))?;
    let mut input: StepInput = serde_json::from_value(input).map_err(|e| e.to_string())?;
    input.data = references::substitute(&input.data, &mut |r| references::resolve(r, &parents))
        .map_err(|(field, message)| format!("data.{field}: {message}"))?;
    Ok(input)
}

async fn heartbeats(shared: Shared, worker: watch::Receiver<Uuid>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let worker_id = *worker.borrow();
        let request = pb::HeartbeatRequest { worker_id: worker_id.to_string(), heartbeat_at: Some(now()) };
        match tokio::time::timeout(Duration::from_secs(5), shared.client.dispatcher().heartbeat(request)).await {
            Ok(Ok(_)) => {
                if failing {
                    tracing::info!("heartbeats reach the engine again");
                }
                failing = false;
            }
            Ok(Err(status)) => {
                if !failing {
                    tracing::warn!(error = %status.message(), "heartbeat failed; retrying");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!("heartbeat timed out; retrying");
                }
                failing = true;
            }
        }
    }
}

async fn sweep_loop(root: std::path::PathBuf, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        let root = root.clone();
        let _ = tokio::task::spawn_blocking(move || workdir::sweep_stale(&root)).await;
    }
}

/// No new work (the worker pauses itself), running steps get `drain_timeout` to finish,
/// the rest are stopped and handed back.
async fn drain(shared: &Shared, worker_id: Uuid, steps: &mut JoinSet<()>) {
    if steps.is_empty() {
        return;
    }
    pause(shared, worker_id).await;
    tracing::info!(running = steps.len(), timeout = ?shared.config.drain_timeout, "draining: waiting for running steps");
    let all_done = async { while steps.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.config.drain_timeout, all_done).await.is_err() {
        let running: Vec<Uuid> = shared.running.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        tracing::warn!(steps = ?running, "drain timeout: handing the remaining steps back");
        for r in shared.running.lock().unwrap_or_else(|e| e.into_inner()).values() {
            r.cancel.cancel();
        }
        while steps.join_next().await.is_some() {}
    }
}

/// Asks the engine (Hatchet REST `PATCH /api/v1/workers/{id}`) to assign nothing more here.
async fn pause(shared: &Shared, worker_id: Uuid) {
    let url = format!("{}/api/v1/workers/{worker_id}", shared.client.server_url());
    let client = reqwest::Client::new();
    let result = client
        .patch(&url)
        .header("authorization", shared.client.authorization())
        .json(&serde_json::json!({"isPaused": true}))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() => tracing::info!(worker = %worker_id, "paused: no new steps"),
        Ok(r) => {
            tracing::warn!(status = %r.status(), "could not pause the worker; it may get new steps while draining")
        }
        Err(e) => tracing::warn!(error = %e, "could not pause the worker; it may get new steps while draining"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn payload(data: serde_json::Value, parents: serde_json::Value) -> String {
        let step = json!({"taskId": Uuid::nil(), "type": "publish", "data": data, "timeoutSeconds": 60});
        json!({"input": {"pipeline": "p", "steps": {"publish": step}}, "parents": parents}).to_string()
    }

    #[test]
    fn a_pipeline_step_gets_the_values_its_parents_gave() {
        let parents =
            json!({"build": {"artifacts": [{"name": "core"}, {"name": "ui"}], "commands": [], "durationMs": 5}});
        let data = json!({"packages": "${{ steps.build.artifacts.*.name }}", "buildNumber": 3});
        let input = parse_input(&payload(data, parents.clone()), "publish").unwrap();
        assert_eq!(input.data, json!({"packages": ["core", "ui"], "buildNumber": 3}));
        let e =
            parse_input(&payload(json!({"branch": "${{ steps.build.json.branch }}"}), parents), "publish").unwrap_err();
        assert!(e.starts_with("data.branch: steps.build.json.branch: the output has no \"json\""), "{e}");
        let e = parse_input(&payload(json!({"branch": "${{ steps.build.json.branch }}"}), json!({})), "publish")
            .unwrap_err();
        assert!(e.contains("gave this step no output"), "{e}");
        assert!(parse_input(&payload(json!({}), json!({})), "other").unwrap_err().contains("no step \"other\""));
        // A task (no pipeline) keeps text that only looks like a reference.
        let task = json!({"input": {"taskId": Uuid::nil(), "type": "changelog", "timeoutSeconds": 60,
                                    "data": {"releaseName": "${{ steps.x.json }}"}}, "parents": {}});
        let input = parse_input(&task.to_string(), "changelog").unwrap();
        assert_eq!(input.data["releaseName"], "${{ steps.x.json }}");
    }
}
