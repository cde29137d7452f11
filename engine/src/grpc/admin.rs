//! `/v1.AdminService/*`: registering workflows and reading runs.

use sfp_protocol::pb::v1 as pbv1;
use tonic::{Request, Response, Status};

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
        _request: Request<pbv1::CancelTasksRequest>,
    ) -> Result<Response<pbv1::CancelTasksResponse>, Status> {
        Err(Status::unimplemented("CancelTasks is not available yet"))
    }

    async fn replay_tasks(
        &self,
        _request: Request<pbv1::ReplayTasksRequest>,
    ) -> Result<Response<pbv1::ReplayTasksResponse>, Status> {
        Err(Status::unimplemented("ReplayTasks is not available yet"))
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
