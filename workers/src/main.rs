//! `sfp-worker`: runs task steps for one pool against the engine its token names.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sfp_protocol::client::{ClientConfig, TlsStrategy};
use sfp_workers::{WorkerConfig, tools};
use sfp_workflows::{Pool, SourcePolicy};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "sfp-worker", version, about = "Runs sfp-server task steps with the sfp CLI")]
struct Args {
    /// Which steps to run: standard (short) or long-running.
    #[arg(long, env = "SFP_WORKER_POOL")]
    pool: Pool,
    /// Steps run at once.
    #[arg(long, env = "SFP_WORKER_SLOTS", default_value_t = 2)]
    slots: u32,
    /// The name the engine lists this worker under.
    #[arg(long, env = "SFP_WORKER_NAME")]
    name: Option<String>,
    /// The engine's tenant token (Hatchet's HATCHET_CLIENT_TOKEN).
    #[arg(long, env = "HATCHET_CLIENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (e.g. the embedded stack's `.sfp/engine-token`).
    #[arg(long, env = "SFP_WORKER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// `host:port` of the engine's gRPC API, instead of the token's.
    #[arg(long, env = "HATCHET_CLIENT_HOST_PORT")]
    host_port: Option<String>,
    /// The engine's REST URL, instead of the token's.
    #[arg(long, env = "HATCHET_CLIENT_SERVER_URL")]
    server_url: Option<String>,
    /// none (plaintext, loopback) or tls.
    #[arg(long, env = "HATCHET_CLIENT_TLS_STRATEGY", default_value = "tls")]
    tls: TlsStrategy,
    /// The sfp CLI; `sfp` on PATH when unset.
    #[arg(long, env = "SFP_WORKER_SFP_BIN")]
    sfp_bin: Option<PathBuf>,
    /// Where steps get their private folders.
    #[arg(long, env = "SFP_WORKER_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Allow `file://` repositories (single machine, tests).
    #[arg(long, env = "SFP_WORKER_ALLOW_LOCAL_REPOSITORIES")]
    allow_local_repositories: bool,
    /// The instance registry's login (`<data dir>/registry-credentials.json`, written by
    /// sfp-server): `{url, username, password}`.
    #[arg(long, env = "SFP_WORKER_REGISTRY_CREDENTIALS")]
    registry_credentials: Option<PathBuf>,
    /// The sfp-server API steps get org credentials from (`http://host:3478`).
    #[arg(long, env = "SFP_SERVER_URL")]
    control_plane_url: Option<String>,
    /// A file holding this worker's token for the control plane (`sfp_wk_...`, from
    /// `POST /sfp/api/worker-tokens`).
    #[arg(long, env = "SFP_WORKER_CONTROL_PLANE_TOKEN_FILE")]
    control_plane_token_file: Option<PathBuf>,
    /// Seconds running steps get to finish on SIGTERM before they are handed back.
    #[arg(long, env = "SFP_WORKER_DRAIN_TIMEOUT", default_value_t = 60)]
    drain_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SFP_WORKER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_string()
        }
        (None, None) => anyhow::bail!("no engine token: set HATCHET_CLIENT_TOKEN or --token-file"),
    };
    let work_root = args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("sfp-worker"));
    let search_path = std::env::var("PATH").unwrap_or_default();
    let sources = SourcePolicy { allow_local: args.allow_local_repositories };
    let mut tools = tools::locate(args.sfp_bin.as_deref(), &search_path, work_root, sources)?;
    if let Some(file) = &args.registry_credentials {
        let raw = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let login: serde_json::Value = serde_json::from_slice(&raw).context("registry credentials are JSON")?;
        let field =
            |k: &str| login[k].as_str().map(String::from).with_context(|| format!("registry credentials have no {k}"));
        tools.registries.push(sfp_workers::step::RegistryLogin {
            url: field("url")?,
            username: field("username")?,
            password: field("password")?,
        });
    }
    match (&args.control_plane_url, &args.control_plane_token_file) {
        (Some(url), Some(file)) => {
            let token = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            tools.control_plane = Some(sfp_workers::credentials::ControlPlane::new(url, token.trim()));
        }
        (None, None) => {}
        _ => anyhow::bail!("--control-plane-url and --control-plane-token-file go together"),
    }
    let name = args.name.clone().unwrap_or_else(|| format!("sfp-worker-{}-{}", args.pool, std::process::id()));
    let config = WorkerConfig {
        client: ClientConfig {
            token,
            grpc_address: args.host_port.clone(),
            server_url: args.server_url.clone(),
            tls: args.tls,
        },
        pool: args.pool,
        name,
        slots: args.slots.max(1),
        tools,
        heartbeat_interval: Duration::from_secs(4),
        drain_timeout: Duration::from_secs(args.drain_timeout),
    };
    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutting down: draining");
        stop.cancel();
    });
    sfp_workers::run(config, shutdown).await
}
