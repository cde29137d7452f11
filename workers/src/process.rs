//! One sfp (or git) process of a step: its own process group, a minimal environment, no
//! stdin, every output line handed to the caller, and a hard stop that kills the whole
//! group (sfp starts node, which starts git and more).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Ended by a signal it did not get from us.
    Signal(i32),
    /// Killed because the step ran out of time.
    TimedOut,
    /// Killed because the step was cancelled.
    Cancelled,
}

/// A command to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The whole environment: nothing of the worker's own is inherited.
    pub env: BTreeMap<String, String>,
}

/// The longest line kept; longer ones are cut (sfp prints whole JSON documents on one line).
const MAX_LINE: usize = 64 * 1024;

/// Runs `spec` until it exits, `deadline` passes or `cancel` fires; every output line goes
/// to `lines` (with ANSI colours removed). `on_start` gets the process id.
pub async fn run(
    spec: &Spec,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
    lines: mpsc::UnboundedSender<(Stream, String)>,
    on_start: impl FnOnce(u32),
) -> std::io::Result<Exit> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or_default();
    on_start(pid);
    let out = tokio::spawn(forward(child.stdout.take(), Stream::Stdout, lines.clone()));
    let err = tokio::spawn(forward(child.stderr.take(), Stream::Stderr, lines));

    let outcome = tokio::select! {
        status = child.wait() => {
            let status = status?;
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Code(-1),
            }
        }
        _ = tokio::time::sleep_until(deadline) => Exit::TimedOut,
        _ = cancel.cancelled() => Exit::Cancelled,
    };
    if matches!(outcome, Exit::TimedOut | Exit::Cancelled) {
        stop_group(pid, &mut child).await;
    } else {
        // Whatever the command left running in its group goes with it.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    // The pipes close once every process of the group is gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = out.await;
        let _ = err.await;
    })
    .await;
    Ok(outcome)
}

/// SIGTERM to the group, SIGKILL two seconds later if anything is left.
async fn stop_group(pid: u32, child: &mut tokio::process::Child) {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = killpg(group, Signal::SIGKILL);
}

async fn forward(pipe: Option<impl AsyncRead + Unpin>, stream: Stream, lines: mpsc::UnboundedSender<(Stream, String)>) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                buf.truncate(MAX_LINE);
                let line = strip_ansi(&String::from_utf8_lossy(&buf));
                let line = line.trim_end_matches(['\n', '\r']).to_string();
                if lines.send((stream, line)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Removes ANSI escape sequences (sfp colours its output even without a terminal).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                // OSC: up to BEL or ESC \.
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                        if c == '\u{1b}' {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            _ => {
                chars.next();
            }
        }
    }
    out
}

/// The child gets SIGKILL when the worker dies, even by SIGKILL: a killed worker leaves no
/// sfp process behind to hold an org or a working folder.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl(2) call.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Whether a process is still there (for tests and the stale-folder sweep).
pub fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Finds an executable on a PATH-like list.
pub fn which(name: &str, path: &str) -> Option<PathBuf> {
    std::env::split_paths(path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str) -> Spec {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), "/usr/bin:/bin".into());
        Spec { program: "/bin/sh".into(), args: vec!["-c".into(), script.into()], cwd: "/".into(), env }
    }

    async fn lines_of(script: &str, timeout: Duration) -> (Exit, Vec<(Stream, String)>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exit = run(&spec(script), tokio::time::Instant::now() + timeout, &CancellationToken::new(), tx, |_| {})
            .await
            .unwrap();
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        (exit, lines)
    }

    #[tokio::test]
    async fn lines_come_from_both_streams_with_colours_removed_and_the_env_is_minimal() {
        let (exit, lines) = lines_of(
            "printf '\\033[1mbold\\033[22m\\n'; echo oops >&2; echo \"home=$HOME\"; exit 3",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(exit, Exit::Code(3));
        assert!(lines.contains(&(Stream::Stdout, "bold".into())), "{lines:?}");
        assert!(lines.contains(&(Stream::Stderr, "oops".into())));
        assert!(lines.contains(&(Stream::Stdout, "home=".into())), "HOME is not inherited: {lines:?}");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
        let (exit, _) = lines_of(&script, Duration::from_millis(500)).await;
        assert_eq!(exit, Exit::TimedOut);
        let grandchild: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Reaped by init, possibly a moment later.
        for _ in 0..50 {
            if !alive(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(grandchild), "the background sleep of the step was killed too");
    }

    #[tokio::test]
    async fn cancel_stops_it() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let exit = run(&spec("sleep 300"), tokio::time::Instant::now() + Duration::from_secs(60), &cancel, tx, |_| {})
            .await
            .unwrap();
        assert_eq!(exit, Exit::Cancelled);
    }

    #[test]
    fn ansi_sequences_go() {
        assert_eq!(strip_ansi("\u{1b}[95m\u{1b}[1mBuilding\u{1b}[22m\u{1b}[39m x"), "Building x");
        assert_eq!(strip_ansi("a\u{1b}]0;title\u{7}b"), "ab");
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
