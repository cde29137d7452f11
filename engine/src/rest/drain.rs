//! `GET|POST|DELETE /api/v1/engine/drain` (ours; Hatchet has no drain): read the drain
//! state, drain (stop assigning, wait up to `timeoutSeconds` for in-flight tasks), resume.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::RestError;
use crate::drain::DrainState;
use crate::engine::Engine;

/// The longest a drain request waits before answering with what is still in flight.
const MAX_WAIT_SECONDS: u64 = 3600;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainRequest {
    /// How long to wait for in-flight tasks; 0 answers at once.
    #[serde(default)]
    timeout_seconds: u64,
}

pub async fn drain(State(engine): State<Engine>, body: axum::body::Bytes) -> Result<Json<DrainState>, RestError> {
    // No body is a drain that answers at once.
    let request: DrainRequest =
        if body.iter().all(u8::is_ascii_whitespace) { DrainRequest::default() } else { super::parse_body(&body)? };
    if request.timeout_seconds > MAX_WAIT_SECONDS {
        return Err(RestError(StatusCode::BAD_REQUEST, format!("timeoutSeconds must be at most {MAX_WAIT_SECONDS}")));
    }
    Ok(Json(engine.drain(Duration::from_secs(request.timeout_seconds)).await?))
}

pub async fn state(State(engine): State<Engine>) -> Result<Json<DrainState>, RestError> {
    Ok(Json(engine.drain_state().await?))
}

pub async fn resume(State(engine): State<Engine>) -> Result<Json<DrainState>, RestError> {
    engine.resume();
    Ok(Json(engine.drain_state().await?))
}
