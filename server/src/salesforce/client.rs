//! The Salesforce calls the server makes: OAuth token grants (refresh token, authorization
//! code), userinfo, a SOQL query of the Organization, limits, sandbox sign-up auth, and
//! token revocation. With `salesforce.base_url` set, all of them go there instead.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::SalesforceConfig;
use crate::vault::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum SalesforceError {
    /// Salesforce answered with an OAuth or API error (its code and description).
    #[error("Salesforce refused: {code}: {description}")]
    Refused { code: String, description: String },
    #[error("Salesforce could not be reached: {0}")]
    Unreachable(String),
    #[error("Salesforce answered unexpectedly: {0}")]
    Unexpected(String),
}

/// What a token grant returns.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub instance_url: String,
    /// `https://login.salesforce.com/id/<orgId>/<userId>`
    pub id: String,
    /// Present on authorization-code grants, and on refresh grants with rotation enabled.
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub issued_at: Option<String>,
}

impl TokenResponse {
    /// `(orgId, userId)` from the identity URL.
    pub fn ids(&self) -> Option<(String, String)> {
        let mut parts = self.id.trim_end_matches('/').rsplit('/');
        let user = parts.next()?.to_string();
        let org = parts.next()?.to_string();
        Some((org, user))
    }
}

#[derive(Debug, Deserialize)]
pub struct UserInfo {
    pub user_id: String,
    pub organization_id: String,
    pub preferred_username: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Organization {
    pub id: String,
    pub name: Option<String>,
    pub organization_type: Option<String>,
    pub is_sandbox: bool,
    pub instance_name: Option<String>,
    pub trial_expiration_date: Option<String>,
}

/// What `tooling/sandboxAuth` returns for a sandbox the production user may sign in to.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxAuth {
    pub auth_user_name: String,
    pub auth_code: SecretString,
    pub instance_url: String,
    pub login_url: String,
}

#[derive(Clone)]
pub struct SalesforceClient {
    http: reqwest::Client,
    base_url: Option<String>,
    pub api_version: String,
    pub callback_url: String,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: String,
}

impl SalesforceClient {
    pub fn new(config: &SalesforceConfig) -> SalesforceClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        SalesforceClient {
            http,
            base_url: config.base_url.as_ref().map(|u| u.trim_end_matches('/').to_string()),
            api_version: config.api_version.clone(),
            callback_url: config.callback_url.clone(),
        }
    }

    /// Where a path of `origin` (a login or instance URL) is sent.
    pub fn endpoint(&self, origin: &str, path: &str) -> String {
        match &self.base_url {
            Some(base) => format!("{base}{path}"),
            None => format!("{}{path}", origin.trim_end_matches('/')),
        }
    }

    /// Whether an instance URL Salesforce gave us may be called (https on a Salesforce
    /// domain; anything when a base URL redirects all calls).
    pub fn instance_url_ok(&self, url: &str) -> bool {
        if self.base_url.is_some() {
            return true;
        }
        let Ok(parsed) = url::Url::parse(url) else { return false };
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        parsed.scheme() == "https"
            && [".salesforce.com", ".force.com", ".salesforce.mil", ".cloudforce.com"].iter().any(|d| host.ends_with(d))
    }

    async fn token(&self, login_url: &str, form: &[(&str, &str)]) -> Result<TokenResponse, SalesforceError> {
        let response = self
            .http
            .post(self.endpoint(login_url, "/services/oauth2/token"))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).expect("a form"))
            .send()
            .await
            .map_err(|e| SalesforceError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| SalesforceError::Unreachable(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<OAuthError>(&body) {
                Ok(e) => SalesforceError::Refused { code: e.error, description: e.error_description },
                Err(_) => SalesforceError::Unexpected(format!("HTTP {status} from the token endpoint")),
            });
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| SalesforceError::Unexpected("the token endpoint's answer is not a token".into()))?;
        if !self.instance_url_ok(&token.instance_url) {
            return Err(SalesforceError::Unexpected(format!(
                "the token names the instance {:?}, which is not a Salesforce https URL",
                token.instance_url
            )));
        }
        Ok(token)
    }

    pub async fn refresh(
        &self,
        login_url: &str,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) -> Result<TokenResponse, SalesforceError> {
        let mut form =
            vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", client_id)];
        if !client_secret.is_empty() {
            form.push(("client_secret", client_secret));
        }
        form.push(("format", "json"));
        self.token(login_url, &form).await
    }

    pub async fn authorization_code(
        &self,
        login_url: &str,
        client_id: &str,
        client_secret: &str,
        code: &str,
    ) -> Result<TokenResponse, SalesforceError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", client_id),
            ("redirect_uri", self.callback_url.as_str()),
        ];
        if !client_secret.is_empty() {
            form.push(("client_secret", client_secret));
        }
        self.token(login_url, &form).await
    }

    async fn get_json(&self, instance_url: &str, path: &str, token: &SecretString) -> Result<Value, SalesforceError> {
        let response = self
            .http
            .get(self.endpoint(instance_url, path))
            .bearer_auth(token.expose())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| SalesforceError::Unreachable(e.without_url().to_string()))?;
        read_api(response).await
    }

    pub async fn userinfo(&self, instance_url: &str, token: &SecretString) -> Result<UserInfo, SalesforceError> {
        let v = self.get_json(instance_url, "/services/oauth2/userinfo", token).await?;
        serde_json::from_value(v).map_err(|e| SalesforceError::Unexpected(format!("userinfo: {e}")))
    }

    pub async fn organization(
        &self,
        instance_url: &str,
        token: &SecretString,
    ) -> Result<Organization, SalesforceError> {
        let soql = "SELECT Id, Name, OrganizationType, IsSandbox, InstanceName, TrialExpirationDate FROM Organization";
        let path = format!(
            "/services/data/v{}/query?{}",
            self.api_version,
            serde_urlencoded::to_string([("q", soql)]).expect("a query string")
        );
        let v = self.get_json(instance_url, &path, token).await?;
        let record = v["records"]
            .get(0)
            .cloned()
            .ok_or_else(|| SalesforceError::Unexpected("the Organization query returned no record".into()))?;
        serde_json::from_value(record).map_err(|e| SalesforceError::Unexpected(format!("Organization: {e}")))
    }

    /// `(used, max)` daily API requests.
    pub async fn api_usage(&self, instance_url: &str, token: &SecretString) -> Result<(i64, i64), SalesforceError> {
        let v = self.get_json(instance_url, &format!("/services/data/v{}/limits", self.api_version), token).await?;
        let max = v["DailyApiRequests"]["Max"].as_i64().unwrap_or(0);
        let remaining = v["DailyApiRequests"]["Remaining"].as_i64().unwrap_or(0);
        Ok((max - remaining, max))
    }

    pub async fn sandbox_auth(
        &self,
        instance_url: &str,
        token: &SecretString,
        client_id: &str,
        sandbox_name: &str,
    ) -> Result<SandboxAuth, SalesforceError> {
        let response = self
            .http
            .post(self.endpoint(instance_url, &format!("/services/data/v{}/tooling/sandboxAuth", self.api_version)))
            .bearer_auth(token.expose())
            .json(&serde_json::json!({
                "clientId": client_id, "sandboxName": sandbox_name, "callbackUrl": self.callback_url,
            }))
            .send()
            .await
            .map_err(|e| SalesforceError::Unreachable(e.without_url().to_string()))?;
        let v = read_api(response).await?;
        serde_json::from_value(v).map_err(|_| SalesforceError::Unexpected("sandboxAuth answered without a code".into()))
    }

    /// Revokes an access or refresh token (revoking a refresh token ends its sessions too).
    pub async fn revoke(&self, login_url: &str, token: &str) -> Result<(), SalesforceError> {
        let response = self
            .http
            .post(self.endpoint(login_url, "/services/oauth2/revoke"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([("token", token)]).expect("a form"))
            .send()
            .await
            .map_err(|e| SalesforceError::Unreachable(e.without_url().to_string()))?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<OAuthError>(&body) {
            Ok(e) => SalesforceError::Refused { code: e.error, description: e.error_description },
            Err(_) => SalesforceError::Unexpected(format!("HTTP {status} from the revoke endpoint")),
        })
    }
}

/// A REST answer, or Salesforce's `[{"errorCode", "message"}]` as an error.
async fn read_api(response: reqwest::Response) -> Result<Value, SalesforceError> {
    let status = response.status();
    let body = response.bytes().await.map_err(|e| SalesforceError::Unreachable(e.without_url().to_string()))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(v);
    }
    let first = if v.is_array() { v[0].clone() } else { v.clone() };
    let code = first["errorCode"].as_str().or(first["error"].as_str()).unwrap_or("HTTP_ERROR").to_string();
    let description = first["message"]
        .as_str()
        .or(first["error_description"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(SalesforceError::Refused { code, description })
}
