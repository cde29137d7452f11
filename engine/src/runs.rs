//! Runs: triggering (a run, its tasks and the first queue items in one transaction), their
//! details, and the results subscribers receive when a run finishes.

use std::collections::HashMap;

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
    pub step_id: Uuid,
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

/// The columns of the runs one trigger call inserts.
struct RunRows {
    ids: Vec<Uuid>,
    workflows: Vec<Uuid>,
    versions: Vec<Uuid>,
    inputs: Vec<String>,
    metadata: Vec<String>,
    priorities: Vec<i32>,
    parent_tasks: Vec<Option<Uuid>>,
    child_indexes: Vec<Option<i32>>,
    child_keys: Vec<Option<String>>,
    triggered_by: Vec<String>,
    event_ids: Vec<Option<Uuid>>,
}

impl RunRows {
    fn with_capacity(n: usize) -> Self {
        RunRows {
            ids: Vec::with_capacity(n),
            workflows: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            inputs: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            parent_tasks: Vec::with_capacity(n),
            child_indexes: Vec::with_capacity(n),
            child_keys: Vec::with_capacity(n),
            triggered_by: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
        }
    }
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

    /// Starts several runs in one transaction: all of them or none. Set-based: a bulk of
    /// any size is three statements (runs, tasks, first queue items) and one commit.
    pub async fn trigger_many(&self, triggers: Vec<Trigger>) -> Result<Vec<Uuid>, EngineError> {
        let mut versions: HashMap<String, (Uuid, Uuid, i32)> = HashMap::new();
        for t in &triggers {
            if let Some(p) = t.priority
                && !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p)
            {
                return Err(EngineError::InvalidArgument(format!(
                    "priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {p}"
                )));
            }
            if !versions.contains_key(&t.workflow) {
                let version = self.latest_version(&t.workflow).await?;
                versions.insert(t.workflow.clone(), version);
            }
        }
        let n = triggers.len();
        let mut rows = RunRows::with_capacity(n);
        for t in triggers {
            let (workflow_id, version_id, default_priority) = versions[&t.workflow];
            rows.ids.push(Uuid::now_v7());
            rows.workflows.push(workflow_id);
            rows.versions.push(version_id);
            rows.inputs.push(t.input.to_string());
            rows.metadata.push(t.additional_metadata.to_string());
            rows.priorities.push(t.priority.unwrap_or(default_priority));
            rows.parent_tasks.push(t.parent_task_id);
            rows.child_indexes.push(t.child_index);
            rows.child_keys.push(t.child_key);
            rows.triggered_by.push(t.triggered_by.to_owned());
            rows.event_ids.push(t.event_id);
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO engine.workflow_run (id, tenant_id, workflow_id, workflow_version_id, input, \
               additional_metadata, priority, parent_task_id, child_index, child_key, triggered_by, event_id) \
             SELECT x.id, $1, x.w, x.v, x.i::jsonb, x.m::jsonb, x.p, x.pt, x.ci, x.ck, x.tb, x.e \
             FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::int[], $8::uuid[], \
                         $9::int[], $10::text[], $11::text[], $12::uuid[]) AS x(id, w, v, i, m, p, pt, ci, ck, tb, e)",
        )
        .bind(self.tenant_id())
        .bind(&rows.ids)
        .bind(&rows.workflows)
        .bind(&rows.versions)
        .bind(&rows.inputs)
        .bind(&rows.metadata)
        .bind(&rows.priorities)
        .bind(&rows.parent_tasks)
        .bind(&rows.child_indexes)
        .bind(&rows.child_keys)
        .bind(&rows.triggered_by)
        .bind(&rows.event_ids)
        .execute(&mut *tx)
        .await?;
        // Every task of each run's version; roots are queued at once (in trigger order, so
        // first in is first out), the rest wait for their parents.
        sqlx::query(
            "WITH tasks AS ( \
               INSERT INTO engine.task (id, tenant_id, run_id, step_id, readable_id, action, status, \
                                        pending_parents, priority, queued_at) \
               SELECT gen_random_uuid(), $1, x.run, s.id, s.readable_id, s.action, \
                      CASE WHEN cardinality(s.parents) = 0 THEN 'QUEUED' ELSE 'PENDING' END, \
                      cardinality(s.parents), x.p, \
                      CASE WHEN cardinality(s.parents) = 0 THEN now() END \
               FROM unnest($2::uuid[], $3::uuid[], $4::int[]) WITH ORDINALITY AS x(run, v, p, ord) \
               JOIN engine.step s ON s.workflow_version_id = x.v \
               ORDER BY x.ord, s.readable_id \
               RETURNING id, action, status, step_id, priority, task_number) \
             INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
             SELECT $1, t.id, 0, t.action, t.priority, now() + make_interval(secs => s.schedule_timeout_ms / 1000.0) \
             FROM tasks t JOIN engine.step s ON s.id = t.step_id WHERE t.status = 'QUEUED' ORDER BY t.task_number",
        )
        .bind(self.tenant_id())
        .bind(&rows.ids)
        .bind(&rows.versions)
        .bind(&rows.priorities)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wake_assigner();
        Ok(rows.ids)
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
            "SELECT t.id, t.step_id, t.task_number, t.readable_id, t.action, t.status, t.retry_count, t.output, t.error, \
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
