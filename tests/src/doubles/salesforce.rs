//! A Salesforce stand-in: orgs with refresh tokens; it grants access tokens for them
//! (`POST /services/oauth2/token`, refresh-token and authorization-code grants), answers
//! userinfo, SOQL queries (the Organization record; empty results otherwise), limits,
//! `tooling/sandboxAuth`, and revokes tokens. It records every request it gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An org of the stand-in.
#[derive(Debug, Clone)]
pub struct Org {
    pub username: String,
    pub org_id: String,
    pub user_id: String,
    pub refresh_token: String,
    pub is_sandbox: bool,
    /// Sandboxes this (production) org may sign in to by name: name → sandbox org.
    pub sandboxes: Vec<(String, Org)>,
}

impl Org {
    pub fn new(username: &str, is_sandbox: bool) -> Org {
        Org {
            username: username.to_string(),
            org_id: format!("00D{}", super::token("", 12)),
            user_id: format!("005{}", super::token("", 12)),
            refresh_token: super::token("5Aep861TSTRT", 40),
            is_sandbox,
            sandboxes: Vec::new(),
        }
    }

    /// The auth URL an `sf org display --verbose` would print for this org.
    pub fn auth_url(&self) -> String {
        let host = if self.is_sandbox { "test.salesforce.com" } else { "login.salesforce.com" };
        format!("force://PlatformCLI::{}@{host}", self.refresh_token)
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub bearer: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    orgs: Vec<Org>,
    /// access token → username
    sessions: HashMap<String, String>,
    /// authorization code → sandbox org
    codes: HashMap<String, Org>,
    revoked: Vec<String>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
pub struct Salesforce {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!([{ "message": message, "errorCode": code }]))).into_response()
}

fn oauth_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": error, "error_description": description }))).into_response()
}

impl Salesforce {
    pub async fn start(orgs: Vec<Org>) -> Salesforce {
        let inner = Arc::new(Mutex::new(Inner { orgs, ..Default::default() }));
        let (listener, url) = super::bind().await;
        let double = Salesforce { url, inner };
        super::serve(listener, Router::new().fallback(handle).with_state(double.clone()));
        double
    }

    pub fn add(&self, org: Org) {
        self.inner.lock().unwrap().orgs.push(org);
    }

    /// Forgets an org: its refresh token is refused from now on (as after a sandbox refresh).
    pub fn remove_org(&self, username: &str) {
        self.inner.lock().unwrap().orgs.retain(|o| o.username != username);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// The access tokens granted so far, with their org's username.
    pub fn sessions(&self) -> HashMap<String, String> {
        self.inner.lock().unwrap().sessions.clone()
    }

    pub fn revoked(&self) -> Vec<String> {
        self.inner.lock().unwrap().revoked.clone()
    }

    /// Every token value the stand-in knows (refresh and access tokens), for leak checks.
    pub fn secrets(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        let mut out: Vec<String> = inner.sessions.keys().cloned().collect();
        for o in &inner.orgs {
            out.push(o.refresh_token.clone());
            out.extend(o.sandboxes.iter().map(|(_, s)| s.refresh_token.clone()));
        }
        out.extend(inner.codes.keys().cloned());
        out
    }

    fn grant(&self, org: &Org, with_refresh: bool) -> Response {
        let access = format!("{}!{}", org.org_id, super::token("AQTSTACC", 60));
        let mut inner = self.inner.lock().unwrap();
        inner.sessions.insert(access.clone(), org.username.clone());
        let mut body = json!({
            "access_token": access,
            "instance_url": self.url,
            "id": format!("https://login.salesforce.com/id/{}/{}", org.org_id, org.user_id),
            "token_type": "Bearer",
            "issued_at": chrono::Utc::now().timestamp_millis().to_string(),
            "signature": "c2lnbmF0dXJl",
            "scope": "refresh_token api web",
        });
        if with_refresh {
            body["refresh_token"] = json!(org.refresh_token);
        }
        axum::Json(body).into_response()
    }

    fn session(&self, headers: &HeaderMap) -> Option<Org> {
        let bearer = bearer(headers)?;
        let inner = self.inner.lock().unwrap();
        if inner.revoked.contains(&bearer) {
            return None;
        }
        let username = inner.sessions.get(&bearer)?;
        let all = inner.orgs.iter().flat_map(|o| std::iter::once(o).chain(o.sandboxes.iter().map(|(_, s)| s)));
        all.into_iter().find(|o| &o.username == username).cloned()
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("OAuth ")).map(str::to_string)
}

async fn handle(State(sf): State<Salesforce>, request: Request) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let headers = request.headers().clone();
    let body: Bytes = axum::body::to_bytes(request.into_body(), 1 << 24).await.unwrap_or_default();
    let body_text = String::from_utf8_lossy(&body).to_string();
    sf.inner.lock().unwrap().seen.push(Seen {
        method: method.clone(),
        path: format!("{path}{}", if query.is_empty() { String::new() } else { format!("?{query}") }),
        bearer: bearer(&headers),
        body: body_text.clone(),
    });
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body_text).unwrap_or_default();
    match (method.as_str(), path.as_str()) {
        ("POST", "/services/oauth2/token") => match form.get("grant_type").map(String::as_str) {
            Some("refresh_token") => {
                let token = form.get("refresh_token").cloned().unwrap_or_default();
                let found = {
                    let inner = sf.inner.lock().unwrap();
                    let all: Vec<Org> = inner
                        .orgs
                        .iter()
                        .flat_map(|o| std::iter::once(o.clone()).chain(o.sandboxes.iter().map(|(_, s)| s.clone())))
                        .collect();
                    all.into_iter().find(|o| o.refresh_token == token && !inner.revoked.contains(&token))
                };
                match found {
                    Some(org) => sf.grant(&org, false),
                    None => oauth_error("invalid_grant", "expired access/refresh token"),
                }
            }
            Some("authorization_code") => {
                let code = form.get("code").cloned().unwrap_or_default();
                let org = sf.inner.lock().unwrap().codes.remove(&code);
                match org {
                    Some(org) => sf.grant(&org, true),
                    None => oauth_error("invalid_grant", "invalid authorization code"),
                }
            }
            _ => oauth_error("unsupported_grant_type", "grant type not supported"),
        },
        ("POST", "/services/oauth2/revoke") => {
            let token = form.get("token").cloned().unwrap_or_default();
            let known = {
                let inner = sf.inner.lock().unwrap();
                inner.sessions.contains_key(&token) || inner.orgs.iter().any(|o| o.refresh_token == token)
            };
            if !known {
                return oauth_error("unsupported_token_type", "this token type is not supported");
            }
            sf.inner.lock().unwrap().revoked.push(token);
            StatusCode::OK.into_response()
        }
        ("GET", "/services/oauth2/userinfo") => match sf.session(&headers) {
            Some(org) => axum::Json(json!({
                "sub": format!("https://login.salesforce.com/id/{}/{}", org.org_id, org.user_id),
                "user_id": org.user_id,
                "organization_id": org.org_id,
                "preferred_username": org.username,
                "email": org.username,
                "email_verified": true,
            }))
            .into_response(),
            None => (StatusCode::FORBIDDEN, "Bad_OAuth_Token").into_response(),
        },
        ("GET", "/services/data") => {
            axum::Json(json!([{"label": "Spring '24", "url": "/services/data/v60.0", "version": "60.0"}]))
                .into_response()
        }
        _ if path.starts_with("/services/data/") => {
            let Some(org) = sf.session(&headers) else {
                return api_error(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", "Session expired or invalid");
            };
            rest(&sf, &org, &method, &path, &query, &body)
        }
        _ => api_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
    }
}

fn rest(sf: &Salesforce, org: &Org, method: &str, path: &str, query: &str, body: &[u8]) -> Response {
    let q: HashMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
    let soql = q.get("q").cloned().unwrap_or_default();
    if path.ends_with("/query") && method == "GET" {
        if soql.contains("FROM Organization") {
            return axum::Json(json!({"totalSize": 1, "done": true, "records": [{
                "attributes": {"type": "Organization", "url": format!("/services/data/v60.0/sobjects/Organization/{}", org.org_id)},
                "Id": org.org_id, "Name": "Acme", "OrganizationType": if org.is_sandbox { "Enterprise Edition" } else { "Developer Edition" },
                "IsSandbox": org.is_sandbox, "InstanceName": "CS42", "TrialExpirationDate": null,
            }]}))
            .into_response();
        }
        return axum::Json(json!({"totalSize": 0, "done": true, "records": []})).into_response();
    }
    if path.ends_with("/limits") {
        return axum::Json(json!({"DailyApiRequests": {"Max": 15000, "Remaining": 14990}})).into_response();
    }
    if path.ends_with("/tooling/sandboxAuth") && method == "POST" {
        let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let name = req["sandboxName"].as_str().unwrap_or_default().to_lowercase();
        let Some((_, sandbox)) = org.sandboxes.iter().find(|(n, _)| n.to_lowercase() == name) else {
            return api_error(StatusCode::BAD_REQUEST, "INVALID_INPUT", "no sandbox with this name was created by you");
        };
        let code = super::token("aPrxTSTCODE", 40);
        sf.inner.lock().unwrap().codes.insert(code.clone(), sandbox.clone());
        return axum::Json(json!({
            "authUserName": sandbox.username, "authCode": code, "instanceUrl": sf.url, "loginUrl": sf.url,
            "sandboxId": "0GQ000000000001", "sandboxOrgId": sandbox.org_id,
        }))
        .into_response();
    }
    api_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist")
}
