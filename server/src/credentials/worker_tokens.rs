//! Worker tokens: what an `sfp-worker` shows the server to ask for step tokens. Random
//! (`sfp_wk_` and 40 characters), stored as a SHA-256, expiring, revocable. They open only
//! the worker routes: no task, org or credential of the API.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::app_tokens::hash;
use crate::vault::SecretString;

pub const PREFIX: &str = "sfp_wk_";

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerToken {
    pub id: Uuid,
    pub name: String,
    pub embedded: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Creates a worker token valid for `days`; returns it with the only copy of its secret.
pub async fn create(pool: &PgPool, name: &str, days: u32, embedded: bool) -> sqlx::Result<(WorkerToken, SecretString)> {
    let secret: String = rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    let token = SecretString::new(format!("{PREFIX}{secret}"));
    let row = sqlx::query_as(
        "INSERT INTO vault.worker_token (id, name, token_hash, embedded, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(days => $5)) \
         RETURNING id, name, embedded, created_at, expires_at, revoked_at, last_used_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(hash(token.expose()))
    .bind(embedded)
    .bind(days.max(1) as i32)
    .fetch_one(pool)
    .await?;
    Ok((row, token))
}

/// The token's id when it is known, unexpired and not revoked.
pub async fn authenticate(pool: &PgPool, token: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "UPDATE vault.worker_token SET last_used_at = now() \
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now() RETURNING id",
    )
    .bind(hash(token))
    .fetch_optional(pool)
    .await
}

/// Revokes the tokens earlier starts made for the embedded workers.
pub async fn revoke_embedded(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query("UPDATE vault.worker_token SET revoked_at = now() WHERE embedded AND revoked_at IS NULL")
        .execute(pool)
        .await?
        .rows_affected())
}

pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<WorkerToken>> {
    sqlx::query_as(
        "SELECT id, name, embedded, created_at, expires_at, revoked_at, last_used_at FROM vault.worker_token \
         ORDER BY created_at DESC",
    )
    .fetch_all(pool)
    .await
}

pub async fn revoke(pool: &PgPool, id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query("UPDATE vault.worker_token SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected()
        > 0)
}
