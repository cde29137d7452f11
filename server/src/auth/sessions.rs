//! Users, sessions and refresh tokens in the `auth` schema, the way GoTrue keeps them: a
//! session per sign-in, a chain of refresh tokens per session (each used once; a used one
//! presented again within a short grace period returns the same successor, later it revokes
//! the whole session as a likely theft), and sign-out deleting sessions so their access
//! tokens stop working at once.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::Role;

/// A used refresh token presented again within this long returns the same successor
/// (two tabs refreshing at once); after it, reuse revokes the session.
const REUSE_GRACE_SECS: i64 = 10;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: Option<String>,
    pub encrypted_password: Option<String>,
    pub aud: Option<String>,
    pub role: Option<String>,
    pub app_metadata: Option<Value>,
    pub user_metadata: Option<Value>,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub banned_until: Option<DateTime<Utc>>,
    pub is_anonymous: bool,
    /// The control plane role (owner or member), if the user has one.
    pub sfp_role: Option<String>,
}

impl User {
    pub fn sfp_role(&self) -> Option<Role> {
        self.sfp_role.as_deref().and_then(Role::parse)
    }

    pub fn is_banned(&self) -> bool {
        self.banned_until.is_some_and(|t| t > Utc::now())
    }

    /// GoTrue's user object, as supabase-js and supabase-py parse it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "aud": self.aud.clone().unwrap_or_else(|| "authenticated".into()),
            "role": self.role.clone().unwrap_or_else(|| "authenticated".into()),
            "email": self.email.clone().unwrap_or_default(),
            "phone": "",
            "email_confirmed_at": self.email_confirmed_at,
            "confirmed_at": self.email_confirmed_at,
            "last_sign_in_at": self.last_sign_in_at,
            "app_metadata": self.app_metadata.clone().unwrap_or_else(|| json!({})),
            "user_metadata": self.user_metadata.clone().unwrap_or_else(|| json!({})),
            "identities": [],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "is_anonymous": self.is_anonymous,
        })
    }
}

const USER_COLUMNS: &str = "u.id, u.email, u.encrypted_password, u.aud, u.role, u.raw_app_meta_data AS app_metadata, \
     u.raw_user_meta_data AS user_metadata, u.email_confirmed_at, u.last_sign_in_at, u.created_at, u.updated_at, \
     u.banned_until, u.is_anonymous, r.role AS sfp_role";

pub async fn user_by_email(pool: &PgPool, email: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM auth.users u LEFT JOIN app.user_role r ON r.user_id = u.id \
         WHERE lower(u.email) = lower($1) AND u.deleted_at IS NULL AND u.is_sso_user = false"
    )))
    .bind(email.trim())
    .fetch_optional(pool)
    .await
}

pub async fn user_by_id(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<User>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM auth.users u LEFT JOIN app.user_role r ON r.user_id = u.id \
         WHERE u.id = $1 AND u.deleted_at IS NULL"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[derive(sqlx::FromRow)]
struct UserInSession {
    #[sqlx(flatten)]
    user: User,
    session_active: bool,
}

/// A user and whether one of their sessions is active, in one round trip (every request
/// signed in with a JWT asks both).
pub async fn user_in_session(pool: &PgPool, id: Uuid, session: Option<Uuid>) -> sqlx::Result<Option<(User, bool)>> {
    let row: Option<UserInSession> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS}, ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM auth.sessions s WHERE s.id = $2            AND s.user_id = u.id AND (s.not_after IS NULL OR s.not_after > now()))) AS session_active          FROM auth.users u LEFT JOIN app.user_role r ON r.user_id = u.id WHERE u.id = $1 AND u.deleted_at IS NULL"
    )))
    .bind(id)
    .bind(session)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.user, r.session_active)))
}

/// Creates a user with a password (confirmed, since an owner or the instance creates it)
/// and its control plane role. Returns None when the e-mail address is taken.
pub async fn create_user(pool: &PgPool, email: &str, password_hash: &str, role: Role) -> sqlx::Result<Option<Uuid>> {
    insert_user(pool, email, password_hash, Some(role)).await
}

/// A user without a control plane role (GoTrue's admin API).
pub async fn create_user_without_role(pool: &PgPool, email: &str, password_hash: &str) -> sqlx::Result<Option<Uuid>> {
    insert_user(pool, email, password_hash, None).await
}

async fn insert_user(
    pool: &PgPool,
    email: &str,
    password_hash: &str,
    role: Option<Role>,
) -> sqlx::Result<Option<Uuid>> {
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at, \
           raw_app_meta_data, raw_user_meta_data, created_at, updated_at) \
         VALUES ('00000000-0000-0000-0000-000000000000', $1, 'authenticated', 'authenticated', $2, $3, now(), \
           '{\"provider\":\"email\",\"providers\":[\"email\"]}', '{}', now(), now()) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(email.trim())
    .bind(password_hash)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO auth.identities (provider_id, user_id, identity_data, provider, created_at, updated_at) \
         VALUES ($1, $1::uuid, jsonb_build_object('sub', $1, 'email', $2::text, 'email_verified', true), 'email', now(), now())",
    )
    .bind(id.to_string())
    .bind(email.trim())
    .execute(&mut *tx)
    .await?;
    if let Some(role) = role {
        sqlx::query("INSERT INTO app.user_role (user_id, role) VALUES ($1, $2)")
            .bind(id)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Some(id))
}

/// A new session: its id and first refresh token.
pub struct NewSession {
    pub session_id: Uuid,
    pub refresh_token: String,
    pub signed_in_at: DateTime<Utc>,
}

fn random_token() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
}

pub async fn start_session(
    pool: &PgPool,
    user_id: Uuid,
    user_agent: Option<&str>,
    ip: Option<std::net::IpAddr>,
) -> sqlx::Result<NewSession> {
    let mut tx = pool.begin().await?;
    let session_id = Uuid::new_v4();
    let signed_in_at: DateTime<Utc> = sqlx::query_scalar(
        "WITH s AS ( \
           INSERT INTO auth.sessions (id, user_id, created_at, updated_at, aal, user_agent, ip) \
           VALUES ($1, $2, now(), now(), 'aal1', $3, $4::inet) RETURNING created_at) \
         UPDATE auth.users SET last_sign_in_at = now(), updated_at = now() WHERE id = $2 \
         RETURNING (SELECT created_at FROM s)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(user_agent)
    .bind(ip.map(|i| i.to_string()))
    .fetch_one(&mut *tx)
    .await?;
    let refresh_token = random_token();
    sqlx::query(
        "INSERT INTO auth.refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, session_id) \
         VALUES ('00000000-0000-0000-0000-000000000000', $1, $2, false, now(), now(), $3)",
    )
    .bind(&refresh_token)
    .bind(user_id.to_string())
    .bind(session_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(NewSession { session_id, refresh_token, signed_in_at })
}

#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    NotFound,
    /// A used token presented after the grace period: the session is revoked.
    AlreadyUsed,
    SessionExpired,
}

pub struct Refreshed {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub refresh_token: String,
    pub signed_in_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    token: String,
    user_id: Option<String>,
    revoked: Option<bool>,
    updated_at: Option<DateTime<Utc>>,
    session_id: Option<Uuid>,
    not_after: Option<DateTime<Utc>>,
    session_created: Option<DateTime<Utc>>,
}

/// Exchanges a refresh token for the next one of its session.
pub async fn refresh(pool: &PgPool, presented: &str) -> sqlx::Result<Result<Refreshed, RefreshError>> {
    let mut tx = pool.begin().await?;
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT t.id, t.token, t.user_id, t.revoked, t.updated_at, t.session_id, s.not_after, s.created_at AS session_created \
         FROM auth.refresh_tokens t JOIN auth.sessions s ON s.id = t.session_id \
         WHERE t.token = $1 FOR UPDATE OF t, s",
    )
    .bind(presented)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(Err(RefreshError::NotFound)) };
    let (Some(session_id), Some(user_id)) =
        (row.session_id, row.user_id.as_deref().and_then(|u| Uuid::parse_str(u).ok()))
    else {
        return Ok(Err(RefreshError::NotFound));
    };
    let signed_in_at = row.session_created.unwrap_or_else(Utc::now);
    if row.not_after.is_some_and(|t| t <= Utc::now()) {
        return Ok(Err(RefreshError::SessionExpired));
    }
    if row.revoked.unwrap_or(false) {
        let recent = row.updated_at.is_some_and(|t| (Utc::now() - t).num_seconds() <= REUSE_GRACE_SECS);
        let successor: Option<String> = sqlx::query_scalar(
            "SELECT token FROM auth.refresh_tokens WHERE parent = $1 AND session_id = $2 AND revoked = false \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(&row.token)
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
        return match (recent, successor) {
            (true, Some(token)) => {
                tx.commit().await?;
                Ok(Ok(Refreshed { user_id, session_id, refresh_token: token, signed_in_at }))
            }
            _ => {
                // Reuse of an old token: whoever holds the chain may not be the user.
                sqlx::query("DELETE FROM auth.sessions WHERE id = $1").bind(session_id).execute(&mut *tx).await?;
                tx.commit().await?;
                tracing::warn!(%user_id, %session_id, "refresh token reused; session revoked");
                Ok(Err(RefreshError::AlreadyUsed))
            }
        };
    }
    let next = random_token();
    sqlx::query("UPDATE auth.refresh_tokens SET revoked = true, updated_at = now() WHERE id = $1")
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO auth.refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
         VALUES ('00000000-0000-0000-0000-000000000000', $1, $2, false, now(), now(), $3, $4)",
    )
    .bind(&next)
    .bind(user_id.to_string())
    .bind(&row.token)
    .bind(session_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE auth.sessions SET refreshed_at = now() AT TIME ZONE 'utc', updated_at = now() WHERE id = $1")
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ok(Refreshed { user_id, session_id, refresh_token: next, signed_in_at }))
}

/// Whether the session an access token names still exists (sign-out deletes it).
pub async fn session_is_active(pool: &PgPool, session_id: Uuid, user_id: Uuid) -> sqlx::Result<bool> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM auth.sessions WHERE id = $1 AND user_id = $2 AND (not_after IS NULL OR not_after > now())",
    )
    .bind(session_id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// Every session of the user (GoTrue's default).
    Global,
    /// This session only.
    Local,
    /// Every other session.
    Others,
}

pub async fn logout(pool: &PgPool, user_id: Uuid, session_id: Uuid, scope: LogoutScope) -> sqlx::Result<u64> {
    let done = match scope {
        LogoutScope::Global => sqlx::query("DELETE FROM auth.sessions WHERE user_id = $1").bind(user_id).execute(pool),
        LogoutScope::Local => sqlx::query("DELETE FROM auth.sessions WHERE id = $1 AND user_id = $2")
            .bind(session_id)
            .bind(user_id)
            .execute(pool),
        LogoutScope::Others => sqlx::query("DELETE FROM auth.sessions WHERE user_id = $1 AND id <> $2")
            .bind(user_id)
            .bind(session_id)
            .execute(pool),
    }
    .await?;
    Ok(done.rows_affected())
}
