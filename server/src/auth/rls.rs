//! Queries under row-level security: a transaction in which the caller's claims are set the
//! way PostgREST sets them (`role` = `authenticated`, `request.jwt.claims` = the claims), so
//! the tables' policies decide which rows exist. Both settings are local to the transaction
//! and end with it. An application token runs with its creator's identity: it sees what the
//! creator sees, never more.
//!
//! The hottest statements do not run this way: point reads of the data stores say the read
//! policy in the statement (`api::paging::CALLER_MAY_READ`), and the key-value upsert and
//! the document write are functions (`private.*_for`, migration 20261201000021, executable
//! only by the server's own role) that make the write policy's decision once; a test holds
//! those decisions to the policies'.

use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};

use axum::http::StatusCode;

use super::{Caller, CallerKind};
use crate::api::error::ApiError;

pub async fn begin_as(pool: &PgPool, caller: &Caller) -> sqlx::Result<Transaction<'static, Postgres>> {
    // BEGIN and the settings travel in one round trip (a simple-query batch, which takes no
    // parameters), with the claims as a dollar-quoted literal: no escaping exists inside one,
    // so only the quote tag itself must not occur in the text (else: two round trips).
    let text = json!({
        "sub": caller.user_id,
        "role": "authenticated",
        "email": caller.email,
        "sfp_role": caller.role.map(|r| r.as_str()),
        "token_id": caller.token_id,
        "session_id": caller.session_id,
        "is_application": caller.kind == CallerKind::Application,
    })
    .to_string();
    const TAG: &str = "$sfp_claims$";
    if text.contains(TAG) {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)")
            .bind(text)
            .execute(&mut *tx)
            .await?;
        return Ok(tx);
    }
    let statement = format!(
        "BEGIN; SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', {TAG}{text}{TAG}, true)"
    );
    pool.begin_with(sqlx::AssertSqlSafe(statement)).await
}

/// Whether a database error is a row-level security refusal (insufficient privilege).
pub fn is_refused(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42501"))
}

/// Whether a database error is a unique violation.
pub fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// The answer to a write that failed: 409 for a duplicate, 403 for a row the policies
/// refuse, the database error otherwise.
pub fn write_error(e: sqlx::Error, duplicate: impl FnOnce() -> String, refused: impl FnOnce() -> String) -> ApiError {
    if is_duplicate(&e) {
        ApiError::new(StatusCode::CONFLICT, "conflict", duplicate())
    } else if is_refused(&e) {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", refused())
    } else {
        e.into()
    }
}
