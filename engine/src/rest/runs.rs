//! `GET /api/v1/stable/workflow-runs/{id}`. The Rust SDK parses this with `.expect()`, so
//! the shape is exact: UUIDs everywhere, `run.errorMessage` always a string, every task's
//! `input` an object with `parents` and `triggers.filter_payload`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::RestError;
use crate::engine::{Engine, parse_id};
use crate::runs::{RunView, TaskView};

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRequest {
    workflow_name: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    additional_metadata: Option<Value>,
    #[serde(default)]
    priority: Option<i32>,
}

/// `POST /api/v1/stable/tenants/{tenant}/workflow-runs/trigger` (the Python SDK's
/// `runs.create`): starts a run and answers with its details.
pub async fn trigger_run(
    State(engine): State<Engine>,
    Path(tenant): Path<String>,
    super::Body(body): super::Body<TriggerRequest>,
) -> Result<Json<Value>, RestError> {
    super::check_tenant(&engine, &tenant)?;
    let object = |v: Option<Value>, field: &str| match v {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(RestError(axum::http::StatusCode::BAD_REQUEST, format!("{field} must be a JSON object"))),
    };
    let mut trigger = crate::runs::Trigger::new(body.workflow_name, object(body.input, "input")?);
    trigger.additional_metadata = object(body.additional_metadata, "additionalMetadata")?;
    trigger.priority = body.priority;
    trigger.triggered_by = "api";
    let run_id = engine.trigger(trigger).await?;
    let run = engine.run_view(run_id).await?;
    Ok(Json(run_json(&engine, &run)))
}

pub async fn get_run(State(engine): State<Engine>, Path(run): Path<String>) -> Result<Json<Value>, RestError> {
    let run_id = parse_id(&run, "workflow run id")?;
    let run = engine.run_view(run_id).await?;
    Ok(Json(run_json(&engine, &run)))
}

/// `GET /api/v1/tenants/{tenant}/workflow-runs/{id}/shape`: Hatchet's older run view (one
/// job run holding a step run per task), which the TypeScript SDK reads when a finished
/// event carries no results. Step run outputs are JSON strings there.
pub async fn get_run_shape(
    State(engine): State<Engine>,
    Path((tenant, run)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    super::check_tenant(&engine, &tenant)?;
    let run_id = parse_id(&run, "workflow run id")?;
    let run = engine.run_view(run_id).await?;
    Ok(Json(shape_json(&engine, &run)))
}

fn shape_json(engine: &Engine, run: &RunView) -> Value {
    let tenant = engine.tenant_id();
    let meta = |id: uuid::Uuid, created: chrono::DateTime<chrono::Utc>, updated: chrono::DateTime<chrono::Utc>| json!({"id": id, "createdAt": created, "updatedAt": updated});
    let updated = run.finished_at.or(run.started_at).unwrap_or(run.created_at);
    let steps: Vec<Value> = run
        .tasks
        .iter()
        .map(|t| {
            let children: Vec<uuid::Uuid> =
                run.tasks.iter().filter(|c| c.parents.contains(&t.readable_id)).map(|c| c.step_id).collect();
            let parents: Vec<uuid::Uuid> =
                run.tasks.iter().filter(|p| t.parents.contains(&p.readable_id)).map(|p| p.step_id).collect();
            json!({
                "metadata": meta(t.step_id, run.created_at, run.created_at),
                "readableId": t.readable_id,
                "tenantId": tenant,
                "jobId": run.workflow_version_id,
                "action": t.action,
                "parents": parents,
                "children": children,
            })
        })
        .collect();
    let step_runs: Vec<Value> = run
        .tasks
        .iter()
        .map(|t| {
            json!({
                "metadata": meta(t.id, t.created_at, t.finished_at.or(t.started_at).unwrap_or(t.created_at)),
                "tenantId": tenant,
                "jobRunId": run.id,
                "stepId": t.step_id,
                "status": t.status.as_str(),
                "output": t.output.as_ref().map(Value::to_string),
                "error": t.error,
                "cancelledReason": if t.status == crate::model::RunStatus::Cancelled { t.error.clone() } else { None },
                "startedAt": t.started_at,
                "finishedAt": t.finished_at,
                "retryCount": t.retry_count,
            })
        })
        .collect();
    json!({
        "metadata": meta(run.id, run.created_at, updated),
        "tenantId": tenant,
        "workflowVersionId": run.workflow_version_id,
        "displayName": format!("{}-{}", run.workflow_name, &run.id.to_string()[..8]),
        "status": run.status.as_str(),
        "input": run.input,
        "additionalMetadata": run.additional_metadata,
        "error": run.error,
        "startedAt": run.started_at,
        "finishedAt": run.finished_at,
        "duration": duration_ms(run.started_at, run.finished_at),
        "workflowVersion": {
            "metadata": meta(run.workflow_version_id, run.created_at, run.created_at),
            "workflowId": run.workflow_id,
            "workflow": {"metadata": meta(run.workflow_id, run.created_at, run.created_at), "name": run.workflow_name},
        },
        "jobRuns": [{
            "metadata": meta(run.id, run.created_at, updated),
            "tenantId": tenant,
            "workflowRunId": run.id,
            "jobId": run.workflow_version_id,
            "status": run.status.as_str(),
            "startedAt": run.started_at,
            "finishedAt": run.finished_at,
            "job": {
                "metadata": meta(run.workflow_version_id, run.created_at, run.created_at),
                "tenantId": tenant,
                "versionId": run.workflow_version_id,
                "name": run.workflow_name,
                "steps": steps,
            },
            "stepRuns": step_runs,
        }],
    })
}

fn run_json(engine: &Engine, run: &RunView) -> Value {
    let tenant = engine.tenant_id();
    let updated = run.finished_at.or(run.started_at).unwrap_or(run.created_at);
    let output: serde_json::Map<String, Value> =
        run.tasks.iter().filter_map(|t| t.output.clone().map(|o| (t.readable_id.clone(), o))).collect();
    let tasks: Vec<Value> = run.tasks.iter().map(|t| task_json(run, t, tenant)).collect();
    json!({
        "run": {
            "metadata": {"id": run.id, "createdAt": run.created_at, "updatedAt": updated},
            "status": run.status.as_str(),
            "startedAt": run.started_at,
            "finishedAt": run.finished_at,
            "duration": duration_ms(run.started_at, run.finished_at),
            "tenantId": tenant,
            "additionalMetadata": run.additional_metadata,
            "displayName": format!("{}-{}", run.workflow_name, &run.id.to_string()[..8]),
            "workflowId": run.workflow_id,
            "workflowVersionId": run.workflow_version_id,
            "output": output,
            "errorMessage": run.error.clone().unwrap_or_default(),
            "input": run.input,
            "createdAt": run.created_at,
        },
        "taskEvents": [],
        "shape": [],
        "tasks": tasks,
    })
}

fn task_json(run: &RunView, t: &TaskView, tenant: uuid::Uuid) -> Value {
    let parents: serde_json::Map<String, Value> = run
        .tasks
        .iter()
        .filter(|p| t.parents.contains(&p.readable_id))
        .map(|p| (p.readable_id.clone(), p.output.clone().unwrap_or_else(|| json!({}))))
        .collect();
    let updated = t.finished_at.or(t.started_at).unwrap_or(t.created_at);
    json!({
        "metadata": {"id": t.id, "createdAt": t.created_at, "updatedAt": updated},
        "actionId": t.action,
        "retryCount": t.retry_count,
        "attempt": t.retry_count + 1,
        "additionalMetadata": run.additional_metadata,
        "createdAt": t.created_at,
        "displayName": t.readable_id,
        "duration": duration_ms(t.started_at, t.finished_at),
        "errorMessage": t.error.clone().unwrap_or_default(),
        "finishedAt": t.finished_at,
        "input": {"input": run.input, "parents": parents, "triggers": {"filter_payload": {}}},
        "numSpawnedChildren": 0,
        "output": t.output.clone().filter(Value::is_object).unwrap_or_else(|| json!({})),
        "status": t.status.as_str(),
        "startedAt": t.started_at,
        "taskExternalId": t.id,
        "taskId": (t.task_number % i64::from(i32::MAX)) as i32,
        "taskInsertedAt": t.created_at,
        "tenantId": tenant,
        "type": if run.tasks.len() > 1 { "DAG" } else { "TASK" },
        "workflowId": run.workflow_id,
        "workflowName": run.workflow_name,
        "workflowRunExternalId": run.id,
        "workflowVersionId": run.workflow_version_id,
    })
}

pub(super) fn duration_ms(
    start: Option<chrono::DateTime<chrono::Utc>>,
    end: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<i64> {
    Some((end? - start?).num_milliseconds())
}
