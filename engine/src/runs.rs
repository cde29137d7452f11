//! Runs: triggering (a run, its tasks and the first queue items in one transaction), their
//! details, and the results subscribers receive when a run finishes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::model::{MAX_PRIORITY, MIN_PRIORITY, RunStatus};

/// A request to start a workflow.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub workflow: String,
    pub input: Value,
    pub additional_metadata: Value,
    pub priority: Option<i32>,
    pub parent_task_id: Option<Uuid>,
    pub child_index: Option<i32>,
    pub child_key: Option<String>,
    pub triggered_by: &'static str,
    pub event_id: Option<Uuid>,
}

impl Trigger {
    pub fn new(workflow: impl Into<String>, input: Value) -> Self {
        Trigger {
            workflow: workflow.into(),
            input,
            additional_metadata: serde_json::json!({}),
            priority: None,
            parent_task_id: None,
            child_index: None,
            child_key: None,
            triggered_by: "manual",
            event_id: None,
        }
    }
}

/// One task of a run, as the run views show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskView {
    pub id: Uuid,
    pub task_number: i64,
    pub readable_id: String,
    pub action: String,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub retry_count: i32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub parents: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker_id: Option<Uuid>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub workflow_version_id: Uuid,
    pub workflow_name: String,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub input: Value,
    pub additional_metadata: Value,
    pub error: Option<String>,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub tasks: Vec<TaskView>,
}

impl Engine {
    pub async fn trigger(&self, trigger: Trigger) -> Result<Uuid, EngineError> {
        Ok(self.trigger_many(vec![trigger]).await?.remove(0))
    }

    /// Starts several runs in one transaction: all of them or none.
    pub async fn trigger_many(&self, triggers: Vec<Trigger>) -> Result<Vec<Uuid>, EngineError> {
        let mut tx = self.pool().begin().await?;
        let mut ids = Vec::with_capacity(triggers.len());
        for t in triggers {
            if let Some(p) = t.priority
                && !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p)
            {
                return Err(EngineError::InvalidArgument(format!(
                    "priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {p}"
                )));
            }
            let (workflow_id, version_id, default_priority) = self.latest_version(&t.workflow).await?;
            let priority = t.priority.unwrap_or(default_priority);
            let run_id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO engine.workflow_run (id, tenant_id, workflow_id, workflow_version_id, input, \
                   additional_metadata, priority, parent_task_id, child_index, child_key, triggered_by, event_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(run_id)
            .bind(self.tenant_id())
            .bind(workflow_id)
            .bind(version_id)
            .bind(&t.input)
            .bind(&t.additional_metadata)
            .bind(priority)
            .bind(t.parent_task_id)
            .bind(t.child_index)
            .bind(&t.child_key)
            .bind(t.triggered_by)
            .bind(t.event_id)
            .execute(&mut *tx)
            .await?;
            // Every task of the version; roots are queued at once, the rest wait for parents.
            sqlx::query(
                "WITH tasks AS ( \
                   INSERT INTO engine.task (id, tenant_id, run_id, step_id, readable_id, action, status, \
                                            pending_parents, priority, queued_at) \
                   SELECT gen_random_uuid(), $2, $1, s.id, s.readable_id, s.action, \
                          CASE WHEN cardinality(s.parents) = 0 THEN 'QUEUED' ELSE 'PENDING' END, \
                          cardinality(s.parents), $4, \
                          CASE WHEN cardinality(s.parents) = 0 THEN now() END \
                   FROM engine.step s WHERE s.workflow_version_id = $3 \
                   RETURNING id, action, status, step_id) \
                 INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
                 SELECT $2, t.id, 0, t.action, $4, now() + make_interval(secs => s.schedule_timeout_ms / 1000.0) \
                 FROM tasks t JOIN engine.step s ON s.id = t.step_id WHERE t.status = 'QUEUED'",
            )
            .bind(run_id)
            .bind(self.tenant_id())
            .bind(version_id)
            .bind(priority)
            .execute(&mut *tx)
            .await?;
            ids.push(run_id);
        }
        tx.commit().await?;
        self.wake_assigner();
        Ok(ids)
    }

    pub async fn run_view(&self, run_id: Uuid) -> Result<RunView, EngineError> {
        let run: Option<RunView> = sqlx::query_as(
            "SELECT r.id, r.workflow_id, r.workflow_version_id, w.name AS workflow_name, r.status, r.input, \
                    r.additional_metadata, r.error, r.priority, r.created_at, r.started_at, r.finished_at \
             FROM engine.workflow_run r JOIN engine.workflow w ON w.id = r.workflow_id \
             WHERE r.id = $1 AND r.tenant_id = $2",
        )
        .bind(run_id)
        .bind(self.tenant_id())
        .fetch_optional(self.pool())
        .await?;
        let mut run = run.ok_or_else(|| EngineError::NotFound(format!("workflow run {run_id} not found")))?;
        run.tasks = sqlx::query_as(
            "SELECT t.id, t.task_number, t.readable_id, t.action, t.status, t.retry_count, t.output, t.error, \
                    s.parents, t.created_at, t.started_at, t.finished_at, t.worker_id \
             FROM engine.task t JOIN engine.step s ON s.id = t.step_id \
             WHERE t.run_id = $1 ORDER BY t.task_number",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await?;
        Ok(run)
    }

    /// The runs among `ids` that have finished.
    pub(crate) async fn finished_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, EngineError> {
        let done = sqlx::query_scalar(
            "SELECT id FROM engine.workflow_run WHERE id = ANY($1) AND tenant_id = $2 AND finished_at IS NOT NULL",
        )
        .bind(ids)
        .bind(self.tenant_id())
        .fetch_all(self.pool())
        .await?;
        Ok(done)
    }
}
