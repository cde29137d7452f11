//! `/sfp/api/users`: the instance's users and their roles (owners only). The last owner can
//! be neither demoted nor deleted, so an instance never locks itself out.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use crate::auth::access::Authenticated;
use crate::auth::{Role, password, sessions};
use crate::state::AppState;

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: Option<String>,
    role: Option<String>,
    created_at: Option<DateTime<Utc>>,
    last_sign_in_at: Option<DateTime<Utc>>,
    teams: Vec<String>,
}

fn user_json(u: &UserRow) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "role": u.role,
        "teams": u.teams,
        "createdAt": u.created_at,
        "lastSignInAt": u.last_sign_in_at,
    })
}

const SELECT: &str = "SELECT u.id, u.email, r.role, u.created_at, u.last_sign_in_at, \
       coalesce((SELECT array_agg(t.slug ORDER BY t.slug) FROM app.team_member m JOIN app.team t ON t.id = m.team_id \
                 WHERE m.user_id = u.id), '{}') AS teams \
     FROM auth.users u LEFT JOIN app.user_role r ON r.user_id = u.id WHERE u.deleted_at IS NULL";

async fn find(pool: &sqlx::PgPool, email: &str) -> ApiResult<UserRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} AND lower(u.email) = lower($1)")))
        .bind(email.trim())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {email:?}")))
}

/// Every user with their role and teams.
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])), responses(
    (status = 200, description = "The users", body = Object), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let rows: Vec<UserRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY u.email"))).fetch_all(&state.pool).await?;
    Ok(Json(json!({"users": rows.iter().map(user_json).collect::<Vec<_>>()})))
}

/// One user, by e-mail address.
#[utoipa::path(get, path = "/users/{email}", tag = "users", security(("bearer" = [])), params(("email" = String, Path)), responses(
    (status = 200, description = "The user", body = Object),
    (status = 404, description = "No such user", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn get(State(state): State<AppState>, Path(email): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(user_json(&find(&state.pool, &email).await?)))
}

fn parse_role(role: &str) -> ApiResult<Role> {
    match Role::parse(role) {
        Some(r @ (Role::Owner | Role::Member)) => Ok(r),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            format!("role must be owner or member, not {role:?}"),
        )),
    }
}

fn valid_email(email: &str) -> bool {
    let email = email.trim();
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && email.len() <= 254
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    email: String,
    /// Without one, the user signs in through GitHub, Azure AD or SSO only.
    password: Option<String>,
    role: String,
}

/// Adds a user with a role (and optionally a password of at least 12 characters).
#[utoipa::path(post, path = "/users", tag = "users", security(("bearer" = [])), request_body = NewUser, responses(
    (status = 201, description = "Created", body = Object),
    (status = 400, description = "Invalid e-mail address or role", body = ErrorBody),
    (status = 409, description = "The e-mail address is taken", body = ErrorBody),
    (status = 422, description = "Weak password or missing field", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !valid_email(&body.email) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", "email is not an e-mail address"));
    }
    let role = parse_role(&body.role)?;
    let hash = match body.password.as_deref() {
        Some(p) if p.chars().count() < 12 => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "weak_password",
                "the password must have at least 12 characters",
            ));
        }
        Some(p) => password::hash(p),
        None => String::new(),
    };
    let created = sessions::create_user(&state.pool, &body.email, &hash, role).await?;
    if created.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a user {} exists already", body.email.trim()),
        ));
    }
    Ok((StatusCode::CREATED, Json(user_json(&find(&state.pool, &body.email).await?))))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    role: String,
}

async fn owners(pool: &sqlx::PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM app.user_role r JOIN auth.users u ON u.id = r.user_id \
         WHERE r.role = 'owner' AND u.deleted_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// Changes a user's role (the last owner stays an owner).
#[utoipa::path(put, path = "/users/{email}", tag = "users", security(("bearer" = [])), params(("email" = String, Path)), request_body = UpdateUser, responses(
    (status = 200, description = "Updated", body = Object),
    (status = 404, description = "No such user", body = ErrorBody),
    (status = 409, description = "The last owner cannot be demoted", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn update(
    State(state): State<AppState>,
    Path(email): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> ApiResult<Json<Value>> {
    let role = parse_role(&body.role)?;
    let user = find(&state.pool, &email).await?;
    let mut tx = state.pool.begin().await?;
    // Serialise role changes so two demotions cannot both pass the last-owner check.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('app.user_role'))").execute(&mut *tx).await?;
    if role == Role::Member && user.role.as_deref() == Some("owner") {
        let owners: i64 =
            sqlx::query_scalar("SELECT count(*) FROM app.user_role WHERE role = 'owner'").fetch_one(&mut *tx).await?;
        if owners <= 1 {
            return Err(ApiError::new(StatusCode::CONFLICT, "last_owner", "the last owner cannot be demoted"));
        }
    }
    sqlx::query(
        "INSERT INTO app.user_role (user_id, role) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET role = excluded.role, updated_at = now()",
    )
    .bind(user.id)
    .bind(role.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state.auth.identities.forget_user(user.id);
    Ok(Json(user_json(&find(&state.pool, &email).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteUser {
    email: String,
}

/// Deletes a user with their sessions, memberships and application tokens.
#[utoipa::path(delete, path = "/users", tag = "users", security(("bearer" = [])), request_body = DeleteUser, responses(
    (status = 200, description = "Deleted", body = Object),
    (status = 404, description = "No such user", body = ErrorBody),
    (status = 409, description = "Yourself, or the last owner", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<DeleteUser>,
) -> ApiResult<Json<Value>> {
    let user = find(&state.pool, &body.email).await?;
    if user.id == caller.user_id {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "you cannot delete yourself"));
    }
    let mut tx = state.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('app.user_role'))").execute(&mut *tx).await?;
    if user.role.as_deref() == Some("owner") && owners(&state.pool).await? <= 1 {
        return Err(ApiError::new(StatusCode::CONFLICT, "last_owner", "the last owner cannot be deleted"));
    }
    // Sessions, refresh tokens, roles, memberships and the user's application tokens go with it.
    sqlx::query("DELETE FROM auth.users WHERE id = $1").bind(user.id).execute(&mut *tx).await?;
    tx.commit().await?;
    state.auth.identities.forget_user(user.id);
    Ok(Json(json!({"deleted": true, "email": user.email})))
}
