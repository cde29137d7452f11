//! Operations views in Hatchet's REST shapes: the run list (`V1TaskSummaryList`), one task,
//! a run's status, task events (`V1TaskEventList`) and task logs (`V1LogLineList`).
//!
//! Query parameters follow Hatchet's OpenAPI client: lists are repeated keys
//! (`statuses=FAILED&statuses=CANCELLED`; commas are accepted too), times are RFC 3339 or
//! Python's `%Y-%m-%dT%H:%M:%S.%f%z`, additional metadata is `key:value`.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::runs::duration_ms;
use super::{RestError, check_tenant, pagination};
use crate::engine::{Engine, parse_id};
use crate::history::{EventRow, LogFilter, LogRow, Scope};
use crate::listing::{ListFilter, Summary};
use crate::model::RunStatus;

/// Query parameters in order, repeated keys kept.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Result<Params, RestError> {
        let pairs = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
            .map_err(|e| bad(format!("the query string is not valid: {e}")))?;
        Ok(Params(pairs))
    }

    fn one(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key || k.strip_suffix("[]") == Some(key))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, RestError> {
        let Some(v) = self.one(key) else { return Ok(None) };
        DateTime::parse_from_rfc3339(v)
            .or_else(|_| DateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f%z"))
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| bad(format!("{key} {v:?} is not a timestamp (RFC 3339)")))
    }

    fn int(&self, key: &str, default: i64) -> Result<i64, RestError> {
        match self.one(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| bad(format!("{key} {v:?} is not an integer"))),
        }
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, RestError> {
        match self.one(key).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(bad(format!("{key} {v:?} is not true or false"))),
        }
    }

    fn id(&self, key: &str) -> Result<Option<Uuid>, RestError> {
        self.one(key).map(|v| parse_id(v, key)).transpose().map_err(RestError::from)
    }
}

fn bad(message: String) -> RestError {
    RestError(StatusCode::BAD_REQUEST, message)
}

fn parse_status(v: &str) -> Result<RunStatus, RestError> {
    match v.to_ascii_uppercase().as_str() {
        "QUEUED" => Ok(RunStatus::Queued),
        "RUNNING" => Ok(RunStatus::Running),
        "COMPLETED" => Ok(RunStatus::Completed),
        "FAILED" => Ok(RunStatus::Failed),
        "CANCELLED" => Ok(RunStatus::Cancelled),
        _ => Err(bad(format!("status {v:?} is not one of QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED"))),
    }
}

/// `GET /api/v1/stable/tenants/{tenant}/workflow-runs`
pub async fn list_runs(
    State(engine): State<Engine>,
    Path(tenant): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, RestError> {
    check_tenant(&engine, &tenant)?;
    let q = Params::parse(raw)?;
    let mut metadata = serde_json::Map::new();
    for pair in q.all("additional_metadata") {
        let (k, v) =
            pair.split_once(':').ok_or_else(|| bad(format!("additional_metadata {pair:?} is not key:value")))?;
        metadata.insert(k.to_string(), Value::String(v.to_string()));
    }
    let filter = ListFilter {
        since: q.time("since")?,
        until: q.time("until")?,
        statuses: q.all("statuses").into_iter().map(parse_status).collect::<Result<_, _>>()?,
        workflow_ids: q
            .all("workflow_ids")
            .into_iter()
            .map(|v| parse_id(v, "workflow_ids"))
            .collect::<Result<_, _>>()?,
        worker_id: q.id("worker_id")?,
        parent_task_id: q.id("parent_task_external_id")?,
        metadata,
        only_tasks: q.flag("only_tasks", false)?,
        offset: q.int("offset", 0)?,
        limit: q.int("limit", 50)?,
    };
    let payloads = q.flag("include_payloads", true)?;
    let page = engine.list_runs(&filter).await?;
    let rows: Vec<Value> = page.rows.iter().map(|s| summary_json(&engine, s, payloads)).collect();
    Ok(Json(json!({
        "pagination": pagination(filter.offset, filter.limit, page.total),
        "rows": rows,
    })))
}

/// `GET /api/v1/stable/tasks/{task}`
pub async fn get_task(State(engine): State<Engine>, Path(task): Path<String>) -> Result<Json<Value>, RestError> {
    let id = parse_id(&task, "task id")?;
    let summary = engine.task_summary(id).await?;
    Ok(Json(summary_json(&engine, &summary, true)))
}

/// `GET /api/v1/stable/workflow-runs/{run}/status`: the status as a JSON string.
pub async fn run_status(State(engine): State<Engine>, Path(run): Path<String>) -> Result<Json<Value>, RestError> {
    let id = parse_id(&run, "workflow run id")?;
    let run = engine.run_view(id).await?;
    Ok(Json(json!(run.status.as_str())))
}

fn summary_json(engine: &Engine, s: &Summary, payloads: bool) -> Value {
    let updated = s.finished_at.or(s.started_at).unwrap_or(s.created_at);
    let (input, output) = if payloads {
        (s.input.clone(), s.output.clone().filter(Value::is_object).unwrap_or_else(|| json!({})))
    } else {
        (json!({}), json!({}))
    };
    json!({
        "metadata": {"id": s.id, "createdAt": s.created_at, "updatedAt": updated},
        "actionId": s.action,
        "retryCount": s.retry_count,
        "attempt": s.retry_count + 1,
        "additionalMetadata": s.additional_metadata,
        "createdAt": s.created_at,
        "displayName": s.display_name,
        "duration": duration_ms(s.started_at, s.finished_at),
        "errorMessage": s.error,
        "finishedAt": s.finished_at,
        "startedAt": s.started_at,
        "input": input,
        "output": output,
        "numSpawnedChildren": s.spawned_children,
        "status": s.status.as_str(),
        "stepId": s.step_id,
        "taskExternalId": s.task_id.unwrap_or(s.run_id),
        "taskId": (s.task_number % i64::from(i32::MAX)) as i32,
        "taskInsertedAt": s.created_at,
        "tenantId": engine.tenant_id(),
        "type": if s.task_count > 1 { "DAG" } else { "TASK" },
        "workflowId": s.workflow_id,
        "workflowName": s.workflow_name,
        "workflowRunExternalId": s.run_id,
        "workflowVersionId": s.workflow_version_id,
        "parentTaskExternalId": s.parent_task_id,
        "payloadsRestricted": !payloads,
    })
}

/// `GET /api/v1/stable/tasks/{task}/task-events`
pub async fn task_events(
    State(engine): State<Engine>,
    Path(task): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, RestError> {
    events(&engine, Scope::Task(parse_id(&task, "task id")?), Params::parse(raw)?).await
}

/// `GET /api/v1/stable/workflow-runs/{run}/task-events`
pub async fn run_task_events(
    State(engine): State<Engine>,
    Path(run): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, RestError> {
    events(&engine, Scope::Run(parse_id(&run, "workflow run id")?), Params::parse(raw)?).await
}

async fn events(engine: &Engine, scope: Scope, q: Params) -> Result<Json<Value>, RestError> {
    let (offset, limit) = (q.int("offset", 0)?, q.int("limit", 1000)?);
    let rows = engine.task_events(scope, offset, limit).await?;
    let total = rows.first().map_or(0, |r| r.total);
    let rows: Vec<Value> = rows.iter().map(event_json).collect();
    Ok(Json(json!({"pagination": pagination(offset, limit, total), "rows": rows})))
}

fn event_json(e: &EventRow) -> Value {
    let failed = matches!(e.event_type.as_str(), "FAILED" | "TIMED_OUT" | "SCHEDULING_TIMED_OUT");
    json!({
        "id": e.id,
        "taskId": e.task_id,
        "timestamp": e.created_at,
        "eventType": e.event_type,
        "message": e.message,
        "errorMessage": if failed { Some(&e.message) } else { None },
        "output": e.output,
        "workerId": e.worker_id,
        "taskDisplayName": e.display_name,
        "retryCount": e.retry_count,
        "attempt": e.retry_count + 1,
    })
}

/// `GET /api/v1/stable/tasks/{task}/logs`: oldest first unless `order_by_direction=DESC`.
pub async fn task_logs(
    State(engine): State<Engine>,
    Path(task): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, RestError> {
    let id = parse_id(&task, "task id")?;
    let q = Params::parse(raw)?;
    let levels = q
        .all("levels")
        .into_iter()
        .map(|l| match l.to_ascii_uppercase().as_str() {
            level @ ("DEBUG" | "INFO" | "WARN" | "ERROR") => Ok(level.to_string()),
            _ => Err(bad(format!("level {l:?} is not one of DEBUG, INFO, WARN, ERROR"))),
        })
        .collect::<Result<_, _>>()?;
    let newest_first = match q.one("order_by_direction").map(str::to_ascii_uppercase).as_deref() {
        None | Some("ASC") => false,
        Some("DESC") => true,
        Some(v) => return Err(bad(format!("order_by_direction {v:?} is not ASC or DESC"))),
    };
    let filter = LogFilter {
        since: q.time("since")?,
        until: q.time("until")?,
        search: q.one("search").map(str::to_string),
        levels,
        attempt: q
            .one("attempt")
            .map(|v| v.parse().map_err(|_| bad(format!("attempt {v:?} is not an integer"))))
            .transpose()?,
        newest_first,
        limit: q.int("limit", 1000)?,
    };
    let rows = engine.task_logs(id, &filter).await?;
    let rows: Vec<Value> = rows.iter().map(log_json).collect();
    Ok(Json(json!({"rows": rows})))
}

fn log_json(l: &LogRow) -> Value {
    json!({
        "createdAt": l.created_at,
        "message": l.message,
        "metadata": l.metadata,
        "taskExternalId": l.task_id,
        "taskDisplayName": l.display_name,
        "retryCount": l.retry_count,
        "attempt": l.retry_count + 1,
        "level": l.level,
    })
}
