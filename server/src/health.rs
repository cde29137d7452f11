//! Health of the instance's components, as reported by `GET /sfp/api` and `sfp-server status`.
//! Each running component registers a [`HealthCheck`]; the report lists exactly those.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentStatus {
    Up,
    Starting,
    Degraded,
    Down,
}

/// One component's state plus whatever facts it reports (latency, counts, versions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentHealth {
    pub status: ComponentStatus,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ComponentHealth {
    pub fn new(status: ComponentStatus) -> Self {
        ComponentHealth { status, details: serde_json::Map::new() }
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.details.insert(key.to_owned(), serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
        self
    }
}

pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = ComponentHealth> + Send + 'a>>;

/// A component that can say how it is.
pub trait HealthCheck: Send + Sync {
    fn name(&self) -> &str;
    fn check(&self) -> CheckFuture<'_>;
}

/// The whole instance's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    pub version: String,
    /// `ok` when every component is up, `degraded` otherwise.
    pub status: String,
    pub components: BTreeMap<String, ComponentHealth>,
}

impl HealthReport {
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The checks of the running components.
#[derive(Clone, Default)]
pub struct HealthChecks {
    checks: Vec<Arc<dyn HealthCheck>>,
}

impl HealthChecks {
    pub fn add(&mut self, check: Arc<dyn HealthCheck>) {
        self.checks.push(check);
    }

    /// Runs every check concurrently; a check that takes over 2 s counts as down.
    pub async fn report(&self) -> HealthReport {
        let futures = self.checks.iter().map(|c| async move {
            let result = tokio::time::timeout(Duration::from_secs(2), c.check()).await;
            let health = result.unwrap_or_else(|_| {
                ComponentHealth::new(ComponentStatus::Down).with("error", "health check timed out")
            });
            (c.name().to_owned(), health)
        });
        let components: BTreeMap<_, _> = futures_util::future::join_all(futures).await.into_iter().collect();
        let ok = components.values().all(|c| c.status == ComponentStatus::Up);
        HealthReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            status: if ok { "ok" } else { "degraded" }.to_owned(),
            components,
        }
    }
}

/// The database: reachable, how fast, which schema version.
pub struct DatabaseCheck {
    pool: PgPool,
    external: bool,
}

impl DatabaseCheck {
    pub fn new(pool: PgPool, external: bool) -> Self {
        DatabaseCheck { pool, external }
    }
}

impl HealthCheck for DatabaseCheck {
    fn name(&self) -> &str {
        "database"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let probe: Result<(uuid::Uuid, i64), sqlx::Error> = sqlx::query_as(
                "SELECT (SELECT instance_id FROM app.instance), \
                        (SELECT count(*) FROM public._sqlx_migrations WHERE success)",
            )
            .fetch_one(&self.pool)
            .await;
            let mode = if self.external { "external" } else { "embedded" };
            match probe {
                Ok((instance_id, migrations)) => ComponentHealth::new(ComponentStatus::Up)
                    .with("latency_ms", (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0)
                    .with("migrations", migrations)
                    .with("instance_id", instance_id)
                    .with("mode", mode),
                Err(e) => {
                    tracing::warn!(error = %e, "database health check failed");
                    ComponentHealth::new(ComponentStatus::Down).with("error", "database unreachable").with("mode", mode)
                }
            }
        })
    }
}
