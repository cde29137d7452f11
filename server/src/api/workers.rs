//! Just-in-time credentials for workers (`/sfp/api/workers/step-token...`), the worker
//! tokens owners hand to remote `sfp-worker` processes, and the credential access log.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sfp_workflows::credentials::{StepCredentials, StepToken, StepTokenRequest};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::salesforce::org_error;
use crate::auth::access::WorkerCaller;
use crate::credentials::step_tokens::{self, Released, StepTokenError};
use crate::credentials::worker_tokens::{self, WorkerToken};
use crate::state::AppState;

fn step_error(e: StepTokenError) -> ApiError {
    match e {
        StepTokenError::UnknownTask(_) => ApiError::not_found(e.to_string()),
        StepTokenError::NotRunning(..) => ApiError::new(StatusCode::FORBIDDEN, "step_not_running", e.to_string()),
        StepTokenError::AlreadyIssued => ApiError::new(StatusCode::CONFLICT, "step_token_issued", e.to_string()),
        StepTokenError::Unknown => ApiError::new(StatusCode::UNAUTHORIZED, "step_token_unknown", e.to_string()),
        StepTokenError::Expired => ApiError::new(StatusCode::UNAUTHORIZED, "step_token_expired", e.to_string()),
        StepTokenError::Used => ApiError::new(StatusCode::UNAUTHORIZED, "step_token_used", e.to_string()),
        StepTokenError::Released => ApiError::new(StatusCode::UNAUTHORIZED, "step_token_released", e.to_string()),
        StepTokenError::NoEngine => ApiError::unavailable(e.to_string()),
        StepTokenError::Engine(m) => {
            ApiError::unavailable("the engine could not confirm the step; try again").with_cause(m)
        }
        StepTokenError::Org(e) => org_error(e),
        StepTokenError::Vault(e) => ApiError::internal(e),
        StepTokenError::Database(e) => e.into(),
    }
}

fn step_bearer(headers: &HeaderMap) -> ApiResult<String> {
    match crate::auth::bearer(headers) {
        Some(t) if t.starts_with(step_tokens::PREFIX) => Ok(t.to_string()),
        _ => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "step_token_unknown", "send the step token as a bearer token"))
        }
    }
}

/// `POST /sfp/api/workers/step-token`: the token of one step attempt, for the worker running
/// it (the engine must report the step running). Once per attempt.
#[utoipa::path(post, path = "/workers/step-token", tag = "workers", security(("bearer" = [])),
    request_body(content = Object, description = "`{taskId, runId, stepRunId, attempt}`"), responses(
    (status = 201, description = "`{token, expiresAt, credentials: [{alias, username}]}`", body = Object),
    (status = 401, description = "No valid worker token", body = ErrorBody),
    (status = 403, description = "The step is not running", body = ErrorBody),
    (status = 409, description = "A token was issued for this attempt already", body = ErrorBody),
))]
pub async fn issue(
    State(state): State<AppState>,
    axum::Extension(WorkerCaller(worker)): axum::Extension<WorkerCaller>,
    ApiJson(req): ApiJson<StepTokenRequest>,
) -> ApiResult<(StatusCode, Json<StepToken>)> {
    let token =
        state.credentials.issue_step_token(state.tasks.link.as_ref(), worker, &req).await.map_err(step_error)?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// `POST /sfp/api/workers/step-token/exchange` (bearer: the step token): fresh sessions of
/// the step's orgs. A token is exchanged once, within its lifetime.
#[utoipa::path(post, path = "/workers/step-token/exchange", tag = "workers", responses(
    (status = 200, description = "`{orgs: [{alias, username, orgId, instanceUrl, loginUrl, accessToken}]}`", body = Object),
    (status = 401, description = "Unknown, expired, used or released step token", body = ErrorBody),
))]
pub async fn exchange(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<StepCredentials>> {
    let token = step_bearer(&headers)?;
    Ok(Json(state.credentials.exchange(&token).await.map_err(step_error)?))
}

/// `POST /sfp/api/workers/step-token/release` (bearer: the step token): the step has ended;
/// the access tokens it got are revoked at Salesforce.
#[utoipa::path(post, path = "/workers/step-token/release", tag = "workers", responses(
    (status = 200, description = "Released", body = Released),
    (status = 401, description = "Unknown step token", body = ErrorBody),
))]
pub async fn release(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Released>> {
    let token = step_bearer(&headers)?;
    Ok(Json(state.credentials.release(&token).await.map_err(step_error)?))
}

/// `GET /sfp/api/worker-tokens`
#[utoipa::path(get, path = "/worker-tokens", tag = "workers", security(("bearer" = [])),
    responses((status = 200, description = "The worker tokens (never their values)", body = [WorkerToken])))]
pub async fn list_tokens(State(state): State<AppState>) -> ApiResult<Json<Vec<WorkerToken>>> {
    Ok(Json(worker_tokens::list(&state.pool).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWorkerToken {
    name: String,
    /// Days until it expires (1 to 365).
    expires_in: u32,
}

/// `POST /sfp/api/worker-tokens`: a token for a remote `sfp-worker` (shown once).
#[utoipa::path(post, path = "/worker-tokens", tag = "workers", security(("bearer" = [])),
    request_body = CreateWorkerToken, responses(
    (status = 201, description = "`{token, ...}`: the only time the token is shown", body = Object),
    (status = 400, description = "A bad name or lifetime", body = ErrorBody),
))]
pub async fn create_token(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateWorkerToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if body.name.trim().is_empty() || body.name.len() > 100 {
        return Err(ApiError::bad_request("name must be 1 to 100 characters"));
    }
    if !(1..=365).contains(&body.expires_in) {
        return Err(ApiError::bad_request("expiresIn must be 1 to 365 days"));
    }
    let (info, token) = worker_tokens::create(&state.pool, body.name.trim(), body.expires_in, false).await?;
    let mut out = serde_json::to_value(&info).map_err(ApiError::internal)?;
    out["token"] = json!(token.expose());
    Ok((StatusCode::CREATED, Json(out)))
}

/// `DELETE /sfp/api/worker-tokens/{id}`
#[utoipa::path(delete, path = "/worker-tokens/{id}", tag = "workers", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204, description = "Revoked"), (status = 404, description = "No such token", body = ErrorBody)))]
pub async fn revoke_token(State(state): State<AppState>, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    if !worker_tokens::revoke(&state.pool, id).await? {
        return Err(ApiError::not_found(format!("no worker token {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
struct LogEntry {
    id: i64,
    at: chrono::DateTime<chrono::Utc>,
    actor_kind: String,
    actor_id: Option<Uuid>,
    subject: String,
    purpose: String,
    task_id: Option<Uuid>,
    outcome: String,
    detail: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// e.g. `salesforce_org:ci@acme.com`
    subject: Option<String>,
    task: Option<Uuid>,
    limit: Option<i64>,
}

/// `GET /sfp/api/vault/access-log`: who got which credential, when, for what.
#[utoipa::path(get, path = "/vault/access-log", tag = "workers", security(("bearer" = [])), params(LogQuery),
    responses((status = 200, description = "Newest first", body = Object)))]
pub async fn access_log(State(state): State<AppState>, Query(q): Query<LogQuery>) -> ApiResult<Json<Value>> {
    let entries: Vec<LogEntry> = sqlx::query_as(
        "SELECT id, at, actor_kind, actor_id, subject, purpose, task_id, outcome, detail FROM vault.access_log \
         WHERE ($1::text IS NULL OR subject = $1) AND ($2::uuid IS NULL OR task_id = $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(&q.subject)
    .bind(q.task)
    .bind(q.limit.unwrap_or(100).clamp(1, 1000))
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(json!({ "entries": entries })))
}
