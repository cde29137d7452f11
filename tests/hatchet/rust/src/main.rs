//! Conformance of the embedded engine with the `hatchet-sdk` crate (pinned in Cargo.toml).
//! Reads HATCHET_CLIENT_TOKEN (and HATCHET_CLIENT_TLS_STRATEGY=none) like any user of the
//! crate; runs a worker and a client in one process; exits non-zero on the first broken
//! expectation.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use hatchet_sdk::{Context, EmptyModel, Hatchet, HatchetError, Register, Runnable};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

static FLAKY_ATTEMPTS: AtomicI32 = AtomicI32::new(0);

#[derive(Serialize, Deserialize, Clone)]
struct Numbers {
    n: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Doubled {
    doubled: i64,
}

#[derive(Serialize, Deserialize, Debug)]
struct DagOutput {
    rs_first: Doubled,
    rs_second: Value,
}

fn check(condition: bool, what: &str) {
    if !condition {
        println!("FAILED: {what}");
        std::process::exit(1);
    }
    println!("ok: {what}");
}

/// Until the worker has registered the workflows, triggering them fails.
async fn until_registered<T, F, Fut>(mut call: F) -> Result<T, HatchetError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, HatchetError>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match call().await {
            Err(e) if e.to_string().contains("not registered") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

#[tokio::main]
async fn main() {
    let hatchet = Hatchet::from_env().await.expect("connect with HATCHET_CLIENT_TOKEN");

    let first = hatchet
        .task("rs_first", async move |input: Numbers, _ctx: Context| -> anyhow::Result<Doubled> {
            Ok(Doubled { doubled: input.n * 2 })
        })
        .build()
        .unwrap();
    let second = hatchet
        .task("rs_second", async move |_input: Numbers, ctx: Context| -> anyhow::Result<Value> {
            let parent = ctx.parent_output("rs_first").await?;
            Ok(json!({"plus_one": parent["doubled"].as_i64().unwrap_or(-1000) + 1}))
        })
        .build()
        .unwrap()
        .add_parent(&first);
    let dag = hatchet.workflow::<Numbers, DagOutput>("rs-dag").build().unwrap().add_task(&first).add_task(&second);

    let flaky = hatchet
        .task("rs-flaky", async move |_input: EmptyModel, _ctx: Context| -> anyhow::Result<Value> {
            let attempt = FLAKY_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
            if attempt < 2 {
                anyhow::bail!("flaky attempt {attempt}");
            }
            Ok(json!({"attempt": attempt}))
        })
        .retries(2)
        .build()
        .unwrap();
    let failing = hatchet
        .task("rs-fail", async move |_input: EmptyModel, _ctx: Context| -> anyhow::Result<Value> {
            anyhow::bail!("this task always fails")
        })
        .build()
        .unwrap();

    let mut worker = hatchet
        .worker("rs-conformance")
        .slots(5)
        .build()
        .unwrap()
        .add_task_or_workflow(&dag)
        .add_task_or_workflow(&flaky)
        .add_task_or_workflow(&failing);
    let worker_task = tokio::spawn(async move { worker.start().await });

    let result = until_registered(|| dag.run(&Numbers { n: 20 }, None)).await.expect("the DAG runs");
    check(result.rs_first == Doubled { doubled: 40 }, &format!("DAG first task output {:?}", result.rs_first));
    check(result.rs_second == json!({"plus_one": 41}), "DAG second task read its parent's output over REST");

    let flaky_result = until_registered(|| flaky.run(&EmptyModel, None)).await.expect("the flaky task succeeds");
    check(flaky_result == json!({"attempt": 2}), "a task failing twice succeeds on its third attempt");
    check(FLAKY_ATTEMPTS.load(Ordering::SeqCst) == 3, "three attempts were made");

    match until_registered(|| failing.run(&EmptyModel, None)).await {
        Ok(v) => check(false, &format!("a failing task must not succeed: {v}")),
        Err(e) => check(e.to_string().contains("this task always fails"), &format!("the task's error reaches the caller: {e}")),
    }

    check(!worker_task.is_finished(), "the worker is still running (no heartbeat or stream error ended it)");
    worker_task.abort();
    println!("rust conformance: all passed");
    std::process::exit(0);
}
