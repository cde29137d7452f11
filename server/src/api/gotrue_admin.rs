//! `/auth/v1/admin/users`: GoTrue's user administration, for callers holding a JWT whose role
//! is `service_role` or `supabase_admin` (the instance's service key), as supabase-js's
//! `auth.admin` uses it. Users made here have no control plane role until an owner gives
//! them one (or their first `/sfp/api/auth/callback` makes them members).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::gotrue::error;
use super::json::ApiJson;
use crate::auth::{password, sessions};
use crate::state::AppState;

const ADMIN_ROLES: &[&str] = &["service_role", "supabase_admin"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(list).post(create))
        .route("/admin/users/{id}", get(get_one).put(update).delete(remove))
}

/// Only a service-role JWT of this instance may administer users.
fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = crate::auth::bearer(headers).filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        ));
    };
    let claims: Value = state
        .auth
        .keys
        .verify_any(token)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_jwt", format!("invalid JWT: {e}")))?;
    let role = claims["role"].as_str().unwrap_or_default();
    if !ADMIN_ROLES.contains(&role) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not_admin", "User not allowed"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Page {
    page: Option<i64>,
    per_page: Option<i64>,
}

async fn list(State(state): State<AppState>, headers: HeaderMap, Query(page): Query<Page>) -> Response {
    if let Err(e) = require_admin(&state, &headers) {
        return e.into_response();
    }
    let per_page = page.per_page.unwrap_or(50).clamp(1, 1000);
    let page_no = page.page.unwrap_or(1).max(1);
    let result: sqlx::Result<(Vec<Uuid>, i64)> = async {
        let ids = sqlx::query_scalar(
            "SELECT id FROM auth.users WHERE deleted_at IS NULL ORDER BY created_at, id LIMIT $1 OFFSET $2",
        )
        .bind(per_page)
        .bind((page_no - 1) * per_page)
        .fetch_all(&state.pool)
        .await?;
        let total = sqlx::query_scalar("SELECT count(*) FROM auth.users WHERE deleted_at IS NULL")
            .fetch_one(&state.pool)
            .await?;
        Ok((ids, total))
    }
    .await;
    let (ids, total) = match result {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut users = Vec::with_capacity(ids.len());
    for id in ids {
        match sessions::user_by_id(&state.pool, id).await {
            Ok(Some(u)) => users.push(u.to_json()),
            Ok(None) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let mut response = Json(json!({"users": users, "aud": "authenticated"})).into_response();
    let last = ((total + per_page - 1) / per_page).max(1);
    let mut links = vec![format!("</admin/users?page={last}&per_page={per_page}>; rel=\"last\"")];
    if page_no < last {
        links.push(format!("</admin/users?page={}&per_page={per_page}>; rel=\"next\"", page_no + 1));
    }
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        response.headers_mut().insert("x-total-count", v);
    }
    if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
        response.headers_mut().insert("link", v);
    }
    response
}

#[derive(Deserialize)]
struct NewUser {
    email: String,
    password: Option<String>,
    #[serde(default)]
    user_metadata: Option<Value>,
}

async fn create(State(state): State<AppState>, headers: HeaderMap, ApiJson(body): ApiJson<NewUser>) -> Response {
    if let Err(e) = require_admin(&state, &headers) {
        return e.into_response();
    }
    if !body.email.contains('@') {
        return error(StatusCode::BAD_REQUEST, "validation_failed", "Unable to validate email address: invalid format");
    }
    let hash = match body.password.as_deref() {
        Some(p) if p.chars().count() < 6 => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "weak_password",
                "Password should be at least 6 characters.",
            );
        }
        Some(p) => password::hash(p),
        None => String::new(),
    };
    let created = match sessions::create_user_without_role(&state.pool, &body.email, &hash).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "email_exists",
                "A user with this email address has already been registered",
            );
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Some(meta) = body.user_metadata.filter(Value::is_object)
        && let Err(e) = sqlx::query("UPDATE auth.users SET raw_user_meta_data = $2 WHERE id = $1")
            .bind(created)
            .bind(meta)
            .execute(&state.pool)
            .await
    {
        return ApiError::from(e).into_response();
    }
    one(&state, created).await
}

async fn one(state: &AppState, id: Uuid) -> Response {
    match sessions::user_by_id(&state.pool, id).await {
        Ok(Some(u)) => Json(u.to_json()).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "user_not_found", "User not found"),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn parse_user_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "User not found"))
}

async fn get_one(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = require_admin(&state, &headers) {
        return e.into_response();
    }
    match parse_user_id(&id) {
        Ok(id) => one(&state, id).await,
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct Changes {
    password: Option<String>,
    user_metadata: Option<Value>,
    /// `none` lifts a ban; otherwise a duration like `24h`.
    ban_duration: Option<String>,
}

async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Changes>,
) -> Response {
    if let Err(e) = require_admin(&state, &headers) {
        return e.into_response();
    }
    let id = match parse_user_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let ban: Option<Option<chrono::DateTime<chrono::Utc>>> = match body.ban_duration.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(d) => match sfp_protocol::duration::parse(d) {
            Ok(Some(d)) => Some(Some(chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or_default())),
            _ => return error(StatusCode::BAD_REQUEST, "validation_failed", "ban_duration is not a duration"),
        },
    };
    let hash = body.password.as_deref().map(password::hash);
    let done = sqlx::query(
        "UPDATE auth.users SET encrypted_password = coalesce($2, encrypted_password), \
           raw_user_meta_data = coalesce($3, raw_user_meta_data), \
           banned_until = CASE WHEN $4 THEN $5 ELSE banned_until END, updated_at = now() \
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(hash)
    .bind(body.user_metadata.filter(Value::is_object))
    .bind(ban.is_some())
    .bind(ban.flatten())
    .execute(&state.pool)
    .await;
    state.auth.identities.forget_user(id);
    match done {
        Ok(d) if d.rows_affected() == 0 => error(StatusCode::NOT_FOUND, "user_not_found", "User not found"),
        Ok(_) => one(&state, id).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn remove(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = require_admin(&state, &headers) {
        return e.into_response();
    }
    let id = match parse_user_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let last_owner: Result<bool, sqlx::Error> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM app.user_role WHERE user_id = $1 AND role = 'owner') \
           AND (SELECT count(*) FROM app.user_role WHERE role = 'owner') <= 1",
    )
    .bind(id)
    .fetch_one(&state.pool)
    .await;
    match last_owner {
        Ok(true) => {
            return error(StatusCode::CONFLICT, "last_owner", "the last owner of the instance cannot be deleted");
        }
        Ok(false) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    let deleted = sqlx::query("DELETE FROM auth.users WHERE id = $1").bind(id).execute(&state.pool).await;
    state.auth.identities.forget_user(id);
    match deleted {
        Ok(d) if d.rows_affected() == 0 => error(StatusCode::NOT_FOUND, "user_not_found", "User not found"),
        Ok(_) => Json(json!({})).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
