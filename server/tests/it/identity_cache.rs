//! Identities are reused for a while (here 300 s), yet every change to them ends the reuse at
//! once: in the process that made it, and through the database's notifications in every
//! other process on the same database.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sfp_server::auth::Role;
use sfp_server::config::{ApiConfig, AuthConfig};
use sqlx::PgPool;

use crate::support::TestApi;

async fn spawn(pool: &PgPool) -> TestApi {
    let auth = AuthConfig { identity_cache_secs: 300, ..AuthConfig::default() };
    TestApi::spawn_configured(pool.clone(), ApiConfig::default(), auth).await
}

/// The status of a key-value write with `token` on `app`.
async fn write(app: &TestApi, token: &str) -> StatusCode {
    let body = json!({"key": "cache/probe", "value": 1});
    app.post("/sfp/api/key-value/upsert").bearer_auth(token).json(&body).send().await.unwrap().status()
}

/// Polls until `app` answers `want`: far sooner than the cache's lifetime, or the change was
/// not heard.
async fn until(app: &TestApi, token: &str, want: StatusCode, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = write(app, token).await;
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {status}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn every_change_to_an_identity_ends_its_reuse_in_every_process(pool: PgPool) {
    let (a, b) = (spawn(&pool).await, spawn(&pool).await);
    let admin = a.admin_token().await;
    let member = a.user("member@example.test", "a member's long password", Role::Member).await;
    // Both processes have seen both identities (and listen for changes by now).
    until(&b, &admin, StatusCode::OK, "the owner writes").await;
    until(&b, &member, StatusCode::FORBIDDEN, "a member may not write").await;
    assert_eq!(write(&a, &member).await, StatusCode::FORBIDDEN);

    // A role change on A: A itself knows at once, B as soon as it hears.
    let promoted =
        a.request("PUT", "/sfp/api/users/member@example.test").bearer_auth(&admin).json(&json!({"role": "owner"}));
    assert_eq!(promoted.send().await.unwrap().status(), 200);
    assert_eq!(write(&a, &member).await, StatusCode::OK, "the process that changed the role");
    until(&b, &member, StatusCode::OK, "the other process after the promotion").await;

    // A change made straight in the database (another tool): both hear it.
    sqlx::query("UPDATE auth.users SET banned_until = now() + interval '1 day' WHERE email = 'member@example.test'")
        .execute(&pool)
        .await
        .unwrap();
    until(&a, &member, StatusCode::UNAUTHORIZED, "a ban, in A").await;
    until(&b, &member, StatusCode::UNAUTHORIZED, "a ban, in B").await;

    // An application token revoked on A stops working on B.
    let token = a.application_token(&admin, 1).await;
    let (secret, id) = (token["token"].as_str().unwrap().to_owned(), token["id"].as_str().unwrap().to_owned());
    until(&b, &secret, StatusCode::OK, "the application token").await;
    let revoked = a.request("DELETE", &format!("/sfp/api/application-tokens/{id}")).bearer_auth(&admin);
    assert_eq!(revoked.send().await.unwrap().status(), 200);
    assert_eq!(write(&a, &secret).await, StatusCode::UNAUTHORIZED);
    until(&b, &secret, StatusCode::UNAUTHORIZED, "a revoked application token, in B").await;

    // Signing out everywhere on A ends the session on B.
    assert_eq!(a.post("/auth/v1/logout").bearer_auth(&admin).send().await.unwrap().status(), 204);
    assert_eq!(write(&a, &admin).await, StatusCode::UNAUTHORIZED);
    until(&b, &admin, StatusCode::UNAUTHORIZED, "a session ended on A, in B").await;
}
