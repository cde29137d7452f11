//! Locks with two `sfp-server` processes on one database: clients of both queue for one
//! resource and no two of them ever hold it at once; a held lock survives a restart.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sfp_tests::sdk::{FreshDatabase, workspace_binary};
use sfp_tests::tasks::TasksApi;
use sfp_tests::{RunningStack, data_dir};

/// Servers of one database share the vault's key file (the database refuses a server whose
/// keys are not the ones its credentials are wrapped with).
fn write_config(dir: &Path, database_url: &str, keys: &Path) {
    let config = format!(
        "database_url = \"{database_url}\"\n[workers]\nstandard = 0\nlong_running = 0\n[vault]\nkeys_file = \"{}\"\n",
        keys.display()
    );
    std::fs::write(dir.join("sfp.toml"), config).unwrap();
}

async fn application_token(url: &str, dir: &Path) -> String {
    let admin = TasksApi::sign_in(url, dir).await;
    let (status, created) = admin.post("/application-tokens", json!({"name": "lock clients", "expiresIn": 1})).await;
    assert_eq!(status, 201, "{created}");
    created["token"].as_str().expect("a token").to_string()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Takes the lock through `take` (a server's URL), waits for it by polling `watch` (maybe the
/// other server), holds it a moment, releases it through `take`. Returns the interval in
/// which this client saw itself as the holder.
async fn hold_once(http: &reqwest::Client, take: &str, watch: &str, token: &str) -> (Instant, Instant) {
    let (status, ticket) = call(
        http,
        reqwest::Method::POST,
        format!("{take}/sfp/api/locks"),
        token,
        Some(json!({"repository": "org/repo", "resource": "uat", "leaseDurationSeconds": 60})),
    )
    .await;
    assert_eq!(status, 201, "{ticket}");
    let id = ticket["ticketId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut current = ticket;
    while current["status"] != "acquired" {
        assert_eq!(current["status"], "queued", "{current}");
        assert!(Instant::now() < deadline, "never acquired: {current}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        current =
            call(http, reqwest::Method::GET, format!("{watch}/sfp/api/locks/org/repo/uat/{id}"), token, None).await.1;
    }
    let acquired = Instant::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let released = Instant::now();
    let (status, answer) =
        call(http, reqwest::Method::DELETE, format!("{take}/sfp/api/locks/org/repo/uat/{id}"), token, None).await;
    assert_eq!(status, 200, "{answer}");
    (acquired, released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_never_grant_a_resource_twice() {
    let db = FreshDatabase::create();
    let (dir_a, dir_b) = (data_dir(), data_dir());
    let keys = dir_a.path().join("shared-vault-keys.json");
    write_config(dir_a.path(), &db.url, &keys);
    write_config(dir_b.path(), &db.url, &keys);
    let binary = workspace_binary("sfp-server");
    let a = RunningStack::start(&binary, dir_a.path(), &[]);
    let b = RunningStack::start(&binary, dir_b.path(), &[]);
    // Application tokens live in the database, so one works on both servers.
    let token = application_token(&a.url, dir_a.path()).await;
    let servers = [a.url.clone(), b.url.clone()];

    let held: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let mut clients = Vec::new();
    for client in 0..8 {
        let (take, watch) = (servers[client % 2].clone(), servers[(client / 2) % 2].clone());
        let (token, held) = (token.clone(), held.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..5 {
                let interval = hold_once(&http, &take, &watch, &token).await;
                held.lock().unwrap().push(interval);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let mut intervals = held.lock().unwrap().clone();
    assert_eq!(intervals.len(), 40);
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two clients held the lock at once: {pair:?}");
    }

    // A held lock survives a restart of the server that granted it.
    let http = reqwest::Client::new();
    let (status, ticket) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/sfp/api/locks", a.url),
        &token,
        Some(json!({"repository": "org/repo", "resource": "uat", "leaseDurationSeconds": 600})),
    )
    .await;
    assert_eq!((status, ticket["status"].as_str()), (201, Some("acquired")), "{ticket}");
    let id = ticket["ticketId"].as_str().unwrap().to_string();
    drop(a);
    let a = RunningStack::start(&binary, dir_a.path(), &[]);
    let (_, after) =
        call(&http, reqwest::Method::GET, format!("{}/sfp/api/locks/org/repo/uat/{id}", a.url), &token, None).await;
    assert_eq!(after["status"], "acquired", "{after}");
    let (_, queued) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/sfp/api/locks", b.url),
        &token,
        Some(json!({"repository": "org/repo", "resource": "uat", "leaseDurationSeconds": 60})),
    )
    .await;
    assert_eq!((queued["status"].as_str(), queued["queuePosition"].as_i64()), (Some("queued"), Some(1)), "{queued}");
    drop(b);
    drop(a);
}
