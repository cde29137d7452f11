use reqwest::StatusCode;
use serde_json::Value;
use sfp_server::config::ApiConfig;
use sqlx::PgPool;

use crate::support::TestApi;

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn ping_answers_pong(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let response = app.get("/sfp/api/ping").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["message"], "pong");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn health_reports_the_database_and_its_schema(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let response = app.get("/sfp/api").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let db = &body["components"]["database"];
    assert_eq!(db["status"], "up");
    assert_eq!(db["migrations"], sfp_postgres::MIGRATOR.iter().count() as u64);
    assert!(db["instance_id"].as_str().is_some_and(|s| s.len() == 36), "{db}");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn health_is_503_when_the_database_is_gone(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    pool.close().await;
    let response = app.get("/sfp/api").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["components"]["database"]["status"], "down");
    // Liveness does not depend on the database.
    assert_eq!(app.get("/sfp/api/ping").send().await.unwrap().status(), StatusCode::OK);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn unknown_routes_are_404_in_the_stable_shape(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    for path in ["/nope", "/sfp/api/does-not-exist", "/sfp/api/ping/extra"] {
        let response = app.get(path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body = TestApi::error_of(response).await;
        assert_eq!(body.code, "not_found");
        assert!(body.message.contains(path), "{}", body.message);
    }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn wrong_method_is_405_in_the_stable_shape(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let response = app.client.delete(format!("{}/sfp/api/ping", app.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.headers().contains_key("allow"), "Allow header kept");
    let body = TestApi::error_of(response).await;
    assert_eq!(body.code, "method_not_allowed");
    assert!(body.message.contains("DELETE"), "{}", body.message);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn oversized_bodies_are_413_in_the_stable_shape(pool: PgPool) {
    let config = ApiConfig { body_limit_bytes: 1024, ..ApiConfig::default() };
    let app = TestApi::spawn_with(pool, config).await;
    let response = app.client.post(format!("{}/sfp/api/ping", app.url)).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(TestApi::error_of(response).await.code, "payload_too_large");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn metrics_count_requests_by_route(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    for _ in 0..3 {
        app.get("/sfp/api/ping").send().await.unwrap();
    }
    app.get("/random/scanner/path").send().await.unwrap();
    let response = app.get("/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.contains(r#"sfp_http_requests_total{method="GET",route="/sfp/api/ping",status="200"} 3"#), "{text}");
    assert!(text.contains(r#"route="unmatched",status="404"} 1"#), "{text}");
    assert!(text.contains("# TYPE sfp_http_request_duration_seconds histogram"), "{text}");
    assert!(
        text.contains(r#"sfp_http_request_duration_seconds_count{method="GET",route="/sfp/api/ping"} 3"#),
        "{text}"
    );
    assert!(!text.contains("/random/scanner/path"), "unmatched paths must not become labels");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn request_ids_are_kept_or_made(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let made = app.get("/sfp/api/ping").send().await.unwrap();
    assert_eq!(made.headers()["x-request-id"].len(), 36);
    let kept = app.get("/sfp/api/ping").header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123");
}
