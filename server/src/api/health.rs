//! `GET /sfp/api/ping` and `GET /sfp/api` (health).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::health::HealthReport;
use crate::state::AppState;

/// Liveness: answers as long as the API process serves requests.
#[utoipa::path(get, path = "/ping", tag = "health", responses((status = 200, description = "pong", body = Object)))]
pub async fn ping() -> Json<Value> {
    Json(json!({"status": "ok", "message": "pong", "time": chrono::Utc::now()}))
}

/// Health of every running component; 503 when any of them is not up.
#[utoipa::path(get, path = "/", tag = "health", responses(
    (status = 200, description = "Every component is up", body = Object),
    (status = 503, description = "A component is down", body = Object),
))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    let report = state.health.report().await;
    let status = if report.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}
