//! Starts the engine on port 0 and drives it like a worker and a client would.

use std::time::Duration;

use serde_json::Value;
use sfp_engine::{Engine, EngineConfig};
use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use sfp_protocol::token::TokenKey;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;
pub type Dispatcher = pb::dispatcher_client::DispatcherClient<InterceptedService<Channel, Auth>>;
pub type Admin = pbv1::admin_service_client::AdminServiceClient<InterceptedService<Channel, Auth>>;
pub type Workflows = pb::workflow_service_client::WorkflowServiceClient<InterceptedService<Channel, Auth>>;
pub type Events = pb::events_service_client::EventsServiceClient<InterceptedService<Channel, Auth>>;

/// A bound on how long a test waits for something that should happen; a hang fails the test
/// instead of blocking CI. It asserts nothing about speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct TestEngine {
    pub token: String,
    pub rest_url: String,
    pub channel: Channel,
    pub pool: PgPool,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestEngine {
    pub async fn start(pool: PgPool) -> TestEngine {
        TestEngine::start_polling(pool, Duration::from_millis(200)).await
    }

    /// An engine that looks at the queue on its own only every `poll`: anything faster
    /// comes from a wake-up.
    pub async fn start_polling(pool: PgPool, poll: Duration) -> TestEngine {
        TestEngine::start_configured(pool, |c| c.poll_interval = poll).await
    }

    /// An engine with settings changed by `adjust` (short timeouts, slow polls, ...).
    pub async fn start_configured(pool: PgPool, adjust: impl FnOnce(&mut EngineConfig)) -> TestEngine {
        let identity = sfp_engine::tenant::load_or_create(&pool).await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_address = grpc.local_addr().unwrap().to_string();
        let rest_url = format!("http://{}", http.local_addr().unwrap());
        let key = TokenKey::new(&identity.secret);
        let mut config = EngineConfig::new(identity.tenant_id, key.clone(), grpc_address.clone(), rest_url.clone());
        config.poll_interval = Duration::from_millis(200);
        config.sweep_interval = Duration::from_millis(200);
        adjust(&mut config);
        let token = key.mint(identity.tenant_id, &rest_url, &grpc_address, Duration::from_secs(3600)).unwrap();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(sfp_engine::serve(Engine::new(pool.clone(), config), grpc, http, shutdown.clone()));
        let channel = Channel::from_shared(format!("http://{grpc_address}")).unwrap().connect_lazy();
        TestEngine { token, rest_url, channel, pool, shutdown, served: Some(served) }
    }

    /// Asks the engine to stop and says whether it did, within PATIENCE.
    pub async fn shut_down(&mut self) -> bool {
        self.shutdown.cancel();
        let served = self.served.take().expect("running");
        matches!(tokio::time::timeout(PATIENCE, served).await, Ok(Ok(Ok(()))))
    }

    pub fn auth(&self) -> Auth {
        let value: MetadataValue<_> = format!("bearer {}", self.token).parse().unwrap();
        Box::new(move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        })
    }

    pub fn dispatcher(&self) -> Dispatcher {
        // Compressed like the Python and TypeScript SDKs send.
        pb::dispatcher_client::DispatcherClient::with_interceptor(self.channel.clone(), self.auth())
            .send_compressed(CompressionEncoding::Gzip)
    }

    pub fn admin(&self) -> Admin {
        pbv1::admin_service_client::AdminServiceClient::with_interceptor(self.channel.clone(), self.auth())
            .send_compressed(CompressionEncoding::Gzip)
    }

    pub fn workflows(&self) -> Workflows {
        pb::workflow_service_client::WorkflowServiceClient::with_interceptor(self.channel.clone(), self.auth())
    }

    pub fn events(&self) -> Events {
        pb::events_service_client::EventsServiceClient::with_interceptor(self.channel.clone(), self.auth())
    }

    pub async fn put_workflow(&self, name: &str, tasks: Vec<pbv1::CreateTaskOpts>) {
        let req = pbv1::CreateWorkflowVersionRequest { name: name.into(), tasks, ..Default::default() };
        self.admin().put_workflow(req).await.unwrap();
    }

    pub async fn trigger(&self, name: &str, input: Value, priority: Option<i32>) -> String {
        let req = pbv1::TriggerWorkflowRequest {
            name: name.into(),
            input: input.to_string(),
            priority,
            ..Default::default()
        };
        self.workflows().trigger_workflow(req).await.unwrap().into_inner().workflow_run_id
    }

    /// Waits for the run to finish (through SubscribeToWorkflowRuns) and returns the event.
    pub async fn wait_finished(&self, run_id: &str) -> pb::WorkflowRunEvent {
        let request = tokio_stream::iter(vec![pb::SubscribeToWorkflowRunsRequest { workflow_run_id: run_id.into() }])
            .chain(tokio_stream::pending());
        let mut stream = self.dispatcher().subscribe_to_workflow_runs(request).await.unwrap().into_inner();
        let event = tokio::time::timeout(PATIENCE, stream.message()).await.expect("run finished in time");
        event.unwrap().expect("an event")
    }

    /// An authenticated GET on the engine's REST port, as JSON.
    pub async fn rest_get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.rest_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn details(&self, run_id: &str) -> pbv1::GetRunDetailsResponse {
        self.admin()
            .get_run_details(pbv1::GetRunDetailsRequest { external_id: run_id.into() })
            .await
            .unwrap()
            .into_inner()
    }
}

use tokio_stream::StreamExt;

pub fn task(workflow: &str, id: &str, parents: &[&str]) -> pbv1::CreateTaskOpts {
    pbv1::CreateTaskOpts {
        readable_id: id.into(),
        action: format!("{workflow}:{id}"),
        timeout: "60s".into(),
        parents: parents.iter().map(|p| p.to_string()).collect(),
        slot_requests: [("default".to_string(), 1)].into(),
        ..Default::default()
    }
}

/// What a test worker does with an assignment.
pub enum Reply {
    Complete(Value),
    CompleteRaw(String),
    Fail(String),
    /// Hold the slot until told to finish (through the returned channel).
    Hold,
}

/// A worker registered for `actions`, listening on ListenV2, answering with `handler`.
pub struct TestWorker {
    pub id: String,
    pub seen: tokio::sync::mpsc::UnboundedReceiver<pb::AssignedAction>,
    stop: CancellationToken,
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Registers a worker and opens its ListenV2 stream, answering nothing by itself: the worker
/// id, the dispatcher it used and its stream of assignments.
pub async fn register_listening(
    engine: &TestEngine,
    name: &str,
    actions: &[&str],
    slots: i32,
) -> (String, Dispatcher, tonic::Streaming<pb::AssignedAction>) {
    let mut dispatcher = engine.dispatcher();
    let id = dispatcher
        .register(pb::WorkerRegisterRequest {
            worker_name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            slots: Some(slots),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let stream = dispatcher.listen_v2(pb::WorkerListenRequest { worker_id: id.clone() }).await.unwrap().into_inner();
    (id, dispatcher, stream)
}

impl TestWorker {
    pub async fn start(
        engine: &TestEngine,
        actions: &[&str],
        slots: i32,
        handler: impl Fn(&pb::AssignedAction) -> Reply + Send + Sync + 'static,
    ) -> TestWorker {
        let (id, mut dispatcher, mut stream) = register_listening(engine, "test-worker", actions, slots).await;
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let worker_id = id.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = token.cancelled() => return,
                    next = stream.message() => next,
                };
                let Ok(Some(action)) = next else { return };
                let _ = tx.send(action.clone());
                if action.action_type != pb::ActionType::StartStepRun as i32 {
                    continue;
                }
                let event = |kind: pb::StepActionEventType, payload: String| pb::StepActionEvent {
                    worker_id: worker_id.clone(),
                    task_run_external_id: action.task_run_external_id.clone(),
                    action_id: action.action_id.clone(),
                    event_type: kind as i32,
                    event_payload: payload,
                    retry_count: Some(action.retry_count),
                    ..Default::default()
                };
                dispatcher
                    .send_step_action_event(event(pb::StepActionEventType::StepEventTypeStarted, String::new()))
                    .await
                    .unwrap();
                let reply = match handler(&action) {
                    Reply::Complete(v) => Some((pb::StepActionEventType::StepEventTypeCompleted, v.to_string())),
                    Reply::CompleteRaw(s) => Some((pb::StepActionEventType::StepEventTypeCompleted, s)),
                    Reply::Fail(e) => Some((pb::StepActionEventType::StepEventTypeFailed, e)),
                    Reply::Hold => None,
                };
                if let Some((kind, payload)) = reply {
                    dispatcher.send_step_action_event(event(kind, payload)).await.unwrap();
                }
            }
        });
        TestWorker { id, seen, stop }
    }

    /// Heartbeats every 200 ms until the worker stops, as SDK workers do.
    pub fn keep_alive(&self, engine: &TestEngine) {
        let mut dispatcher = engine.dispatcher();
        let id = self.id.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let beat = pb::HeartbeatRequest { worker_id: id.clone(), heartbeat_at: None };
                if dispatcher.heartbeat(beat).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
    }

    /// Stops listening: the stream closes as if the worker's connection dropped.
    pub fn disconnect(&self) {
        self.stop.cancel();
    }

    pub async fn next_assignment(&mut self) -> pb::AssignedAction {
        tokio::time::timeout(PATIENCE, self.seen.recv()).await.expect("an assignment in time").expect("worker running")
    }
}

pub fn payload(action: &pb::AssignedAction) -> Value {
    serde_json::from_str(&action.action_payload).expect("action_payload is JSON")
}

/// Sends a report for an assignment by hand.
pub async fn report(
    engine: &TestEngine,
    worker_id: &str,
    action: &pb::AssignedAction,
    kind: pb::StepActionEventType,
    payload: &str,
    retry_count: Option<i32>,
) {
    engine
        .dispatcher()
        .send_step_action_event(pb::StepActionEvent {
            worker_id: worker_id.into(),
            task_run_external_id: action.task_run_external_id.clone(),
            action_id: action.action_id.clone(),
            event_type: kind as i32,
            event_payload: payload.into(),
            retry_count,
            ..Default::default()
        })
        .await
        .unwrap();
}
