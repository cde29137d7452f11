//! `/sfp/api/teams`: teams and their members (owner or member of the team). Queries run under
//! row-level security: members see their own teams; instance owners and a team's owners
//! manage its members.

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
use crate::auth::rls::{self, begin_as};
use crate::state::AppState;

#[derive(sqlx::FromRow)]
struct TeamRow {
    id: Uuid,
    slug: String,
    name: String,
    created_at: DateTime<Utc>,
    members: i64,
}

fn team_json(t: &TeamRow) -> Value {
    json!({"id": t.id, "slug": t.slug, "name": t.name, "createdAt": t.created_at, "members": t.members})
}

const SELECT: &str = "SELECT t.id, t.slug, t.name, t.created_at, \
     (SELECT count(*) FROM app.team_member m WHERE m.team_id = t.id) AS members FROM app.team t";

/// The teams the caller may see (owners: all).
#[utoipa::path(get, path = "/teams", tag = "teams", security(("bearer" = [])), responses(
    (status = 200, description = "The teams", body = Object), (status = 401, description = "No valid credentials", body = ErrorBody),
))]
pub async fn list(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows: Vec<TeamRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY t.slug"))).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(Json(json!({"teams": rows.iter().map(team_json).collect::<Vec<_>>()})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    name: String,
    slug: Option<String>,
}

fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').chars().take(63).collect()
}

fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 63
        && slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-')
}

/// Creates a team (its slug from the name unless given).
#[utoipa::path(post, path = "/teams", tag = "teams", security(("bearer" = [])), request_body = NewTeam, responses(
    (status = 201, description = "Created", body = Object),
    (status = 400, description = "Invalid name or slug", body = ErrorBody),
    (status = 409, description = "The slug is taken", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewTeam>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", "name must be 1 to 100 characters"));
    }
    let slug = body.slug.unwrap_or_else(|| slugify(name));
    if !valid_slug(&slug) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "slug must be lower-case letters, digits and dashes (at most 63)",
        ));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query("INSERT INTO app.team (id, slug, name, created_by) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(&slug)
        .bind(name)
        .bind(caller.user_id)
        .execute(&mut *tx)
        .await;
    inserted.map_err(|e| {
        rls::write_error(e, || format!("team {slug:?} already exists"), || "only owners create teams".into())
    })?;
    let row: TeamRow =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE t.id = $1"))).bind(id).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(team_json(&row))))
}

/// Deletes a team; its projects go back to the owners.
#[utoipa::path(delete, path = "/teams/{slug}", tag = "teams", security(("bearer" = [])), params(("slug" = String, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such team", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(slug): Path<String>,
) -> ApiResult<StatusCode> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let done = sqlx::query("DELETE FROM app.team WHERE slug = $1").bind(&slug).execute(&mut *tx).await?;
    tx.commit().await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no team {slug:?}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The team as the caller sees it (404 when it does not exist for them).
async fn team_id(tx: &mut sqlx::PgConnection, slug: &str) -> ApiResult<Uuid> {
    sqlx::query_scalar("SELECT id FROM app.team WHERE slug = $1")
        .bind(slug)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no team {slug:?}")))
}

/// The members of a team and their team roles.
#[utoipa::path(get, path = "/teams/{slug}/members", tag = "teams", security(("bearer" = [])), params(("slug" = String, Path)), responses(
    (status = 200, description = "The members", body = Object),
    (status = 404, description = "No such team for the caller", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn members(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(slug): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let team = team_id(&mut tx, &slug).await?;
    // Which members exist is the policies' answer; their e-mail addresses come from the
    // auth schema, which the API role cannot read.
    let rows: Vec<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT user_id, role, added_at FROM app.team_member WHERE team_id = $1")
            .bind(team)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let emails: std::collections::HashMap<Uuid, Option<String>> =
        sqlx::query_as::<_, (Uuid, Option<String>)>("SELECT id, email FROM auth.users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&state.pool)
            .await?
            .into_iter()
            .collect();
    let mut members: Vec<Value> = rows
        .into_iter()
        .map(|(id, role, added)| {
            json!({"userId": id, "email": emails.get(&id).cloned().flatten(), "role": role, "addedAt": added})
        })
        .collect();
    members.sort_by(|a, b| a["email"].as_str().cmp(&b["email"].as_str()));
    Ok(Json(json!({"team": slug, "members": members})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    email: String,
    role: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    role: String,
}

fn team_role(role: Option<&str>) -> ApiResult<&'static str> {
    match role.unwrap_or("member") {
        "member" => Ok("member"),
        "owner" => Ok("owner"),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            format!("role must be owner or member, not {other:?}"),
        )),
    }
}

const REFUSED: &str = "only the team's owners and instance owners manage its members";

fn refused() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", REFUSED)
}

async fn user_id_by_email(pool: &sqlx::PgPool, email: &str) -> ApiResult<Uuid> {
    sqlx::query_scalar("SELECT id FROM auth.users WHERE lower(email) = lower($1) AND deleted_at IS NULL")
        .bind(email.trim())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {email:?}")))
}

/// Adds a user to a team (instance owners and the team's owners).
#[utoipa::path(post, path = "/teams/{slug}/members", tag = "teams", security(("bearer" = [])), params(("slug" = String, Path)), request_body = NewMember, responses(
    (status = 201, description = "Added", body = Object),
    (status = 404, description = "No such team or user", body = ErrorBody),
    (status = 409, description = "Already a member", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn add_member(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<NewMember>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let role = team_role(body.role.as_deref())?;
    let user = user_id_by_email(&state.pool, &body.email).await?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let team = team_id(&mut tx, &slug).await?;
    let inserted = sqlx::query("INSERT INTO app.team_member (team_id, user_id, role) VALUES ($1, $2, $3)")
        .bind(team)
        .bind(user)
        .bind(role)
        .execute(&mut *tx)
        .await;
    inserted.map_err(|e| rls::write_error(e, || format!("{} is already a member", body.email), || REFUSED.into()))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({"team": slug, "email": body.email, "role": role}))))
}

/// Removes a user from a team.
#[utoipa::path(delete, path = "/teams/{slug}/members/{email}", tag = "teams", security(("bearer" = [])), params(("slug" = String, Path), ("email" = String, Path)), responses(
    (status = 204, description = "Removed"),
    (status = 404, description = "Not a member", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn remove_member(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((slug, email)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = user_id_by_email(&state.pool, &email).await?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let team = team_id(&mut tx, &slug).await?;
    let visible: Option<i32> = sqlx::query_scalar("SELECT 1 FROM app.team_member WHERE team_id = $1 AND user_id = $2")
        .bind(team)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
    if visible.is_none() {
        return Err(ApiError::not_found(format!("{email} is not a member of {slug}")));
    }
    let done = sqlx::query("DELETE FROM app.team_member WHERE team_id = $1 AND user_id = $2")
        .bind(team)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(refused());
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes a member's role in the team.
#[utoipa::path(put, path = "/teams/{slug}/members/{email}/role", tag = "teams", security(("bearer" = [])), params(("slug" = String, Path), ("email" = String, Path)), request_body = RoleChange, responses(
    (status = 200, description = "Changed", body = Object),
    (status = 404, description = "Not a member", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn set_member_role(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((slug, email)): Path<(String, String)>,
    ApiJson(body): ApiJson<RoleChange>,
) -> ApiResult<Json<Value>> {
    let role = team_role(Some(&body.role))?;
    let user = user_id_by_email(&state.pool, &email).await?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let team = team_id(&mut tx, &slug).await?;
    let updated = sqlx::query("UPDATE app.team_member SET role = $3 WHERE team_id = $1 AND user_id = $2")
        .bind(team)
        .bind(user)
        .bind(role)
        .execute(&mut *tx)
        .await;
    match updated {
        Ok(done) if done.rows_affected() == 1 => {}
        Ok(_) => {
            let visible: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM app.team_member WHERE team_id = $1 AND user_id = $2")
                    .bind(team)
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(if visible.is_some() {
                refused()
            } else {
                ApiError::not_found(format!("{email} is not a member of {slug}"))
            });
        }
        Err(e) if rls::is_refused(&e) => return Err(refused()),
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(Json(json!({"team": slug, "email": email, "role": role})))
}
