//! `GET|PATCH /api/v1/workers/{id}` and `GET /api/v1/tenants/{tenant}/worker` in the shape of
//! Hatchet's `Worker` model (the Python SDK validates the PATCH answer when it pauses a worker
//! on shutdown): slots in use and free, last heartbeat, status.

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
    super::Body(update): super::Body<WorkerUpdate>,
) -> Result<Json<Value>, RestError> {
    let id = parse_id(&worker, "worker id")?;
    if let Some(paused) = update.is_paused {
        engine.set_paused(id, paused).await?;
    }
    Ok(Json(worker_json(&engine, id).await?))
}

#[derive(Deserialize)]
pub struct ListQuery {
    /// Only workers with a live stream (or paused), as Hatchet lists them by default.
    #[serde(default)]
    all: bool,
}

pub async fn list_workers(
    State(engine): State<Engine>,
    Path(tenant): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Result<Json<Value>, RestError> {
    super::check_tenant(&engine, &tenant)?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM engine.worker WHERE tenant_id = $1 AND ($2 OR is_active OR is_paused) ORDER BY created_at DESC LIMIT 1000",
    )
    .bind(engine.tenant_id())
    .bind(q.all)
    .fetch_all(engine.pool())
    .await
    .map_err(EngineError::from)?;
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        rows.push(worker_json(&engine, id).await?);
    }
    let count = rows.len();
    Ok(Json(
        json!({"rows": rows, "pagination": {"current_page": 1, "num_pages": 1, "next_page": null, "count": count}}),
    ))
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
