//! What happened to a task or a run (its events: assigned, started, finished, failed, timed
//! out, reassigned…) and what its tasks logged, for operators and Hatchet's REST clients.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::{Engine, EngineError, check_page};

/// The largest page of events or log lines a caller may ask for.
pub const MAX_LIMIT: i64 = 10_000;

/// Whose events: one task's, or those of every task of a run.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Task(Uuid),
    Run(Uuid),
}

#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub task_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// Hatchet's event type (`V1TaskEventType`).
    pub event_type: String,
    pub message: String,
    pub worker_id: Option<Uuid>,
    pub retry_count: i32,
    pub display_name: String,
    /// The task's output, on the event that completed its current attempt.
    pub output: Option<String>,
    pub total: i64,
}

/// Our event kinds as Hatchet names them. Stream chunks are not events in Hatchet's list.
const EVENT_TYPE: &str = "CASE e.event_type WHEN 'COMPLETED' THEN 'FINISHED' WHEN 'REQUEUED' THEN 'REASSIGNED' \
                          WHEN 'REPLAYED' THEN 'RETRIED_BY_USER' ELSE e.event_type END";

#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the message.
    pub search: Option<String>,
    /// Hatchet levels (DEBUG, INFO, WARN, ERROR); empty means all.
    pub levels: Vec<String>,
    /// 1-based attempt number.
    pub attempt: Option<i32>,
    pub newest_first: bool,
    pub limit: i64,
}

#[derive(Debug, sqlx::FromRow)]
pub struct LogRow {
    pub created_at: DateTime<Utc>,
    pub message: String,
    pub metadata: Value,
    pub task_id: Uuid,
    pub display_name: String,
    pub retry_count: i32,
    pub level: String,
}

/// Stored levels as Hatchet names them (SDKs send `info`, `warning`, `WARN`…).
const LEVEL: &str = "CASE upper(l.level) WHEN 'WARNING' THEN 'WARN' WHEN 'DEBUG' THEN 'DEBUG' WHEN 'WARN' THEN 'WARN' \
                     WHEN 'ERROR' THEN 'ERROR' WHEN 'CRITICAL' THEN 'ERROR' ELSE 'INFO' END";

impl Engine {
    /// Events oldest first, a page at a time, with the total count.
    pub async fn task_events(&self, scope: Scope, offset: i64, limit: i64) -> Result<Vec<EventRow>, EngineError> {
        check_page(offset, limit, MAX_LIMIT)?;
        let (by_run, id) = match scope {
            Scope::Task(id) => (false, id),
            Scope::Run(id) => (true, id),
        };
        self.check_exists(scope).await?;
        let sql = format!(
            "SELECT e.id, e.task_id, e.created_at, {EVENT_TYPE} AS event_type, e.message, e.worker_id, e.retry_count, \
                    t.readable_id AS display_name, \
                    CASE WHEN e.event_type = 'COMPLETED' AND e.retry_count = t.retry_count THEN t.output::text END AS output, \
                    count(*) OVER () AS total \
             FROM engine.task_event e JOIN engine.task t ON t.id = e.task_id \
             WHERE t.tenant_id = $1 AND (CASE WHEN $2 THEN t.run_id ELSE t.id END) = $3 AND e.event_type <> 'STREAM' \
             ORDER BY e.id LIMIT $4 OFFSET $5"
        );
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.tenant_id())
            .bind(by_run)
            .bind(id)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        Ok(rows)
    }

    /// A task's log lines matching `filter`.
    pub async fn task_logs(&self, task_id: Uuid, filter: &LogFilter) -> Result<Vec<LogRow>, EngineError> {
        check_page(0, filter.limit, MAX_LIMIT)?;
        self.check_exists(Scope::Task(task_id)).await?;
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT * FROM ( \
               SELECT l.id, l.created_at, l.message, l.metadata, l.task_id, t.readable_id AS display_name, l.retry_count, \
                      {LEVEL} AS level \
               FROM engine.log_line l JOIN engine.task t ON t.id = l.task_id \
               WHERE l.task_id = $1 AND t.tenant_id = $2 \
                 AND ($3::timestamptz IS NULL OR l.created_at >= $3) AND ($4::timestamptz IS NULL OR l.created_at <= $4) \
                 AND ($5::text IS NULL OR strpos(lower(l.message), lower($5)) > 0) \
                 AND ($6::int IS NULL OR l.retry_count = $6 - 1)) x \
             WHERE cardinality($7::text[]) = 0 OR x.level = ANY($7) \
             ORDER BY x.id {order} LIMIT $8"
        );
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(task_id)
            .bind(self.tenant_id())
            .bind(filter.since)
            .bind(filter.until)
            .bind(filter.search.as_deref())
            .bind(filter.attempt)
            .bind(&filter.levels)
            .bind(filter.limit)
            .fetch_all(self.pool())
            .await?;
        Ok(rows)
    }

    async fn check_exists(&self, scope: Scope) -> Result<(), EngineError> {
        let (sql, id, what) = match scope {
            Scope::Task(id) => {
                ("SELECT EXISTS (SELECT 1 FROM engine.task WHERE id = $1 AND tenant_id = $2)", id, "task")
            }
            Scope::Run(id) => (
                "SELECT EXISTS (SELECT 1 FROM engine.workflow_run WHERE id = $1 AND tenant_id = $2)",
                id,
                "workflow run",
            ),
        };
        let found: bool = sqlx::query_scalar(sql).bind(id).bind(self.tenant_id()).fetch_one(self.pool()).await?;
        if found { Ok(()) } else { Err(EngineError::NotFound(format!("{what} {id} not found"))) }
    }
}
