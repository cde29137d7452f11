//! Just-in-time credentials end to end: the real `sfp-server start` with a local Salesforce
//! stand-in. A worker gets a step token only for a step the engine reports running, exchanges
//! it once, and its access tokens are revoked when the step ends. Then a real `sfp-worker`
//! runs `sfp install` with the real sfp CLI against the stand-in, logged in to the task's org
//! and no other, up to the point where a real org would deploy metadata. Nothing the run
//! wrote (server log, worker log, step logs, API answers) contains a secret.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sfp_protocol::client::{ClientConfig, HatchetClient, TlsStrategy};
use sfp_protocol::pb;
use sfp_tests::doubles::salesforce::{Org, Salesforce};
use sfp_tests::sdk::{FreshDatabase, tool_from_env, workspace_binary};
use sfp_tests::tasks::{TasksApi, entries, sfdx_project, wait_empty};
use sfp_tests::{RunningStack, data_dir};

fn write_config(dir: &Path, database_url: &str, salesforce: &str) {
    let sfp = tool_from_env("SFP_TEST_SFP_BIN");
    let config = format!(
        "database_url = \"{database_url}\"\n\
         [tasks]\nallow_local_repositories = true\n\
         [engine]\nheartbeat_timeout_secs = 30\n\
         [workers]\nstandard = 0\nlong_running = 0\nsfp_bin = \"{}\"\n\
         [vault]\nstep_token_ttl_secs = 5\n\
         [salesforce]\nbase_url = \"{salesforce}\"\n",
        sfp.display()
    );
    std::fs::write(dir.join("sfp.toml"), config).unwrap();
}

/// Every answer of the API the test saw, for the leak check.
struct Api {
    inner: TasksApi,
    http: reqwest::Client,
    seen: Vec<String>,
}

impl Api {
    async fn call(&mut self, method: &str, path: &str, bearer: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method.parse().unwrap(), format!("{}{path}", self.inner.url)).bearer_auth(bearer);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let response = r.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        // The two answers that exist to carry a secret.
        let carries_secret = path.ends_with("/exchange")
            || (method == "POST" && (path == "/sfp/api/worker-tokens" || path == "/sfp/api/workers/step-token"));
        if !carries_secret {
            self.seen.push(format!("{method} {path} -> {status} {text}"));
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A stand-in worker speaking the Hatchet protocol itself, to hold an assignment open.
async fn take_assignment(client: &HatchetClient) -> (String, pb::AssignedAction) {
    let registered = client
        .dispatcher()
        .register(pb::WorkerRegisterRequest {
            worker_name: "test-worker".into(),
            actions: vec!["sfp-install:run".into()],
            services: vec!["default".into()],
            slots: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let worker_id = registered.worker_id.clone();
    let beat = client.clone();
    let id = worker_id.clone();
    tokio::spawn(async move {
        loop {
            let _ = beat
                .dispatcher()
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: id.clone(),
                    heartbeat_at: Some(sfp_protocol::client::now()),
                })
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let mut stream = client
        .dispatcher()
        .listen_v2(pb::WorkerListenRequest { worker_id: worker_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let action =
        tokio::time::timeout(Duration::from_secs(60), stream.message()).await.expect("an assignment").unwrap().unwrap();
    // STARTED, or the engine hands the step to another worker after its start timeout.
    client
        .dispatcher()
        .send_step_action_event(pb::StepActionEvent {
            worker_id: worker_id.clone(),
            job_id: action.job_id.clone(),
            job_run_id: action.job_run_id.clone(),
            task_id: action.task_id.clone(),
            task_run_external_id: action.task_run_external_id.clone(),
            action_id: action.action_id.clone(),
            event_timestamp: Some(sfp_protocol::client::now()),
            event_type: pb::StepActionEventType::StepEventTypeStarted as i32,
            event_payload: String::new(),
            retry_count: Some(action.retry_count),
            should_not_retry: None,
            retry_after_ms: None,
        })
        .await
        .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    (worker_id, action)
}

struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_get_their_orgs_credentials_just_in_time_and_nothing_leaks() {
    let qa = Org::new("qa@acme.com", true);
    let other = Org::new("other@acme.com", false);
    let sf = Salesforce::start(vec![qa.clone(), other.clone()]).await;
    let db = FreshDatabase::create();
    let dir = data_dir();
    write_config(dir.path(), &db.url, &sf.url);
    let stack = RunningStack::start(&workspace_binary("sfp-server"), dir.path(), &[]);
    let mut api =
        Api { inner: TasksApi::sign_in(&stack.url, dir.path()).await, http: reqwest::Client::new(), seen: Vec::new() };
    let admin = api.inner.token().to_string();

    for org in [&qa, &other] {
        let (status, body) = api
            .call("POST", "/sfp/api/auth/salesforce/register", &admin, Some(json!({"sfdxAuthUrl": org.auth_url()})))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, created) =
        api.call("POST", "/sfp/api/worker-tokens", &admin, Some(json!({"name": "test", "expiresIn": 1}))).await;
    assert_eq!(status, 201);
    let worker_token = created["token"].as_str().unwrap().to_string();

    let repo = dir.path().join("repo");
    sfdx_project(&repo, 1, false);
    let repository = format!("file://{}", repo.display());

    // 1. A step token, by the rules, with a protocol-level stand-in worker holding the step.
    let (status, task) = api
        .call(
            "POST",
            "/sfp/api/tasks",
            &admin,
            Some(json!({"type": "install", "priority": "normal", "scheduleType": "immediate",
            "retryConfig": {"maxRetries": 1}, "data": {"repository": repository, "targetOrg": "qa@acme.com"}})),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let task_id = task["operationId"].as_str().unwrap().to_string();
    let engine_token = std::fs::read_to_string(dir.path().join("engine-token")).unwrap();
    let client = HatchetClient::new(&ClientConfig {
        token: engine_token.trim().to_string(),
        grpc_address: None,
        server_url: None,
        tls: TlsStrategy::None,
    })
    .unwrap();
    let (_, action) = take_assignment(&client).await;
    assert!(!action.action_payload.contains(&qa.refresh_token), "the run input holds no credential");
    let step = json!({"taskId": task_id, "runId": action.workflow_run_id, "stepRunId": action.task_run_external_id,
                      "attempt": action.retry_count});
    let path = "/sfp/api/workers/step-token";
    let (status, _) = api.call("POST", path, &admin, Some(step.clone())).await;
    assert_eq!(status, 401, "a user's token is no worker token");
    let mut wrong = step.clone();
    wrong["stepRunId"] = json!(uuid::Uuid::new_v4());
    let (status, body) = api.call("POST", path, &worker_token, Some(wrong)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("step_not_running")), "{body}");

    let (status, issued) = api.call("POST", path, &worker_token, Some(step.clone())).await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["credentials"], json!([{"alias": "target", "username": "qa@acme.com"}]));
    let step_token = issued["token"].as_str().unwrap().to_string();
    let (status, body) = api.call("POST", path, &worker_token, Some(step.clone())).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("step_token_issued")), "once per attempt");
    // Not exchanged within its 5 seconds: expired.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, body) = api.call("POST", "/sfp/api/workers/step-token/exchange", &step_token, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("step_token_expired")));

    let mut retry = step.clone();
    retry["attempt"] = json!(1);
    let (status, issued) = api.call("POST", path, &worker_token, Some(retry)).await;
    assert_eq!(status, 201, "{issued}");
    let step_token = issued["token"].as_str().unwrap().to_string();
    let (status, creds) = api.call("POST", "/sfp/api/workers/step-token/exchange", &step_token, None).await;
    assert_eq!(status, 200, "{creds}");
    let orgs = creds["orgs"].as_array().unwrap();
    assert_eq!(orgs.len(), 1, "the task's org and no other: {creds}");
    assert_eq!((orgs[0]["alias"].as_str(), orgs[0]["username"].as_str()), (Some("target"), Some("qa@acme.com")));
    let access = orgs[0]["accessToken"].as_str().unwrap().to_string();
    assert_eq!(sf.sessions().get(&access).map(String::as_str), Some("qa@acme.com"));
    assert!(!creds.to_string().contains(&qa.refresh_token), "access tokens only, never the refresh token");
    let (status, body) = api.call("POST", "/sfp/api/workers/step-token/exchange", &step_token, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("step_token_used")), "a token is exchanged once");
    let (status, body) = api.call("POST", "/sfp/api/workers/step-token/release", &step_token, None).await;
    assert_eq!((status, body["revoked"].as_i64()), (200, Some(1)), "{body}");
    assert!(sf.revoked().contains(&access), "the step's access token is revoked at Salesforce");
    let (status, _) = api.call("DELETE", &format!("/sfp/api/tasks/{task_id}"), &admin, None).await;
    assert_eq!(status, 200);
    api.inner.wait_for(&task_id, &["cancelled"], Duration::from_secs(60)).await;
    let mut later = step.clone();
    later["attempt"] = json!(2);
    let (status, body) = api.call("POST", path, &worker_token, Some(later)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("step_not_running")), "no token for a cancelled step");
    drop(client);

    // 2. The real sfp CLI, on a real sfp-worker that fetches its credentials itself.
    let token_file = dir.path().join("worker-token");
    std::fs::write(&token_file, &worker_token).unwrap();
    let work = dir.path().join("remote-work");
    let worker_log = dir.path().join("worker.log");
    let child = Command::new(workspace_binary("sfp-worker"))
        .args(["--pool", "long-running", "--slots", "1", "--tls", "none", "--allow-local-repositories"])
        .arg("--token-file")
        .arg(dir.path().join("engine-token"))
        .arg("--sfp-bin")
        .arg(tool_from_env("SFP_TEST_SFP_BIN"))
        .arg("--work-dir")
        .arg(&work)
        .args(["--control-plane-url", &stack.url])
        .arg("--control-plane-token-file")
        .arg(&token_file)
        .env_remove("HATCHET_CLIENT_TOKEN")
        .env("SFP_WORKER_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&worker_log).unwrap())
        .spawn()
        .expect("sfp-worker");
    let _worker = WorkerProcess(child);
    let before = sf.seen().len();
    let (status, task) = api
        .call(
            "POST",
            "/sfp/api/tasks",
            &admin,
            Some(json!({"type": "install", "priority": "normal", "scheduleType": "immediate",
            "timeoutSeconds": 200, "data": {"repository": repository, "targetOrg": "qa@acme.com"}})),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["operationId"].as_str().unwrap().to_string();
    let end = api.inner.wait_for(&id, &["completed", "failed"], Duration::from_secs(300)).await;
    let logs = api.inner.log_lines(&id).await;
    let (_, result) = api.call("GET", &format!("/sfp/api/tasks/{id}/result"), &admin, None).await;

    let seen: Vec<_> = sf.seen().into_iter().skip(before).collect();
    let sessions = sf.sessions();
    let used: Vec<&String> =
        seen.iter().filter(|s| s.path.starts_with("/services/data")).filter_map(|s| s.bearer.as_ref()).collect();
    let wlog = std::fs::read_to_string(&worker_log).unwrap_or_default();
    assert!(!used.is_empty(), "sfp install reached the org: {end} {logs:#?}\n{wlog}");
    for token in &used {
        assert_eq!(sessions.get(*token).map(String::as_str), Some("qa@acme.com"), "only the task's org is used");
    }
    assert!(
        logs.iter().any(|l| l.contains("logged in to target as qa@acme.com")),
        "the step logged the login: {logs:#?}"
    );
    let message = end["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sfp install") || message.contains("sfp build") || end["status"] == "completed",
        "the step went past the credentials to sfp itself: {end}"
    );
    for token in &used {
        assert!(sf.revoked().contains(*token), "the step's session is revoked when it ends");
    }
    println!("the install ended at the boundary: {message}");
    for s in &seen {
        println!("  sfp called {} {}", s.method, s.path.chars().take(160).collect::<String>());
    }
    assert!(wait_empty(&work, Duration::from_secs(30)).await, "the step's folder is gone: {:?}", entries(&work));

    // A pipeline's install step logs in the same way.
    let yaml = format!(
        "name: release\nsteps:\n\x20 - id: deploy-qa\n    type: install\n    timeoutSeconds: 200\n    \
         data: {{repository: \"{repository}\", targetOrg: \"qa@acme.com\"}}\n"
    );
    let (status, defined) = api.call("POST", "/sfp/api/pipelines", &admin, Some(json!({"yaml": yaml}))).await;
    assert_eq!(status, 201, "{defined}");
    let before = sf.seen().len();
    let (status, started) = api.call("POST", "/sfp/api/pipelines/release/runs", &admin, Some(json!({}))).await;
    assert_eq!(status, 201, "{started}");
    let run = started["runId"].as_str().unwrap().to_string();
    let mut finished = Value::Null;
    for _ in 0..300 {
        let (_, body) = api.call("GET", &format!("/sfp/api/pipelines/runs/{run}"), &admin, None).await;
        if body["status"] == "completed" || body["status"] == "failed" {
            finished = body;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let step_error = finished["steps"]["deploy-qa"]["error"].as_str().unwrap_or_default().to_string();
    assert!(step_error.contains("sfp install"), "the pipeline step reached sfp install: {finished}");
    let sessions = sf.sessions();
    let pipeline_used: Vec<String> = sf
        .seen()
        .into_iter()
        .skip(before)
        .filter(|s| s.path.starts_with("/services/data"))
        .filter_map(|s| s.bearer)
        .collect();
    assert!(!pipeline_used.is_empty(), "the pipeline step reached the org");
    for token in &pipeline_used {
        assert_eq!(sessions.get(token).map(String::as_str), Some("qa@acme.com"));
        assert!(sf.revoked().contains(token), "revoked when the pipeline step ended");
    }

    // 3. Rotation needs the instance's key file; without one it says so.
    let elsewhere = data_dir();
    let refused = Command::new(workspace_binary("sfp-server"))
        .args(["secrets", "rotate", "--data-dir"])
        .arg(elsewhere.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no key file at"), "{refused:?}");
    // The keys rotate while the server runs; every org stays usable.
    let rotated = Command::new(workspace_binary("sfp-server"))
        .args(["secrets", "rotate", "--retire", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let report: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert!(report["rewrapped"].as_u64().unwrap() >= 2, "{report}");
    for org in ["qa@acme.com", "other@acme.com"] {
        let (status, body) =
            api.call("POST", "/sfp/api/auth/salesforce/test-connection", &admin, Some(json!({"username": org}))).await;
        assert_eq!((status, body["success"].as_bool()), (200, Some(true)), "after rotation: {body}");
    }

    // 4. Nothing written anywhere holds a secret.
    let mut secrets = sf.secrets();
    secrets.push(worker_token.clone());
    secrets.push(step_token.clone());
    let mut texts = api.seen.clone();
    texts.extend(logs.clone());
    texts.push(result.to_string());
    texts.push(std::fs::read_to_string(&worker_log).unwrap_or_default());
    let output = stack.stop_with(Signal::SIGTERM);
    texts.extend(output.stdout);
    for f in walk(&dir.path().join("logs")) {
        texts.push(std::fs::read_to_string(f).unwrap_or_default());
    }
    for text in &texts {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a secret was written: {}", &text[..text.len().min(2000)]);
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}
