//! The control plane's line to the engine, through the Hatchet protocol only (gRPC and the
//! REST paths Hatchet also has), so that a real Hatchet cluster can stand in for ours.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sfp_protocol::client::HatchetClient;
use sfp_protocol::pb;
use sfp_workflows::TaskType;
use sfp_workflows::step::TASK_METADATA_KEY;
use uuid::Uuid;

/// Every run the control plane starts carries this, so its runs can be listed apart.
pub const SOURCE_KEY: &str = "sfpSource";
pub const SOURCE_VALUE: &str = "sfp-server";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the engine refused: {0}")]
    Refused(String),
    #[error("the engine cannot be reached: {0}")]
    Unreachable(String),
    #[error("the engine answered something unexpected: {0}")]
    Unexpected(String),
}

impl From<tonic::Status> for LinkError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal | Code::Aborted => {
                LinkError::Unreachable(s.message().to_string())
            }
            _ => LinkError::Refused(s.message().to_string()),
        }
    }
}

impl From<reqwest::Error> for LinkError {
    fn from(e: reqwest::Error) -> Self {
        LinkError::Unreachable(e.without_url().to_string())
    }
}

/// A run as the engine's run list shows it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: Uuid,
    pub task_id: Option<Uuid>,
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
}

/// What became of a finished (or running) run.
#[derive(Debug, Clone)]
pub struct RunDetails {
    pub status: pb::v1::RunStatus,
    pub done: bool,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// The step's own id (logs are kept by step).
    pub step_id: Option<Uuid>,
}

#[derive(Clone, Debug)]
pub struct EngineLink {
    client: HatchetClient,
    http: reqwest::Client,
}

fn metadata(task_id: Uuid) -> Value {
    json!({ TASK_METADATA_KEY: task_id.to_string(), SOURCE_KEY: SOURCE_VALUE })
}

impl EngineLink {
    pub fn new(client: HatchetClient) -> Self {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap_or_default();
        Self { client, http }
    }

    pub fn client(&self) -> &HatchetClient {
        &self.client
    }

    /// Registers every task workflow (PutWorkflow is idempotent for an unchanged definition).
    pub async fn register_workflows(&self) -> Result<(), LinkError> {
        let mut admin = self.client.admin();
        for workflow in sfp_workflows::definitions::all() {
            admin.put_workflow(workflow).await?;
        }
        Ok(())
    }

    pub async fn trigger(&self, t: TaskType, task_id: Uuid, input: &Value, priority: i32) -> Result<Uuid, LinkError> {
        let request = pb::v1::TriggerWorkflowRequest {
            name: t.workflow_name(),
            input: input.to_string(),
            additional_metadata: Some(metadata(task_id).to_string()),
            priority: Some(priority),
            ..Default::default()
        };
        let response = self.client.workflows().trigger_workflow(request).await?;
        Uuid::parse_str(&response.get_ref().workflow_run_id).map_err(|e| LinkError::Unexpected(e.to_string()))
    }

    /// Registers (or updates) one workflow, e.g. a pipeline's.
    pub async fn put_workflow(&self, workflow: pb::v1::CreateWorkflowVersionRequest) -> Result<(), LinkError> {
        self.client.admin().put_workflow(workflow).await?;
        Ok(())
    }

    /// Starts a run of a named workflow with the control plane's metadata.
    pub async fn trigger_workflow(
        &self,
        name: &str,
        input: &Value,
        metadata: Value,
        priority: i32,
    ) -> Result<Uuid, LinkError> {
        let mut meta = metadata;
        meta[SOURCE_KEY] = Value::String(SOURCE_VALUE.into());
        let request = pb::v1::TriggerWorkflowRequest {
            name: name.to_string(),
            input: input.to_string(),
            additional_metadata: Some(meta.to_string()),
            priority: Some(priority),
            ..Default::default()
        };
        let response = self.client.workflows().trigger_workflow(request).await?;
        Uuid::parse_str(&response.get_ref().workflow_run_id).map_err(|e| LinkError::Unexpected(e.to_string()))
    }

    /// A run's status and each of its steps', by step id.
    pub async fn run_steps(&self, run_id: Uuid) -> Result<(pb::v1::RunStatus, Vec<(String, RunDetails)>), LinkError> {
        let response = self
            .client
            .admin()
            .get_run_details(pb::v1::GetRunDetailsRequest { external_id: run_id.to_string() })
            .await?;
        let r = response.into_inner();
        let mut steps: Vec<(String, RunDetails)> = r
            .task_runs
            .iter()
            .map(|(id, t)| {
                let status = pb::v1::RunStatus::try_from(t.status).unwrap_or(pb::v1::RunStatus::Queued);
                let details = RunDetails {
                    status,
                    done: matches!(
                        status,
                        pb::v1::RunStatus::Completed | pb::v1::RunStatus::Failed | pb::v1::RunStatus::Cancelled
                    ),
                    output: t.output.as_ref().and_then(|o| serde_json::from_slice(o).ok()),
                    error: t.error.clone().filter(|e| !e.is_empty()),
                    step_id: Uuid::parse_str(&t.external_id).ok(),
                };
                (id.clone(), details)
            })
            .collect();
        steps.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((pb::v1::RunStatus::try_from(r.status).unwrap_or(pb::v1::RunStatus::Queued), steps))
    }

    pub async fn schedule(
        &self,
        t: TaskType,
        task_id: Uuid,
        input: &Value,
        priority: i32,
        at: DateTime<Utc>,
    ) -> Result<String, LinkError> {
        let request = pb::ScheduleWorkflowRequest {
            name: t.workflow_name(),
            schedules: vec![prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: at.timestamp_subsec_nanos() as i32,
            }],
            input: input.to_string(),
            additional_metadata: Some(metadata(task_id).to_string()),
            priority: Some(priority),
            ..Default::default()
        };
        let response = self.client.workflows().schedule_workflow(request).await?;
        response
            .get_ref()
            .scheduled_workflows
            .first()
            .map(|s| s.id.clone())
            .ok_or_else(|| LinkError::Unexpected("no scheduled run in the answer".into()))
    }

    fn rest(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.client.server_url())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, LinkError> {
        let response = request.header("authorization", self.client.authorization()).send().await?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_server_error() {
            return Err(LinkError::Unreachable(format!("{status}: {body}")));
        }
        if !status.is_success() {
            return Err(LinkError::Refused(format!("{status}: {body}")));
        }
        if body.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(&body).map_err(|e| LinkError::Unexpected(e.to_string()))
        }
    }

    pub async fn create_cron(
        &self,
        t: TaskType,
        task_id: Uuid,
        input: &Value,
        priority: i32,
        expression: &str,
    ) -> Result<String, LinkError> {
        let tenant = self.client.tenant_id();
        let url = self.rest(&format!("/tenants/{tenant}/workflows/{}/crons", t.workflow_name()));
        let body = json!({
            "cronName": format!("task-{task_id}"),
            "cronExpression": expression,
            "input": input,
            "additionalMetadata": metadata(task_id),
            "priority": priority,
        });
        let answer = self.send(self.http.post(url).json(&body)).await?;
        answer["metadata"]["id"].as_str().map(String::from).ok_or_else(|| LinkError::Unexpected("no cron id".into()))
    }

    pub async fn delete_cron(&self, id: &str) -> Result<(), LinkError> {
        let tenant = self.client.tenant_id();
        match self.send(self.http.delete(self.rest(&format!("/tenants/{tenant}/workflows/crons/{id}")))).await {
            Err(LinkError::Refused(m)) if m.starts_with("404") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub async fn delete_schedule(&self, id: &str) -> Result<(), LinkError> {
        let tenant = self.client.tenant_id();
        match self.send(self.http.delete(self.rest(&format!("/tenants/{tenant}/workflows/scheduled/{id}")))).await {
            Err(LinkError::Refused(m)) if m.starts_with("404") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub async fn cancel(&self, run_id: Uuid) -> Result<(), LinkError> {
        let request = pb::v1::CancelTasksRequest { external_ids: vec![run_id.to_string()], filter: None };
        self.client.admin().cancel_tasks(request).await?;
        Ok(())
    }

    /// Replays a run from its failed or cancelled steps; completed steps keep their outputs.
    pub async fn replay(&self, run_id: Uuid) -> Result<usize, LinkError> {
        let request = pb::v1::ReplayTasksRequest { external_ids: vec![run_id.to_string()], filter: None };
        Ok(self.client.admin().replay_tasks(request).await?.into_inner().replayed_tasks.len())
    }

    pub async fn details(&self, run_id: Uuid) -> Result<RunDetails, LinkError> {
        let response = self
            .client
            .admin()
            .get_run_details(pb::v1::GetRunDetailsRequest { external_id: run_id.to_string() })
            .await?;
        let r = response.into_inner();
        let step = r.task_runs.values().next();
        let output = step.and_then(|s| s.output.as_ref()).and_then(|o| serde_json::from_slice(o).ok());
        let error = step.and_then(|s| s.error.clone()).filter(|e| !e.is_empty());
        Ok(RunDetails {
            status: pb::v1::RunStatus::try_from(r.status).unwrap_or(pb::v1::RunStatus::Queued),
            done: r.done,
            output,
            error,
            step_id: step.and_then(|s| Uuid::parse_str(&s.external_id).ok()),
        })
    }

    /// Whether `step_id` is a running step of the run `run_id`, which the control plane
    /// started for `owner` (a task or a pipeline run, as the run's metadata says).
    pub async fn step_is_running(&self, run_id: Uuid, step_id: Uuid, owner: Uuid) -> Result<bool, LinkError> {
        let response = match self
            .client
            .admin()
            .get_run_details(pb::v1::GetRunDetailsRequest { external_id: run_id.to_string() })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::InvalidArgument => {
                return Ok(false);
            }
            Err(s) => return Err(s.into()),
        };
        let meta: Value = serde_json::from_slice(&response.additional_metadata).unwrap_or(Value::Null);
        let owner = owner.to_string();
        let named = [TASK_METADATA_KEY, crate::pipelines::RUN_METADATA_KEY]
            .iter()
            .any(|k| meta[*k].as_str() == Some(owner.as_str()));
        if !named {
            return Ok(false);
        }
        Ok(response.task_runs.values().any(|t| {
            t.external_id == step_id.to_string()
                && pb::v1::RunStatus::try_from(t.status) == Ok(pb::v1::RunStatus::Running)
        }))
    }

    /// Runs the control plane started since `since`, a page at a time, optionally of one task.
    pub async fn runs_since(
        &self,
        since: DateTime<Utc>,
        task: Option<Uuid>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<RunRow>, i64), LinkError> {
        let tenant = self.client.tenant_id();
        let mut query: Vec<(&str, String)> = vec![
            ("since", since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            ("only_tasks", "false".into()),
            ("include_payloads", "false".into()),
            ("offset", offset.to_string()),
            ("limit", limit.to_string()),
            ("additional_metadata", format!("{SOURCE_KEY}:{SOURCE_VALUE}")),
        ];
        if let Some(t) = task {
            query.push(("additional_metadata", format!("{TASK_METADATA_KEY}:{t}")));
        }
        let url = self.rest(&format!("/stable/tenants/{tenant}/workflow-runs"));
        let url = reqwest::Url::parse_with_params(&url, &query).map_err(|e| LinkError::Unexpected(e.to_string()))?;
        let answer = self.send(self.http.get(url)).await?;
        let rows = answer["rows"].as_array().cloned().unwrap_or_default();
        let runs = rows
            .iter()
            .filter_map(|r| {
                let run_id = r["workflowRunExternalId"].as_str().or(r["metadata"]["id"].as_str())?;
                Some(RunRow {
                    run_id: Uuid::parse_str(run_id).ok()?,
                    task_id: r["additionalMetadata"][TASK_METADATA_KEY].as_str().and_then(|t| Uuid::parse_str(t).ok()),
                    status: r["status"].as_str().unwrap_or("QUEUED").to_string(),
                    created_at: r["createdAt"].as_str().and_then(|c| c.parse().ok()),
                })
            })
            .collect();
        let pages = answer["pagination"]["num_pages"].as_i64().unwrap_or(1);
        Ok((runs, pages))
    }

    /// A task's step logs, from the engine's task log REST.
    pub async fn logs(&self, step_id: Uuid, limit: i64) -> Result<Value, LinkError> {
        let url = self.rest(&format!("/stable/tasks/{step_id}/logs"));
        let query = [("limit", limit.to_string()), ("order_by_direction", "ASC".to_string())];
        let url = reqwest::Url::parse_with_params(&url, &query).map_err(|e| LinkError::Unexpected(e.to_string()))?;
        self.send(self.http.get(url)).await
    }
}
