//! `/EventsService/*`: events that start workflows, task logs, stream chunks.

use sfp_protocol::pb;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, parse_id, parse_json};

pub struct EventsService {
    engine: Engine,
}

impl EventsService {
    pub fn new(engine: Engine) -> Self {
        EventsService { engine }
    }

    async fn push_one(&self, req: pb::PushEventRequest) -> Result<pb::Event, Status> {
        if req.key.trim().is_empty() {
            return Err(Status::invalid_argument("an event needs a key"));
        }
        let payload = parse_json(&req.payload, "payload")?;
        let meta = parse_json(req.additional_metadata.as_deref().unwrap_or(""), "additional_metadata")?;
        let event = self.engine.push_event(&req.key, payload, meta, req.priority, req.scope.clone()).await?;
        Ok(pb::Event {
            tenant_id: self.engine.tenant_id().to_string(),
            event_id: event.id.to_string(),
            key: req.key,
            payload: req.payload,
            event_timestamp: Some(super::timestamp(event.created_at)),
            additional_metadata: req.additional_metadata,
            scope: req.scope,
        })
    }
}

#[tonic::async_trait]
impl pb::events_service_server::EventsService for EventsService {
    async fn push(&self, request: Request<pb::PushEventRequest>) -> Result<Response<pb::Event>, Status> {
        Ok(Response::new(self.push_one(request.into_inner()).await?))
    }

    async fn bulk_push(&self, request: Request<pb::BulkPushEventRequest>) -> Result<Response<pb::Events>, Status> {
        let mut events = Vec::new();
        for req in request.into_inner().events {
            events.push(self.push_one(req).await?);
        }
        Ok(Response::new(pb::Events { events }))
    }

    async fn put_log(&self, request: Request<pb::PutLogRequest>) -> Result<Response<pb::PutLogResponse>, Status> {
        let req = request.into_inner();
        let task_id = parse_id(&req.task_run_external_id, "task_run_external_id")?;
        let metadata = parse_json(&req.metadata, "metadata").unwrap_or_else(|_| serde_json::json!({}));
        let level = req.level.as_deref().unwrap_or("INFO");
        self.engine.put_log(task_id, req.task_retry_count, level, &req.message, metadata).await?;
        Ok(Response::new(pb::PutLogResponse {}))
    }

    async fn put_stream_event(
        &self,
        request: Request<pb::PutStreamEventRequest>,
    ) -> Result<Response<pb::PutStreamEventResponse>, Status> {
        let req = request.into_inner();
        let task_id = parse_id(&req.task_run_external_id, "task_run_external_id")?;
        self.engine.put_stream_chunk(task_id, &req.message, req.event_index).await?;
        Ok(Response::new(pb::PutStreamEventResponse {}))
    }
}
