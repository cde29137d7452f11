//! Runs and tasks listed for operators (Hatchet's `V1TaskSummaryList`): newest first,
//! filtered by time, status, workflow, worker, parent task and additional metadata, a page
//! at a time with the total count of matches.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::model::RunStatus;

/// The largest page a caller may ask for.
pub const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub statuses: Vec<RunStatus>,
    pub workflow_ids: Vec<Uuid>,
    pub worker_id: Option<Uuid>,
    pub parent_task_id: Option<Uuid>,
    /// Every pair must be in the run's additional metadata.
    pub metadata: serde_json::Map<String, Value>,
    /// Tasks (one row per task) instead of runs (one row per run).
    pub only_tasks: bool,
    pub offset: i64,
    pub limit: i64,
}

/// One row of a list: a run, or a task with its run's fields.
#[derive(Debug, sqlx::FromRow)]
pub struct Summary {
    /// The row's id: the run's for runs, the task's for tasks.
    pub id: Uuid,
    pub run_id: Uuid,
    /// The task the row stands for: the run's only task, or the task itself; none for a
    /// run of several tasks.
    pub task_id: Option<Uuid>,
    pub task_number: i64,
    pub display_name: String,
    pub action: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub retry_count: i32,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub additional_metadata: Value,
    pub workflow_id: Uuid,
    pub workflow_name: String,
    pub workflow_version_id: Uuid,
    pub step_id: Option<Uuid>,
    pub task_count: i64,
    pub spawned_children: i64,
    pub parent_task_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct Page {
    pub rows: Vec<Summary>,
    pub total: i64,
}

const RUN_ROWS: &str = "\
WITH page AS ( \
  SELECT r.*, count(*) OVER () AS total FROM engine.workflow_run r \
  WHERE r.tenant_id = $1 \
    AND ($2::timestamptz IS NULL OR r.created_at >= $2) AND ($3::timestamptz IS NULL OR r.created_at <= $3) \
    AND (cardinality($4::text[]) = 0 OR r.status = ANY($4)) \
    AND (cardinality($5::uuid[]) = 0 OR r.workflow_id = ANY($5)) \
    AND ($6::uuid IS NULL OR EXISTS (SELECT 1 FROM engine.task x WHERE x.run_id = r.id AND x.worker_id = $6)) \
    AND ($7::uuid IS NULL OR r.parent_task_id = $7) \
    AND r.additional_metadata @> $8 \
  ORDER BY r.created_at DESC, r.id DESC LIMIT $9 OFFSET $10) \
SELECT p.id, p.id AS run_id, CASE WHEN tk.n = 1 THEN tk.first_id END AS task_id, tk.first_number AS task_number, \
       CASE WHEN tk.n = 1 THEN tk.first_name ELSE w.name || '-' || left(p.id::text, 8) END AS display_name, \
       CASE WHEN tk.n = 1 THEN tk.first_action END AS action, p.status, tk.retry_count, p.input, \
       CASE WHEN tk.n = 1 THEN tk.first_output ELSE tk.outputs END AS output, p.error, p.additional_metadata, \
       p.workflow_id, w.name AS workflow_name, p.workflow_version_id, CASE WHEN tk.n = 1 THEN tk.first_step END AS step_id, \
       tk.n AS task_count, \
       (SELECT count(*) FROM engine.workflow_run c WHERE c.parent_task_id = ANY(tk.ids)) AS spawned_children, \
       p.parent_task_id, p.created_at, p.started_at, p.finished_at, p.total \
FROM page p JOIN engine.workflow w ON w.id = p.workflow_id \
CROSS JOIN LATERAL ( \
  SELECT count(*) AS n, array_agg(t.id) AS ids, coalesce(max(t.retry_count), 0) AS retry_count, \
         (array_agg(t.id ORDER BY t.task_number))[1] AS first_id, coalesce(min(t.task_number), 0) AS first_number, \
         (array_agg(t.readable_id ORDER BY t.task_number))[1] AS first_name, \
         (array_agg(t.action ORDER BY t.task_number))[1] AS first_action, \
         (array_agg(t.step_id ORDER BY t.task_number))[1] AS first_step, \
         (array_agg(t.output ORDER BY t.task_number))[1] AS first_output, \
         coalesce(jsonb_object_agg(t.readable_id, t.output) FILTER (WHERE t.output IS NOT NULL), '{}') AS outputs \
  FROM engine.task t WHERE t.run_id = p.id) tk \
ORDER BY p.created_at DESC, p.id DESC";

const TASK_ROWS: &str = "\
WITH page AS ( \
  SELECT t.*, count(*) OVER () AS total FROM engine.task t JOIN engine.workflow_run r ON r.id = t.run_id \
  WHERE t.tenant_id = $1 \
    AND ($2::timestamptz IS NULL OR t.created_at >= $2) AND ($3::timestamptz IS NULL OR t.created_at <= $3) \
    AND (cardinality($4::text[]) = 0 OR (CASE WHEN t.status = 'PENDING' THEN 'QUEUED' ELSE t.status END) = ANY($4)) \
    AND (cardinality($5::uuid[]) = 0 OR r.workflow_id = ANY($5)) \
    AND ($6::uuid IS NULL OR t.worker_id = $6) \
    AND ($7::uuid IS NULL OR r.parent_task_id = $7) \
    AND r.additional_metadata @> $8 \
  ORDER BY t.created_at DESC, t.task_number DESC LIMIT $9 OFFSET $10) \
SELECT p.id, p.run_id, p.id AS task_id, p.task_number, p.readable_id AS display_name, p.action, p.status, p.retry_count, \
       r.input, p.output, p.error, r.additional_metadata, r.workflow_id, w.name AS workflow_name, r.workflow_version_id, \
       p.step_id, (SELECT count(*) FROM engine.task x WHERE x.run_id = p.run_id) AS task_count, \
       (SELECT count(*) FROM engine.workflow_run c WHERE c.parent_task_id = p.id) AS spawned_children, \
       r.parent_task_id, p.created_at, p.started_at, p.finished_at, p.total \
FROM page p JOIN engine.workflow_run r ON r.id = p.run_id JOIN engine.workflow w ON w.id = r.workflow_id \
ORDER BY p.created_at DESC, p.task_number DESC";

#[derive(sqlx::FromRow)]
struct Counted {
    #[sqlx(flatten)]
    row: Summary,
    total: i64,
}

impl Engine {
    /// One page of runs (or tasks) matching `filter`, newest first.
    pub async fn list_runs(&self, filter: &ListFilter) -> Result<Page, EngineError> {
        crate::engine::check_page(filter.offset, filter.limit, MAX_LIMIT)?;
        let rows = self.fetch_page(filter, filter.limit, filter.offset).await?;
        let total = match rows.first() {
            Some(r) => r.total,
            // Past the last page the window has no row to count on: count on the first.
            None if filter.offset > 0 => self.fetch_page(filter, 1, 0).await?.first().map_or(0, |r| r.total),
            None => 0,
        };
        Ok(Page { rows: rows.into_iter().map(|c| c.row).collect(), total })
    }

    async fn fetch_page(&self, filter: &ListFilter, limit: i64, offset: i64) -> Result<Vec<Counted>, EngineError> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let rows = sqlx::query_as(if filter.only_tasks { TASK_ROWS } else { RUN_ROWS })
            .bind(self.tenant_id())
            .bind(filter.since)
            .bind(filter.until)
            .bind(&statuses)
            .bind(&filter.workflow_ids)
            .bind(filter.worker_id)
            .bind(filter.parent_task_id)
            .bind(Value::Object(filter.metadata.clone()))
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        Ok(rows)
    }

    /// One task as a list row (Hatchet's `GET /api/v1/stable/tasks/{task}`).
    pub async fn task_summary(&self, task_id: Uuid) -> Result<Summary, EngineError> {
        let row: Option<Summary> = sqlx::query_as(
            "SELECT t.id, t.run_id, t.id AS task_id, t.task_number, t.readable_id AS display_name, t.action, t.status, \
                    t.retry_count, r.input, t.output, t.error, r.additional_metadata, r.workflow_id, w.name AS workflow_name, \
                    r.workflow_version_id, t.step_id, \
                    (SELECT count(*) FROM engine.task x WHERE x.run_id = t.run_id) AS task_count, \
                    (SELECT count(*) FROM engine.workflow_run c WHERE c.parent_task_id = t.id) AS spawned_children, \
                    r.parent_task_id, t.created_at, t.started_at, t.finished_at \
             FROM engine.task t JOIN engine.workflow_run r ON r.id = t.run_id JOIN engine.workflow w ON w.id = r.workflow_id \
             WHERE t.id = $1 AND t.tenant_id = $2",
        )
        .bind(task_id)
        .bind(self.tenant_id())
        .fetch_optional(self.pool())
        .await?;
        row.ok_or_else(|| EngineError::NotFound(format!("task {task_id} not found")))
    }
}
