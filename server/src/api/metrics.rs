//! Prometheus metrics of the HTTP API: request counts and latency histograms by route.
//! The registry is owned by the application state (no global recorder), so several
//! applications can live in one process, as they do in tests.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// The metrics registry and the HTTP instruments in it.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sfp");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by method, route and status", requests.clone());
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by method and route",
            latency.clone(),
        );
        Metrics { registry: Arc::new(Mutex::new(registry)), requests, latency }
    }

    /// Lets other parts of the product (engine, workers, database pool) add their metrics.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut registry)
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        self.with_registry(|r| prometheus_client::encoding::text::encode(&mut out, r))?;
        Ok(out)
    }
}

/// Middleware recording every request. Unmatched paths share one `route` label so that
/// scanners cannot blow up the number of series.
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    metrics.requests.get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status }).inc();
    metrics.latency.get_or_create(&RouteLabels { method, route }).observe(elapsed);
    response
}

/// `GET /metrics`
pub async fn scrape(State(state): State<crate::state::AppState>) -> Response {
    if let Err(e) = state.tasks.metrics.refresh(&state.pool).await {
        tracing::warn!(error = %e, "could not read the task gauges");
    }
    match state.metrics.render() {
        Ok(text) => {
            let mut response = Body::from(text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        Err(e) => ApiError::internal(e).into_response(),
    }
}
