//! Support for the task tests: sfdx projects in local git repositories, and a client of
//! the tasks API of a running stack.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.email=test@example.com", "-c", "user.name=test"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const CLASS_META: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ApexClass xmlns="http://soap.sforce.com/2006/04/metadata"><apiVersion>60.0</apiVersion><status>Active</status></ApexClass>
"#;

/// Adds a file to the project's repository and commits it.
pub fn commit_file(dir: &Path, path: &str, contents: &str) {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, contents).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", &format!("add {path}")]);
}

/// A committed sfdx project on branch `main`: `source_packages` source packages with a few
/// Apex classes each and, if `with_data`, a data package (`seed-data`).
pub fn sfdx_project(dir: &Path, source_packages: usize, with_data: bool) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    let mut packages = Vec::new();
    for i in 0..source_packages {
        let name = if i == 0 { "core".to_string() } else { format!("pkg{i}") };
        let classes = dir.join(format!("src/{name}/main/default/classes"));
        std::fs::create_dir_all(&classes).unwrap();
        for j in 0..3 {
            let class = format!("C{i}x{j}");
            std::fs::write(classes.join(format!("{class}.cls")), format!("public with sharing class {class} {{ }}\n"))
                .unwrap();
            std::fs::write(classes.join(format!("{class}.cls-meta.xml")), CLASS_META).unwrap();
        }
        packages.push(
            json!({"path": format!("src/{name}"), "package": name, "versionNumber": "1.0.0.NEXT", "default": i == 0}),
        );
    }
    if with_data {
        let data = dir.join("data/seed");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            data.join("export.json"),
            r#"{"objects":[{"query":"SELECT Id, Name FROM Account","operation":"Upsert","externalId":"Name"}]}"#,
        )
        .unwrap();
        std::fs::write(data.join("Account.csv"), "Id,Name\n,Acme\n").unwrap();
        packages
            .push(json!({"path": "data/seed", "package": "seed-data", "type": "data", "versionNumber": "1.0.0.NEXT"}));
    }
    let project = json!({"packageDirectories": packages, "namespace": "", "sourceApiVersion": "60.0"});
    std::fs::write(dir.join("sfdx-project.json"), serde_json::to_string_pretty(&project).unwrap()).unwrap();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/project-scratch-def.json"), r#"{"orgName":"test","edition":"Developer"}"#).unwrap();
    std::fs::write(dir.join(".forceignore"), "**/jsconfig.json\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "the project"]);
}

/// The tasks API of a running stack, signed in as its administrator.
pub struct TasksApi {
    pub url: String,
    token: String,
    http: reqwest::Client,
}

impl TasksApi {
    pub async fn sign_in(url: &str, data_dir: &Path) -> TasksApi {
        let creds: Value =
            serde_json::from_slice(&std::fs::read(data_dir.join("admin-credentials.json")).unwrap()).unwrap();
        let http = reqwest::Client::new();
        let login: Value = http
            .post(format!("{url}/sfp/api/auth/admin/login"))
            .json(&json!({"email": creds["email"], "password": creds["password"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"].as_str().expect("an access token").to_string();
        TasksApi { url: url.to_string(), token, http }
    }

    /// `POST /sfp/api/tasks`: the status code and body.
    pub async fn submit(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/sfp/api/tasks", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Submits a task that must be accepted; returns its operation id.
    pub async fn submit_ok(&self, body: Value) -> String {
        let (status, answer) = self.submit(body.clone()).await;
        assert_eq!(status, 201, "{body} was refused: {answer}");
        answer["operationId"].as_str().unwrap().to_string()
    }

    /// `POST /sfp/api{path}` with a JSON body: the status code and body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/sfp/api{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}/sfp/api{path}", self.url)).bearer_auth(&self.token).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(format!("{}/sfp/api{path}", self.url)).bearer_auth(&self.token).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn status(&self, id: &str) -> Value {
        self.get(&format!("/tasks/{id}/status")).await.1
    }

    /// Waits for the task to reach one of `statuses`; panics with its last status after `limit`
    /// (a bound on a hang, not a speed check).
    pub async fn wait_for(&self, id: &str, statuses: &[&str], limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status(id).await;
            if statuses.contains(&status["status"].as_str().unwrap_or("")) {
                return status;
            }
            assert!(Instant::now() < deadline, "task {id} never reached {statuses:?}; last: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The task's log lines.
    pub async fn log_lines(&self, id: &str) -> Vec<String> {
        let (_, body) = self.get(&format!("/tasks/{id}/logs")).await;
        body["lines"]
            .as_array()
            .map(|l| l.iter().filter_map(|x| x["message"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// Waits until the step's log says it started the sfp CLI; returns that process's id.
    pub async fn wait_for_sfp_pid(&self, id: &str, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.log_lines(id).await;
            if let Some(pid) =
                lines.iter().find_map(|l| l.strip_prefix("started sfp (pid ")?.strip_suffix(')')?.parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "task {id} never started sfp; log: {lines:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The embedded engine of a stack's data folder: its REST base URL, tenant id and token.
pub fn engine_access(dir: &Path) -> (String, String, String) {
    use base64::Engine as _;
    let token = std::fs::read_to_string(dir.join("engine-token")).unwrap().trim().to_string();
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    (claims["server_url"].as_str().unwrap().to_string(), claims["sub"].as_str().unwrap().to_string(), token)
}

/// The engine's worker list of a stack (`rows` of Hatchet's worker REST).
pub async fn engine_workers(dir: &Path) -> Vec<Value> {
    let (base, tenant, token) = engine_access(dir);
    let workers: Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/tenants/{tenant}/worker"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    workers["rows"].as_array().cloned().unwrap_or_default()
}

/// Waits until `pid` is gone; false if it is still there after `limit`.
pub async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while crate::process::process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Entries of a folder (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Waits until a workers' folder has no step folders left.
pub async fn wait_empty(work: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !entries(work).is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}
