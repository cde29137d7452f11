//! Just-in-time credentials from the control plane: for a step that needs orgs, the worker
//! asks for the step's token (with its worker token), exchanges it once for access tokens,
//! and releases it when the step ends (the server then revokes those access tokens).

use std::time::Duration;

use sfp_workflows::credentials::{StepCredentials, StepToken, StepTokenRequest};
use uuid::Uuid;

/// The control plane a worker asks for credentials.
#[derive(Clone)]
pub struct ControlPlane {
    /// The server's base URL (`http://127.0.0.1:3478`).
    pub url: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Which step attempt asks.
#[derive(Debug, Clone)]
pub struct StepIdentity {
    pub task_id: Uuid,
    pub run_id: Uuid,
    pub step_run_id: Uuid,
    pub attempt: i32,
    /// The step's name in its workflow (a pipeline's step id).
    pub step: String,
}

/// A step token that was exchanged; release it when the step ends.
pub struct Lease {
    plane: ControlPlane,
    token: String,
}

fn problem(status: reqwest::StatusCode, body: &serde_json::Value) -> String {
    let code = body["code"].as_str().unwrap_or("error");
    let message = body["message"].as_str().unwrap_or("no message");
    format!("HTTP {}: {code}: {message}", status.as_u16())
}

impl ControlPlane {
    pub fn new(url: &str, worker_token: &str) -> ControlPlane {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("an HTTP client");
        ControlPlane { url: url.trim_end_matches('/').to_string(), token: worker_token.trim().to_string(), http }
    }

    async fn post(
        &self,
        path: &str,
        bearer: &str,
        body: Option<&StepTokenRequest>,
    ) -> Result<serde_json::Value, (reqwest::StatusCode, String)> {
        let mut request = self.http.post(format!("{}/sfp/api{path}", self.url)).bearer_auth(bearer);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response =
            request.send().await.map_err(|e| (reqwest::StatusCode::BAD_GATEWAY, e.without_url().to_string()))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status.is_success() { Ok(body) } else { Err((status, problem(status, &body))) }
    }

    /// The step's credentials, and the lease to release afterwards.
    pub async fn credentials(&self, step: &StepIdentity) -> Result<(Lease, StepCredentials), String> {
        let request = StepTokenRequest {
            task_id: step.task_id,
            run_id: step.run_id,
            step_run_id: step.step_run_id,
            attempt: step.attempt,
            step: Some(step.step.clone()),
        };
        let mut tries = 0;
        let issued = loop {
            match self.post("/workers/step-token", &self.token, Some(&request)).await {
                Ok(v) => break v,
                // The engine can report the step running a moment after it assigned it.
                Err((s, _)) if (s == reqwest::StatusCode::FORBIDDEN || s.is_server_error()) && tries < 4 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                }
                Err((_, m)) => return Err(format!("the control plane gave no step token: {m}")),
            }
        };
        let issued: StepToken =
            serde_json::from_value(issued).map_err(|_| "the control plane's step token is malformed".to_string())?;
        let lease = Lease { plane: self.clone(), token: issued.token };
        match self.post("/workers/step-token/exchange", &lease.token, None).await {
            Ok(v) => {
                let creds: StepCredentials = serde_json::from_value(v)
                    .map_err(|_| "the control plane's credentials are malformed".to_string())?;
                Ok((lease, creds))
            }
            Err((_, m)) => {
                lease.release().await;
                Err(format!("the step's credentials were refused: {m}"))
            }
        }
    }
}

impl Lease {
    /// Ends the step's credentials (the server revokes the access tokens it gave out).
    pub async fn release(self) {
        if let Err((_, m)) = self.plane.post("/workers/step-token/release", &self.token, None).await {
            tracing::warn!(error = %m, "the step token could not be released (the server releases it later)");
        }
    }
}
