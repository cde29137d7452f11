//! The community `hatchet-sdk` crate (0.2.8, pinned in tests/hatchet/rust/Cargo.toml) against
//! the embedded engine started in sidecar mode. The crate reads everything from the token and
//! parses the REST run view with `.expect()`, so this also proves that shape.

use std::process::Command;
use std::time::Duration;

use sfp_tests::sdk::{FreshDatabase, Sidecar, run_script, tool_from_env, workspace_binary};

#[test]
fn rust_sdk_runs_dags_retries_and_failures() {
    let conformance = tool_from_env("SFP_TEST_HATCHET_RUST_BIN");
    let db = FreshDatabase::create();
    let sidecar = Sidecar::start(&workspace_binary("sfp-engine"), &db.url);
    for field in ["token", "tenant_id", "grpc_address", "api_url"] {
        assert!(sidecar.handshake[field].is_string(), "handshake field {field}: {}", sidecar.handshake);
    }
    let mut cmd = Command::new(conformance);
    cmd.env("HATCHET_CLIENT_TOKEN", sidecar.token()).env("HATCHET_CLIENT_TLS_STRATEGY", "none");
    let (ok, printed) = run_script(cmd, Duration::from_secs(240));
    assert!(
        ok && printed.contains("rust conformance: all passed"),
        "the Rust SDK conformance failed:\n{printed}\nengine log:\n{}",
        sidecar.log()
    );
    for expectation in [
        "ok: DAG second task read its parent's output over REST",
        "ok: a task failing twice succeeds on its third attempt",
        "ok: the task's error reaches the caller",
        "ok: the worker is still running",
    ] {
        assert!(printed.contains(expectation), "missing {expectation:?} in:\n{printed}");
    }
    assert!(sidecar.close_stdin_and_wait(), "the sidecar exits when its standard input closes");
}
