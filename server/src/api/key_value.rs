//! `/sfp/api/key-value`: quick flags and counters for pipelines, as sfp server documents them
//! (create that refuses an existing key, upsert, get, update, delete), plus what such a store
//! is expected to do: a version per key for compare-and-set (`expectedVersion`), atomic
//! increments, TTLs (an expired key is gone for every read at once; the sweep deletes it
//! later), tags, and listing by prefix or tag a page at a time. Writes run under row-level
//! security (owners and their application tokens write); reads make the read policy's
//! decision for the caller in the database, in the same statement for a single key.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::paging::{
    CALLER_MAY_READ, check_stored_json, like_prefix, page_limit, read_as_reader, read_one, split_page, writers_only,
};
use super::write_batch::Batched;
use crate::auth::access::Authenticated;
use crate::auth::rls::{self, begin_as};
use crate::state::AppState;

/// The largest value, as JSON text.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
const MAX_KEY: usize = 512;
const MAX_TAGS: usize = 32;
const MAX_TTL_SECONDS: i64 = 10 * 365 * 86_400;

#[derive(sqlx::FromRow)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub version: i64,
    pub tags: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn entry_json(e: &Entry) -> Value {
    json!({
        "key": e.key,
        "value": e.value,
        "version": e.version,
        "tags": e.tags,
        "expiresAt": e.expires_at,
        "createdAt": e.created_at,
        "updatedAt": e.updated_at,
    })
}

const COLUMNS: &str = "key, value, version, tags, expires_at, created_at, updated_at";

/// Rows that exist for readers: not expired.
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

/// A plain upsert (no expected version), written alone or in a batch.
pub struct Upsert {
    pub user_id: uuid::Uuid,
    pub key: String,
    pub value: Value,
    /// `None` keeps the tags of an existing key.
    pub tags: Option<Vec<String>>,
    pub ttl: Option<f64>,
}

impl Batched for Upsert {
    type Output = Entry;

    fn order_key(&self) -> &str {
        &self.key
    }

    async fn one(&self, conn: &mut sqlx::PgConnection) -> Result<Entry, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM private.kv_upsert_for($1, $2, $3, $4, $5)")))
            .bind(self.user_id)
            .bind(&self.key)
            .bind(&self.value)
            .bind(&self.tags)
            .bind(self.ttl)
            .fetch_one(conn)
            .await
    }

    /// One statement calling the single upsert for each write in turn (a function that is
    /// volatile sees what the calls before it wrote, so two writes to a key both count).
    async fn many(items: &[&Self], conn: &mut sqlx::PgConnection) -> Result<Vec<Entry>, sqlx::Error> {
        let uids: Vec<uuid::Uuid> = items.iter().map(|u| u.user_id).collect();
        let keys: Vec<&str> = items.iter().map(|u| u.key.as_str()).collect();
        let values: Vec<&Value> = items.iter().map(|u| &u.value).collect();
        let tags: Vec<Option<Value>> = items.iter().map(|u| u.tags.as_ref().map(|t| json!(t))).collect();
        let ttls: Vec<Option<f64>> = items.iter().map(|u| u.ttl).collect();
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.* FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::float8[]) \
               WITH ORDINALITY AS b (uid, k, v, t, ttl, i) \
             CROSS JOIN LATERAL (SELECT {COLUMNS} FROM private.kv_upsert_for(b.uid, b.k, b.v, \
               CASE WHEN b.t IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(b.t)) END, b.ttl)) AS r \
             ORDER BY b.i"
        )))
        .bind(uids)
        .bind(keys)
        .bind(values)
        .bind(tags)
        .bind(ttls)
        .fetch_all(conn)
        .await
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEntry {
    key: String,
    value: Value,
    #[serde(default)]
    ttl_seconds: Option<i64>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// Upsert only: write only if the key is at this version (0: only if it does not exist).
    #[serde(default)]
    expected_version: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Update {
    #[serde(default)]
    value: Option<Value>,
    /// A new TTL from now; `null` keeps the current expiry, 0 removes it.
    #[serde(default)]
    ttl_seconds: Option<i64>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    expected_version: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Increment {
    key: String,
    #[serde(default = "one")]
    by: i64,
    /// Applies when the increment creates the key.
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    prefix: Option<String>,
    tag: Option<String>,
    limit: Option<i64>,
    /// The last key of the previous page.
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteQuery {
    expected_version: Option<i64>,
}

fn check_key(key: &str) -> ApiResult<()> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY
        && key.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "._:/@-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "key {key:?} is not valid: 1 to {MAX_KEY} characters, letters, digits and . _ : / @ -, starting with a letter or digit"
        )))
    }
}

fn check_value(value: &Value) -> ApiResult<()> {
    check_stored_json(value, MAX_VALUE_BYTES, "value")
}

fn check_tags(tags: &Option<Vec<String>>) -> ApiResult<()> {
    let Some(tags) = tags else { return Ok(()) };
    if tags.len() > MAX_TAGS {
        return Err(ApiError::bad_request(format!("at most {MAX_TAGS} tags")));
    }
    match tags.iter().find(|t| t.is_empty() || t.len() > 64 || t.contains('\0')) {
        Some(bad) => Err(ApiError::bad_request(format!("tag {bad:?} is not valid: 1 to 64 characters"))),
        None => Ok(()),
    }
}

fn check_ttl(ttl: Option<i64>) -> ApiResult<()> {
    match ttl {
        Some(t) if !(0..=MAX_TTL_SECONDS).contains(&t) => {
            Err(ApiError::bad_request(format!("ttlSeconds must be between 0 and {MAX_TTL_SECONDS}")))
        }
        _ => Ok(()),
    }
}

fn version_conflict(key: &str, expected: i64, current: Option<i64>) -> ApiError {
    let message = match current {
        Some(v) => format!("key {key:?} is at version {v}, not {expected}"),
        None => format!("key {key:?} does not exist, so it is not at version {expected}"),
    };
    ApiError::new(StatusCode::CONFLICT, "version_conflict", message).with_current_version(current.unwrap_or(0))
}

/// Expired rows are deleted before a write that would otherwise collide with them.
async fn drop_expired(tx: &mut sqlx::PgConnection, key: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM app.kv_entry WHERE key = $1 AND expires_at <= now()").bind(key).execute(tx).await?;
    Ok(())
}

async fn current_version(tx: &mut sqlx::PgConnection, key: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT version FROM app.kv_entry WHERE key = $1 AND {LIVE}")))
        .bind(key)
        .fetch_optional(tx)
        .await
}

/// `POST /sfp/api/key-value`: creates a key; 409 if it exists (set-if-absent).
#[utoipa::path(post, path = "/key-value", tag = "key-value", security(("bearer" = [])), request_body = Object, responses(
    (status = 201, description = "Created", body = Object),
    (status = 409, description = "The key exists", body = ErrorBody),
    (status = 400, description = "Invalid key, tags or TTL", body = ErrorBody),
    (status = 413, description = "The value is larger than 256 KiB", body = ErrorBody),
    (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewEntry>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_key(&body.key)?;
    check_value(&body.value)?;
    check_tags(&body.tags)?;
    check_ttl(body.ttl_seconds)?;
    if body.expected_version.is_some() {
        return Err(ApiError::bad_request("expectedVersion belongs to upsert and update; create never overwrites"));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    drop_expired(&mut tx, &body.key).await.map_err(|e| rls::write_error(e, String::new, writers_only))?;
    let entry: Entry = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO app.kv_entry (key, value, tags, expires_at, created_by, updated_by) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), auth.uid(), auth.uid()) RETURNING {COLUMNS}"
    )))
    .bind(&body.key)
    .bind(&body.value)
    .bind(body.tags.unwrap_or_default())
    .bind(body.ttl_seconds.filter(|t| *t > 0).map(|t| t as f64))
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| rls::write_error(e, || format!("key {:?} exists", body.key), writers_only))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(entry_json(&entry))))
}

/// `POST /sfp/api/key-value/upsert`: creates or replaces; with `expectedVersion`, only if the
/// key is at that version (0: only if it does not exist).
#[utoipa::path(post, path = "/key-value/upsert", tag = "key-value", security(("bearer" = [])), request_body = Object, responses(
    (status = 200, description = "Written", body = Object),
    (status = 409, description = "Not at the expected version (the body has `currentVersion`)", body = ErrorBody),
    (status = 400, description = "Invalid key, tags or TTL", body = ErrorBody),
    (status = 413, description = "The value is larger than 256 KiB", body = ErrorBody),
))]
pub async fn upsert(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewEntry>,
) -> ApiResult<Json<Value>> {
    check_key(&body.key)?;
    check_value(&body.value)?;
    check_tags(&body.tags)?;
    check_ttl(body.ttl_seconds)?;
    let ttl = body.ttl_seconds.filter(|t| *t > 0).map(|t| t as f64);
    let Some(expected) = body.expected_version else {
        // The plain upsert: one statement that makes the write policy's decision (migration
        // 20261201000021) and writes; an expired row starts anew in it. Concurrent upserts
        // share a transaction (`write_batch`).
        let upsert = Upsert { user_id: caller.user_id, key: body.key, value: body.value, tags: body.tags, ttl };
        let entry = state.writes.kv.write(upsert).await.map_err(|e| rls::write_error(e, String::new, writers_only))?;
        return Ok(Json(entry_json(&entry)));
    };
    let mut tx = begin_as(&state.pool, &caller).await?;
    drop_expired(&mut tx, &body.key).await.map_err(|e| rls::write_error(e, String::new, writers_only))?;
    let written: Option<Entry> = match expected {
        // Not there yet: an insert that does nothing if the key exists.
        0 => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO app.kv_entry (key, value, tags, expires_at, created_by, updated_by) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), auth.uid(), auth.uid()) \
             ON CONFLICT (key) DO NOTHING RETURNING {COLUMNS}"
            )))
            .bind(&body.key)
            .bind(&body.value)
            .bind(body.tags.clone().unwrap_or_default())
            .bind(ttl)
            .fetch_optional(&mut *tx)
            .await
        }
        expected => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE app.kv_entry SET value = $2, tags = coalesce($3, tags), \
               expires_at = CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $4) END, \
               version = version + 1, updated_by = auth.uid(), updated_at = now() \
             WHERE key = $1 AND version = $5 RETURNING {COLUMNS}"
            )))
            .bind(&body.key)
            .bind(&body.value)
            .bind(body.tags.clone())
            .bind(ttl)
            .bind(expected)
            .fetch_optional(&mut *tx)
            .await
        }
    }
    .map_err(|e| rls::write_error(e, String::new, writers_only))?;
    let Some(entry) = written else {
        let current = current_version(&mut tx, &body.key).await?;
        return Err(version_conflict(&body.key, expected, current));
    };
    tx.commit().await?;
    Ok(Json(entry_json(&entry)))
}

/// `GET /sfp/api/key-value/{key}`
#[utoipa::path(get, path = "/key-value/{key}", tag = "key-value", security(("bearer" = [])),
    params(("key" = String, Path, description = "The key; may contain `/`")), responses(
    (status = 200, description = "The entry", body = Object),
    (status = 404, description = "No such key (or it expired)", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(key): Path<String>,
) -> ApiResult<Json<Value>> {
    check_key(&key)?;
    let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM app.kv_entry WHERE key = $2 AND {LIVE} AND {CALLER_MAY_READ}"
    )))
    .bind(caller.user_id)
    .bind(&key);
    let entry: Option<Entry> = read_one(&state.reads, &caller, query).await?;
    let entry = entry.ok_or_else(|| ApiError::not_found(format!("no key {key:?}")))?;
    Ok(Json(entry_json(&entry)))
}

/// `PUT /sfp/api/key-value/{key}`: changes the value, tags or TTL of an existing key.
#[utoipa::path(put, path = "/key-value/{key}", tag = "key-value", security(("bearer" = [])), request_body = Object,
    params(("key" = String, Path, description = "The key; may contain `/`")), responses(
    (status = 200, description = "Updated", body = Object),
    (status = 404, description = "No such key", body = ErrorBody),
    (status = 409, description = "Not at the expected version", body = ErrorBody),
))]
pub async fn update(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<Update>,
) -> ApiResult<Json<Value>> {
    check_key(&key)?;
    if let Some(value) = &body.value {
        check_value(value)?;
    }
    check_tags(&body.tags)?;
    check_ttl(body.ttl_seconds)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let entry: Option<Entry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE app.kv_entry SET value = coalesce($2, value), tags = coalesce($3, tags), \
           expires_at = CASE WHEN $4::float8 IS NULL THEN expires_at WHEN $4 = 0 THEN NULL \
                             ELSE now() + make_interval(secs => $4) END, \
           version = version + 1, updated_by = auth.uid(), updated_at = now() \
         WHERE key = $1 AND {LIVE} AND ($5::bigint IS NULL OR version = $5) RETURNING {COLUMNS}"
    )))
    .bind(&key)
    .bind(&body.value)
    .bind(&body.tags)
    .bind(body.ttl_seconds.map(|t| t as f64))
    .bind(body.expected_version)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| rls::write_error(e, String::new, writers_only))?;
    let Some(entry) = entry else {
        return Err(match (current_version(&mut tx, &key).await?, body.expected_version) {
            (Some(current), Some(expected)) => version_conflict(&key, expected, Some(current)),
            _ => ApiError::not_found(format!("no key {key:?}")),
        });
    };
    tx.commit().await?;
    Ok(Json(entry_json(&entry)))
}

/// `DELETE /sfp/api/key-value/{key}` (`?expectedVersion=n` deletes only that version).
#[utoipa::path(delete, path = "/key-value/{key}", tag = "key-value", security(("bearer" = [])),
    params(("key" = String, Path, description = "The key; may contain `/`"),
           ("expectedVersion" = Option<i64>, Query, description = "Delete only if at this version")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such key", body = ErrorBody),
    (status = 409, description = "Not at the expected version", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(key): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    check_key(&key)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let deleted: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "DELETE FROM app.kv_entry WHERE key = $1 AND {LIVE} AND ($2::bigint IS NULL OR version = $2) RETURNING version"
    )))
    .bind(&key)
    .bind(q.expected_version)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| rls::write_error(e, String::new, writers_only))?;
    if deleted.is_none() {
        return Err(match (current_version(&mut tx, &key).await?, q.expected_version) {
            (Some(current), Some(expected)) => version_conflict(&key, expected, Some(current)),
            _ => ApiError::not_found(format!("no key {key:?}")),
        });
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sfp/api/key-value/increment`: adds `by` (default 1) to a numeric value atomically,
/// creating the key at `by` if it does not exist.
#[utoipa::path(post, path = "/key-value/increment", tag = "key-value", security(("bearer" = [])), request_body = Object, responses(
    (status = 200, description = "The entry after the increment", body = Object),
    (status = 409, description = "The value is not an integer", body = ErrorBody),
))]
pub async fn increment(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<Increment>,
) -> ApiResult<Json<Value>> {
    check_key(&body.key)?;
    check_ttl(body.ttl_seconds)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    drop_expired(&mut tx, &body.key).await.map_err(|e| rls::write_error(e, String::new, writers_only))?;
    // One statement: concurrent increments serialise on the row and none is lost.
    let entry: Option<Entry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO app.kv_entry (key, value, expires_at, created_by, updated_by) \
         VALUES ($1, to_jsonb($2::bigint), now() + make_interval(secs => $3), auth.uid(), auth.uid()) \
         ON CONFLICT (key) DO UPDATE SET value = to_jsonb((app.kv_entry.value #>> '{{}}')::bigint + $2), \
           version = app.kv_entry.version + 1, updated_by = auth.uid(), updated_at = now() \
         WHERE jsonb_typeof(app.kv_entry.value) = 'number' AND (app.kv_entry.value #>> '{{}}') ~ '^-?[0-9]{{1,19}}$' \
         RETURNING {COLUMNS}"
    )))
    .bind(&body.key)
    .bind(body.by)
    .bind(body.ttl_seconds.filter(|t| *t > 0).map(|t| t as f64))
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("22003") => ApiError::new(
            StatusCode::CONFLICT,
            "out_of_range",
            format!("the increment of {:?} would overflow", body.key),
        ),
        _ => rls::write_error(e, String::new, writers_only),
    })?;
    let entry = entry.ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "not_a_number", format!("the value of {:?} is not an integer", body.key))
    })?;
    tx.commit().await?;
    Ok(Json(entry_json(&entry)))
}

/// `GET /sfp/api/key-value?prefix=&tag=&limit=&cursor=`: keys in order, a page at a time.
#[utoipa::path(get, path = "/key-value", tag = "key-value", security(("bearer" = [])),
    params(("prefix" = Option<String>, Query, description = "Only keys starting with this"),
           ("tag" = Option<String>, Query, description = "Only keys with this tag"),
           ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
           ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")), responses(
    (status = 200, description = "`{items, nextCursor}`", body = Object),
))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit)?;
    let pattern = like_prefix(q.prefix.as_deref().unwrap_or(""));
    let mut tx = begin_as(&state.pool, &caller).await?;
    read_as_reader(&mut tx).await?;
    let rows: Vec<Entry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM app.kv_entry WHERE {LIVE} AND key LIKE $1 \
           AND ($2::text IS NULL OR tags @> ARRAY[$2]) AND ($3::text IS NULL OR key > $3) \
         ORDER BY key LIMIT $4"
    )))
    .bind(&pattern)
    .bind(&q.tag)
    .bind(&q.cursor)
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let (page, next) = split_page(rows, limit, |e| e.key.clone());
    Ok(Json(json!({"items": page.iter().map(entry_json).collect::<Vec<_>>(), "nextCursor": next})))
}

/// Deletes expired keys (reads already ignore them); returns how many.
pub async fn sweep_expired(pool: &sqlx::PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM app.kv_entry WHERE ctid IN (SELECT ctid FROM app.kv_entry WHERE expires_at <= now() LIMIT 10000)",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Sweeps expired keys every `every` until `stop`.
pub async fn sweep_loop(pool: sqlx::PgPool, every: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sweep_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired keys swept"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired keys failed; trying again later"),
        }
    }
}
