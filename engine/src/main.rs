//! `sfp-engine`: the embedded workflow engine on its own.
//!
//! * `sfp-engine serve --data-dir DIR | --database-url URL [--grpc-port N] [--api-port N]`
//! * `sfp-engine token create --data-dir DIR | --database-url URL` prints a tenant token.
//! * `sfp-engine -handshake-file PATH [-postgres-data-dir DIR] [-database-url URL]
//!   [-grpc-port N] [-api-port N]`: the sidecar protocol the Hatchet Python and TypeScript
//!   SDKs use for `from_embedded()` (single-dash flags, as those SDKs pass them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sfp_engine::{Engine, EngineConfig};
use sfp_postgres::{Cluster, ClusterOptions};
use sfp_protocol::token::TokenKey;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "sfp-engine", version, about = "The sfp-server workflow engine (Hatchet protocol)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Sidecar mode: write {token, tenant_id, grpc_address, api_url} here once ready, and exit
    /// when standard input closes.
    #[arg(long)]
    handshake_file: Option<PathBuf>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    ports: PortArgs,
    #[command(flatten)]
    timing: TimingArgs,
    /// Log filter (sidecar mode), e.g. info or debug
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    /// Accepted for compatibility; the REST port is always served.
    #[arg(long)]
    no_api: bool,
    /// Accepted for compatibility; migrations are always applied.
    #[arg(long)]
    no_migrations: bool,
}

#[derive(Args, Clone, Default)]
struct DbArgs {
    /// An existing PostgreSQL database
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Run a private PostgreSQL cluster in this folder (created on first use)
    #[arg(long, alias = "data-dir", global = true)]
    postgres_data_dir: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct PortArgs {
    /// gRPC port (0 picks a free one)
    #[arg(long, global = true)]
    grpc_port: Option<u16>,
    /// REST port (0 picks a free one)
    #[arg(long, global = true)]
    api_port: Option<u16>,
}

#[derive(Args, Clone, Default)]
struct TimingArgs {
    /// Seconds without heartbeat (or stream) after which a worker's tasks run elsewhere (at
    /// least 5: the SDKs heartbeat every 4 s)
    #[arg(long, global = true, env = "SFP_ENGINE_HEARTBEAT_TIMEOUT")]
    heartbeat_timeout: Option<u64>,
    /// Seconds a worker may take to report STARTED before its assignment is queued again
    #[arg(long, global = true, env = "SFP_ENGINE_START_TIMEOUT")]
    start_timeout: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine in the foreground.
    Serve,
    /// Tenant tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a new token for the engine's tenant.
    Create {
        /// gRPC address written into the token
        #[arg(long, default_value = "127.0.0.1:7070")]
        grpc_address: String,
        /// REST base URL written into the token
        #[arg(long, default_value = "http://127.0.0.1:7077")]
        server_url: String,
        /// Days the token stays valid
        #[arg(long, default_value_t = 90)]
        days: u64,
    },
}

/// The SDKs pass Go-style flags (`-handshake-file PATH`); clap wants `--handshake-file`.
fn normalise(args: impl Iterator<Item = String>) -> Vec<String> {
    args.enumerate()
        .map(
            |(i, a)| {
                if i > 0 && a.len() > 2 && a.starts_with('-') && !a.starts_with("--") { format!("-{a}") } else { a }
            },
        )
        .collect()
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse_from(normalise(std::env::args()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    // Standard output is discarded by the SDKs in sidecar mode: log to standard error.
    tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(handshake) = cli.handshake_file.clone() {
        return sidecar(cli, &handshake).await;
    }
    match cli.command {
        Some(Command::Serve) | None => {
            let db = Database::open(&cli.db, false).await?;
            let shutdown = CancellationToken::new();
            watch_signals(shutdown.clone());
            let running = start(&db.pool, &cli.ports, &cli.timing, 7070, 7077, shutdown.clone()).await?;
            println!("grpc: {}", running.config.grpc_address);
            println!("api: {}", running.config.server_url);
            println!("ready: {}", running.config.server_url);
            running.task.await??;
            db.close().await;
            Ok(())
        }
        Some(Command::Token { action: TokenAction::Create { grpc_address, server_url, days } }) => {
            let db = Database::open(&cli.db, false).await?;
            let identity = sfp_engine::tenant::load_or_create(&db.pool).await?;
            let key = TokenKey::new(&identity.secret);
            let token = key.mint(identity.tenant_id, &server_url, &grpc_address, Duration::from_secs(days * 86_400))?;
            println!("{token}");
            db.pool.close().await;
            Ok(())
        }
    }
}

struct Running {
    config: EngineConfig,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(
    pool: &PgPool,
    ports: &PortArgs,
    timing: &TimingArgs,
    default_grpc: u16,
    default_api: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let identity = sfp_engine::tenant::load_or_create(pool).await?;
    let grpc = TcpListener::bind(("127.0.0.1", ports.grpc_port.unwrap_or(default_grpc))).await.context("gRPC port")?;
    let api = TcpListener::bind(("127.0.0.1", ports.api_port.unwrap_or(default_api))).await.context("REST port")?;
    let grpc_address = grpc.local_addr()?.to_string();
    let server_url = format!("http://{}", api.local_addr()?);
    let mut config = EngineConfig::new(identity.tenant_id, TokenKey::new(&identity.secret), grpc_address, server_url);
    if let Some(secs) = timing.heartbeat_timeout {
        config.heartbeat_timeout = Duration::from_secs(secs.max(5));
    }
    if let Some(secs) = timing.start_timeout {
        config.start_timeout = Duration::from_secs(secs.max(1));
    }
    let engine = Engine::new(pool.clone(), config.clone());
    let task = tokio::spawn(sfp_engine::serve(engine, grpc, api, shutdown));
    Ok(Running { config, task })
}

/// The database: an external one, or a private cluster that we start (and stop again).
struct Database {
    pool: PgPool,
    cluster: Option<Cluster>,
}

impl Database {
    async fn open(args: &DbArgs, sidecar: bool) -> anyhow::Result<Database> {
        let (url, cluster) = match (&args.database_url, &args.postgres_data_dir) {
            (Some(url), _) => (url.clone(), None),
            (None, dir) => {
                let dir = match dir {
                    Some(d) => d.clone(),
                    None if sidecar => default_data_dir(),
                    None => anyhow::bail!("give --database-url or --data-dir"),
                };
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let mut cluster = Cluster::open(ClusterOptions {
                    database: "sfp_engine".into(),
                    ..ClusterOptions::new(dir.join("postgres"))
                })
                .await?;
                cluster.start().await?;
                (cluster.local_url(), Some(cluster))
            }
        };
        let pool = sfp_postgres::pool_options(20).connect(&url).await?;
        sfp_postgres::migrate(&pool).await?;
        Ok(Database { pool, cluster })
    }

    async fn close(self) {
        self.pool.close().await;
        if let Some(cluster) = self.cluster
            && let Err(e) = cluster.stop().await
        {
            tracing::warn!(error = %e, "could not stop PostgreSQL");
        }
    }
}

/// Where the sidecar keeps its own database when given none: reused by every later start.
fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SFP_ENGINE_DATA_DIR") {
        return PathBuf::from(dir);
    }
    // As root the cluster runs as `postgres`, which cannot enter /root: use a shared place.
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/sfp-engine");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/sfp-engine")
}

async fn sidecar(cli: Cli, handshake: &Path) -> anyhow::Result<()> {
    let db = Database::open(&cli.db, true).await?;
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone());
    // The parent closes our standard input when it goes away (or dies).
    let stdin_closed = shutdown.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        use std::io::Read;
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        stdin_closed.cancel();
    });
    let running = start(&db.pool, &cli.ports, &cli.timing, 0, 0, shutdown.clone()).await?;
    let key = running.config.token_key.clone();
    let token = key.mint(
        running.config.tenant_id,
        &running.config.server_url,
        &running.config.grpc_address,
        Duration::from_secs(365 * 86_400),
    )?;
    let body = serde_json::json!({
        "token": token,
        "tenant_id": running.config.tenant_id.to_string(),
        "grpc_address": running.config.grpc_address,
        "api_url": running.config.server_url,
    });
    write_atomically(handshake, serde_json::to_vec(&body)?.as_slice())?;
    tracing::info!(grpc = %running.config.grpc_address, api = %running.config.server_url, "sidecar ready");
    running.task.await??;
    db.close().await;
    Ok(())
}

/// Writes the handshake so that a reader polling for it sees all of it or nothing, and
/// leaves no other file in its folder.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = format!(".sfp-engine-handshake-{}.tmp", std::process::id());
    let elsewhere = std::env::temp_dir().join(&name);
    std::fs::write(&elsewhere, bytes)?;
    if std::fs::rename(&elsewhere, path).is_ok() {
        return Ok(());
    }
    // Another filesystem: write next to it and rename there.
    let _ = std::fs::remove_file(&elsewhere);
    let beside = path.with_file_name(name);
    std::fs::write(&beside, bytes)?;
    std::fs::rename(&beside, path).context("writing the handshake file")?;
    Ok(())
}

fn watch_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        shutdown.cancel();
    });
}
