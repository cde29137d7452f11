//! `/sfp/api/locks`: a generic mutex with a queue, as sfp server documents it. A request is a
//! ticket: queued first in, first out per (repository, resource), acquired when it reaches
//! the head, leased (it expires on its own), released by its holder or an owner or
//! application, after which the next ticket acquires at once. Every change is committed,
//! so lock state survives restarts, and a partial unique index makes a second holder of one
//! resource impossible, also with several server processes. Changes are announced on the
//! `sfp_locks` channel (LISTEN/NOTIFY) for subscribers.
//!
//! The repository (`owner/repo`) may contain `/`: the paths are `/locks/{repository…}/{resource}`
//! and `/locks/{repository…}/{resource}/{ticketId}`, told apart by the last segment being a
//! ticket id (a UUID); a URL-encoded repository (`owner%2Frepo`) works too.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use crate::auth::Caller;
use crate::auth::access::Authenticated;
use crate::auth::rls::begin_as;
use crate::state::AppState;

pub const MAX_LEASE_SECONDS: i64 = 7 * 86_400;
const DEFAULT_WAIT_SECONDS: i64 = 3600;

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct Ticket {
    pub id: Uuid,
    pub repository: String,
    pub resource: String,
    pub status: String,
    pub lease_duration_seconds: i32,
    pub lease_start: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub requested_by: Option<Uuid>,
    /// The application token that asked for it (none for a signed-in user).
    pub requested_by_token: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// 0 when acquired or ended; otherwise the place in the queue (1 = next).
    pub queue_position: i64,
}

const TICKET: &str = "t.id, t.repository, t.resource, t.status, t.lease_duration_seconds, t.lease_start, \
     t.lease_expires_at, t.reason, t.requested_by, t.requested_by_token, t.created_at, t.updated_at, \
     CASE WHEN t.status = 'queued' THEN (SELECT count(*) FROM app.lock_ticket q WHERE q.repository = t.repository \
       AND q.resource = t.resource AND q.status = 'queued' AND (q.created_at, q.id) <= (t.created_at, t.id)) ELSE 0 END \
       AS queue_position";

impl Ticket {
    /// Whether `caller` asked for this ticket (the same user, and the same application
    /// token or none).
    pub fn is_held_by(&self, caller: &Caller) -> bool {
        self.requested_by == Some(caller.user_id) && self.requested_by_token == caller.token_id
    }
}

pub fn ticket_json(t: &Ticket) -> Value {
    json!({
        "id": t.id,
        "ticketId": t.id,
        "repository": t.repository,
        "resource": t.resource,
        "status": t.status,
        "queuePosition": t.queue_position,
        "leaseStart": t.lease_start,
        "leaseExpiresAt": t.lease_expires_at,
        "leaseDurationSeconds": t.lease_duration_seconds,
        "reason": t.reason,
        "createdAt": t.created_at,
        "updatedAt": t.updated_at,
    })
}

fn check_name(what: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("{what} must be 1 to 200 printable characters")));
    }
    Ok(())
}

/// Serialises every change of one resource's queue (across server processes too) for the
/// rest of the transaction, then expires what is due and promotes the head of the queue.
pub async fn settle(tx: &mut PgConnection, repository: &str, resource: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 7))")
        .bind(repository)
        .bind(resource)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE app.lock_ticket SET status = 'expired', updated_at = now() \
         WHERE repository = $1 AND resource = $2 AND ((status = 'acquired' AND lease_expires_at <= now()) \
               OR (status = 'queued' AND wait_expires_at <= now()))",
    )
    .bind(repository)
    .bind(resource)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE app.lock_ticket SET status = 'acquired', lease_start = now(), \
           lease_expires_at = now() + make_interval(secs => lease_duration_seconds), updated_at = now() \
         WHERE id = (SELECT id FROM app.lock_ticket WHERE repository = $1 AND resource = $2 AND status = 'queued' \
                     ORDER BY created_at, id LIMIT 1) \
           AND NOT EXISTS (SELECT 1 FROM app.lock_ticket WHERE repository = $1 AND resource = $2 AND status = 'acquired')",
    )
    .bind(repository)
    .bind(resource)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn read_ticket(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Ticket>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {TICKET} FROM app.lock_ticket t WHERE t.id = $1")))
        .bind(id)
        .fetch_optional(tx)
        .await
}

/// Queues a ticket and settles the queue: it may be acquired at once.
pub async fn request(
    tx: &mut PgConnection,
    caller: &Caller,
    repository: &str,
    resource: &str,
    lease_seconds: i64,
    wait_seconds: i64,
    reason: Option<&str>,
) -> ApiResult<Ticket> {
    check_name("repository", repository)?;
    check_name("resource", resource)?;
    if !(1..=MAX_LEASE_SECONDS).contains(&lease_seconds) {
        return Err(ApiError::bad_request(format!("leaseDurationSeconds must be between 1 and {MAX_LEASE_SECONDS}")));
    }
    if !(1..=MAX_LEASE_SECONDS).contains(&wait_seconds) {
        return Err(ApiError::bad_request(format!("waitTimeoutSeconds must be between 1 and {MAX_LEASE_SECONDS}")));
    }
    if reason.is_some_and(|r| r.len() > 500) {
        return Err(ApiError::bad_request("reason must be at most 500 characters"));
    }
    settle(tx, repository, resource).await?;
    let id = Uuid::now_v7();
    sqlx::query(
        // The queue is ordered by created_at: take the time now, under the resource's lock,
        // not at the start of the transaction (which may have waited for that lock).
        "INSERT INTO app.lock_ticket (id, repository, resource, status, lease_duration_seconds, wait_expires_at, reason, \
                                      requested_by, requested_by_token, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', $4, now() + make_interval(secs => $5), $6, auth.uid(), $7, \
                 clock_timestamp(), clock_timestamp())",
    )
    .bind(id)
    .bind(repository)
    .bind(resource)
    .bind(lease_seconds as i32)
    .bind(wait_seconds as f64)
    .bind(reason)
    .bind(caller.token_id)
    .execute(&mut *tx)
    .await?;
    settle(tx, repository, resource).await?;
    Ok(read_ticket(tx, id).await?.expect("the ticket just inserted"))
}

/// Releases a ticket (its holder, or an owner or application) and lets the next one acquire.
pub async fn release(tx: &mut PgConnection, caller: &Caller, ticket: &Ticket) -> ApiResult<Ticket> {
    if ticket.requested_by != Some(caller.user_id) && !caller.is_owner_or_application() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the ticket's holder, an owner or an application may release it",
        ));
    }
    settle(tx, &ticket.repository, &ticket.resource).await?;
    sqlx::query(
        "UPDATE app.lock_ticket SET status = 'released', released_by = auth.uid(), updated_at = now() \
         WHERE id = $1 AND status IN ('queued', 'acquired')",
    )
    .bind(ticket.id)
    .execute(&mut *tx)
    .await?;
    settle(tx, &ticket.repository, &ticket.resource).await?;
    Ok(read_ticket(tx, ticket.id).await?.expect("the ticket exists"))
}

/// The live tickets of a resource: the holder first, then the queue in order.
pub async fn queue(tx: &mut PgConnection, repository: &str, resource: &str) -> sqlx::Result<Vec<Ticket>> {
    settle(tx, repository, resource).await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET} FROM app.lock_ticket t WHERE t.repository = $1 AND t.resource = $2 \
           AND t.status IN ('acquired', 'queued') ORDER BY t.status = 'queued', t.created_at, t.id"
    )))
    .bind(repository)
    .bind(resource)
    .fetch_all(tx)
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockRequest {
    repository: String,
    resource: String,
    lease_duration_seconds: i64,
    #[serde(default)]
    wait_timeout_seconds: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /sfp/api/locks`: a ticket, acquired at once if the resource is free, queued otherwise.
#[utoipa::path(post, path = "/locks", tag = "locks", security(("bearer" = [])), request_body = Object, responses(
    (status = 201, description = "The ticket (`status` acquired or queued, `queuePosition`)", body = Object),
    (status = 400, description = "Invalid repository, resource or durations", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<LockRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let ticket = request(
        &mut tx,
        &caller,
        &body.repository,
        &body.resource,
        body.lease_duration_seconds,
        body.wait_timeout_seconds.unwrap_or(DEFAULT_WAIT_SECONDS.max(body.lease_duration_seconds)),
        body.reason.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(ticket_json(&ticket))))
}

/// A lock path: `{repository…}/{resource}` or `{repository…}/{resource}/{ticketId}`.
struct LockPath {
    repository: String,
    resource: String,
    ticket: Option<Uuid>,
}

fn parse_path(path: &str) -> ApiResult<LockPath> {
    let mut parts: Vec<&str> = path.split('/').collect();
    let ticket = match parts.last().map(|l| Uuid::parse_str(l)) {
        Some(Ok(id)) if parts.len() >= 3 => {
            parts.pop();
            Some(id)
        }
        _ => None,
    };
    let resource = parts.pop().filter(|r| !r.is_empty());
    let repository = parts.join("/");
    match resource {
        Some(resource) if !repository.is_empty() => Ok(LockPath { repository, resource: resource.to_owned(), ticket }),
        _ => Err(ApiError::bad_request("expected /locks/{repository}/{resource}[/{ticketId}]")),
    }
}

/// `GET /sfp/api/locks/{repository}/{resource}[/{ticketId}]`: one ticket (with its queue
/// position), or every live ticket of the resource in queue order.
#[utoipa::path(get, path = "/locks/{path}", tag = "locks", security(("bearer" = [])),
    params(("path" = String, Path, description = "`{repository}/{resource}` or `{repository}/{resource}/{ticketId}`")), responses(
    (status = 200, description = "The ticket, or the resource's tickets", body = Object),
    (status = 404, description = "No such ticket", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(path): Path<String>,
) -> ApiResult<Json<Value>> {
    let target = parse_path(&path)?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let answer = match target.ticket {
        Some(id) => {
            settle(&mut tx, &target.repository, &target.resource).await?;
            let ticket = read_ticket(&mut tx, id)
                .await?
                .filter(|t| t.repository == target.repository && t.resource == target.resource)
                .ok_or_else(|| {
                    ApiError::not_found(format!("no ticket {id} for {}/{}", target.repository, target.resource))
                })?;
            ticket_json(&ticket)
        }
        None => {
            let tickets = queue(&mut tx, &target.repository, &target.resource).await?;
            Value::Array(tickets.iter().map(ticket_json).collect())
        }
    };
    tx.commit().await?;
    Ok(Json(answer))
}

/// `DELETE /sfp/api/locks/{repository}/{resource}/{ticketId}`: releases the ticket; the next
/// one in the queue acquires at once.
#[utoipa::path(delete, path = "/locks/{path}", tag = "locks", security(("bearer" = [])),
    params(("path" = String, Path, description = "`{repository}/{resource}/{ticketId}`")), responses(
    (status = 200, description = "The released ticket", body = Object),
    (status = 403, description = "Neither the holder nor an owner or application", body = ErrorBody),
    (status = 404, description = "No such ticket", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(path): Path<String>,
) -> ApiResult<Json<Value>> {
    let target = parse_path(&path)?;
    let id = target
        .ticket
        .ok_or_else(|| ApiError::bad_request("name the ticket: /locks/{repository}/{resource}/{ticketId}"))?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let ticket = read_ticket(&mut tx, id)
        .await?
        .filter(|t| t.repository == target.repository && t.resource == target.resource)
        .ok_or_else(|| ApiError::not_found(format!("no ticket {id} for {}/{}", target.repository, target.resource)))?;
    let released = release(&mut tx, &caller, &ticket).await?;
    tx.commit().await?;
    Ok(Json(ticket_json(&released)))
}
