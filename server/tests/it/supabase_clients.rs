//! The official Supabase clients, pinned (npm @supabase/supabase-js in
//! tests/supabase/js/package.json, PyPI supabase in tests/supabase/python/requirements.txt),
//! sign in, read the user, refresh and sign out against the real API.

use std::process::Command;
use std::time::Duration;

use sfp_tests::sdk::{run_script, tool_from_env};
use sqlx::PgPool;

use crate::support::*;

fn client_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/supabase").join(name)
}

fn expect_all(printed: &str, done: &str, expectations: &[&str]) {
    assert!(printed.contains(done), "the client conformance failed:\n{printed}");
    for e in expectations {
        assert!(printed.contains(e), "missing {e:?} in:\n{printed}");
    }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn supabase_js_signs_in_refreshes_and_signs_out(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let anon = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await["local_supabase_anon_key"].as_str().unwrap().to_owned();
    let dir = client_dir("js");
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("auth.mjs")).args([&app.url, &anon, ADMIN_EMAIL, ADMIN_PASSWORD]).current_dir(&dir);
    let (ok, printed) = tokio::task::spawn_blocking(move || run_script(cmd, Duration::from_secs(120))).await.unwrap();
    assert!(ok, "node exited with an error:\n{printed}");
    expect_all(
        &printed,
        "supabase-js conformance: all passed",
        &[
            "ok: a wrong password is AuthApiError 400 invalid_credentials",
            "ok: signInWithPassword returns a session",
            "ok: getUser reads the signed-in user",
            "ok: getClaims validates the token",
            "ok: the refresh token rotated",
            "ok: getSession is empty after signOut",
            "ok: the signed-out token no longer reads the user",
        ],
    );
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn supabase_py_signs_in_refreshes_and_signs_out(pool: PgPool) {
    let python = tool_from_env("SFP_TEST_SUPABASE_PYTHON");
    let app = TestApi::spawn(pool).await;
    let anon = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await["local_supabase_anon_key"].as_str().unwrap().to_owned();
    let mut cmd = Command::new(python);
    cmd.arg(client_dir("python").join("auth.py")).args([&app.url, &anon, ADMIN_EMAIL, ADMIN_PASSWORD]);
    let (ok, printed) = tokio::task::spawn_blocking(move || run_script(cmd, Duration::from_secs(120))).await.unwrap();
    assert!(ok, "python exited with an error:\n{printed}");
    expect_all(
        &printed,
        "supabase-py conformance: all passed",
        &[
            "ok: a wrong password is AuthApiError 400 invalid_credentials",
            "ok: sign_in_with_password returns a session and the user",
            "ok: get_user reads the signed-in user",
            "ok: refresh_session rotates the refresh token",
            "ok: get_session is empty after sign_out",
            "ok: the signed-out token no longer reads the user",
        ],
    );
}
