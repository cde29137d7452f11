//! Operations REST: the run list with filters and pages, one task, a run's status, task
//! events and task logs, in Hatchet's shapes.

use serde_json::{Value, json};
use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use sqlx::PgPool;

use crate::harness::*;

async fn get(engine: &TestEngine, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", engine.rest_url))
        .bearer_auth(&engine.token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn trigger_tagged(engine: &TestEngine, workflow: &str, input: Value, release: &str) -> String {
    engine
        .workflows()
        .trigger_workflow(pbv1::TriggerWorkflowRequest {
            name: workflow.into(),
            input: input.to_string(),
            additional_metadata: Some(json!({"release": release}).to_string()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_run_id
}

fn ids(list: &Value) -> Vec<String> {
    list["rows"].as_array().unwrap().iter().map(|r| r["metadata"]["id"].as_str().unwrap().to_owned()).collect()
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn runs_are_listed_newest_first_by_status_workflow_metadata_and_page(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("build", vec![task("build", "compile", &[])]).await;
    engine.put_workflow("release", vec![task("release", "a", &[]), task("release", "b", &["a"])]).await;
    let _worker = TestWorker::start(&engine, &["build:compile"], 4, |a| {
        if payload(a)["input"]["fail"] == true { Reply::Fail("boom".into()) } else { Reply::Complete(json!({"ok": 1})) }
    })
    .await;
    let ok = trigger_tagged(&engine, "build", json!({}), "r1").await;
    engine.wait_finished(&ok).await;
    let failed = trigger_tagged(&engine, "build", json!({"fail": true}), "r2").await;
    engine.wait_finished(&failed).await;
    // No worker serves the release workflow: it stays queued.
    let queued = trigger_tagged(&engine, "release", json!({"v": 3}), "r2").await;
    let tenant = engine.rest_get(&format!("/api/v1/stable/workflow-runs/{ok}")).await["run"]["tenantId"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("/api/v1/stable/tenants/{tenant}/workflow-runs");

    let (status, all) = get(&engine, &base).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all), vec![queued.clone(), failed.clone(), ok.clone()], "newest first");
    assert_eq!(all["pagination"], json!({"current_page": 1, "next_page": null, "num_pages": 1}));
    let rows = all["rows"].as_array().unwrap();
    assert_eq!(rows[0]["type"], "DAG");
    assert_eq!(rows[0]["status"], "QUEUED");
    assert_eq!(rows[0]["input"], json!({"v": 3}));
    assert_eq!(rows[1]["type"], "TASK");
    assert_eq!(rows[1]["status"], "FAILED");
    assert!(rows[1]["errorMessage"].as_str().unwrap().contains("boom"), "{}", rows[1]);
    assert_eq!(rows[2]["output"], json!({"ok": 1}));
    assert_eq!(rows[2]["workflowName"], "build");
    assert!(rows[2]["duration"].is_i64());

    let (_, completed) = get(&engine, &format!("{base}?statuses=COMPLETED&statuses=FAILED")).await;
    assert_eq!(ids(&completed), vec![failed.clone(), ok.clone()]);
    let build_id = rows[2]["workflowId"].as_str().unwrap();
    let (_, by_workflow) = get(&engine, &format!("{base}?workflow_ids={build_id}")).await;
    assert_eq!(ids(&by_workflow), vec![failed.clone(), ok.clone()]);
    let (_, by_meta) = get(&engine, &format!("{base}?additional_metadata=release:r2")).await;
    assert_eq!(ids(&by_meta), vec![queued.clone(), failed.clone()]);
    let (_, future) = get(&engine, &format!("{base}?since=2999-01-01T00:00:00.000000%2B0000")).await;
    assert_eq!(ids(&future), Vec::<String>::new());
    let (_, past) = get(&engine, &format!("{base}?until=2000-01-01T00:00:00Z")).await;
    assert_eq!(ids(&past), Vec::<String>::new());

    // Pages of two.
    let (_, first) = get(&engine, &format!("{base}?limit=2")).await;
    assert_eq!(ids(&first), vec![queued.clone(), failed.clone()]);
    assert_eq!(first["pagination"], json!({"current_page": 1, "next_page": 2, "num_pages": 2}));
    let (_, second) = get(&engine, &format!("{base}?limit=2&offset=2")).await;
    assert_eq!(ids(&second), vec![ok.clone()]);
    assert_eq!(second["pagination"], json!({"current_page": 2, "next_page": null, "num_pages": 2}));
    let (_, beyond) = get(&engine, &format!("{base}?limit=2&offset=10")).await;
    assert_eq!(beyond["rows"], json!([]));
    assert_eq!(beyond["pagination"]["num_pages"], 2, "the total is counted past the end too");

    // Tasks instead of runs: the release run has two, both waiting (QUEUED covers PENDING).
    let (_, tasks) = get(&engine, &format!("{base}?only_tasks=true&statuses=QUEUED")).await;
    let names: Vec<&str> =
        tasks["rows"].as_array().unwrap().iter().map(|r| r["displayName"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["b", "a"]);
    assert!(tasks["rows"].as_array().unwrap().iter().all(|r| r["workflowRunExternalId"] == queued.as_str()));

    let (_, hidden) = get(&engine, &format!("{base}?include_payloads=false")).await;
    assert_eq!(hidden["rows"][0]["input"], json!({}));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn bad_list_parameters_are_refused_by_name(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("w", vec![task("w", "t", &[])]).await;
    let run = engine.trigger("w", json!({}), None).await;
    let tenant = engine.rest_get(&format!("/api/v1/stable/workflow-runs/{run}")).await["run"]["tenantId"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("/api/v1/stable/tenants/{tenant}/workflow-runs");
    for (query, named) in [
        ("statuses=DONE", "status \"DONE\""),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("offset=-1", "offset"),
        ("limit=ten", "limit"),
        ("since=yesterday", "since"),
        ("workflow_ids=nope", "workflow_ids"),
        ("additional_metadata=novalue", "additional_metadata"),
        ("only_tasks=maybe", "only_tasks"),
    ] {
        let (status, body) = get(&engine, &format!("{base}?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "bad_request");
        assert!(body["message"].as_str().unwrap().contains(named), "{query}: {body}");
    }
    let other = uuid::Uuid::new_v4();
    let (status, _) = get(&engine, &format!("/api/v1/stable/tenants/{other}/workflow-runs")).await;
    assert_eq!(status, 403);
    let (status, _) = get(&engine, &format!("/api/v1/stable/tasks/{other}")).await;
    assert_eq!(status, 404);
    let (status, _) = get(&engine, &format!("/api/v1/stable/tasks/{other}/logs")).await;
    assert_eq!(status, 404);
    let (status, _) = get(&engine, &format!("/api/v1/stable/workflow-runs/{other}/task-events")).await;
    assert_eq!(status, 404);
    let (status, body) = get(&engine, "/api/v1/stable/tasks/not-a-uuid/task-events").await;
    assert_eq!(status, 400, "{body}");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_task_shows_its_events_logs_and_status(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("logged", vec![task("logged", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["logged:t"], 1, |_| Reply::Hold).await;
    let run = engine.trigger("logged", json!({}), None).await;
    let action = worker.next_assignment().await;
    let task_id = action.task_run_external_id.clone();
    let (_, status) = get(&engine, &format!("/api/v1/stable/workflow-runs/{run}/status")).await;
    assert_eq!(status, "RUNNING");
    for (level, message) in
        [("INFO", "resolving packages"), ("warning", "coverage below 75%"), ("ERROR", "deploy failed once")]
    {
        engine
            .events()
            .put_log(pb::PutLogRequest {
                task_run_external_id: task_id.clone(),
                message: message.into(),
                level: Some(level.into()),
                metadata: json!({"line": message.len()}).to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    report(&engine, &worker.id, &action, pb::StepActionEventType::StepEventTypeCompleted, r#"{"built": 2}"#, Some(0))
        .await;
    engine.wait_finished(&run).await;

    let (code, logs) = get(&engine, &format!("/api/v1/stable/tasks/{task_id}/logs")).await;
    assert_eq!(code, 200, "{logs}");
    let messages: Vec<&str> = logs["rows"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(messages, vec!["resolving packages", "coverage below 75%", "deploy failed once"]);
    assert_eq!(logs["rows"][1]["level"], "WARN", "levels are Hatchet's names");
    assert_eq!(logs["rows"][0]["taskExternalId"], task_id.as_str());
    assert_eq!(logs["rows"][0]["attempt"], 1);
    let (_, newest) =
        get(&engine, &format!("/api/v1/stable/tasks/{task_id}/logs?order_by_direction=DESC&limit=1")).await;
    assert_eq!(newest["rows"][0]["message"], "deploy failed once");
    let (_, found) = get(&engine, &format!("/api/v1/stable/tasks/{task_id}/logs?search=COVERAGE")).await;
    assert_eq!(found["rows"].as_array().unwrap().len(), 1);
    let (_, errors) = get(&engine, &format!("/api/v1/stable/tasks/{task_id}/logs?levels=ERROR&levels=WARN")).await;
    assert_eq!(errors["rows"].as_array().unwrap().len(), 2);
    let (code, _) = get(&engine, &format!("/api/v1/stable/tasks/{task_id}/logs?levels=LOUD")).await;
    assert_eq!(code, 400);

    let (_, events) = get(&engine, &format!("/api/v1/stable/tasks/{task_id}/task-events")).await;
    let kinds: Vec<&str> =
        events["rows"].as_array().unwrap().iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["ASSIGNED", "STARTED", "FINISHED"]);
    assert_eq!(events["rows"][2]["output"], r#"{"built": 2}"#);
    assert_eq!(events["rows"][0]["workerId"], worker.id.as_str());
    let (_, by_run) = get(&engine, &format!("/api/v1/stable/workflow-runs/{run}/task-events")).await;
    assert_eq!(by_run["rows"], events["rows"]);
    let (_, page) = get(&engine, &format!("/api/v1/stable/tasks/{task_id}/task-events?limit=1&offset=1")).await;
    assert_eq!(page["rows"][0]["eventType"], "STARTED");
    assert_eq!(page["pagination"]["num_pages"], 3);

    let (code, summary) = get(&engine, &format!("/api/v1/stable/tasks/{task_id}")).await;
    assert_eq!(code, 200);
    assert_eq!(summary["taskExternalId"], task_id.as_str());
    assert_eq!(summary["workflowRunExternalId"], run.as_str());
    assert_eq!(summary["status"], "COMPLETED");
    assert_eq!(summary["output"], json!({"built": 2}));
    let (_, status) = get(&engine, &format!("/api/v1/stable/workflow-runs/{run}/status")).await;
    assert_eq!(status, "COMPLETED");
}

async fn scrape(engine: &TestEngine) -> String {
    let response = reqwest::get(format!("{}/metrics", engine.rest_url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.unwrap()
}

/// The value of one series in a Prometheus text exposition.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().unwrap()))
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn metrics_count_assignments_retries_timeouts_durations_queue_and_slots(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut flaky = task("m", "flaky", &[]);
    flaky.retries = 1;
    let mut hung = task("h", "t", &[]);
    hung.timeout = "1s".into();
    engine.put_workflow("m", vec![flaky]).await;
    engine.put_workflow("h", vec![hung]).await;
    engine.put_workflow("idle", vec![task("idle", "t", &[])]).await;
    let worker = TestWorker::start(&engine, &["m:flaky", "h:t"], 3, |a| match a.action_id.as_str() {
        "m:flaky" if a.retry_count == 0 => Reply::Fail("first attempt fails".into()),
        "m:flaky" => Reply::Complete(json!({})),
        _ => Reply::Hold,
    })
    .await;
    worker.keep_alive(&engine);
    let before = scrape(&engine).await;
    assert_eq!(series(&before, "sfp_engine_assignments_total"), Some(0.0), "{before}");

    let run = engine.trigger("m", json!({}), None).await;
    engine.wait_finished(&run).await;
    let timed_out = engine.trigger("h", json!({}), None).await;
    engine.wait_finished(&timed_out).await;
    engine.trigger("idle", json!({}), Some(3)).await;
    engine.trigger("idle", json!({}), Some(3)).await;
    engine.trigger("idle", json!({}), None).await;

    let text = scrape(&engine).await;
    assert_eq!(series(&text, "sfp_engine_assignments_total"), Some(3.0), "{text}");
    assert_eq!(series(&text, "sfp_engine_retries_total"), Some(1.0), "{text}");
    assert_eq!(series(&text, "sfp_engine_timeouts_total"), Some(1.0), "{text}");
    assert_eq!(series(&text, r#"sfp_engine_queue_depth{action="idle:t",priority="3"}"#), Some(2.0), "{text}");
    assert_eq!(series(&text, r#"sfp_engine_queue_depth{action="idle:t",priority="1"}"#), Some(1.0), "{text}");
    assert_eq!(
        series(&text, r#"sfp_engine_task_duration_seconds_count{workflow="m",outcome="failed"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(series(&text, r#"sfp_engine_task_duration_seconds_count{workflow="m",outcome="completed"}"#), Some(1.0));
    let hung_for = series(&text, r#"sfp_engine_task_duration_seconds_sum{workflow="h",outcome="timed_out"}"#).unwrap();
    assert!(hung_for >= 1.0, "the timed-out attempt ran at least its timeout: {hung_for}");
    assert_eq!(series(&text, "sfp_engine_workers_active"), Some(1.0));
    assert_eq!(series(&text, "sfp_engine_slots_free"), Some(3.0), "every attempt ended: {text}");
    assert_eq!(series(&text, "sfp_engine_slots_used"), Some(0.0));
    assert_eq!(series(&text, "sfp_engine_draining"), Some(0.0));
}

async fn send(engine: &TestEngine, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("{}{path}", engine.rest_url)).bearer_auth(&engine.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_drain_stops_new_assignments_and_waits_for_in_flight_tasks(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("d", vec![task("d", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["d:t"], 2, |_| Reply::Hold).await;
    let first = engine.trigger("d", json!({}), None).await;
    let held = worker.next_assignment().await;

    let (code, state) = send(&engine, reqwest::Method::POST, "/api/v1/engine/drain", None).await;
    assert_eq!(code, 200, "{state}");
    assert_eq!(state, json!({"draining": true, "inFlight": 1, "drained": false}));
    let second = engine.trigger("d", json!({}), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(worker.seen.try_recv().is_err(), "nothing new is assigned while draining (a slot is free)");
    let ready = reqwest::get(format!("{}/api/ready", engine.rest_url)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready while draining");

    // A drain that waits answers once the held task has finished.
    let waiting = {
        let (url, token) = (engine.rest_url.clone(), engine.token.clone());
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{url}/api/v1/engine/drain"))
                .bearer_auth(token)
                .json(&json!({"timeoutSeconds": 30}))
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the drain waits for the running task");
    report(&engine, &worker.id, &held, pb::StepActionEventType::StepEventTypeCompleted, "{}", Some(0)).await;
    assert_eq!(waiting.await.unwrap(), json!({"draining": true, "inFlight": 0, "drained": true}));
    engine.wait_finished(&first).await;
    let (_, scraped) = (0, scrape(&engine).await);
    assert_eq!(series(&scraped, "sfp_engine_draining"), Some(1.0));

    // The queued run was kept and runs after a resume.
    let (code, state) = send(&engine, reqwest::Method::DELETE, "/api/v1/engine/drain", None).await;
    assert_eq!((code, state["draining"].clone()), (200, json!(false)));
    let next = worker.next_assignment().await;
    let (_, details) = get(&engine, &format!("/api/v1/stable/workflow-runs/{second}")).await;
    assert_eq!(details["tasks"][0]["taskExternalId"], next.task_run_external_id.as_str());
    let (code, body) =
        send(&engine, reqwest::Method::POST, "/api/v1/engine/drain", Some(json!({"timeoutSeconds": 99999}))).await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = send(&engine, reqwest::Method::POST, "/api/v1/engine/drain", Some(json!({"wait": 1}))).await;
    assert_eq!(code, 400, "unknown fields are refused");
}
