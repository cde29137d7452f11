//! The REST paths real Hatchet also has, on the engine's HTTP port: health, version, run
//! details in the exact shape the SDKs parse, and pausing workers.

mod crons;
mod drain;
mod listing;
mod runs;
mod tasks;
mod workers;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError};

/// REST errors: `{"code", "message"}` with the right status (Hatchet's own clients only look
/// at the status).
pub struct RestError(StatusCode, String);

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let code = match self.0 {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "unavailable",
        };
        (self.0, Json(json!({"code": code, "message": self.1}))).into_response()
    }
}

impl From<EngineError> for RestError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidArgument(m) => RestError(StatusCode::BAD_REQUEST, m),
            EngineError::NotFound(m) => RestError(StatusCode::NOT_FOUND, m),
            EngineError::FailedPrecondition(m) => RestError(StatusCode::CONFLICT, m),
            EngineError::Unavailable(m) => RestError(StatusCode::SERVICE_UNAVAILABLE, m),
            EngineError::Database(e) => {
                tracing::error!(error = %e, "engine database error");
                RestError(StatusCode::SERVICE_UNAVAILABLE, "the engine's database is not available".into())
            }
        }
    }
}

/// Hatchet's `PaginationResponse` for a page at `offset` of `limit` rows out of `total`:
/// pages count from 1, and an empty list is one empty page.
pub(crate) fn pagination(offset: i64, limit: i64, total: i64) -> serde_json::Value {
    let pages = ((total + limit - 1) / limit).max(1);
    let current = offset / limit + 1;
    json!({"current_page": current, "num_pages": pages, "next_page": (current < pages).then_some(current + 1)})
}

/// A JSON request body; anything unreadable is a 400 in the stable error shape (axum's own
/// extractor answers 422 in plain text).
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = RestError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| RestError(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}")))?;
        parse_body(&bytes).map(Body)
    }
}

/// Parses a JSON body, naming what is wrong with it.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RestError> {
    serde_json::from_slice(bytes)
        .map_err(|e| RestError(StatusCode::BAD_REQUEST, format!("the request body is not valid: {e}")))
}

/// A tenant in a path must be the one this engine serves (403 otherwise).
fn check_tenant(engine: &Engine, tenant: &str) -> Result<(), RestError> {
    if crate::engine::parse_id(tenant, "tenant")? != engine.tenant_id() {
        return Err(RestError(StatusCode::FORBIDDEN, format!("tenant {tenant} is not served here")));
    }
    Ok(())
}

pub fn router(engine: Engine) -> Router {
    let authenticated = Router::new()
        .route("/api/v1/version", get(version))
        .route("/api/v1/stable/workflow-runs/{run}", get(runs::get_run))
        .route("/api/v1/stable/workflow-runs/{run}/status", get(listing::run_status))
        .route("/api/v1/stable/workflow-runs/{run}/task-events", get(listing::run_task_events))
        .route("/api/v1/stable/tenants/{tenant}/workflow-runs", get(listing::list_runs))
        .route("/api/v1/stable/tenants/{tenant}/workflow-runs/trigger", axum::routing::post(runs::trigger_run))
        .route("/api/v1/stable/tasks/{task}", get(listing::get_task))
        .route("/api/v1/stable/tasks/{task}/task-events", get(listing::task_events))
        .route("/api/v1/stable/tasks/{task}/logs", get(listing::task_logs))
        .route("/api/v1/tenants/{tenant}/workflow-runs/{run}/shape", get(runs::get_run_shape))
        .route("/api/v1/stable/tenants/{tenant}/tasks/cancel", axum::routing::post(tasks::cancel))
        .route("/api/v1/tenants/{tenant}/workflows/crons", get(crons::list_crons))
        .route("/api/v1/tenants/{tenant}/workflows/crons/{id}", get(crons::get_cron).delete(crons::delete_cron))
        .route("/api/v1/tenants/{tenant}/workflows/scheduled", get(crons::list_schedules))
        .route(
            "/api/v1/tenants/{tenant}/workflows/scheduled/{id}",
            get(crons::get_schedule).delete(crons::delete_schedule),
        )
        .route("/api/v1/tenants/{tenant}/workflows/{workflow}/crons", axum::routing::post(crons::create_cron))
        .route("/api/v1/tenants/{tenant}/workflows/{workflow}/scheduled", axum::routing::post(crons::create_schedule))
        .route("/api/v1/stable/tenants/{tenant}/tasks/replay", axum::routing::post(tasks::replay))
        .route("/api/v1/workers/{worker}", get(workers::get_worker).patch(workers::update_worker))
        .route("/api/v1/tenants/{tenant}/worker", get(workers::list_workers))
        .route("/api/v1/engine/drain", get(drain::state).post(drain::drain).delete(drain::resume))
        .layer(axum::middleware::from_fn_with_state(engine.clone(), authenticate));
    Router::new()
        .route("/api/ready", get(ready))
        .route("/api/live", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .merge(authenticated)
        .fallback(|| async { RestError(StatusCode::NOT_FOUND, "no such engine path".into()) })
        .with_state(engine)
}

pub async fn serve(engine: Engine, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    axum::serve(listener, router(engine)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

async fn authenticate(State(engine): State<Engine>, request: Request, next: Next) -> Response {
    let header = request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let claims = sfp_protocol::token::bearer(header).and_then(|t| engine.config().token_key.validate(t));
    match claims {
        Ok(c) if c.tenant_id().ok() == Some(engine.tenant_id()) => next.run(request).await,
        Ok(_) => RestError(StatusCode::FORBIDDEN, "the token belongs to another tenant".into()).into_response(),
        Err(e) => RestError(StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    }
}

/// Ready: the database answers and the process is not draining.
async fn ready(State(engine): State<Engine>) -> Result<Json<serde_json::Value>, RestError> {
    sqlx::query("SELECT 1").execute(engine.pool()).await.map_err(EngineError::from)?;
    if engine.is_draining() {
        return Err(RestError(StatusCode::SERVICE_UNAVAILABLE, "the engine is draining".into()));
    }
    Ok(Json(json!({"status": "ok"})))
}

/// Prometheus metrics, without a token like Hatchet's metrics port (bind the REST port
/// privately, as the embedded stack does).
async fn metrics(State(engine): State<Engine>) -> Result<Response, RestError> {
    let body = engine.render_metrics().await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response())
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": sfp_protocol::ENGINE_PROTOCOL_VERSION}))
}
