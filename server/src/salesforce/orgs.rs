//! Registered Salesforce orgs: validated against Salesforce before they are stored, their
//! refresh tokens in the vault, access tokens minted on demand and never stored.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use zeroize::Zeroize;

use super::auth_url::{self, AuthUrl, AuthUrlError};
use super::client::{SalesforceClient, SalesforceError, TokenResponse};
use crate::vault::{Access, SecretString, Vault, VaultError};

/// A registered org as the API shows it (never its credentials).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SalesforceOrg {
    pub username: String,
    pub instance_url: String,
    pub login_url: String,
    pub org_id: String,
    /// `production`, `sandbox` or `scratch`.
    pub org_type: String,
    /// Salesforce's edition (`Enterprise Edition`, `Developer Edition`).
    pub organization_type: Option<String>,
    pub instance_name: Option<String>,
    pub org_name: Option<String>,
    pub is_dev_hub: bool,
    pub is_default: bool,
    pub parent_production_username: Option<String>,
    pub is_jit_registration: bool,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub last_connected_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Only when asked for with `includeAuthUrl=true`, by an owner or an application token.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sfdx_auth_url: Option<String>,
}

const COLUMNS: &str = "username, instance_url, login_url, org_id, org_type, organization_type, instance_name, \
    org_name, is_devhub AS is_dev_hub, is_default, parent_production_username, is_jit_registration, metadata, \
    created_at, updated_at, last_connected_at";

/// What the vault keeps of an org.
#[derive(Serialize, Deserialize)]
struct OrgSecret {
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

impl OrgSecret {
    /// The same connected app with another refresh token (rotation, a sandbox's sign-in).
    fn with_refresh_token(&self, refresh_token: String) -> OrgSecret {
        OrgSecret { client_id: self.client_id.clone(), client_secret: self.client_secret.clone(), refresh_token }
    }
}

impl Drop for OrgSecret {
    fn drop(&mut self) {
        self.client_secret.zeroize();
        self.refresh_token.zeroize();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("{0}")]
    AuthUrl(#[from] AuthUrlError),
    #[error("the connection to Salesforce failed: {0}")]
    Connection(#[from] SalesforceError),
    #[error("{0}")]
    Invalid(String),
    #[error("no org {0:?} is registered")]
    NotFound(String),
    #[error("vault: {0}")]
    Vault(#[from] VaultError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub struct Register {
    pub auth_url: SecretString,
    pub username: Option<String>,
    pub is_dev_hub: bool,
    pub is_default: bool,
    pub metadata: Value,
}

/// A live session of an org: what a worker or a frontdoor link needs.
pub struct OrgSession {
    pub username: String,
    pub org_id: String,
    pub instance_url: String,
    pub login_url: String,
    pub access_token: SecretString,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionTest {
    pub success: bool,
    pub username: String,
    pub org_id: Option<String>,
    pub instance_url: Option<String>,
    pub is_sandbox: Option<bool>,
    /// Daily API requests used and allowed.
    pub api_requests_used: Option<i64>,
    pub api_requests_max: Option<i64>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// Who is asking, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub kind: &'a str,
    pub id: Option<Uuid>,
}

#[derive(Clone)]
pub struct Orgs {
    pub pool: PgPool,
    pub vault: Arc<Vault>,
    pub client: SalesforceClient,
}

impl Orgs {
    /// Validates the auth URL with Salesforce (a refresh-token grant, userinfo, the
    /// Organization record) and stores the org, replacing one with the same username.
    pub async fn register(&self, req: Register, actor: Actor<'_>) -> Result<SalesforceOrg, OrgError> {
        let url = AuthUrl::parse(req.auth_url.expose())?;
        let login_url = url.login_url();
        let token = self
            .client
            .refresh(&login_url, &url.client_id, url.client_secret.expose(), url.refresh_token.expose())
            .await?;
        let refresh_token =
            token.refresh_token.as_ref().map_or_else(|| url.refresh_token.expose().clone(), |t| t.expose().clone());
        let secret = OrgSecret {
            client_id: url.client_id.clone(),
            client_secret: url.client_secret.expose().clone(),
            refresh_token,
        };
        let org = self
            .store(
                &token,
                &login_url,
                secret,
                req.username.as_deref(),
                req.is_dev_hub,
                req.is_default,
                req.metadata,
                None,
                actor,
            )
            .await?;
        Ok(org)
    }

    /// Registers a sandbox of a registered production org by its name: Salesforce's sandbox
    /// sign-up auth for the production user, then an authorization-code grant.
    pub async fn register_sandbox(
        &self,
        production: &str,
        sandbox_name: &str,
        is_default: bool,
        actor: Actor<'_>,
    ) -> Result<SalesforceOrg, OrgError> {
        if sandbox_name.is_empty()
            || sandbox_name.len() > 10
            || !sandbox_name.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(OrgError::Invalid("sandboxName must be 1 to 10 letters or digits".into()));
        }
        let (parent, _, secret) = self.secret_of(production).await?;
        if parent.org_type != "production" {
            return Err(OrgError::Invalid(format!("{production:?} is not a production org")));
        }
        let prod = self
            .client
            .refresh(&parent.login_url, &secret.client_id, &secret.client_secret, &secret.refresh_token)
            .await?;
        let auth =
            self.client.sandbox_auth(&prod.instance_url, &prod.access_token, &secret.client_id, sandbox_name).await?;
        let token = self
            .client
            .authorization_code(&auth.login_url, &secret.client_id, &secret.client_secret, auth.auth_code.expose())
            .await?;
        let Some(refresh_token) = token.refresh_token.as_ref().map(|t| t.expose().clone()) else {
            return Err(OrgError::Connection(SalesforceError::Unexpected(
                "the sandbox grant returned no refresh token (the connected app needs the refresh_token scope)".into(),
            )));
        };
        let sandbox_secret = secret.with_refresh_token(refresh_token);
        self.store(
            &token,
            &auth.login_url,
            sandbox_secret,
            Some(&auth.auth_user_name),
            false,
            is_default,
            serde_json::json!({"sandboxName": sandbox_name}),
            Some(production),
            actor,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        token: &TokenResponse,
        login_url: &str,
        secret: OrgSecret,
        username: Option<&str>,
        is_dev_hub: bool,
        is_default: bool,
        metadata: Value,
        parent: Option<&str>,
        actor: Actor<'_>,
    ) -> Result<SalesforceOrg, OrgError> {
        let info = self.client.userinfo(&token.instance_url, &token.access_token).await?;
        if let Some(expected) = username
            && !expected.eq_ignore_ascii_case(&info.preferred_username)
        {
            return Err(OrgError::Invalid(format!(
                "the auth URL belongs to {:?}, not to {expected:?}",
                info.preferred_username
            )));
        }
        let org = self.client.organization(&token.instance_url, &token.access_token).await?;
        let org_type = if org.trial_expiration_date.is_some() && org.is_sandbox {
            "scratch"
        } else if org.is_sandbox {
            "sandbox"
        } else {
            "production"
        };
        if is_default && !is_dev_hub {
            return Err(OrgError::Invalid("isDefault marks the default DevHub; set isDevHub too".into()));
        }
        if !metadata.is_object() {
            return Err(OrgError::Invalid("metadata must be an object".into()));
        }
        let username = info.preferred_username.to_lowercase();
        let mut tx = self.pool.begin().await?;
        let existing: Option<Uuid> =
            sqlx::query_scalar("SELECT secret_id FROM app.salesforce_org WHERE username = $1 FOR UPDATE")
                .bind(&username)
                .fetch_optional(&mut *tx)
                .await?;
        let secret_id = match existing {
            Some(id) => {
                self.vault.replace_json(&mut tx, id, &secret).await?;
                id
            }
            None => self.vault.store_json(&mut tx, "salesforce_org", &secret).await?,
        };
        if is_default {
            sqlx::query("UPDATE app.salesforce_org SET is_default = false, updated_at = now() WHERE is_default")
                .execute(&mut *tx)
                .await?;
        }
        let row: SalesforceOrg = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO app.salesforce_org (id, username, instance_url, login_url, org_id, org_type, \
               organization_type, instance_name, org_name, is_devhub, is_default, parent_production_username, \
               is_jit_registration, metadata, secret_id, created_by, last_connected_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, now()) \
             ON CONFLICT (username) DO UPDATE SET instance_url = excluded.instance_url, login_url = excluded.login_url, \
               org_id = excluded.org_id, org_type = excluded.org_type, organization_type = excluded.organization_type, \
               instance_name = excluded.instance_name, org_name = excluded.org_name, is_devhub = excluded.is_devhub, \
               is_default = excluded.is_default, parent_production_username = excluded.parent_production_username, \
               is_jit_registration = excluded.is_jit_registration, metadata = excluded.metadata, \
               updated_at = now(), last_connected_at = now() \
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::new_v4())
        .bind(&username)
        .bind(&token.instance_url)
        .bind(login_url)
        .bind(&info.organization_id)
        .bind(org_type)
        .bind(&org.organization_type)
        .bind(&org.instance_name)
        .bind(&org.name)
        .bind(is_dev_hub)
        .bind(is_default)
        .bind(parent)
        .bind(parent.is_some())
        .bind(&metadata)
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
                    subject: format!("salesforce_org:{username}"),
                    purpose: "register".into(),
                    task_id: None,
                    outcome: "granted",
                    detail: None,
                },
            )
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list(&self, org_type: Option<&str>, devhub: Option<bool>) -> Result<Vec<SalesforceOrg>, OrgError> {
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app.salesforce_org \
             WHERE ($1::text IS NULL OR org_type = $1) AND ($2::boolean IS NULL OR is_devhub = $2) ORDER BY username"
        )))
        .bind(org_type)
        .bind(devhub)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    pub async fn get(&self, username: &str) -> Result<SalesforceOrg, OrgError> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM app.salesforce_org WHERE username = $1")))
            .bind(username.to_lowercase())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| OrgError::NotFound(username.to_string()))
    }

    /// The org, the id of its vault secret, and the secret.
    async fn secret_of(&self, username: &str) -> Result<(SalesforceOrg, Uuid, OrgSecret), OrgError> {
        let org = self.get(username).await?;
        let mut conn = self.pool.acquire().await?;
        let secret_id: Uuid = sqlx::query_scalar("SELECT secret_id FROM app.salesforce_org WHERE username = $1")
            .bind(&org.username)
            .fetch_one(&mut *conn)
            .await?;
        let secret: OrgSecret = self.vault.read_json(&mut conn, secret_id).await?;
        Ok((org, secret_id, secret))
    }

    async fn log(
        &self,
        actor: Actor<'_>,
        username: &str,
        purpose: &str,
        task: Option<Uuid>,
        outcome: &str,
        detail: Option<String>,
    ) {
        let entry = Access {
            actor_kind: actor.kind,
            actor_id: actor.id,
            subject: format!("salesforce_org:{}", username.to_lowercase()),
            purpose: purpose.to_string(),
            task_id: task,
            outcome,
            detail,
        };
        self.vault.audit_detached(&self.pool, entry).await;
    }

    /// The org's auth URL (owners and application tokens asking for it); audited.
    pub async fn auth_url(&self, username: &str, actor: Actor<'_>) -> Result<SecretString, OrgError> {
        let (org, _, secret) = self.secret_of(username).await?;
        self.log(actor, username, "auth-url", None, "granted", None).await;
        let host = auth_url::host_of(&org.login_url).to_string();
        Ok(SecretString::new(auth_url::format_url(
            &secret.client_id,
            &secret.client_secret,
            &secret.refresh_token,
            &host,
        )))
    }

    /// A fresh access token of the org (a refresh-token grant); audited.
    pub async fn session(
        &self,
        username: &str,
        actor: Actor<'_>,
        purpose: &str,
        task: Option<Uuid>,
    ) -> Result<OrgSession, OrgError> {
        let (org, secret_id, secret) = match self.secret_of(username).await {
            Ok(found) => found,
            Err(e) => {
                self.log(actor, username, purpose, task, "refused", Some(e.to_string())).await;
                return Err(e);
            }
        };
        let token = match self
            .client
            .refresh(&org.login_url, &secret.client_id, &secret.client_secret, &secret.refresh_token)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.log(actor, username, purpose, task, "failed", Some(e.to_string())).await;
                return Err(e.into());
            }
        };
        if let Some(rotated) = &token.refresh_token
            && rotated.expose() != &secret.refresh_token
        {
            // Refresh-token rotation: keep the new one.
            let kept = secret.with_refresh_token(rotated.expose().clone());
            let mut conn = self.pool.acquire().await?;
            self.vault.replace_json(&mut conn, secret_id, &kept).await?;
        }
        sqlx::query("UPDATE app.salesforce_org SET last_connected_at = now() WHERE username = $1")
            .bind(&org.username)
            .execute(&self.pool)
            .await?;
        self.log(actor, username, purpose, task, "granted", None).await;
        Ok(OrgSession {
            username: org.username,
            org_id: org.org_id,
            instance_url: token.instance_url.clone(),
            login_url: org.login_url,
            access_token: SecretString::new(token.access_token.expose().clone()),
        })
    }

    pub async fn test_connection(&self, username: &str, actor: Actor<'_>) -> Result<ConnectionTest, OrgError> {
        let started = std::time::Instant::now();
        let org = self.get(username).await?;
        let outcome = async {
            let session = self.session(&org.username, actor, "test-connection", None).await?;
            let info = self.client.organization(&session.instance_url, &session.access_token).await?;
            let usage = self.client.api_usage(&session.instance_url, &session.access_token).await.ok();
            Ok::<_, OrgError>((session, info, usage))
        }
        .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        Ok(match outcome {
            Ok((session, info, usage)) => ConnectionTest {
                success: true,
                username: org.username,
                org_id: Some(session.org_id),
                instance_url: Some(session.instance_url),
                is_sandbox: Some(info.is_sandbox),
                api_requests_used: usage.map(|u| u.0),
                api_requests_max: usage.map(|u| u.1),
                latency_ms,
                error: None,
            },
            Err(OrgError::Connection(e)) => ConnectionTest {
                success: false,
                username: org.username,
                org_id: Some(org.org_id),
                instance_url: Some(org.instance_url),
                is_sandbox: None,
                api_requests_used: None,
                api_requests_max: None,
                latency_ms,
                error: Some(e.to_string()),
            },
            Err(other) => return Err(other),
        })
    }

    /// Deletes the org and revokes its refresh token at Salesforce (best effort: the org
    /// is forgotten even when Salesforce cannot be reached).
    pub async fn delete(&self, username: &str, actor: Actor<'_>) -> Result<bool, OrgError> {
        let (org, _, secret) = self.secret_of(username).await?;
        let revoked = match self.client.revoke(&org.login_url, &secret.refresh_token).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(username = %org.username, error = %e, "the refresh token could not be revoked");
                false
            }
        };
        let mut tx = self.pool.begin().await?;
        let secret_id: Option<Uuid> =
            sqlx::query_scalar("DELETE FROM app.salesforce_org WHERE username = $1 RETURNING secret_id")
                .bind(&org.username)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(id) = secret_id {
            self.vault.delete(&mut tx, id).await?;
        }
        tx.commit().await?;
        self.log(actor, &org.username, "delete", None, "granted", Some(format!("revoked: {revoked}"))).await;
        Ok(revoked)
    }
}
