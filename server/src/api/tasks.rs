//! `/sfp/api/tasks`: submit a build, validation, deployment, pool preparation or sfp
//! command; follow its status and progress; fetch its result and logs; cancel it; stop a
//! recurring one. Paths and shapes follow sfp server's documented tasks API.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sfp_workflows::step::MAX_RETRIES;
use sfp_workflows::{TaskData, TaskType};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::paging::page_limit;
use crate::auth::access::Authenticated;
use crate::auth::rls::{self, begin_as};
use crate::state::AppState;
use crate::tasks::record::COLUMNS;
use crate::tasks::{Priority, ScheduleType, TaskRow, is_final};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// How many times a failed step runs again (0 to 5).
    #[serde(default, alias = "retries")]
    max_retries: Option<u32>,
    /// Total tries, first included (1 to 6); the other way to say the same.
    #[serde(default)]
    attempts: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecurrenceConfig {
    /// A cron expression (5 or 6 fields, UTC).
    #[serde(alias = "cronExpression")]
    cron: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitTask {
    #[serde(rename = "type")]
    task_type: String,
    data: Value,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    schedule_type: Option<String>,
    #[serde(default)]
    scheduled_for: Option<DateTime<Utc>>,
    #[serde(default)]
    retry_config: Option<RetryConfig>,
    #[serde(default)]
    recurrence_config: Option<RecurrenceConfig>,
    /// The step's hard timeout; the pool's default when unset.
    #[serde(default)]
    timeout_seconds: Option<u64>,
    /// Accepted for compatibility with sfp server's clients; tasks here hold no lock.
    #[serde(default)]
    #[allow(dead_code)]
    lock_duration: Option<u64>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_task", message)
}

/// What a submitted task becomes, once checked.
struct Checked {
    task_type: TaskType,
    data: Value,
    priority: Priority,
    schedule: ScheduleType,
    scheduled_for: Option<DateTime<Utc>>,
    cron: Option<String>,
    timeout_seconds: u64,
    retries: u32,
}

fn check(body: SubmitTask, state: &AppState) -> ApiResult<Checked> {
    let task_type: TaskType = body.task_type.parse().map_err(|e: String| invalid(format!("type: {e}")))?;
    let data = TaskData::parse(task_type, &body.data, state.tasks.sources).map_err(|e| invalid(e.to_string()))?;
    let priority = match body.priority.as_deref() {
        None => Priority::Normal,
        Some(p) => {
            Priority::parse(p).ok_or_else(|| invalid(format!("priority: {p:?} is not critical, normal or batch")))?
        }
    };
    let schedule = match body.schedule_type.as_deref() {
        None => ScheduleType::Immediate,
        Some(s) => ScheduleType::parse(s)
            .ok_or_else(|| invalid(format!("scheduleType: {s:?} is not immediate, scheduled or recurring")))?,
    };
    let scheduled_for = match schedule {
        ScheduleType::Scheduled => {
            let at =
                body.scheduled_for.ok_or_else(|| invalid("scheduledFor: required when scheduleType is scheduled"))?;
            if at > Utc::now() + chrono::Duration::days(366) {
                return Err(invalid("scheduledFor: at most a year ahead"));
            }
            Some(at)
        }
        _ if body.scheduled_for.is_some() => return Err(invalid("scheduledFor: only for scheduleType scheduled")),
        _ => None,
    };
    let cron = match schedule {
        ScheduleType::Recurring => {
            let c = body
                .recurrence_config
                .ok_or_else(|| invalid("recurrenceConfig: required when scheduleType is recurring"))?;
            sfp_engine::crons::parse(&c.cron).map_err(|e| invalid(format!("recurrenceConfig.cron: {e}")))?;
            Some(c.cron.trim().to_string())
        }
        _ if body.recurrence_config.is_some() => {
            return Err(invalid("recurrenceConfig: only for scheduleType recurring"));
        }
        _ => None,
    };
    let pool = task_type.pool();
    let timeout_seconds = match body.timeout_seconds {
        None => pool.default_timeout().as_secs(),
        Some(0) => return Err(invalid("timeoutSeconds: at least 1")),
        Some(t) if t > pool.max_timeout().as_secs() => {
            return Err(invalid(format!(
                "timeoutSeconds: at most {} for the {pool} pool",
                pool.max_timeout().as_secs()
            )));
        }
        Some(t) => t,
    };
    let retries = match body.retry_config {
        None => 0,
        Some(RetryConfig { max_retries: Some(_), attempts: Some(_) }) => {
            return Err(invalid("retryConfig: give maxRetries or attempts, not both"));
        }
        Some(RetryConfig { max_retries: Some(r), .. }) => r,
        Some(RetryConfig { attempts: Some(0), .. }) => return Err(invalid("retryConfig.attempts: at least 1")),
        Some(RetryConfig { attempts: Some(a), .. }) => a - 1,
        Some(_) => 0,
    };
    if retries > MAX_RETRIES {
        return Err(invalid(format!("retryConfig: at most {MAX_RETRIES} retries")));
    }
    Ok(Checked {
        task_type,
        data: serde_json::to_value(&data).unwrap_or(body.data),
        priority,
        schedule,
        scheduled_for,
        cron,
        timeout_seconds,
        retries,
    })
}

fn status_json(t: &TaskRow) -> Value {
    json!({
        "operationId": t.id,
        "type": t.task_type,
        "status": t.status,
        "progress": t.progress,
        "progressMessage": t.progress_message,
        "error": t.error,
        "priority": t.priority,
        "scheduleType": t.schedule_type,
        "scheduledFor": t.scheduled_for,
        "recurrenceConfig": t.cron.as_ref().map(|c| json!({"cron": c, "active": t.recurring})),
        "runId": t.run_id,
        "createdBy": t.created_by,
        "createdAt": t.created_at,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
        "updatedAt": t.updated_at,
        "dispatchError": t.dispatch_error,
    })
}

/// `POST /sfp/api/tasks`
#[utoipa::path(post, path = "/tasks", tag = "tasks", security(("bearer" = [])), request_body = Object, responses(
    (status = 201, description = "Accepted: `{operationId, type}`", body = Object),
    (status = 400, description = "Unknown type, or data that does not fit its schema (the message names the field)", body = ErrorBody),
))]
pub async fn submit(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<SubmitTask>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let c = check(body, &state)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let task: TaskRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO app.task (id, type, data, priority, schedule_type, scheduled_for, cron, timeout_seconds, retries, \
           status, recurring, created_by, created_by_token) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, auth.uid(), $11) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(c.task_type.as_str())
    .bind(&c.data)
    .bind(c.priority.as_str())
    .bind(c.schedule.as_str())
    .bind(c.scheduled_for)
    .bind(&c.cron)
    .bind(c.timeout_seconds as i32)
    .bind(c.retries as i32)
    .bind(c.schedule == ScheduleType::Recurring)
    .bind(caller.token_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        rls::write_error(e, || "task exists".into(), || "Forbidden - Requires role: owner, member, application".into())
    })?;
    tx.commit().await?;
    // The task is recorded: whatever the engine says now, it is not lost.
    if let Err(e) = state.tasks.dispatch(&task).await {
        tracing::warn!(task = %task.id, error = %e, "task recorded; dispatch will be retried");
    }
    Ok((StatusCode::CREATED, Json(json!({"operationId": task.id, "type": task.task_type}))))
}

async fn load(state: &AppState, caller: &crate::auth::Caller, id: &str) -> ApiResult<TaskRow> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("no task {id:?}")))?;
    let mut tx = begin_as(&state.pool, caller).await?;
    let task: Option<TaskRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM app.task WHERE id = $1")))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    task.ok_or_else(|| ApiError::not_found(format!("no task {id}")))
}

/// `GET /sfp/api/tasks/{id}/status`
#[utoipa::path(get, path = "/tasks/{id}/status", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The operationId")), responses(
    (status = 200, description = "`{status: pending|active|completed|failed|cancelled, progress, error, ...}`", body = Object),
    (status = 404, description = "No such task", body = ErrorBody),
))]
pub async fn status(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let task = load(&state, &caller, &id).await?;
    Ok(Json(status_json(&task)))
}

/// `GET /sfp/api/tasks/{id}/result`
#[utoipa::path(get, path = "/tasks/{id}/result", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The operationId")), responses(
    (status = 200, description = "The status body and `result` (the step's output; for a recurring task, its latest run's)", body = Object),
    (status = 404, description = "No such task", body = ErrorBody),
))]
pub async fn result(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let task = load(&state, &caller, &id).await?;
    let mut body = status_json(&task);
    body["result"] = task.result.clone().unwrap_or(Value::Null);
    Ok(Json(body))
}

/// `GET /sfp/api/tasks/{id}/logs`: the lines the step's sfp commands printed.
#[utoipa::path(get, path = "/tasks/{id}/logs", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The operationId")), responses(
    (status = 200, description = "`{lines: [{createdAt, level, message}]}`", body = Object),
    (status = 404, description = "No such task", body = ErrorBody),
    (status = 503, description = "The engine cannot be reached", body = ErrorBody),
))]
pub async fn logs(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let task = load(&state, &caller, &id).await?;
    let (Some(run), Some(link)) = (task.run_id, state.tasks.link.as_ref()) else {
        return Ok(Json(json!({"lines": []})));
    };
    let unavailable = |e: crate::tasks::LinkError| ApiError::unavailable(e.to_string());
    let step = link.details(run).await.map_err(unavailable)?.step_id.unwrap_or(run);
    let answer = link.logs(step, 1000).await.map_err(unavailable)?;
    let lines: Vec<Value> = answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| json!({"createdAt": r["createdAt"], "level": r["level"], "message": r["message"]}))
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({"lines": lines})))
}

/// `DELETE /sfp/api/tasks/{id}`: cancels a pending or active task (for a recurring task, its
/// current run).
#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The operationId")), responses(
    (status = 200, description = "`{message}`", body = Object),
    (status = 403, description = "Neither its creator nor an owner", body = ErrorBody),
    (status = 404, description = "No such task", body = ErrorBody),
    (status = 409, description = "The task has finished", body = ErrorBody),
))]
pub async fn cancel(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let task = load(&state, &caller, &id).await?;
    if is_final(&task.status) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "task_finished",
            format!("Completed tasks cannot be cancelled (the task is {})", task.status),
        ));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let done = sqlx::query(
        "UPDATE app.task SET status = 'cancelled', finished_at = now(), updated_at = now(), \
           error = jsonb_build_object('message', 'cancelled by ' || coalesce(auth.jwt() ->> 'email', 'its creator')) \
         WHERE id = $1 AND status IN ('pending', 'active')",
    )
    .bind(task.id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden - only the task's creator or an owner can cancel it",
        ));
    }
    tx.commit().await?;
    if let Some(link) = &state.tasks.link {
        if let Some(run) = task.run_id {
            link.cancel(run)
                .await
                .map_err(|e| ApiError::unavailable(format!("the task is cancelled here, but the engine: {e}")))?;
        } else if let (Some(schedule), ScheduleType::Scheduled) =
            (&task.engine_schedule, ScheduleType::parse(&task.schedule_type).unwrap_or(ScheduleType::Immediate))
        {
            link.delete_schedule(schedule).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        }
    }
    Ok(Json(json!({"message": "Task cancelled successfully", "operationId": task.id})))
}

/// `POST /sfp/api/tasks/{id}/stop-recurring`
#[utoipa::path(post, path = "/tasks/{id}/stop-recurring", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The operationId")), responses(
    (status = 200, description = "`{message}`: no further runs start", body = Object),
    (status = 400, description = "Not a recurring task", body = ErrorBody),
    (status = 404, description = "No such task", body = ErrorBody),
))]
pub async fn stop_recurring(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let task = load(&state, &caller, &id).await?;
    if task.schedule_type != "recurring" {
        return Err(ApiError::bad_request("only recurring tasks can be stopped from recurring"));
    }
    if let (Some(link), Some(cron)) = (&state.tasks.link, &task.engine_schedule) {
        link.delete_cron(cron).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let done = sqlx::query("UPDATE app.task SET recurring = false, updated_at = now() WHERE id = $1")
        .bind(task.id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden - only the task's creator or an owner can stop it",
        ));
    }
    tx.commit().await?;
    Ok(Json(json!({"message": "Recurring task stopped", "operationId": task.id})))
}

/// A run of a recurring task: run id, status, started, finished.
type Instance = (Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>);

/// `GET /sfp/api/tasks/{id}/recurring-instances`
#[utoipa::path(get, path = "/tasks/{id}/recurring-instances", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The operationId")), responses(
    (status = 200, description = "`{instances: [{runId, status, createdAt, finishedAt}]}`, newest first", body = Object),
    (status = 404, description = "No such task", body = ErrorBody),
))]
pub async fn recurring_instances(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let task = load(&state, &caller, &id).await?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows: Vec<Instance> = sqlx::query_as(
        "SELECT run_id, status, created_at, finished_at FROM app.task_instance WHERE task_id = $1 \
         ORDER BY created_at DESC LIMIT 200",
    )
    .bind(task.id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let instances: Vec<Value> = rows
        .iter()
        .map(|(run, status, created, finished)| json!({"runId": run, "status": status, "createdAt": created, "finishedAt": finished}))
        .collect();
    Ok(Json(json!({"operationId": task.id, "active": task.recurring, "instances": instances})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /sfp/api/tasks`: newest first, filtered by status and type.
#[utoipa::path(get, path = "/tasks", tag = "tasks", security(("bearer" = [])), responses(
    (status = 200, description = "`{tasks: [status bodies], nextCursor}`", body = Object),
    (status = 400, description = "A bad filter or cursor", body = ErrorBody),
))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit)?;
    if let Some(s) = &q.status
        && !["pending", "active", "completed", "failed", "cancelled"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status {s:?} is not pending, active, completed, failed or cancelled"
        )));
    }
    if let Some(t) = &q.task_type {
        t.parse::<TaskType>().map_err(ApiError::bad_request)?;
    }
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(Uuid::parse_str(c).map_err(|_| ApiError::bad_request("cursor is not one this API gave"))?),
    };
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows: Vec<TaskRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM app.task WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR type = $2) \
         AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    )))
    .bind(&q.status)
    .bind(&q.task_type)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<&TaskRow> = rows.iter().take(limit as usize).collect();
    let next = if more { page.last().map(|t| t.id.to_string()) } else { None };
    Ok(Json(json!({"tasks": page.iter().map(|t| status_json(t)).collect::<Vec<_>>(), "nextCursor": next})))
}
