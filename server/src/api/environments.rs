//! `/sfp/api/environments`: the Salesforce environments of a repository (dev, test,
//! snapshot, release), each with its linked username, tags, active flag and orchestration
//! order, and each lockable the way `sfp server environment lock` and flxbl's
//! `auth-environment-with-lock` action use it (`environment_locks`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::locks::{self, Ticket, ticket_json};
use super::paging::{is_plain_name, writers_only};
use crate::auth::access::Authenticated;
use crate::auth::rls::{self, begin_as};
use crate::state::AppState;

const CATEGORIES: [&str; 4] = ["dev", "test", "snapshot", "release"];

#[derive(sqlx::FromRow)]
pub(super) struct Environment {
    pub(super) id: Uuid,
    pub(super) repository: String,
    pub(super) name: String,
    description: Option<String>,
    category: String,
    pub(super) salesforce_username: Option<String>,
    dev_hub_username: Option<String>,
    pub(super) is_active: bool,
    is_default: bool,
    branch: Option<String>,
    tags: Vec<String>,
    metadata: Value,
    orchestration_order: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, repository, name, description, category, salesforce_username, dev_hub_username, is_active, \
     is_default, branch, tags, metadata, orchestration_order, created_at, updated_at";

pub(super) fn resource(name: &str) -> String {
    format!("environment:{name}")
}

async fn environment_json(tx: &mut sqlx::PgConnection, e: &Environment) -> ApiResult<Value> {
    let tickets = locks::queue(tx, &e.repository, &resource(&e.name)).await?;
    let holder: Option<&Ticket> = tickets.iter().find(|t| t.status == "acquired");
    let queued: Vec<Value> = tickets.iter().filter(|t| t.status == "queued").map(ticket_json).collect();
    let expires_in = holder.and_then(|h| h.lease_expires_at).map(|at| (at - Utc::now()).num_seconds().max(0));
    Ok(json!({
        "id": e.id,
        "repositoryIdentifier": e.repository,
        "repositoryName": e.repository.rsplit('/').next(),
        "name": e.name,
        "description": e.description,
        "category": e.category,
        "salesforceUsername": e.salesforce_username,
        "devHubUsername": e.dev_hub_username,
        "isActive": e.is_active,
        "isDefault": e.is_default,
        "isLocked": holder.is_some(),
        "lockedBy": holder.and_then(|h| h.requested_by),
        "lockExpiresAt": holder.and_then(|h| h.lease_expires_at),
        "lockExpiresInSeconds": expires_in,
        "lockStatus": {"isLocked": holder.is_some(), "currentLock": holder.map(ticket_json), "queuedLocks": queued},
        "metadata": e.metadata,
        "tags": e.tags,
        "branch": e.branch,
        "orchestrationOrder": e.orchestration_order,
        "createdAt": e.created_at,
        "updatedAt": e.updated_at,
    }))
}

fn check_category(category: &str) -> ApiResult<()> {
    if CATEGORIES.contains(&category) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("category {category:?} is not one of dev, test, snapshot, release")))
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    if is_plain_name(name, 100) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("name {name:?} is not valid: up to 100 letters, digits and . _ -")))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEnvironment {
    repository_identifier: String,
    name: String,
    category: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    salesforce_username: Option<String>,
    #[serde(default)]
    dev_hub_username: Option<String>,
    #[serde(default)]
    is_active: Option<bool>,
    #[serde(default)]
    is_default: Option<bool>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    orchestration_order: Option<i32>,
}

/// `POST /sfp/api/environments`
#[utoipa::path(post, path = "/environments", tag = "environments", security(("bearer" = [])), request_body = Object, responses(
    (status = 201, description = "Created", body = Object),
    (status = 409, description = "The repository has an environment of that name", body = ErrorBody),
    (status = 400, description = "Invalid name or category", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewEnvironment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_name(&body.name)?;
    check_category(&body.category)?;
    if body.repository_identifier.trim().is_empty() || body.repository_identifier.len() > 200 {
        return Err(ApiError::bad_request("repositoryIdentifier must be 1 to 200 characters"));
    }
    if body.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let env: Environment = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO app.environment (id, repository, name, description, category, salesforce_username, dev_hub_username, \
           is_active, is_default, branch, tags, metadata, orchestration_order, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, true), coalesce($9, false), $10, coalesce($11, '{{}}'), \
                 coalesce($12, '{{}}'), coalesce($13, 0), auth.uid()) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(&body.repository_identifier)
    .bind(&body.name)
    .bind(&body.description)
    .bind(&body.category)
    .bind(&body.salesforce_username)
    .bind(&body.dev_hub_username)
    .bind(body.is_active)
    .bind(body.is_default)
    .bind(&body.branch)
    .bind(&body.tags)
    .bind(&body.metadata)
    .bind(body.orchestration_order)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        rls::write_error(e, || format!("{} already has an environment {:?}", body.repository_identifier, body.name), writers_only)
    })?;
    let answer = environment_json(&mut tx, &env).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    repository_identifier: Option<String>,
    category: Option<String>,
    is_active: Option<bool>,
    branch: Option<String>,
    /// Comma-separated; an environment must have all of them.
    tags: Option<String>,
    include_inactive: Option<bool>,
}

async fn select(
    tx: &mut sqlx::PgConnection,
    q: &ListQuery,
    active_default: Option<bool>,
) -> ApiResult<Vec<Environment>> {
    if let Some(c) = &q.category {
        check_category(c)?;
    }
    let tags: Vec<String> = q
        .tags
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let active = q.is_active.or(if q.include_inactive == Some(true) { None } else { active_default });
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM app.environment WHERE ($1::text IS NULL OR repository = $1) \
           AND ($2::text IS NULL OR category = $2) AND ($3::bool IS NULL OR is_active = $3) \
           AND ($4::text IS NULL OR branch = $4) AND tags @> $5 \
         ORDER BY orchestration_order, name"
    )))
    .bind(&q.repository_identifier)
    .bind(&q.category)
    .bind(active)
    .bind(&q.branch)
    .bind(&tags)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows)
}

/// `GET /sfp/api/environments`: grouped by category, or a list when `category` is given.
#[utoipa::path(get, path = "/environments", tag = "environments", security(("bearer" = [])),
    params(("repositoryIdentifier" = Option<String>, Query, description = "e.g. `flxbl-io/sfp`"),
           ("category" = Option<String>, Query, description = "dev, test, snapshot or release"),
           ("isActive" = Option<bool>, Query, description = "Only active (or inactive) ones"),
           ("branch" = Option<String>, Query, description = "Only this branch's"),
           ("tags" = Option<String>, Query, description = "Comma-separated; all must match")), responses(
    (status = 200, description = "`{dev: [...], test: [...], ...}`, or a list", body = Object),
))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows = select(&mut tx, &q, None).await?;
    let mut items = Vec::with_capacity(rows.len());
    for e in &rows {
        items.push((e.category.clone(), environment_json(&mut tx, e).await?));
    }
    tx.commit().await?;
    if q.category.is_some() {
        return Ok(Json(Value::Array(items.into_iter().map(|(_, v)| v).collect())));
    }
    let mut grouped = serde_json::Map::new();
    for c in CATEGORIES {
        grouped.insert(c.into(), Value::Array(items.iter().filter(|(k, _)| k == c).map(|(_, v)| v.clone()).collect()));
    }
    Ok(Json(Value::Object(grouped)))
}

/// `GET /sfp/api/environments/orchestration-order`: active environments in the order a
/// release visits them (`includeInactive=true` for all).
#[utoipa::path(get, path = "/environments/orchestration-order", tag = "environments", security(("bearer" = [])),
    params(("repositoryIdentifier" = Option<String>, Query, description = "e.g. `flxbl-io/sfp`"),
           ("category" = Option<String>, Query, description = "dev, test, snapshot or release"),
           ("includeInactive" = Option<bool>, Query, description = "Include inactive ones")), responses(
    (status = 200, description = "The environments in order", body = Object),
))]
pub async fn orchestration_order(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows = select(&mut tx, &q, Some(true)).await?;
    let order: Vec<Value> = rows
        .iter()
        .map(|e| json!({"id": e.id, "name": e.name, "category": e.category, "orchestrationOrder": e.orchestration_order}))
        .collect();
    tx.commit().await?;
    Ok(Json(Value::Array(order)))
}

pub(super) async fn find(tx: &mut sqlx::PgConnection, id: &str) -> ApiResult<Environment> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::bad_request(format!("environment id {id:?} is not a UUID")))?;
    let env: Option<Environment> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM app.environment WHERE id = $1")))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    env.ok_or_else(|| ApiError::not_found(format!("no environment {id}")))
}

/// `GET /sfp/api/environments/{id}`
#[utoipa::path(get, path = "/environments/{id}", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "The environment's id")), responses(
    (status = 200, description = "The environment with its lock state", body = Object),
    (status = 404, description = "No such environment", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let env = find(&mut tx, &id).await?;
    let answer = environment_json(&mut tx, &env).await?;
    tx.commit().await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentUpdate {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    salesforce_username: Option<String>,
    #[serde(default)]
    dev_hub_username: Option<String>,
    #[serde(default)]
    is_active: Option<bool>,
    #[serde(default)]
    is_default: Option<bool>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    orchestration_order: Option<i32>,
}

/// `PATCH /sfp/api/environments/{id}`: changes the fields given, keeps the others.
#[utoipa::path(patch, path = "/environments/{id}", tag = "environments", security(("bearer" = [])), request_body = Object,
    params(("id" = String, Path, description = "The environment's id")), responses(
    (status = 200, description = "The environment", body = Object),
    (status = 400, description = "Invalid name, category or metadata", body = ErrorBody),
    (status = 404, description = "No such environment", body = ErrorBody),
    (status = 409, description = "The repository has another environment of that name", body = ErrorBody),
))]
pub async fn update(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EnvironmentUpdate>,
) -> ApiResult<Json<Value>> {
    if let Some(n) = &body.name {
        check_name(n)?;
    }
    if let Some(c) = &body.category {
        check_category(c)?;
    }
    if body.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let env = find(&mut tx, &id).await?;
    let updated: Environment = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE app.environment SET name = coalesce($2, name), category = coalesce($3, category),            description = coalesce($4, description), salesforce_username = coalesce($5, salesforce_username),            dev_hub_username = coalesce($6, dev_hub_username), is_active = coalesce($7, is_active),            is_default = coalesce($8, is_default), branch = coalesce($9, branch), tags = coalesce($10, tags),            metadata = coalesce($11, metadata), orchestration_order = coalesce($12, orchestration_order), updated_at = now()          WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(env.id)
    .bind(&body.name)
    .bind(&body.category)
    .bind(&body.description)
    .bind(&body.salesforce_username)
    .bind(&body.dev_hub_username)
    .bind(body.is_active)
    .bind(body.is_default)
    .bind(&body.branch)
    .bind(&body.tags)
    .bind(&body.metadata)
    .bind(body.orchestration_order)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| {
        rls::write_error(e, || format!("{} already has an environment of that name", env.repository), writers_only)
    })?
    .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "forbidden", writers_only()))?;
    let answer = environment_json(&mut tx, &updated).await?;
    tx.commit().await?;
    Ok(Json(answer))
}

/// `DELETE /sfp/api/environments/{id}`
#[utoipa::path(delete, path = "/environments/{id}", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "The environment's id")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such environment", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let env = find(&mut tx, &id).await?;
    sqlx::query("DELETE FROM app.environment WHERE id = $1")
        .bind(env.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| rls::write_error(e, String::new, writers_only))?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
