//! Sign-in, sessions, refresh tokens, application tokens, the audit log and bad credentials,
//! through the real HTTP API.

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sfp_server::auth::Role;
use sfp_server::auth::jwt::JwtKeys;
use sfp_server::config::{ApiConfig, AuthConfig};
use sqlx::PgPool;

use crate::support::*;

async fn status_and_body(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_admin_signs_in_and_is_the_owner(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let login = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(login["success"], true);
    assert_eq!(login["user"]["email"], ADMIN_EMAIL);
    assert_eq!(login["user"]["role"], "owner");
    assert!(login["refresh_token"].as_str().is_some_and(|t| t.len() >= 24));
    assert!(login["local_supabase_anon_key"].as_str().is_some_and(|t| t.split('.').count() == 3));
    let token = login["access_token"].as_str().unwrap();
    let (status, me) = status_and_body(app.get("/sfp/api/users/me").bearer_auth(token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(me["email"], ADMIN_EMAIL);
    assert_eq!(me["role"], "owner");
    assert_eq!(me["authenticatedAs"], "user");
    // The scheme is case-insensitive, as for the engine.
    let lower = app.get("/sfp/api/users/me").header("authorization", format!("bearer {token}")).send().await.unwrap();
    assert_eq!(lower.status(), 200);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn wrong_passwords_are_refused_alike_and_then_rate_limited(pool: PgPool) {
    let auth = AuthConfig { login_max_failures: 3, ..AuthConfig::default() };
    let app = TestApi::spawn_configured(pool, ApiConfig::default(), auth).await;
    for (email, password) in [(ADMIN_EMAIL, "wrong"), ("nobody@example.test", "whatever"), (ADMIN_EMAIL, "")] {
        let response = app
            .post("/sfp/api/auth/admin/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_body(response).await;
        if password.is_empty() {
            assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("validation_failed")));
        } else {
            // Same answer whether or not the address exists.
            assert_eq!(status, 401, "{body}");
            assert_eq!(body["code"], "invalid_credentials");
            assert_eq!(body["message"], "Invalid login credentials");
        }
    }
    let response = app
        .post("/auth/v1/token?grant_type=password")
        .json(&json!({"email": ADMIN_EMAIL, "password": "wrong again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Three failures from this address: now even the right password waits.
    let response = app
        .post("/sfp/api/auth/admin/login")
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(TestApi::error_of(response).await.code, "over_request_rate_limit");
    let response = app
        .post("/auth/v1/token?grant_type=password")
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "the GoTrue path shares the limit");
}

async fn gotrue_sign_in(app: &TestApi) -> Value {
    let response = app
        .post("/auth/v1/token?grant_type=password")
        .header("x-supabase-api-version", "2024-01-01")
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-supabase-api-version"], "2024-01-01");
    response.json().await.unwrap()
}

async fn refresh(app: &TestApi, token: &str) -> reqwest::Response {
    app.post("/auth/v1/token?grant_type=refresh_token").json(&json!({"refresh_token": token})).send().await.unwrap()
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn gotrue_sessions_rotate_refresh_tokens_and_detect_reuse(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let session = gotrue_sign_in(&app).await;
    for field in ["access_token", "refresh_token", "expires_in", "expires_at", "user"] {
        assert!(!session[field].is_null(), "session has {field}");
    }
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["user"]["aud"], "authenticated");
    let access = session["access_token"].as_str().unwrap().to_owned();
    let (status, user) = status_and_body(app.get("/auth/v1/user").bearer_auth(&access).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(user["email"], ADMIN_EMAIL);
    for field in ["id", "aud", "app_metadata", "user_metadata", "created_at"] {
        assert!(!user[field].is_null(), "user has {field} (supabase-py requires it)");
    }

    let r1 = session["refresh_token"].as_str().unwrap().to_owned();
    let (status, next) = status_and_body(refresh(&app, &r1).await).await;
    assert_eq!(status, 200, "{next}");
    let r2 = next["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2, "the refresh token rotates");
    // The same used token again at once (two tabs): the same successor, no new chain.
    let (status, again) = status_and_body(refresh(&app, &r1).await).await;
    assert_eq!((status, again["refresh_token"].as_str()), (StatusCode::OK, Some(r2.as_str())));
    let (status, third) = status_and_body(refresh(&app, &r2).await).await;
    assert_eq!(status, 200);
    let r3 = third["refresh_token"].as_str().unwrap().to_owned();
    // r1 now has no live successor: presenting it is a theft signal; the session ends.
    let response = refresh(&app, &r1).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-sb-error-code"], "refresh_token_already_used");
    assert_eq!(TestApi::error_of(response).await.code, "refresh_token_already_used");
    let response = refresh(&app, &r3).await;
    assert_eq!(TestApi::error_of(response).await.code, "refresh_token_not_found", "the whole chain is gone");
    let response = app.get("/auth/v1/user").bearer_auth(&access).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(TestApi::error_of(response).await.code, "session_not_found");

    let response = refresh(&app, "never-issued").await;
    assert_eq!(TestApi::error_of(response).await.code, "refresh_token_not_found");
    let response = app.post("/auth/v1/token?grant_type=magic").json(&json!({})).send().await.unwrap();
    assert_eq!(TestApi::error_of(response).await.code, "unsupported_grant_type");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn sign_out_ends_the_session_everywhere(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let one = gotrue_sign_in(&app).await["access_token"].as_str().unwrap().to_owned();
    let two = app.admin_token().await;
    let response = app.post("/auth/v1/logout?scope=local").bearer_auth(&one).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.get("/auth/v1/user").bearer_auth(&one).send().await.unwrap().status(), 403);
    let response = app.get("/sfp/api/users/me").bearer_auth(&one).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(TestApi::error_of(response).await.message.contains("session"), "says why");
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(&two).send().await.unwrap().status(), 200, "local scope");
    let response = app.post("/auth/v1/logout").bearer_auth(&two).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(&two).send().await.unwrap().status(), 401);
    let response = app.post("/auth/v1/logout").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(TestApi::error_of(response).await.code, "no_authorization");
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn forged_expired_unsigned_and_orphaned_tokens_are_refused(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let admin_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM auth.users WHERE email = $1")
        .bind(ADMIN_EMAIL)
        .fetch_one(&pool)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims =
        json!({"sub": admin_id, "role": "authenticated", "aud": "authenticated", "exp": now + 600, "iat": now});
    let forged = JwtKeys::new(b"not the instance secret at all..", "x").sign(&claims);
    let expired = JwtKeys::new(JWT_SECRET.as_bytes(), "x")
        .sign(&json!({"sub": admin_id, "role": "authenticated", "exp": now - 10}));
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    let anon = JwtKeys::new(JWT_SECRET.as_bytes(), "x").anon_key();
    let ghost = JwtKeys::new(JWT_SECRET.as_bytes(), "x")
        .sign(&json!({"sub": uuid::Uuid::new_v4(), "role": "authenticated", "exp": now + 600}));
    for (what, token) in [
        ("forged", forged),
        ("expired", expired),
        ("alg=none", unsigned),
        ("anon key", anon),
        ("unknown user", ghost),
        ("garbage", "abc.def.ghi".into()),
        ("unknown application token", "sfp_at_0000000000000000000000000000000000000000".into()),
    ] {
        let response = app.get("/sfp/api/users/me").bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        let body = TestApi::error_of(response).await;
        assert_eq!(body.code, "unauthorized", "{what}");
        assert!(!body.message.contains(&token), "{what}: the token is never echoed");
    }
    let response = app.get("/sfp/api/users/me").send().await.unwrap();
    assert_eq!(response.status(), 401);

    // A GoTrue-issued token (same secret, GoTrue's claims, its session row) is accepted.
    let session = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO auth.sessions (id, user_id, created_at, updated_at, aal) VALUES ($1, $2, now(), now(), 'aal1')",
    )
    .bind(session)
    .bind(admin_id)
    .execute(&pool)
    .await
    .unwrap();
    let gotrue = JwtKeys::new(JWT_SECRET.as_bytes(), "http://gotrue:9999/auth/v1").sign(&json!({
        "iss": "http://gotrue:9999/auth/v1", "sub": admin_id, "aud": "authenticated", "exp": now + 600, "iat": now,
        "email": ADMIN_EMAIL, "phone": "", "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {}, "role": "authenticated", "aal": "aal1", "amr": [{"method": "password", "timestamp": now}],
        "session_id": session, "is_anonymous": false
    }));
    let response = app.get("/sfp/api/users/me").bearer_auth(&gotrue).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // A user deleted since: their still-unexpired token stops working.
    let member = app.user("gone@example.test", "gone user password", Role::Member).await;
    sqlx::query("DELETE FROM auth.users WHERE email = 'gone@example.test'").execute(&pool).await.unwrap();
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(&member).send().await.unwrap().status(), 401);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn application_tokens_are_shown_once_stored_hashed_expire_and_revoke(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let owner = app.admin_token().await;
    let created = app.application_token(&owner, 7).await;
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("sfp_at_") && token.len() >= 40, "{token}");
    let expires: chrono::DateTime<chrono::Utc> = serde_json::from_value(created["expiresAt"].clone()).unwrap();
    let days = (expires - chrono::Utc::now()).num_hours();
    assert!((7 * 24 - 1..=7 * 24).contains(&days), "expires in 7 days: {days} h");

    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM app.application_token").fetch_one(&pool).await.unwrap();
    assert_ne!(stored, token.as_bytes(), "only a hash is kept");
    let dump: String =
        sqlx::query_scalar("SELECT row_to_json(t)::text FROM app.application_token t").fetch_one(&pool).await.unwrap();
    assert!(!dump.contains(&token[7..]), "the secret is nowhere in the row");

    let (status, listed) =
        status_and_body(app.get("/sfp/api/application-tokens").bearer_auth(&owner).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(listed["tokens"][0]["status"], "active");
    assert!(!listed.to_string().contains(&token), "the list never shows the token");

    let (status, me) = status_and_body(app.get("/sfp/api/users/me").bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(me["role"], "application");
    assert_eq!(me["email"], ADMIN_EMAIL, "acts for its creator");

    // Not more than its creator: when the creator is demoted, owner-only routes close to it.
    // (Application tokens may never manage tokens at all.)
    let response = app
        .post("/sfp/api/application-tokens")
        .bearer_auth(&token)
        .json(&json!({"name": "from a token", "expiresIn": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(TestApi::error_of(response).await.message, "Forbidden - Requires role: owner");

    let id = created["id"].as_str().unwrap();
    let (status, revoked) = status_and_body(
        app.request("DELETE", &format!("/sfp/api/application-tokens/{id}")).bearer_auth(&owner).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, revoked["status"].as_str()), (StatusCode::OK, Some("revoked")));
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(&token).send().await.unwrap().status(), 401);

    // Revoking by the token itself works too; an unknown one is 404.
    let second = app.application_token(&owner, 1).await["token"].as_str().unwrap().to_owned();
    let response = app
        .request("DELETE", &format!("/sfp/api/application-tokens/{second}"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(&second).send().await.unwrap().status(), 401);
    let response = app
        .request("DELETE", &format!("/sfp/api/application-tokens/{}", uuid::Uuid::new_v4()))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Expired: past its time it is refused.
    let third = app.application_token(&owner, 1).await["token"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE app.application_token SET created_at = now() - interval '3 days', expires_at = now() - interval '1 day' WHERE token_hash = $1")
        .bind(sfp_server::auth::app_tokens::hash(&third))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(&third).send().await.unwrap().status(), 401);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn bad_token_requests_get_clear_errors_and_write_nothing(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let owner = app.admin_token().await;
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "no expiry",
            app.post("/sfp/api/application-tokens").json(&json!({"name": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "zero days",
            app.post("/sfp/api/application-tokens").json(&json!({"name": "x", "expiresIn": 0})),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            "too long",
            app.post("/sfp/api/application-tokens").json(&json!({"name": "x", "expiresIn": 5000})),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            "wrong type",
            app.post("/sfp/api/application-tokens").json(&json!({"name": "x", "expiresIn": "ten"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "empty name",
            app.post("/sfp/api/application-tokens").json(&json!({"name": " ", "expiresIn": 3})),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            "unknown field",
            app.post("/sfp/api/application-tokens").json(&json!({"name": "x", "expiresIn": 3, "role": "owner"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "not JSON",
            app.post("/sfp/api/application-tokens").header("content-type", "application/json").body("{nope"),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            "no content type",
            app.post("/sfp/api/application-tokens").body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (what, request, status, code) in cases {
        let response = request.bearer_auth(&owner).send().await.unwrap();
        assert_eq!(response.status(), status, "{what}");
        let body = TestApi::error_of(response).await;
        assert_eq!(body.code, code, "{what}: {}", body.message);
    }
    let response =
        app.post("/sfp/api/application-tokens").bearer_auth(&owner).json(&json!({"name": "x"})).send().await.unwrap();
    assert!(TestApi::error_of(response).await.message.contains("expiresIn"), "names the missing field");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM app.application_token").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 0);
    let response = app.post("/sfp/api/auth/admin/login").json(&json!({"email": ADMIN_EMAIL})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(TestApi::error_of(response).await.message.contains("password"));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn calls_are_audited_append_only_and_owners_read_them(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let owner = app.admin_token().await;
    let member = app.user("m@example.test", "member password 2", Role::Member).await;
    app.get("/sfp/api/users/me").bearer_auth(&member).header("x-request-id", "req-42").send().await.unwrap();
    app.get("/sfp/api/audit").bearer_auth(&member).send().await.unwrap(); // denied
    app.get("/sfp/api/users/me").bearer_auth("garbage").send().await.unwrap(); // denied, anonymous
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let entries = loop {
        let (status, body) =
            status_and_body(app.get("/sfp/api/audit?limit=50").bearer_auth(&owner).send().await.unwrap()).await;
        assert_eq!(status, 200);
        let entries = body["entries"].as_array().unwrap().clone();
        if entries.iter().any(|e| e["outcome"] == "denied" && e["actorKind"] == "anonymous")
            || std::time::Instant::now() > deadline
        {
            break entries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let me = entries.iter().find(|e| e["requestId"] == "req-42").expect("the member's call");
    assert_eq!(me["actorEmail"], "m@example.test");
    assert_eq!(me["role"], "member");
    assert_eq!(me["route"], "/sfp/api/users/me");
    assert_eq!(me["path"], "/sfp/api/users/me");
    assert_eq!(me["status"], 200);
    assert_eq!(me["outcome"], "allowed");
    let denied =
        entries.iter().find(|e| e["route"] == "/sfp/api/audit" && e["actorEmail"] == "m@example.test").unwrap();
    assert_eq!((denied["status"].as_i64(), denied["outcome"].as_str()), (Some(403), Some("denied")));
    let (_, filtered) =
        status_and_body(app.get("/sfp/api/audit?outcome=denied").bearer_auth(&owner).send().await.unwrap()).await;
    assert!(filtered["entries"].as_array().unwrap().iter().all(|e| e["outcome"] == "denied"));
    let response = app.get("/sfp/api/audit?outcome=maybe").bearer_auth(&owner).send().await.unwrap();
    assert_eq!(response.status(), 400);

    // Sign-ins through /auth/v1 are there too.
    let response = app
        .post("/auth/v1/token?grant_type=password")
        .json(&json!({"email": ADMIN_EMAIL, "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) =
            status_and_body(app.get("/sfp/api/audit?limit=200").bearer_auth(&owner).send().await.unwrap()).await;
        let entries = body["entries"].as_array().unwrap();
        if let Some(e) = entries.iter().find(|e| e["route"] == "/auth/v1/token") {
            assert_eq!(e["path"], "/auth/v1/token");
            assert_eq!((e["outcome"].as_str(), e["actorKind"].as_str()), (Some("denied"), Some("anonymous")));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the failed sign-in is audited: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let changed = sqlx::query("UPDATE app.audit_log SET outcome = 'allowed'").execute(&pool).await;
    assert!(changed.is_err(), "the audit log cannot be rewritten");
    let deleted = sqlx::query("DELETE FROM app.audit_log").execute(&pool).await;
    assert!(deleted.is_err(), "nor emptied");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn gotrue_admin_users_need_the_service_key(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let keys = JwtKeys::new(JWT_SECRET.as_bytes(), "x");
    let service = keys.service_key();
    let user_token = app.admin_token().await;
    let response = app.get("/auth/v1/admin/users").send().await.unwrap();
    assert_eq!(response.status(), 401);
    for token in [user_token.as_str(), keys.anon_key().as_str()] {
        let response = app.get("/auth/v1/admin/users").bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 403);
        assert_eq!(TestApi::error_of(response).await.code, "not_admin");
    }

    let (status, created) = status_and_body(
        app.post("/auth/v1/admin/users")
            .bearer_auth(&service)
            .json(&json!({"email": "eve@example.test", "password": "eve's password", "user_metadata": {"team": "qa"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["user_metadata"]["team"], "qa");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, dup) = status_and_body(
        app.post("/auth/v1/admin/users")
            .bearer_auth(&service)
            .json(&json!({"email": "EVE@example.test"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, dup["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("email_exists")));

    let response = app.get("/auth/v1/admin/users?per_page=1").bearer_auth(&service).send().await.unwrap();
    assert_eq!(response.headers()["x-total-count"], "2");
    assert!(response.headers()["link"].to_str().unwrap().contains("rel=\"next\""));
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["users"].as_array().unwrap().len(), 1);

    // Eve signs in; she has no role here until an owner gives her one.
    let eve = app.login("eve@example.test", "eve's password").await;
    assert!(eve["user"]["role"].is_null());
    let eve_token = eve["access_token"].as_str().unwrap();
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(eve_token).send().await.unwrap().status(), 200);
    assert_eq!(app.get("/sfp/api/projects").bearer_auth(eve_token).send().await.unwrap().status(), 403);

    let (status, _) = status_and_body(
        app.request("PUT", &format!("/auth/v1/admin/users/{id}"))
            .bearer_auth(&service)
            .json(&json!({"ban_duration": "24h"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let response = app
        .post("/auth/v1/token?grant_type=password")
        .json(&json!({"email": "eve@example.test", "password": "eve's password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(TestApi::error_of(response).await.code, "user_banned");
    assert_eq!(app.get("/sfp/api/users/me").bearer_auth(eve_token).send().await.unwrap().status(), 401, "banned now");

    let response =
        app.request("DELETE", &format!("/auth/v1/admin/users/{id}")).bearer_auth(&service).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = app.get(&format!("/auth/v1/admin/users/{id}")).bearer_auth(&service).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let admin_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM auth.users WHERE email = $1")
        .bind(ADMIN_EMAIL)
        .fetch_one(&pool)
        .await
        .unwrap();
    let response =
        app.request("DELETE", &format!("/auth/v1/admin/users/{admin_id}")).bearer_auth(&service).send().await.unwrap();
    assert_eq!(response.status(), 409, "the last owner stays");
}
