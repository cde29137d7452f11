//! sfp server's identity routes: admin sign-in, the sign-in callback, the caller's own user,
//! application tokens and the audit log.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::gotrue::{self, SignInError};
use super::json::ApiJson;
use crate::auth::access::Authenticated;
use crate::auth::audit::AuditEntry;
use crate::auth::{CallerKind, ClientIp, Role, app_tokens, sessions};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminLogin {
    email: String,
    password: String,
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}")
}

/// `POST /sfp/api/auth/admin/login`: e-mail and password sign-in (429 after repeated
/// failures from one address).
#[utoipa::path(post, path = "/auth/admin/login", tag = "auth", request_body = AdminLogin, responses(
    (status = 200, description = "Signed in: access and refresh tokens, the anon key, the user", body = Object),
    (status = 401, description = "Invalid login credentials", body = ErrorBody),
    (status = 429, description = "Too many failed sign-ins from this address", body = ErrorBody),
))]
pub async fn admin_login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AdminLogin>,
) -> Response {
    if body.email.trim().is_empty() || body.password.is_empty() {
        return ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", "email and password are required")
            .into_response();
    }
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok());
    match gotrue::sign_in(&state, &body.email, &body.password, ip, user_agent).await {
        Ok(session) => {
            let user = &session["user"];
            let id = user["id"].as_str().and_then(|i| Uuid::parse_str(i).ok());
            let role = match id {
                Some(id) => sessions::user_by_id(&state.pool, id).await.ok().flatten().and_then(|u| u.sfp_role()),
                None => None,
            };
            Json(json!({
                "success": true,
                "access_token": session["access_token"],
                "refresh_token": session["refresh_token"],
                "expires_in": session["expires_in"],
                "expires_at": session["expires_at"],
                "local_supabase_url": base_url(&headers),
                "local_supabase_anon_key": state.auth.keys.anon_key(),
                "user": {"id": user["id"], "email": user["email"], "role": role.map(Role::as_str)},
                "error": null,
            }))
            .into_response()
        }
        Err(SignInError::Invalid) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "Invalid login credentials").into_response()
        }
        Err(SignInError::Banned) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "user_banned", "the user is banned").into_response()
        }
        Err(SignInError::Limited(wait)) => gotrue::too_many(wait),
        Err(SignInError::Internal(e)) => e.into_response(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct Callback {
    access_token: String,
    #[allow(dead_code)]
    refresh_token: Option<String>,
}

/// `POST /sfp/api/auth/callback`: the CLI hands over the session it got from a sign-in
/// (OAuth, SSO); the server checks it and makes sure the user has a role here (a user's
/// first sign-in makes them a member).
#[utoipa::path(post, path = "/auth/callback", tag = "auth", request_body = Callback, responses(
    (status = 200, description = "The session is valid; the user's id, e-mail and role", body = Object),
    (status = 401, description = "No valid credentials", body = ErrorBody),
))]
pub async fn callback(State(state): State<AppState>, ApiJson(body): ApiJson<Callback>) -> ApiResult<Json<Value>> {
    let caller = state
        .auth
        .authenticate(&state.pool, &body.access_token)
        .await
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
    if caller.kind != CallerKind::User {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a user's access token is required"));
    }
    let role: String = sqlx::query_scalar(
        "INSERT INTO app.user_role (user_id, role) VALUES ($1, 'member') \
         ON CONFLICT (user_id) DO UPDATE SET updated_at = app.user_role.updated_at RETURNING role",
    )
    .bind(caller.user_id)
    .fetch_one(&state.pool)
    .await?;
    state.auth.identities.forget_user(caller.user_id);
    Ok(Json(json!({"success": true, "data": {"userId": caller.user_id, "email": caller.email, "role": role}})))
}

/// `GET /sfp/api/users/me`: the caller (for an application token: the user who made it).
#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])), responses(
    (status = 200, description = "The caller", body = Object), (status = 401, description = "No valid credentials", body = ErrorBody),
))]
pub async fn me(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    let user = sessions::user_by_id(&state.pool, caller.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(Json(json!({
        "id": user.id,
        "email": user.email,
        "role": caller.role.map(Role::as_str),
        "authenticatedAs": match caller.kind { CallerKind::User => "user", CallerKind::Application => "application" },
        "tokenId": caller.token_id,
        "createdAt": user.created_at,
        "lastSignInAt": user.last_sign_in_at,
    })))
}

fn token_json(t: &app_tokens::TokenInfo) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "createdBy": t.created_by,
        "createdByEmail": t.created_by_email,
        "createdAt": t.created_at,
        "expiresAt": t.expires_at,
        "lastUsedAt": t.last_used_at,
        "revokedAt": t.revoked_at,
        "status": t.status(),
    })
}

/// Every application token (never the tokens themselves).
#[utoipa::path(get, path = "/application-tokens", tag = "application-tokens", security(("bearer" = [])), responses(
    (status = 200, description = "The tokens", body = Object), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn list_tokens(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let tokens = app_tokens::list(&state.pool).await?;
    Ok(Json(json!({"tokens": tokens.iter().map(token_json).collect::<Vec<_>>()})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    /// Days until the token expires (required: every token expires).
    expires_in: u32,
}

/// A new application token acting for the caller; the token is in this answer only.
#[utoipa::path(post, path = "/application-tokens", tag = "application-tokens", security(("bearer" = [])), request_body = CreateToken, responses(
    (status = 201, description = "Created; `token` is shown this once", body = Object),
    (status = 400, description = "Invalid name or expiry", body = ErrorBody),
    (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn create_token(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", "name must be 1 to 100 characters"));
    }
    let max = state.auth.config.max_application_token_days;
    if body.expires_in == 0 || body.expires_in > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            format!("expiresIn must be between 1 and {max} days"),
        ));
    }
    let (info, token) = app_tokens::create(&state.pool, caller.user_id, name, body.expires_in).await?;
    let mut body = token_json(&info);
    body["token"] = json!(token);
    body["message"] = json!("Store this token now: it is shown only once.");
    Ok((StatusCode::CREATED, Json(body)))
}

/// Revokes a token, named by its id or by the token itself.
#[utoipa::path(delete, path = "/application-tokens/{token}", tag = "application-tokens", security(("bearer" = [])),
    params(("token" = String, Path, description = "The token's id, or the token")), responses(
    (status = 200, description = "Revoked", body = Object),
    (status = 404, description = "No such token", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn revoke_token(State(state): State<AppState>, Path(token): Path<String>) -> ApiResult<Json<Value>> {
    let info = app_tokens::revoke(&state.pool, &token)
        .await?
        .ok_or_else(|| ApiError::not_found("no such application token"))?;
    state.auth.identities.forget_user(info.created_by);
    Ok(Json(token_json(&info)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    actor: Option<Uuid>,
    route: Option<String>,
    outcome: Option<String>,
    since: Option<DateTime<Utc>>,
    /// Entries older than this id (the previous page's `nextCursor`).
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /sfp/api/audit`: newest first, filtered, paged by id.
#[utoipa::path(get, path = "/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery), responses(
    (status = 200, description = "Audit entries and the cursor of the next page", body = Object),
    (status = 400, description = "Invalid filter", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn audit(State(state): State<AppState>, Query(q): Query<AuditQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    if let Some(o) = q.outcome.as_deref()
        && !["allowed", "denied", "failed"].contains(&o)
    {
        return Err(ApiError::bad_request("outcome must be allowed, denied or failed"));
    }
    let entries: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, at, request_id, actor_id, actor_email, actor_kind, role, token_id, method, route, path, target, \
                status, outcome FROM app.audit_log \
         WHERE ($1::uuid IS NULL OR actor_id = $1) AND ($2::text IS NULL OR route = $2) \
           AND ($3::text IS NULL OR outcome = $3) AND ($4::timestamptz IS NULL OR at >= $4) \
           AND ($5::bigint IS NULL OR id < $5) \
         ORDER BY id DESC LIMIT $6",
    )
    .bind(q.actor)
    .bind(q.route)
    .bind(q.outcome)
    .bind(q.since)
    .bind(q.before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let next = if entries.len() as i64 == limit { entries.last().and_then(|e| e.id) } else { None };
    Ok(Json(json!({"entries": entries, "nextCursor": next})))
}
