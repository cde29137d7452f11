//! `/sfp/api/projects`: the source repositories the instance builds. Every query runs under
//! row-level security with the caller's claims: which projects exist for a caller is decided
//! by the database's policies (a team's projects are its members'), not by these handlers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::ApiJson;
use crate::auth::access::Authenticated;
use crate::auth::rls::{self, begin_as};
use crate::state::AppState;

#[derive(sqlx::FromRow)]
struct ProjectRow {
    identifier: String,
    remote_url: String,
    platform: String,
    team: Option<String>,
    configuration: Value,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn project_json(p: &ProjectRow) -> Value {
    json!({
        "identifier": p.identifier,
        "remoteUrl": p.remote_url,
        "platform": p.platform,
        "team": p.team,
        "configuration": p.configuration,
        "version": p.version,
        "createdAt": p.created_at,
        "updatedAt": p.updated_at,
    })
}

const SELECT: &str = "SELECT p.identifier, p.remote_url, p.platform, t.slug AS team, p.configuration, p.version, \
     p.created_at, p.updated_at FROM app.project p LEFT JOIN app.team t ON t.id = p.team_id";

/// `GET /sfp/api/projects`: every project the caller may see (no filter here on purpose: the
/// policies are the filter).
#[utoipa::path(get, path = "/projects", tag = "projects", security(("bearer" = [])), responses(
    (status = 200, description = "The projects", body = Object), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn list(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let rows: Vec<ProjectRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY p.identifier"))).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(Json(Value::Array(rows.iter().map(project_json).collect())))
}

/// `GET /sfp/api/projects/{identifier}` (the identifier may contain `/`, as `org/repo`).
#[utoipa::path(get, path = "/projects/{identifier}", tag = "projects", security(("bearer" = [])),
    params(("identifier" = String, Path, description = "The project, e.g. `org/repo`; may contain `/`")), responses(
    (status = 200, description = "The project", body = Object),
    (status = 404, description = "No such project for the caller", body = ErrorBody),
    (status = 401, description = "No valid credentials", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(identifier): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut tx = begin_as(&state.pool, &caller).await?;
    let row: Option<ProjectRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE p.identifier = $1")))
        .bind(&identifier)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("no project {identifier:?}")))?;
    Ok(Json(project_json(&row)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewProject {
    identifier: String,
    remote_url: String,
    /// The team (slug) whose members may see the project; none: owners only.
    team: Option<String>,
    configuration: Option<Value>,
}

fn platform_of(url: &str) -> &'static str {
    let lower = url.to_ascii_lowercase();
    if lower.contains("github.com") || lower.contains("github") {
        "github"
    } else if lower.contains("dev.azure.com") || lower.contains("visualstudio.com") {
        "azure-devops"
    } else if lower.contains("gitlab") {
        "gitlab"
    } else if lower.contains("bitbucket") {
        "bitbucket"
    } else {
        "git"
    }
}

/// `POST /sfp/api/projects`: 409 if the project exists (POST never overwrites).
#[utoipa::path(post, path = "/projects", tag = "projects", security(("bearer" = [])), request_body = NewProject, responses(
    (status = 201, description = "Created", body = Object),
    (status = 400, description = "Invalid identifier, URL or configuration", body = ErrorBody),
    (status = 404, description = "No such team", body = ErrorBody),
    (status = 409, description = "The project exists", body = ErrorBody), (status = 401, description = "No valid credentials", body = ErrorBody), (status = 403, description = "The caller's role may not do this", body = ErrorBody),
))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewProject>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let identifier = body.identifier.trim();
    if identifier.is_empty()
        || identifier.len() > 200
        || identifier.starts_with('/')
        || identifier.ends_with('/')
        || identifier.chars().any(char::is_whitespace)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "identifier must be 1 to 200 characters without spaces, such as org/repo",
        ));
    }
    let remote = body.remote_url.trim();
    if remote.is_empty() || remote.len() > 2000 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", "remoteUrl is required"));
    }
    let configuration = body.configuration.unwrap_or_else(|| json!({}));
    if !configuration.is_object() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", "configuration must be an object"));
    }
    let mut tx = begin_as(&state.pool, &caller).await?;
    let team_id: Option<Uuid> = match &body.team {
        Some(slug) => Some(
            sqlx::query_scalar("SELECT id FROM app.team WHERE slug = $1")
                .bind(slug)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no team {slug:?}")))?,
        ),
        None => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO app.project (id, identifier, remote_url, platform, team_id, configuration, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(identifier)
    .bind(remote)
    .bind(platform_of(remote))
    .bind(team_id)
    .bind(&configuration)
    .bind(caller.user_id)
    .execute(&mut *tx)
    .await;
    inserted.map_err(|e| {
        rls::write_error(
            e,
            || format!("project {identifier:?} already exists; POST never replaces a project"),
            || "you may not add projects to this team".into(),
        )
    })?;
    let row: ProjectRow = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE p.identifier = $1")))
        .bind(identifier)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(project_json(&row))))
}
