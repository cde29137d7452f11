//! Cron and scheduled-run CRUD in Hatchet's REST shapes (`CronWorkflows`,
//! `ScheduledWorkflows`, lists with `rows` and `pagination`), as the Python SDK and the
//! `hatchet-sdk` crate call them.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{RestError, check_tenant};
use crate::engine::{Engine, parse_id};
use crate::schedules::{CronView, ScheduleView};

fn meta(id: uuid::Uuid, created: DateTime<Utc>, updated: DateTime<Utc>) -> Value {
    json!({"id": id, "createdAt": created, "updatedAt": updated})
}

fn cron_json(engine: &Engine, c: &CronView) -> Value {
    json!({
        "metadata": meta(c.id, c.created_at, c.updated_at),
        "tenantId": engine.tenant_id(),
        "workflowVersionId": c.workflow_version_id,
        "workflowId": c.workflow_id,
        "workflowName": c.workflow_name,
        "cron": c.expression,
        "name": c.name,
        "input": c.input,
        "additionalMetadata": c.additional_metadata,
        "enabled": c.enabled,
        "method": c.method,
        "priority": c.priority,
    })
}

fn schedule_json(engine: &Engine, s: &ScheduleView) -> Value {
    let status = s.run_status.as_deref().map(|st| match st {
        "COMPLETED" => "SUCCEEDED",
        other => other,
    });
    json!({
        "metadata": meta(s.id, s.created_at, s.updated_at),
        "tenantId": engine.tenant_id(),
        "workflowVersionId": s.workflow_version_id,
        "workflowId": s.workflow_id,
        "workflowName": s.workflow_name,
        "triggerAt": s.trigger_at,
        "input": s.input,
        "additionalMetadata": s.additional_metadata,
        "workflowRunCreatedAt": s.run_created_at,
        "workflowRunStatus": status,
        "workflowRunId": s.run_id,
        "method": s.method,
        "priority": s.priority,
    })
}

fn page(rows: Vec<Value>, total: i64, offset: i64, limit: i64) -> Value {
    json!({"rows": rows, "pagination": super::pagination(offset, limit, total)})
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewCron {
    #[serde(default)]
    input: Value,
    #[serde(default)]
    additional_metadata: Value,
    cron_name: String,
    cron_expression: String,
    priority: Option<i32>,
}

fn object_or_empty(v: Value) -> Value {
    if v.is_object() { v } else { json!({}) }
}

pub async fn create_cron(
    State(engine): State<Engine>,
    Path((tenant, workflow)): Path<(String, String)>,
    super::Body(body): super::Body<NewCron>,
) -> Result<Json<Value>, RestError> {
    check_tenant(&engine, &tenant)?;
    let cron = engine
        .create_cron(
            &workflow,
            &body.cron_name,
            &body.cron_expression,
            object_or_empty(body.input),
            object_or_empty(body.additional_metadata),
            body.priority,
        )
        .await?;
    Ok(Json(cron_json(&engine, &cron)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    offset: Option<i64>,
    limit: Option<i64>,
    workflow_id: Option<String>,
    cron_name: Option<String>,
}

/// Offset, page size and workflow filter of a list request.
fn paging(q: &ListQuery) -> Result<(i64, i64, Option<uuid::Uuid>), RestError> {
    let workflow = q.workflow_id.as_deref().map(|w| parse_id(w, "workflowId")).transpose()?;
    Ok((q.offset.unwrap_or(0).max(0), q.limit.unwrap_or(50).clamp(1, 1000), workflow))
}

pub async fn list_crons(
    State(engine): State<Engine>,
    Path(tenant): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, RestError> {
    check_tenant(&engine, &tenant)?;
    let (offset, limit, workflow) = paging(&q)?;
    let (rows, total) = engine.crons(workflow, q.cron_name.as_deref(), offset, limit).await?;
    Ok(Json(page(rows.iter().map(|c| cron_json(&engine, c)).collect(), total, offset, limit)))
}

pub async fn get_cron(
    State(engine): State<Engine>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    check_tenant(&engine, &tenant)?;
    let cron = engine.cron(parse_id(&id, "cron id")?).await?;
    Ok(Json(cron_json(&engine, &cron)))
}

pub async fn delete_cron(
    State(engine): State<Engine>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, RestError> {
    check_tenant(&engine, &tenant)?;
    engine.delete_cron(parse_id(&id, "cron id")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSchedule {
    #[serde(default)]
    input: Value,
    #[serde(default)]
    additional_metadata: Value,
    trigger_at: DateTime<Utc>,
    priority: Option<i32>,
}

pub async fn create_schedule(
    State(engine): State<Engine>,
    Path((tenant, workflow)): Path<(String, String)>,
    super::Body(body): super::Body<NewSchedule>,
) -> Result<Json<Value>, RestError> {
    check_tenant(&engine, &tenant)?;
    let s = engine
        .create_schedule(
            &workflow,
            body.trigger_at,
            object_or_empty(body.input),
            object_or_empty(body.additional_metadata),
            body.priority,
        )
        .await?;
    Ok(Json(schedule_json(&engine, &s)))
}

pub async fn list_schedules(
    State(engine): State<Engine>,
    Path(tenant): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, RestError> {
    check_tenant(&engine, &tenant)?;
    let (offset, limit, workflow) = paging(&q)?;
    let (rows, total) = engine.schedules(workflow, offset, limit).await?;
    Ok(Json(page(rows.iter().map(|s| schedule_json(&engine, s)).collect(), total, offset, limit)))
}

pub async fn get_schedule(
    State(engine): State<Engine>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    check_tenant(&engine, &tenant)?;
    let s = engine.schedule(parse_id(&id, "scheduled run id")?).await?;
    Ok(Json(schedule_json(&engine, &s)))
}

pub async fn delete_schedule(
    State(engine): State<Engine>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, RestError> {
    check_tenant(&engine, &tenant)?;
    engine.delete_schedule(parse_id(&id, "scheduled run id")?).await?;
    Ok(StatusCode::NO_CONTENT)
}
