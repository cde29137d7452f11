//! Runs end to end: DAG data flow, retries, failures, events.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use serde_json::json;
use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use sqlx::PgPool;

use crate::harness::*;

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_dag_passes_parent_output_to_the_child(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("dag", vec![task("dag", "first", &[]), task("dag", "second", &["first"])]).await;
    let _worker = TestWorker::start(&engine, &["dag:first", "dag:second"], 5, |a| {
        let p = payload(a);
        match a.task_name.as_str() {
            "first" => Reply::Complete(json!({"doubled": p["input"]["n"].as_i64().unwrap() * 2})),
            _ => Reply::Complete(json!({"plus_one": p["parents"]["first"]["doubled"].as_i64().unwrap() + 1})),
        }
    })
    .await;
    let run = engine.trigger("dag", json!({"n": 20}), None).await;
    let finished = engine.wait_finished(&run).await;
    assert_eq!(finished.workflow_run_id, run);
    let out: std::collections::HashMap<_, _> =
        finished.results.iter().map(|r| (r.task_name.clone(), r.output.clone().unwrap())).collect();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out["first"]).unwrap(), json!({"doubled": 40}));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out["second"]).unwrap(), json!({"plus_one": 41}));

    let details = engine.details(&run).await;
    assert!(details.done);
    assert_eq!(details.status, pbv1::RunStatus::Completed as i32);
    assert_eq!(details.task_runs.len(), 2);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&details.input).unwrap(), json!({"n": 20}));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_task_that_fails_twice_succeeds_on_its_third_attempt(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut flaky = task("flaky", "t", &[]);
    flaky.retries = 2;
    engine.put_workflow("flaky", vec![flaky]).await;
    let attempts = Arc::new(AtomicI32::new(0));
    let seen = attempts.clone();
    let mut worker = TestWorker::start(&engine, &["flaky:t"], 1, move |a| {
        seen.fetch_add(1, Ordering::SeqCst);
        if a.retry_count < 2 {
            Reply::Fail(format!("boom {}", a.retry_count))
        } else {
            Reply::Complete(json!({"ok": true}))
        }
    })
    .await;
    let run = engine.trigger("flaky", json!({}), None).await;
    let finished = engine.wait_finished(&run).await;
    assert_eq!(finished.results[0].error, None);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let retries: Vec<i32> = (0..3).map(|_| worker.seen.try_recv().unwrap().retry_count).collect();
    assert_eq!(retries, vec![0, 1, 2], "each attempt carries its number");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_task_that_always_fails_ends_failed_with_its_error(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut bad = task("bad", "t", &[]);
    bad.retries = 1;
    engine.put_workflow("bad", vec![bad, task("bad", "after", &["t"])]).await;
    let _worker =
        TestWorker::start(&engine, &["bad:t", "bad:after"], 2, |_| Reply::Fail("org unreachable".into())).await;
    let run = engine.trigger("bad", json!({}), None).await;
    let finished = engine.wait_finished(&run).await;
    let t = finished.results.iter().find(|r| r.task_name == "t").unwrap();
    assert_eq!(t.error.as_deref(), Some("org unreachable"));
    let after = finished.results.iter().find(|r| r.task_name == "after").unwrap();
    assert!(after.error.as_deref().unwrap().contains("parent"), "{after:?}");
    let details = engine.details(&run).await;
    assert_eq!(details.status, pbv1::RunStatus::Failed as i32);
    assert_eq!(details.task_runs["t"].error.as_deref(), Some("org unreachable"));
    assert_eq!(details.task_runs["after"].status, pbv1::RunStatus::Cancelled as i32);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn output_that_is_not_json_fails_the_task_and_empty_output_succeeds(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut t = task("out", "t", &[]);
    t.retries = 3; // invalid output is not retried
    engine.put_workflow("out", vec![t]).await;
    let _worker = TestWorker::start(&engine, &["out:t"], 1, |a| {
        if payload(a)["input"]["bad"] == json!(true) {
            Reply::CompleteRaw("{not json".into())
        } else {
            Reply::CompleteRaw(String::new())
        }
    })
    .await;
    let bad = engine.trigger("out", json!({"bad": true}), None).await;
    let finished = engine.wait_finished(&bad).await;
    assert!(finished.results[0].error.as_deref().unwrap().contains("not valid JSON"));
    let empty = engine.trigger("out", json!({}), None).await;
    let finished = engine.wait_finished(&empty).await;
    assert_eq!(finished.results[0].error, None);
    assert_eq!(engine.details(&empty).await.status, pbv1::RunStatus::Completed as i32);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn an_event_starts_the_workflows_listening_for_its_key(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let req = pbv1::CreateWorkflowVersionRequest {
        name: "on-push".into(),
        event_triggers: vec!["repo:*".into()],
        tasks: vec![task("on-push", "t", &[])],
        ..Default::default()
    };
    engine.admin().put_workflow(req).await.unwrap();
    let mut worker =
        TestWorker::start(&engine, &["on-push:t"], 1, |a| Reply::Complete(payload(a)["input"].clone())).await;
    let ignored = engine
        .events()
        .push(pb::PushEventRequest { key: "other:push".into(), payload: "{}".into(), ..Default::default() })
        .await
        .unwrap();
    assert!(!ignored.into_inner().event_id.is_empty());
    engine
        .events()
        .push(pb::PushEventRequest {
            key: "repo:push".into(),
            payload: r#"{"branch":"main"}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let action = worker.next_assignment().await;
    assert_eq!(payload(&action)["input"], json!({"branch": "main"}));
    let finished = engine.wait_finished(&action.workflow_run_id).await;
    assert_eq!(finished.results[0].output.as_deref(), Some(r#"{"branch":"main"}"#));
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.workflow_run").fetch_one(&engine.pool).await.unwrap();
    assert_eq!(runs, 1, "only the matching key started a run");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_retry_with_backoff_waits_then_runs(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut t = task("backoff", "t", &[]);
    t.retries = 1;
    t.backoff_factor = Some(1.0);
    t.backoff_max_seconds = Some(1);
    engine.put_workflow("backoff", vec![t]).await;
    let mut worker = TestWorker::start(&engine, &["backoff:t"], 1, |a| {
        if a.retry_count == 0 { Reply::Fail("first attempt fails".into()) } else { Reply::Complete(json!({"ok": 1})) }
    })
    .await;
    let run = engine.trigger("backoff", json!({}), None).await;
    let finished = engine.wait_finished(&run).await;
    assert_eq!(finished.results[0].output.as_deref(), Some(r#"{"ok":1}"#));
    let attempts: Vec<i32> = (0..2).map(|_| worker.seen.try_recv().unwrap().retry_count).collect();
    assert_eq!(attempts, vec![0, 1]);
    let parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.retry_queue_item").fetch_one(&engine.pool).await.unwrap();
    assert_eq!(parked, 0, "the retry left the backoff queue");
    // The second attempt was queued only after the backoff (1 s) had passed.
    let gap: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(created_at) FILTER (WHERE retry_count = 1) - max(created_at) FILTER (WHERE retry_count = 0))::float8 \
         FROM engine.task_event WHERE event_type = 'ASSIGNED'",
    )
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert!(gap >= 0.9, "attempt 1 was assigned {gap} s after attempt 0");
}
