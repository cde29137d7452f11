//! `/sfp/api/doc-store`: documents under path keys (`releases/2026/r1`, collection
//! `releases`), as sfp server documents them. Every write is a new version and every
//! version is kept: `GET …/docs/{key}/history` lists them, `?version=n` reads one. Writes may
//! carry the version they expect (in the body, or `If-Match` with the `ETag` a read gave);
//! a mismatch is 409 with `currentVersion`. Collections group documents and have an
//! append-only changelog store. Row-level security: members read, owners (and their
//! application tokens) write.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::paging::{
    CALLER_MAY_READ, check_stored_json, is_plain_name, like_prefix, page_limit, read_as_reader, read_one, split_page,
    writers_only,
};
use super::write_batch::Batched;
use crate::auth::access::Authenticated;
use crate::auth::rls::{self, begin_as};
use crate::state::AppState;

/// The largest document, as JSON text.
pub const MAX_DOC_BYTES: usize = 1024 * 1024;
const MAX_KEY: usize = 512;
/// Last segments that name the version and history views of a key.
const RESERVED: [&str; 2] = ["version", "history"];

#[derive(sqlx::FromRow)]
struct Doc {
    key: String,
    collection: String,
    value: Value,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "key, collection, value, version, created_at, updated_at";

fn doc_json(d: &Doc) -> Value {
    json!({
        "key": d.key,
        "collection": d.collection,
        "value": d.value,
        "version": d.version,
        "createdAt": d.created_at,
        "updatedAt": d.updated_at,
    })
}

fn with_etag(status: StatusCode, body: Value, version: i64) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

fn check_key(key: &str) -> ApiResult<()> {
    let valid = !key.is_empty() && key.len() <= MAX_KEY && key.split('/').all(|s| is_plain_name(s, MAX_KEY));
    if !valid {
        return Err(ApiError::bad_request(format!(
            "key {key:?} is not valid: up to {MAX_KEY} characters of path segments separated by /, each of letters, \
             digits and . _ - starting with a letter or digit"
        )));
    }
    Ok(())
}

fn check_collection(name: &str) -> ApiResult<()> {
    if is_plain_name(name, 128) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "collection {name:?} is not valid: up to 128 letters, digits and . _ - starting with a letter or digit"
        )))
    }
}

fn check_value(value: &Value) -> ApiResult<()> {
    check_stored_json(value, MAX_DOC_BYTES, "document")
}

/// The version a write expects: the body's `version`, or `If-Match: "n"`; both must agree.
fn expected_version(body: Option<i64>, headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let header = match headers.get(header::IF_MATCH) {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or_default().trim().trim_start_matches("W/").trim_matches('"');
            Some(
                text.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("If-Match {text:?} is not a version")))?,
            )
        }
    };
    match (body, header) {
        (Some(b), Some(h)) if b != h => Err(ApiError::bad_request(format!("version {b} and If-Match {h} disagree"))),
        (b, h) => Ok(b.or(h)),
    }
}

fn conflict(key: &str, expected: i64, current: i64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "version_conflict",
        format!("document {key:?} is at version {current}, not {expected}"),
    )
    .with_current_version(current)
}

/// Splits `releases/r1/history` into the key and the view asked for.
enum View {
    Doc(String),
    Version(String),
    History(String),
}

fn view(path: &str) -> View {
    match path.rsplit_once('/') {
        Some((key, "version")) => View::Version(key.to_owned()),
        Some((key, "history")) => View::History(key.to_owned()),
        _ => View::Doc(path.to_owned()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadQuery {
    version: Option<i64>,
}

/// `GET /sfp/api/doc-store/docs/{key}` (also `…/{key}/version`, `…/{key}/history`,
/// `…/{key}?version=n`).
#[utoipa::path(get, path = "/doc-store/docs/{key}", tag = "doc-store", security(("bearer" = [])),
    params(("key" = String, Path, description = "The document's path, e.g. `releases/2026/r1`; append `/version` or `/history` for those views"),
           ("version" = Option<i64>, Query, description = "Read this version")), responses(
    (status = 200, description = "The document (with `ETag`), its version, or its history", body = Object),
    (status = 404, description = "No such document or version", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(path): Path<String>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<Response> {
    let view = view(&path);
    if let (View::Doc(key), None) = (&view, q.version) {
        // The current document: one statement (the hot path).
        check_key(key)?;
        let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app.doc WHERE key = $2 AND {CALLER_MAY_READ}"
        )))
        .bind(caller.user_id)
        .bind(key);
        let doc: Doc = read_one(&state.reads, &caller, query)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no document {key:?}")))?;
        return Ok(with_etag(StatusCode::OK, doc_json(&doc), doc.version));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let answer = match view {
        // (Without a version, answered above.)
        View::Doc(key) => {
            check_key(&key)?;
            let version = q.version.unwrap_or_default();
            let row: Option<(Option<Value>, DateTime<Utc>)> =
                sqlx::query_as("SELECT value, written_at FROM app.doc_version WHERE key = $1 AND version = $2")
                    .bind(&key)
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            let (value, at) = row.ok_or_else(|| ApiError::not_found(format!("no version {version} of {key:?}")))?;
            let value =
                value.ok_or_else(|| ApiError::not_found(format!("version {version} of {key:?} is its deletion")))?;
            with_etag(StatusCode::OK, json!({"key": key, "value": value, "version": version, "writtenAt": at}), version)
        }
        View::Version(key) => {
            check_key(&key)?;
            let version: Option<i64> = sqlx::query_scalar("SELECT version FROM app.doc WHERE key = $1")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
            let version = version.ok_or_else(|| ApiError::not_found(format!("no document {key:?}")))?;
            with_etag(StatusCode::OK, json!({"key": key, "version": version}), version)
        }
        View::History(key) => {
            check_key(&key)?;
            let rows: Vec<(i64, bool, DateTime<Utc>)> = sqlx::query_as(
                "SELECT version, value IS NULL, written_at FROM app.doc_version WHERE key = $1 ORDER BY version DESC",
            )
            .bind(&key)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Err(ApiError::not_found(format!("no document {key:?} ever")));
            }
            let versions: Vec<Value> = rows
                .iter()
                .map(|(v, deleted, at)| json!({"version": v, "deleted": deleted, "writtenAt": at}))
                .collect();
            (StatusCode::OK, Json(json!({"key": key, "versions": versions}))).into_response()
        }
    };
    tx.commit().await?;
    Ok(answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Write {
    value: Value,
    #[serde(default)]
    version: Option<i64>,
}

/// `POST /sfp/api/doc-store/docs/{key}`: creates (201) or updates (200) the document. An
/// update with a `version` (or `If-Match`) happens only at that version.
#[utoipa::path(post, path = "/doc-store/docs/{key}", tag = "doc-store", security(("bearer" = [])), request_body = Object,
    params(("key" = String, Path, description = "The document's path")), responses(
    (status = 201, description = "Created", body = Object),
    (status = 200, description = "Updated (a new version)", body = Object),
    (status = 409, description = "Not at the expected version (`currentVersion` in the body)", body = ErrorBody),
    (status = 413, description = "Larger than 1 MiB", body = ErrorBody),
    (status = 400, description = "Invalid key", body = ErrorBody),
))]
pub async fn put(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(key): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Write>,
) -> ApiResult<Response> {
    check_key(&key)?;
    if let Some(last) = key.rsplit('/').next().filter(|l| RESERVED.contains(l)) {
        return Err(ApiError::bad_request(format!("a key may not end in /{last}: that names a view of the key")));
    }
    check_value(&body.value)?;
    let expected = expected_version(body.version, &headers)?;
    let collection = key.split('/').next().unwrap_or_default().to_owned();
    // One statement that makes the write policy's decision and writes (migration
    // 20261201000021 says what it does); concurrent writes share a transaction (`write_batch`).
    let write = DocWrite { user_id: caller.user_id, key: key.clone(), collection, value: body.value, expected };
    let written = state.writes.doc.write(write).await.map_err(|e| {
        rls::write_error(e, || format!("document {key:?} was created at the same time; retry"), writers_only)
    })?;
    let (Some(created), Some(doc)) = (written.created, written.doc()) else {
        return Err(conflict(&key, expected.unwrap_or(0), written.current.unwrap_or(0)));
    };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(with_etag(status, doc_json(&doc), doc.version))
}

/// A document write (create or update), alone or in a batch.
pub struct DocWrite {
    pub user_id: uuid::Uuid,
    pub key: String,
    /// The key's first segment.
    pub collection: String,
    pub value: Value,
    /// 0: only if it does not exist; `None`: whatever the version.
    pub expected: Option<i64>,
}

impl Batched for DocWrite {
    type Output = Written;

    fn order_key(&self) -> &str {
        &self.key
    }

    async fn one(&self, conn: &mut sqlx::PgConnection) -> Result<Written, sqlx::Error> {
        sqlx::query_as("SELECT * FROM private.doc_write_for($1, $2, $3, $4, $5)")
            .bind(self.user_id)
            .bind(&self.key)
            .bind(&self.collection)
            .bind(&self.value)
            .bind(self.expected)
            .fetch_one(conn)
            .await
    }

    /// One statement calling the single write for each in turn (each call sees the calls
    /// before it, so two writes to one document make two versions).
    async fn many(items: &[&Self], conn: &mut sqlx::PgConnection) -> Result<Vec<Written>, sqlx::Error> {
        let uids: Vec<uuid::Uuid> = items.iter().map(|w| w.user_id).collect();
        let keys: Vec<&str> = items.iter().map(|w| w.key.as_str()).collect();
        let collections: Vec<&str> = items.iter().map(|w| w.collection.as_str()).collect();
        let values: Vec<&Value> = items.iter().map(|w| &w.value).collect();
        let expected: Vec<Option<i64>> = items.iter().map(|w| w.expected).collect();
        sqlx::query_as(
            "SELECT r.* FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int8[]) \
               WITH ORDINALITY AS b (uid, k, coll, v, expected, i) \
             CROSS JOIN LATERAL private.doc_write_for(b.uid, b.k, b.coll, b.v, b.expected) AS r \
             ORDER BY b.i",
        )
        .bind(uids)
        .bind(keys)
        .bind(collections)
        .bind(values)
        .bind(expected)
        .fetch_all(conn)
        .await
    }
}

/// The row of a document write: the version it found, and what it wrote (all null when the
/// expected version was not the current one).
#[derive(sqlx::FromRow)]
pub struct Written {
    pub current: Option<i64>,
    pub created: Option<bool>,
    pub key: Option<String>,
    pub collection: Option<String>,
    pub value: Option<Value>,
    pub version: Option<i64>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Written {
    fn doc(&self) -> Option<Doc> {
        Some(Doc {
            key: self.key.clone()?,
            collection: self.collection.clone()?,
            value: self.value.clone()?,
            version: self.version?,
            created_at: self.created_at?,
            updated_at: self.updated_at?,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    #[serde(default)]
    version: Option<i64>,
}

/// `DELETE /sfp/api/doc-store/docs/{key}` (body `{"version": n}` or `If-Match`); the
/// deletion is recorded in the history.
#[utoipa::path(delete, path = "/doc-store/docs/{key}", tag = "doc-store", security(("bearer" = [])),
    request_body(content = Object, description = "Optional: `{\"version\": n}`"),
    params(("key" = String, Path, description = "The document's path")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such document", body = ErrorBody),
    (status = 409, description = "Not at the expected version", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    check_key(&key)?;
    let request: Delete = if body.iter().all(u8::is_ascii_whitespace) {
        Delete::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not valid: {e}")))?
    };
    let expected = expected_version(request.version, &headers)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT version FROM app.doc WHERE key = $1 FOR UPDATE")
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
    let current = current.ok_or_else(|| ApiError::not_found(format!("no document {key:?}")))?;
    if let Some(want) = expected.filter(|w| *w != current) {
        return Err(conflict(&key, want, current));
    }
    let write_error = |e| rls::write_error(e, String::new, writers_only);
    sqlx::query("DELETE FROM app.doc WHERE key = $1").bind(&key).execute(&mut *tx).await.map_err(write_error)?;
    sqlx::query("INSERT INTO app.doc_version (key, version, value, written_by) VALUES ($1, $2, NULL, auth.uid())")
        .bind(&key)
        .bind(current + 1)
        .execute(&mut *tx)
        .await
        .map_err(write_error)?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    prefix: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /sfp/api/doc-store/docs?prefix=&limit=&cursor=`: keys in order, a page at a time.
#[utoipa::path(get, path = "/doc-store/docs", tag = "doc-store", security(("bearer" = [])),
    params(("prefix" = Option<String>, Query, description = "Only keys starting with this, e.g. `releases/2026/`"),
           ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
           ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")), responses(
    (status = 200, description = "`{items: [{key, version, updatedAt}], nextCursor}`", body = Object),
))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    read_as_reader(&mut tx).await?;
    let rows: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT key, version, updated_at FROM app.doc WHERE key LIKE $1 AND ($2::text IS NULL OR key > $2) \
         ORDER BY key LIMIT $3",
    )
    .bind(like_prefix(q.prefix.as_deref().unwrap_or("")))
    .bind(&q.cursor)
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let (page, next) = split_page(rows, limit, |(k, _, _)| k.clone());
    let items: Vec<Value> = page.iter().map(|(k, v, at)| json!({"key": k, "version": v, "updatedAt": at})).collect();
    Ok(Json(json!({"items": items, "nextCursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCollection {
    name: String,
}

/// `GET /sfp/api/doc-store/collections`: every collection with its document count.
#[utoipa::path(get, path = "/doc-store/collections", tag = "doc-store", security(("bearer" = [])), responses(
    (status = 200, description = "The collections", body = Object),
))]
pub async fn collections(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT c.name, (SELECT count(*) FROM app.doc d WHERE d.collection = c.name), c.created_at \
         FROM app.doc_collection c ORDER BY c.name",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(Value::Array(
        rows.iter().map(|(n, count, at)| json!({"name": n, "documents": count, "createdAt": at})).collect(),
    )))
}

/// `POST /sfp/api/doc-store/collections` `{"name"}`: 409 if it exists.
#[utoipa::path(post, path = "/doc-store/collections", tag = "doc-store", security(("bearer" = [])), request_body = Object, responses(
    (status = 201, description = "Created", body = Object),
    (status = 409, description = "It exists", body = ErrorBody),
))]
pub async fn create_collection(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewCollection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_collection(&body.name)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO app.doc_collection (name, created_by) VALUES ($1, auth.uid()) RETURNING created_at",
    )
    .bind(&body.name)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| rls::write_error(e, || format!("collection {:?} exists", body.name), writers_only))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({"name": body.name, "documents": 0, "createdAt": at}))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionQuery {
    store: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /sfp/api/doc-store/collections/{name}?store=doc|changelog`: the collection's
/// documents (by key) or changelog records (oldest first), a page at a time.
#[utoipa::path(get, path = "/doc-store/collections/{name}", tag = "doc-store", security(("bearer" = [])),
    params(("name" = String, Path, description = "The collection"),
           ("store" = Option<String>, Query, description = "`doc` (default) or `changelog`"),
           ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
           ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")), responses(
    (status = 200, description = "`{items, nextCursor}`", body = Object),
    (status = 404, description = "No such collection", body = ErrorBody),
))]
pub async fn collection(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    Query(q): Query<CollectionQuery>,
) -> ApiResult<Json<Value>> {
    check_collection(&name)?;
    let limit = page_limit(q.limit)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM app.doc_collection WHERE name = $1)")
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        return Err(ApiError::not_found(format!("no collection {name:?}")));
    }
    let (items, next) = match q.store.as_deref().unwrap_or("doc") {
        "doc" => {
            let rows: Vec<Doc> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM app.doc WHERE collection = $1 AND ($2::text IS NULL OR key > $2) ORDER BY key LIMIT $3"
            )))
            .bind(&name)
            .bind(&q.cursor)
            .bind(limit + 1)
            .fetch_all(&mut *tx)
            .await?;
            let (page, next) = split_page(rows, limit, |d| d.key.clone());
            (page.iter().map(doc_json).collect::<Vec<_>>(), next)
        }
        "changelog" => {
            let after: Option<i64> = match &q.cursor {
                None => None,
                Some(c) => Some(
                    c.parse().map_err(|_| ApiError::bad_request(format!("cursor {c:?} is not a changelog cursor")))?,
                ),
            };
            let rows: Vec<(i64, Option<String>, Value, DateTime<Utc>)> = sqlx::query_as(
                "SELECT id, key, value, created_at FROM app.doc_changelog WHERE collection = $1 \
                 AND ($2::bigint IS NULL OR id > $2) ORDER BY id LIMIT $3",
            )
            .bind(&name)
            .bind(after)
            .bind(limit + 1)
            .fetch_all(&mut *tx)
            .await?;
            let (page, next) = split_page(rows, limit, |r| r.0.to_string());
            let items =
                page.iter().map(|(id, k, v, at)| json!({"id": id, "key": k, "value": v, "createdAt": at})).collect();
            (items, next)
        }
        other => return Err(ApiError::bad_request(format!("store {other:?} is not doc or changelog"))),
    };
    tx.commit().await?;
    Ok(Json(json!({"items": items, "nextCursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangelogRecord {
    #[serde(default)]
    key: Option<String>,
    value: Value,
}

/// `POST /sfp/api/doc-store/collections/{name}/changelog`: appends a record (the collection
/// is created if needed).
#[utoipa::path(post, path = "/doc-store/collections/{name}/changelog", tag = "doc-store", security(("bearer" = [])),
    request_body = Object, params(("name" = String, Path, description = "The collection")), responses(
    (status = 201, description = "Appended: `{id}`", body = Object),
    (status = 413, description = "Larger than 1 MiB", body = ErrorBody),
))]
pub async fn append_changelog(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ChangelogRecord>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_collection(&name)?;
    check_value(&body.value)?;
    if let Some(key) = &body.key {
        check_key(key)?;
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let write_error = |e| rls::write_error(e, String::new, writers_only);
    sqlx::query("INSERT INTO app.doc_collection (name, created_by) VALUES ($1, auth.uid()) ON CONFLICT DO NOTHING")
        .bind(&name)
        .execute(&mut *tx)
        .await
        .map_err(write_error)?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO app.doc_changelog (collection, key, value, created_by) VALUES ($1, $2, $3, auth.uid()) RETURNING id",
    )
    .bind(&name)
    .bind(&body.key)
    .bind(&body.value)
    .fetch_one(&mut *tx)
    .await
    .map_err(write_error)?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))))
}

/// `DELETE /sfp/api/doc-store/collections/{name}`: the collection, its documents, their
/// history and its changelog.
#[utoipa::path(delete, path = "/doc-store/collections/{name}", tag = "doc-store", security(("bearer" = [])),
    params(("name" = String, Path, description = "The collection")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such collection", body = ErrorBody),
))]
pub async fn delete_collection(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    check_collection(&name)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let write_error = |e| rls::write_error(e, String::new, writers_only);
    sqlx::query("DELETE FROM app.doc_version WHERE key = $1 OR key LIKE $2")
        .bind(&name)
        .bind(like_prefix(&format!("{name}/")))
        .execute(&mut *tx)
        .await
        .map_err(write_error)?;
    let gone = sqlx::query("DELETE FROM app.doc_collection WHERE name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await
        .map_err(write_error)?
        .rows_affected();
    if gone == 0 {
        return Err(ApiError::not_found(format!("no collection {name:?}")));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
