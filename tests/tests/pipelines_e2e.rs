//! Approval gates: a pipeline run waits at its approval step without holding a worker slot,
//! keeps waiting across an sfp-server restart, goes on when an owner approves and fails when
//! one rejects.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sfp_tests::sdk::{FreshDatabase, tool_from_env, workspace_binary};
use sfp_tests::tasks::{TasksApi, engine_workers, sfdx_project};
use sfp_tests::{RunningStack, data_dir};

/// Polls a run until `done` says so; returns the last status body.
async fn wait_until(api: &TasksApi, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, body) = api.get(&format!("/pipelines/runs/{run}")).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "the run never got to {what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Slots in use on the stack's worker pools (the approval worker is not one of them).
async fn pool_slots_used(dir: &Path) -> i64 {
    engine_workers(dir)
        .await
        .iter()
        .filter(|w| w["name"].as_str().unwrap_or("").starts_with("embedded-") && w["status"] == "ACTIVE")
        .map(|w| w["maxRuns"].as_i64().unwrap_or(0) - w["availableRuns"].as_i64().unwrap_or(0))
        .sum()
}

fn waiting(body: &Value) -> bool {
    body["steps"]["gate"]["approval"]["status"] == "waiting" && body["steps"]["gate"]["status"] == "active"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_gate_waits_without_a_slot_across_a_restart() {
    let db = FreshDatabase::create();
    let dir = data_dir();
    let config = format!(
        "database_url = \"{}\"\n[tasks]\nallow_local_repositories = true\n[engine]\nheartbeat_timeout_secs = 5\n\
         [workers]\nsfp_bin = \"{}\"\n[registry]\nembedded = false\n",
        db.url,
        tool_from_env("SFP_TEST_SFP_BIN").display()
    );
    std::fs::write(dir.path().join("sfp.toml"), config).unwrap();
    let repos = tempfile::tempdir().unwrap();
    let project = repos.path().join("project");
    sfdx_project(&project, 1, true);
    let repository = format!("file://{}", project.display());
    let yaml = format!(
        "name: gated\nsteps:\n\
         \x20 - id: build\n    type: quickbuild\n    data: {{repository: \"{repository}\"}}\n\
         \x20 - id: gate\n    type: approval\n    needs: [build]\n    timeoutSeconds: 600\n    data: {{message: \"Ship it?\"}}\n\
         \x20 - id: after\n    type: quickbuild\n    needs: [gate]\n    data: {{repository: \"{repository}\", buildNumber: 2}}\n"
    );
    let binary = workspace_binary("sfp-server");
    let stack = RunningStack::start(&binary, dir.path(), &[]);
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;
    let (status, defined) = api.post("/pipelines", json!({"yaml": yaml})).await;
    assert_eq!(status, 201, "{defined}");
    let (status, bad) =
        api.post("/pipelines", json!({"yaml": yaml.replace("timeoutSeconds: 600", "timeoutSeconds: 9999999")})).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["message"].as_str().unwrap().starts_with("steps[1].timeoutSeconds"), "{bad}");

    // A second gate with a short timeout: it must time out at the deadline set when it first
    // waited, although the restart below hands it to another server process.
    let short = yaml.replace("name: gated", "name: gated-short").replace("timeoutSeconds: 600", "timeoutSeconds: 45");
    let (status, defined) = api.post("/pipelines", json!({"yaml": short})).await;
    assert_eq!(status, 201, "{defined}");
    let (_, started) = api.post("/pipelines/gated-short/runs", json!({})).await;
    let short_run = started["runId"].as_str().unwrap().to_string();

    let (_, started) = api.post("/pipelines/gated/runs", json!({})).await;
    let run = started["runId"].as_str().unwrap().to_string();
    wait_until(&api, &short_run, "the short gate", waiting).await;
    let at_gate = wait_until(&api, &run, "the gate", waiting).await;
    assert_eq!(at_gate["steps"]["build"]["status"], "completed", "{at_gate}");
    assert_eq!(at_gate["steps"]["after"]["status"], "pending", "{at_gate}");
    assert_eq!(at_gate["steps"]["gate"]["approval"]["message"], "Ship it?");
    assert_eq!(pool_slots_used(dir.path()).await, 0, "the waiting gate holds no worker slot");

    // A restart of the whole stack: the run still waits, and the decision still lands.
    let output = stack.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(output.status.success(), "{:?}", output.stdout);
    let stack = RunningStack::start(&binary, dir.path(), &[]);
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;
    let still = wait_until(&api, &run, "the gate after the restart", waiting).await;
    assert_eq!(still["steps"]["after"]["status"], "pending", "{still}");
    let (status, decided) = api.post(&format!("/pipelines/runs/{run}/approve"), json!({"comment": "go"})).await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["steps"], json!(["gate"]));
    let done = wait_until(&api, &run, "the end", |b| b["status"] == "completed" || b["status"] == "failed").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["steps"]["gate"]["output"]["approved"], true, "{done}");
    assert_eq!(done["steps"]["after"]["status"], "completed", "{done}");
    let (status, again) = api.post(&format!("/pipelines/runs/{run}/approve"), json!({})).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("nothing_to_decide")), "{again}");

    // Nobody decided the short gate: it failed at its first deadline, from the server's own
    // record (the engine's timeout, restarted with the reassignment, would come later).
    let timed_out = wait_until(&api, &short_run, "the short gate's timeout", |b| b["status"] == "failed").await;
    assert_eq!(timed_out["steps"]["gate"]["approval"]["status"], "expired", "{timed_out}");
    let error = timed_out["steps"]["gate"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no decision before the approval's timeout"), "{timed_out}");
    assert_ne!(timed_out["steps"]["after"]["status"], "completed", "{timed_out}");
    let (status, late) = api.post(&format!("/pipelines/runs/{short_run}/approve"), json!({})).await;
    assert_eq!((status, late["code"].as_str()), (409, Some("nothing_to_decide")), "{late}");

    // A rejection fails the run there; the step after it never runs.
    let (_, started) = api.post("/pipelines/gated/runs", json!({})).await;
    let run = started["runId"].as_str().unwrap().to_string();
    wait_until(&api, &run, "the gate", waiting).await;
    let (status, _) = api.post(&format!("/pipelines/runs/{run}/reject"), json!({"comment": "not today"})).await;
    assert_eq!(status, 200);
    let done = wait_until(&api, &run, "the end", |b| {
        b["status"] == "completed" || b["status"] == "failed" || b["status"] == "cancelled"
    })
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["steps"]["gate"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("rejected by admin@sfp.local: not today"), "{done}");
    assert_ne!(done["steps"]["after"]["status"], "completed", "{done}");
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_replays_from_the_failed_step_only() {
    let db = FreshDatabase::create();
    let dir = data_dir();
    let config = format!(
        "database_url = \"{}\"\n[tasks]\nallow_local_repositories = true\n\
         [workers]\nsfp_bin = \"{}\"\n[registry]\nembedded = false\n",
        db.url,
        tool_from_env("SFP_TEST_SFP_BIN").display()
    );
    std::fs::write(dir.path().join("sfp.toml"), config).unwrap();
    let repos = tempfile::tempdir().unwrap();
    let project = repos.path().join("project");
    sfdx_project(&project, 1, true);
    let repository = format!("file://{}", project.display());
    // The second step builds a branch that does not exist yet: it fails until the branch is there.
    let yaml = format!(
        "name: two\nsteps:\n\
         \x20 - id: first\n    type: quickbuild\n    data: {{repository: \"{repository}\"}}\n\
         \x20 - id: second\n    type: quickbuild\n    needs: [first]\n    data: {{repository: \"{repository}\", branch: feature}}\n"
    );
    let stack = RunningStack::start(&workspace_binary("sfp-server"), dir.path(), &[]);
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;
    assert_eq!(api.post("/pipelines", json!({"yaml": yaml})).await.0, 201);
    let (_, started) = api.post("/pipelines/two/runs", json!({})).await;
    let run = started["runId"].as_str().unwrap().to_string();
    let failed =
        wait_until(&api, &run, "the end", |b| ["completed", "failed"].contains(&b["status"].as_str().unwrap_or("")))
            .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["steps"]["first"]["status"], "completed");
    assert!(failed["steps"]["second"]["error"].as_str().unwrap_or_default().contains("git clone"), "{failed}");
    let out = std::process::Command::new("git").args(["branch", "feature"]).current_dir(&project).output().unwrap();
    assert!(out.status.success());
    let (status, answer) = api.post(&format!("/pipelines/runs/{run}/replay"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replayedSteps"], 1, "only the failed step: {answer}");
    let done = wait_until(&api, &run, "the end", |b| b["status"] == "completed").await;
    assert_eq!(done["steps"]["second"]["status"], "completed", "{done}");
    assert_eq!(
        done["steps"]["first"]["output"], failed["steps"]["first"]["output"],
        "the completed step kept its output and did not run again"
    );
    let (status, answer) = api.post(&format!("/pipelines/runs/{run}/replay"), json!({})).await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("not_replayable")), "{answer}");
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_run_on_a_cron_until_the_schedule_is_deleted_and_on_events() {
    let db = FreshDatabase::create();
    let dir = data_dir();
    let config = format!(
        "database_url = \"{}\"\n[workers]\nlong_running = 0\nsfp_bin = \"{}\"\n[registry]\nembedded = false\n",
        db.url,
        tool_from_env("SFP_TEST_SFP_BIN").display()
    );
    std::fs::write(dir.path().join("sfp.toml"), config).unwrap();
    let stack = RunningStack::start(&workspace_binary("sfp-server"), dir.path(), &[]);
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;
    let yaml = "name: nightly\nsteps:\n  - id: version\n    type: sfp\n    data: {args: [\"--version\"]}\n";
    assert_eq!(api.post("/pipelines", json!({"yaml": yaml})).await.0, 201);
    let (status, bad) = api.post("/pipelines/nightly/schedules", json!({"cron": "every night"})).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["message"].as_str().unwrap().starts_with("cron: "), "{bad}");
    let (status, missing) = api.post("/pipelines/nope/schedules", json!({"cron": "0 2 * * *"})).await;
    assert_eq!(status, 404, "{missing}");

    // Every 4 seconds (6 fields: seconds first).
    let (status, schedule) = api.post("/pipelines/nightly/schedules", json!({"cron": "*/4 * * * * *"})).await;
    assert_eq!(status, 201, "{schedule}");
    let id = schedule["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let (_, listed) = api.get("/pipelines/nightly/schedules").await;
        let s = &listed["schedules"][0];
        if s["runs"].as_i64().unwrap_or(0) >= 2 {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "two scheduled runs never started: {listed}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(runs["lastError"].is_null(), "{runs}");
    let last = runs["lastRunId"].as_str().unwrap().to_string();
    let done = wait_until(&api, &last, "the scheduled run's end", |b| b["status"] == "completed").await;
    assert_eq!(done["steps"]["version"]["status"], "completed", "{done}");

    let (status, _) = api.delete(&format!("/pipelines/nightly/schedules/{id}")).await;
    assert_eq!(status, 204);
    let (_, listed) = api.get("/pipelines/nightly/schedules").await;
    assert_eq!(listed["schedules"].as_array().map(Vec::len), Some(0));
    let (status, _) = api.delete(&format!("/pipelines/nightly/schedules/{id}")).await;
    assert_eq!(status, 404);

    // An event starts every pipeline that listens to it, and is kept with its runs.
    let yaml = "name: on-request\non:\n  events: [release.requested]\nsteps:\n  - id: version\n    type: sfp\n    \
                data: {args: [\"--version\"]}\n";
    let (status, defined) = api.post("/pipelines", json!({"yaml": yaml})).await;
    assert_eq!(status, 201, "{defined}");
    let (status, bad) =
        api.post("/pipelines", json!({"yaml": yaml.replace("release.requested", "Release Requested")})).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["message"].as_str().unwrap().starts_with("on.events[0]"), "{bad}");
    let (status, event) =
        api.post("/pipeline-events", json!({"key": "release.requested", "payload": {"by": "test"}})).await;
    assert_eq!(status, 201, "{event}");
    let runs = event["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{event}");
    assert_eq!(runs[0]["pipeline"], "on-request");
    let run = runs[0]["runId"].as_str().unwrap().to_string();
    let done = wait_until(&api, &run, "the event's run", |b| b["status"] == "completed").await;
    assert_eq!(done["steps"]["version"]["status"], "completed", "{done}");
    let (status, none) = api.post("/pipeline-events", json!({"key": "nobody.listens"})).await;
    assert_eq!((status, none["runs"].as_array().map(Vec::len)), (201, Some(0)), "{none}");
    let (status, _) = api.post("/pipeline-events", json!({"key": "Bad Key"})).await;
    assert_eq!(status, 400);
    let big = "x".repeat(70 * 1024);
    let (status, body) =
        api.post("/pipeline-events", json!({"key": "release.requested", "payload": {"big": big}})).await;
    assert_eq!((status, body["message"].as_str()), (400, Some("payload: at most 64 KiB")), "nothing started for it");
    drop(stack);
}
