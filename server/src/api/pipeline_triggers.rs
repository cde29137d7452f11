//! What starts pipelines besides `POST /pipelines/{name}/runs`: schedules
//! (`/sfp/api/pipelines/{name}/schedules`, a cron expression in UTC, managed by owners and
//! application tokens) and events (`POST /sfp/api/pipeline-events`, which runs every
//! pipeline whose latest version lists the event's key under `on.events`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::pipelines::{Row, Which, load, start_run};
use crate::auth::access::Authenticated;
use crate::auth::rls::begin_as;
use crate::pipelines::schedules::next_after;
use crate::state::AppState;

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: Uuid,
    cron: String,
    next_run_at: DateTime<Utc>,
    last_run_id: Option<Uuid>,
    last_run_at: Option<DateTime<Utc>>,
    runs: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
}

fn schedule_json(s: &ScheduleRow) -> Value {
    json!({"id": s.id, "cron": s.cron, "nextRunAt": s.next_run_at, "lastRunId": s.last_run_id,
           "lastRunAt": s.last_run_at, "runs": s.runs, "lastError": s.last_error, "createdAt": s.created_at})
}

const COLUMNS: &str = "id, cron, next_run_at, last_run_id, last_run_at, runs, last_error, created_at";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// A cron expression in UTC: 5 fields, or 6 with seconds first.
    cron: String,
}

/// `POST /sfp/api/pipelines/{name}/schedules`: run the latest version on a cron.
#[utoipa::path(post, path = "/pipelines/{name}/schedules", tag = "pipelines", security(("bearer" = [])),
    params(("name" = String, Path), ("project" = Option<String>, Query)), request_body = NewSchedule, responses(
    (status = 201, description = "`{id, cron, nextRunAt, runs, ...}`", body = Object),
    (status = 400, description = "Not a cron expression", body = ErrorBody),
    (status = 404, description = "No such pipeline", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    Query(which): Query<Which>,
    ApiJson(body): ApiJson<NewSchedule>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let next = next_after(&body.cron, Utc::now()).map_err(|e| ApiError::bad_request(format!("cron: {e}")))?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let (row, _, _, _) = load(&mut tx, &name, &Which { project: which.project, version: None }).await?;
    let created: ScheduleRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO app.pipeline_schedule (id, pipeline_id, cron, next_run_at, created_by) \
         VALUES ($1, $2, $3, $4, auth.uid()) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(row.id)
    .bind(body.cron.trim())
    .bind(next)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| crate::auth::rls::write_error(e, || "exists".into(), || "only owners schedule pipelines".into()))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&created))))
}

/// `GET /sfp/api/pipelines/{name}/schedules`
#[utoipa::path(get, path = "/pipelines/{name}/schedules", tag = "pipelines", security(("bearer" = [])),
    params(("name" = String, Path), ("project" = Option<String>, Query)), responses(
    (status = 200, description = "`{schedules: [...]}`", body = Object),
    (status = 404, description = "No such pipeline", body = ErrorBody),
))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    Query(which): Query<Which>,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let (row, _, _, _) = load(&mut tx, &name, &Which { project: which.project, version: None }).await?;
    let rows: Vec<ScheduleRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM app.pipeline_schedule WHERE pipeline_id = $1 ORDER BY created_at"
    )))
    .bind(row.id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(json!({"schedules": rows.iter().map(schedule_json).collect::<Vec<_>>()})))
}

/// `DELETE /sfp/api/pipelines/{name}/schedules/{id}`: no more runs from it.
#[utoipa::path(delete, path = "/pipelines/{name}/schedules/{id}", tag = "pipelines", security(("bearer" = [])),
    params(("name" = String, Path), ("id" = Uuid, Path), ("project" = Option<String>, Query)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such schedule", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((name, id)): Path<(String, Uuid)>,
    Query(which): Query<Which>,
) -> ApiResult<StatusCode> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let (row, _, _, _) = load(&mut tx, &name, &Which { project: which.project, version: None }).await?;
    let done = sqlx::query("DELETE FROM app.pipeline_schedule WHERE id = $1 AND pipeline_id = $2")
        .bind(id)
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("pipeline {name:?} has no schedule {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// e.g. `release.requested`
    key: String,
    /// Kept with the event (at most 64 KiB).
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Option<Value>,
}

/// A pipeline whose latest version listens to the event, with that version's definition.
#[derive(sqlx::FromRow)]
struct Listener {
    #[sqlx(flatten)]
    pipeline: Row,
    definition: Value,
}

/// `POST /sfp/api/pipeline-events`: starts a run of every pipeline whose latest version is
/// `on: {events: [key]}`. The event and its runs commit together: a 201 means every run
/// started, an error means none did.
#[utoipa::path(post, path = "/pipeline-events", tag = "pipelines", security(("bearer" = [])),
    request_body = NewEvent, responses(
    (status = 201, description = "`{eventId, key, runs: [{pipeline, project, runId}]}`", body = Object),
    (status = 400, description = "A bad key or payload", body = ErrorBody),
    (status = 503, description = "The engine cannot be reached; nothing started", body = ErrorBody),
))]
pub async fn event(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewEvent>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !sfp_workflows::pipeline::is_event_key(&body.key) {
        return Err(ApiError::bad_request("key: 1 to 100 of a-z, 0-9, '.', '_', ':' or '-'"));
    }
    let payload = body.payload.unwrap_or_else(|| json!({}));
    if payload.to_string().len() > 64 * 1024 {
        return Err(ApiError::bad_request("payload: at most 64 KiB"));
    }
    let link = state.tasks.link.clone().ok_or_else(|| ApiError::unavailable("this server runs without an engine"))?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let listeners: Vec<Listener> = sqlx::query_as(
        "SELECT p.id, p.project, p.name, p.version, p.workflow_name, p.updated_at, v.definition FROM app.pipeline p \
         JOIN app.pipeline_version v ON v.pipeline_id = p.id AND v.version = p.version \
         WHERE coalesce(v.definition -> 'on' -> 'events', '[]') ? $1 ORDER BY p.project, p.name",
    )
    .bind(&body.key)
    .fetch_all(&mut *tx)
    .await?;
    let mut runs = Vec::new();
    for Listener { pipeline: p, definition } in &listeners {
        let (run, _) = start_run(&mut tx, &link, state.tasks.sources, p, p.version, definition, None).await?;
        runs.push(json!({"pipeline": p.name, "project": p.project, "pipelineId": p.id, "runId": run}));
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO app.pipeline_event (id, key, payload, runs, created_by) VALUES ($1, $2, $3, $4, auth.uid())",
    )
    .bind(id)
    .bind(&body.key)
    .bind(&payload)
    .bind(Value::Array(runs.clone()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({"eventId": id, "key": body.key, "runs": runs}))))
}
