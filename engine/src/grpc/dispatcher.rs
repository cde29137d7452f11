//! `/Dispatcher/*`: what workers call.

use std::pin::Pin;

use futures_util::Stream;
use sfp_protocol::pb;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::{Engine, parse_id};
use crate::task_events::{StepEvent, StepEventKind};
use crate::workers::{AssignmentStream, Registration};

pub struct DispatcherService {
    engine: Engine,
}

impl DispatcherService {
    pub fn new(engine: Engine) -> Self {
        DispatcherService { engine }
    }
}

/// A worker label as JSON: its string value, else its number.
fn label_value(label: &pb::WorkerLabels) -> serde_json::Value {
    match (&label.str_value, label.int_value) {
        (Some(s), _) => serde_json::json!(s),
        (None, Some(i)) => serde_json::json!(i),
        (None, None) => serde_json::Value::Null,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    async fn register(
        &self,
        request: Request<pb::WorkerRegisterRequest>,
    ) -> Result<Response<pb::WorkerRegisterResponse>, Status> {
        let req = request.into_inner();
        // Like Hatchet: `slots` (older clients) or `slot_config` (newer ones), never both;
        // 100 default slots when neither is given.
        let slots = match (req.slots, req.slot_config.is_empty()) {
            (Some(_), false) => {
                return Err(Status::invalid_argument("send either slots or slot_config, not both"));
            }
            (Some(n), true) => n,
            (None, false) => req.slot_config.values().copied().sum(),
            (None, true) => 100,
        };
        let labels = serde_json::Value::Object(req.labels.iter().map(|(k, v)| (k.clone(), label_value(v))).collect());
        let runtime_info = req.runtime_info.as_ref().map(|r| {
            serde_json::json!({
                "sdk_version": r.sdk_version, "language": r.language, "language_version": r.language_version,
                "os": r.os, "extra": r.extra,
            })
        });
        let registration =
            Registration { worker_name: req.worker_name.clone(), actions: req.actions, slots, labels, runtime_info };
        let id = self.engine.register_worker(registration).await?;
        Ok(Response::new(pb::WorkerRegisterResponse {
            tenant_id: self.engine.tenant_id().to_string(),
            worker_id: id.to_string(),
            worker_name: req.worker_name,
        }))
    }

    type ListenStream = AssignmentStream;

    async fn listen(&self, request: Request<pb::WorkerListenRequest>) -> Result<Response<Self::ListenStream>, Status> {
        let worker_id = parse_id(&request.get_ref().worker_id, "worker_id")?;
        Ok(Response::new(self.engine.listen(worker_id).await?))
    }

    type ListenV2Stream = AssignmentStream;

    async fn listen_v2(
        &self,
        request: Request<pb::WorkerListenRequest>,
    ) -> Result<Response<Self::ListenV2Stream>, Status> {
        let worker_id = parse_id(&request.get_ref().worker_id, "worker_id")?;
        Ok(Response::new(self.engine.listen(worker_id).await?))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let worker_id = parse_id(&request.get_ref().worker_id, "worker_id")?;
        self.engine.heartbeat(worker_id).await?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type SubscribeToWorkflowEventsStream = BoxStream<pb::WorkflowEvent>;

    async fn subscribe_to_workflow_events(
        &self,
        request: Request<pb::SubscribeToWorkflowEventsRequest>,
    ) -> Result<Response<Self::SubscribeToWorkflowEventsStream>, Status> {
        let req = request.into_inner();
        let filter = match (req.workflow_run_id.as_deref().map(str::trim), req.additional_meta_key) {
            (Some(id), _) if !id.is_empty() => super::run_stream::Filter::Run(parse_id(id, "workflow_run_id")?),
            (_, Some(key)) if !key.trim().is_empty() => {
                super::run_stream::Filter::Metadata { key, value: req.additional_meta_value.unwrap_or_default() }
            }
            _ => {
                return Err(Status::invalid_argument(
                    "name a workflow_run_id, or an additional_meta_key and additional_meta_value",
                ));
            }
        };
        let stream = super::run_stream::open(self.engine.clone(), filter).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    type SubscribeToWorkflowRunsStream = BoxStream<pb::WorkflowRunEvent>;

    async fn subscribe_to_workflow_runs(
        &self,
        request: Request<Streaming<pb::SubscribeToWorkflowRunsRequest>>,
    ) -> Result<Response<Self::SubscribeToWorkflowRunsStream>, Status> {
        let stream = super::subscriptions::run_events(self.engine.clone(), request.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn send_step_action_event(
        &self,
        request: Request<pb::StepActionEvent>,
    ) -> Result<Response<pb::ActionEventResponse>, Status> {
        let req = request.into_inner();
        let task_id = parse_id(&req.task_run_external_id, "task_run_external_id")?;
        let worker_id = parse_id(&req.worker_id, "worker_id").ok();
        let kind = match pb::StepActionEventType::try_from(req.event_type) {
            Ok(pb::StepActionEventType::StepEventTypeStarted) => StepEventKind::Started,
            Ok(pb::StepActionEventType::StepEventTypeAcknowledged) => StepEventKind::Acknowledged,
            Ok(pb::StepActionEventType::StepEventTypeCompleted) => {
                StepEventKind::Completed { payload: req.event_payload }
            }
            Ok(pb::StepActionEventType::StepEventTypeFailed) => StepEventKind::Failed {
                error: req.event_payload,
                should_not_retry: req.should_not_retry.unwrap_or(false),
            },
            Ok(pb::StepActionEventType::StepEventTypeCancelled) => StepEventKind::Cancelled,
            _ => return Err(Status::invalid_argument(format!("unknown event_type {}", req.event_type))),
        };
        let outcome =
            self.engine.step_event(StepEvent { worker_id, task_id, retry_count: req.retry_count, kind }).await?;
        tracing::debug!(%task_id, ?outcome, "step event");
        Ok(Response::new(pb::ActionEventResponse {
            tenant_id: self.engine.tenant_id().to_string(),
            worker_id: req.worker_id,
        }))
    }

    async fn put_overrides_data(
        &self,
        _request: Request<pb::OverridesData>,
    ) -> Result<Response<pb::OverridesDataResponse>, Status> {
        Ok(Response::new(pb::OverridesDataResponse {}))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::WorkerUnsubscribeRequest>,
    ) -> Result<Response<pb::WorkerUnsubscribeResponse>, Status> {
        let worker_id = parse_id(&request.get_ref().worker_id, "worker_id")?;
        self.engine.unsubscribe(worker_id).await?;
        Ok(Response::new(pb::WorkerUnsubscribeResponse {
            tenant_id: self.engine.tenant_id().to_string(),
            worker_id: worker_id.to_string(),
        }))
    }

    async fn refresh_timeout(
        &self,
        request: Request<pb::RefreshTimeoutRequest>,
    ) -> Result<Response<pb::RefreshTimeoutResponse>, Status> {
        let req = request.into_inner();
        let task_id = parse_id(&req.task_run_external_id, "task_run_external_id")?;
        let by = sfp_protocol::duration::parse(&req.increment_timeout_by)
            .map_err(|e| Status::invalid_argument(format!("increment_timeout_by: {e}")))?
            .ok_or_else(|| Status::invalid_argument("increment_timeout_by is required, e.g. \"5m\""))?;
        let deadline = self.engine.refresh_timeout(task_id, by).await?;
        Ok(Response::new(pb::RefreshTimeoutResponse { timeout_at: Some(super::timestamp(deadline)) }))
    }

    async fn release_slot(
        &self,
        request: Request<pb::ReleaseSlotRequest>,
    ) -> Result<Response<pb::ReleaseSlotResponse>, Status> {
        let task_id = parse_id(&request.get_ref().task_run_external_id, "task_run_external_id")?;
        self.engine.release_slot(task_id).await?;
        Ok(Response::new(pb::ReleaseSlotResponse {}))
    }

    async fn upsert_worker_labels(
        &self,
        request: Request<pb::UpsertWorkerLabelsRequest>,
    ) -> Result<Response<pb::UpsertWorkerLabelsResponse>, Status> {
        let req = request.into_inner();
        let worker_id = parse_id(&req.worker_id, "worker_id")?;
        let labels = req.labels.iter().map(|(k, v)| (k.clone(), label_value(v))).collect();
        self.engine.upsert_labels(worker_id, labels).await?;
        Ok(Response::new(pb::UpsertWorkerLabelsResponse {
            tenant_id: self.engine.tenant_id().to_string(),
            worker_id: req.worker_id,
        }))
    }

    async fn get_version(
        &self,
        _request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        Ok(Response::new(pb::GetVersionResponse { version: sfp_protocol::ENGINE_PROTOCOL_VERSION.into() }))
    }
}
