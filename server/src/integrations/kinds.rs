//! Which providers and authentication types an integration may have, and the credential
//! fields each needs. Credential values are checked without ever being quoted in an error.

/// Providers sfp server documents.
pub const PROVIDERS: &[&str] = &[
    "github",
    "azuredevops",
    "azure-devops",
    "jfrog",
    "gitlab",
    "npm",
    "github_packages",
    "jira",
    "ai_anthropic",
    "ai_openai",
    "ai_google",
    "ai_github_copilot",
    "ai_amazon_bedrock",
    "datadog",
    "newrelic",
    "splunk",
];

/// `(provider family, auth type) → required credential fields`.
fn required(provider: &str, auth_type: &str) -> Option<&'static [&'static str]> {
    let family = match provider {
        "azuredevops" | "azure-devops" => "azuredevops",
        p if p.starts_with("ai_") => "ai",
        p => p,
    };
    Some(match (family, auth_type) {
        ("github", "pat") | ("gitlab", "pat") | ("azuredevops", "pat") => &["token"],
        ("github", "app") => &["appId", "privateKey"],
        ("github", "oauth") => &["clientId", "clientSecret"],
        ("azuredevops", "service_principal") => &["clientId", "clientSecret", "tenantId"],
        ("npm" | "github_packages" | "jfrog", "pat" | "api_key") => &["token"],
        ("npm" | "github_packages" | "jfrog", "basic_auth") => &["username", "password"],
        ("jira", "basic_auth") => &["base_url", "username", "api_token"],
        ("jira", "oauth_client_credentials") => &["client_id", "client_secret", "cloud_id"],
        ("jira", "pat") => &["base_url", "token"],
        ("ai", "api_key") | ("datadog" | "newrelic" | "splunk", "api_key") => &["api_key"],
        ("ai", "oauth") => &["token"],
        _ => return None,
    })
}

/// The auth types a provider accepts (for the error message).
pub fn auth_types(provider: &str) -> Vec<&'static str> {
    ["pat", "app", "oauth", "service_principal", "api_key", "basic_auth", "oauth_client_credentials"]
        .into_iter()
        .filter(|a| required(provider, a).is_some())
        .collect()
}

const MAX_VALUE: usize = 16 * 1024;

/// Checks `credentials` (an object of strings) for `provider`/`auth_type`; returns the names
/// of its fields.
pub fn check(provider: &str, auth_type: &str, credentials: &serde_json::Value) -> Result<Vec<String>, String> {
    if !PROVIDERS.contains(&provider) {
        return Err(format!("provider must be one of: {}", PROVIDERS.join(", ")));
    }
    let Some(fields) = required(provider, auth_type) else {
        return Err(format!("authType for {provider} must be one of: {}", auth_types(provider).join(", ")));
    };
    let Some(object) = credentials.as_object() else {
        return Err("credentials must be an object of strings".into());
    };
    for name in fields {
        match object.get(*name) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {}
            Some(serde_json::Value::Number(_)) if *name == "appId" => {}
            Some(serde_json::Value::String(_)) | None => {
                return Err(format!("credentials.{name} is required for {provider} {auth_type}"));
            }
            Some(_) => return Err(format!("credentials.{name} must be a string")),
        }
    }
    for (name, value) in object {
        match value {
            serde_json::Value::String(s) if s.len() <= MAX_VALUE => {}
            serde_json::Value::String(_) => return Err(format!("credentials.{name} is longer than 16 KiB")),
            // appId and installationId are numbers in GitHub's own documents.
            serde_json::Value::Number(_) if matches!(name.as_str(), "appId" | "installationId") => {}
            _ => return Err(format!("credentials.{name} must be a string")),
        }
    }
    if auth_type == "app" && provider == "github" {
        let pem = object["privateKey"].as_str().unwrap_or_default();
        if jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).is_err() {
            return Err("credentials.privateKey is not an RSA private key in PEM form".into());
        }
    }
    let mut names: Vec<String> = object.keys().cloned().collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn credentials_are_checked_without_quoting_them() {
        assert_eq!(check("github", "pat", &json!({"token": "ghp_abc"})).unwrap(), vec!["token"]);
        let err = check("github", "pat", &json!({"tokn": "ghp_secretvalue"})).unwrap_err();
        assert!(err.contains("credentials.token is required") && !err.contains("ghp_"), "{err}");
        let err = check("github", "app", &json!({"appId": 1, "privateKey": "ghp_secretvalue"})).unwrap_err();
        assert!(err.contains("privateKey") && !err.contains("ghp_"), "{err}");
        assert!(check("github", "kerberos", &json!({})).unwrap_err().contains("pat, app, oauth"));
        assert!(check("bitbucket", "pat", &json!({})).unwrap_err().starts_with("provider must be one of"));
        assert!(
            check("azure-devops", "service_principal", &json!({"clientId": "a", "clientSecret": "b", "tenantId": "c"}))
                .is_ok()
        );
        assert!(check("npm", "pat", &json!({"token": ["x"]})).unwrap_err().contains("must be a string"));
    }
}
