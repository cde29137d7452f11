//! `POST /sfp/api/doc-store/query`: documents across collections by JSON filters, sorted, a
//! page at a time (keyset cursors, so deep pages cost what the first one does).
//!
//! Filters are `{path, op, value}` with a dotted path into the document (`meta.build`):
//! `eq`, `ne`, `in` and `contains` become JSON containment (`value @> {...}`), which the
//! GIN index on documents answers at any size; `gt`, `gte`, `lt`, `lte` compare numbers or
//! strings at the path; `exists` tests presence. Sorting is by key (default), `updatedAt`, or
//! a path.

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Postgres, QueryBuilder};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use crate::auth::access::Authenticated;
use crate::state::AppState;

const MAX_FILTERS: usize = 20;
const MAX_IN: usize = 100;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryRequest {
    #[serde(default)]
    collections: Vec<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    filter: Vec<Filter>,
    #[serde(default)]
    sort: Option<Sort>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    path: String,
    op: String,
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sort {
    /// `key`, `updatedAt`, or a dotted path into the document.
    by: String,
    #[serde(default)]
    direction: Option<String>,
}

fn parse_path(path: &str) -> ApiResult<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    let valid = !path.is_empty()
        && parts.len() <= 8
        && parts.iter().all(|p| {
            !p.is_empty() && p.len() <= 64 && p.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        });
    if valid {
        Ok(parts)
    } else {
        Err(ApiError::bad_request(format!(
            "path {path:?} is not valid: up to 8 dot-separated names of letters, digits, _ and -"
        )))
    }
}

/// `{"a": {"b": value}}` for the path `a.b`.
fn nested(path: &[String], value: Value) -> Value {
    path.iter().rev().fold(value, |inner, key| json!({ key: inner }))
}

fn add_filter(q: &mut QueryBuilder<Postgres>, f: &Filter) -> ApiResult<()> {
    let path = parse_path(&f.path)?;
    let value = || {
        f.value.clone().ok_or_else(|| ApiError::bad_request(format!("filter on {:?}: {} needs a value", f.path, f.op)))
    };
    q.push(" AND ");
    match f.op.as_str() {
        "eq" => {
            let v = value()?;
            q.push("(d.value @> ").push_bind(nested(&path, v.clone())).push(" AND d.value #> ").push_bind(path.clone());
            q.push(" = ").push_bind(v).push(")");
        }
        "ne" => {
            q.push("d.value #> ").push_bind(path.clone()).push(" IS DISTINCT FROM ").push_bind(value()?);
        }
        "contains" => {
            q.push("d.value @> ").push_bind(nested(&path, value()?));
        }
        "in" => {
            let Value::Array(options) = value()? else {
                return Err(ApiError::bad_request(format!("filter on {:?}: in needs an array", f.path)));
            };
            if options.is_empty() || options.len() > MAX_IN {
                return Err(ApiError::bad_request(format!("filter on {:?}: in takes 1 to {MAX_IN} values", f.path)));
            }
            q.push("(");
            for (i, option) in options.into_iter().enumerate() {
                if i > 0 {
                    q.push(" OR ");
                }
                q.push("(d.value @> ").push_bind(nested(&path, option.clone())).push(" AND d.value #> ");
                q.push_bind(path.clone()).push(" = ").push_bind(option).push(")");
            }
            q.push(")");
        }
        "gt" | "gte" | "lt" | "lte" => {
            let sign = match f.op.as_str() {
                "gt" => ">",
                "gte" => ">=",
                "lt" => "<",
                _ => "<=",
            };
            match value()? {
                Value::Number(n) => {
                    let n = n.as_f64().ok_or_else(|| ApiError::bad_request("the number is out of range"))?;
                    q.push("(jsonb_typeof(d.value #> ").push_bind(path.clone()).push(") = 'number' AND (d.value #>> ");
                    q.push_bind(path.clone()).push(")::float8 ").push(sign).push(" ").push_bind(n).push(")");
                }
                Value::String(s) => {
                    q.push("(jsonb_typeof(d.value #> ").push_bind(path.clone()).push(") = 'string' AND d.value #>> ");
                    q.push_bind(path.clone()).push(" ").push(sign).push(" ").push_bind(s).push(")");
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "filter on {:?}: {} compares a number or a string",
                        f.path, f.op
                    )));
                }
            }
        }
        "exists" => {
            q.push("d.value #> ").push_bind(path).push(" IS NOT NULL");
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "filter op {other:?} is not one of eq, ne, in, contains, gt, gte, lt, lte, exists"
            )));
        }
    }
    Ok(())
}

/// What the page is ordered by, as SQL over the alias `d`.
enum Order {
    Key,
    Updated,
    Path(Vec<String>),
}

#[derive(sqlx::FromRow)]
struct Row {
    key: String,
    collection: String,
    value: Value,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    sort_value: Value,
}

/// `POST /sfp/api/doc-store/query`
#[utoipa::path(post, path = "/doc-store/query", tag = "doc-store", security(("bearer" = [])), request_body = Object, responses(
    (status = 200, description = "`{items, nextCursor}`", body = Object),
    (status = 400, description = "An invalid filter, sort or cursor, named", body = ErrorBody),
))]
pub async fn query(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<QueryRequest>,
) -> ApiResult<Json<Value>> {
    let limit = super::paging::page_limit(Some(body.limit.unwrap_or(50)))?;
    if body.filter.len() > MAX_FILTERS {
        return Err(ApiError::bad_request(format!("at most {MAX_FILTERS} filters")));
    }
    let order = match body.sort.as_ref().map(|s| s.by.as_str()) {
        None | Some("key") => Order::Key,
        Some("updatedAt") => Order::Updated,
        Some(path) => Order::Path(parse_path(path)?),
    };
    let descending = match body.sort.as_ref().and_then(|s| s.direction.as_deref()) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(ApiError::bad_request(format!("direction {other:?} is not asc or desc"))),
    };
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new("SELECT d.key, d.collection, d.value, d.version, d.created_at, d.updated_at, ");
    match &order {
        Order::Key => q.push("to_jsonb(d.key)"),
        Order::Updated => q.push("to_jsonb(d.updated_at)"),
        Order::Path(p) => q.push("coalesce(d.value #> ").push_bind(p.clone()).push(", 'null'::jsonb)"),
    };
    // The read policy's decision for the caller, in the statement.
    q.push(" AS sort_value FROM app.doc d WHERE ");
    super::paging::push_caller_may_read(&mut q, caller.user_id);
    if !body.collections.is_empty() {
        q.push(" AND d.collection = ANY(").push_bind(body.collections.clone()).push(")");
    }
    if let Some(prefix) = &body.prefix {
        q.push(" AND d.key LIKE ").push_bind(super::paging::like_prefix(prefix));
    }
    for f in &body.filter {
        add_filter(&mut q, f)?;
    }
    let sort_sql = match &order {
        Order::Key => "to_jsonb(d.key)".to_owned(),
        Order::Updated => "to_jsonb(d.updated_at)".to_owned(),
        Order::Path(_) => "sort_value".to_owned(),
    };
    if let Some(cursor) = &body.cursor {
        let (after_value, after_key) = decode_cursor(cursor)?;
        let cmp = if descending { "<" } else { ">" };
        let expr = match &order {
            Order::Path(p) => {
                // The alias is not visible in WHERE: repeat the expression.
                q.push(" AND (coalesce(d.value #> ").push_bind(p.clone()).push(", 'null'::jsonb), d.key) ");
                String::new()
            }
            _ => format!(" AND ({sort_sql}, d.key) "),
        };
        q.push(expr).push(cmp).push(" (").push_bind(after_value).push("::jsonb, ").push_bind(after_key).push(")");
    }
    let dir = if descending { "DESC" } else { "ASC" };
    match &order {
        Order::Key => q.push(format!(" ORDER BY d.key {dir}")),
        Order::Updated => q.push(format!(" ORDER BY to_jsonb(d.updated_at) {dir}, d.key {dir}")),
        Order::Path(_) => q.push(format!(" ORDER BY sort_value {dir}, d.key {dir}")),
    };
    q.push(" LIMIT ").push_bind(limit + 1);

    let rows: Vec<Row> = q.build_query_as().fetch_all(&state.pool).await?;
    if rows.is_empty() {
        super::paging::may_read(&state.pool, &caller).await?;
    }
    let (page, next) = super::paging::split_page(rows, limit, |r| encode_cursor(&r.sort_value, &r.key));
    let items: Vec<Value> = page
        .iter()
        .map(|d| {
            json!({"key": d.key, "collection": d.collection, "value": d.value, "version": d.version,
                   "createdAt": d.created_at, "updatedAt": d.updated_at})
        })
        .collect();
    Ok(Json(json!({"items": items, "nextCursor": next})))
}

fn encode_cursor(sort_value: &Value, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([sort_value, key]).to_string())
}

fn decode_cursor(cursor: &str) -> ApiResult<(Value, String)> {
    let bad = || ApiError::bad_request(format!("cursor {cursor:?} is not a cursor this query returned"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let parsed: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match parsed {
        Value::Array(mut pair) if pair.len() == 2 => {
            let key = pair.pop().and_then(|k| k.as_str().map(str::to_owned)).ok_or_else(bad)?;
            Ok((pair.pop().unwrap_or(Value::Null), key))
        }
        _ => Err(bad()),
    }
}
