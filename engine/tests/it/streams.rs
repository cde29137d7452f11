//! Run event streams (SubscribeToWorkflowEvents with PutStreamEvent chunks), the run shape
//! REST view, and reports committed in groups.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use sfp_protocol::pb;
use sqlx::PgPool;

use crate::harness::*;

async fn put_chunk(engine: &TestEngine, action: &pb::AssignedAction, text: &str, index: i64) {
    engine
        .events()
        .put_stream_event(pb::PutStreamEventRequest {
            task_run_external_id: action.task_run_external_id.clone(),
            message: text.as_bytes().to_vec(),
            event_index: Some(index),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn subscribe(
    engine: &TestEngine,
    req: pb::SubscribeToWorkflowEventsRequest,
) -> tonic::Streaming<pb::WorkflowEvent> {
    engine.dispatcher().subscribe_to_workflow_events(req).await.unwrap().into_inner()
}

async fn next_event(stream: &mut tonic::Streaming<pb::WorkflowEvent>) -> Option<pb::WorkflowEvent> {
    tokio::time::timeout(PATIENCE, stream.message()).await.expect("an event in time").unwrap()
}

/// Waits until the worker's STARTED report is recorded.
async fn started(engine: &TestEngine) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.task_event WHERE event_type = 'STARTED'")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
        if n > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "STARTED recorded in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (resource type, event type, payload) of an event, for comparing sequences.
fn summary(e: &pb::WorkflowEvent) -> (i32, i32, String) {
    (e.resource_type, e.event_type, e.event_payload.clone())
}

const STEP: i32 = pb::ResourceType::StepRun as i32;
const RUN: i32 = pb::ResourceType::WorkflowRun as i32;

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_late_subscriber_gets_the_whole_run_then_follows_it_live_until_hangup(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("streamy", vec![task("streamy", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["streamy:t"], 1, |_| Reply::Hold).await;
    let run = engine.trigger("streamy", json!({}), None).await;
    let action = worker.next_assignment().await;
    started(&engine).await;
    put_chunk(&engine, &action, "one", 0).await;
    put_chunk(&engine, &action, "two", 1).await;

    // Subscribed after two chunks: they are not lost.
    let mut stream = subscribe(
        &engine,
        pb::SubscribeToWorkflowEventsRequest { workflow_run_id: Some(run.clone()), ..Default::default() },
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(next_event(&mut stream).await.expect("stream open"));
    }
    put_chunk(&engine, &action, "three", 2).await;
    got.push(next_event(&mut stream).await.unwrap());
    report(&engine, &worker.id, &action, pb::StepActionEventType::StepEventTypeCompleted, r#"{"lines":3}"#, None).await;
    loop {
        let event = next_event(&mut stream).await.expect("a hangup before the stream ends");
        let hangup = event.hangup;
        got.push(event);
        if hangup {
            break;
        }
    }
    assert!(next_event(&mut stream).await.is_none(), "the stream ends after the hangup");

    use pb::ResourceEventType as E;
    let seen: Vec<_> = got.iter().map(summary).collect();
    assert_eq!(
        seen,
        vec![
            (STEP, E::Started as i32, String::new()),
            (STEP, E::Stream as i32, "one".into()),
            (STEP, E::Stream as i32, "two".into()),
            (STEP, E::Stream as i32, "three".into()),
            (STEP, E::Completed as i32, r#"{"lines":3}"#.into()),
            (RUN, E::Completed as i32, String::new()),
        ]
    );
    assert!(got.iter().all(|e| e.workflow_run_id == run));
    assert_eq!(got[1].resource_id, action.task_run_external_id);
    assert_eq!(got[3].event_index, Some(2));
    assert!(got[..5].iter().all(|e| !e.hangup));

    // A run that is already over: everything, then the hangup, at once.
    let mut again = subscribe(
        &engine,
        pb::SubscribeToWorkflowEventsRequest { workflow_run_id: Some(run.clone()), ..Default::default() },
    )
    .await;
    let mut replay = Vec::new();
    while let Some(e) = next_event(&mut again).await {
        replay.push(summary(&e));
    }
    assert_eq!(replay, seen);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_failed_run_hangs_up_with_its_error(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("doomed", vec![task("doomed", "t", &[])]).await;
    let _worker = TestWorker::start(&engine, &["doomed:t"], 1, |_| Reply::Fail("disk full".into())).await;
    let run = engine.trigger("doomed", json!({}), None).await;
    engine.wait_finished(&run).await;
    let mut stream =
        subscribe(&engine, pb::SubscribeToWorkflowEventsRequest { workflow_run_id: Some(run), ..Default::default() })
            .await;
    let mut last = None;
    while let Some(e) = next_event(&mut stream).await {
        last = Some(e);
    }
    let last = last.expect("events");
    assert!(last.hangup);
    assert_eq!(last.resource_type, RUN);
    assert_eq!(last.event_type, pb::ResourceEventType::Failed as i32);
    assert_eq!(last.event_payload, "disk full");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_metadata_subscription_follows_only_matching_runs(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("tagged", vec![task("tagged", "t", &[])]).await;
    let _worker = TestWorker::start(&engine, &["tagged:t"], 5, |a| Reply::Complete(payload(a)["input"].clone())).await;
    let mut stream = subscribe(
        &engine,
        pb::SubscribeToWorkflowEventsRequest {
            additional_meta_key: Some("release".into()),
            additional_meta_value: Some("r1".into()),
            ..Default::default()
        },
    )
    .await;
    let trigger = |release: &str, n: i64| {
        let req = sfp_protocol::pb::v1::TriggerWorkflowRequest {
            name: "tagged".into(),
            input: json!({"n": n}).to_string(),
            additional_metadata: Some(json!({"release": release}).to_string()),
            ..Default::default()
        };
        let mut client = engine.workflows();
        async move { client.trigger_workflow(req).await.unwrap().into_inner().workflow_run_id }
    };
    let other = trigger("r2", 1).await;
    let mine = trigger("r1", 2).await;
    engine.wait_finished(&other).await;
    engine.wait_finished(&mine).await;
    let mut completed = Vec::new();
    while completed.is_empty() {
        let e = next_event(&mut stream).await.expect("stream stays open");
        assert_eq!(e.workflow_run_id, mine, "only runs tagged release=r1");
        assert!(!e.hangup, "a metadata subscription does not hang up");
        if e.event_type == pb::ResourceEventType::Completed as i32 {
            completed.push(serde_json::from_str::<Value>(&e.event_payload).unwrap());
        }
    }
    assert_eq!(completed, vec![json!({"n": 2})]);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn event_subscriptions_and_chunks_refuse_bad_requests(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let err = engine
        .dispatcher()
        .subscribe_to_workflow_events(pb::SubscribeToWorkflowEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = engine
        .dispatcher()
        .subscribe_to_workflow_events(pb::SubscribeToWorkflowEventsRequest {
            workflow_run_id: Some(uuid::Uuid::new_v4().to_string()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = engine
        .events()
        .put_stream_event(pb::PutStreamEventRequest {
            task_run_external_id: uuid::Uuid::new_v4().to_string(),
            message: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_run_shape_lists_step_runs_with_outputs_as_json_strings(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("shaped", vec![task("shaped", "a", &[]), task("shaped", "b", &["a"])]).await;
    let _worker =
        TestWorker::start(&engine, &["shaped:a", "shaped:b"], 2, |a| Reply::Complete(json!({"from": a.task_name})))
            .await;
    let run = engine.trigger("shaped", json!({"x": 1}), None).await;
    engine.wait_finished(&run).await;
    let tenant = engine.rest_get(&format!("/api/v1/stable/workflow-runs/{run}")).await["run"]["tenantId"]
        .as_str()
        .unwrap()
        .to_owned();
    let shape = engine.rest_get(&format!("/api/v1/tenants/{tenant}/workflow-runs/{run}/shape")).await;
    assert_eq!(shape["metadata"]["id"], json!(run));
    assert_eq!(shape["status"], "COMPLETED");
    let job_run = &shape["jobRuns"][0];
    let steps = job_run["job"]["steps"].as_array().unwrap();
    let step_runs = job_run["stepRuns"].as_array().unwrap();
    assert_eq!(step_runs.len(), 2);
    // What the TypeScript SDK does: find each step run's step by id, parse its output.
    for step_run in step_runs {
        let step = steps.iter().find(|s| s["metadata"]["id"] == step_run["stepId"]).expect("step of the step run");
        let name = step["readableId"].as_str().unwrap();
        let output: Value = serde_json::from_str(step_run["output"].as_str().unwrap()).unwrap();
        assert_eq!(output, json!({"from": name}));
        assert_eq!(step_run["status"], "COMPLETED");
    }
    let b = steps.iter().find(|s| s["readableId"] == "b").unwrap();
    let a = steps.iter().find(|s| s["readableId"] == "a").unwrap();
    assert_eq!(b["parents"], json!([a["metadata"]["id"]]));

    let other_tenant = uuid::Uuid::new_v4();
    let status = reqwest::Client::new()
        .get(format!("{}/api/v1/tenants/{other_tenant}/workflow-runs/{run}/shape", engine.rest_url))
        .bearer_auth(&engine.token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}

/// Many reports at once are committed together; each caller still gets its own answer, and
/// a report that cannot be stored fails only its own task.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn reports_sent_together_all_land_and_a_bad_one_fails_alone(pool: PgPool) {
    const RUNS: usize = 200;
    let engine = TestEngine::start(pool.clone()).await;
    engine.put_workflow("burst", vec![task("burst", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["burst:t"], RUNS as i32, |_| Reply::Hold).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(engine.trigger("burst", json!({}), None).await);
    }
    let mut actions = Vec::new();
    for _ in 0..RUNS {
        actions.push(worker.next_assignment().await);
    }
    let bad = actions[RUNS / 2].workflow_run_id.clone();
    let sends = actions.iter().map(|a| {
        let payload = if a.workflow_run_id == bad { r#"{"text":"nul \u0000 here"}"# } else { r#"{"ok":true}"# };
        report(&engine, &worker.id, a, pb::StepActionEventType::StepEventTypeCompleted, payload, Some(a.retry_count))
    });
    join_all(sends).await;
    for run in &runs {
        let finished = engine.wait_finished(run).await;
        if *run == bad {
            let error = finished.results[0].error.clone().expect("the bad one failed");
            assert!(error.contains("U+0000"), "{error}");
        } else {
            assert_eq!(finished.results[0].output.as_deref(), Some(r#"{"ok":true}"#), "run {run}");
        }
    }
    let (completed, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'COMPLETED'), count(*) FILTER (WHERE status = 'FAILED') \
         FROM engine.workflow_run",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((completed, failed), (RUNS as i64 - 1, 1));
    let runtimes: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.task_runtime").fetch_one(&pool).await.unwrap();
    assert_eq!(runtimes, 0, "every attempt's runtime row is gone");
}

/// Two parents of one child finishing at the same moment release the child exactly once,
/// and the run finishes: the run row is locked while its tasks' reports are written.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn parents_finishing_together_release_their_child_once(pool: PgPool) {
    let engine = TestEngine::start(pool.clone()).await;
    engine
        .put_workflow(
            "diamond",
            vec![
                task("diamond", "a", &[]),
                task("diamond", "b", &["a"]),
                task("diamond", "c", &["a"]),
                task("diamond", "d", &["b", "c"]),
            ],
        )
        .await;
    let mut worker =
        TestWorker::start(&engine, &["diamond:a", "diamond:b", "diamond:c", "diamond:d"], 10, |_| Reply::Hold).await;
    for round in 0..10 {
        let run = engine.trigger("diamond", json!({"round": round}), None).await;
        let a = worker.next_assignment().await;
        report(&engine, &worker.id, &a, pb::StepActionEventType::StepEventTypeCompleted, "{}", None).await;
        let first = worker.next_assignment().await;
        let second = worker.next_assignment().await;
        let both = [&first, &second]
            .map(|x| report(&engine, &worker.id, x, pb::StepActionEventType::StepEventTypeCompleted, "{}", None));
        join_all(both).await;
        let d = worker.next_assignment().await;
        assert_eq!(d.task_name, "d");
        assert_eq!(d.workflow_run_id, run);
        let parents = payload(&d)["parents"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(parents, vec!["b".to_string(), "c".to_string()]);
        report(&engine, &worker.id, &d, pb::StepActionEventType::StepEventTypeCompleted, "{}", None).await;
        engine.wait_finished(&run).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(worker.seen.try_recv().is_err(), "no task ran twice");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.queue_item").fetch_one(&pool).await.unwrap();
    assert_eq!(queued, 0);
}
