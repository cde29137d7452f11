//! The real `sfp-server` binary: first start, restart, stop from another shell, status,
//! crash recovery, and that nothing is left running afterwards.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;
use serde_json::Value;
use sfp_tests::{RunningStack, data_dir, process_alive, processes_mentioning};

const BIN: &str = env!("CARGO_BIN_EXE_sfp-server");

fn start(dir: &Path) -> RunningStack {
    RunningStack::start(Path::new(BIN), dir, &[])
}

fn health(url: &str) -> Value {
    get_json(&format!("{url}/sfp/api"))
}

fn postmaster_pid(dir: &Path) -> i32 {
    let text = std::fs::read_to_string(dir.join("postgres/data/postmaster.pid")).expect("postmaster.pid");
    text.lines().next().unwrap().trim().parse().unwrap()
}

fn sfp_server(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(BIN).args(args).arg("--data-dir").arg(dir).output().expect("run sfp-server")
}

fn assert_nothing_left(dir: &Path, postmaster: i32) {
    assert!(!process_alive(postmaster), "postmaster {postmaster} still running");
    assert!(!dir.join("postgres/data/postmaster.pid").exists(), "postmaster.pid left behind");
    let left = processes_mentioning(dir);
    assert!(left.is_empty(), "processes left running: {left:?}");
}

/// A GET from synchronous test code.
fn get_json(url: &str) -> Value {
    get_json_with(url, "")
}

/// A GET with a bearer token (none when empty) from synchronous test code.
fn get_json_with(url: &str, token: &str) -> Value {
    let (url, token) = (url.to_owned(), token.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut request = reqwest::Client::new().get(&url);
            if !token.is_empty() {
                request = request.bearer_auth(&token);
            }
            let response = request.send().await.expect("GET");
            assert!(response.status().is_success(), "GET {url}: {}", response.status());
            response.json::<Value>().await.expect("JSON")
        })
    })
    .join()
    .unwrap()
}

#[test]
fn first_start_initialises_and_restart_reuses_everything() {
    let dir = data_dir();
    let dir = dir.path();

    // First start: a new cluster, every migration, a generated admin login.
    let stack = start(dir);
    let printed = stack.stdout.join("\n");
    assert!(printed.contains("created a new cluster"), "{printed}");
    assert!(printed.contains("applied"), "{printed}");
    let ping = get_json(&format!("{}/sfp/api/ping", stack.url));
    assert_eq!(ping["message"], "pong");
    let first = health(&stack.url);
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["components"]["database"]["mode"], "embedded");
    let migrations = first["components"]["database"]["migrations"].as_u64().unwrap();
    assert_eq!(migrations, sfp_postgres::MIGRATOR.iter().count() as u64);
    let instance = first["components"]["database"]["instance_id"].clone();
    let engine = &first["components"]["engine"];
    assert_eq!(engine["status"], "up", "{first}");
    let engine_api = engine["api"].as_str().unwrap().to_owned();
    let token_path = dir.join("engine-token");
    assert_eq!(std::fs::metadata(&token_path).unwrap().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert_eq!(get_json_with(&format!("{engine_api}/api/v1/version"), &token)["version"], "v0.79.0");

    let creds_path = dir.join("admin-credentials.json");
    assert_eq!(std::fs::metadata(&creds_path).unwrap().mode() & 0o777, 0o600);
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    let password = creds["password"].as_str().unwrap().to_owned();
    assert!(password.len() >= 16);
    assert!(printed.contains(&password), "the first start prints the login");
    assert!(printed.contains(creds["email"].as_str().unwrap()));

    let postmaster = postmaster_pid(dir);
    let out = stack.stop_with(Signal::SIGINT);
    assert!(out.status.success(), "exit {:?}: {:?}", out.status, out.stdout);
    assert!(out.stdout.iter().any(|l| l == "postgres: stopped"), "{:?}", out.stdout);
    assert_nothing_left(dir, postmaster);

    // Second start: same cluster, no migration applied again, same instance and login.
    let stack = start(dir);
    let printed = stack.stdout.join("\n");
    assert!(printed.contains("reusing the cluster"), "{printed}");
    assert!(!printed.contains("created a new cluster"), "{printed}");
    assert!(printed.contains("schema up to date"), "{printed}");
    assert!(!printed.contains(&password), "the password is printed only at first start");
    let second = health(&stack.url);
    assert_eq!(second["components"]["database"]["migrations"].as_u64().unwrap(), migrations);
    assert_eq!(second["components"]["database"]["instance_id"], instance);
    // The engine keeps its ports and key: the token of the first start still works.
    assert_eq!(second["components"]["engine"]["api"], engine_api.as_str());
    assert_eq!(get_json_with(&format!("{engine_api}/api/v1/version"), &token)["version"], "v0.79.0");
    let creds_again: Value = serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    assert_eq!(creds_again["password"], password.as_str());

    let postmaster = postmaster_pid(dir);
    let out = stack.stop_with(Signal::SIGTERM);
    assert!(out.status.success());
    assert_nothing_left(dir, postmaster);
}

#[test]
fn stop_and_status_from_another_shell() {
    let dir = data_dir();
    let dir = dir.path();
    let stack = start(dir);

    let out = sfp_server(&["status", "--json"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "running", "{status}");
    for component in ["server", "api", "database", "engine"] {
        assert_eq!(status["components"][component]["status"], "up", "{component}: {status}");
    }
    assert_eq!(status["components"]["server"]["pid"], stack.pid());

    // A second server on the same folder is refused and names the first.
    let second = sfp_server(&["start", "--port", "0"], dir);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another sfp-server") && err.contains(&stack.pid().to_string()), "{err}");

    // Drain: nothing runs, so it is drained at once; status shows it; resume undoes it.
    let drain = sfp_server(&["drain", "--timeout", "10"], dir);
    let said = String::from_utf8_lossy(&drain.stdout);
    assert_eq!(drain.status.code(), Some(0), "{said} {}", String::from_utf8_lossy(&drain.stderr));
    assert!(said.contains("drained"), "{said}");
    let status: Value = serde_json::from_slice(&sfp_server(&["status", "--json"], dir).stdout).unwrap();
    assert_eq!(status["components"]["engine"]["status"], "degraded", "{status}");
    assert_eq!(status["components"]["engine"]["draining"], true, "{status}");
    let resume = sfp_server(&["drain", "--resume"], dir);
    assert_eq!(resume.status.code(), Some(0), "{}", String::from_utf8_lossy(&resume.stderr));
    let status: Value = serde_json::from_slice(&sfp_server(&["status", "--json"], dir).stdout).unwrap();
    assert_eq!(status["components"]["engine"]["status"], "up", "{status}");

    let postmaster = postmaster_pid(dir);
    let stop = sfp_server(&["stop"], dir);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let out = stack.wait();
    assert!(out.status.success(), "{:?}", out.stdout);
    assert_nothing_left(dir, postmaster);

    let out = sfp_server(&["status", "--json"], dir);
    assert_eq!(out.status.code(), Some(3));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "stopped", "{status}");
    assert_eq!(status["components"]["database"]["status"], "down");
}

#[test]
fn a_crashed_server_leaves_nothing_that_start_or_stop_cannot_handle() {
    let dir = data_dir();
    let dir = dir.path();
    let stack = start(dir);
    let postmaster = postmaster_pid(dir);
    let out = stack.stop_with(Signal::SIGKILL);
    assert!(!out.status.success());
    assert!(process_alive(postmaster), "PostgreSQL outlives a killed server");

    // The next start takes over the running cluster.
    let stack = start(dir);
    let printed = stack.stdout.join("\n");
    assert!(printed.contains("already running"), "{printed}");
    assert_eq!(health(&stack.url)["status"], "ok");
    let out = stack.stop_with(Signal::SIGKILL);
    assert!(!out.status.success());

    // `stop` with no server running still stops the leftover cluster.
    let stop = sfp_server(&["stop"], dir);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(String::from_utf8_lossy(&stop.stdout).contains("left running"));
    assert_nothing_left(dir, postmaster);
}
