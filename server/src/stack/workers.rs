//! The embedded stack's workers: one standard and one long-running worker (by default) in
//! the server's own process, speaking the Hatchet protocol to the engine like any other
//! worker. Each step still runs the sfp CLI as a process of its own.

use std::time::Duration;

use anyhow::Context;
use sfp_protocol::client::{ClientConfig, TlsStrategy};
use sfp_workers::{WorkerConfig, tools};
use sfp_workflows::{Pool, SourcePolicy};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::data_dir::DataDir;
use crate::config::Config;

pub struct RunningWorkers {
    pub tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    pub stop: CancellationToken,
}

pub fn start(
    config: &Config,
    data: &DataDir,
    token: &str,
    registry: Option<&super::registry::RegistryCredentials>,
    control_plane: sfp_workers::credentials::ControlPlane,
) -> anyhow::Result<RunningWorkers> {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let w = &config.workers;
    if w.standard + w.long_running == 0 {
        return Ok(RunningWorkers { tasks, stop });
    }
    let work_root = w.work_dir.clone().unwrap_or_else(|| data.path("work"));
    let search_path = std::env::var("PATH").unwrap_or_default();
    let sources = SourcePolicy { allow_local: config.tasks.allow_local_repositories };
    let mut toolbox = tools::locate(w.sfp_bin.as_deref(), &search_path, work_root, sources)
        .context("the embedded workers cannot run steps (set workers.standard = 0 and workers.long_running = 0 to run without them)")?;
    toolbox.control_plane = Some(control_plane);
    if let Some(r) = registry {
        toolbox.registries.push(sfp_workers::step::RegistryLogin {
            url: r.url.clone(),
            username: r.username.clone(),
            password: r.password.clone(),
        });
    }
    for (pool, count, slots) in
        [(Pool::Standard, w.standard, w.standard_slots), (Pool::LongRunning, w.long_running, w.long_running_slots)]
    {
        for i in 0..count {
            let worker = WorkerConfig {
                client: ClientConfig {
                    token: token.to_string(),
                    grpc_address: None,
                    server_url: None,
                    tls: TlsStrategy::None,
                },
                pool,
                name: format!("embedded-{pool}-{}", i + 1),
                slots: slots.max(1),
                tools: toolbox.clone(),
                heartbeat_interval: Duration::from_secs(4),
                drain_timeout: Duration::from_secs(w.drain_timeout_secs),
            };
            tasks.push(tokio::spawn(sfp_workers::run(worker, stop.clone())));
        }
    }
    Ok(RunningWorkers { tasks, stop })
}
