//! `/sfp/api/pipelines`: release pipelines defined in YAML (schema: `workflows/src/pipeline.rs`),
//! stored per project with every version kept, registered with the engine as Hatchet
//! workflows, and run on the task workers step by step.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sfp_protocol::pb::v1::RunStatus;
use sfp_workflows::pipeline::{self, Definition, Pipeline};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use crate::auth::access::Authenticated;
use crate::auth::rls::{self, begin_as};
use crate::state::AppState;
use crate::tasks::Priority;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPipeline {
    /// The project (repository identifier) the pipeline belongs to; none for instance-wide.
    #[serde(default)]
    project: Option<String>,
    /// The definition as YAML text...
    #[serde(default)]
    yaml: Option<String>,
    /// ...or as a JSON object.
    #[serde(default)]
    definition: Option<Value>,
}

fn invalid(e: pipeline::PipelineError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_pipeline", e.to_string())
}

fn workflow_name(project: &str, name: &str) -> String {
    let slug: String =
        project.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if slug.is_empty() { format!("pipeline-{name}") } else { format!("pipeline-{slug}-{name}") }
}

fn check_project(project: &str) -> ApiResult<()> {
    if project.len() > 200 || project.chars().any(char::is_control) {
        return Err(ApiError::bad_request("project must be at most 200 characters"));
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    pub(crate) id: Uuid,
    pub(crate) project: String,
    pub(crate) name: String,
    pub(crate) version: i32,
    pub(crate) workflow_name: String,
    pub(crate) updated_at: DateTime<Utc>,
}

fn steps_json(p: &Definition) -> Value {
    Value::Array(p.steps.iter().map(|s| json!({"id": s.id, "type": s.step_type, "needs": s.needs})).collect())
}

/// `POST /sfp/api/pipelines`: defines a pipeline, or a new version of one.
#[utoipa::path(post, path = "/pipelines", tag = "pipelines", security(("bearer" = [])), request_body = Object, responses(
    (status = 201, description = "`{name, project, version, workflowName, steps}`", body = Object),
    (status = 400, description = "The definition is wrong: the message names the place (`steps[1].needs[0]: ...`)", body = ErrorBody),
    (status = 403, description = "Not an owner or application", body = ErrorBody),
    (status = 503, description = "The engine cannot take the workflow now", body = ErrorBody),
))]
pub async fn define(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewPipeline>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let project = body.project.unwrap_or_default();
    check_project(&project)?;
    let (definition, source) = match (body.yaml, body.definition) {
        (Some(text), None) => (pipeline::parse_yaml(&text).map_err(invalid)?, text),
        (None, Some(value)) => {
            (pipeline::from_value(&value).map_err(invalid)?, serde_json::to_string_pretty(&value).unwrap_or_default())
        }
        _ => return Err(ApiError::bad_request("give the definition as `yaml` (text) or `definition` (an object)")),
    };
    if source.len() > 256 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "a pipeline definition is at most 256 KiB",
        ));
    }
    let checked = definition.check(state.tasks.sources).map_err(invalid)?;
    let name = checked.definition.name.clone();
    let workflow = workflow_name(&project, &name);
    let mut tx = begin_as(&state.pool, &caller).await?;
    let existing: Option<(Uuid, i32)> =
        sqlx::query_as("SELECT id, version FROM app.pipeline WHERE project = $1 AND name = $2 FOR UPDATE")
            .bind(&project)
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await?;
    let refused = || "Forbidden - Requires role: owner, application".to_string();
    let (id, version) = match existing {
        Some((id, v)) => {
            sqlx::query("UPDATE app.pipeline SET version = $2, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(v + 1)
                .execute(&mut *tx)
                .await
                .map_err(|e| rls::write_error(e, || "conflict".into(), refused))?;
            (id, v + 1)
        }
        None => {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO app.pipeline (id, project, name, version, workflow_name, created_by) VALUES ($1, $2, $3, 1, $4, auth.uid())",
            )
            .bind(id)
            .bind(&project)
            .bind(&name)
            .bind(&workflow)
            .execute(&mut *tx)
            .await
            .map_err(|e| rls::write_error(e, || format!("pipeline {name:?} is being defined by another request"), refused))?;
            (id, 1)
        }
    };
    sqlx::query(
        "INSERT INTO app.pipeline_version (pipeline_id, version, source, definition, created_by) VALUES ($1, $2, $3, $4, auth.uid())",
    )
    .bind(id)
    .bind(version)
    .bind(&source)
    .bind(serde_json::to_value(&checked.definition).unwrap_or_default())
    .execute(&mut *tx)
    .await
    .map_err(|e| rls::write_error(e, || "conflict".into(), refused))?;
    // The engine has the workflow before the definition is committed: a stored version is
    // always runnable.
    let link = state.tasks.link.as_ref().ok_or_else(|| ApiError::unavailable("this server runs without an engine"))?;
    link.put_workflow(checked.workflow(&workflow, i64::from(version)))
        .await
        .map_err(|e| ApiError::unavailable(format!("the engine did not take the workflow: {e}")))?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": name, "project": project, "version": version, "workflowName": workflow,
            "steps": steps_json(&checked.definition),
        })),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Which {
    #[serde(default)]
    pub(crate) project: Option<String>,
    #[serde(default)]
    pub(crate) version: Option<i32>,
}

/// `GET /sfp/api/pipelines`
#[utoipa::path(get, path = "/pipelines", tag = "pipelines", security(("bearer" = [])), responses(
    (status = 200, description = "`{pipelines: [{name, project, version, workflowName, updatedAt}]}`", body = Object),
))]
pub async fn list(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, project, name, version, workflow_name, updated_at FROM app.pipeline ORDER BY project, name LIMIT 1000",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| json!({"name": r.name, "project": r.project, "version": r.version, "workflowName": r.workflow_name, "updatedAt": r.updated_at}))
        .collect();
    Ok(Json(json!({"pipelines": list})))
}

pub(crate) async fn load(
    tx: &mut sqlx::PgConnection,
    name: &str,
    which: &Which,
) -> ApiResult<(Row, i32, String, Value)> {
    let project = which.project.clone().unwrap_or_default();
    let row: Row = sqlx::query_as(
        "SELECT id, project, name, version, workflow_name, updated_at FROM app.pipeline WHERE project = $1 AND name = $2",
    )
    .bind(&project)
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no pipeline {name:?} in project {project:?}")))?;
    let version = which.version.unwrap_or(row.version);
    let (source, definition): (String, Value) =
        sqlx::query_as("SELECT source, definition FROM app.pipeline_version WHERE pipeline_id = $1 AND version = $2")
            .bind(row.id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("pipeline {name:?} has no version {version}")))?;
    Ok((row, version, source, definition))
}

/// `GET /sfp/api/pipelines/{name}`: the latest version (or `?version=`), with its source.
#[utoipa::path(get, path = "/pipelines/{name}", tag = "pipelines", security(("bearer" = [])),
    params(("name" = String, Path, description = "The pipeline"), ("project" = Option<String>, Query, description = "Its project"),
           ("version" = Option<i32>, Query, description = "A version; the latest when unset")), responses(
    (status = 200, description = "`{name, project, version, latestVersion, source, definition}`", body = Object),
    (status = 404, description = "No such pipeline or version", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    Query(which): Query<Which>,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let (row, version, source, definition) = load(&mut tx, &name, &which).await?;
    tx.commit().await?;
    Ok(Json(json!({
        "name": row.name, "project": row.project, "version": version, "latestVersion": row.version,
        "workflowName": row.workflow_name, "source": source, "definition": definition,
    })))
}

/// `POST /sfp/api/pipelines/{name}/runs`: runs the latest version (or `?version=`).
#[utoipa::path(post, path = "/pipelines/{name}/runs", tag = "pipelines", security(("bearer" = [])),
    params(("name" = String, Path, description = "The pipeline"), ("project" = Option<String>, Query, description = "Its project"),
           ("version" = Option<i32>, Query, description = "A version; the latest when unset")), responses(
    (status = 201, description = "`{runId, engineRunId, version}`", body = Object),
    (status = 404, description = "No such pipeline or version", body = ErrorBody),
    (status = 503, description = "The engine cannot be reached", body = ErrorBody),
))]
pub async fn run(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    Query(which): Query<Which>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let link = state.tasks.link.clone().ok_or_else(|| ApiError::unavailable("this server runs without an engine"))?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let (row, version, _, definition) = load(&mut tx, &name, &which).await?;
    let (run_id, engine_run) = start_run(&mut tx, &link, state.tasks.sources, &row, version, &definition, None).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"runId": run_id, "engineRunId": engine_run, "pipeline": name, "version": version})),
    ))
}

/// Starts a run of `version` of the pipeline `row` inside `tx` (committed by the caller):
/// the run's row, then the engine run. `created_by` unset: the caller's own user.
pub(crate) async fn start_run(
    tx: &mut sqlx::PgConnection,
    link: &crate::tasks::EngineLink,
    sources: sfp_workflows::SourcePolicy,
    row: &Row,
    version: i32,
    definition: &Value,
    created_by: Option<Uuid>,
) -> ApiResult<(Uuid, Uuid)> {
    let name = &row.name;
    let checked: Pipeline = pipeline::from_value(definition)
        .and_then(|d| d.check(sources))
        .map_err(|e| ApiError::internal(format!("stored pipeline {name} v{version} no longer checks: {e}")))?;
    let run_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO app.pipeline_run (id, pipeline_id, version, created_by) VALUES ($1, $2, $3, coalesce($4, auth.uid()))",
    )
    .bind(run_id)
    .bind(row.id)
    .bind(version)
    .bind(created_by)
    .execute(&mut *tx)
    .await?;
    let priority =
        checked.definition.priority.as_deref().and_then(Priority::parse).map_or(2, Priority::engine_priority);
    // The workflow name a version was registered under is versioned by the engine; a run of an
    // older version registers that version again first.
    if version != row.version {
        link.put_workflow(checked.workflow(&row.workflow_name, i64::from(version)))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    let engine_run = link
        .trigger_workflow(
            &row.workflow_name,
            &checked.run_input(run_id),
            json!({ crate::pipelines::RUN_METADATA_KEY: run_id.to_string() }),
            priority,
        )
        .await
        .map_err(|e| ApiError::unavailable(format!("the engine did not start the run: {e}")))?;
    sqlx::query("UPDATE app.pipeline_run SET run_id = $2 WHERE id = $1")
        .bind(run_id)
        .bind(engine_run)
        .execute(&mut *tx)
        .await?;
    Ok((run_id, engine_run))
}

fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Queued => "pending",
        RunStatus::Running => "active",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
        RunStatus::Evicted => "pending",
    }
}

/// An approval step of a run: step, status, message, comment, expiry.
type GateRow = (String, String, Option<String>, Option<String>, DateTime<Utc>);

/// A run's pipeline name, project, version, engine run and start.
type RunRow = (String, String, i32, Option<Uuid>, DateTime<Utc>);

/// `GET /sfp/api/pipelines/runs/{id}`: the run and each step's status, error and output.
#[utoipa::path(get, path = "/pipelines/runs/{id}", tag = "pipelines", security(("bearer" = [])),
    params(("id" = String, Path, description = "The runId")), responses(
    (status = 200, description = "`{runId, pipeline, version, status, steps: {id: {status, error, output}}}`", body = Object),
    (status = 404, description = "No such run", body = ErrorBody),
    (status = 503, description = "The engine cannot be reached", body = ErrorBody),
))]
pub async fn run_status(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found(format!("no pipeline run {id:?}")))?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let run: Option<RunRow> = sqlx::query_as(
        "SELECT p.name, p.project, r.version, r.run_id, r.created_at FROM app.pipeline_run r \
         JOIN app.pipeline p ON p.id = r.pipeline_id WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let (name, project, version, engine_run, created_at) =
        run.ok_or_else(|| ApiError::not_found(format!("no pipeline run {id}")))?;
    let link = state.tasks.link.as_ref().ok_or_else(|| ApiError::unavailable("this server runs without an engine"))?;
    let Some(engine_run) = engine_run else {
        return Err(ApiError::unavailable("the run was not started on the engine"));
    };
    let (status, steps) = link.run_steps(engine_run).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    let mut by_step = serde_json::Map::new();
    for (step, d) in steps {
        by_step.insert(step, json!({"status": status_name(d.status), "error": d.error, "output": d.output}));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let gates: Vec<GateRow> = sqlx::query_as(
        "SELECT step, CASE WHEN status = 'waiting' AND expires_at <= now() THEN 'expired' ELSE status END, \
           message, comment, expires_at FROM app.pipeline_approval WHERE pipeline_run = $1 ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for (step, status, message, comment, expires) in gates {
        if let Some(s) = by_step.get_mut(&step) {
            s["approval"] = json!({"status": status, "message": message, "comment": comment, "expiresAt": expires});
        }
    }
    Ok(Json(json!({
        "runId": id, "engineRunId": engine_run, "pipeline": name, "project": project, "version": version,
        "status": status_name(status), "createdAt": created_at, "steps": by_step,
    })))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    comment: Option<String>,
}

/// The optional `{comment}` body of a decision.
fn comment(body: &[u8]) -> ApiResult<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let d: Decision = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not {{\"comment\": ...}}: {e}")))?;
    Ok(d.comment)
}

async fn decide(
    state: &AppState,
    caller: &crate::auth::Caller,
    id: &str,
    comment: Option<String>,
    approve: bool,
) -> ApiResult<Json<Value>> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("no pipeline run {id:?}")))?;
    if comment.as_ref().is_some_and(|c| c.len() > 2000) {
        return Err(ApiError::bad_request("comment: at most 2000 characters"));
    }
    let mut tx = begin_as(&state.pool, caller).await?;
    let decided: Vec<(String, String)> = sqlx::query_as(
        "UPDATE app.pipeline_approval SET status = $2, comment = $3, decided_by = auth.uid(), decided_at = now() \
         WHERE pipeline_run = $1 AND status = 'waiting' AND expires_at > now() RETURNING step, status",
    )
    .bind(id)
    .bind(if approve { "approved" } else { "rejected" })
    .bind(&comment)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| rls::write_error(e, || "conflict".into(), || "Forbidden - Requires role: owner".into()))?;
    if decided.is_empty() {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM app.pipeline_run WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        return Err(match exists {
            None => ApiError::not_found(format!("no pipeline run {id}")),
            Some(_) => ApiError::new(StatusCode::CONFLICT, "nothing_to_decide", "no approval of this run is waiting"),
        });
    }
    tx.commit().await?;
    let steps: Vec<&str> = decided.iter().map(|(s, _)| s.as_str()).collect();
    Ok(Json(json!({"runId": id, "steps": steps, "decision": if approve { "approved" } else { "rejected" }})))
}

/// `POST /sfp/api/pipelines/runs/{id}/approve`: lets the run's waiting approval steps pass.
#[utoipa::path(post, path = "/pipelines/runs/{id}/approve", tag = "pipelines", security(("bearer" = [])), request_body = Object,
    params(("id" = String, Path, description = "The runId")), responses(
    (status = 200, description = "`{runId, steps, decision}`", body = Object),
    (status = 403, description = "Not an owner", body = ErrorBody),
    (status = 404, description = "No such run", body = ErrorBody),
    (status = 409, description = "No approval of this run is waiting", body = ErrorBody),
))]
pub async fn approve(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    decide(&state, &caller, &id, comment(&body)?, true).await
}

/// `POST /sfp/api/pipelines/runs/{id}/reject`: fails the run at its waiting approval steps.
#[utoipa::path(post, path = "/pipelines/runs/{id}/reject", tag = "pipelines", security(("bearer" = [])), request_body = Object,
    params(("id" = String, Path, description = "The runId")), responses(
    (status = 200, description = "`{runId, steps, decision}`", body = Object),
    (status = 403, description = "Not an owner", body = ErrorBody),
    (status = 404, description = "No such run", body = ErrorBody),
    (status = 409, description = "No approval of this run is waiting", body = ErrorBody),
))]
pub async fn reject(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    decide(&state, &caller, &id, comment(&body)?, false).await
}

/// `POST /sfp/api/pipelines/runs/{id}/replay`: runs a failed or cancelled run again from the
/// steps that did not complete; completed steps keep their outputs and do not run again.
#[utoipa::path(post, path = "/pipelines/runs/{id}/replay", tag = "pipelines", security(("bearer" = [])),
    params(("id" = String, Path, description = "The runId")), responses(
    (status = 200, description = "`{runId, replayedSteps}`", body = Object),
    (status = 404, description = "No such run", body = ErrorBody),
    (status = 409, description = "The run is still going or has completed", body = ErrorBody),
    (status = 503, description = "The engine cannot be reached", body = ErrorBody),
))]
pub async fn replay(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found(format!("no pipeline run {id:?}")))?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let engine_run: Option<Option<Uuid>> = sqlx::query_scalar("SELECT run_id FROM app.pipeline_run WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    let engine_run = engine_run.ok_or_else(|| ApiError::not_found(format!("no pipeline run {id}")))?;
    let engine_run = engine_run.ok_or_else(|| ApiError::unavailable("the run was not started on the engine"))?;
    let link = state.tasks.link.as_ref().ok_or_else(|| ApiError::unavailable("this server runs without an engine"))?;
    let (status, _) = link.run_steps(engine_run).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !matches!(status, RunStatus::Failed | RunStatus::Cancelled) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_replayable",
            format!("only failed or cancelled runs replay; this one is {}", status_name(status)),
        ));
    }
    let replayed = link.replay(engine_run).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({"runId": id, "replayedSteps": replayed})))
}
