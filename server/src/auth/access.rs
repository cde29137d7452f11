//! Who may call what: one table with a rule for every route under `/sfp/api`, and the
//! middleware that enforces it, identifies the caller for the handlers, and audits the call.
//! A route without a rule is refused for everyone (and the route-table test fails), so no
//! route is ever open by omission.

use axum::RequestExt;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::audit::AuditEntry;
use super::{AuthError, Caller, CallerKind, Role};
use crate::api::error::ApiError;
use crate::state::AppState;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in caller, whatever its role.
    SignedIn,
    /// One of these roles. An application token also needs its creator's role to be listed
    /// (or the creator to be an owner): it is never more than the user who made it.
    Roles(&'static [Role]),
    /// A worker token (`sfp_wk_...`): the worker routes only.
    Worker,
    /// A step token (`sfp_st_...`), checked by the handler (it is single-use).
    StepToken,
}

/// The worker a worker token belongs to (set by the middleware on [`Access::Worker`] routes).
#[derive(Debug, Clone, Copy)]
pub struct WorkerCaller(pub uuid::Uuid);

#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    /// The route as registered, relative to `/sfp/api` (`""` is `/sfp/api` itself).
    pub path: &'static str,
    pub access: Access,
}

const OWNER: &[Role] = &[Role::Owner];
const USERS: &[Role] = &[Role::Owner, Role::Member];
const ANYONE: &[Role] = &[Role::Owner, Role::Member, Role::Application];
const OWNER_OR_APP: &[Role] = &[Role::Owner, Role::Application];

const fn rule(method: &'static str, path: &'static str, access: Access) -> Rule {
    Rule { method, path, access }
}

/// Every route of the API and who may call it.
pub const RULES: &[Rule] = &[
    rule("GET", "", Access::Public),
    rule("GET", "/ping", Access::Public),
    rule("POST", "/auth/admin/login", Access::Public),
    rule("POST", "/auth/callback", Access::Public),
    rule("GET", "/users/me", Access::SignedIn),
    rule("GET", "/application-tokens", Access::Roles(OWNER)),
    rule("POST", "/application-tokens", Access::Roles(OWNER)),
    rule("DELETE", "/application-tokens/{token}", Access::Roles(OWNER)),
    rule("GET", "/audit", Access::Roles(OWNER)),
    rule("GET", "/users", Access::Roles(OWNER)),
    rule("POST", "/users", Access::Roles(OWNER)),
    rule("DELETE", "/users", Access::Roles(OWNER)),
    rule("GET", "/users/{email}", Access::Roles(OWNER)),
    rule("PUT", "/users/{email}", Access::Roles(OWNER)),
    rule("GET", "/teams", Access::SignedIn),
    rule("POST", "/teams", Access::Roles(OWNER)),
    rule("DELETE", "/teams/{slug}", Access::Roles(OWNER)),
    // Team members read their team; the team's owners manage it (row-level security decides).
    rule("GET", "/teams/{slug}/members", Access::Roles(USERS)),
    rule("POST", "/teams/{slug}/members", Access::Roles(USERS)),
    rule("DELETE", "/teams/{slug}/members/{email}", Access::Roles(USERS)),
    rule("PUT", "/teams/{slug}/members/{email}/role", Access::Roles(USERS)),
    rule("GET", "/projects", Access::Roles(ANYONE)),
    rule("POST", "/projects", Access::Roles(OWNER)),
    rule("GET", "/projects/{*identifier}", Access::Roles(ANYONE)),
    // Key-value: everyone reads; owners and application tokens write (sfp server's matrix).
    rule("GET", "/key-value", Access::Roles(ANYONE)),
    rule("POST", "/key-value", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/key-value/upsert", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/key-value/increment", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/key-value/{*key}", Access::Roles(ANYONE)),
    rule("PUT", "/key-value/{*key}", Access::Roles(OWNER_OR_APP)),
    rule("DELETE", "/key-value/{*key}", Access::Roles(OWNER_OR_APP)),
    // Documents: everyone reads; owners and application tokens write and delete.
    rule("GET", "/doc-store/docs", Access::Roles(ANYONE)),
    rule("GET", "/doc-store/docs/{*key}", Access::Roles(ANYONE)),
    rule("POST", "/doc-store/docs/{*key}", Access::Roles(OWNER_OR_APP)),
    rule("DELETE", "/doc-store/docs/{*key}", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/doc-store/collections", Access::Roles(ANYONE)),
    rule("POST", "/doc-store/collections", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/doc-store/collections/{name}", Access::Roles(ANYONE)),
    rule("DELETE", "/doc-store/collections/{name}", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/doc-store/collections/{name}/changelog", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/doc-store/query", Access::Roles(ANYONE)),
    // Locks: anyone with a role queues and reads; release is checked per ticket.
    rule("POST", "/locks", Access::Roles(ANYONE)),
    rule("GET", "/locks/{*path}", Access::Roles(ANYONE)),
    rule("DELETE", "/locks/{*path}", Access::Roles(ANYONE)),
    // Environments: everyone reads and locks; owners and application tokens manage them.
    rule("GET", "/environments", Access::Roles(ANYONE)),
    rule("POST", "/environments", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/environments/orchestration-order", Access::Roles(ANYONE)),
    rule("GET", "/environments/{id}", Access::Roles(ANYONE)),
    rule("PATCH", "/environments/{id}", Access::Roles(OWNER_OR_APP)),
    rule("DELETE", "/environments/{id}", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/environments/{id}/lock", Access::Roles(ANYONE)),
    rule("GET", "/environments/{id}/lock/{ticket}", Access::Roles(ANYONE)),
    rule("DELETE", "/environments/{id}/lock/{ticket}", Access::Roles(ANYONE)),
    // Tasks: everyone with a role submits and follows them; a task's creator or an owner
    // cancels it (row-level security decides).
    rule("GET", "/tasks", Access::Roles(ANYONE)),
    rule("POST", "/tasks", Access::Roles(ANYONE)),
    rule("GET", "/tasks/{id}/status", Access::Roles(ANYONE)),
    rule("GET", "/tasks/{id}/result", Access::Roles(ANYONE)),
    rule("GET", "/tasks/{id}/logs", Access::Roles(ANYONE)),
    rule("DELETE", "/tasks/{id}", Access::Roles(ANYONE)),
    rule("POST", "/tasks/{id}/stop-recurring", Access::Roles(ANYONE)),
    rule("GET", "/tasks/{id}/recurring-instances", Access::Roles(ANYONE)),
    // Pipelines: everyone reads and runs them; owners and application tokens define them.
    rule("GET", "/pipelines", Access::Roles(ANYONE)),
    rule("POST", "/pipelines", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/pipelines/{name}", Access::Roles(ANYONE)),
    rule("POST", "/pipelines/{name}/runs", Access::Roles(ANYONE)),
    rule("GET", "/pipelines/runs/{id}", Access::Roles(ANYONE)),
    // Approval gates wait for an owner (row-level security decides for tokens).
    rule("POST", "/pipelines/runs/{id}/approve", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/pipelines/runs/{id}/reject", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/pipelines/runs/{id}/replay", Access::Roles(ANYONE)),
    rule("GET", "/pipelines/{name}/schedules", Access::Roles(ANYONE)),
    rule("POST", "/pipelines/{name}/schedules", Access::Roles(OWNER_OR_APP)),
    rule("DELETE", "/pipelines/{name}/schedules/{id}", Access::Roles(OWNER_OR_APP)),
    // Whoever may start a run may post an event that starts runs.
    rule("POST", "/pipeline-events", Access::Roles(ANYONE)),
    // Salesforce orgs: everyone sees them; owners and application tokens register and use
    // them (auth URLs only for them, checked again by the handler); owners delete them.
    rule("POST", "/auth/salesforce/register", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/auth/salesforce/register-sandbox-by-name", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/auth/salesforce/orgs", Access::Roles(ANYONE)),
    rule("GET", "/auth/salesforce/org", Access::Roles(ANYONE)),
    rule("DELETE", "/auth/salesforce/org", Access::Roles(OWNER)),
    rule("POST", "/auth/salesforce/test-connection", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/auth/salesforce/frontdoor", Access::Roles(OWNER_OR_APP)),
    // Integrations: users create them (never application tokens); owners list and delete
    // them; owners and application tokens read their credentials.
    rule("GET", "/integrations", Access::Roles(OWNER)),
    rule("POST", "/integrations", Access::Roles(USERS)),
    rule("DELETE", "/integrations/{id}", Access::Roles(OWNER)),
    rule("GET", "/integrations/credentials", Access::Roles(OWNER_OR_APP)),
    rule("POST", "/integrations/credentials", Access::Roles(OWNER_OR_APP)),
    rule("GET", "/repository/auth-token", Access::Roles(OWNER_OR_APP)),
    // Workers: step tokens for running steps, exchanged once.
    rule("POST", "/workers/step-token", Access::Worker),
    rule("POST", "/workers/step-token/exchange", Access::StepToken),
    rule("POST", "/workers/step-token/release", Access::StepToken),
    rule("GET", "/worker-tokens", Access::Roles(OWNER)),
    rule("POST", "/worker-tokens", Access::Roles(OWNER)),
    rule("DELETE", "/worker-tokens/{id}", Access::Roles(OWNER)),
    rule("GET", "/vault/access-log", Access::Roles(OWNER)),
];

/// Routes whose calls are not worth an audit row (liveness probes). `/sfp/apidocs-json` is
/// outside `/sfp/api` and public.
const NOT_AUDITED: &[&str] = &["", "/ping"];

pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.method == method.as_str() && r.path == path)
}

/// The body of a 403: names the roles the route needs.
pub fn forbidden(roles: &[Role]) -> ApiError {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("Forbidden - Requires role: {}", names.join(", ")))
}

/// Whether `caller` satisfies `roles`.
pub fn allows(roles: &[Role], caller: &Caller) -> bool {
    match caller.kind {
        CallerKind::User => caller.role.is_some_and(|r| roles.contains(&r)),
        CallerKind::Application => {
            roles.contains(&Role::Application)
                && caller.creator_role.is_some_and(|c| c == Role::Owner || roles.contains(&c))
        }
    }
}

fn unauthorized(e: &AuthError) -> ApiError {
    match e {
        AuthError::Database(cause) => ApiError::internal(cause),
        other => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", other.to_string()),
    }
}

/// The middleware on every `/sfp/api` route.
pub async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let relative = route.strip_prefix("/sfp/api").unwrap_or(&route).to_owned();
    let method = request.method().clone();
    let client_ip = Some(super::client_ip(request.extensions()));
    let params = request.extract_parts::<RawPathParams>().await.ok();
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let target = params
        .map(|p| p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .filter(|t| !t.is_empty());
    // The path as the client sent it (inside a nested router the URI is shortened).
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.0.path().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());

    let lookup = if method == Method::HEAD { Method::GET } else { method.clone() };
    let Some(rule) = rule_for(&lookup, &relative) else {
        if RULES.iter().any(|r| r.path == relative) {
            // Another method of a known route: the router answers 405.
            return next.run(request).await;
        }
        tracing::error!(%method, route = %route, "a route without an access rule was called; refused");
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this route has no access rule").into_response();
    };
    let bearer = super::bearer(request.headers()).map(str::to_owned);
    if matches!(rule.access, Access::Worker | Access::StepToken) {
        let who = if rule.access == Access::Worker {
            let worker = match &bearer {
                Some(t) if t.starts_with(crate::credentials::worker_tokens::PREFIX) => {
                    match crate::credentials::worker_tokens::authenticate(&state.pool, t).await {
                        Ok(found) => found,
                        Err(e) => return ApiError::from(e).into_response(),
                    }
                }
                _ => None,
            };
            let Some(worker) = worker else {
                let response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this route needs a worker token (sfp_wk_...) that is unexpired and not revoked",
                )
                .into_response();
                let who = Who { kind: "anonymous", token_id: None };
                audit_as(
                    &state,
                    None,
                    who,
                    &method,
                    &relative,
                    &path,
                    target,
                    response.status(),
                    client_ip,
                    request_id,
                );
                return response;
            };
            request.extensions_mut().insert(WorkerCaller(worker));
            Who { kind: "worker", token_id: Some(worker) }
        } else {
            Who { kind: "step", token_id: None }
        };
        let response = next.run(request).await;
        audit_as(&state, None, who, &method, &relative, &path, target, response.status(), client_ip, request_id);
        return response;
    }
    let caller = match (&bearer, rule.access) {
        (None, Access::Public) => None,
        (Some(token), Access::Public) => state.auth.authenticate(&state.pool, token).await.ok(),
        (None, _) => None,
        (Some(token), _) => match state.auth.authenticate(&state.pool, token).await {
            Ok(c) => Some(c),
            Err(e) => {
                let err = unauthorized(&e);
                let response = err.into_response();
                audit(&state, None, &method, &relative, &path, target, response.status(), client_ip, request_id);
                return response;
            }
        },
    };
    let denied = match (rule.access, &caller) {
        (Access::Public, _) => None,
        (_, None) => Some(unauthorized(&AuthError::Missing)),
        (Access::SignedIn, Some(_)) => None,
        (Access::Roles(roles), Some(c)) => (!allows(roles, c)).then(|| forbidden(roles)),
        (Access::Worker | Access::StepToken, Some(_)) => Some(unauthorized(&AuthError::Missing)),
    };
    if let Some(err) = denied {
        let response = err.into_response();
        audit(&state, caller.as_ref(), &method, &relative, &path, target, response.status(), client_ip, request_id);
        return response;
    }
    if let Some(c) = &caller {
        request.extensions_mut().insert(c.clone());
    }
    let response = next.run(request).await;
    if !NOT_AUDITED.contains(&relative.as_str()) {
        audit(&state, caller.as_ref(), &method, &relative, &path, target, response.status(), client_ip, request_id);
    }
    response
}

/// Who called, for callers that are not users or application tokens.
struct Who {
    kind: &'static str,
    token_id: Option<uuid::Uuid>,
}

#[allow(clippy::too_many_arguments)]
fn audit(
    state: &AppState,
    caller: Option<&Caller>,
    method: &Method,
    route: &str,
    path: &str,
    target: Option<String>,
    status: StatusCode,
    client_ip: Option<std::net::IpAddr>,
    request_id: Option<String>,
) {
    let who = Who {
        kind: match caller.map(|c| c.kind) {
            Some(CallerKind::User) => "user",
            Some(CallerKind::Application) => "application",
            None => "anonymous",
        },
        token_id: caller.and_then(|c| c.token_id),
    };
    audit_as(state, caller, who, method, route, path, target, status, client_ip, request_id);
}

#[allow(clippy::too_many_arguments)]
fn audit_as(
    state: &AppState,
    caller: Option<&Caller>,
    who: Who,
    method: &Method,
    route: &str,
    path: &str,
    target: Option<String>,
    status: StatusCode,
    client_ip: Option<std::net::IpAddr>,
    request_id: Option<String>,
) {
    let outcome = match status.as_u16() {
        401 | 403 | 429 => "denied",
        s if s >= 400 => "failed",
        _ => "allowed",
    };
    state.auth.audit.record(AuditEntry {
        id: None,
        at: chrono::Utc::now(),
        request_id,
        actor_id: caller.map(|c| c.user_id),
        actor_email: caller.and_then(|c| c.email.clone()),
        actor_kind: who.kind.into(),
        role: caller.and_then(|c| c.role).map(|r| r.as_str().to_owned()),
        token_id: who.token_id,
        method: method.to_string(),
        route: format!("/sfp/api{route}"),
        path: path.to_owned(),
        target,
        status: i32::from(status.as_u16()),
        outcome: outcome.into(),
        client_ip,
    });
}

/// The caller the middleware identified; a handler behind a non-public rule always has one.
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Authenticated)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", AuthError::Missing.to_string()))
    }
}
