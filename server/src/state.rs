//! What every request handler can reach.

use std::sync::Arc;

use sqlx::PgPool;

use crate::api::lock_wait::LockEvents;
use crate::api::metrics::Metrics;
use crate::api::write_batch::WriteBatches;
use crate::auth::AuthState;
use crate::credentials::Credentials;
use crate::health::HealthChecks;
use crate::tasks::Tasks;

/// Connections for the data stores' point reads, beside the main pool: with two cores,
/// more statements at once than this only queue inside PostgreSQL instead.
pub const READ_CONNECTIONS: usize = 8;

/// The services, shared: a clone is one reference count (axum clones the state for every
/// layer and extractor of every request; cloning each service's handles was 5–10 % of the
/// server's CPU per request).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub pool: PgPool,
    pub metrics: Metrics,
    pub health: HealthChecks,
    pub auth: Arc<AuthState>,
    pub tasks: Tasks,
    pub credentials: Arc<Credentials>,
    /// Concurrent key-value upserts and document writes, committed together.
    pub writes: WriteBatches,
    /// Connections for the data stores' point reads (`api::paging::read_one`).
    pub reads: sfp_postgres::StatementPool,
    /// Wakes requests that wait in a lock queue (`sfp server environment lock --wait`).
    pub lock_events: Arc<LockEvents>,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

impl axum::extract::FromRef<AppState> for Metrics {
    fn from_ref(state: &AppState) -> Metrics {
        state.metrics.clone()
    }
}
