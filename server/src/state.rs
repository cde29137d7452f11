//! What every request handler can reach.

use std::sync::Arc;

use sqlx::PgPool;

use crate::api::metrics::Metrics;
use crate::auth::AuthState;
use crate::credentials::Credentials;
use crate::health::HealthChecks;
use crate::tasks::Tasks;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Metrics,
    pub health: HealthChecks,
    pub auth: Arc<AuthState>,
    pub tasks: Tasks,
    pub credentials: Arc<Credentials>,
}

impl axum::extract::FromRef<AppState> for Metrics {
    fn from_ref(state: &AppState) -> Metrics {
        state.metrics.clone()
    }
}
