//! `/sfp/api/pipelines/{name}/schedules`: runs of a pipeline's latest version on a cron
//! expression (UTC, 5 or 6 fields). Owners and application tokens manage them.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::pipelines::{Which, load};
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
