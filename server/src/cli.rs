//! The `sfp-server` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::{stack, telemetry};

#[derive(Debug, Parser)]
#[command(name = "sfp-server", version, about = "The sfp-server control plane for Salesforce DevOps")]
pub struct Cli {
    /// The instance's data folder [default: .sfp, or SFP_DATA_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A configuration file [default: <data dir>/sfp.toml when present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the embedded stack (PostgreSQL, API) in the foreground; Ctrl-C stops it.
    Start {
        /// API port; 0 picks a free one [default: 3478]
        #[arg(long)]
        port: Option<u16>,
    },
    /// Stop the stack running on the data folder and wait until it is gone.
    Stop {
        /// Seconds to wait for the server to finish its work
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Seconds to wait for running tasks to finish before stopping (0: do not wait)
        #[arg(long, default_value_t = 60)]
        drain_timeout: u64,
    },
    /// Stop assigning new work to workers and wait until the running tasks have finished
    /// (exit code 0 drained, 2 tasks still running at the timeout).
    Drain {
        /// Seconds to wait for running tasks
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// End a drain: assign work again
        #[arg(long)]
        resume: bool,
    },
    /// Report each component of the stack (exit code 0 running, 1 partial, 3 stopped).
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Manage only the embedded PostgreSQL cluster of the data folder.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Manage the keys that encrypt stored credentials.
    Secrets {
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Run the built-in `release` pipeline (build, publish, fetch) on a sample sfdx project,
    /// against the stack running on the data folder, and follow it step by step.
    Example,
    /// Print the OpenAPI document of the API (the committed copy is server/openapi.json).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Make a new key-encryption key active and re-wrap every stored credential's data key
    /// under it, while the server runs. Prints a JSON report.
    Rotate {
        /// Afterwards, remove keys no stored credential uses any more from the key file
        #[arg(long)]
        retire: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Start the cluster (creating it on first use), apply migrations, print its URL.
    Start,
    /// Stop the cluster.
    Stop,
    /// Print the cluster's connection URL.
    Url,
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let port = match &cli.command {
        Command::Start { port } => *port,
        _ => None,
    };
    let overrides = Overrides { data_dir: cli.data_dir.clone(), config_file: cli.config.clone(), port };
    let config = Config::load(&overrides)?;
    match cli.command {
        Command::Openapi => {
            println!("{}", crate::api::openapi().to_pretty_json()?);
            Ok(0)
        }
        Command::Start { .. } => {
            let _guard = telemetry::init_for_server(&config)?;
            stack::start(config).await?;
            Ok(0)
        }
        Command::Stop { timeout, drain_timeout } => {
            telemetry::init_for_command();
            stack::stop(config, Duration::from_secs(timeout), Duration::from_secs(drain_timeout)).await?;
            Ok(0)
        }
        Command::Drain { timeout, resume } => {
            telemetry::init_for_command();
            let state = stack::drain(&config, Duration::from_secs(timeout), resume).await?;
            Ok(if resume || state.drained { 0 } else { 2 })
        }
        Command::Status { json } => {
            telemetry::init_for_command();
            let status = stack::status(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{} ({})", status.status, status.data_dir);
                for (name, component) in &status.components {
                    let status = serde_json::to_value(component.status)?;
                    let details = serde_json::Value::Object(component.details.clone());
                    println!("  {name}: {} {details}", status.as_str().unwrap_or("?"));
                }
            }
            Ok(status.exit_code())
        }
        Command::Example => {
            telemetry::init_for_command();
            crate::example::run(&config).await
        }
        Command::Secrets { action: SecretsAction::Rotate { retire } } => {
            telemetry::init_for_command();
            let report = rotate(&config, retire).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
        Command::Db { action } => {
            telemetry::init_for_command();
            db(config, action).await?;
            Ok(0)
        }
    }
}

/// Rotates the vault keys against the instance's database (the running server's, or the
/// embedded cluster started for the while).
async fn rotate(config: &Config, retire: bool) -> anyhow::Result<crate::vault::rotate::RotateReport> {
    let keys = config.vault_keys_file();
    anyhow::ensure!(keys.exists(), "no key file at {}: nothing to rotate", keys.display());
    let (pool, started) = match &config.database_url {
        Some(url) => (stack::connect(url, 2).await?, None),
        None => {
            let opts = stack::cluster_options(config);
            match sfp_postgres::Cluster::find(opts.clone()).await? {
                Some(cluster) => (stack::connect(&cluster.local_url(), 2).await?, None),
                None => {
                    let mut cluster = sfp_postgres::Cluster::open(opts).await?;
                    cluster.start().await?;
                    (stack::connect(&cluster.local_url(), 2).await?, Some(cluster))
                }
            }
        }
    };
    sfp_postgres::migrate(&pool).await?;
    let report = crate::vault::rotate::rotate(&keys, &pool, retire).await;
    pool.close().await;
    if let Some(cluster) = started {
        cluster.stop().await?;
    }
    Ok(report?)
}

async fn db(config: Config, action: DbAction) -> anyhow::Result<()> {
    anyhow::ensure!(config.database_url.is_none(), "database_url is set: this instance uses an external database");
    let opts = stack::cluster_options(&config);
    match action {
        DbAction::Start => {
            stack::DataDir::create(&config.data_dir)?;
            let mut cluster = sfp_postgres::Cluster::open(opts).await?;
            cluster.start().await?;
            let pool = stack::connect(&cluster.url(), 2).await?;
            sfp_postgres::migrate(&pool).await?;
            pool.close().await;
            println!("{}", cluster.url());
        }
        DbAction::Stop => {
            if let Some(cluster) = sfp_postgres::Cluster::find(opts).await? {
                cluster.stop().await?;
            }
        }
        DbAction::Url => {
            let cluster = sfp_postgres::Cluster::find(opts)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no cluster in {}", config.postgres_dir().display()))?;
            println!("{}", cluster.url());
        }
    }
    Ok(())
}
