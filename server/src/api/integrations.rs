//! `/sfp/api/integrations`: credentials of GitHub, Azure DevOps, npm registries and the like
//! (created by users only, listed without their values), and `/repository/auth-token`:
//! GitHub App installation tokens of a registered project's repository.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::salesforce::actor;
use crate::auth::access::Authenticated;
use crate::integrations::github::{GithubError, RepositoryToken};
use crate::integrations::{Integration, IntegrationCredentials, IntegrationError, NewIntegration};
use crate::state::AppState;
use crate::vault::Secret;

fn integration_error(e: IntegrationError) -> ApiError {
    match e {
        IntegrationError::Invalid(m) => ApiError::bad_request(m),
        IntegrationError::NotFound(m) => ApiError::not_found(m),
        IntegrationError::Vault(e) => ApiError::internal(e),
        IntegrationError::Database(e) => e.into(),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    provider: Option<String>,
}

/// `GET /sfp/api/integrations`: every integration, without credential values.
#[utoipa::path(get, path = "/integrations", tag = "integrations", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "The integrations", body = [Integration])))]
pub async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Vec<Integration>>> {
    Ok(Json(state.credentials.integrations.list(q.provider.as_deref()).await.map_err(integration_error)?))
}

/// The body of `POST /integrations`: `{provider, authType, credentials, isGlobal?, projects?, config?}`.
/// It is read field by field so that no error message ever quotes a credential.
fn new_integration(body: &[u8]) -> Result<NewIntegration, ApiError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", "the body is not valid JSON"))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let text = |o: &serde_json::Map<String, Value>, k: &str| -> Result<String, ApiError> {
        o.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", format!("{k} is required (a string)"))
        })
    };
    let provider = text(object, "provider")?;
    let auth_type = text(object, "authType")?;
    let credentials = object.remove("credentials").ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "credentials is required (an object)")
    })?;
    let is_global = match object.get("isGlobal") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "isGlobal must be a boolean",
            ));
        }
    };
    let projects = match object.get("projects") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            a.iter().map(|p| p.as_str().map(str::to_string)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "projects must be strings")
            })?
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "projects must be an array",
            ));
        }
    };
    let config = object.get("config").cloned().filter(|c| !c.is_null()).unwrap_or_else(|| json!({}));
    for key in object.keys() {
        if !matches!(key.as_str(), "provider" | "authType" | "isGlobal" | "projects" | "config") {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("unknown field {key}"),
            ));
        }
    }
    let bytes = serde_json::to_vec(&credentials).expect("JSON serialises");
    Ok(NewIntegration { provider, auth_type, credentials: Secret::new(bytes), is_global, projects, config })
}

/// `POST /sfp/api/integrations`: stores credentials, encrypted (users only: application
/// tokens may not create credentials).
#[utoipa::path(post, path = "/integrations", tag = "integrations", security(("bearer" = [])),
    request_body(content = Object, description = "`{provider, authType, credentials, isGlobal?, projects?, config?}`"),
    responses(
    (status = 201, description = "The integration (without its credentials)", body = Integration),
    (status = 400, description = "A missing credential field, or neither isGlobal nor projects", body = ErrorBody),
    (status = 404, description = "A project is not registered", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Integration>)> {
    let new = new_integration(&body)?;
    let created = state.credentials.integrations.create(new, actor(&caller)).await.map_err(integration_error)?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `DELETE /sfp/api/integrations/{id}`
#[utoipa::path(delete, path = "/integrations/{id}", tag = "integrations", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204, description = "Deleted"), (status = 404, description = "No such integration", body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    state.credentials.integrations.delete(id).await.map_err(integration_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsQuery {
    provider: String,
    /// A project identifier: its own integrations first, then global ones.
    project: Option<String>,
    auth_type: Option<String>,
}

async fn credentials_for(
    state: &AppState,
    caller: &crate::auth::Caller,
    q: &CredentialsQuery,
) -> ApiResult<Json<Vec<IntegrationCredentials>>> {
    Ok(Json(
        state
            .credentials
            .integrations
            .credentials(&q.provider, q.auth_type.as_deref(), q.project.as_deref(), actor(caller), "credentials")
            .await
            .map_err(integration_error)?,
    ))
}

/// `GET /sfp/api/integrations/credentials?provider=&project=`: decrypted credentials; audited.
#[utoipa::path(get, path = "/integrations/credentials", tag = "integrations", security(("bearer" = [])),
    params(CredentialsQuery), responses(
    (status = 200, description = "`[{integration_id, provider, auth_type, credentials}]`", body = [IntegrationCredentials]),
    (status = 404, description = "None applies", body = ErrorBody),
))]
pub async fn credentials(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<CredentialsQuery>,
) -> ApiResult<Json<Vec<IntegrationCredentials>>> {
    credentials_for(&state, &caller, &q).await
}

/// `POST /sfp/api/integrations/credentials` with `{provider, project?, authType?}`.
#[utoipa::path(post, path = "/integrations/credentials", tag = "integrations", security(("bearer" = [])),
    request_body = CredentialsQuery, responses(
    (status = 200, description = "`[{integration_id, provider, auth_type, credentials}]`", body = [IntegrationCredentials]),
    (status = 404, description = "None applies", body = ErrorBody),
))]
pub async fn credentials_post(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    super::json::ApiJson(q): super::json::ApiJson<CredentialsQuery>,
) -> ApiResult<Json<Vec<IntegrationCredentials>>> {
    credentials_for(&state, &caller, &q).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct TokenQuery {
    /// `owner/repo` of a registered project.
    repository_identifier: String,
}

/// `GET /sfp/api/repository/auth-token?repositoryIdentifier=owner/repo`: a GitHub App
/// installation token for the repository (cached until ten minutes before it expires), or
/// the project's GitHub PAT when no App is configured.
#[utoipa::path(get, path = "/repository/auth-token", tag = "repository", security(("bearer" = [])),
    params(TokenQuery), responses(
    (status = 200, description = "`{token, expiresAt, type, provider, scope}`", body = RepositoryToken),
    (status = 404, description = "Repository not found, or no GitHub integration", body = ErrorBody),
    (status = 502, description = "GitHub refused", body = ErrorBody),
))]
pub async fn repository_token(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(q): Query<TokenQuery>,
) -> ApiResult<Json<RepositoryToken>> {
    let repo = q.repository_identifier.trim().to_string();
    let valid = repo.split('/').count() == 2
        && repo.split('/').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if !valid {
        return Err(ApiError::bad_request("repositoryIdentifier must be owner/repo"));
    }
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM app.project WHERE lower(identifier) = lower($1))")
            .bind(&repo)
            .fetch_one(&state.pool)
            .await?;
    if !known {
        return Err(ApiError::not_found("Repository not found"));
    }
    let integrations = &state.credentials.integrations;
    let purpose = format!("repository-token:{repo}");
    match integrations.credentials("github", Some("app"), Some(&repo), actor(&caller), &purpose).await {
        Ok(found) => {
            let app = &found[0];
            let token = state
                .credentials
                .github
                .installation_token(app.integration_id, &app.credentials, &repo)
                .await
                .map_err(|e| match e {
                    GithubError::Refused { .. } | GithubError::Unreachable(_) => {
                        ApiError::new(StatusCode::BAD_GATEWAY, "github_failed", e.to_string())
                    }
                    GithubError::Credentials(_) => {
                        ApiError::new(StatusCode::BAD_REQUEST, "bad_integration", e.to_string())
                    }
                })?;
            Ok(Json(token))
        }
        Err(IntegrationError::NotFound(_)) => {
            let pats = integrations
                .credentials("github", Some("pat"), Some(&repo), actor(&caller), &purpose)
                .await
                .map_err(|e| match e {
                    IntegrationError::NotFound(_) => {
                        ApiError::not_found(format!("no GitHub App or token integration applies to {repo}"))
                    }
                    other => integration_error(other),
                })?;
            let token = pats[0].credentials["token"].as_str().unwrap_or_default().to_string();
            Ok(Json(RepositoryToken {
                token,
                expires_at: chrono::Utc::now() + chrono::TimeDelta::hours(1),
                kind: "pat".into(),
                provider: "github".into(),
                scope: repo,
            }))
        }
        Err(other) => Err(integration_error(other)),
    }
}
