//! What the data APIs share: pages of keyed lists (`?limit=&cursor=`, the cursor being the
//! last key of the previous page), literal prefixes for `LIKE`, the size and character
//! limits of stored JSON, and the refusal for callers that may only read.

use axum::http::StatusCode;
use serde_json::Value;

use sqlx::Postgres;

use super::error::{ApiError, ApiResult};
use crate::auth::Caller;

/// A page size between 1 and 1000 (100 when not given).
pub fn page_limit(limit: Option<i64>) -> ApiResult<i64> {
    let limit = limit.unwrap_or(100);
    if (1..=1000).contains(&limit) { Ok(limit) } else { Err(ApiError::bad_request("limit must be between 1 and 1000")) }
}

/// `prefix%` with the prefix's own `%`, `_` and `\` taken literally.
pub fn like_prefix(prefix: &str) -> String {
    format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

/// Rows fetched with `LIMIT limit + 1`: the page, and the cursor of the next one if there is more.
pub fn split_page<T>(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(cursor_of) } else { None };
    (rows, next)
}

/// A JSON value to store: at most `max_bytes` of JSON text (413 above, naming the limit),
/// and no U+0000, which PostgreSQL cannot store in jsonb.
pub fn check_stored_json(value: &Value, max_bytes: usize, what: &str) -> ApiResult<()> {
    let text = value.to_string();
    if text.len() > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the {what} is {} bytes of JSON; the limit is {max_bytes}", text.len()),
        ));
    }
    if text.contains("\\u0000") {
        return Err(ApiError::bad_request(format!("the {what} contains the character U+0000, which cannot be stored")));
    }
    Ok(())
}

/// A plain name: letters, digits and `. _ -`, starting with a letter or digit (a document
/// key's segment, a collection, an environment), at most `max` characters.
pub fn is_plain_name(s: &str, max: usize) -> bool {
    s.len() <= max
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// What a write refused by row-level security answers: only owners and application tokens write.
pub fn writers_only() -> String {
    "Forbidden - Requires role: owner, application".into()
}

/// The text of [`CALLER_MAY_READ`] up to the user's id.
macro_rules! may_read_before_the_id {
    () => {
        "EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = "
    };
}

/// The data stores' read policy (`kv_select`, `doc_select`: everyone with a role on the
/// instance reads) for the user whose id is `$1`, as a condition inside the statement. The
/// server's role reads `app.user_role` itself, so this costs one index probe that PostgreSQL
/// makes once per statement, where a policy-helper call (SECURITY DEFINER, its own settings)
/// cost more than the read.
pub const CALLER_MAY_READ: &str = concat!(may_read_before_the_id!(), "$1)");

/// [`CALLER_MAY_READ`] in a statement being built, with `user_id` bound where it goes.
pub fn push_caller_may_read(q: &mut sqlx::QueryBuilder<sqlx::Postgres>, user_id: uuid::Uuid) {
    q.push(may_read_before_the_id!()).push_bind(user_id).push(")");
}

/// For point reads of the data stores (one key): the row only if the caller may read, in
/// one statement outside a transaction. `$1` of `sql` is the caller's user id; the statement
/// must say `AND {CALLER_MAY_READ}`. Without a row, the decision is asked again to tell 403
/// from 404.
pub async fn read_one<T>(
    reads: &sfp_postgres::StatementPool,
    caller: &Caller,
    query: sqlx::query::QueryAs<'_, Postgres, T, sqlx::postgres::PgArguments>,
) -> ApiResult<Option<T>>
where
    T: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let mut conn = reads.acquire().await?;
    let row = query.fetch_optional(&mut *conn).await;
    conn.settle(&row);
    if let Some(row) = row? {
        return Ok(Some(row));
    }
    let allowed = caller_may_read(&mut *conn, caller).await;
    conn.settle(&allowed);
    if allowed? { Ok(None) } else { Err(reader_refused()) }
}

/// The data stores' read policy for `caller`: 403 unless they have a role on the instance.
pub async fn may_read(pool: &sqlx::PgPool, caller: &Caller) -> ApiResult<()> {
    if caller_may_read(pool, caller).await? { Ok(()) } else { Err(reader_refused()) }
}

/// Whether the read policy lets `caller` read (one statement).
async fn caller_may_read<'e>(db: impl sqlx::PgExecutor<'e>, caller: &Caller) -> sqlx::Result<bool> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {CALLER_MAY_READ}")))
        .bind(caller.user_id)
        .fetch_one(db)
        .await
}

fn reader_refused() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden - Requires role: owner, member, application")
}

/// For the data stores' filtered reads (prefix, JSON filters): their read policy does not
/// depend on the row (everyone with a role on the instance reads), yet under row-level
/// security PostgreSQL may not use an index for an operator that is not leakproof (`LIKE`,
/// `@>`), so a selective query over a million documents became a full scan. This makes the
/// policy's decision once, in the database, and runs the rest of the transaction's reads as
/// `service_role`.
pub async fn read_as_reader(tx: &mut sqlx::PgConnection) -> ApiResult<()> {
    let allowed: bool = sqlx::query_scalar("SELECT private.has_instance_role()").fetch_one(&mut *tx).await?;
    if !allowed {
        return Err(reader_refused());
    }
    sqlx::query("SELECT set_config('role', 'service_role', true)").execute(&mut *tx).await?;
    Ok(())
}
