//! `/v1.AdminService/*`: registering workflows, reading runs, cancelling and replaying tasks.

use sfp_protocol::pb::v1 as pbv1;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::cancel::{Filter, Selection};
use crate::engine::{Engine, parse_id};
use crate::model::{RunStatus, WorkflowDefinition};
use crate::runs::Trigger;

pub struct AdminService {
    engine: Engine,
}

impl AdminService {
    pub fn new(engine: Engine) -> Self {
        AdminService { engine }
    }
}

#[tonic::async_trait]
impl pbv1::admin_service_server::AdminService for AdminService {
    async fn put_workflow(
        &self,
        request: Request<pbv1::CreateWorkflowVersionRequest>,
    ) -> Result<Response<pbv1::CreateWorkflowVersionResponse>, Status> {
        let def = WorkflowDefinition::from_proto(request.get_ref()).map_err(|e| Status::invalid_argument(e.0))?;
        let registered = self.engine.put_workflow(&def).await?;
        Ok(Response::new(pbv1::CreateWorkflowVersionResponse {
            id: registered.version_id.to_string(),
            workflow_id: registered.workflow_id.to_string(),
        }))
    }

    async fn cancel_tasks(
        &self,
        request: Request<pbv1::CancelTasksRequest>,
    ) -> Result<Response<pbv1::CancelTasksResponse>, Status> {
        let req = request.into_inner();
        let selection = selection(&req.external_ids, req.filter.as_ref())?;
        let done = self.engine.cancel_tasks(&selection).await?;
        Ok(Response::new(pbv1::CancelTasksResponse { cancelled_tasks: done.iter().map(Uuid::to_string).collect() }))
    }

    async fn replay_tasks(
        &self,
        request: Request<pbv1::ReplayTasksRequest>,
    ) -> Result<Response<pbv1::ReplayTasksResponse>, Status> {
        let req = request.into_inner();
        let selection = selection(&req.external_ids, req.filter.as_ref())?;
        let done = self.engine.replay_tasks(&selection).await?;
        Ok(Response::new(pbv1::ReplayTasksResponse { replayed_tasks: done.iter().map(Uuid::to_string).collect() }))
    }

    async fn trigger_workflow_run(
        &self,
        request: Request<pbv1::TriggerWorkflowRunRequest>,
    ) -> Result<Response<pbv1::TriggerWorkflowRunResponse>, Status> {
        let req = request.into_inner();
        let parse = |bytes: &[u8], field: &str| -> Result<serde_json::Value, Status> {
            if bytes.is_empty() {
                return Ok(serde_json::json!({}));
            }
            serde_json::from_slice(bytes)
                .map_err(|e| Status::invalid_argument(format!("{field} is not valid JSON: {e}")))
        };
        let mut trigger = Trigger::new(req.workflow_name, parse(&req.input, "input")?);
        trigger.additional_metadata = parse(&req.additional_metadata, "additional_metadata")?;
        trigger.priority = req.priority;
        let id = self.engine.trigger(trigger).await?;
        Ok(Response::new(pbv1::TriggerWorkflowRunResponse { external_id: id.to_string() }))
    }

    async fn get_run_details(
        &self,
        request: Request<pbv1::GetRunDetailsRequest>,
    ) -> Result<Response<pbv1::GetRunDetailsResponse>, Status> {
        let run_id = parse_id(&request.get_ref().external_id, "external_id")?;
        let run = self.engine.run_view(run_id).await?;
        let task_runs = run
            .tasks
            .iter()
            .map(|t| {
                let detail = pbv1::TaskRunDetail {
                    external_id: t.id.to_string(),
                    status: t.status.to_proto() as i32,
                    error: match t.status {
                        RunStatus::Failed | RunStatus::Cancelled => t.error.clone(),
                        _ => None,
                    },
                    output: match t.status {
                        RunStatus::Completed => {
                            Some(t.output.clone().unwrap_or(serde_json::Value::Null).to_string().into_bytes())
                        }
                        _ => None,
                    },
                    readable_id: t.readable_id.clone(),
                    is_evicted: false,
                };
                (t.readable_id.clone(), detail)
            })
            .collect();
        Ok(Response::new(pbv1::GetRunDetailsResponse {
            input: run.input.to_string().into_bytes(),
            status: run.status.to_proto() as i32,
            task_runs,
            done: run.status.is_final(),
            additional_metadata: run.additional_metadata.to_string().into_bytes(),
            is_evicted: false,
        }))
    }
}

/// Task or run ids, and an optional filter, from a cancel or replay request.
fn selection(ids: &[String], filter: Option<&pbv1::TasksFilter>) -> Result<Selection, Status> {
    let ids = ids.iter().map(|id| parse_id(id, "external_ids")).collect::<Result<Vec<_>, _>>()?;
    let filter = match filter {
        None => None,
        Some(f) => {
            let since = f
                .since
                .as_ref()
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
                .ok_or_else(|| Status::invalid_argument("filter.since is required"))?;
            let until =
                f.until.as_ref().and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32));
            let workflow_ids =
                f.workflow_ids.iter().map(|id| parse_id(id, "filter.workflow_ids")).collect::<Result<Vec<_>, _>>()?;
            Some(Filter {
                since,
                until,
                statuses: f.statuses.clone(),
                workflow_ids,
                additional_metadata: f.additional_metadata.clone(),
            })
        }
    };
    Ok(Selection { ids, filter })
}
