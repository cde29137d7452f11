//! Events pushed by clients: stored, then every workflow listening for the key starts with
//! the payload as its input.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::runs::Trigger;

pub struct StoredEvent {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub runs: Vec<Uuid>,
}

impl Engine {
    pub async fn push_event(
        &self,
        key: &str,
        payload: Value,
        additional_metadata: Value,
        priority: Option<i32>,
        scope: Option<String>,
    ) -> Result<StoredEvent, EngineError> {
        let id = Uuid::now_v7();
        let created_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO engine.event (id, tenant_id, key, payload, additional_metadata, scope) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
        )
        .bind(id)
        .bind(self.tenant_id())
        .bind(key)
        .bind(&payload)
        .bind(&additional_metadata)
        .bind(&scope)
        .fetch_one(self.pool())
        .await?;
        let workflows = self.workflows_for_event(key).await?;
        let triggers: Vec<Trigger> = workflows
            .into_iter()
            .map(|name| {
                let mut t = Trigger::new(name, payload.clone());
                t.additional_metadata = additional_metadata.clone();
                t.priority = priority;
                t.triggered_by = "event";
                t.event_id = Some(id);
                t
            })
            .collect();
        let runs = if triggers.is_empty() { Vec::new() } else { self.trigger_many(triggers).await? };
        tracing::debug!(event = %id, key, runs = runs.len(), "event pushed");
        Ok(StoredEvent { id, created_at, runs })
    }
}
