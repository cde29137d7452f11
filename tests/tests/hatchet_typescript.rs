//! The official Hatchet TypeScript SDK (npm @hatchet-dev/typescript-sdk, pinned in
//! tests/hatchet/typescript/package.json) against the embedded engine, started through the
//! SDK's own `HatchetEmbeddedClient.init()` sidecar protocol.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sfp_tests::sdk::{FreshDatabase, run_script, workspace_binary};

#[test]
fn typescript_sdk_runs_dags_retries_failures_and_events() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hatchet/typescript");
    assert!(
        dir.join("node_modules/@hatchet-dev/typescript-sdk").is_dir(),
        "the pinned TypeScript SDK is not installed: run the tests with scripts/test"
    );
    let engine = workspace_binary("sfp-engine");
    let db = FreshDatabase::create();
    let mut cmd = Command::new("node");
    cmd.arg("conformance.js")
        .env("HATCHET_CLIENT_EMBEDDED_BINARY_PATH", &engine)
        .env("SFP_TEST_DATABASE_URL", &db.url)
        .env_remove("HATCHET_CLIENT_TOKEN")
        .current_dir(&dir);
    let (ok, printed) = run_script(cmd, Duration::from_secs(240));
    assert!(
        ok && printed.contains("typescript conformance: all passed"),
        "the TypeScript SDK conformance failed:\n{printed}"
    );
    for expectation in [
        "ok: DAG second task read its parent's output",
        "ok: a task failing twice succeeds on its third attempt",
        "ok: the task's error reaches the caller",
        "ok: an event push started the workflow",
    ] {
        assert!(printed.contains(expectation), "missing {expectation:?} in:\n{printed}");
    }
}
