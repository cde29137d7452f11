//! The gRPC services. Every service accepts gzip-compressed requests (the Python and
//! TypeScript SDKs compress everything) and requires a valid tenant token; methods we do not
//! implement answer UNIMPLEMENTED.

mod admin;
mod dispatcher;
mod events;
mod run_stream;
mod subscriptions;
mod workflows;

use std::time::Duration;

use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use sfp_protocol::token::{self, TokenKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::engine::Engine;

/// Rejects calls without a valid token of this engine's tenant.
#[derive(Clone)]
pub struct Authenticate {
    key: TokenKey,
    tenant: Uuid,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header =
            request.metadata().get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(|| {
                Status::unauthenticated("missing authorization: send `authorization: Bearer <token>`")
            })?;
        let token = token::bearer(header).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let claims = self.key.validate(token).map_err(|e| Status::unauthenticated(e.to_string()))?;
        if claims.tenant_id().ok() != Some(self.tenant) {
            return Err(Status::permission_denied("the token belongs to another tenant"));
        }
        Ok(request)
    }
}

/// Serves the gRPC services on `listener` until `shutdown`.
pub async fn serve(engine: Engine, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let auth = Authenticate { key: engine.config().token_key.clone(), tenant: engine.tenant_id() };
    let max = 4 * 1024 * 1024;
    let dispatcher = pb::dispatcher_server::DispatcherServer::new(dispatcher::DispatcherService::new(engine.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let admin = pbv1::admin_service_server::AdminServiceServer::new(admin::AdminService::new(engine.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let workflows =
        pb::workflow_service_server::WorkflowServiceServer::new(workflows::WorkflowService::new(engine.clone()))
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max);
    let events = pb::events_service_server::EventsServiceServer::new(events::EventsService::new(engine.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(InterceptedService::new(dispatcher, auth.clone()))
        .add_service(InterceptedService::new(admin, auth.clone()))
        .add_service(InterceptedService::new(workflows, auth.clone()))
        .add_service(InterceptedService::new(events, auth))
        // Small messages both ways: without TCP_NODELAY, Nagle's algorithm adds ~40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown.cancelled_owned())
        .await?;
    Ok(())
}

pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}
