//! The embedded workflow engine of `sfp-server start`: same process, its own gRPC and REST
//! ports (chosen free at first start and kept, so tokens stay valid across restarts), and a
//! tenant token in the data folder for workers, including external Hatchet SDK workers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sfp_engine::{Engine, EngineConfig};
use sfp_protocol::token::TokenKey;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::data_dir::DataDir;
use crate::config::Config;
use crate::health::{CheckFuture, ComponentHealth, ComponentStatus, HealthCheck};

pub const TOKEN_FILE: &str = "engine-token";
const PORTS_FILE: &str = "engine.json";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Ports {
    grpc: u16,
    api: u16,
}

pub struct RunningEngine {
    pub grpc_address: String,
    pub api_url: String,
    /// The tenant token the control plane and the embedded workers use.
    pub token: String,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the engine on the instance's database and writes the worker token.
pub async fn start(
    config: &Config,
    data: &DataDir,
    pool: &PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningEngine> {
    let identity = sfp_engine::tenant::load_or_create(pool).await.context("loading the engine's identity")?;
    let saved: Ports =
        std::fs::read(data.path(PORTS_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let grpc = bind(config.engine.grpc_port, saved.grpc).await.context("binding the engine's gRPC port")?;
    let api = bind(config.engine.api_port, saved.api).await.context("binding the engine's REST port")?;
    let ports = Ports { grpc: grpc.local_addr()?.port(), api: api.local_addr()?.port() };
    std::fs::write(data.path(PORTS_FILE), serde_json::to_vec_pretty(&ports)?)?;

    let grpc_address = format!("127.0.0.1:{}", ports.grpc);
    let api_url = format!("http://127.0.0.1:{}", ports.api);
    let key = TokenKey::new(&identity.secret);
    let mut engine_config = EngineConfig::new(identity.tenant_id, key.clone(), grpc_address.clone(), api_url.clone());
    engine_config.heartbeat_timeout = Duration::from_secs(config.engine.heartbeat_timeout_secs.max(5));
    let token = key.mint(identity.tenant_id, &api_url, &grpc_address, Duration::from_secs(365 * 86_400))?;
    sfp_postgres::write_private(&data.path(TOKEN_FILE), token.as_bytes())?;
    let token = token.to_string();

    let engine = Engine::new(pool.clone(), engine_config);
    let task = tokio::spawn(sfp_engine::serve(engine, grpc, api, shutdown));
    Ok(RunningEngine { grpc_address, api_url, token, task })
}

/// The configured port, else the one used last time if it is still free, else a free one.
async fn bind(configured: Option<u16>, previous: u16) -> std::io::Result<TcpListener> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    match configured {
        Some(port) => TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await,
        None if previous != 0 => match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, previous))).await {
            Ok(listener) => Ok(listener),
            Err(_) => TcpListener::bind(any).await,
        },
        None => TcpListener::bind(any).await,
    }
}

/// The engine as the control plane sees it: through its REST readiness endpoint, the same
/// way it would see a real Hatchet engine.
pub struct EngineCheck {
    pub api_url: String,
    pub grpc_address: String,
    pub client: reqwest::Client,
}

impl HealthCheck for EngineCheck {
    fn name(&self) -> &str {
        "engine"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let ready = self.client.get(format!("{}/api/ready", self.api_url)).send().await;
            let (status, draining) = match ready {
                Ok(r) if r.status().is_success() => (ComponentStatus::Up, false),
                // Draining: alive, but assigning no new work.
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let draining = body["message"].as_str().is_some_and(|m| m.contains("draining"));
                    (if draining { ComponentStatus::Degraded } else { ComponentStatus::Down }, draining)
                }
                _ => (ComponentStatus::Down, false),
            };
            ComponentHealth::new(status)
                .with("draining", draining)
                .with("mode", "embedded")
                .with("grpc", &self.grpc_address)
                .with("api", &self.api_url)
                .with("protocol_version", sfp_protocol::ENGINE_PROTOCOL_VERSION)
        })
    }
}

/// The embedded engine's drain state, as its REST API reports it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainState {
    pub draining: bool,
    pub in_flight: i64,
    pub drained: bool,
}

/// Drains the engine of the server running on `data`: it stops assigning new work, and
/// this waits up to `wait` for the tasks in flight, reporting progress through `progress`.
/// `resume` ends a drain instead.
pub async fn drain(
    data: &DataDir,
    wait: Duration,
    resume: bool,
    mut progress: impl FnMut(&DrainState),
) -> anyhow::Result<DrainState> {
    let ports: Ports = serde_json::from_slice(
        &std::fs::read(data.path(PORTS_FILE)).context("reading the engine's ports (has the stack started once?)")?,
    )?;
    let token = std::fs::read_to_string(data.path(TOKEN_FILE)).context("reading the engine token")?;
    let token = token.trim();
    let url = format!("http://127.0.0.1:{}/api/v1/engine/drain", ports.api);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
    let ask = |request: reqwest::RequestBuilder| async move {
        let response = request.bearer_auth(token).send().await.context("reaching the engine")?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "the engine answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
        Ok::<DrainState, anyhow::Error>(response.json().await?)
    };
    if resume {
        return ask(client.delete(&url)).await;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Short waits, so the caller can show how many tasks are still running.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs().min(2);
        let state = ask(client.post(&url).json(&serde_json::json!({"timeoutSeconds": left}))).await?;
        progress(&state);
        if state.drained || tokio::time::Instant::now() >= deadline {
            return Ok(state);
        }
    }
}
