//! The engine and its workers as real processes, for the failure tests: `sfp-engine serve`
//! on fixed ports (so a restarted engine is where workers left it), Python SDK workers, and
//! the engine's REST API to trigger and watch runs.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::sdk::workspace_binary;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// How long a process may take to come up before the test gives up (bounds a hang).
const START_LIMIT: Duration = Duration::from_secs(60);

/// `sfp-engine serve` as a child process.
pub struct EngineProcess {
    child: Option<Child>,
    /// Extra environment (engine settings such as SFP_ENGINE_HEARTBEAT_TIMEOUT).
    env: Vec<(String, String)>,
    database_url: String,
    pub grpc_port: u16,
    pub api_port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl EngineProcess {
    pub fn start(database_url: &str) -> EngineProcess {
        Self::start_with(database_url, &[])
    }

    pub fn start_with(database_url: &str, env: &[(&str, &str)]) -> EngineProcess {
        let dir = tempfile::tempdir().expect("log folder");
        let mut engine = EngineProcess {
            child: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            database_url: database_url.to_owned(),
            grpc_port: free_port(),
            api_port: free_port(),
            log: dir.path().join("engine.log"),
            _log_dir: dir,
        };
        engine.spawn();
        engine
    }

    /// Starts the engine again on the same ports and database.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the engine is still running");
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("engine log");
        let child = Command::new(workspace_binary("sfp-engine"))
            .args(["serve", "--database-url", &self.database_url])
            .args(["--grpc-port", &self.grpc_port.to_string(), "--api-port", &self.api_port.to_string()])
            .env("RUST_LOG", std::env::var("SFP_TEST_ENGINE_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sfp-engine");
        self.child = Some(child);
        let started = Instant::now();
        while !(port_open(self.grpc_port) && port_open(self.api_port)) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("sfp-engine exited at start ({status}):\n{}", self.log());
            }
            assert!(started.elapsed() < START_LIMIT, "sfp-engine did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the engine with SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn grpc_address(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// A tenant token for this engine's address (`sfp-engine token create`).
    pub fn token(&self) -> String {
        let out = Command::new(workspace_binary("sfp-engine"))
            .args(["token", "create", "--database-url", &self.database_url])
            .args(["--grpc-address", &self.grpc_address(), "--server-url", &self.rest_url(), "--days", "1"])
            .output()
            .expect("sfp-engine token create");
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("token").trim().to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        if let Some(mut child) = self.child.take() {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A Python SDK worker (tests/hatchet/python/failure_worker.py) as a child process.
pub struct PythonWorker {
    child: Option<Child>,
    pub name: String,
    log: PathBuf,
}

impl PythonWorker {
    pub fn start(python: &Path, token: &str, name: &str, slots: u32, effects: &Path) -> PythonWorker {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hatchet/python/failure_worker.py");
        let log = effects.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("worker log");
        // Its own process group: the SDK runs its listener in a child process, and killing
        // the worker must kill that too, as when a machine or container dies.
        let child = Command::new(python)
            .process_group(0)
            .arg(script)
            .env("HATCHET_CLIENT_TOKEN", token)
            .env("HATCHET_CLIENT_TLS_STRATEGY", "none")
            .env("PYTHONUNBUFFERED", "1")
            .env("SFP_WORKER_NAME", name)
            .env("SFP_WORKER_SLOTS", slots.to_string())
            .env("SFP_EFFECTS_DIR", effects)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start the Python worker");
        PythonWorker { child: Some(child), name: name.to_owned(), log }
    }

    /// SIGKILL to the worker and every process it started.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The engine's REST API with a tenant token.
#[derive(Clone)]
pub struct EngineApi {
    base: String,
    token: String,
    pub tenant: String,
    client: reqwest::Client,
}

impl EngineApi {
    pub fn new(base: &str, token: &str) -> EngineApi {
        let claims = token.split('.').nth(1).expect("a JWT");
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).expect("base64 claims"),
        )
        .expect("JSON claims");
        EngineApi {
            base: base.to_owned(),
            token: token.to_owned(),
            tenant: claims["sub"].as_str().expect("sub").to_owned(),
            client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A GET answered with 200, as JSON; `None` when the engine cannot be reached or
    /// answers otherwise (it may be restarting).
    pub async fn get(&self, path: &str) -> Option<Value> {
        let response = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Triggers a run, retrying while the workflow is not registered yet or the engine is
    /// briefly unreachable; returns the run id.
    pub async fn trigger(&self, workflow: &str, input: Value) -> String {
        let url = format!("{}/api/v1/stable/tenants/{}/workflow-runs/trigger", self.base, self.tenant);
        let started = Instant::now();
        loop {
            let sent = self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .json(&json!({"workflowName": workflow, "input": input}))
                .send()
                .await;
            if let Ok(response) = sent {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or_default();
                if status.is_success() {
                    return body["run"]["metadata"]["id"].as_str().expect("run id").to_owned();
                }
                assert!(status.as_u16() == 404 || status.is_server_error(), "trigger {workflow}: {status} {body}");
            }
            assert!(started.elapsed() < START_LIMIT, "could not trigger {workflow}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The status of each run (`None` while the engine is unreachable).
    pub async fn statuses(&self, runs: &[String]) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            let status = self.get(&format!("/api/v1/stable/workflow-runs/{run}/status")).await?;
            out.push(status.as_str()?.to_owned());
        }
        Some(out)
    }

    /// Waits until every run has finished, or until `limit` has passed (then the statuses
    /// say which runs did not, for the test's assertions to show with their events).
    pub async fn wait_finished(&self, runs: &[String], limit: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let statuses = self.statuses(runs).await;
            if let Some(statuses) = &statuses
                && (started.elapsed() >= limit
                    || statuses.iter().all(|s| matches!(s.as_str(), "COMPLETED" | "FAILED" | "CANCELLED")))
            {
                return statuses.clone();
            }
            assert!(started.elapsed() < limit + Duration::from_secs(30), "the engine stayed unreachable");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every event of a run's tasks (Hatchet's V1TaskEvent rows).
    pub async fn events(&self, run: &str) -> Vec<Value> {
        let events = self.get(&format!("/api/v1/stable/workflow-runs/{run}/task-events")).await.expect("events");
        events["rows"].as_array().cloned().unwrap_or_default()
    }
}

/// The side effects the failure worker wrote: (run id, attempt, worker) per execution.
pub fn side_effects(effects: &Path) -> Vec<(String, u32, String)> {
    std::fs::read_to_string(effects.join("effects.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut parts = l.split(' ');
            let run = parts.next().unwrap_or_default().to_owned();
            let attempt = parts.next().and_then(|a| a.parse().ok()).unwrap_or(u32::MAX);
            (run, attempt, parts.next().unwrap_or_default().to_owned())
        })
        .collect()
}
