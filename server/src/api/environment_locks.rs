//! Locking an environment, as `sfp server environment lock` and flxbl's
//! `auth-environment-with-lock` action do it: a ticket on the resource `environment:{name}` of
//! the repository's lock queue (`locks`). Once the ticket is acquired, its holder's answer
//! carries the environment's Salesforce credentials: a fresh access token of the linked org
//! (`accessToken`, `instanceUrl`), made just in time from the stored refresh token and
//! audited; the refresh token never leaves the server.
//!
//! With `"wait": true` (the CLI's `--wait`) the request holds until the ticket is acquired
//! and answers only then (`lock_wait`); a queued ticket is otherwise polled at
//! `GET /environments/{id}/lock/{ticketId}`, which answers the holder with the credentials too.
//!
//! Credentials go to owners and application tokens (sfp server's role matrix: members view
//! environments but do not get credentials). When an acquired ticket's answer has none, it
//! says why in `authError` `{code, message}`: the lock stands either way.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::environments::{Environment, find, resource};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use super::layers::Deadline;
use super::lock_wait::{Pending, Waited};
use super::locks::{self, Ticket, ticket_json};
use super::salesforce::actor;
use crate::auth::Caller;
use crate::auth::access::Authenticated;
use crate::auth::rls::begin_as;
use crate::salesforce::OrgError;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockRequest {
    /// Minutes, as `sfp server environment lock --duration` gives them (default 60).
    #[serde(default)]
    duration: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
    /// Hold the request until the ticket is acquired (`--wait`).
    #[serde(default)]
    wait: bool,
    /// How long a queued ticket keeps its place, in minutes (`--wait-timeout`), or in seconds.
    #[serde(default)]
    wait_timeout: Option<i64>,
    #[serde(default)]
    wait_timeout_seconds: Option<i64>,
}

impl LockRequest {
    /// The lease and the wait, in seconds.
    fn durations(&self) -> ApiResult<(i64, i64)> {
        let minutes = self.duration.unwrap_or(60);
        let lease =
            minutes.checked_mul(60).filter(|s| (1..=locks::MAX_LEASE_SECONDS).contains(s)).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "duration must be between 1 and {} minutes",
                    locks::MAX_LEASE_SECONDS / 60
                ))
            })?;
        let wait = match (self.wait_timeout, self.wait_timeout_seconds) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give waitTimeout (minutes) or waitTimeoutSeconds, not both"));
            }
            (Some(m), None) => m.checked_mul(60).ok_or_else(|| ApiError::bad_request("waitTimeout is too large"))?,
            (None, Some(s)) => s,
            (None, None) => lease.max(3600),
        };
        Ok((lease, wait))
    }
}

/// `POST /sfp/api/environments/{id}/lock`: a ticket on the environment, acquired or queued;
/// with `wait`, answered once acquired. An acquired ticket comes with the org's credentials.
#[utoipa::path(post, path = "/environments/{id}/lock", tag = "environments", security(("bearer" = [])), request_body = Object,
    params(("id" = String, Path, description = "The environment's id")), responses(
    (status = 201, description = "The ticket, with environmentId, environmentName, duration and salesforceUsername; \
        when acquired, accessToken and instanceUrl (owners and applications) or authError", body = Object),
    (status = 400, description = "Invalid duration or wait", body = ErrorBody),
    (status = 404, description = "No such environment", body = ErrorBody),
    (status = 409, description = "The environment is inactive, or still locked when the wait ended (the ticket is withdrawn)", body = ErrorBody),
    (status = 503, description = "The server stopped while the request waited (the ticket is withdrawn)", body = ErrorBody),
))]
pub async fn lock(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Extension(request_deadline): Extension<Deadline>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<LockRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (lease, wait) = body.durations()?;
    let mut tx = begin_as(&state.pool, &caller).await?;
    let env = find(&mut tx, &id).await?;
    if !env.is_active {
        return Err(ApiError::new(StatusCode::CONFLICT, "inactive", format!("environment {} is not active", env.name)));
    }
    let ticket =
        locks::request(&mut tx, &caller, &env.repository, &resource(&env.name), lease, wait, body.reason.as_deref())
            .await?;
    tx.commit().await?;
    // From here until the answer, a request that ends early withdraws its ticket.
    let mut pending = Pending::new(&state.pool, &caller, ticket);
    if body.wait && pending.ticket().status == "queued" {
        // The wait is bounded by its own timeout, not by the API's request deadline.
        request_deadline.lift();
        let deadline = Utc::now() + chrono::Duration::seconds(wait);
        let waited = pending.wait(&state.lock_events, deadline).await?;
        // A waiting request answers with an acquired ticket or an error, never a ticket
        // that ended while it waited.
        let refusal = match (waited, pending.ticket().status.as_str()) {
            (Waited::Settled, "acquired") => None,
            (Waited::Settled, "released") => Some(ApiError::new(
                StatusCode::CONFLICT,
                "lock_request_released",
                format!("the lock request on environment {} was released by someone else while it waited", env.name),
            )),
            (Waited::Settled | Waited::TimedOut, _) => Some(ApiError::new(
                StatusCode::CONFLICT,
                "lock_wait_timeout",
                format!("environment {} was still locked after waiting {wait} s; the request was withdrawn", env.name),
            )),
            (Waited::ShuttingDown, _) => Some(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is stopping; the lock request was withdrawn, retry",
            )),
        };
        if let Some(refusal) = refusal {
            pending.withdraw().await?;
            return Err(refusal);
        }
    }
    let answer = answer(&state, &caller, &env, pending.ticket()).await;
    pending.answered();
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `GET /sfp/api/environments/{id}/lock/{ticket}`: the ticket's state (for a client that
/// polls a queued ticket); its holder gets the credentials once it is acquired.
#[utoipa::path(get, path = "/environments/{id}/lock/{ticket}", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "The environment's id"), ("ticket" = String, Path, description = "The ticket id")), responses(
    (status = 200, description = "The ticket, as the lock request answers it", body = Object),
    (status = 404, description = "No such environment or ticket", body = ErrorBody),
))]
pub async fn ticket(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((id, ticket)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (tx, env, ticket) = open_ticket(&state, &caller, &id, &ticket).await?;
    tx.commit().await?;
    Ok(Json(answer(&state, &caller, &env, &ticket).await))
}

/// `DELETE /sfp/api/environments/{id}/lock/{ticket}`: unlock (holder, owner or application).
#[utoipa::path(delete, path = "/environments/{id}/lock/{ticket}", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "The environment's id"), ("ticket" = String, Path, description = "The ticket id")), responses(
    (status = 200, description = "The released ticket", body = Object),
    (status = 403, description = "Neither the holder nor an owner or application", body = ErrorBody),
    (status = 404, description = "No such environment or ticket", body = ErrorBody),
))]
pub async fn unlock(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((id, ticket)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (mut tx, _, ticket) = open_ticket(&state, &caller, &id, &ticket).await?;
    let released = locks::release(&mut tx, &caller, &ticket).await?;
    tx.commit().await?;
    Ok(Json(ticket_json(&released)))
}

/// A transaction as `caller`, the environment `id` and its ticket `ticket` (its queue settled).
async fn open_ticket(
    state: &AppState,
    caller: &Caller,
    id: &str,
    ticket: &str,
) -> ApiResult<(sqlx::Transaction<'static, sqlx::Postgres>, Environment, Ticket)> {
    let mut tx = begin_as(&state.pool, caller).await?;
    let env = find(&mut tx, id).await?;
    let ticket_id =
        Uuid::parse_str(ticket).map_err(|_| ApiError::bad_request(format!("ticket {ticket:?} is not a UUID")))?;
    locks::settle(&mut tx, &env.repository, &resource(&env.name)).await?;
    let ticket = locks::read_ticket(&mut tx, ticket_id)
        .await?
        .filter(|t| t.repository == env.repository && t.resource == resource(&env.name))
        .ok_or_else(|| ApiError::not_found(format!("no ticket {ticket_id} on environment {}", env.name)))?;
    Ok((tx, env, ticket))
}

/// The ticket as `auth-environment-with-lock` reads it: with the environment, and for the
/// holder of an acquired ticket the org's credentials (or why there are none).
async fn answer(state: &AppState, caller: &Caller, env: &Environment, ticket: &Ticket) -> Value {
    let mut answer = ticket_json(ticket);
    answer["environmentId"] = json!(env.id);
    answer["environmentName"] = json!(env.name);
    answer["duration"] = json!(ticket.lease_duration_seconds / 60);
    answer["salesforceUsername"] = json!(env.salesforce_username);
    if ticket.status == "acquired" && ticket.is_held_by(caller) {
        match credentials(state, caller, env).await {
            Ok((access_token, instance_url)) => {
                answer["accessToken"] = json!(access_token);
                answer["instanceUrl"] = json!(instance_url);
            }
            Err((code, message)) => answer["authError"] = json!({"code": code, "message": message}),
        }
    }
    answer
}

/// A fresh access token of the environment's org and its instance URL, for `caller`.
async fn credentials(
    state: &AppState,
    caller: &Caller,
    env: &Environment,
) -> Result<(String, String), (&'static str, String)> {
    if !caller.is_owner_or_application() {
        return Err((
            "forbidden",
            "Forbidden - Requires role: owner, application (to get the org's credentials)".into(),
        ));
    }
    let Some(username) = &env.salesforce_username else {
        return Err(("no_salesforce_username", format!("environment {} has no Salesforce username", env.name)));
    };
    match state.credentials.orgs.session(username, actor(caller), "environment-lock", None).await {
        Ok(session) => Ok((session.access_token.expose().clone(), session.instance_url)),
        Err(OrgError::NotFound(_)) => Err((
            "org_not_registered",
            format!(
                "the org {username} of environment {} is not registered (POST /sfp/api/auth/salesforce/register)",
                env.name
            ),
        )),
        Err(OrgError::Connection(e)) => {
            Err(("salesforce_unavailable", format!("Salesforce did not grant a session: {e}")))
        }
        Err(e) => {
            tracing::error!(error = %e, environment = %env.name, "credentials for an environment lock");
            Err(("internal", "the org's credentials could not be read; see the server log".into()))
        }
    }
}
