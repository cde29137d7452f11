//! Step tokens: a worker that runs a step gets one (showing its worker token, for a step the
//! engine says is running), exchanges it once for the step's credentials within a minute,
//! and releases it when the step ends, which revokes the access tokens it was given.
//! What a step gets follows from its task's stored data, never from the worker's request.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sfp_workflows::credentials::{OrgCredential, PlannedLogin, StepCredentials, StepToken, StepTokenRequest};
use sfp_workflows::pipeline::StepKind;
use sfp_workflows::{OrgLogin, StepPlan, TaskData, TaskType};
use uuid::Uuid;
use zeroize::Zeroize;

use super::Credentials;
use crate::auth::app_tokens::hash;
use crate::salesforce::{Actor, OrgError};
use crate::tasks::EngineLink;
use crate::vault::Access;

pub const PREFIX: &str = "sfp_st_";

#[derive(Debug, thiserror::Error)]
pub enum StepTokenError {
    #[error("task {0} does not exist")]
    UnknownTask(Uuid),
    #[error("step {0} is not a running step of this task ({1})")]
    NotRunning(Uuid, &'static str),
    #[error("a step token was issued for this step attempt already")]
    AlreadyIssued,
    #[error("the step token is unknown")]
    Unknown,
    #[error("the step token has expired")]
    Expired,
    #[error("the step token was used already")]
    Used,
    #[error("the step token was released")]
    Released,
    #[error("the engine is not connected")]
    NoEngine,
    #[error("the engine could not be asked: {0}")]
    Engine(String),
    #[error("{0}")]
    Org(#[from] OrgError),
    #[error("{0}")]
    Vault(#[from] crate::vault::VaultError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    task_id: Uuid,
    step_run_id: Uuid,
    worker_token_id: Option<Uuid>,
    credentials: serde_json::Value,
    expires_at: DateTime<Utc>,
    exchanged_at: Option<DateTime<Utc>>,
    released_at: Option<DateTime<Utc>>,
}

/// What a step token's release revokes.
#[derive(Serialize, Deserialize)]
struct Issued {
    login_url: String,
    access_token: String,
}

impl Drop for Issued {
    fn drop(&mut self) {
        self.access_token.zeroize();
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    pub released: bool,
    /// Access tokens revoked at Salesforce.
    pub revoked: usize,
}

/// The orgs a task's step is logged in to (from the stored task, not the worker).
pub fn planned_logins(task_type: TaskType, data: &serde_json::Value) -> Vec<PlannedLogin> {
    // The data was validated at submission; a task that no longer parses gets nothing.
    let Ok(parsed) = TaskData::parse(task_type, data, sfp_workflows::SourcePolicy { allow_local: true }) else {
        return Vec::new();
    };
    StepPlan::for_task(&parsed)
        .logins
        .into_iter()
        .filter_map(|l| match l {
            OrgLogin::Registered { alias, org } => Some(PlannedLogin { alias: alias.to_string(), username: org }),
            OrgLogin::LocalDevHub => None,
        })
        .collect()
}

/// A pipeline step's type, data and timeout, from the stored definition (checked again, so
/// that data referring to earlier steps' outputs yields its orgs, which are always fixed).
fn pipeline_step(
    definition: &serde_json::Value,
    req: &StepTokenRequest,
) -> Result<(TaskType, serde_json::Value, i32), StepTokenError> {
    let not_a_task = || StepTokenError::NotRunning(req.step_run_id, "the pipeline has no such task step");
    let checked = sfp_workflows::pipeline::from_value(definition)
        .and_then(|d| d.check(sfp_workflows::SourcePolicy { allow_local: true }))
        .map_err(|_| not_a_task())?;
    let at = checked
        .definition
        .steps
        .iter()
        .position(|s| req.step.as_deref() == Some(s.id.as_str()))
        .ok_or_else(not_a_task)?;
    let StepKind::Task { task_type, data, .. } = &checked.kinds[at] else { return Err(not_a_task()) };
    let timeout = checked.definition.steps[at]
        .timeout_seconds
        .unwrap_or_else(|| task_type.pool().default_timeout().as_secs()) as i32;
    Ok((*task_type, serde_json::to_value(data).unwrap_or_default(), timeout))
}

impl Credentials {
    /// Issues the token of one step attempt to the worker of `worker_token`.
    pub async fn issue_step_token(
        &self,
        link: Option<&EngineLink>,
        worker_token: Uuid,
        req: &StepTokenRequest,
    ) -> Result<StepToken, StepTokenError> {
        let (task_type, data, timeout_seconds) = self.owner_step(worker_token, req).await?;
        let link = link.ok_or(StepTokenError::NoEngine)?;
        let running = link
            .step_is_running(req.run_id, req.step_run_id, req.task_id)
            .await
            .map_err(|e| StepTokenError::Engine(e.to_string()))?;
        if !running {
            self.log_refusal(worker_token, req.task_id, "step token for a step that is not running").await;
            return Err(StepTokenError::NotRunning(req.step_run_id, "the engine does not report it running"));
        }
        let credentials = planned_logins(task_type, &data);
        let secret: String = rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
        let token = format!("{PREFIX}{secret}");
        let expires_at: DateTime<Utc> = Utc::now() + chrono::TimeDelta::seconds(self.step_token_ttl_secs as i64);
        let inserted = sqlx::query(
            "INSERT INTO vault.step_token (id, token_hash, task_id, run_id, step_run_id, attempt, worker_token_id, \
               credentials, expires_at, step_timeout_seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (step_run_id, attempt) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(hash(&token))
        .bind(req.task_id)
        .bind(req.run_id)
        .bind(req.step_run_id)
        .bind(req.attempt)
        .bind(worker_token)
        .bind(serde_json::to_value(&credentials).expect("logins serialise"))
        .bind(expires_at)
        .bind(timeout_seconds)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            self.log_refusal(worker_token, req.task_id, "a second step token for one step attempt").await;
            return Err(StepTokenError::AlreadyIssued);
        }
        Ok(StepToken { token, expires_at, credentials })
    }

    /// The step a worker asks for, from the control plane's own records: a task's (its type,
    /// data and timeout), or a pipeline run's step. The run must be the record's: run
    /// metadata and input are whatever the engine's caller wrote, and workers can trigger
    /// runs.
    async fn owner_step(
        &self,
        worker_token: Uuid,
        req: &StepTokenRequest,
    ) -> Result<(TaskType, serde_json::Value, i32), StepTokenError> {
        let mut known = false;
        for wait in [0u64, 200, 400, 800, 1600] {
            // The server records the run right after the engine accepts it: a fast worker can
            // ask first.
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            // A recurring task's runs come from the engine's cron; they are known by their
            // metadata (checked by the engine lookup) until the follower records them.
            let task: Option<(String, serde_json::Value, i32, bool)> = sqlx::query_as(
                "SELECT type, data, timeout_seconds, coalesce(run_id = $2 OR recurring OR EXISTS (SELECT 1 \
                   FROM app.task_instance i WHERE i.task_id = t.id AND i.run_id = $2), false) FROM app.task t WHERE id = $1",
            )
            .bind(req.task_id)
            .bind(req.run_id)
            .fetch_optional(&self.pool)
            .await?;
            // (The attempt is the engine's retry count, which also grows when a step is handed
            // to another worker, so it is not checked against the task's retries.)
            if let Some((kind, data, timeout, ours)) = task {
                known = true;
                if !ours {
                    continue;
                }
                let t: TaskType = kind.parse().map_err(|_| StepTokenError::UnknownTask(req.task_id))?;
                return Ok((t, data, timeout));
            }
            let pipeline: Option<(serde_json::Value, bool)> = sqlx::query_as(
                "SELECT v.definition, coalesce(r.run_id = $2, false) FROM app.pipeline_run r \
                 JOIN app.pipeline_version v ON v.pipeline_id = r.pipeline_id AND v.version = r.version WHERE r.id = $1",
            )
            .bind(req.task_id)
            .bind(req.run_id)
            .fetch_optional(&self.pool)
            .await?;
            // Neither yet: a pipeline run is committed right after the engine accepted it.
            let Some((definition, ours)) = pipeline else { continue };
            known = true;
            if !ours {
                continue;
            }
            return pipeline_step(&definition, req);
        }
        if !known {
            return Err(StepTokenError::UnknownTask(req.task_id));
        }
        self.log_refusal(worker_token, req.task_id, "step token for a run that is not the task's").await;
        Err(StepTokenError::NotRunning(req.step_run_id, "the run is not the task's"))
    }

    async fn log_refusal(&self, worker_token: Uuid, task: Uuid, detail: &str) {
        let entry = Access {
            actor_kind: "worker",
            actor_id: Some(worker_token),
            subject: format!("task:{task}"),
            purpose: "step-token".into(),
            task_id: Some(task),
            outcome: "refused",
            detail: Some(detail.into()),
        };
        self.vault.audit_detached(&self.pool, entry).await;
    }

    /// Exchanges a step token, once, for fresh sessions of the step's orgs.
    pub async fn exchange(&self, token: &str) -> Result<StepCredentials, StepTokenError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT id, task_id, step_run_id, worker_token_id, credentials, expires_at, exchanged_at, released_at \
             FROM vault.step_token WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(hash(token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(TokenRow {
            id,
            task_id: task,
            step_run_id: step,
            worker_token_id: worker,
            credentials: planned,
            expires_at,
            exchanged_at: exchanged,
            released_at: released,
        }) = row
        else {
            return Err(StepTokenError::Unknown);
        };
        let refused = if released.is_some() {
            Some(StepTokenError::Released)
        } else if exchanged.is_some() {
            Some(StepTokenError::Used)
        } else if expires_at <= Utc::now() {
            Some(StepTokenError::Expired)
        } else {
            None
        };
        if let Some(e) = refused {
            drop(tx);
            self.log_refusal(worker.unwrap_or_default(), task, &e.to_string()).await;
            return Err(e);
        }
        sqlx::query("UPDATE vault.step_token SET exchanged_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;

        let planned: Vec<PlannedLogin> = serde_json::from_value(planned).unwrap_or_default();
        let actor = Actor { kind: "worker", id: worker };
        let purpose = format!("step:{task}/{step}");
        let mut orgs = Vec::new();
        let mut issued = Vec::new();
        for login in planned {
            let session = match self.orgs.session(&login.username, actor, &purpose, Some(task)).await {
                Ok(s) => s,
                Err(e) => {
                    // Whatever was handed out already is revoked with the release.
                    self.keep_issued(id, &issued).await?;
                    return Err(e.into());
                }
            };
            issued.push(Issued {
                login_url: session.login_url.clone(),
                access_token: session.access_token.expose().clone(),
            });
            orgs.push(OrgCredential {
                alias: login.alias,
                username: session.username,
                org_id: session.org_id,
                instance_url: session.instance_url,
                login_url: session.login_url,
                access_token: session.access_token.expose().clone(),
            });
        }
        self.keep_issued(id, &issued).await?;
        Ok(StepCredentials { orgs })
    }

    async fn keep_issued(&self, token_id: Uuid, issued: &[Issued]) -> Result<(), StepTokenError> {
        if issued.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        let secret = self.vault.store_json(&mut conn, "step_sessions", &issued).await?;
        sqlx::query("UPDATE vault.step_token SET issued_secret = $2 WHERE id = $1")
            .bind(token_id)
            .bind(secret)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Ends a step's token: it cannot be exchanged any more, and the access tokens it gave
    /// out are revoked at Salesforce.
    pub async fn release(&self, token: &str) -> Result<Released, StepTokenError> {
        let row: Option<(Uuid, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT id, released_at FROM vault.step_token WHERE token_hash = $1")
                .bind(hash(token))
                .fetch_optional(&self.pool)
                .await?;
        let (id, released) = row.ok_or(StepTokenError::Unknown)?;
        if released.is_some() {
            return Ok(Released { released: false, revoked: 0 });
        }
        let revoked = self.release_by_id(id).await?;
        Ok(Released { released: true, revoked })
    }

    async fn release_by_id(&self, id: Uuid) -> Result<usize, StepTokenError> {
        let secret: Option<Option<Uuid>> = sqlx::query_scalar(
            "UPDATE vault.step_token SET released_at = now() WHERE id = $1 AND released_at IS NULL RETURNING issued_secret",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(Some(secret)) = secret else { return Ok(0) };
        let mut conn = self.pool.acquire().await?;
        let issued: Vec<Issued> = self.vault.read_json(&mut conn, secret).await?;
        let mut revoked = 0;
        for i in &issued {
            match self.orgs.client.revoke(&i.login_url, &i.access_token).await {
                Ok(()) => revoked += 1,
                Err(e) => tracing::warn!(step_token = %id, error = %e, "a step's access token could not be revoked"),
            }
        }
        sqlx::query("UPDATE vault.step_token SET issued_secret = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        self.vault.delete(&mut conn, secret).await?;
        Ok(revoked)
    }

    /// Releases the tokens of steps whose worker never did (it died, or lost the server):
    /// their task has finished, or they are older than the task's timeout and a margin.
    pub async fn release_stale(&self) -> Result<usize, StepTokenError> {
        let stale: Vec<Uuid> = sqlx::query_scalar(
            "SELECT s.id FROM vault.step_token s LEFT JOIN app.task t ON t.id = s.task_id \
             WHERE s.released_at IS NULL AND (t.status IN ('completed', 'failed', 'cancelled') \
               OR s.issued_at + make_interval(secs => s.step_timeout_seconds + 300) < now()) \
             LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        let n = stale.len();
        for id in stale {
            self.release_by_id(id).await?;
        }
        Ok(n)
    }
}
