//! Running the official Hatchet SDKs (Python, TypeScript) against our binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, built next to the test executables (`scripts/test` builds
/// every binary before running the tests).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target folder");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: build it first (cargo build --workspace --bins)", path.display());
    path
}

/// The interpreter or tool named by `var`, which `scripts/test` sets after installing the
/// pinned SDKs.
pub fn tool_from_env(var: &str) -> PathBuf {
    let value = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with scripts/test, which installs the pinned SDK clients")
    });
    PathBuf::from(value)
}

/// A database of its own on the test cluster (`DATABASE_URL`), dropped afterwards.
pub struct FreshDatabase {
    pub url: String,
    admin: String,
    name: String,
}

impl FreshDatabase {
    pub fn create() -> FreshDatabase {
        let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test starts a test cluster)");
        let name = format!("sdk_{}", uuid_like());
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin.clone());
        FreshDatabase { url: format!("{base}/{name}"), admin, name }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        psql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn psql(url: &str, sql: &str) {
    let status =
        Command::new("psql").arg(url).args(["-qX", "-v", "ON_ERROR_STOP=1", "-c", sql]).status().expect("psql");
    assert!(status.success(), "psql failed: {sql}");
}

/// Unique across the tests of one process (a counter: two tests starting in the same clock
/// tick had collided on the name) and across processes (the process id and the time).
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{:x}_{n}", nanos, std::process::id())
}

/// Runs a conformance script to its end (bounded, so a hang fails instead of blocking CI) and
/// returns its exit status and everything it printed.
pub fn run_script(mut cmd: Command, limit: Duration) -> (bool, String) {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let out = log.reopen().expect("log");
    let err = out.try_clone().expect("log");
    let mut child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("start the script");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(log.path()).unwrap_or_default();
    (status.is_some_and(|s| s.success()), printed)
}

/// `sfp-engine` in sidecar mode, as the SDKs run it: handshake file, exit on closed stdin.
pub struct Sidecar {
    child: Option<std::process::Child>,
    pub handshake: serde_json::Value,
    _dir: tempfile::TempDir,
    log: tempfile::NamedTempFile,
}

impl Sidecar {
    pub fn start(engine: &Path, database_url: &str) -> Sidecar {
        let dir = tempfile::tempdir().expect("temporary folder");
        let handshake_path = dir.path().join("handshake.json");
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = Command::new(engine)
            .args(["-handshake-file"])
            .arg(&handshake_path)
            .args(["-database-url", database_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .expect("start sfp-engine");
        let started = Instant::now();
        let handshake = loop {
            if let Ok(text) = std::fs::read_to_string(&handshake_path)
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break value;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sfp-engine exited before the handshake: {status}");
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no handshake from sfp-engine");
            std::thread::sleep(Duration::from_millis(100));
        };
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "only the handshake file is written there: {leftovers:?}");
        Sidecar { child: Some(child), handshake, _dir: dir, log }
    }

    /// What the engine logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn token(&self) -> &str {
        self.handshake["token"].as_str().expect("token")
    }

    /// Closes the sidecar's standard input, as a parent that went away does, and says
    /// whether it exited by itself.
    pub fn close_stdin_and_wait(mut self) -> bool {
        let mut child = self.child.take().expect("child");
        drop(child.stdin.take());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
