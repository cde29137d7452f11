//! `/WorkflowService/*`: starting runs.

use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, parse_id, parse_json};
use crate::runs::Trigger;

pub struct WorkflowService {
    engine: Engine,
}

impl WorkflowService {
    pub fn new(engine: Engine) -> Self {
        WorkflowService { engine }
    }
}

fn to_trigger(req: pbv1::TriggerWorkflowRequest) -> Result<Trigger, Status> {
    if req.name.trim().is_empty() {
        return Err(Status::invalid_argument("name (the workflow to run) is required"));
    }
    let mut trigger = Trigger::new(req.name, parse_json(&req.input, "input")?);
    if let Some(meta) = req.additional_metadata.as_deref() {
        trigger.additional_metadata = parse_json(meta, "additional_metadata")?;
    }
    trigger.priority = req.priority;
    if let Some(parent) = req.parent_task_run_external_id.as_deref().filter(|s| !s.is_empty()) {
        trigger.parent_task_id = Some(parse_id(parent, "parent_task_run_external_id")?);
        trigger.triggered_by = "parent";
    }
    trigger.child_index = req.child_index;
    trigger.child_key = req.child_key;
    Ok(trigger)
}

#[tonic::async_trait]
impl pb::workflow_service_server::WorkflowService for WorkflowService {
    async fn schedule_workflow(
        &self,
        request: Request<pb::ScheduleWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowVersion>, Status> {
        let req = request.into_inner();
        if req.schedules.is_empty() {
            return Err(Status::invalid_argument("schedules: give at least one time"));
        }
        let input = parse_json(&req.input, "input")?;
        let meta = parse_json(req.additional_metadata.as_deref().unwrap_or(""), "additional_metadata")?;
        let mut scheduled = Vec::new();
        let mut last = None;
        for at in &req.schedules {
            let when = chrono::DateTime::from_timestamp(at.seconds, at.nanos.max(0) as u32)
                .ok_or_else(|| Status::invalid_argument("schedules: a time is out of range"))?;
            let s = self.engine.create_schedule(&req.name, when, input.clone(), meta.clone(), req.priority).await?;
            scheduled
                .push(pb::ScheduledWorkflow { id: s.id.to_string(), trigger_at: Some(super::timestamp(s.trigger_at)) });
            last = Some(s);
        }
        let s = last.expect("at least one schedule");
        Ok(Response::new(pb::WorkflowVersion {
            id: s.workflow_version_id.to_string(),
            created_at: Some(super::timestamp(s.created_at)),
            updated_at: Some(super::timestamp(s.updated_at)),
            version: String::new(),
            order: 0,
            workflow_id: s.workflow_id.to_string(),
            scheduled_workflows: scheduled,
        }))
    }

    async fn trigger_workflow(
        &self,
        request: Request<pbv1::TriggerWorkflowRequest>,
    ) -> Result<Response<pb::TriggerWorkflowResponse>, Status> {
        let id = self.engine.trigger(to_trigger(request.into_inner())?).await?;
        Ok(Response::new(pb::TriggerWorkflowResponse { workflow_run_id: id.to_string() }))
    }

    async fn bulk_trigger_workflow(
        &self,
        request: Request<pb::BulkTriggerWorkflowRequest>,
    ) -> Result<Response<pb::BulkTriggerWorkflowResponse>, Status> {
        let triggers = request.into_inner().workflows.into_iter().map(to_trigger).collect::<Result<Vec<_>, _>>()?;
        if triggers.is_empty() {
            return Err(Status::invalid_argument("workflows must not be empty"));
        }
        let ids = self.engine.trigger_many(triggers).await?;
        Ok(Response::new(pb::BulkTriggerWorkflowResponse {
            workflow_run_ids: ids.iter().map(|i| i.to_string()).collect(),
        }))
    }
}
