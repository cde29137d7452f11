//! The instance's npm registry for sfp artifacts: the real Verdaccio 6.8.0 (installed by
//! scripts/setup), run by `sfp-server start` as a child process on a loopback port kept
//! across restarts, with storage and an htpasswd file in `<data dir>/registry/`. It has no
//! uplinks, so builds resolve only what this instance published. The workers' login is
//! generated at first start and kept in `<data dir>/registry-credentials.json` (mode 0600).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use super::data_dir::DataDir;
use crate::config::Config;
use crate::health::{CheckFuture, ComponentHealth, ComponentStatus, HealthCheck};

pub const CREDENTIALS_FILE: &str = "registry-credentials.json";
const STATE_FILE: &str = "registry.json";
const TEMPLATE: &str = include_str!("../../../verdaccio/config.yaml");
const USER: &str = "sfp-worker";

#[derive(Clone, Serialize, Deserialize)]
pub struct RegistryCredentials {
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    port: u16,
    pid: Option<u32>,
}

pub struct RunningRegistry {
    pub credentials: RegistryCredentials,
    child: Child,
    state_path: PathBuf,
}

impl RunningRegistry {
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        if let Ok(raw) = std::fs::read(&self.state_path)
            && let Ok(mut state) = serde_json::from_slice::<State>(&raw)
        {
            state.pid = None;
            let _ = std::fs::write(&self.state_path, serde_json::to_vec(&state).unwrap_or_default());
        }
    }
}

/// The Verdaccio to run: the configured one, else the one scripts/setup installs.
pub fn locate(config: &Config) -> Option<PathBuf> {
    if let Some(p) = &config.registry.verdaccio_bin {
        return Some(p.clone());
    }
    let home = std::env::var_os("HOME")?;
    let default = Path::new(&home).join(".cache/sfp-server/tools/verdaccio/node_modules/.bin/verdaccio");
    default.is_file().then_some(default)
}

pub async fn start(config: &Config, data: &DataDir, verdaccio: &Path) -> anyhow::Result<RunningRegistry> {
    let root = data.path("registry");
    std::fs::create_dir_all(root.join("storage")).context("creating the registry's folder")?;
    let state_path = data.path(STATE_FILE);
    let mut state: State =
        std::fs::read(&state_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    // A Verdaccio left behind by a server that was killed holds the port: end it.
    stop_leftover(data).await;
    state.pid = None;
    let port = match config.registry.port {
        Some(p) => p,
        None if state.port != 0 && free(state.port) => state.port,
        None => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port(),
    };
    let url = format!("http://127.0.0.1:{port}/");
    let credentials = match std::fs::read(data.path(CREDENTIALS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<RegistryCredentials>(&b).ok())
    {
        Some(mut c) => {
            c.url = url.clone();
            c
        }
        None => {
            let password: String =
                rand::rng().sample_iter(&rand::distr::Alphanumeric).take(32).map(char::from).collect();
            RegistryCredentials { url: url.clone(), username: USER.into(), password }
        }
    };
    sfp_postgres::write_private(&data.path(CREDENTIALS_FILE), &serde_json::to_vec_pretty(&credentials)?)?;
    let hash = bcrypt::hash(&credentials.password, 10).context("hashing the registry password")?;
    sfp_postgres::write_private(&root.join("htpasswd"), format!("{}:{hash}\n", credentials.username).as_bytes())?;
    let yaml = TEMPLATE
        .replace("__STORAGE__", &root.join("storage").to_string_lossy())
        .replace("__HTPASSWD__", &root.join("htpasswd").to_string_lossy());
    let config_path = root.join("config.yaml");
    std::fs::write(&config_path, yaml)?;

    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(data.path("logs/verdaccio.log")).or_else(|_| {
            std::fs::create_dir_all(data.path("logs"))?;
            std::fs::OpenOptions::new().create(true).append(true).open(data.path("logs/verdaccio.log"))
        })?;
    let mut child = Command::new(verdaccio)
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting Verdaccio ({})", verdaccio.display()))?;
    state = State { port, pid: child.id() };
    std::fs::write(&state_path, serde_json::to_vec(&state)?)?;

    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if client.get(format!("{url}-/ping")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!("Verdaccio exited ({status}); see {}", data.path("logs/verdaccio.log").display());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "Verdaccio did not answer on {url} within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(RunningRegistry { credentials, child, state_path })
}

/// Ends a Verdaccio that a killed server left running on this data folder. Returns whether
/// there was one.
pub async fn stop_leftover(data: &DataDir) -> bool {
    let root = data.path("registry");
    let state: State =
        std::fs::read(data.path(STATE_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let Some(pid) = state.pid else { return false };
    // Verdaccio renames its process (its command line reads just `verdaccio`), so it is
    // known by the folder it runs in, which we set; the command line is the fallback.
    let real_root = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
    let in_root = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == real_root);
    let ours = in_root
        || std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*root.to_string_lossy()));
    if !ours {
        return false;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    sfp_postgres::wait_for_exit(pid as i32, Duration::from_secs(5)).await;
    true
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

/// The registry as `/sfp/api` health shows it.
pub struct RegistryCheck {
    pub url: String,
    pub client: reqwest::Client,
}

impl HealthCheck for RegistryCheck {
    fn name(&self) -> &str {
        "registry"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let up = self.client.get(format!("{}-/ping", self.url)).send().await.is_ok_and(|r| r.status().is_success());
            ComponentHealth::new(if up { ComponentStatus::Up } else { ComponentStatus::Down })
                .with("url", &self.url)
                .with("kind", "verdaccio")
        })
    }
}
