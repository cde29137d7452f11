//! Logging: structured JSON lines (tracing) for the server, plain warnings for short commands.

use std::fs::OpenOptions;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;

/// Keeps logging set up for the life of the server.
pub struct TelemetryGuard;

/// JSON log lines to `<data dir>/logs/sfp-server.log`, and to standard error when
/// `log.stderr` is set. `RUST_LOG` overrides `log.level`.
pub fn init_for_server(config: &Config) -> anyhow::Result<TelemetryGuard> {
    let dir = config.data_dir.join("logs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("sfp-server.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let to_file = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_writer(Mutex::new(file))
        .with_filter(filter());
    let to_stderr = config
        .log
        .stderr
        .then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter()));
    tracing_subscriber::registry().with(to_file).with(to_stderr).try_init()?;
    Ok(TelemetryGuard)
}

/// Warnings and errors to standard error, for commands that print their own results.
pub fn init_for_command() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
