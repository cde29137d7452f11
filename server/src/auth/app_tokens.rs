//! Application tokens: for CI pipelines and workers. Random (`sfp_at_` and 40 characters),
//! shown once, kept only as a SHA-256, always expiring, never renewed, revocable. A token acts
//! for the user who made it and is never more than that user: it stops working when the user
//! is deleted, and it loses what the user loses.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::Role;

pub const PREFIX: &str = "sfp_at_";

pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    /// The first characters, to recognise a token without revealing it.
    pub prefix: String,
    pub created_by: Uuid,
    pub created_by_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    pub fn status(&self) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= Utc::now() {
            "expired"
        } else {
            "active"
        }
    }
}

const COLUMNS: &str = "t.id, t.name, t.prefix, t.created_by, u.email AS created_by_email, t.created_at, t.expires_at, \
     t.revoked_at, t.last_used_at";

/// Creates a token valid for `days`; returns it with the only copy of its secret.
pub async fn create(pool: &PgPool, creator: Uuid, name: &str, days: u32) -> sqlx::Result<(TokenInfo, String)> {
    let secret: String = rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    let token = format!("{PREFIX}{secret}");
    let id = Uuid::now_v7();
    let prefix: String = token.chars().take(PREFIX.len() + 4).collect();
    sqlx::query(
        "INSERT INTO app.application_token (id, name, token_hash, prefix, created_by, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(days => $6))",
    )
    .bind(id)
    .bind(name)
    .bind(hash(&token))
    .bind(&prefix)
    .bind(creator)
    .bind(days as i32)
    .execute(pool)
    .await?;
    let info = get(pool, id).await?.expect("the token just inserted");
    Ok((info, token))
}

pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<TokenInfo>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM app.application_token t JOIN auth.users u ON u.id = t.created_by WHERE t.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<TokenInfo>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM app.application_token t JOIN auth.users u ON u.id = t.created_by ORDER BY t.created_at DESC"
    )))
    .fetch_all(pool)
    .await
}

/// Revokes a token named by its id or by the token itself. Returns whether one was active.
pub async fn revoke(pool: &PgPool, id_or_token: &str) -> sqlx::Result<Option<TokenInfo>> {
    let id: Option<Uuid> = match Uuid::parse_str(id_or_token) {
        Ok(id) => Some(id),
        Err(_) => {
            sqlx::query_scalar("SELECT id FROM app.application_token WHERE token_hash = $1")
                .bind(hash(id_or_token))
                .fetch_optional(pool)
                .await?
        }
    };
    let Some(id) = id else { return Ok(None) };
    sqlx::query("UPDATE app.application_token SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    get(pool, id).await
}

/// Who a presented application token acts for.
#[derive(Debug, Clone)]
pub struct TokenHolder {
    pub token_id: Uuid,
    pub user_id: Uuid,
    pub email: Option<String>,
    /// The creator's role now (the token never exceeds it).
    pub creator_role: Role,
    pub expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Presented {
    id: Uuid,
    created_by: Uuid,
    email: Option<String>,
    role: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
}

/// Looks up a presented token; None when unknown, revoked, expired, or its creator is gone.
pub async fn authenticate(pool: &PgPool, token: &str) -> sqlx::Result<Option<TokenHolder>> {
    let found: Option<Presented> = sqlx::query_as(
        "SELECT t.id, t.created_by, u.email, r.role, t.last_used_at, t.expires_at FROM app.application_token t \
         JOIN auth.users u ON u.id = t.created_by AND u.deleted_at IS NULL \
         LEFT JOIN app.user_role r ON r.user_id = u.id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now()",
    )
    .bind(hash(token))
    .fetch_optional(pool)
    .await?;
    let Some(found) = found else { return Ok(None) };
    let Some(creator_role) = found.role.as_deref().and_then(Role::parse) else { return Ok(None) };
    // Last use to the minute: no write on every request.
    if found.last_used_at.is_none_or(|t| (Utc::now() - t).num_seconds() >= 60) {
        sqlx::query("UPDATE app.application_token SET last_used_at = now() WHERE id = $1")
            .bind(found.id)
            .execute(pool)
            .await?;
    }
    Ok(Some(TokenHolder {
        token_id: found.id,
        user_id: found.created_by,
        email: found.email,
        creator_role,
        expires_at: found.expires_at,
    }))
}
