//! The official Hatchet Python SDK (PyPI hatchet-sdk, pinned in
//! tests/hatchet/python/requirements.txt) against the embedded engine, started through the
//! SDK's own `from_embedded()` sidecar protocol.

use std::process::Command;
use std::time::Duration;

use sfp_tests::sdk::{FreshDatabase, run_script, tool_from_env, workspace_binary};

#[test]
fn python_sdk_runs_dags_retries_failures_events_streams_lists_logs_and_cancels() {
    let python = tool_from_env("SFP_TEST_PYTHON");
    let engine = workspace_binary("sfp-engine");
    let db = FreshDatabase::create();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hatchet/python/conformance.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .env("HATCHET_CLIENT_EMBEDDED_BINARY_PATH", &engine)
        .env("HATCHET_CLIENT_EMBEDDED_DATABASE_URL", &db.url)
        .env_remove("HATCHET_CLIENT_TOKEN")
        .env_remove("HATCHET_EMBEDDED_HANDSHAKE")
        .current_dir(std::env::temp_dir());
    let (ok, printed) = run_script(cmd, Duration::from_secs(240));
    assert!(ok && printed.contains("python conformance: all passed"), "the Python SDK conformance failed:\n{printed}");
    for expectation in [
        "ok: DAG second task read its parent's output",
        "ok: aio_run returns the result",
        "ok: a task failing twice succeeds on its third attempt",
        "ok: the task's error reaches the caller",
        "ok: an event push started the workflow",
        "ok: subscribe_to_stream yields the task's chunks",
        "ok: the streaming task's result",
        "ok: hatchet.cron creates and lists a cron",
        "ok: hatchet.cron deletes it",
        "ok: hatchet.scheduled creates and lists a scheduled run",
        "ok: runs.get_status says COMPLETED",
        "ok: runs.get_task_run",
        "ok: runs.list finds the completed run",
        "ok: runs.list filters by status",
        "ok: runs.list lists the failed run",
        "ok: runs.list pages",
        "ok: logs.list returns the task's log lines",
        "ok: runs.create starts a run over REST",
        "ok: the REST-created run completes",
        "ok: runs.get_result of the REST-created run",
        "ok: the running task saw its cancellation (ctx.is_cancelled)",
        "ok: the run is CANCELLED",
    ] {
        assert!(printed.contains(expectation), "missing {expectation:?} in:\n{printed}");
    }
}
