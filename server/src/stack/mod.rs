//! The embedded stack and the commands that manage it: `start`, `stop`, `status`, `db`.

mod data_dir;
mod database;
mod engine;
mod registry;
mod status;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub use data_dir::{ADMIN_CREDENTIALS_FILE, AdminCredentials, DataDir, RuntimeInfo};
pub use database::{cluster_options, connect};
pub use status::{StackStatus, status};

use crate::api;
use crate::api::lock_wait::LockEvents;
use crate::api::metrics::Metrics;
use crate::api::write_batch::WriteBatches;
use crate::auth::AuthState;
use crate::auth::audit::AuditLog;
use crate::config::Config;
use crate::health::{DatabaseCheck, HealthChecks};
use crate::state::{AppState, Services};
use crate::tasks::{EngineLink, Tasks};
use data_dir::API_KEYS_FILE;
use sfp_protocol::client::{ClientConfig, HatchetClient, TlsStrategy};

/// A progress line on standard output. One that cannot be written (whoever started us
/// closed the pipe) is dropped: `println!` would panic, and at shutdown that left the stack
/// running.
fn say(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// The base URL clients use for a listener address.
pub fn base_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    format!("http://{host}:{}", addr.port())
}

/// `sfp-server start`: runs the whole stack in the foreground until SIGINT or SIGTERM.
pub async fn start(config: Config) -> anyhow::Result<()> {
    let data = DataDir::create(&config.data_dir)?;
    let _lock = data.lock()?;
    say(format!("sfp-server {}: data folder {}", env!("CARGO_PKG_VERSION"), data.root().display()));
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone())?;

    let (admin, admin_created) = data.admin_credentials(&config.admin.email)?;
    let db = database::bring_up(&config, say).await?;

    let mut health = HealthChecks::default();
    health.add(Arc::new(DatabaseCheck::new(db.pool.clone(), db.cluster.is_none())));
    let engine_task = if config.engine.embedded {
        let running = engine::start(&config, &data, &db.pool, shutdown.clone()).await?;
        say(format!("engine: gRPC on {}, REST on {}", running.grpc_address, running.api_url));
        say(format!("  worker token in {}", data.path(engine::TOKEN_FILE).display()));
        health.add(Arc::new(engine::EngineCheck {
            api_url: running.api_url.clone(),
            grpc_address: running.grpc_address.clone(),
            client: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
        }));
        Some(running)
    } else {
        None
    };
    let registry = match (config.registry.embedded, registry::locate(&config)) {
        (true, Some(verdaccio)) => match registry::start(&config, &data, &verdaccio).await {
            Ok(r) => {
                say(format!(
                    "registry: {} (Verdaccio; the workers' login is in {})",
                    r.credentials.url,
                    data.path(registry::CREDENTIALS_FILE).display()
                ));
                health.add(Arc::new(registry::RegistryCheck {
                    url: r.credentials.url.clone(),
                    client: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
                }));
                Some(r)
            }
            Err(e) => {
                say(format!("registry: not started: {e:#}"));
                None
            }
        },
        (true, None) => {
            say("registry: not started: Verdaccio is not installed (scripts/setup installs it)".into());
            None
        }
        (false, _) => None,
    };
    let secrets = data.instance_secrets()?;
    let jwt_secret = config.auth.jwt_secret.clone().unwrap_or(secrets.jwt_secret);
    let audit_stop = CancellationToken::new();
    let (audit, audit_task) = AuditLog::start(db.pool.clone(), audit_stop.clone());
    let auth = Arc::new(AuthState::new(jwt_secret.as_bytes(), config.auth.clone(), audit));
    crate::auth::bootstrap_admin(&db.pool, &admin.email, &admin.password)
        .await
        .context("creating the administrator")?;
    let sources = sfp_workflows::SourcePolicy { allow_local: config.tasks.allow_local_repositories };
    let engine_token = engine_task
        .as_ref()
        .map(|e| (e.token.clone(), TlsStrategy::None))
        .or_else(|| config.engine.token.clone().map(|t| (t, config.engine.tls.parse().unwrap_or(TlsStrategy::Tls))));
    let link = match &engine_token {
        Some((token, tls)) => {
            let client = HatchetClient::new(&ClientConfig {
                token: token.clone(),
                grpc_address: None,
                server_url: None,
                tls: *tls,
            })
            .context("the engine token")?;
            Some(EngineLink::new(client))
        }
        None => None,
    };
    let approvals_stop = CancellationToken::new();
    let approvals = link.as_ref().map(|l| {
        tokio::spawn(crate::pipelines::approvals::run(l.client().clone(), db.pool.clone(), approvals_stop.clone()))
    });
    let schedules = link.as_ref().map(|l| {
        tokio::spawn(crate::pipelines::schedules::run(db.pool.clone(), l.clone(), sources, approvals_stop.clone()))
    });
    let tasks = Tasks::new(db.pool.clone(), link, sources);
    let tasks_stop = CancellationToken::new();
    let tasks_loop = tokio::spawn(tasks.clone().run(tasks_stop.clone()));
    let vault = crate::vault::Vault::open(&config.vault_keys_file(), &db.pool)
        .await
        .context("opening the vault (the key file of the stored credentials)")?;
    say(format!(
        "vault: keys in {} (keep a copy: without it stored credentials are lost)",
        vault.keys_file().display()
    ));
    let credentials = Arc::new(crate::credentials::Credentials::new(db.pool.clone(), Arc::new(vault), &config));

    let addr = SocketAddr::new(config.api.host, config.api.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the API to {addr}"))?;
    let url = base_url(listener.local_addr()?);
    // The embedded workers fetch org credentials from this API with a token of their own.
    crate::credentials::worker_tokens::revoke_embedded(&db.pool).await?;
    let (_, worker_token) =
        crate::credentials::worker_tokens::create(&db.pool, "embedded workers", config.vault.worker_token_days, true)
            .await?;
    let control_plane = sfp_workers::credentials::ControlPlane::new(&url, worker_token.expose());
    let workers = match engine_task.as_ref().map(|e| e.token.as_str()).or(config.engine.token.as_deref()) {
        Some(token) => {
            match workers::start(&config, &data, token, registry.as_ref().map(|r| &r.credentials), control_plane) {
                Ok(w) => {
                    if !w.tasks.is_empty() {
                        say(format!(
                            "workers: {} standard, {} long-running (sfp CLI steps)",
                            config.workers.standard, config.workers.long_running
                        ));
                    }
                    Some(w)
                }
                Err(e) => {
                    // The API and engine are still useful (and external workers can connect).
                    say(format!("workers: not started: {e:#}"));
                    tracing::warn!(error = %format!("{e:#}"), "the embedded workers were not started");
                    None
                }
            }
        }
        None => None,
    };
    let metrics = Metrics::new();
    metrics.with_registry(|r| tasks.metrics.register(r));
    let writes = WriteBatches::start(&db.pool);
    metrics.with_registry(|r| writes.register(r));
    let reads = sfp_postgres::StatementPool::beside(&db.pool, crate::state::READ_CONNECTIONS);
    let recheck = std::time::Duration::from_secs(config.api.lock_wait_recheck_secs);
    let lock_events = LockEvents::start(db.pool.clone(), shutdown.clone(), recheck);
    let state = AppState::new(Services {
        pool: db.pool.clone(),
        metrics,
        health,
        auth,
        tasks,
        credentials,
        writes,
        reads,
        lock_events,
    });
    let api_task = tokio::spawn(api::run(config.api.clone(), listener, state, shutdown.clone()));
    say(format!("api: listening on {url}/sfp/api"));

    data.write_runtime(&RuntimeInfo {
        pid: std::process::id(),
        api_url: url.clone(),
        started_at: chrono::Utc::now(),
        database: if db.cluster.is_some() { "embedded" } else { "external" }.into(),
    })?;
    if admin_created {
        say(format!("admin login (first start): {} / {}", admin.email, admin.password));
        say(format!("  kept in {}", data.path(ADMIN_CREDENTIALS_FILE).display()));
    } else {
        say(format!("admin login: {} (password in {})", admin.email, data.path(ADMIN_CREDENTIALS_FILE).display()));
    }
    say(format!("supabase keys (anon, service_role) in {}", data.path(API_KEYS_FILE).display()));
    say(format!("ready: {url}"));
    tracing::info!(url = %url, "sfp-server ready");

    let mut api_task = api_task;
    let api_result = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut api_task => Some(result),
    };
    say("stopping: draining requests".into());
    shutdown.cancel();
    let api_result = match api_result {
        Some(result) => result,
        None => match tokio::time::timeout(Duration::from_secs(30), &mut api_task).await {
            Ok(result) => result,
            Err(_) => {
                api_task.abort();
                Ok(Ok(()))
            }
        },
    };
    if let Some(w) = workers {
        // Running steps finish (or are handed back) before the engine goes.
        w.stop.cancel();
        for t in w.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(config.workers.drain_timeout_secs + 10), t).await;
        }
    }
    tasks_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks_loop).await;
    approvals_stop.cancel();
    if let Some(a) = approvals {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
    if let Some(s) = schedules {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    if let Some(r) = registry {
        r.stop().await;
        say("registry: stopped".into());
    }
    audit_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), audit_task).await;
    if let Some(task) = engine_task.map(|e| e.task) {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Err(e))) => eprintln!("engine: stopped with an error: {e:#}"),
            Ok(_) => say("engine: stopped".into()),
            Err(_) => eprintln!("engine: did not stop within 30 s"),
        }
    }
    data.remove_runtime();
    db.pool.close().await;
    if let Some(cluster) = &db.cluster {
        match cluster.stop().await {
            Ok(_) => say("postgres: stopped".into()),
            Err(e) => eprintln!("postgres: could not stop: {e:#}"),
        }
    }
    say("stopped".into());
    api_result.context("the API task failed")?.context("the API server failed")?;
    Ok(())
}

fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        shutdown.cancel();
    });
    Ok(())
}

/// `sfp-server drain`: the engine stops assigning work; waits for the tasks in flight.
pub async fn drain(config: &Config, wait: Duration, resume: bool) -> anyhow::Result<engine::DrainState> {
    let data = DataDir::existing(&config.data_dir)?;
    anyhow::ensure!(data.running_pid().is_some(), "no sfp-server is running on {}", data.root().display());
    let mut last = None;
    let state = engine::drain(&data, wait, resume, |s| {
        if last != Some(s.in_flight) && !s.drained {
            say(format!("draining: {} tasks still running", s.in_flight));
        }
        last = Some(s.in_flight);
    })
    .await?;
    if resume {
        say("engine: assigning work again".into());
    } else if state.drained {
        say("engine: drained (no task running, none will be assigned)".into());
    }
    Ok(state)
}

/// `sfp-server stop`: asks the server running on the data folder to stop, waits until it
/// is gone, and stops a PostgreSQL cluster left running by a crashed server.
pub async fn stop(config: Config, wait: Duration, drain_wait: Duration) -> anyhow::Result<()> {
    let data = DataDir::existing(&config.data_dir)?;
    if let Some(pid) = data.running_pid() {
        if config.engine.embedded && !drain_wait.is_zero() {
            // Running steps finish first; queued work stays queued for the next start.
            match drain(&config, drain_wait, false).await {
                Ok(state) if !state.drained => say(format!(
                    "{} tasks still running after {} s; stopping anyway",
                    state.in_flight,
                    drain_wait.as_secs()
                )),
                Ok(_) => {}
                Err(e) => eprintln!("could not drain the engine ({e:#}); stopping anyway"),
            }
        }
        say(format!("stopping sfp-server (pid {pid})"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("signalling pid {pid}"))?;
        if !sfp_postgres::wait_for_exit(pid, wait).await {
            anyhow::bail!("sfp-server (pid {pid}) did not stop within {} s", wait.as_secs());
        }
    } else {
        say(format!("no sfp-server is running on {}", data.root().display()));
    }
    if config.database_url.is_none()
        && let Some(cluster) = sfp_postgres::Cluster::find(cluster_options(&config)).await?
        && cluster.stop().await?
    {
        say("postgres: stopped a cluster left running".into());
    }
    if registry::stop_leftover(&data).await {
        say("registry: stopped a Verdaccio left running".into());
    }
    data.remove_runtime();
    say("stopped".into());
    Ok(())
}
