//! Integrations: credentials of the systems around Salesforce (GitHub, Azure DevOps, npm
//! registries, Jira, AI providers), global or for some projects, encrypted in the vault.

pub mod github;
pub mod kinds;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::salesforce::Actor;
use crate::vault::{Access, Vault, VaultError};

/// An integration as listings show it: which fields its credentials have, never their values.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Integration {
    pub id: Uuid,
    pub provider: String,
    pub auth_type: String,
    pub is_global: bool,
    pub projects: Vec<String>,
    #[schema(value_type = Object)]
    pub config: Value,
    /// The names of the credential fields.
    pub fields: Vec<String>,
    pub created_by: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Decrypted credentials, in sfp server's shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IntegrationCredentials {
    pub integration_id: Uuid,
    pub provider: String,
    pub auth_type: String,
    #[schema(value_type = Object)]
    pub credentials: Value,
    #[schema(value_type = Object)]
    pub config: Value,
}

pub struct NewIntegration {
    pub provider: String,
    pub auth_type: String,
    pub credentials: crate::vault::Secret<Vec<u8>>,
    pub is_global: bool,
    pub projects: Vec<String>,
    pub config: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("vault: {0}")]
    Vault(#[from] VaultError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct WithSecret {
    #[sqlx(flatten)]
    integration: Integration,
    secret_id: Uuid,
}

const COLUMNS: &str =
    "id, provider, auth_type, is_global, projects, config, fields, created_by, created_at, updated_at";

#[derive(Clone)]
pub struct Integrations {
    pub pool: PgPool,
    pub vault: Arc<Vault>,
}

impl Integrations {
    pub async fn create(&self, new: NewIntegration, actor: Actor<'_>) -> Result<Integration, IntegrationError> {
        let credentials: Value = serde_json::from_slice(new.credentials.expose())
            .map_err(|_| IntegrationError::Invalid("credentials must be an object of strings".into()))?;
        let fields = kinds::check(&new.provider, &new.auth_type, &credentials).map_err(IntegrationError::Invalid)?;
        if !new.is_global && new.projects.is_empty() {
            return Err(IntegrationError::Invalid("Either isGlobal or projects must be specified".into()));
        }
        if !new.config.is_object() {
            return Err(IntegrationError::Invalid("config must be an object".into()));
        }
        let mut tx = self.pool.begin().await?;
        for project in &new.projects {
            let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM app.project WHERE identifier = $1)")
                .bind(project)
                .fetch_one(&mut *tx)
                .await?;
            if !known {
                return Err(IntegrationError::NotFound(format!("Project '{project}' not found")));
            }
        }
        let secret_id = self.vault.store(&mut tx, "integration", new.credentials.expose()).await?;
        let row: Integration = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO app.integration (id, provider, auth_type, is_global, projects, config, fields, secret_id, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
        )))
        .bind(Uuid::new_v4())
        .bind(&new.provider)
        .bind(&new.auth_type)
        .bind(new.is_global)
        .bind(&new.projects)
        .bind(&new.config)
        .bind(&fields)
        .bind(secret_id)
        .bind(actor.id)
        .fetch_one(&mut *tx)
        .await?;
        self.vault
            .audit(
                &mut tx,
                Access {
                    actor_kind: actor.kind,
                    actor_id: actor.id,
                    subject: format!("integration:{}", row.id),
                    purpose: "create".into(),
                    task_id: None,
                    outcome: "granted",
                    detail: Some(format!("{} {}", row.provider, row.auth_type)),
                },
            )
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list(&self, provider: Option<&str>) -> Result<Vec<Integration>, IntegrationError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app.integration WHERE ($1::text IS NULL OR provider = $1) ORDER BY created_at"
        )))
        .bind(provider)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete(&self, id: Uuid) -> Result<(), IntegrationError> {
        let mut tx = self.pool.begin().await?;
        let secret: Option<Uuid> = sqlx::query_scalar("DELETE FROM app.integration WHERE id = $1 RETURNING secret_id")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let secret = secret.ok_or_else(|| IntegrationError::NotFound(format!("no integration {id}")))?;
        self.vault.delete(&mut tx, secret).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The integrations that apply to `project` (its own first, then global ones), or all
    /// when no project is named; `auth_type` narrows them.
    async fn applicable(
        &self,
        provider: &str,
        auth_type: Option<&str>,
        project: Option<&str>,
    ) -> Result<Vec<(Integration, Uuid)>, IntegrationError> {
        let rows: Vec<WithSecret> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, secret_id FROM app.integration \
             WHERE provider = $1 AND ($2::text IS NULL OR auth_type = $2) \
               AND ($3::text IS NULL OR is_global OR $3 = ANY (projects)) \
             ORDER BY ($3::text IS NOT NULL AND $3 = ANY (projects)) DESC, created_at DESC"
        )))
        .bind(provider)
        .bind(auth_type)
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.integration, r.secret_id)).collect())
    }

    /// Decrypted credentials of a provider (for a project); every call is audited.
    pub async fn credentials(
        &self,
        provider: &str,
        auth_type: Option<&str>,
        project: Option<&str>,
        actor: Actor<'_>,
        purpose: &str,
    ) -> Result<Vec<IntegrationCredentials>, IntegrationError> {
        let found = self.applicable(provider, auth_type, project).await?;
        let mut conn = self.pool.acquire().await?;
        let mut out = Vec::new();
        for (i, secret) in found {
            let credentials: Value = self.vault.read_json(&mut conn, secret).await?;
            self.vault
                .audit(
                    &mut conn,
                    Access {
                        actor_kind: actor.kind,
                        actor_id: actor.id,
                        subject: format!("integration:{}", i.id),
                        purpose: purpose.to_string(),
                        task_id: None,
                        outcome: "granted",
                        detail: project.map(|p| format!("project {p}")),
                    },
                )
                .await?;
            out.push(IntegrationCredentials {
                integration_id: i.id,
                provider: i.provider,
                auth_type: i.auth_type,
                credentials,
                config: i.config,
            });
        }
        if out.is_empty() {
            return Err(IntegrationError::NotFound(match project {
                Some(p) => format!("no {provider} integration applies to project {p}"),
                None => format!("no {provider} integration exists"),
            }));
        }
        Ok(out)
    }
}
