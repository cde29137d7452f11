//! Pipelines on a cron: every few seconds the control plane starts the runs that are due
//! (`app.pipeline_schedule`), each in the transaction that moves its schedule on, so that of
//! several servers of one database exactly one starts it (`FOR UPDATE SKIP LOCKED`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::pipelines::{Which, load, start_run};
use crate::tasks::EngineLink;

/// The next time `cron` fires after `after`.
pub fn next_after(cron: &str, after: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let schedule = sfp_engine::crons::parse(cron)?;
    schedule.after(&after).next().ok_or_else(|| format!("cron expression {cron:?} never fires again"))
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    cron: String,
    name: String,
    project: String,
    created_by: Option<Uuid>,
}

/// Starts due runs until `shutdown`.
pub async fn run(pool: PgPool, link: EngineLink, sources: sfp_workflows::SourcePolicy, shutdown: CancellationToken) {
    loop {
        match fire(&pool, &link, sources).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "scheduled pipeline runs started"),
            Err(e) => tracing::warn!(error = %e, "starting scheduled pipeline runs failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn fire(pool: &PgPool, link: &EngineLink, sources: sfp_workflows::SourcePolicy) -> Result<usize, sqlx::Error> {
    let mut started = 0;
    loop {
        let mut tx = pool.begin().await?;
        let due: Option<Due> = sqlx::query_as(
            "SELECT s.id, s.cron, p.name, p.project, s.created_by FROM app.pipeline_schedule s \
             JOIN app.pipeline p ON p.id = s.pipeline_id WHERE s.next_run_at <= now() \
             ORDER BY s.next_run_at LIMIT 1 FOR UPDATE OF s SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(due) = due else { return Ok(started) };
        // A missed tick (the server was down) runs once, not once per tick.
        let next = next_after(&due.cron, Utc::now()).unwrap_or_else(|_| Utc::now() + chrono::TimeDelta::days(3650));
        let which = Which { project: Some(due.project.clone()), version: None };
        let outcome = match load(&mut tx, &due.name, &which).await {
            Ok((row, version, _, definition)) => {
                start_run(&mut tx, link, sources, &row, version, &definition, due.created_by).await.map(|(run, _)| run)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(run) => {
                sqlx::query(
                    "UPDATE app.pipeline_schedule SET next_run_at = $2, last_run_id = $3, last_run_at = now(), \
                       runs = runs + 1, last_error = NULL WHERE id = $1",
                )
                .bind(due.id)
                .bind(next)
                .bind(run)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                started += 1;
            }
            Err(e) => {
                // The run's rows go with the rollback; the schedule notes why and moves on.
                drop(tx);
                tracing::warn!(schedule = %due.id, pipeline = %due.name, error = %e, "a scheduled run did not start");
                sqlx::query("UPDATE app.pipeline_schedule SET next_run_at = $2, last_error = $3 WHERE id = $1")
                    .bind(due.id)
                    .bind(next)
                    .bind(e.to_string())
                    .execute(pool)
                    .await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_follows_the_expression() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:07:30Z").unwrap().with_timezone(&Utc);
        assert_eq!(next_after("0 2 * * *", at).unwrap().to_rfc3339(), "2026-12-02T02:00:00+00:00");
        assert_eq!(next_after("*/10 * * * * *", at).unwrap().to_rfc3339(), "2026-12-01T10:07:40+00:00");
        assert!(next_after("61 * * * *", at).is_err());
    }
}
