//! SFDX auth URLs: `force://<clientId>:<clientSecret>:<refreshToken>@<login host>`, parsed as
//! strictly as `@salesforce/core` does (and a little more: the host must be a Salesforce
//! host, and nothing may follow it). Errors never quote the URL, which holds a refresh token.

use crate::vault::SecretString;

/// The connected app of the Salesforce CLIs, used when an auth URL names none.
pub const DEFAULT_CLIENT_ID: &str = "PlatformCLI";

/// Domains Salesforce logs in on (production, sandboxes, My Domain, Government Cloud).
const SALESFORCE_DOMAINS: &[&str] = &[".salesforce.com", ".force.com", ".salesforce.mil", ".cloudforce.com"];

pub struct AuthUrl {
    pub client_id: String,
    pub client_secret: SecretString,
    pub refresh_token: SecretString,
    /// The login host, lower case, without scheme (`login.salesforce.com`).
    pub host: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthUrlError {
    #[error("sfdxAuthUrl must look like force://<clientId>:<clientSecret>:<refreshToken>@<login host>: {0}")]
    Shape(&'static str),
    #[error("sfdxAuthUrl names the host {0:?}, which is not a Salesforce login host (*.salesforce.com, *.force.com)")]
    Host(String),
}

fn token_chars(s: &str, allow_empty: bool) -> bool {
    // [a-zA-Z0-9._-]+ followed by at most two '=' (base64 padding), as sfdx-core accepts.
    let body = s.trim_end_matches('=');
    s.len() - body.len() <= 2
        && (allow_empty || !body.is_empty())
        && body.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl AuthUrl {
    pub fn parse(raw: &str) -> Result<AuthUrl, AuthUrlError> {
        let raw = raw.trim();
        let rest = raw.strip_prefix("force://").ok_or(AuthUrlError::Shape("it must start with force://"))?;
        let (credentials, host) =
            rest.rsplit_once('@').ok_or(AuthUrlError::Shape("the login host after '@' is missing"))?;
        let parts: Vec<&str> = credentials.split(':').collect();
        let (client_id, client_secret, refresh_token) = match parts.as_slice() {
            [id, secret, token] => (*id, *secret, *token),
            [token] => (DEFAULT_CLIENT_ID, "", *token),
            _ => return Err(AuthUrlError::Shape("it needs clientId:clientSecret:refreshToken before '@'")),
        };
        if !token_chars(client_id, false) {
            return Err(AuthUrlError::Shape("the client id is empty or has characters outside [A-Za-z0-9._-]"));
        }
        if !token_chars(client_secret, true) {
            return Err(AuthUrlError::Shape("the client secret has characters outside [A-Za-z0-9._-]"));
        }
        if !token_chars(refresh_token, false) {
            return Err(AuthUrlError::Shape("the refresh token is empty or has characters outside [A-Za-z0-9._-]"));
        }
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')) {
            return Err(AuthUrlError::Shape("the login host must be a plain host name (no scheme, port or path)"));
        }
        let host = host.to_ascii_lowercase();
        if !SALESFORCE_DOMAINS.iter().any(|d| host.ends_with(d)) || host.contains("..") {
            return Err(AuthUrlError::Host(host));
        }
        Ok(AuthUrl {
            client_id: client_id.to_string(),
            client_secret: SecretString::new(client_secret.to_string()),
            refresh_token: SecretString::new(refresh_token.to_string()),
            host,
        })
    }

    pub fn login_url(&self) -> String {
        format!("https://{}", self.host)
    }

    /// Whether the login host is a sandbox's (`test.salesforce.com`, `*--*.sandbox.my...`).
    pub fn is_sandbox_host(&self) -> bool {
        is_sandbox_host(&self.host)
    }

    /// The auth URL again, as sfdx-core writes it.
    pub fn to_url(&self) -> SecretString {
        SecretString::new(format_url(
            &self.client_id,
            self.client_secret.expose(),
            self.refresh_token.expose(),
            &self.host,
        ))
    }
}

pub fn is_sandbox_host(host: &str) -> bool {
    host == "test.salesforce.com" || host.contains(".sandbox.") || host.contains("--")
}

pub fn format_url(client_id: &str, client_secret: &str, refresh_token: &str, host: &str) -> String {
    format!("force://{client_id}:{client_secret}:{refresh_token}@{host}")
}

/// The host of a login URL (`https://login.salesforce.com` → `login.salesforce.com`).
pub fn host_of(login_url: &str) -> &str {
    let rest = login_url.split_once("://").map_or(login_url, |(_, r)| r);
    rest.split(['/', ':']).next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_urls_parse_like_sfdx_core() {
        let a = AuthUrl::parse("force://PlatformCLI::5Aep861_XXXX==@Login.Salesforce.com").unwrap();
        assert_eq!((a.client_id.as_str(), a.host.as_str()), ("PlatformCLI", "login.salesforce.com"));
        assert_eq!(a.refresh_token.expose(), "5Aep861_XXXX==");
        assert_eq!(a.client_secret.expose(), "");
        assert!(!a.is_sandbox_host());
        assert_eq!(a.to_url().expose(), "force://PlatformCLI::5Aep861_XXXX==@login.salesforce.com");
        let b = AuthUrl::parse("force://3MVG9.app:SECRET1:5Aep.tok@acme--uat.sandbox.my.salesforce.com").unwrap();
        assert!(b.is_sandbox_host());
        assert_eq!(b.login_url(), "https://acme--uat.sandbox.my.salesforce.com");
        let short = AuthUrl::parse("force://5Aep861tok@test.salesforce.com").unwrap();
        assert_eq!(short.client_id, DEFAULT_CLIENT_ID);
    }

    #[test]
    fn bad_auth_urls_are_refused_without_quoting_them() {
        for bad in [
            "https://PlatformCLI::5Aep861tok@login.salesforce.com",
            "force://PlatformCLI::5Aep861tok",
            "force://PlatformCLI::@login.salesforce.com",
            "force://a:b:c:5Aep861tok@login.salesforce.com",
            "force://PlatformCLI::5Aep861 tok@login.salesforce.com",
            "force://PlatformCLI::5Aep861tok@login.salesforce.com/path",
            "force://PlatformCLI::5Aep861tok@login.salesforce.com:8443",
            "force://PlatformCLI::5Aep861tok@evil.example.com",
            "force://PlatformCLI::5Aep861tok===@login.salesforce.com",
        ] {
            let err = AuthUrl::parse(bad).err().unwrap_or_else(|| panic!("accepted {bad}")).to_string();
            assert!(!err.contains("5Aep861"), "{err}");
        }
        assert_eq!(host_of("https://login.salesforce.com/"), "login.salesforce.com");
    }
}
