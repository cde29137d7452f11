//! The wire types of just-in-time credentials between the server and its workers:
//! a worker running a step asks for a step token (with its worker token), exchanges it once
//! for the credentials the step's task declares, and releases it when the step ends.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /sfp/api/workers/step-token`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTokenRequest {
    pub task_id: Uuid,
    /// The engine's workflow run.
    pub run_id: Uuid,
    /// The engine's task run (the step) the worker was assigned.
    pub step_run_id: Uuid,
    /// The engine's retry count of the assignment.
    pub attempt: i32,
    /// The step's name in its workflow (a pipeline's step id; a task's single step).
    #[serde(default)]
    pub step: Option<String>,
}

/// An org the step will be logged in to, as the step token promises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedLogin {
    pub alias: String,
    pub username: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepToken {
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub credentials: Vec<PlannedLogin>,
}

impl std::fmt::Debug for StepToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepToken")
            .field("expires_at", &self.expires_at)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// A live session of an org for the sfp CLI: an access token, never the refresh token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgCredential {
    pub alias: String,
    pub username: String,
    pub org_id: String,
    pub instance_url: String,
    pub login_url: String,
    pub access_token: String,
}

impl std::fmt::Debug for OrgCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgCredential")
            .field("alias", &self.alias)
            .field("username", &self.username)
            .field("instance_url", &self.instance_url)
            .finish_non_exhaustive()
    }
}

/// `POST /sfp/api/workers/step-token/exchange`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCredentials {
    pub orgs: Vec<OrgCredential>,
}
