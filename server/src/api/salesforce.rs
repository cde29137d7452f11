//! `/sfp/api/auth/salesforce/...`: registered Salesforce orgs. Registration validates the
//! auth URL with Salesforce before anything is stored; auth URLs leave the server only for
//! owners and application tokens that ask for them, and every such read is audited.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use crate::auth::access::Authenticated;
use crate::auth::{Caller, CallerKind, Role};
use crate::salesforce::orgs::{ConnectionTest, Register};
use crate::salesforce::{Actor, OrgError, SalesforceOrg};
use crate::state::AppState;
use crate::vault::SecretString;

pub fn actor(c: &Caller) -> Actor<'static> {
    match c.kind {
        CallerKind::User => Actor { kind: "user", id: Some(c.user_id) },
        // An application token acts for the user who made it.
        CallerKind::Application => Actor { kind: "application", id: Some(c.user_id) },
    }
}

pub fn org_error(e: OrgError) -> ApiError {
    match e {
        OrgError::AuthUrl(e) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_sfdx_auth_url", e.to_string()),
        OrgError::Connection(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "connection_failed",
            format!("Invalid input or connection failed: {e}"),
        ),
        OrgError::Invalid(m) => ApiError::bad_request(m),
        OrgError::NotFound(u) => ApiError::not_found(format!("no org {u:?} is registered")),
        OrgError::Vault(e) => ApiError::internal(e),
        OrgError::Database(e) => e.into(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterOrg {
    /// `force://<clientId>:<clientSecret>:<refreshToken>@<login host>`
    #[schema(value_type = String)]
    sfdx_auth_url: SecretString,
    /// The org's user; must match the auth URL's (defaults to it).
    #[serde(default)]
    username: Option<String>,
    /// Ignored: the instance comes from Salesforce's token answer.
    #[serde(default)]
    #[allow(dead_code)]
    instance_url: Option<String>,
    #[serde(default)]
    is_dev_hub: bool,
    /// Makes this DevHub the default one (at most one is).
    #[serde(default)]
    is_default: bool,
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: Option<Value>,
}

/// `POST /sfp/api/auth/salesforce/register`: validates an SFDX auth URL (a refresh-token
/// grant, userinfo and the Organization record) and stores the org (upsert by username).
#[utoipa::path(post, path = "/auth/salesforce/register", tag = "orgs", security(("bearer" = [])),
    request_body = RegisterOrg, responses(
    (status = 201, description = "The org, validated and stored", body = SalesforceOrg),
    (status = 400, description = "Invalid input or connection failed", body = ErrorBody),
    (status = 403, description = "Requires role: owner, application", body = ErrorBody),
))]
pub async fn register(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<RegisterOrg>,
) -> ApiResult<(StatusCode, Json<SalesforceOrg>)> {
    let req = Register {
        auth_url: body.sfdx_auth_url,
        username: body.username,
        is_dev_hub: body.is_dev_hub,
        is_default: body.is_default,
        metadata: body.metadata.unwrap_or_else(|| json!({})),
    };
    let org = state.credentials.orgs.register(req, actor(&caller)).await.map_err(org_error)?;
    Ok((StatusCode::CREATED, Json(org)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterSandbox {
    /// The registered production org that created or refreshed the sandbox.
    production_username: String,
    sandbox_name: String,
    #[serde(default)]
    is_default: bool,
}

/// `POST /sfp/api/auth/salesforce/register-sandbox-by-name`: signs in to a sandbox through
/// its production org (no auth URL needed) and registers it.
#[utoipa::path(post, path = "/auth/salesforce/register-sandbox-by-name", tag = "orgs", security(("bearer" = [])),
    request_body = RegisterSandbox, responses(
    (status = 201, description = "The sandbox, registered", body = SalesforceOrg),
    (status = 400, description = "Invalid input or connection failed", body = ErrorBody),
    (status = 404, description = "The production org is not registered", body = ErrorBody),
))]
pub async fn register_sandbox(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<RegisterSandbox>,
) -> ApiResult<(StatusCode, Json<SalesforceOrg>)> {
    let org = state
        .credentials
        .orgs
        .register_sandbox(&body.production_username, &body.sandbox_name, body.is_default, actor(&caller))
        .await
        .map_err(org_error)?;
    Ok((StatusCode::CREATED, Json(org)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// `production`, `sandbox` or `scratch`
    #[serde(rename = "type")]
    org_type: Option<String>,
    devhub: Option<bool>,
    /// `k1=v1,k2=v2` or a JSON object: orgs whose metadata has these values.
    metadata: Option<String>,
    /// Include each org's sfdxAuthUrl (owners and application tokens only).
    #[serde(default)]
    include_auth_url: bool,
}

fn metadata_filter(raw: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
    let raw = raw.trim();
    if raw.starts_with('{') {
        return match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(ApiError::bad_request("metadata must be k1=v1,k2=v2 or a JSON object")),
        };
    }
    let mut m = serde_json::Map::new();
    for pair in raw.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ApiError::bad_request("metadata must be k1=v1,k2=v2 or a JSON object"))?;
        m.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
    }
    Ok(m)
}

async fn with_auth_urls(state: &AppState, caller: &Caller, orgs: &mut [SalesforceOrg]) -> ApiResult<()> {
    if !caller.is_owner_or_application() {
        return Err(crate::auth::access::forbidden(&[Role::Owner, Role::Application]));
    }
    for org in orgs {
        let url = state.credentials.orgs.auth_url(&org.username, actor(caller)).await.map_err(org_error)?;
        org.sfdx_auth_url = Some(url.expose().clone());
    }
    Ok(())
}

/// `GET /sfp/api/auth/salesforce/orgs`: the registered orgs.
#[utoipa::path(get, path = "/auth/salesforce/orgs", tag = "orgs", security(("bearer" = [])), params(ListQuery),
    responses(
    (status = 200, description = "The orgs", body = [SalesforceOrg]),
    (status = 403, description = "includeAuthUrl by a member", body = ErrorBody),
))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<SalesforceOrg>>> {
    if let Some(t) = &q.org_type
        && !matches!(t.as_str(), "production" | "sandbox" | "scratch")
    {
        return Err(ApiError::bad_request("type must be production, sandbox or scratch"));
    }
    let mut orgs = state.credentials.orgs.list(q.org_type.as_deref(), q.devhub).await.map_err(org_error)?;
    if let Some(raw) = &q.metadata {
        let filter = metadata_filter(raw)?;
        orgs.retain(|o| filter.iter().all(|(k, v)| o.metadata.get(k) == Some(v)));
    }
    if q.include_auth_url {
        with_auth_urls(&state, &caller, &mut orgs).await?;
    }
    Ok(Json(orgs))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct OrgQuery {
    username: String,
    #[serde(default)]
    include_auth_url: bool,
}

/// `GET /sfp/api/auth/salesforce/org?username=`: one org.
#[utoipa::path(get, path = "/auth/salesforce/org", tag = "orgs", security(("bearer" = [])), params(OrgQuery),
    responses(
    (status = 200, description = "The org", body = SalesforceOrg),
    (status = 404, description = "Not registered", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<OrgQuery>,
) -> ApiResult<Json<SalesforceOrg>> {
    let mut org = state.credentials.orgs.get(&q.username).await.map_err(org_error)?;
    if q.include_auth_url {
        with_auth_urls(&state, &caller, std::slice::from_mut(&mut org)).await?;
    }
    Ok(Json(org))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeleteQuery {
    username: String,
}

/// `DELETE /sfp/api/auth/salesforce/org?username=`: forgets the org and revokes its refresh
/// token at Salesforce.
#[utoipa::path(delete, path = "/auth/salesforce/org", tag = "orgs", security(("bearer" = [])), params(DeleteQuery),
    responses(
    (status = 200, description = "Deleted", body = Object),
    (status = 404, description = "Not registered", body = ErrorBody),
))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<Value>> {
    let revoked = state.credentials.orgs.delete(&q.username, actor(&caller)).await.map_err(org_error)?;
    Ok(Json(json!({"message": format!("org {} deleted", q.username.to_lowercase()), "revoked": revoked})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestConnection {
    username: String,
}

/// `POST /sfp/api/auth/salesforce/test-connection`: a fresh session and the org's API usage.
#[utoipa::path(post, path = "/auth/salesforce/test-connection", tag = "orgs", security(("bearer" = [])),
    request_body = TestConnection, responses(
    (status = 200, description = "Whether the org answers (success false names the error)", body = ConnectionTest),
    (status = 404, description = "Not registered", body = ErrorBody),
))]
pub async fn test_connection(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<TestConnection>,
) -> ApiResult<Json<ConnectionTest>> {
    Ok(Json(state.credentials.orgs.test_connection(&body.username, actor(&caller)).await.map_err(org_error)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct FrontdoorQuery {
    /// The org's username.
    target: String,
    /// Answer 302 to the URL instead of JSON.
    #[serde(default)]
    redirect: bool,
}

/// `GET /sfp/api/auth/salesforce/frontdoor?target=`: a one-click login URL to the org.
#[utoipa::path(get, path = "/auth/salesforce/frontdoor", tag = "orgs", security(("bearer" = [])),
    params(FrontdoorQuery), responses(
    (status = 200, description = "`{url}`", body = Object),
    (status = 302, description = "To the org (redirect=true)"),
    (status = 404, description = "Not registered", body = ErrorBody),
))]
pub async fn frontdoor(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<FrontdoorQuery>,
) -> ApiResult<Response> {
    let session =
        state.credentials.orgs.session(&q.target, actor(&caller), "frontdoor", None).await.map_err(org_error)?;
    let url = format!(
        "{}/secur/frontdoor.jsp?{}",
        session.instance_url.trim_end_matches('/'),
        serde_urlencoded::to_string([("sid", session.access_token.expose().as_str())]).expect("a query")
    );
    if q.redirect {
        return Ok(
            (StatusCode::FOUND, [(header::LOCATION, url), (header::CACHE_CONTROL, "no-store".into())]).into_response()
        );
    }
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(json!({"url": url, "username": session.username}))).into_response())
}
