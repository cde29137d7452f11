//! Credentials: the vault's encryption (bound to the row, the key), key rotation, Salesforce
//! orgs against a local Salesforce stand-in, integrations and GitHub App tokens, and who may
//! read what. Every response that should not carry a secret is checked for all of them.

use std::path::Path;

use serde_json::{Value, json};
use sfp_server::auth::Role;
use sfp_server::vault::{Vault, VaultError, rotate};
use sfp_tests::doubles::github::{Github, rsa_key_pair};
use sfp_tests::doubles::salesforce::{Org, Salesforce};
use sqlx::PgPool;

use crate::support::TestApi;

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Sample {
    token: String,
}

async fn vault_at(path: &Path, pool: &PgPool) -> Vault {
    Vault::open(path, pool).await.unwrap()
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_secret_is_bound_to_its_row_and_its_key(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("vault-keys.json");
    let vault = vault_at(&keys, &pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let value = Sample { token: "ghp_VaultSecretValue123".into() };
    let id = vault.store_json(&mut conn, "test", &value).await.unwrap();
    let other = vault.store_json(&mut conn, "test", &Sample { token: "other".into() }).await.unwrap();
    assert_eq!(vault.read_json::<Sample>(&mut conn, id).await.unwrap(), value);

    let (ciphertext, wrapped): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT ciphertext, wrapped_key FROM vault.secret WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let needle = b"VaultSecretValue";
    assert!(!ciphertext.windows(needle.len()).any(|w| w == needle), "the database holds no plaintext");
    assert!(!wrapped.is_empty());

    // The ciphertext and its wrapped key, copied onto another row, do not decrypt there.
    sqlx::query("UPDATE vault.secret SET ciphertext = $2, wrapped_key = $3 WHERE id = $1")
        .bind(other)
        .bind(&ciphertext)
        .bind(&wrapped)
        .execute(&pool)
        .await
        .unwrap();
    let err = vault.read(&mut conn, other).await.unwrap_err();
    assert!(matches!(err, VaultError::Cipher(_)), "{err}");
    assert!(!err.to_string().contains("VaultSecret"));

    // A key file with the same key id but other key bytes cannot decrypt.
    let raw: Value = serde_json::from_slice(&std::fs::read(&keys).unwrap()).unwrap();
    let active = raw["active"].as_str().unwrap().to_string();
    let forged_path = dir.path().join("forged.json");
    let forged = json!({"active": active, "keys": {active.clone(): base64_key(7)}});
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let wrong = vault_at(&forged_path, &pool).await;
    assert!(matches!(wrong.read(&mut conn, id).await.unwrap_err(), VaultError::Cipher(_)));

    // A key file without the database's key is refused at start.
    let missing = dir.path().join("missing.json");
    std::fs::write(&missing, json!({"active": "kek-x", "keys": {"kek-x": base64_key(9)}}).to_string()).unwrap();
    let refused = Vault::open(&missing, &pool).await.unwrap_err().to_string();
    assert!(refused.contains(&active), "{refused}");
}

fn base64_key(byte: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn rotation_rewraps_every_secret_and_keeps_it_readable(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("vault-keys.json");
    let vault = vault_at(&keys, &pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(vault.store_json(&mut conn, "test", &Sample { token: format!("value-{i}") }).await.unwrap());
    }
    let before: String = sqlx::query_scalar("SELECT kek_id FROM vault.active_key").fetch_one(&pool).await.unwrap();
    let ciphertexts: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT ciphertext FROM vault.secret ORDER BY id").fetch_all(&pool).await.unwrap();

    // The running vault keeps its old key ring; rotation happens beside it.
    let report = rotate::rotate(&keys, &pool, true).await.unwrap();
    assert_eq!(report.previous_key, before);
    assert_ne!(report.active_key, before);
    assert_eq!(report.rewrapped, 5);
    assert_eq!(report.retired_keys, vec![before.clone()]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.secret WHERE kek_id <> $1")
        .bind(&report.active_key)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let after: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT ciphertext FROM vault.secret ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(ciphertexts, after, "values are not re-encrypted, only their data keys");

    for (i, id) in ids.iter().enumerate() {
        let v: Sample = vault.read_json(&mut conn, *id).await.unwrap();
        assert_eq!(v.token, format!("value-{i}"));
    }
    let new = vault.store_json(&mut conn, "test", &Sample { token: "new".into() }).await.unwrap();
    let kek: String =
        sqlx::query_scalar("SELECT kek_id FROM vault.secret WHERE id = $1").bind(new).fetch_one(&pool).await.unwrap();
    assert_eq!(kek, report.active_key, "new secrets use the new key");
    let file: Value = serde_json::from_slice(&std::fs::read(&keys).unwrap()).unwrap();
    assert_eq!(file["keys"].as_object().unwrap().len(), 1, "the retired key left the file");
}

/// An API client that keeps every body it was answered, for the leak check.
struct Recorder {
    api: TestApi,
    bodies: Vec<String>,
}

impl Recorder {
    async fn call(&mut self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.api.request(method, path).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let response = r.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.bodies.push(format!("{method} {path} -> {status} {text}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call whose answer is supposed to hold a secret (not recorded for the leak check).
    async fn secret_call(&self, method: &str, path: &str, token: &str) -> (u16, Value) {
        let response = self.api.request(method, path).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn assert_no_leak(&self, secrets: &[String]) {
        for body in &self.bodies {
            for s in secrets {
                assert!(!body.contains(s.as_str()), "a response leaked a secret: {body}");
            }
        }
    }
}

async fn api_with_doubles(pool: PgPool, sf: &Salesforce, github_url: &str) -> Recorder {
    let mut config = sfp_server::config::Config::default();
    config.salesforce.base_url = Some(sf.url.clone());
    config.github.api_url = github_url.to_string();
    Recorder { api: TestApi::spawn_full(pool, config).await, bodies: Vec::new() }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn orgs_are_validated_stored_encrypted_and_shown_by_role(pool: PgPool) {
    let mut prod = Org::new("release@acme.com", false);
    let uat = Org::new("release@acme.com.uat", true);
    prod.sandboxes.push(("uat".into(), uat.clone()));
    let qa = Org::new("qa@acme.com.qa", true);
    let sf = Salesforce::start(vec![prod.clone(), qa.clone()]).await;
    let mut api = api_with_doubles(pool.clone(), &sf, "http://127.0.0.1:9").await;
    let owner = api.api.admin_token().await;
    let member = api.api.user("dev@acme.com", "a member's long password", Role::Member).await;
    let app = api.api.application_token(&owner, 30).await["token"].as_str().unwrap().to_string();

    // Bad auth URLs and refused refresh tokens store nothing.
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register",
            &owner,
            Some(json!({"sfdxAuthUrl": "force://PlatformCLI::5Aep861Bad@evil.example.com"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_sfdx_auth_url")), "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register",
            &owner,
            Some(json!({"sfdxAuthUrl": "force://PlatformCLI::5Aep861Unknown@login.salesforce.com"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("connection_failed")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("invalid_grant"), "{body}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.secret").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 0);
    let (status, _) = api
        .call("POST", "/sfp/api/auth/salesforce/register", &member, Some(json!({"sfdxAuthUrl": prod.auth_url()})))
        .await;
    assert_eq!(status, 403, "members do not register orgs");

    let (status, body) = api
        .call("POST", "/sfp/api/auth/salesforce/register", &owner,
              Some(json!({"sfdxAuthUrl": prod.auth_url(), "isDevHub": true, "isDefault": true, "metadata": {"team": "core"}})))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["username"], "release@acme.com");
    assert_eq!(body["orgId"], prod.org_id.as_str());
    assert_eq!(
        (body["orgType"].as_str(), body["isDevHub"].as_bool(), body["isDefault"].as_bool()),
        (Some("production"), Some(true), Some(true))
    );
    assert!(body.get("sfdxAuthUrl").is_none());
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register",
            &app,
            Some(json!({"sfdxAuthUrl": qa.auth_url(), "username": "qa@acme.com.qa"})),
        )
        .await;
    assert_eq!((status, body["orgType"].as_str()), (201, Some("sandbox")), "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register",
            &owner,
            Some(json!({"sfdxAuthUrl": qa.auth_url(), "username": "someone@else.com"})),
        )
        .await;
    assert_eq!(status, 400, "the username must be the auth URL's: {body}");

    // The vault holds the refresh tokens encrypted.
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT ciphertext FROM vault.secret").fetch_all(&pool).await.unwrap();
    assert_eq!(stored.len(), 2);
    for c in &stored {
        for secret in [&prod.refresh_token, &qa.refresh_token] {
            assert!(!c.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }

    // Members see the orgs, never their auth URLs.
    let (status, body) = api.call("GET", "/sfp/api/auth/salesforce/orgs", &member, None).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (status, body) = api.call("GET", "/sfp/api/auth/salesforce/orgs?includeAuthUrl=true", &member, None).await;
    assert_eq!((status, body["message"].as_str()), (403, Some("Forbidden - Requires role: owner, application")));
    let (status, _) = api
        .call("GET", "/sfp/api/auth/salesforce/org?username=qa@acme.com.qa&includeAuthUrl=true", &member, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = api.call("GET", "/sfp/api/auth/salesforce/frontdoor?target=qa@acme.com.qa", &member, None).await;
    assert_eq!(status, 403);
    let (_, filtered) =
        api.call("GET", "/sfp/api/auth/salesforce/orgs?devhub=true&metadata=team=core", &member, None).await;
    assert_eq!(filtered.as_array().unwrap().len(), 1);

    // Owners and application tokens get them when they ask.
    let (status, body) = api.secret_call("GET", "/sfp/api/auth/salesforce/orgs?includeAuthUrl=true", &owner).await;
    assert_eq!(status, 200);
    let urls: Vec<&str> = body.as_array().unwrap().iter().map(|o| o["sfdxAuthUrl"].as_str().unwrap()).collect();
    assert!(urls.contains(&prod.auth_url().as_str()) && urls.contains(&qa.auth_url().as_str()), "{urls:?}");
    let (status, body) =
        api.secret_call("GET", "/sfp/api/auth/salesforce/org?username=QA@acme.com.qa&includeAuthUrl=true", &app).await;
    assert_eq!((status, body["sfdxAuthUrl"].as_str()), (200, Some(qa.auth_url().as_str())));

    let (status, body) = api
        .call("POST", "/sfp/api/auth/salesforce/test-connection", &owner, Some(json!({"username": "qa@acme.com.qa"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["success"].as_bool(), body["isSandbox"].as_bool(), body["apiRequestsUsed"].as_i64()),
        (Some(true), Some(true), Some(10)),
        "{body}"
    );
    let (status, body) =
        api.secret_call("GET", "/sfp/api/auth/salesforce/frontdoor?target=qa@acme.com.qa", &owner).await;
    assert_eq!(status, 200);
    let url = body["url"].as_str().unwrap();
    let sid = url.split("sid=").nth(1).unwrap();
    let sid = url::form_urlencoded::parse(format!("sid={sid}").as_bytes()).next().unwrap().1.to_string();
    assert!(url.starts_with(&format!("{}/secur/frontdoor.jsp?sid=", sf.url)), "{url}");
    assert_eq!(sf.sessions().get(&sid).map(String::as_str), Some("qa@acme.com.qa"), "a live session of the org");

    // A sandbox by name, through its production org.
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register-sandbox-by-name",
            &owner,
            Some(json!({"productionUsername": "release@acme.com", "sandboxName": "uat"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["username"].as_str(), body["parentProductionUsername"].as_str(), body["isJitRegistration"].as_bool()),
        (Some("release@acme.com.uat"), Some("release@acme.com"), Some(true))
    );
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register-sandbox-by-name",
            &owner,
            Some(json!({"productionUsername": "release@acme.com", "sandboxName": "nope"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("connection_failed")), "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register-sandbox-by-name",
            &owner,
            Some(json!({"productionUsername": "release@acme.com", "sandboxName": "../uat"})),
        )
        .await;
    assert_eq!((status, body["message"].as_str()), (400, Some("sandboxName must be 1 to 10 letters or digits")));
    let (status, _) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register-sandbox-by-name",
            &owner,
            Some(json!({"productionUsername": "nobody@acme.com", "sandboxName": "uat"})),
        )
        .await;
    assert_eq!(status, 404, "the production org must be registered");

    // One default DevHub: registering another default moves it there.
    let hub = Org::new("hub@acme.com", false);
    sf.add(hub.clone());
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register",
            &owner,
            Some(json!({"sfdxAuthUrl": hub.auth_url(), "isDevHub": true, "isDefault": true})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, hubs) = api.call("GET", "/sfp/api/auth/salesforce/orgs?devhub=true", &owner, None).await;
    let defaults: Vec<&str> = hubs
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["isDefault"] == true)
        .map(|o| o["username"].as_str().unwrap())
        .collect();
    assert_eq!(defaults, vec!["hub@acme.com"]);
    let (status, _) = api
        .call(
            "POST",
            "/sfp/api/auth/salesforce/register",
            &owner,
            Some(json!({"sfdxAuthUrl": hub.auth_url(), "isDefault": true})),
        )
        .await;
    assert_eq!(status, 400, "only a DevHub can be the default DevHub");

    // Deleting revokes the refresh token at Salesforce.
    let (status, _) = api.call("DELETE", "/sfp/api/auth/salesforce/org?username=qa@acme.com.qa", &member, None).await;
    assert_eq!(status, 403);
    let (status, body) = api.call("DELETE", "/sfp/api/auth/salesforce/org?username=qa@acme.com.qa", &owner, None).await;
    assert_eq!((status, body["revoked"].as_bool()), (200, Some(true)), "{body}");
    assert!(sf.revoked().contains(&qa.refresh_token));
    let (status, _) = api.call("GET", "/sfp/api/auth/salesforce/org?username=qa@acme.com.qa", &owner, None).await;
    assert_eq!(status, 404);
    let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.secret").fetch_one(&pool).await.unwrap();
    assert_eq!(secrets, 3, "the deleted org's secret is gone");

    // Every read of a credential is in the access log.
    let (_, log) =
        api.call("GET", "/sfp/api/vault/access-log?subject=salesforce_org:qa@acme.com.qa", &owner, None).await;
    let purposes: Vec<&str> =
        log["entries"].as_array().unwrap().iter().map(|e| e["purpose"].as_str().unwrap()).collect();
    for p in ["register", "auth-url", "test-connection", "frontdoor", "delete"] {
        assert!(purposes.contains(&p), "{purposes:?}");
    }
    api.assert_no_leak(&sf.secrets());
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn integrations_keep_credentials_to_those_allowed_and_github_apps_give_installation_tokens(pool: PgPool) {
    let (private_key, public_key) = rsa_key_pair();
    let gh = Github::start("123456", &public_key).await;
    let sf = Salesforce::start(Vec::new()).await;
    let mut api = api_with_doubles(pool.clone(), &sf, &gh.url).await;
    let owner = api.api.admin_token().await;
    let member = api.api.user("dev@acme.com", "a member's long password", Role::Member).await;
    let app = api.api.application_token(&owner, 30).await["token"].as_str().unwrap().to_string();
    let (status, _) = api
        .call(
            "POST",
            "/sfp/api/projects",
            &owner,
            Some(json!({"identifier": "acme/core", "remoteUrl": "https://github.com/acme/core"})),
        )
        .await;
    assert_eq!(status, 201);

    let pat = "ghp_TSTPATVALUE0123456789abcdef";
    let app_creds = json!({"provider": "github", "authType": "app", "credentials": {"appId": "123456", "privateKey": private_key}, "isGlobal": true});
    let (status, body) = api.call("POST", "/sfp/api/integrations", &app, Some(app_creds.clone())).await;
    assert_eq!(status, 403, "application tokens may not create credentials: {body}");
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/integrations",
            &owner,
            Some(json!({"provider": "github", "authType": "pat", "credentials": {"tokn": pat}, "isGlobal": true})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("credentials.token is required"), "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/sfp/api/integrations",
            &owner,
            Some(json!({"provider": "github", "authType": "pat", "credentials": {"token": pat}})),
        )
        .await;
    assert_eq!((status, body["message"].as_str()), (400, Some("Either isGlobal or projects must be specified")));
    let (status, body) = api
        .call("POST", "/sfp/api/integrations", &owner, Some(json!({"provider": "github", "authType": "pat", "credentials": {"token": pat}, "projects": ["acme/nope"]})))
        .await;
    assert_eq!((status, body["message"].as_str()), (404, Some("Project 'acme/nope' not found")));
    let (status, body) = api
        .call("POST", "/sfp/api/integrations", &member, Some(json!({"provider": "github", "authType": "pat", "credentials": {"token": pat}, "projects": ["acme/core"]})))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["fields"], json!(["token"]));
    let (status, body) = api.call("POST", "/sfp/api/integrations", &owner, Some(app_creds)).await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = api.call("GET", "/sfp/api/integrations", &owner, None).await;
    assert_eq!((status, body.as_array().map(Vec::len)), (200, Some(2)));
    let (status, _) = api.call("GET", "/sfp/api/integrations", &member, None).await;
    assert_eq!(status, 403);
    let (status, _) = api.call("GET", "/sfp/api/integrations/credentials?provider=github", &member, None).await;
    assert_eq!(status, 403, "members do not read credentials");
    let (status, body) = api
        .secret_call("GET", "/sfp/api/integrations/credentials?provider=github&project=acme/core&authType=pat", &app)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["credentials"]["token"], pat);
    let (status, _) = api.call("GET", "/sfp/api/integrations/credentials?provider=npm", &app, None).await;
    assert_eq!(status, 404);

    let (status, body) =
        api.call("GET", "/sfp/api/repository/auth-token?repositoryIdentifier=acme/other", &app, None).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("Repository not found")));
    let (status, first) =
        api.secret_call("GET", "/sfp/api/repository/auth-token?repositoryIdentifier=acme/core", &app).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["type"].as_str(), first["provider"].as_str(), first["scope"].as_str()),
        (Some("installation"), Some("github"), Some("acme/core"))
    );
    assert_eq!(gh.issued(), vec![first["token"].as_str().unwrap().to_string()]);
    let (_, second) =
        api.secret_call("GET", "/sfp/api/repository/auth-token?repositoryIdentifier=acme/core", &owner).await;
    assert_eq!(second["token"], first["token"], "cached until shortly before it expires");
    assert_eq!(gh.issued().len(), 1);

    let mut secrets = vec![pat.to_string(), private_key.lines().nth(1).unwrap().to_string()];
    secrets.extend(gh.issued());
    api.assert_no_leak(&secrets);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn worker_routes_take_only_worker_and_step_tokens(pool: PgPool) {
    let sf = Salesforce::start(Vec::new()).await;
    let mut api = api_with_doubles(pool.clone(), &sf, "http://127.0.0.1:9").await;
    let owner = api.api.admin_token().await;
    let body = json!({"taskId": uuid::Uuid::new_v4(), "runId": uuid::Uuid::new_v4(), "stepRunId": uuid::Uuid::new_v4(), "attempt": 0});
    let (status, _) = api.call("POST", "/sfp/api/workers/step-token", &owner, Some(body.clone())).await;
    assert_eq!(status, 401, "a user's token is not a worker token");
    for bad in [
        json!({"name": "", "expiresIn": 7}),
        json!({"name": "remote", "expiresIn": 0}),
        json!({"name": "remote", "expiresIn": 366}),
    ] {
        let (status, answer) = api.call("POST", "/sfp/api/worker-tokens", &owner, Some(bad)).await;
        assert_eq!((status, answer["code"].as_str()), (400, Some("bad_request")), "{answer}");
    }
    let (status, answer) = api.call("POST", "/sfp/api/worker-tokens", &owner, Some(json!({"name": "remote"}))).await;
    assert_eq!(status, 422, "expiresIn is required: {answer}");
    let (status, created) =
        api.call("POST", "/sfp/api/worker-tokens", &owner, Some(json!({"name": "remote", "expiresIn": 7}))).await;
    assert_eq!(status, 201);
    let worker = created["token"].as_str().unwrap().to_string();
    assert!(worker.starts_with("sfp_wk_"));
    let (status, _) = api.call("GET", "/sfp/api/auth/salesforce/orgs", &worker, None).await;
    assert_eq!(status, 401, "a worker token opens no other route");
    let (status, body2) = api.call("POST", "/sfp/api/workers/step-token", &worker, Some(body)).await;
    assert_eq!((status, body2["code"].as_str()), (404, Some("not_found")), "an unknown task: {body2}");
    let (status, body3) = api.call("POST", "/sfp/api/workers/step-token/exchange", "sfp_st_unknown", None).await;
    assert_eq!((status, body3["code"].as_str()), (401, Some("step_token_unknown")));
    let (_, listed) = api.call("GET", "/sfp/api/worker-tokens", &owner, None).await;
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert!(listed.to_string().find(&worker).is_none());
    let (status, _) = api.call("DELETE", &format!("/sfp/api/worker-tokens/{id}"), &owner, None).await;
    assert_eq!(status, 204);
    let (status, _) = api.call("POST", "/sfp/api/workers/step-token", &worker, Some(json!({}))).await;
    assert_eq!(status, 401, "a revoked worker token");
    // The audit log is written in batches, off the request path: wait for it.
    let mut kinds: Vec<String> = Vec::new();
    for _ in 0..100 {
        kinds = sqlx::query_scalar("SELECT DISTINCT actor_kind FROM app.audit_log").fetch_all(&pool).await.unwrap();
        if kinds.contains(&"worker".to_string()) && kinds.contains(&"step".to_string()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(kinds.contains(&"worker".to_string()) && kinds.contains(&"step".to_string()), "{kinds:?}");
}
