//! Crons and one-off scheduled runs.
//!
//! One engine process per database holds the scheduling lease (a session advisory lock on a
//! connection it keeps); it sleeps until the next tick or scheduled run is due, wakes when
//! one is added, and looks again every two seconds for those other processes added. When it dies its
//! connection ends, the lock is released, and another process takes over within a second.
//! Exactly once does not rest on the lease alone: each tick is a `cron_fire` row inserted in
//! the transaction that starts its run, so a tick that was already fired (before a restart,
//! or by another process) is skipped. Ticks missed while no engine ran are fired late if
//! they are at most `cron_catch_up` old.
//!
//! Expressions have 5 fields (minute first) or 6 (second first), in UTC, as Hatchet's.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::runs::Trigger;

/// Most ticks of one cron fired in one pass (a per-second cron after a pause).
const MAX_TICKS: usize = 100;
const LEASE_KEY: &str = "sfp-engine-scheduler";

/// Parses a 5- or 6-field cron expression.
pub fn parse(expression: &str) -> Result<cron::Schedule, String> {
    let fields = expression.split_whitespace().count();
    let normalised = match fields {
        5 => format!("0 {}", expression.trim()),
        6 => expression.trim().to_owned(),
        n => return Err(format!("cron expression {expression:?} has {n} fields; it needs 5 or 6")),
    };
    cron::Schedule::from_str(&normalised).map_err(|e| format!("cron expression {expression:?} is not valid: {e}"))
}

pub(crate) async fn run(engine: Engine, shutdown: CancellationToken) {
    loop {
        match engine.hold_lease_and_fire(&shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "the scheduler lost its lease or database; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[derive(sqlx::FromRow)]
struct DueCron {
    id: Uuid,
    expression: String,
    workflow: String,
    input: Value,
    additional_metadata: Value,
    priority: Option<i32>,
    created_at: DateTime<Utc>,
    last_tick: Option<DateTime<Utc>>,
}

impl Engine {
    /// Waits for the lease, then fires due work until shutdown (Ok) or a database error.
    async fn hold_lease_and_fire(&self, shutdown: &CancellationToken) -> Result<(), EngineError> {
        let mut lease = self.pool().acquire().await?.detach();
        loop {
            let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2::text))")
                .bind(LEASE_KEY)
                .bind(self.tenant_id())
                .fetch_one(&mut lease)
                .await?;
            if held {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!("this engine process holds the scheduling lease");
        // Sleep until the next tick or schedule is due (or a cron or schedule is added here);
        // look again every few seconds for what other processes added.
        let refresh = Duration::from_secs(2);
        loop {
            let changed = self.inner.schedules_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // The lease lives as long as its connection: check it, then fire.
            sqlx::query("SELECT 1").execute(&mut lease).await?;
            self.fire_due_crons().await?;
            self.fire_due_schedules().await?;
            let wait = match self.next_due().await? {
                Some(due) => (due - Utc::now()).to_std().unwrap_or_default().min(refresh),
                None => refresh,
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = lease.close().await;
                    return Ok(());
                }
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait.max(self.config().cron_interval.min(Duration::from_millis(20)))) => {}
            }
        }
    }

    /// When the next cron tick or scheduled run is due.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        let crons: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT c.expression, c.created_at, (SELECT max(f.tick) FROM engine.cron_fire f WHERE f.cron_id = c.id) \
             FROM engine.cron c WHERE c.tenant_id = $1 AND c.enabled",
        )
        .bind(self.tenant_id())
        .fetch_all(self.pool())
        .await?;
        let schedule: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(trigger_at) FROM engine.scheduled_run WHERE tenant_id = $1 AND run_id IS NULL",
        )
        .bind(self.tenant_id())
        .fetch_one(self.pool())
        .await?;
        let now = Utc::now();
        let ticks = crons.iter().filter_map(|(expr, created, last)| {
            let from = last.unwrap_or(*created).max(now - chrono::Duration::seconds(1));
            parse(expr).ok().and_then(|s| s.after(&from).next())
        });
        Ok(ticks.chain(schedule).min())
    }

    pub(crate) async fn fire_due_crons(&self) -> Result<usize, EngineError> {
        let crons: Vec<DueCron> = sqlx::query_as(
            "SELECT c.id, c.expression, w.name AS workflow, c.input, c.additional_metadata, c.priority, c.created_at, \
                    (SELECT max(f.tick) FROM engine.cron_fire f WHERE f.cron_id = c.id) AS last_tick \
             FROM engine.cron c JOIN engine.workflow w ON w.id = c.workflow_id \
             WHERE c.tenant_id = $1 AND c.enabled",
        )
        .bind(self.tenant_id())
        .fetch_all(self.pool())
        .await?;
        let now = Utc::now();
        let oldest = now - chrono::Duration::from_std(self.config().cron_catch_up).unwrap_or_default();
        let mut fired = 0;
        for c in crons {
            let schedule = match parse(&c.expression) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(cron = %c.id, error = %e, "skipping a cron that does not parse");
                    continue;
                }
            };
            let from = c.last_tick.unwrap_or(c.created_at).max(oldest);
            let ticks: Vec<DateTime<Utc>> = schedule.after(&from).take_while(|t| *t <= now).take(MAX_TICKS).collect();
            for tick in ticks {
                let mut tx = self.pool().begin().await?;
                let run_id = Uuid::now_v7();
                let claimed = sqlx::query(
                    "INSERT INTO engine.cron_fire (cron_id, tick, run_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(c.id)
                .bind(tick)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
                if claimed.rows_affected() == 0 {
                    continue; // fired already
                }
                let mut meta = c.additional_metadata.clone();
                if let Value::Object(m) = &mut meta {
                    m.insert("hatchet__cron_id".into(), Value::String(c.id.to_string()));
                    m.insert("hatchet__cron_tick".into(), Value::String(tick.to_rfc3339()));
                }
                let mut trigger = Trigger::new(c.workflow.clone(), c.input.clone());
                trigger.additional_metadata = meta;
                trigger.priority = c.priority;
                trigger.triggered_by = "cron";
                let ids = self.trigger_on(&mut tx, vec![trigger]).await?;
                sqlx::query("UPDATE engine.cron_fire SET run_id = $3 WHERE cron_id = $1 AND tick = $2")
                    .bind(c.id)
                    .bind(tick)
                    .bind(ids[0])
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                fired += 1;
                tracing::info!(cron = %c.id, %tick, run = %ids[0], "cron fired");
            }
        }
        if fired > 0 {
            self.wake_assigner();
            self.announce_queued();
        }
        Ok(fired)
    }

    pub(crate) async fn fire_due_schedules(&self) -> Result<usize, EngineError> {
        let mut tx = self.pool().begin().await?;
        let due: Vec<(Uuid, String, Value, Value, Option<i32>)> = sqlx::query_as(
            "SELECT s.id, w.name, s.input, s.additional_metadata, s.priority FROM engine.scheduled_run s \
             JOIN engine.workflow w ON w.id = s.workflow_id \
             WHERE s.tenant_id = $1 AND s.run_id IS NULL AND s.trigger_at <= now() \
             ORDER BY s.trigger_at LIMIT 100 FOR UPDATE OF s SKIP LOCKED",
        )
        .bind(self.tenant_id())
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        for (id, workflow, input, mut meta, priority) in due.iter().cloned() {
            if let Value::Object(m) = &mut meta {
                m.insert("hatchet__scheduled_run_id".into(), Value::String(id.to_string()));
            }
            let mut trigger = Trigger::new(workflow, input);
            trigger.additional_metadata = meta;
            trigger.priority = priority;
            trigger.triggered_by = "schedule";
            let run = self.trigger_on(&mut tx, vec![trigger]).await?;
            sqlx::query("UPDATE engine.scheduled_run SET run_id = $2, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(run[0])
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.wake_assigner();
        self.announce_queued();
        Ok(due.len())
    }

    /// Makes the workflow's declared crons match its latest definition.
    pub(crate) async fn sync_definition_crons(
        &self,
        conn: &mut sqlx::PgConnection,
        workflow_id: Uuid,
        expressions: &[String],
        input: Option<&Value>,
    ) -> Result<(), EngineError> {
        sqlx::query(
            "DELETE FROM engine.cron WHERE workflow_id = $1 AND method = 'DEFAULT' AND NOT (expression = ANY($2))",
        )
        .bind(workflow_id)
        .bind(expressions)
        .execute(&mut *conn)
        .await?;
        for expression in expressions {
            sqlx::query(
                "INSERT INTO engine.cron (id, tenant_id, workflow_id, name, expression, input, method) \
                 VALUES ($1, $2, $3, $4, $4, $5, 'DEFAULT') \
                 ON CONFLICT (workflow_id, name) DO UPDATE SET input = excluded.input, updated_at = now()",
            )
            .bind(Uuid::now_v7())
            .bind(self.tenant_id())
            .bind(workflow_id)
            .bind(expression)
            .bind(input.cloned().unwrap_or_else(|| serde_json::json!({})))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions_parse_in_utc() {
        let every_minute = parse("* * * * *").unwrap();
        let from = DateTime::parse_from_rfc3339("2026-01-01T10:00:30Z").unwrap().with_timezone(&Utc);
        assert_eq!(every_minute.after(&from).next().unwrap().to_rfc3339(), "2026-01-01T10:01:00+00:00");
        let every_second = parse("* * * * * *").unwrap();
        assert_eq!(every_second.after(&from).next().unwrap().to_rfc3339(), "2026-01-01T10:00:31+00:00");
        let nightly = parse("0 2 * * *").unwrap();
        assert_eq!(nightly.after(&from).next().unwrap().to_rfc3339(), "2026-01-02T02:00:00+00:00");
        assert!(parse("* * *").unwrap_err().contains("5 or 6"));
        assert!(parse("61 * * * *").is_err());
    }
}
