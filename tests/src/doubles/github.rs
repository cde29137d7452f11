//! A GitHub stand-in for App installation tokens: it checks the RS256 app JWT against the
//! App's public key (iss = the App id, exp at most 10 minutes ahead), finds the
//! installation of a repository and issues `ghs_` tokens for it.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub const INSTALLATION_ID: u64 = 4242;

/// An RSA key pair in PEM form (made by Node's crypto, which every test machine has).
pub fn rsa_key_pair() -> (String, String) {
    let out = std::process::Command::new("node")
        .args([
            "-e",
            "const {generateKeyPairSync}=require('crypto');\
             const k=generateKeyPairSync('rsa',{modulusLength:2048,publicKeyEncoding:{type:'spki',format:'pem'},\
             privateKeyEncoding:{type:'pkcs8',format:'pem'}});\
             process.stdout.write(JSON.stringify([k.privateKey,k.publicKey]))",
        ])
        .output()
        .expect("node makes an RSA key");
    assert!(out.status.success(), "node: {}", String::from_utf8_lossy(&out.stderr));
    let pair: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    (pair[0].clone(), pair[1].clone())
}

#[derive(Default)]
struct Inner {
    issued: Vec<String>,
    /// (installation, repositories asked for)
    requests: Vec<(u64, serde_json::Value)>,
}

#[derive(Clone)]
pub struct Github {
    pub url: String,
    app_id: String,
    public_key: String,
    inner: Arc<Mutex<Inner>>,
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
    exp: i64,
}

impl Github {
    pub async fn start(app_id: &str, public_key_pem: &str) -> Github {
        let (listener, url) = super::bind().await;
        let double =
            Github { url, app_id: app_id.to_string(), public_key: public_key_pem.to_string(), inner: Arc::default() };
        let router = Router::new()
            .route("/repos/{owner}/{repo}/installation", get(installation))
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .with_state(double.clone());
        super::serve(listener, router);
        double
    }

    pub fn issued(&self) -> Vec<String> {
        self.inner.lock().unwrap().issued.clone()
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let unauthorized =
            |m: &str| Box::new((StatusCode::UNAUTHORIZED, axum::Json(json!({"message": m}))).into_response());
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("Requires authentication"))?;
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(self.public_key.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|_| unauthorized("A JSON web token could not be decoded"))?;
        let c = data.claims;
        let now = chrono::Utc::now().timestamp();
        if c.iss != self.app_id || c.exp - now > 600 || c.iat > now + 60 {
            return Err(unauthorized("'Issuer' claim ('iss') must be the App id; exp at most 10 minutes ahead"));
        }
        Ok(())
    }
}

async fn installation(
    State(gh): State<Github>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    if let Err(r) = gh.check(&headers) {
        return *r;
    }
    axum::Json(json!({"id": INSTALLATION_ID, "account": {"login": owner}, "repository_selection": "selected", "app_slug": "sfp", "repo": repo}))
        .into_response()
}

async fn access_token(
    State(gh): State<Github>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = gh.check(&headers) {
        return *r;
    }
    if id != INSTALLATION_ID {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Not Found"}))).into_response();
    }
    let token = super::token("ghs_TSTINST", 36);
    let mut inner = gh.inner.lock().unwrap();
    inner.issued.push(token.clone());
    inner.requests.push((id, serde_json::from_slice(&body).unwrap_or_default()));
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "token": token,
            "expires_at": (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "permissions": {"contents": "read", "metadata": "read"},
            "repository_selection": "selected",
        })),
    )
        .into_response()
}
