//! The engine when things go wrong, with real processes: `sfp-engine serve`, official Python
//! SDK workers and PostgreSQL, killed and restarted while runs are in flight. Each test
//! counts the side effects the tasks leave, not only the statuses the engine reports.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use sfp_tests::engine::{EngineApi, EngineProcess, PythonWorker, side_effects};
use sfp_tests::sdk::{FreshDatabase, tool_from_env};

/// Bounds the waits so a hang fails the test; nothing here measures speed.
const LIMIT: Duration = Duration::from_secs(120);

fn effects_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("effects folder")
}

/// Executions that began (the worker marks each before it works).
fn started_executions(effects: &std::path::Path) -> usize {
    std::fs::read_dir(effects)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("started."))
        .count()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_killed_with_50_runs_in_flight_completes_each_exactly_once_after_restart() {
    let python = tool_from_env("SFP_TEST_PYTHON");
    let db = FreshDatabase::create();
    let mut engine = EngineProcess::start(&db.url);
    let token = engine.token();
    let api = EngineApi::new(&engine.rest_url(), &token);
    let effects = effects_dir();
    let worker = PythonWorker::start(&python, &token, "w1", 10, effects.path());

    let mut runs = Vec::new();
    for _ in 0..50 {
        runs.push(api.trigger("fx-effect", json!({"ms": 400})).await);
    }
    // Kill while tasks run: some done, others started and not done (each takes 400 ms, so
    // those are still running a moment later, when the kill lands).
    wait_for("some runs done and others running", || {
        let done = side_effects(effects.path()).len();
        done >= 10 && started_executions(effects.path()) > done
    })
    .await;
    engine.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.restart();

    let statuses = api.wait_finished(&runs, LIMIT).await;
    let log = || format!("engine:\n{}\nworker:\n{}", engine.log(), worker.log());
    let done = side_effects(effects.path());
    let mut per_run: HashMap<&str, usize> = HashMap::new();
    for (run, _, _) in &done {
        *per_run.entry(run.as_str()).or_default() += 1;
    }
    let mut again = 0;
    for (run, status) in runs.iter().zip(&statuses) {
        let events = api.events(run).await;
        let count = |kind: &str| events.iter().filter(|e| e["eventType"] == kind).count();
        assert_eq!(status, "COMPLETED", "run {run}: {events:#?}\n{}", log());
        assert_eq!(count("FINISHED"), 1, "run {run} completed exactly once: {events:#?}");
        // Every execution is of an assignment the engine made (not necessarily one it saw
        // start: the SDK can lose that report too); one that ran again was re-run by the
        // engine's own verdict (its report never arrived, so it timed out or was requeued).
        let executions = per_run.get(run.as_str()).copied().unwrap_or(0);
        assert!(executions >= 1 && executions <= count("ASSIGNED"), "run {run}: {executions} executions: {events:#?}");
        if executions > 1 {
            assert!(
                count("TIMED_OUT") + count("REASSIGNED") >= executions - 1,
                "run {run} re-ran unaccounted: {events:#?}"
            );
            again += executions - 1;
        }
    }
    println!("50 runs, {} executions ({again} re-executions decided by the engine)", done.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_task_leaves_it_to_another_worker_as_a_new_attempt() {
    let python = tool_from_env("SFP_TEST_PYTHON");
    let db = FreshDatabase::create();
    let engine = EngineProcess::start_with(&db.url, &[("SFP_ENGINE_HEARTBEAT_TIMEOUT", "5")]);
    let token = engine.token();
    let api = EngineApi::new(&engine.rest_url(), &token);
    let effects = effects_dir();
    let mut first = PythonWorker::start(&python, &token, "first", 1, effects.path());
    let run = api.trigger("fx-slow", json!({"ms": 4000})).await;
    let marker = effects.path().join(format!("started.{run}.0.first"));
    wait_for("the first worker to start the task", || marker.exists()).await;
    // The second worker comes only now, so the task was the first worker's.
    let second = PythonWorker::start(&python, &token, "second", 1, effects.path());
    first.kill9();

    let statuses = api.wait_finished(std::slice::from_ref(&run), LIMIT).await;
    let events = api.events(&run).await;
    assert_eq!(statuses[0], "COMPLETED", "{events:#?}\n{}\n{}", engine.log(), second.log());
    assert_eq!(side_effects(effects.path()), vec![(run.clone(), 1, "second".to_owned())], "one execution, attempt 2");
    let kinds: Vec<&str> = events.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"REASSIGNED"), "{kinds:?}");
    let finished: Vec<_> = events.iter().filter(|e| e["eventType"] == "FINISHED").collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["retryCount"], 1, "a new attempt, without spending the task's retries");
}

/// `sfp-server db start|stop` on a cluster of the test's own (the shared test cluster must
/// stay up for the other tests).
fn own_cluster(dir: &std::path::Path, action: &str) -> String {
    let out = std::process::Command::new(sfp_tests::sdk::workspace_binary("sfp-server"))
        .args(["db", action, "--data-dir"])
        .arg(dir)
        .output()
        .expect("sfp-server db");
    assert!(out.status.success(), "db {action}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_mid_load_engine_and_workers_recover_by_themselves() {
    let python = tool_from_env("SFP_TEST_PYTHON");
    let data = sfp_tests::data_dir();
    let url = own_cluster(data.path(), "start");
    let engine = EngineProcess::start(&url);
    let token = engine.token();
    let api = EngineApi::new(&engine.rest_url(), &token);
    let effects = effects_dir();
    let worker = PythonWorker::start(&python, &token, "w1", 5, effects.path());
    let mut runs = Vec::new();
    for _ in 0..30 {
        runs.push(api.trigger("fx-effect", json!({"ms": 300})).await);
    }
    wait_for("some runs to finish", || side_effects(effects.path()).len() >= 5).await;
    own_cluster(data.path(), "stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    own_cluster(data.path(), "start");
    // Work accepted after the restart runs too (a trigger during the outage is refused, and
    // retried by the client, not half-accepted).
    for _ in 0..10 {
        runs.push(api.trigger("fx-effect", json!({"ms": 100})).await);
    }
    let statuses = api.wait_finished(&runs, LIMIT).await;
    for (run, status) in runs.iter().zip(&statuses) {
        let events = api.events(run).await;
        assert_eq!(status, "COMPLETED", "run {run}: {events:#?}\n{}\n{}", engine.log(), worker.log());
        assert_eq!(events.iter().filter(|e| e["eventType"] == "FINISHED").count(), 1, "run {run}: {events:#?}");
    }
    drop(worker);
    drop(engine);
    own_cluster(data.path(), "stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_second_cron_with_two_engines_fires_each_tick_once_even_when_the_lease_holder_dies() {
    let python = tool_from_env("SFP_TEST_PYTHON");
    let db = FreshDatabase::create();
    let mut first = EngineProcess::start(&db.url);
    let second = EngineProcess::start(&db.url);
    let token = first.token();
    let api = EngineApi::new(&first.rest_url(), &token);
    let via_second = EngineApi::new(&second.rest_url(), &second.token());
    let effects = effects_dir();
    // The worker registers fx-quick (and runs the cron's runs) through the first engine.
    let _worker = PythonWorker::start(&python, &token, "w1", 5, effects.path());
    let workflows = format!("/api/v1/tenants/{}/workflows", api.tenant);
    let started = std::time::Instant::now();
    let cron = loop {
        let created = reqwest::Client::new()
            .post(format!("{}{workflows}/fx-quick/crons", second.rest_url()))
            .bearer_auth(second.token())
            .json(&json!({"cronName": "every-second", "cronExpression": "* * * * * *", "input": {}}))
            .send()
            .await
            .unwrap();
        if created.status().is_success() {
            break created.json::<serde_json::Value>().await.unwrap();
        }
        assert!(started.elapsed() < LIMIT, "could not create the cron: {}", created.status());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Kill whichever engine holds the scheduling lease; the other takes over.
    let holder_is_first = first.log().contains("holds the scheduling lease");
    let survivor = if holder_is_first {
        first.kill9();
        via_second.clone()
    } else {
        drop(second);
        api.clone()
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let id = cron["metadata"]["id"].as_str().unwrap();
    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/v1/tenants/{}/workflows/crons/{id}", survivor_url(&survivor), survivor.tenant))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    let listed = survivor
        .get(&format!("/api/v1/stable/tenants/{}/workflow-runs?limit=1000", survivor.tenant))
        .await
        .expect("run list");
    let mut ticks: Vec<String> = listed["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["additionalMetadata"]["hatchet__cron_tick"].as_str().map(str::to_owned))
        .collect();
    let fired = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), fired, "no tick fired twice: {ticks:?}");
    assert!(fired >= 8, "about ten seconds of ticks: {ticks:?}");
    let seconds: Vec<i64> = ticks.iter().map(|t| chrono_like_seconds(t)).collect();
    for pair in seconds.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "no tick missed across the takeover: {ticks:?}");
    }
}

fn survivor_url(api: &EngineApi) -> String {
    api.base().to_owned()
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (the ticks of one test are minutes
/// apart at most, so the date can be ignored unless the test straddles midnight).
fn chrono_like_seconds(t: &str) -> i64 {
    let time = &t[11..19];
    let parts: Vec<i64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600 + parts[1] * 60 + parts[2]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_python_task_is_timed_out_and_the_next_run_proceeds() {
    let python = tool_from_env("SFP_TEST_PYTHON");
    let db = FreshDatabase::create();
    let engine = EngineProcess::start(&db.url);
    let token = engine.token();
    let api = EngineApi::new(&engine.rest_url(), &token);
    let effects = effects_dir();
    // One slot: the next run can only start once the hung one gave it back.
    let worker = PythonWorker::start(&python, &token, "w1", 1, effects.path());
    let hung = api.trigger("fx-hang", json!({})).await;
    let next = api.trigger("fx-quick", json!({})).await;
    let statuses = api.wait_finished(&[hung.clone(), next.clone()], LIMIT).await;
    let events = api.events(&hung).await;
    assert_eq!(statuses, vec!["FAILED", "COMPLETED"], "{events:#?}\n{}", worker.log());
    let timed_out = events.iter().find(|e| e["eventType"] == "TIMED_OUT").expect("a TIMED_OUT event");
    assert!(timed_out["errorMessage"].as_str().unwrap().contains("timeout of 2s"), "{timed_out}");
    let result = api.get(&format!("/api/v1/stable/workflow-runs/{next}")).await.unwrap();
    assert_eq!(result["run"]["output"]["fx-quick"]["worker"], "w1", "{result}");
}
