//! Cancelling and replaying runs and tasks (gRPC CancelTasks / ReplayTasks and REST).

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use serde_json::{Value, json};
use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use sqlx::PgPool;

use crate::harness::*;

async fn tenant(engine: &TestEngine, run: &str) -> String {
    engine.rest_get(&format!("/api/v1/stable/workflow-runs/{run}")).await["run"]["tenantId"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn rest_post(engine: &TestEngine, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", engine.rest_url))
        .bearer_auth(&engine.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn cancelling_a_waiting_run_cancels_all_its_tasks(pool: PgPool) {
    let engine = TestEngine::start(pool.clone()).await;
    engine.put_workflow("waiting", vec![task("waiting", "a", &[]), task("waiting", "b", &["a"])]).await;
    let run = engine.trigger("waiting", json!({}), None).await;
    let cancelled = engine
        .admin()
        .cancel_tasks(pbv1::CancelTasksRequest { external_ids: vec![run.clone()], filter: None })
        .await
        .unwrap()
        .into_inner()
        .cancelled_tasks;
    assert_eq!(cancelled.len(), 2, "both tasks of the run");
    let details = engine.details(&run).await;
    assert_eq!(details.status, pbv1::RunStatus::Cancelled as i32);
    assert!(details.done);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.queue_item").fetch_one(&pool).await.unwrap();
    assert_eq!(queued, 0, "nothing left for a worker");
    // A worker that comes now gets nothing.
    let mut worker = TestWorker::start(&engine, &["waiting:a", "waiting:b"], 1, |_| Reply::Complete(json!({}))).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(worker.seen.try_recv().is_err());
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn cancelling_a_running_task_stops_it_on_its_worker_and_frees_the_slot(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("long", vec![task("long", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["long:t"], 1, |a| {
        if payload(a)["input"]["hold"] == true { Reply::Hold } else { Reply::Complete(json!({"quick": true})) }
    })
    .await;
    let run = engine.trigger("long", json!({"hold": true}), None).await;
    let start = worker.next_assignment().await;
    let tenant = tenant(&engine, &run).await;
    let (status, body) = rest_post(
        &engine,
        &format!("/api/v1/stable/tenants/{tenant}/tasks/cancel"),
        json!({"externalIds": [start.task_run_external_id]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ids"], json!([start.task_run_external_id]));
    let cancel = worker.next_assignment().await;
    assert_eq!(cancel.action_type, pb::ActionType::CancelStepRun as i32);
    assert_eq!(cancel.task_run_external_id, start.task_run_external_id);
    let finished = engine.wait_finished(&run).await;
    assert!(finished.results[0].error.is_some());
    assert_eq!(engine.details(&run).await.status, pbv1::RunStatus::Cancelled as i32);
    // The slot is free for the next run; the cancelled attempt's late result is stale.
    let next = engine.trigger("long", json!({"hold": false}), None).await;
    assert_eq!(engine.wait_finished(&next).await.results[0].output.as_deref(), Some(r#"{"quick":true}"#));
    report(&engine, &worker.id, &start, pb::StepActionEventType::StepEventTypeCompleted, "{}", Some(0)).await;
    assert_eq!(engine.details(&run).await.status, pbv1::RunStatus::Cancelled as i32);
    // Nothing to cancel any more.
    let (_, again) =
        rest_post(&engine, &format!("/api/v1/stable/tenants/{tenant}/tasks/cancel"), json!({"externalIds": [run]}))
            .await;
    assert_eq!(again["ids"], json!([]));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_filter_cancels_only_the_matching_runs(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("tagged", vec![task("tagged", "t", &[])]).await;
    let mut runs = Vec::new();
    for release in ["r1", "r2", "r1"] {
        let req = pbv1::TriggerWorkflowRequest {
            name: "tagged".into(),
            input: "{}".into(),
            additional_metadata: Some(json!({"release": release}).to_string()),
            ..Default::default()
        };
        runs.push(engine.workflows().trigger_workflow(req).await.unwrap().into_inner().workflow_run_id);
    }
    let tenant = tenant(&engine, &runs[0]).await;
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let (status, body) = rest_post(
        &engine,
        &format!("/api/v1/stable/tenants/{tenant}/tasks/cancel"),
        json!({"filter": {"since": since, "additionalMetadata": ["release:r1"]}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 2);
    assert_eq!(engine.details(&runs[0]).await.status, pbv1::RunStatus::Cancelled as i32);
    assert_eq!(engine.details(&runs[1]).await.status, pbv1::RunStatus::Queued as i32, "r2 untouched");
    assert_eq!(engine.details(&runs[2]).await.status, pbv1::RunStatus::Cancelled as i32);
    let (status, _) = rest_post(&engine, &format!("/api/v1/stable/tenants/{tenant}/tasks/cancel"), json!({})).await;
    assert_eq!(status, 400, "nothing named, no filter");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_failed_run_replays_from_the_failed_step_keeping_completed_outputs(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine
        .put_workflow(
            "pipeline",
            vec![
                task("pipeline", "build", &[]),
                task("pipeline", "deploy", &["build"]),
                task("pipeline", "notify", &["deploy"]),
            ],
        )
        .await;
    let builds = Arc::new(AtomicI32::new(0));
    let counted = builds.clone();
    let _worker = TestWorker::start(&engine, &["pipeline:build", "pipeline:deploy", "pipeline:notify"], 3, move |a| {
        match a.task_name.as_str() {
            "build" => {
                counted.fetch_add(1, Ordering::SeqCst);
                Reply::Complete(json!({"artifact": "pkg-1.0.0"}))
            }
            // The first deployment fails (the org was locked, say); the replay succeeds.
            "deploy" if a.retry_count == 0 => Reply::Fail("org locked".into()),
            "deploy" => Reply::Complete(json!({"deployed": payload(a)["parents"]["build"]["artifact"]})),
            _ => Reply::Complete(json!({"sent": true})),
        }
    })
    .await;
    let run = engine.trigger("pipeline", json!({}), None).await;
    let failed = engine.wait_finished(&run).await;
    assert!(failed.results.iter().any(|r| r.error.as_deref() == Some("org locked")));
    assert_eq!(engine.details(&run).await.status, pbv1::RunStatus::Failed as i32);

    let replayed = engine
        .admin()
        .replay_tasks(pbv1::ReplayTasksRequest { external_ids: vec![run.clone()], filter: None })
        .await
        .unwrap()
        .into_inner()
        .replayed_tasks;
    assert_eq!(replayed.len(), 2, "deploy and notify run again, build does not");
    let finished = engine.wait_finished(&run).await;
    let out: std::collections::HashMap<_, _> =
        finished.results.iter().map(|r| (r.task_name.clone(), r.output.clone())).collect();
    assert_eq!(out["deploy"].as_deref(), Some(r#"{"deployed":"pkg-1.0.0"}"#), "the kept build output flowed in");
    assert_eq!(out["notify"].as_deref(), Some(r#"{"sent":true}"#));
    assert_eq!(builds.load(Ordering::SeqCst), 1, "the completed build was not run again");
    let details = engine.details(&run).await;
    assert_eq!(details.status, pbv1::RunStatus::Completed as i32);
    let view = engine.rest_get(&format!("/api/v1/stable/workflow-runs/{run}")).await;
    let deploy = view["tasks"].as_array().unwrap().iter().find(|t| t["displayName"] == "deploy").unwrap();
    assert_eq!(deploy["retryCount"], 1, "the replay is a new attempt");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_worker_list_shows_slots_in_use_and_free(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("busy", vec![task("busy", "t", &[])]).await;
    let mut busy = TestWorker::start(&engine, &["busy:t"], 3, |_| Reply::Hold).await;
    let idle = TestWorker::start(&engine, &["other:t"], 2, |_| Reply::Hold).await;
    let run = engine.trigger("busy", json!({}), None).await;
    busy.next_assignment().await;
    let tenant = tenant(&engine, &run).await;
    let list = engine.rest_get(&format!("/api/v1/tenants/{tenant}/worker")).await;
    let rows = list["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let find = |id: &str| rows.iter().find(|w| w["metadata"]["id"] == id).unwrap().clone();
    let b = find(&busy.id);
    assert_eq!((b["maxRuns"].as_i64(), b["availableRuns"].as_i64()), (Some(3), Some(2)), "{b}");
    assert_eq!(b["status"], "ACTIVE");
    assert!(b["lastHeartbeatAt"].is_string());
    let i = find(&idle.id);
    assert_eq!((i["maxRuns"].as_i64(), i["availableRuns"].as_i64()), (Some(2), Some(2)));
    // A worker whose stream is gone is not listed unless asked for.
    idle.disconnect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let list = engine.rest_get(&format!("/api/v1/tenants/{tenant}/worker")).await;
        if list["rows"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the disconnected worker leaves the list");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let all = engine.rest_get(&format!("/api/v1/tenants/{tenant}/worker?all=true")).await;
    assert_eq!(all["rows"].as_array().unwrap().len(), 2);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn cancel_replay_and_worker_requests_refuse_bad_ids_and_other_tenants(pool: PgPool) {
    let engine = TestEngine::start(pool.clone()).await;
    engine.put_workflow("bad", vec![task("bad", "t", &[])]).await;
    let run = engine.trigger("bad", json!({}), None).await;
    let tenant = tenant(&engine, &run).await;
    let other = uuid::Uuid::new_v4();
    for verb in ["cancel", "replay"] {
        let (status, body) = rest_post(
            &engine,
            &format!("/api/v1/stable/tenants/{tenant}/tasks/{verb}"),
            json!({"externalIds": ["nope"]}),
        )
        .await;
        assert_eq!(status, 400, "{verb}: {body}");
        assert!(body["message"].as_str().unwrap().contains("externalIds"), "{body}");
        let (status, _) =
            rest_post(&engine, &format!("/api/v1/stable/tenants/{other}/tasks/{verb}"), json!({"externalIds": [run]}))
                .await;
        assert_eq!(status, 403, "{verb} for another tenant");
    }
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/tenants/{other}/worker", engine.rest_url))
        .bearer_auth(&engine.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let err = engine
        .admin()
        .cancel_tasks(pbv1::CancelTasksRequest { external_ids: vec!["not-a-uuid".into()], filter: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Nothing was cancelled by the refused requests.
    assert_eq!(engine.details(&run).await.status, pbv1::RunStatus::Queued as i32);
}
