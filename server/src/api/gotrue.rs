//! `/auth/v1`: the subset of Supabase GoTrue that supabase-js and supabase-py use to sign in,
//! read the user, refresh and sign out. Errors carry GoTrue's codes (`invalid_credentials`,
//! `session_not_found`, `refresh_token_already_used`, ...) in the stable `{code, message}`
//! body, the `x-sb-error-code` header, and the echoed `X-Supabase-Api-Version`.

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::json::ApiJson;
use crate::auth::jwt::AccessClaims;
use crate::auth::sessions::{self, LogoutScope, RefreshError, User};
use crate::auth::{AuthState, ClientIp, password};
use crate::state::AppState;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/token", post(token))
        .route("/user", get(user))
        .route("/logout", post(logout))
        .route("/settings", get(settings))
        .merge(super::gotrue_admin::router())
        .route(
            "/health",
            get(|| async { Json(json!({"name": "sfp-server", "description": "GoTrue-compatible subset"})) }),
        )
        .route_layer(axum::middleware::from_fn_with_state(state, audit_calls))
        .layer(axum::middleware::from_fn(api_version))
}

/// Echoes the API version header and repeats an error's code in `x-sb-error-code`.
async fn api_version(request: Request, next: Next) -> Response {
    let version = request.headers().get("x-supabase-api-version").cloned();
    let mut response = next.run(request).await;
    if let Some(v) = version {
        response.headers_mut().insert("x-supabase-api-version", v);
    }
    if let Some(code) = response.extensions().get::<ErrorCode>().map(|c| c.0)
        && let Ok(v) = HeaderValue::from_str(code)
    {
        response.headers_mut().insert("x-sb-error-code", v);
    }
    response
}

#[derive(Clone, Copy)]
struct ErrorCode(&'static str);

/// Every call to `/auth/v1` goes into the audit log too: sign-ins (anonymous until they
/// succeed), token refreshes, reads of the user, sign-outs and user administration.
async fn audit_calls(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let method = request.method().clone();
    // The path as the client sent it (inside a nested router the URI is shortened).
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.0.path().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let ip = crate::auth::client_ip(request.extensions());
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let claims = crate::auth::bearer(request.headers()).and_then(|t| state.auth.keys.verify_any(t).ok());
    let response = next.run(request).await;
    if route == "/auth/v1/health" || route == "/auth/v1/settings" {
        return response;
    }
    let status = response.status();
    let actor = claims.as_ref().and_then(|c| c["sub"].as_str()).and_then(|s| uuid::Uuid::parse_str(s).ok());
    state.auth.audit.record(crate::auth::audit::AuditEntry {
        id: None,
        at: chrono::Utc::now(),
        request_id,
        actor_id: actor,
        actor_email: claims.as_ref().and_then(|c| c["email"].as_str()).map(str::to_owned),
        actor_kind: if actor.is_some() { "user" } else { "anonymous" }.into(),
        role: claims.as_ref().and_then(|c| c["role"].as_str()).map(str::to_owned),
        token_id: None,
        method: method.to_string(),
        route,
        path,
        target: None,
        status: i32::from(status.as_u16()),
        outcome: match status.as_u16() {
            400 | 401 | 403 | 429 => "denied",
            s if s >= 400 => "failed",
            _ => "allowed",
        }
        .into(),
        client_ip: Some(ip),
    });
    response
}

/// A GoTrue error: the stable body with GoTrue's code (repeated in `x-sb-error-code`).
pub(super) fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    let mut response = ApiError::new(status, code, message).into_response();
    response.extensions_mut().insert(ErrorCode(code));
    response
}

#[derive(Deserialize)]
struct Grant {
    grant_type: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    email: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
}

async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Query(grant): Query<Grant>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TokenBody>,
) -> Response {
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok());
    match grant.grant_type.as_deref() {
        Some("password") => {
            let (Some(email), Some(pw)) = (body.email.as_deref(), body.password.as_deref()) else {
                return error(StatusCode::BAD_REQUEST, "validation_failed", "email and password are required");
            };
            match sign_in(&state, email, pw, ip, user_agent).await {
                Ok(session) => Json(session).into_response(),
                Err(SignInError::Invalid) => {
                    error(StatusCode::BAD_REQUEST, "invalid_credentials", "Invalid login credentials")
                }
                Err(SignInError::Limited(wait)) => too_many(wait),
                Err(SignInError::Banned) => error(StatusCode::BAD_REQUEST, "user_banned", "User is banned"),
                Err(SignInError::Internal(e)) => e.into_response(),
            }
        }
        Some("refresh_token") => {
            let Some(presented) = body.refresh_token.as_deref().filter(|t| !t.is_empty()) else {
                return error(StatusCode::BAD_REQUEST, "validation_failed", "refresh_token is required");
            };
            match refresh(&state, presented).await {
                Ok(session) => Json(session).into_response(),
                Err(e) => e,
            }
        }
        Some(other) => {
            error(StatusCode::BAD_REQUEST, "unsupported_grant_type", format!("unsupported grant_type {other:?}"))
        }
        None => error(StatusCode::BAD_REQUEST, "validation_failed", "grant_type is required"),
    }
}

pub fn too_many(wait: std::time::Duration) -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "over_request_rate_limit",
        format!("too many failed sign-ins from this address; try again in {} s", wait.as_secs().max(1)),
    );
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert("retry-after", v);
    }
    response
}

pub enum SignInError {
    Invalid,
    Banned,
    Limited(std::time::Duration),
    Internal(ApiError),
}

impl From<sqlx::Error> for SignInError {
    fn from(e: sqlx::Error) -> Self {
        SignInError::Internal(e.into())
    }
}

/// Password sign-in, limited per client address. Returns GoTrue's session object.
pub async fn sign_in(
    state: &AppState,
    email: &str,
    pw: &str,
    ip: std::net::IpAddr,
    user_agent: Option<&str>,
) -> Result<Value, SignInError> {
    let auth = &state.auth;
    if let Some(wait) = auth.limiter.check(ip) {
        return Err(SignInError::Limited(wait));
    }
    let user = sessions::user_by_email(&state.pool, email).await?;
    let matches = match user.as_ref().and_then(|u| u.encrypted_password.as_deref()) {
        Some(stored) => password::verify(pw, stored),
        None => {
            password::verify_nothing(pw);
            false
        }
    };
    let Some(user) = user.filter(|_| matches) else {
        auth.limiter.failed(ip);
        tracing::info!(%ip, "failed sign-in");
        return Err(SignInError::Invalid);
    };
    if user.is_banned() {
        return Err(SignInError::Banned);
    }
    auth.limiter.succeeded(ip);
    let session = sessions::start_session(&state.pool, user.id, user_agent, Some(ip)).await?;
    let user = sessions::user_by_id(&state.pool, user.id).await?.unwrap_or(user);
    Ok(session_json(auth, &user, session.session_id, &session.refresh_token, session.signed_in_at.timestamp()))
}

async fn refresh(state: &AppState, presented: &str) -> Result<Value, Response> {
    let outcome = sessions::refresh(&state.pool, presented).await.map_err(|e| ApiError::from(e).into_response())?;
    let refreshed = outcome.map_err(|e| match e {
        RefreshError::NotFound => {
            error(StatusCode::BAD_REQUEST, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found")
        }
        RefreshError::AlreadyUsed => {
            error(StatusCode::BAD_REQUEST, "refresh_token_already_used", "Invalid Refresh Token: Already Used")
        }
        RefreshError::SessionExpired => error(StatusCode::BAD_REQUEST, "session_expired", "Session has expired"),
    })?;
    let user = sessions::user_by_id(&state.pool, refreshed.user_id)
        .await
        .map_err(|e| ApiError::from(e).into_response())?
        .ok_or_else(|| {
            error(StatusCode::BAD_REQUEST, "user_not_found", "User from the refresh token does not exist")
        })?;
    if user.is_banned() {
        return Err(error(StatusCode::BAD_REQUEST, "user_banned", "User is banned"));
    }
    Ok(session_json(
        &state.auth,
        &user,
        refreshed.session_id,
        &refreshed.refresh_token,
        refreshed.signed_in_at.timestamp(),
    ))
}

/// GoTrue's session object: supabase-js accepts it only with `access_token`,
/// `refresh_token`, `expires_in` and `user` all present.
pub fn session_json(
    auth: &AuthState,
    user: &User,
    session_id: uuid::Uuid,
    refresh_token: &str,
    signed_in_at: i64,
) -> Value {
    let ttl = auth.access_ttl();
    let (access_token, claims) = auth.keys.access_token(
        user.id,
        user.email.as_deref().unwrap_or_default(),
        user.app_metadata.clone().unwrap_or_else(|| json!({})),
        user.user_metadata.clone().unwrap_or_else(|| json!({})),
        session_id,
        "password",
        signed_in_at,
        ttl,
    );
    json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": ttl.as_secs(),
        "expires_at": claims.exp,
        "refresh_token": refresh_token,
        "user": user.to_json(),
    })
}

/// The signed-in user of a request to `/auth/v1`, with GoTrue's answers when there is none.
async fn current(state: &AppState, headers: &HeaderMap) -> Result<(AccessClaims, User), Response> {
    let Some(token) = crate::auth::bearer(headers).filter(|t| !t.is_empty()) else {
        return Err(error(StatusCode::UNAUTHORIZED, "no_authorization", "This endpoint requires a valid Bearer token"));
    };
    let claims = state
        .auth
        .keys
        .verify(token)
        .map_err(|e| error(StatusCode::FORBIDDEN, "bad_jwt", format!("invalid JWT: {e}")))?;
    let user_id =
        claims.user_id().ok_or_else(|| error(StatusCode::FORBIDDEN, "bad_jwt", "invalid JWT: sub is not a user id"))?;
    if let Some(session) = claims.session() {
        let active = sessions::session_is_active(&state.pool, session, user_id)
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
        if !active {
            return Err(error(
                StatusCode::FORBIDDEN,
                "session_not_found",
                "Session from session_id claim in JWT does not exist",
            ));
        }
    }
    let user = sessions::user_by_id(&state.pool, user_id)
        .await
        .map_err(|e| ApiError::from(e).into_response())?
        .ok_or_else(|| error(StatusCode::FORBIDDEN, "user_not_found", "User from sub claim in JWT does not exist"))?;
    Ok((claims, user))
}

async fn user(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match current(&state, &headers).await {
        Ok((_, user)) => Json(user.to_json()).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct Scope {
    scope: Option<String>,
}

async fn logout(State(state): State<AppState>, Query(scope): Query<Scope>, headers: HeaderMap) -> Response {
    let (claims, user) = match current(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let scope = match scope.scope.as_deref() {
        None | Some("global") => LogoutScope::Global,
        Some("local") => LogoutScope::Local,
        Some("others") => LogoutScope::Others,
        Some(other) => {
            return error(StatusCode::BAD_REQUEST, "validation_failed", format!("unknown scope {other:?}"));
        }
    };
    let Some(session) = claims.session() else {
        return error(StatusCode::FORBIDDEN, "session_not_found", "the token names no session");
    };
    let ended = sessions::logout(&state.pool, user.id, session, scope).await;
    state.auth.identities.forget_user(user.id);
    match ended {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn settings() -> ApiResult<Json<Value>> {
    Ok(Json(json!({
        "external": {"email": true, "phone": false, "github": false, "azure": false, "saml": false, "anonymous_users": false},
        "disable_signup": true,
        "mailer_autoconfirm": false,
        "phone_autoconfirm": false,
        "sms_provider": "",
        "saml_enabled": false,
    })))
}
