//! `GET /sfp/api/ping` and `GET /sfp/api` (health).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::health::HealthReport;
use crate::state::AppState;

/// Liveness: answers as long as the API process serves requests.
pub async fn ping() -> Json<Value> {
    Json(json!({"status": "ok", "message": "pong", "time": chrono::Utc::now()}))
}

/// Health of every running component; 503 when any of them is not up.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    let report = state.health.report().await;
    let status = if report.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}
