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
    names: Vec<String>,
    inputs: Vec<String>,
    metadata: Vec<String>,
    priorities: Vec<Option<i32>>,
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
            names: Vec::with_capacity(n),
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

    /// Starts several runs atomically: all of them or none. One statement (and one commit)
    /// whatever the number of runs: it resolves each workflow's latest version, inserts the
    /// runs, their tasks and the first queue items. A name that matches no workflow leaves a
    /// run without a workflow, which the NOT NULL constraint refuses, so nothing is written.
    pub async fn trigger_many(&self, triggers: Vec<Trigger>) -> Result<Vec<Uuid>, EngineError> {
        let mut conn = self.pool().acquire().await?;
        let ids = self.trigger_on(&mut conn, triggers).await?;
        self.wake_assigner();
        self.announce_queued();
        Ok(ids)
    }

    /// `trigger_many` on a connection of the caller's, inside its transaction if it has one
    /// (a cron tick and its run commit together). The caller wakes the assigner after commit.
    pub(crate) async fn trigger_on(
        &self,
        conn: &mut sqlx::PgConnection,
        triggers: Vec<Trigger>,
    ) -> Result<Vec<Uuid>, EngineError> {
        for t in &triggers {
            if let Some(p) = t.priority
                && !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p)
            {
                return Err(EngineError::InvalidArgument(format!(
                    "priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {p}"
                )));
            }
        }
        let names: Vec<String> = triggers.iter().map(|t| t.workflow.clone()).collect();
        let mut rows = RunRows::with_capacity(triggers.len());
        for t in triggers {
            rows.ids.push(Uuid::now_v7());
            rows.names.push(t.workflow);
            rows.inputs.push(t.input.to_string());
            rows.metadata.push(t.additional_metadata.to_string());
            rows.priorities.push(t.priority);
            rows.parent_tasks.push(t.parent_task_id);
            rows.child_indexes.push(t.child_index);
            rows.child_keys.push(t.child_key);
            rows.triggered_by.push(t.triggered_by.to_owned());
            rows.event_ids.push(t.event_id);
        }
        // A workflow registered while the statement ran: once more, then it is known.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let inserted = sqlx::query(
                "WITH x AS ( \
                   SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[], $7::uuid[], \
                                        $8::int[], $9::text[], $10::text[], $11::uuid[]) \
                     WITH ORDINALITY AS x(id, name, i, m, p, pt, ci, ck, tb, e, ord)), \
                 v AS ( \
                   SELECT x.*, w.id AS workflow_id, lv.id AS version_id, coalesce(x.p, lv.default_priority) AS priority \
                   FROM x LEFT JOIN engine.workflow w ON w.tenant_id = $1 AND w.name = x.name \
                   LEFT JOIN LATERAL (SELECT id, default_priority FROM engine.workflow_version \
                                      WHERE workflow_id = w.id ORDER BY version_order DESC LIMIT 1) lv ON true), \
                 runs AS ( \
                   INSERT INTO engine.workflow_run (id, tenant_id, workflow_id, workflow_version_id, input, \
                     additional_metadata, priority, parent_task_id, child_index, child_key, triggered_by, event_id) \
                   SELECT v.id, $1, v.workflow_id, v.version_id, v.i::jsonb, v.m::jsonb, coalesce(v.priority, 1), \
                          v.pt, v.ci, v.ck, v.tb, v.e FROM v \
                   RETURNING id), \
                 tasks AS ( \
                   INSERT INTO engine.task (id, tenant_id, run_id, step_id, readable_id, action, status, \
                                            pending_parents, priority, queued_at) \
                   SELECT gen_random_uuid(), $1, v.id, s.id, s.readable_id, s.action, \
                          CASE WHEN cardinality(s.parents) = 0 THEN 'QUEUED' ELSE 'PENDING' END, \
                          cardinality(s.parents), v.priority, \
                          CASE WHEN cardinality(s.parents) = 0 THEN now() END \
                   FROM v JOIN engine.step s ON s.workflow_version_id = v.version_id \
                   ORDER BY v.ord, s.readable_id \
                   RETURNING id, action, status, step_id, priority, task_number) \
                 INSERT INTO engine.queue_item (tenant_id, task_id, retry_count, action, priority, schedule_timeout_at) \
                 SELECT $1, t.id, 0, t.action, t.priority, now() + make_interval(secs => s.schedule_timeout_ms / 1000.0) \
                 FROM tasks t JOIN engine.step s ON s.id = t.step_id WHERE t.status = 'QUEUED' ORDER BY t.task_number",
            )
            .bind(self.tenant_id())
            .bind(&rows.ids)
            .bind(&rows.names)
            .bind(&rows.inputs)
            .bind(&rows.metadata)
            .bind(&rows.priorities)
            .bind(&rows.parent_tasks)
            .bind(&rows.child_indexes)
            .bind(&rows.child_keys)
            .bind(&rows.triggered_by)
            .bind(&rows.event_ids)
            .execute(&mut *conn)
            .await;
            match inserted {
                Ok(_) => break,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23502") && attempt < 3 => {
                    // Which name matched nothing (nothing was written).
                    for name in &names {
                        self.latest_version(name).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
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
