//! The instance's database: the managed cluster in the data folder, or an external one.

use anyhow::Context;
use sfp_postgres::{Cluster, ClusterOptions, StartOutcome};
use sqlx::PgPool;

use crate::config::Config;

/// A connected, migrated database and, in embedded mode, the cluster we run.
pub struct Database {
    pub pool: PgPool,
    pub cluster: Option<Cluster>,
}

pub fn cluster_options(config: &Config) -> ClusterOptions {
    ClusterOptions {
        dir: config.postgres_dir(),
        bin_dir: config.postgres.bin_dir.clone(),
        port: config.postgres.port,
        database: config.postgres.database.clone(),
        os_user: config.postgres.os_user.clone(),
    }
}

/// Brings the database up: starts (creating on first use) the managed cluster unless an
/// external `database_url` is configured, connects, and applies pending migrations.
pub async fn bring_up(config: &Config, progress: impl Fn(String)) -> anyhow::Result<Database> {
    let (url, cluster) = match &config.database_url {
        Some(url) => {
            progress("postgres: using the external database from database_url".into());
            (url.clone(), None)
        }
        None => {
            let mut cluster = Cluster::open(cluster_options(config)).await.context("preparing PostgreSQL")?;
            if cluster.created() {
                progress(format!("postgres: created a new cluster in {} (initdb)", cluster.dir().display()));
            } else {
                progress(format!("postgres: reusing the cluster in {}", cluster.dir().display()));
            }
            match cluster.start().await.context("starting PostgreSQL")? {
                StartOutcome::Started => progress(format!("postgres: started on 127.0.0.1:{}", cluster.port())),
                StartOutcome::AlreadyRunning => {
                    progress(format!("postgres: already running on 127.0.0.1:{}, reusing it", cluster.port()))
                }
            }
            (cluster.local_url(), Some(cluster))
        }
    };
    let pool = connect(&url, config.postgres.max_connections).await?;
    let migrations = sfp_postgres::migrate(&pool).await.context("applying migrations")?;
    if migrations.applied_now > 0 {
        progress(format!("database: applied {} migration(s), {} in total", migrations.applied_now, migrations.total));
    } else {
        progress(format!("database: schema up to date ({} migrations)", migrations.total));
    }
    Ok(Database { pool, cluster })
}

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    sfp_postgres::pool_options(max_connections)
        .acquire_timeout(sfp_postgres::ACQUIRE_TIMEOUT)
        .connect(url)
        .await
        .context("connecting to PostgreSQL")
}
