//! `sfp-server status`: what runs on a data folder, as seen from outside the server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::data_dir::DataDir;
use super::database::cluster_options;
use crate::config::Config;
use crate::health::{ComponentHealth, ComponentStatus, HealthReport};

#[derive(Debug, Clone, Serialize)]
pub struct StackStatus {
    /// `running` (everything up), `partial` (something up, something not) or `stopped`.
    pub status: String,
    pub data_dir: String,
    pub components: BTreeMap<String, ComponentHealth>,
}

impl StackStatus {
    /// The exit code of `sfp-server status`: 0 running, 1 partial, 3 stopped (as LSB init
    /// scripts and `pg_ctl status` do).
    pub fn exit_code(&self) -> i32 {
        match self.status.as_str() {
            "running" => 0,
            "stopped" => 3,
            _ => 1,
        }
    }
}

pub async fn status(config: &Config) -> anyhow::Result<StackStatus> {
    let data = DataDir::existing(&config.data_dir)?;
    let mut components = BTreeMap::new();

    let pid = data.running_pid();
    let runtime = data.read_runtime();
    let server = match pid {
        Some(pid) => {
            let mut up = ComponentHealth::new(ComponentStatus::Up).with("pid", pid);
            if let Some(rt) = &runtime {
                up = up.with("api_url", &rt.api_url).with("started_at", rt.started_at);
            }
            up
        }
        None => ComponentHealth::new(ComponentStatus::Down),
    };
    components.insert("server".to_owned(), server);

    if let (Some(_), Some(rt)) = (pid, &runtime) {
        match fetch_health(&rt.api_url).await {
            Ok(report) => {
                components.insert(
                    "api".to_owned(),
                    ComponentHealth::new(ComponentStatus::Up).with("url", &rt.api_url).with("version", &report.version),
                );
                components.extend(report.components);
            }
            Err(e) => {
                components.insert(
                    "api".to_owned(),
                    ComponentHealth::new(ComponentStatus::Down).with("url", &rt.api_url).with("error", e.to_string()),
                );
            }
        }
    }
    if !components.contains_key("database") && config.database_url.is_none() {
        let database = match sfp_postgres::Cluster::find(cluster_options(config)).await? {
            Some(cluster) => {
                let status = if cluster.is_running().await? { ComponentStatus::Up } else { ComponentStatus::Down };
                ComponentHealth::new(status).with("mode", "embedded").with("port", cluster.port())
            }
            None => {
                ComponentHealth::new(ComponentStatus::Down).with("mode", "embedded").with("error", "not created yet")
            }
        };
        components.insert("database".to_owned(), database);
    }

    let up = components.values().filter(|c| c.status == ComponentStatus::Up).count();
    let status = if up == components.len() {
        "running"
    } else if up == 0 {
        "stopped"
    } else {
        "partial"
    };
    Ok(StackStatus { status: status.to_owned(), data_dir: data.root().display().to_string(), components })
}

async fn fetch_health(api_url: &str) -> anyhow::Result<HealthReport> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
    let report = client.get(format!("{api_url}/sfp/api")).send().await?.json::<HealthReport>().await?;
    Ok(report)
}
