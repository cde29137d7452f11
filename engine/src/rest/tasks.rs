//! `POST /api/v1/stable/tenants/{tenant}/tasks/cancel|replay`, with Hatchet's bodies
//! (`{"externalIds": [...], "filter": {"since": ..., ...}}`) and answers (`{"ids": [...]}`).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{RestError, check_tenant};
use crate::cancel::{Filter, Selection};
use crate::engine::{Engine, parse_id};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRequest {
    #[serde(default)]
    external_ids: Vec<String>,
    filter: Option<TaskFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFilter {
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    #[serde(default)]
    statuses: Vec<String>,
    #[serde(default)]
    workflow_ids: Vec<String>,
    #[serde(default)]
    additional_metadata: Vec<String>,
}

fn selection(engine: &Engine, tenant: &str, body: TaskRequest) -> Result<Selection, RestError> {
    check_tenant(engine, tenant)?;
    let ids = body.external_ids.iter().map(|id| parse_id(id, "externalIds")).collect::<Result<Vec<_>, _>>()?;
    let filter = match body.filter {
        None => None,
        Some(f) => Some(Filter {
            since: f.since,
            until: f.until,
            statuses: f.statuses,
            workflow_ids: f
                .workflow_ids
                .iter()
                .map(|id| parse_id(id, "filter.workflowIds"))
                .collect::<Result<Vec<_>, _>>()?,
            additional_metadata: f.additional_metadata,
        }),
    };
    Ok(Selection { ids, filter })
}

pub async fn cancel(
    State(engine): State<Engine>,
    Path(tenant): Path<String>,
    super::Body(body): super::Body<TaskRequest>,
) -> Result<Json<Value>, RestError> {
    let selection = selection(&engine, &tenant, body)?;
    let ids = engine.cancel_tasks(&selection).await?;
    Ok(Json(json!({"ids": ids})))
}

pub async fn replay(
    State(engine): State<Engine>,
    Path(tenant): Path<String>,
    super::Body(body): super::Body<TaskRequest>,
) -> Result<Json<Value>, RestError> {
    let selection = selection(&engine, &tenant, body)?;
    let ids = engine.replay_tasks(&selection).await?;
    Ok(Json(json!({"ids": ids})))
}
