//! Crons and one-off scheduled runs created through the API (`crons` fires them).

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::model::{MAX_PRIORITY, MIN_PRIORITY};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CronView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub workflow_name: String,
    pub workflow_version_id: Uuid,
    pub name: String,
    pub expression: String,
    pub input: Value,
    pub additional_metadata: Value,
    pub priority: Option<i32>,
    pub method: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub workflow_name: String,
    pub workflow_version_id: Uuid,
    pub trigger_at: DateTime<Utc>,
    pub input: Value,
    pub additional_metadata: Value,
    pub priority: Option<i32>,
    pub method: String,
    pub run_id: Option<Uuid>,
    pub run_status: Option<String>,
    pub run_created_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const CRON_COLUMNS: &str = "c.id, c.workflow_id, w.name AS workflow_name, \
     (SELECT v.id FROM engine.workflow_version v WHERE v.workflow_id = w.id ORDER BY v.version_order DESC LIMIT 1) \
       AS workflow_version_id, \
     c.name, c.expression, c.input, c.additional_metadata, c.priority, c.method, c.enabled, c.created_at, c.updated_at \
     FROM engine.cron c JOIN engine.workflow w ON w.id = c.workflow_id";

const SCHEDULE_COLUMNS: &str = "s.id, s.workflow_id, w.name AS workflow_name, \
     (SELECT v.id FROM engine.workflow_version v WHERE v.workflow_id = w.id ORDER BY v.version_order DESC LIMIT 1) \
       AS workflow_version_id, \
     s.trigger_at, s.input, s.additional_metadata, s.priority, s.method, s.run_id, r.status AS run_status, \
     r.created_at AS run_created_at, s.created_at, s.updated_at \
     FROM engine.scheduled_run s JOIN engine.workflow w ON w.id = s.workflow_id \
     LEFT JOIN engine.workflow_run r ON r.id = s.run_id";

fn check_priority(p: Option<i32>) -> Result<(), EngineError> {
    match p {
        Some(p) if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p) => Err(EngineError::InvalidArgument(format!(
            "priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {p}"
        ))),
        _ => Ok(()),
    }
}

impl Engine {
    /// The workflow named by its name or id.
    async fn workflow_id(&self, name_or_id: &str) -> Result<Uuid, EngineError> {
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM engine.workflow WHERE tenant_id = $1 AND (name = $2 OR id::text = $2)")
                .bind(self.tenant_id())
                .bind(name_or_id)
                .fetch_optional(self.pool())
                .await?;
        id.ok_or_else(|| EngineError::NotFound(format!("workflow {name_or_id:?} is not registered")))
    }

    pub async fn create_cron(
        &self,
        workflow: &str,
        name: &str,
        expression: &str,
        input: Value,
        additional_metadata: Value,
        priority: Option<i32>,
    ) -> Result<CronView, EngineError> {
        crate::crons::parse(expression).map_err(EngineError::InvalidArgument)?;
        check_priority(priority)?;
        if name.trim().is_empty() {
            return Err(EngineError::InvalidArgument("a cron needs a name".into()));
        }
        let workflow_id = self.workflow_id(workflow).await?;
        let id = Uuid::now_v7();
        let inserted = sqlx::query(
            "INSERT INTO engine.cron (id, tenant_id, workflow_id, name, expression, input, additional_metadata, priority, method) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'API')",
        )
        .bind(id)
        .bind(self.tenant_id())
        .bind(workflow_id)
        .bind(name.trim())
        .bind(expression.trim())
        .bind(&input)
        .bind(&additional_metadata)
        .bind(priority)
        .execute(self.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                return Err(EngineError::FailedPrecondition(format!(
                    "workflow {workflow:?} has a cron named {name:?}"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.inner.schedules_changed.notify_one();
        self.cron(id).await
    }

    pub async fn cron(&self, id: Uuid) -> Result<CronView, EngineError> {
        let found: Option<CronView> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {CRON_COLUMNS} WHERE c.id = $1 AND c.tenant_id = $2")))
                .bind(id)
                .bind(self.tenant_id())
                .fetch_optional(self.pool())
                .await?;
        found.ok_or_else(|| EngineError::NotFound(format!("cron {id} not found")))
    }

    pub async fn crons(
        &self,
        workflow: Option<Uuid>,
        name: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<CronView>, i64), EngineError> {
        let filter =
            "WHERE c.tenant_id = $1 AND ($2::uuid IS NULL OR c.workflow_id = $2) AND ($3::text IS NULL OR c.name = $3)";
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CRON_COLUMNS} {filter} ORDER BY c.created_at, c.id OFFSET $4 LIMIT $5"
        )))
        .bind(self.tenant_id())
        .bind(workflow)
        .bind(name)
        .bind(offset)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let total: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM engine.cron c {filter}")))
                .bind(self.tenant_id())
                .bind(workflow)
                .bind(name)
                .fetch_one(self.pool())
                .await?;
        Ok((rows, total))
    }

    pub async fn delete_cron(&self, id: Uuid) -> Result<(), EngineError> {
        let done = sqlx::query("DELETE FROM engine.cron WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(self.tenant_id())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(EngineError::NotFound(format!("cron {id} not found")));
        }
        Ok(())
    }

    pub async fn create_schedule(
        &self,
        workflow: &str,
        trigger_at: DateTime<Utc>,
        input: Value,
        additional_metadata: Value,
        priority: Option<i32>,
    ) -> Result<ScheduleView, EngineError> {
        check_priority(priority)?;
        let workflow_id = self.workflow_id(workflow).await?;
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO engine.scheduled_run (id, tenant_id, workflow_id, trigger_at, input, additional_metadata, priority) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(self.tenant_id())
        .bind(workflow_id)
        .bind(trigger_at)
        .bind(&input)
        .bind(&additional_metadata)
        .bind(priority)
        .execute(self.pool())
        .await?;
        self.inner.schedules_changed.notify_one();
        self.schedule(id).await
    }

    pub async fn schedule(&self, id: Uuid) -> Result<ScheduleView, EngineError> {
        let found: Option<ScheduleView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} WHERE s.id = $1 AND s.tenant_id = $2"
        )))
        .bind(id)
        .bind(self.tenant_id())
        .fetch_optional(self.pool())
        .await?;
        found.ok_or_else(|| EngineError::NotFound(format!("scheduled run {id} not found")))
    }

    pub async fn schedules(
        &self,
        workflow: Option<Uuid>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ScheduleView>, i64), EngineError> {
        let filter = "WHERE s.tenant_id = $1 AND ($2::uuid IS NULL OR s.workflow_id = $2)";
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} {filter} ORDER BY s.trigger_at, s.id OFFSET $3 LIMIT $4"
        )))
        .bind(self.tenant_id())
        .bind(workflow)
        .bind(offset)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let total: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM engine.scheduled_run s {filter}")))
                .bind(self.tenant_id())
                .bind(workflow)
                .fetch_one(self.pool())
                .await?;
        Ok((rows, total))
    }

    /// Deletes a scheduled run that has not started (one that did keeps its run).
    pub async fn delete_schedule(&self, id: Uuid) -> Result<(), EngineError> {
        let done = sqlx::query("DELETE FROM engine.scheduled_run WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(self.tenant_id())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(EngineError::NotFound(format!("scheduled run {id} not found")));
        }
        Ok(())
    }
}
