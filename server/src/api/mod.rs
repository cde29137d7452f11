//! The HTTP API: routes under `/sfp/api`, `/metrics`, and the layers every request passes.

pub mod error;
mod gotrue;
mod health;
mod identity;
pub mod json;
mod layers;
pub mod metrics;
mod projects;
mod teams;
mod users;

use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::config::ApiConfig;
use crate::state::AppState;

/// The whole router, with its layers. Tests can drive it without a socket.
pub fn router(state: AppState, config: &ApiConfig) -> Router {
    let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
    // Every route here needs a rule in `auth::access::RULES`; the middleware enforces it.
    let api = Router::new()
        .route("/", get(health::health))
        .route("/ping", get(health::ping))
        .route("/auth/admin/login", post(identity::admin_login))
        .route("/auth/callback", post(identity::callback))
        .route("/users/me", get(identity::me))
        .route("/application-tokens", get(identity::list_tokens).post(identity::create_token))
        .route("/application-tokens/{token}", delete(identity::revoke_token))
        .route("/audit", get(identity::audit))
        .route("/users", get(users::list).post(users::create).delete(users::delete))
        .route("/users/{email}", get(users::get).put(users::update))
        .route("/teams", get(teams::list).post(teams::create))
        .route("/teams/{slug}", delete(teams::delete))
        .route("/teams/{slug}/members", get(teams::members).post(teams::add_member))
        .route("/teams/{slug}/members/{email}", delete(teams::remove_member))
        .route("/teams/{slug}/members/{email}/role", put(teams::set_member_role))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/{*identifier}", get(projects::get))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::access::authorize));
    Router::new()
        .nest("/sfp/api", api)
        .nest("/auth/v1", gotrue::router())
        .route("/metrics", get(metrics::scrape))
        .fallback(layers::not_found)
        // Innermost first: each `layer` wraps everything above it.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(layers::panic_response))
        .layer(axum::middleware::from_fn(move |req, next| layers::deadline(timeout, req, next)))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .layer(axum::middleware::from_fn(layers::json_errors))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(layers::request_span)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::ERROR)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Serves the API on an already bound listener until `shutdown` is cancelled, then finishes
/// the requests in flight.
pub async fn run(
    config: ApiConfig,
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state, &config);
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
