//! Tasks end to end: the real `sfp-server start` (PostgreSQL, engine, API, workers) runs
//! tasks submitted over HTTP with the real sfp CLI (`@flxbl-io/sfp`, installed by
//! scripts/setup) on sfdx projects made here in local git repositories. No Salesforce org
//! is involved: source and data packages build without one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sfp_tests::sdk::{FreshDatabase, tool_from_env, workspace_binary};
use sfp_tests::tasks::{TasksApi, engine_access, engine_workers, entries, sfdx_project, wait_empty, wait_gone};
use sfp_tests::{RunningStack, data_dir};

const LIMIT: Duration = Duration::from_secs(180);

fn write_config(dir: &Path, database_url: &str, workers: &str) {
    let sfp = tool_from_env("SFP_TEST_SFP_BIN");
    let config = format!(
        "database_url = \"{database_url}\"\n\
         [tasks]\nallow_local_repositories = true\n\
         [engine]\nheartbeat_timeout_secs = 5\n\
         [workers]\nsfp_bin = \"{}\"\nwork_dir = \"{}\"\n{workers}\n",
        sfp.display(),
        dir.join("work").display()
    );
    std::fs::write(dir.join("sfp.toml"), config).unwrap();
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

async fn pause_worker(dir: &Path, name: &str, paused: bool) {
    let (base, _, token) = engine_access(dir);
    let workers = engine_workers(dir).await;
    let id = workers
        .iter()
        .find(|w| w["name"] == name && w["status"] != "INACTIVE")
        .unwrap_or_else(|| panic!("no live worker {name}: {workers:?}"))["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = reqwest::Client::new()
        .patch(format!("{base}/api/v1/workers/{id}"))
        .bearer_auth(&token)
        .json(&json!({"isPaused": paused}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "pausing {name}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_the_sfp_cli_on_the_embedded_workers() {
    let db = FreshDatabase::create();
    let dir = data_dir();
    write_config(dir.path(), &db.url, "standard_slots = 2\nlong_running_slots = 1");
    let repos = tempfile::tempdir().unwrap();
    let small = repos.path().join("small");
    sfdx_project(&small, 1, true);
    let big = repos.path().join("big");
    sfdx_project(&big, 120, false);
    let stack = RunningStack::start(&workspace_binary("sfp-server"), dir.path(), &[]);
    assert!(stack.stdout.iter().any(|l| l.starts_with("workers: 1 standard, 1 long-running")), "{:?}", stack.stdout);
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;
    let work = dir.path().join("work");

    // Bad input: a 400 naming what is wrong, and nothing recorded.
    for (body, needle) in [
        (json!({"type": "deploy", "data": {}}), "type: unknown task type \"deploy\""),
        (json!({"type": "build", "data": {}}), "missing field `repository`"),
        (json!({"type": "build", "data": {"repository": file_url(&small), "buildNumber": "7"}}), "data.buildNumber"),
        (json!({"type": "sfp", "data": {"args": ["plugins", "install", "x"]}}), "data.args"),
        (json!({"type": "build", "data": {"repository": file_url(&small)}, "priority": "urgent"}), "priority"),
        (
            json!({"type": "build", "data": {"repository": file_url(&small)}, "timeoutSeconds": 999_999}),
            "timeoutSeconds",
        ),
        (
            json!({"type": "build", "data": {"repository": file_url(&small)}, "scheduleType": "recurring"}),
            "recurrenceConfig",
        ),
    ] {
        let (status, answer) = api.submit(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "invalid_task");
        assert!(answer["message"].as_str().unwrap().contains(needle), "{body}: {answer}");
    }
    assert_eq!(api.get("/tasks").await.1["tasks"], json!([]));

    // An allow-listed sfp command on the standard pool.
    let version = api.submit_ok(json!({"type": "sfp", "data": {"args": ["--version"]}, "priority": "critical"})).await;
    let done = api.wait_for(&version, &["completed", "failed"], LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, result) = api.get(&format!("/tasks/{version}/result")).await;
    let tail = result["result"]["outputTail"].to_string();
    assert!(tail.contains("@flxbl-io/sfp/39.2.2"), "{result}");

    // A build of source and data packages, with its artifacts in the result.
    let build =
        api.submit_ok(json!({"type": "build", "data": {"repository": file_url(&small), "buildNumber": 7}})).await;
    let done = api.wait_for(&build, &["completed", "failed"], LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    let (_, result) = api.get(&format!("/tasks/{build}/result")).await;
    let artifacts = result["result"]["artifacts"].as_array().expect("artifacts").clone();
    let names: Vec<(&str, &str)> =
        artifacts.iter().map(|a| (a["name"].as_str().unwrap(), a["version"].as_str().unwrap())).collect();
    assert_eq!(names, vec![("core", "1.0.0-7"), ("seed-data", "1.0.0-7")], "{result}");
    assert!(
        artifacts.iter().all(|a| a["sizeBytes"].as_u64().unwrap() > 0 && a["sha256"].as_str().unwrap().len() == 64)
    );
    let lines = api.log_lines(&build).await;
    assert!(lines.iter().any(|l| l.contains("artifacts created")), "the sfp output is in the task's log: {lines:?}");
    assert_eq!(entries(&work), Vec::<String>::new(), "the step's folder is gone after success");

    // A critical task overtakes batch tasks queued before it.
    pause_worker(dir.path(), "embedded-long-running-1", true).await;
    let mut batch = Vec::new();
    for n in 0..3 {
        batch.push(
            api.submit_ok(json!({"type": "build", "data": {"repository": file_url(&small), "buildNumber": 10 + n}, "priority": "batch"}))
                .await,
        );
    }
    let critical = api
        .submit_ok(json!({"type": "build", "data": {"repository": file_url(&small), "buildNumber": 20}, "priority": "critical"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in batch.iter().chain([&critical]) {
        assert_eq!(api.status(id).await["status"], "pending", "nothing runs while the pool is paused");
    }
    pause_worker(dir.path(), "embedded-long-running-1", false).await;
    let mut started = Vec::new();
    for id in batch.iter().chain([&critical]) {
        let s = api.wait_for(id, &["completed", "failed"], LIMIT).await;
        assert_eq!(s["status"], "completed", "{s}");
        started.push((s["startedAt"].as_str().unwrap().to_string(), id.clone()));
    }
    started.sort();
    assert_eq!(&started[0].1, &critical, "the critical task ran first: {started:?}");

    // Cancel kills the sfp process and clears the folder.
    let long = api.submit_ok(json!({"type": "build", "data": {"repository": file_url(&big)}})).await;
    let pid = api.wait_for_sfp_pid(&long, LIMIT).await;
    api.wait_for(&long, &["active"], LIMIT).await;
    let (status, answer) = api.delete(&format!("/tasks/{long}")).await;
    assert_eq!(status, 200, "{answer}");
    let s = api.wait_for(&long, &["cancelled"], LIMIT).await;
    assert!(wait_gone(pid, Duration::from_secs(15)).await, "the sfp process {pid} was killed");
    assert!(wait_empty(&work, Duration::from_secs(15)).await, "the folder is gone after cancel: {:?}", entries(&work));
    let (_, result) = api.get(&format!("/tasks/{long}/result")).await;
    assert_eq!(result["result"], Value::Null, "a cancelled build has no result: {s}");
    let (status, answer) = api.delete(&format!("/tasks/{long}")).await;
    assert_eq!(status, 409, "a finished task cannot be cancelled again: {answer}");

    // A step past its timeout is killed and reported as such.
    let slow =
        api.submit_ok(json!({"type": "build", "data": {"repository": file_url(&big)}, "timeoutSeconds": 4})).await;
    let pid = api.wait_for_sfp_pid(&slow, LIMIT).await;
    let s = api.wait_for(&slow, &["completed", "failed"], LIMIT).await;
    assert_eq!(s["status"], "failed", "{s}");
    let message = s["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("exceeded its timeout of 4 s"), "{s}");
    assert!(wait_gone(pid, Duration::from_secs(15)).await, "the timed-out sfp process {pid} was killed");
    assert!(
        wait_empty(&work, Duration::from_secs(15)).await,
        "the folder is gone after a timeout: {:?}",
        entries(&work)
    );

    let listed = api.get("/tasks?status=completed&limit=100").await.1;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 6, "{listed}");

    // Operators see the tasks on /metrics.
    let metrics = reqwest::get(format!("{}/metrics", stack.url)).await.unwrap().text().await.unwrap();
    for needle in [
        "sfp_tasks{type=\"build\",status=\"completed\"} 5",
        "sfp_tasks{type=\"build\",status=\"cancelled\"} 1",
        "sfp_tasks_queued{priority=\"critical\"} 0",
        "sfp_task_duration_seconds_count{type=\"build\",outcome=\"completed\"} 5",
    ] {
        assert!(metrics.contains(needle), "{needle} in:\n{metrics}");
    }
    drop(stack);
}

struct Worker(Child);

impl Worker {
    fn start(dir: &Path, work: &Path, name: &str) -> Worker {
        let child = Command::new(workspace_binary("sfp-worker"))
            .args([
                "--pool",
                "long-running",
                "--slots",
                "1",
                "--tls",
                "none",
                "--allow-local-repositories",
                "--name",
                name,
            ])
            .arg("--token-file")
            .arg(dir.join("engine-token"))
            .arg("--sfp-bin")
            .arg(tool_from_env("SFP_TEST_SFP_BIN"))
            .arg("--work-dir")
            .arg(work)
            .env_remove("HATCHET_CLIENT_TOKEN")
            .env("SFP_WORKER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sfp-worker");
        Worker(child)
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) state ppid ...; comm may hold spaces, so read after the last ')'.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_leaves_the_task_to_another_worker() {
    let db = FreshDatabase::create();
    let dir = data_dir();
    write_config(dir.path(), &db.url, "standard = 0\nlong_running = 0");
    let repos = tempfile::tempdir().unwrap();
    let big = repos.path().join("big");
    sfdx_project(&big, 120, false);
    let stack = RunningStack::start(&workspace_binary("sfp-server"), dir.path(), &[]);
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;
    let work: PathBuf = dir.path().join("shared-work");
    let mut workers = vec![Worker::start(dir.path(), &work, "first"), Worker::start(dir.path(), &work, "second")];

    let id = api.submit_ok(json!({"type": "build", "data": {"repository": file_url(&big), "buildNumber": 3}})).await;
    let sfp = api.wait_for_sfp_pid(&id, LIMIT).await;
    let holder = parent_of(sfp);
    let index = workers
        .iter()
        .position(|w| w.pid() == holder)
        .unwrap_or_else(|| panic!("sfp {sfp} runs under a worker (parent {holder})"));
    let victim = workers.remove(index);
    kill(Pid::from_raw(victim.pid()), Signal::SIGKILL).unwrap();
    drop(victim);
    assert!(wait_gone(sfp, Duration::from_secs(10)).await, "the killed worker's sfp process died with it");

    let done = api.wait_for(&id, &["completed", "failed"], LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, result) = api.get(&format!("/tasks/{id}/result")).await;
    assert_eq!(result["result"]["artifacts"].as_array().map(Vec::len), Some(120), "the other worker built it all");
    let lines = api.log_lines(&id).await;
    let sfp_starts = lines.iter().filter(|l| l.starts_with("started sfp")).count();
    assert!(sfp_starts >= 1, "{lines:?}");
    // The surviving worker sweeps the dead one's folder (every 30 s).
    assert!(wait_empty(&work, Duration::from_secs(60)).await, "left: {:?}", entries(&work));
    drop(workers);
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_and_recurring_tasks_run_when_due_and_stop_when_told() {
    let db = FreshDatabase::create();
    let dir = data_dir();
    write_config(dir.path(), &db.url, "standard_slots = 2\nlong_running = 0\n[registry]\nembedded = false");
    let stack = RunningStack::start(&workspace_binary("sfp-server"), dir.path(), &[]);
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;

    // A one-off run a few seconds from now: pending until then.
    let due = chrono::Utc::now() + chrono::Duration::seconds(4);
    let scheduled = api
        .submit_ok(
            json!({"type": "sfp", "data": {"args": ["--version"]}, "scheduleType": "scheduled", "scheduledFor": due}),
        )
        .await;
    assert_eq!(api.status(&scheduled).await["status"], "pending");
    let done = api.wait_for(&scheduled, &["completed", "failed"], LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    let started: chrono::DateTime<chrono::Utc> = done["startedAt"].as_str().unwrap().parse().unwrap();
    assert!(started >= due, "it did not start before it was due: {done}");
    let (status, bad) =
        api.submit(json!({"type": "sfp", "data": {"args": ["--version"]}, "scheduleType": "scheduled"})).await;
    assert_eq!((status, bad["message"].as_str()), (400, Some("scheduledFor: required when scheduleType is scheduled")));

    // A cron every five seconds: instances pile up until stop-recurring, then no new ones.
    let recurring = api
        .submit_ok(json!({"type": "sfp", "data": {"args": ["--version"]}, "scheduleType": "recurring",
                          "recurrenceConfig": {"cron": "*/5 * * * * *"}}))
        .await;
    let deadline = std::time::Instant::now() + LIMIT;
    let instances = loop {
        let (_, body) = api.get(&format!("/tasks/{recurring}/recurring-instances")).await;
        let finished = body["instances"].as_array().unwrap().iter().filter(|i| i["status"] == "completed").count();
        if finished >= 2 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "two instances never completed: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(instances["active"], true);
    let (status, answer) = api.post(&format!("/tasks/{recurring}/stop-recurring"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    // Let anything already started finish, then the count must stay put.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let count = |b: &Value| b["instances"].as_array().unwrap().len();
    let (_, before) = api.get(&format!("/tasks/{recurring}/recurring-instances")).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (_, after) = api.get(&format!("/tasks/{recurring}/recurring-instances")).await;
    assert_eq!(after["active"], false);
    assert_eq!(count(&after), count(&before), "no new instance after stop-recurring: {after}");
    let (status, answer) = api.post(&format!("/tasks/{scheduled}/stop-recurring"), json!({})).await;
    assert_eq!(status, 400, "only recurring tasks stop recurring: {answer}");
    drop(stack);
}
