//! Crons and scheduled runs: every tick fires once, with two engine processes and when the
//! one holding the scheduling lease goes away; REST CRUD in Hatchet's shapes.

use std::time::Duration;

use serde_json::{Value, json};
use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use sqlx::PgPool;

use crate::harness::*;

async fn ticks(pool: &PgPool) -> Vec<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT tick FROM engine.cron_fire ORDER BY tick").fetch_all(pool).await.unwrap()
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_per_second_cron_fires_once_per_tick_across_two_engines_and_a_takeover(pool: PgPool) {
    let fast = |c: &mut sfp_engine::EngineConfig| c.cron_interval = Duration::from_millis(100);
    let mut first = TestEngine::start_configured(pool.clone(), fast).await;
    let second = TestEngine::start_configured(pool.clone(), fast).await;
    let req = pbv1::CreateWorkflowVersionRequest {
        name: "tick".into(),
        tasks: vec![task("tick", "t", &[])],
        cron_triggers: vec!["* * * * * *".into()],
        cron_input: Some(r#"{"from":"cron"}"#.into()),
        ..Default::default()
    };
    second.admin().put_workflow(req).await.unwrap();
    let worker = TestWorker::start(&second, &["tick:t"], 10, |a| Reply::Complete(payload(a)["input"].clone())).await;
    worker.keep_alive(&second);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Whichever holds the lease, stop the first engine; the other fires on.
    assert!(first.shut_down().await);
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let fired = ticks(&pool).await;
    assert!(fired.len() >= 5, "ticks fired: {fired:?}");
    for pair in fired.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 1, "no tick missed, none twice: {fired:?}");
    }
    let (runs, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT additional_metadata ->> 'hatchet__cron_tick') FROM engine.workflow_run \
         WHERE triggered_by = 'cron'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(runs, fired.len() as i64, "one run per tick");
    assert_eq!(distinct, runs);
    let inputs: Vec<Value> =
        sqlx::query_scalar("SELECT DISTINCT input FROM engine.workflow_run").fetch_all(&pool).await.unwrap();
    assert_eq!(inputs, vec![json!({"from": "cron"})], "cron_input is the runs' input");
}

async fn rest(engine: &TestEngine, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("{}{path}", engine.rest_url)).bearer_auth(&engine.token);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn tenant_of(engine: &TestEngine) -> String {
    let run = engine.trigger("crud", json!({"probe": true}), None).await;
    engine.rest_get(&format!("/api/v1/stable/workflow-runs/{run}")).await["run"]["tenantId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn crons_and_schedules_are_created_listed_and_deleted_over_rest(pool: PgPool) {
    let engine = TestEngine::start_configured(pool.clone(), |c| c.cron_interval = Duration::from_millis(100)).await;
    engine.put_workflow("crud", vec![task("crud", "t", &[])]).await;
    let tenant = tenant_of(&engine).await;
    let base = format!("/api/v1/tenants/{tenant}/workflows");

    let (status, cron) = rest(
        &engine,
        reqwest::Method::POST,
        &format!("{base}/crud/crons"),
        Some(json!({"cronName": "every-second", "cronExpression": "* * * * * *", "input": {"k": 1}, "additionalMetadata": {"m": "x"}})),
    )
    .await;
    assert_eq!(status, 200, "{cron}");
    for field in ["tenantId", "workflowVersionId", "workflowId", "workflowName", "cron", "enabled", "method"] {
        assert!(!cron[field].is_null(), "{field} in {cron}");
    }
    assert_eq!((cron["method"].as_str(), cron["workflowName"].as_str()), (Some("API"), Some("crud")));
    let id = cron["metadata"]["id"].as_str().unwrap().to_owned();
    let (status, dup) = rest(
        &engine,
        reqwest::Method::POST,
        &format!("{base}/crud/crons"),
        Some(json!({"cronName": "every-second", "cronExpression": "* * * * *", "input": {}, "additionalMetadata": {}})),
    )
    .await;
    assert_eq!(status, 409, "{dup}");
    let (status, _) = rest(
        &engine,
        reqwest::Method::POST,
        &format!("{base}/crud/crons"),
        Some(json!({"cronName": "bad", "cronExpression": "every day", "input": {}, "additionalMetadata": {}})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, listed) = rest(&engine, reqwest::Method::GET, &format!("{base}/crons"), None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["rows"].as_array().unwrap().len(), 1);
    assert_eq!(listed["pagination"]["current_page"], 1);

    // It fires; deleted, it stops.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ticks(&pool).await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the cron fires");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = rest(&engine, reqwest::Method::DELETE, &format!("{base}/crons/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = rest(&engine, reqwest::Method::GET, &format!("{base}/crons/{id}"), None).await;
    assert_eq!(status, 404);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.workflow_run WHERE triggered_by = 'cron'")
        .fetch_one(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.workflow_run WHERE triggered_by = 'cron'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, later, "a deleted cron fires no more");

    // A one-off schedule fires once, at its time.
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(800);
    let (status, scheduled) = rest(
        &engine,
        reqwest::Method::POST,
        &format!("{base}/crud/scheduled"),
        Some(json!({"triggerAt": at, "input": {"once": true}, "additionalMetadata": {}})),
    )
    .await;
    assert_eq!(status, 200, "{scheduled}");
    assert!(scheduled["workflowRunId"].is_null());
    let sid = scheduled["metadata"]["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let run_id = loop {
        let (_, s) = rest(&engine, reqwest::Method::GET, &format!("{base}/scheduled/{sid}"), None).await;
        if let Some(run) = s["workflowRunId"].as_str() {
            break run.to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "the schedule fires");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let view = engine.rest_get(&format!("/api/v1/stable/workflow-runs/{run_id}")).await;
    assert_eq!(view["run"]["input"], json!({"once": true}));
    let scheduled_runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.workflow_run WHERE triggered_by = 'schedule'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(scheduled_runs, 1);

    // ScheduleWorkflow over gRPC; a future schedule can be deleted before it fires.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let version = engine
        .workflows()
        .schedule_workflow(pb::ScheduleWorkflowRequest {
            name: "crud".into(),
            schedules: vec![prost_types::Timestamp { seconds: later.timestamp(), nanos: 0 }],
            input: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let future = version.scheduled_workflows[0].id.clone();
    let (_, listed) = rest(&engine, reqwest::Method::GET, &format!("{base}/scheduled"), None).await;
    assert_eq!(listed["rows"].as_array().unwrap().len(), 2);
    let (status, _) = rest(&engine, reqwest::Method::DELETE, &format!("{base}/scheduled/{future}"), None).await;
    assert_eq!(status, 204);
    let (status, _) =
        rest(&engine, reqwest::Method::POST, &format!("{base}/nope/scheduled"), Some(json!({"triggerAt": at}))).await;
    assert_eq!(status, 404, "unknown workflow");
}
