//! `GET|PATCH /api/v1/workers/{id}` in the shape of Hatchet's `Worker` model (the Python SDK
//! validates the PATCH answer when it pauses a worker on shutdown).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::RestError;
use crate::engine::{Engine, EngineError, parse_id};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerUpdate {
    is_paused: Option<bool>,
}

pub async fn get_worker(State(engine): State<Engine>, Path(worker): Path<String>) -> Result<Json<Value>, RestError> {
    let id = parse_id(&worker, "worker id")?;
    Ok(Json(worker_json(&engine, id).await?))
}

pub async fn update_worker(
    State(engine): State<Engine>,
    Path(worker): Path<String>,
    Json(update): Json<WorkerUpdate>,
) -> Result<Json<Value>, RestError> {
    let id = parse_id(&worker, "worker id")?;
    if let Some(paused) = update.is_paused {
        engine.set_paused(id, paused).await?;
    }
    Ok(Json(worker_json(&engine, id).await?))
}

type WorkerRow =
    (String, Vec<String>, i32, bool, bool, DateTime<Utc>, Option<DateTime<Utc>>, DateTime<Utc>, Option<Value>, i64);

async fn worker_json(engine: &Engine, id: Uuid) -> Result<Value, EngineError> {
    let row: Option<WorkerRow> = sqlx::query_as(
        "SELECT w.name, w.actions, w.slots, w.is_paused, w.is_active, w.last_heartbeat_at, w.last_listener_at, \
                w.created_at, w.runtime_info, \
                (SELECT coalesce(sum(slot_units), 0) FROM engine.task_runtime rt WHERE rt.worker_id = w.id)::bigint \
         FROM engine.worker w WHERE w.id = $1 AND w.tenant_id = $2",
    )
    .bind(id)
    .bind(engine.tenant_id())
    .fetch_optional(engine.pool())
    .await?;
    let Some((name, actions, slots, paused, active, heartbeat, listener, created, runtime, used)) = row else {
        return Err(EngineError::NotFound(format!("worker {id} not found")));
    };
    let status = if paused {
        "PAUSED"
    } else if active {
        "ACTIVE"
    } else {
        "INACTIVE"
    };
    let runtime_info = runtime.map(|r| {
        json!({
            "sdkVersion": r["sdk_version"],
            "languageVersion": r["language_version"],
            "os": r["os"],
        })
    });
    Ok(json!({
        "metadata": {"id": id, "createdAt": created, "updatedAt": heartbeat},
        "name": name,
        "type": "SELFHOSTED",
        "lastHeartbeatAt": heartbeat,
        "lastListenerEstablished": listener,
        "actions": actions,
        "status": status,
        "maxRuns": slots,
        "availableRuns": slots - used as i32,
        "runtimeInfo": runtime_info,
    }))
}
