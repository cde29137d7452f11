//! The workflow registry: a new version only when the definition changed.

use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::model::WorkflowDefinition;

/// What a registration produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub workflow_id: Uuid,
    pub version_id: Uuid,
    pub created_version: bool,
}

impl Engine {
    pub async fn put_workflow(&self, def: &WorkflowDefinition) -> Result<Registered, EngineError> {
        let checksum = def.checksum();
        let mut tx = self.pool().begin().await?;
        let workflow_id: Uuid = sqlx::query_scalar(
            "INSERT INTO engine.workflow (id, tenant_id, name) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET updated_at = now() RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(self.tenant_id())
        .bind(&def.name)
        .fetch_one(&mut *tx)
        .await?;
        // Serialise registrations of the same workflow.
        sqlx::query("SELECT 1 FROM engine.workflow WHERE id = $1 FOR UPDATE")
            .bind(workflow_id)
            .execute(&mut *tx)
            .await?;
        let latest: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, checksum FROM engine.workflow_version WHERE workflow_id = $1 ORDER BY version_order DESC LIMIT 1",
        )
        .bind(workflow_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((version_id, existing)) = latest
            && existing == checksum
        {
            tx.commit().await?;
            return Ok(Registered { workflow_id, version_id, created_version: false });
        }
        let version_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO engine.workflow_version \
               (id, workflow_id, version_order, checksum, version, definition, event_triggers, cron_triggers, cron_input, default_priority) \
             VALUES ($1, $2, (SELECT coalesce(max(version_order), 0) + 1 FROM engine.workflow_version WHERE workflow_id = $2), \
                     $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(version_id)
        .bind(workflow_id)
        .bind(&checksum)
        .bind(&def.version)
        .bind(serde_json::to_value(def).unwrap_or_default())
        .bind(&def.event_triggers)
        .bind(&def.cron_triggers)
        .bind(&def.cron_input)
        .bind(def.default_priority)
        .execute(&mut *tx)
        .await?;
        for t in &def.tasks {
            sqlx::query(
                "INSERT INTO engine.step (id, workflow_version_id, readable_id, action, timeout_ms, schedule_timeout_ms, \
                   retries, backoff_factor, backoff_max_seconds, parents, slot_units) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(Uuid::now_v7())
            .bind(version_id)
            .bind(&t.readable_id)
            .bind(&t.action)
            .bind(t.timeout_ms as i64)
            .bind(t.schedule_timeout_ms as i64)
            .bind(t.retries)
            .bind(t.backoff_factor)
            .bind(t.backoff_max_seconds)
            .bind(&t.parents)
            .bind(t.slot_units)
            .execute(&mut *tx)
            .await?;
        }
        self.sync_definition_crons(&mut tx, workflow_id, &def.cron_triggers, def.cron_input.as_ref()).await?;
        tx.commit().await?;
        if !def.cron_triggers.is_empty() {
            self.inner.schedules_changed.notify_one();
        }
        tracing::info!(workflow = %def.name, %version_id, "workflow version registered");
        Ok(Registered { workflow_id, version_id, created_version: true })
    }

    /// The latest version of the workflow called `name`.
    pub(crate) async fn latest_version(&self, name: &str) -> Result<(Uuid, Uuid, i32), EngineError> {
        let row: Option<(Uuid, Uuid, i32)> = sqlx::query_as(
            "SELECT w.id, v.id, v.default_priority FROM engine.workflow w \
             JOIN LATERAL (SELECT id, default_priority FROM engine.workflow_version \
                           WHERE workflow_id = w.id ORDER BY version_order DESC LIMIT 1) v ON true \
             WHERE w.tenant_id = $1 AND w.name = $2",
        )
        .bind(self.tenant_id())
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or_else(|| EngineError::NotFound(format!("workflow {name:?} is not registered")))
    }

    /// Names of the workflows whose latest version listens for `key` (`*` matches anything).
    pub(crate) async fn workflows_for_event(&self, key: &str) -> Result<Vec<String>, EngineError> {
        let names = sqlx::query_scalar(
            "SELECT w.name FROM engine.workflow w \
             JOIN LATERAL (SELECT event_triggers FROM engine.workflow_version \
                           WHERE workflow_id = w.id ORDER BY version_order DESC LIMIT 1) v ON true \
             WHERE w.tenant_id = $1 AND EXISTS ( \
               SELECT 1 FROM unnest(v.event_triggers) p \
               WHERE $2 LIKE replace(replace(replace(replace(p, '\\', '\\\\'), '%', '\\%'), '_', '\\_'), '*', '%') ESCAPE '\\')",
        )
        .bind(self.tenant_id())
        .bind(key)
        .fetch_all(self.pool())
        .await?;
        Ok(names)
    }
}
