//! Following tasks: dispatch what is waiting for the engine, bring each task's state in
//! line with its run (one paged run-list call covers every open task), fetch results of
//! runs that finished, and stream progress of runs that are running.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sfp_protocol::pb;
use sfp_workflows::Progress;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::link::{EngineLink, LinkError, RunRow};
use super::record::{COLUMNS, TaskRow, status_of_run};
use super::{Tasks, error_json, is_final};

const PAGE: i64 = 500;
const MAX_PAGES: i64 = 20;

#[derive(sqlx::FromRow)]
struct Open {
    id: Uuid,
    task_type: String,
    started_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    run_id: Option<Uuid>,
    status: String,
    recurring: bool,
    since: DateTime<Utc>,
}

pub struct Follower {
    tasks: Tasks,
    link: EngineLink,
    progress: HashMap<Uuid, JoinHandle<()>>,
    open: usize,
}

impl Follower {
    pub fn new(tasks: Tasks, link: EngineLink) -> Self {
        Self { tasks, link, progress: HashMap::new(), open: 0 }
    }

    pub fn has_open(&self) -> bool {
        self.open > 0
    }

    pub async fn stop(self) {
        for (_, h) in self.progress {
            h.abort();
        }
    }

    pub async fn tick(&mut self) -> Result<(), LinkError> {
        self.dispatch_waiting().await;
        self.progress.retain(|_, h| !h.is_finished());
        let open: Vec<Open> = sqlx::query_as(
            "SELECT t.id, t.type AS task_type, t.started_at, t.created_at, t.run_id, t.status, t.recurring, \
                    COALESCE((SELECT max(i.created_at) FROM app.task_instance i WHERE i.task_id = t.id), t.created_at) AS since \
             FROM app.task t WHERE t.dispatched_at IS NOT NULL AND (t.status IN ('pending', 'active') OR t.recurring) \
             ORDER BY t.created_at LIMIT 5000",
        )
        .fetch_all(&self.tasks.pool)
        .await
        .map_err(db)?;
        self.open = open.len();
        if open.is_empty() {
            return Ok(());
        }
        let since = open.iter().map(|o| o.since).min().unwrap_or_else(Utc::now) - chrono::Duration::minutes(1);
        let by_task: HashMap<Uuid, &Open> = open.iter().map(|o| (o.id, o)).collect();
        let mut page = 0;
        loop {
            let (runs, pages) = self.link.runs_since(since, None, page * PAGE, PAGE).await?;
            for run in &runs {
                if let Some(task) = run.task_id.and_then(|t| by_task.get(&t)) {
                    self.apply(task, run).await?;
                }
            }
            page += 1;
            if page >= pages || page >= MAX_PAGES {
                break;
            }
        }
        Ok(())
    }

    async fn dispatch_waiting(&self) {
        let waiting: Vec<TaskRow> = match sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app.task WHERE dispatched_at IS NULL AND status = 'pending' \
             AND updated_at < now() - interval '2 seconds' ORDER BY created_at LIMIT 50"
        )))
        .fetch_all(&self.tasks.pool)
        .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read tasks waiting for dispatch");
                return;
            }
        };
        for task in waiting {
            match self.tasks.dispatch(&task).await {
                Ok(()) => tracing::info!(task = %task.id, "task dispatched after a retry"),
                Err(e) => {
                    tracing::debug!(task = %task.id, error = %e, "task still waiting for the engine");
                    return;
                }
            }
        }
    }

    async fn apply(&mut self, task: &Open, run: &RunRow) -> Result<(), LinkError> {
        let status = status_of_run(&run.status);
        if task.recurring {
            let known: Option<String> =
                sqlx::query_scalar("SELECT status FROM app.task_instance WHERE task_id = $1 AND run_id = $2")
                    .bind(task.id)
                    .bind(run.run_id)
                    .fetch_optional(&self.tasks.pool)
                    .await
                    .map_err(db)?;
            if known.as_deref() == Some(status) || known.as_deref().is_some_and(is_final) {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO app.task_instance (task_id, run_id, status, created_at, finished_at) \
                 VALUES ($1, $2, $3, COALESCE($4, now()), CASE WHEN $5 THEN now() END) \
                 ON CONFLICT (task_id, run_id) DO UPDATE SET status = EXCLUDED.status, finished_at = EXCLUDED.finished_at",
            )
            .bind(task.id)
            .bind(run.run_id)
            .bind(status)
            .bind(run.created_at)
            .bind(is_final(status))
            .execute(&self.tasks.pool)
            .await
            .map_err(db)?;
            // The task shows its latest instance.
            let latest: Option<Uuid> = sqlx::query_scalar(
                "SELECT run_id FROM app.task_instance WHERE task_id = $1 ORDER BY created_at DESC, run_id DESC LIMIT 1",
            )
            .bind(task.id)
            .fetch_optional(&self.tasks.pool)
            .await
            .map_err(db)?;
            if latest != Some(run.run_id) {
                return Ok(());
            }
        } else if task.status == status && task.run_id == Some(run.run_id) {
            if status == "active" {
                self.follow_progress(task.id, run.run_id);
            }
            return Ok(());
        }
        let (result, error) = if is_final(status) {
            let d = self.link.details(run.run_id).await?;
            let error = d
                .error
                .as_deref()
                .map(error_json)
                .or_else(|| (status == "failed").then(|| error_json("the run failed without an error message")));
            (d.output, error)
        } else {
            (None, None)
        };
        let guard = if task.recurring { "true" } else { "status IN ('pending', 'active')" };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE app.task SET run_id = $2, status = $3, result = $4, error = $5, \
               progress = CASE WHEN $3 = 'completed' THEN 100 WHEN $3 = 'pending' THEN 0 ELSE progress END, \
               started_at = CASE WHEN $3 = 'pending' THEN started_at ELSE COALESCE(started_at, now()) END, \
               finished_at = CASE WHEN $3 IN ('completed', 'failed', 'cancelled') THEN now() END, updated_at = now() \
             WHERE id = $1 AND {guard}"
        )))
        .bind(task.id)
        .bind(run.run_id)
        .bind(status)
        .bind(result)
        .bind(error)
        .execute(&self.tasks.pool)
        .await
        .map_err(db)?;
        tracing::info!(task = %task.id, run = %run.run_id, status, "task state");
        if is_final(status) {
            let since = task.started_at.unwrap_or(task.created_at);
            self.tasks.metrics.observe(
                &task.task_type,
                status,
                (Utc::now() - since).num_milliseconds() as f64 / 1000.0,
            );
        }
        if status == "active" {
            self.follow_progress(task.id, run.run_id);
        }
        Ok(())
    }

    fn follow_progress(&mut self, task_id: Uuid, run_id: Uuid) {
        if self.progress.contains_key(&run_id) {
            return;
        }
        let pool = self.tasks.pool.clone();
        let client = self.link.client().clone();
        let handle = tokio::spawn(async move {
            let request = pb::SubscribeToWorkflowEventsRequest {
                workflow_run_id: Some(run_id.to_string()),
                ..Default::default()
            };
            let Ok(stream) = client.dispatcher().subscribe_to_workflow_events(request).await else { return };
            let mut stream = stream.into_inner();
            let mut last: Option<(u8, String)> = None;
            while let Some(Ok(event)) = stream.next().await {
                if event.hangup {
                    break;
                }
                if event.event_type != pb::ResourceEventType::Stream as i32 {
                    continue;
                }
                let Some(p) = Progress::parse(event.event_payload.as_bytes()) else { continue };
                if last.as_ref() == Some(&(p.percent, p.message.clone())) {
                    continue;
                }
                last = Some((p.percent, p.message.clone()));
                let message: String = p.message.chars().take(500).collect();
                let _ = sqlx::query(
                    "UPDATE app.task SET progress = GREATEST(progress, $2), progress_message = $3, \
                       status = 'active', started_at = COALESCE(started_at, now()), updated_at = now() \
                     WHERE id = $1 AND status IN ('pending', 'active') AND run_id = $4",
                )
                .bind(task_id)
                .bind(i32::from(p.percent.min(99)))
                .bind(message)
                .bind(run_id)
                .execute(&pool)
                .await;
            }
        });
        self.progress.insert(run_id, handle);
    }
}

fn db(e: sqlx::Error) -> LinkError {
    LinkError::Unexpected(format!("database: {e}"))
}
