//! Running `sfp-server start` as a real process and reading what it prints.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Whether a process with this pid is running (zombies count as gone).
pub fn process_alive(pid: i32) -> bool {
    sfp_postgres::pid_running(pid)
}

/// Everything a stopped stack printed.
#[derive(Debug)]
pub struct StackOutput {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
}

/// An `sfp-server start` child process that has printed `ready: <url>`.
pub struct RunningStack {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub stdout: Vec<String>,
    pub url: String,
    pub data_dir: PathBuf,
}

/// How long a stack may take to come up before a test gives up on it (a first start runs
/// initdb). This bounds a hang; it asserts nothing about speed.
const START_LIMIT: Duration = Duration::from_secs(120);

impl RunningStack {
    /// Starts `binary start --data-dir <dir> --port 0` with the extra environment given, and
    /// waits for its `ready:` line. Panics with everything it printed if it never comes.
    pub fn start(binary: &Path, data_dir: &Path, env: &[(&str, &str)]) -> RunningStack {
        let mut cmd = Command::new(binary);
        cmd.args(["start", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env_remove("SFP_DATABASE_URL");
        let mut child = cmd.spawn().expect("spawning sfp-server");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stack = RunningStack {
            child: Some(child),
            lines,
            stdout: Vec::new(),
            url: String::new(),
            data_dir: data_dir.into(),
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stack.lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.strip_prefix("ready: ").map(str::to_owned);
                    stack.stdout.push(line);
                    if let Some(url) = ready {
                        stack.url = url;
                        return stack;
                    }
                }
                Err(_) => {
                    let printed = stack.stdout.join("\n");
                    panic!("sfp-server did not become ready; it printed:\n{printed}");
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends `signal` and waits for the process to exit; returns its status and all it printed.
    pub fn stop_with(self, signal: Signal) -> StackOutput {
        kill(Pid::from_raw(self.pid()), signal).expect("signal");
        self.wait()
    }

    /// Waits for the process to exit by itself (for instance after `sfp-server stop`).
    pub fn wait(mut self) -> StackOutput {
        let mut child = self.child.take().expect("child");
        let status = child.wait().expect("wait");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        archive_logs(&self.data_dir, &self.stdout);
        StackOutput { status, stdout: std::mem::take(&mut self.stdout) }
    }
}

impl Drop for RunningStack {
    fn drop(&mut self) {
        // A failing test must not leave a server (and its PostgreSQL) behind.
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.stdout.push(line);
            }
            archive_logs(&self.data_dir, &self.stdout);
        }
    }
}

/// Keeps what a stack wrote (its stdout, `<data dir>/logs/*`, and `*.log` files a test put
/// in the data folder) in `$SFP_TEST_LOG_DIR`, when set: scripts/test searches everything
/// the whole test run wrote for the test stand-ins' secrets once all tests are done.
pub fn archive_logs(data_dir: &Path, stdout: &[String]) {
    let Ok(target) = std::env::var("SFP_TEST_LOG_DIR") else { return };
    let target = PathBuf::from(target).join(format!(
        "{}-{}",
        data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    if std::fs::create_dir_all(&target).is_err() {
        return;
    }
    let _ = std::fs::write(target.join("stdout.log"), stdout.join("\n"));
    for dir in [data_dir.to_path_buf(), data_dir.join("logs")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && path.extension().is_some_and(|e| e == "log") {
                let name = format!(
                    "{}-{}",
                    dir.file_name().unwrap_or_default().to_string_lossy(),
                    entry.file_name().to_string_lossy()
                );
                let _ = std::fs::copy(&path, target.join(name));
            }
        }
    }
}

/// Processes whose command line mentions `path` or that run inside it (to find anything
/// left running on a data folder: the postmaster is started with `-D <data
/// folder>/postgres/data`; Verdaccio renames its process but runs in `<data
/// folder>/registry`).
pub fn processes_mentioning(path: &Path) -> Vec<(i32, String)> {
    let needle = path.to_string_lossy().into_owned();
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        let inside = std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&real));
        if (cmdline.contains(&needle) || inside) && process_alive(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}
