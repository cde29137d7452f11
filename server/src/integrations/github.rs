//! GitHub App installation tokens: an RS256 app JWT (iat 60 s back, 9 minutes ahead, iss =
//! the App id) exchanged for an installation access token of one repository, cached until
//! ten minutes before it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::vault::SecretString;

/// Renew tokens this long before GitHub's expiry.
const RENEW_BEFORE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("the GitHub App's credentials are not usable: {0}")]
    Credentials(String),
    #[error("GitHub refused: HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("GitHub could not be reached: {0}")]
    Unreachable(String),
}

/// An installation token as `GET /repository/auth-token` answers it.
#[derive(Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// `installation` (GitHub App) or `pat`.
    #[serde(rename = "type")]
    pub kind: String,
    pub provider: String,
    /// The repository the token is for.
    pub scope: String,
}

impl std::fmt::Debug for RepositoryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryToken").field("scope", &self.scope).field("expires_at", &self.expires_at).finish()
    }
}

#[derive(Serialize)]
struct AppClaims {
    iat: i64,
    exp: i64,
    iss: String,
}

#[derive(Deserialize)]
struct AccessToken {
    token: SecretString,
    expires_at: DateTime<Utc>,
}

pub struct GithubApps {
    http: reqwest::Client,
    api_url: String,
    cache: Mutex<HashMap<(Uuid, String), RepositoryToken>>,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl GithubApps {
    pub fn new(api_url: &str) -> GithubApps {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .user_agent(concat!("sfp-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client");
        GithubApps { http, api_url: api_url.trim_end_matches('/').to_string(), cache: Mutex::new(HashMap::new()) }
    }

    fn app_jwt(credentials: &Value) -> Result<String, GithubError> {
        let app_id = text_of(&credentials["appId"]).ok_or_else(|| GithubError::Credentials("no appId".into()))?;
        let pem = credentials["privateKey"].as_str().unwrap_or_default();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| GithubError::Credentials("privateKey is not an RSA key in PEM form".into()))?;
        let now = Utc::now().timestamp();
        let claims = AppClaims { iat: now - 60, exp: now + 540, iss: app_id };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
            .map_err(|e| GithubError::Credentials(format!("signing the app JWT: {e}")))
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, GithubError> {
        let response = request
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .send()
            .await
            .map_err(|e| GithubError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message").chars().take(300).collect();
            return Err(GithubError::Refused { status: status.as_u16(), message });
        }
        Ok(body)
    }

    /// An installation token for `repository` (`owner/repo`) from the App of integration `id`.
    pub async fn installation_token(
        &self,
        id: Uuid,
        credentials: &Value,
        repository: &str,
    ) -> Result<RepositoryToken, GithubError> {
        let key = (id, repository.to_lowercase());
        if let Some(cached) = self.cache.lock().expect("token cache").get(&key)
            && cached.expires_at - RENEW_BEFORE > Utc::now()
        {
            return Ok(cached.clone());
        }
        let jwt = Self::app_jwt(credentials)?;
        let installation = match text_of(&credentials["installationId"]) {
            Some(i) => i,
            None => {
                let found = self
                    .call(self.http.get(format!("{}/repos/{repository}/installation", self.api_url)).bearer_auth(&jwt))
                    .await?;
                text_of(&found["id"]).ok_or_else(|| GithubError::Credentials("the installation has no id".into()))?
            }
        };
        let name = repository.split_once('/').map_or(repository, |(_, n)| n);
        let body = self
            .call(
                self.http
                    .post(format!("{}/app/installations/{installation}/access_tokens", self.api_url))
                    .bearer_auth(&jwt)
                    .json(&serde_json::json!({ "repositories": [name] })),
            )
            .await?;
        let token: AccessToken = serde_json::from_value(body)
            .map_err(|_| GithubError::Credentials("GitHub's answer holds no token".into()))?;
        let out = RepositoryToken {
            token: token.token.expose().clone(),
            expires_at: token.expires_at,
            kind: "installation".into(),
            provider: "github".into(),
            scope: repository.to_string(),
        };
        self.cache.lock().expect("token cache").insert(key, out.clone());
        Ok(out)
    }
}
