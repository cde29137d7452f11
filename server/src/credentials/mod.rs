//! Everything that holds or hands out credentials: the vault, the Salesforce orgs, the
//! integrations and GitHub App tokens, worker tokens and the step tokens of just-in-time
//! delivery.

pub mod step_tokens;
pub mod worker_tokens;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::integrations::Integrations;
use crate::integrations::github::GithubApps;
use crate::salesforce::{Orgs, SalesforceClient};
use crate::vault::Vault;

pub struct Credentials {
    pub pool: PgPool,
    pub vault: Arc<Vault>,
    pub orgs: Orgs,
    pub integrations: Integrations,
    pub github: GithubApps,
    pub step_token_ttl_secs: u64,
}

impl Credentials {
    pub fn new(pool: PgPool, vault: Arc<Vault>, config: &Config) -> Credentials {
        let orgs = Orgs { pool: pool.clone(), vault: vault.clone(), client: SalesforceClient::new(&config.salesforce) };
        let integrations = Integrations { pool: pool.clone(), vault: vault.clone() };
        Credentials {
            pool,
            vault,
            orgs,
            integrations,
            github: GithubApps::new(&config.github.api_url),
            step_token_ttl_secs: config.vault.step_token_ttl_secs.max(5),
        }
    }

    /// Releases forgotten step tokens every `every` until `shutdown`.
    pub async fn sweep_loop(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.release_stale().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, "released the step tokens of finished or overdue steps"),
                Err(e) => tracing::warn!(error = %e, "releasing stale step tokens failed"),
            }
        }
    }
}
