//! The HTTP API: routes under `/sfp/api`, `/metrics`, and the layers every request passes.

mod doc_query;
mod doc_store;
mod environment_locks;
mod environments;
pub mod error;
mod gotrue;
mod gotrue_admin;
mod health;
mod identity;
mod integrations;
pub mod json;
pub mod key_value;
mod layers;
pub mod lock_wait;
pub mod locks;
pub mod metrics;
mod paging;
mod pipeline_triggers;
pub(crate) mod pipelines;
mod projects;
mod salesforce;
mod tasks;
mod teams;
mod users;
mod workers;
pub mod write_batch;

use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ApiConfig;
use crate::state::AppState;

/// The `/sfp/api` routes, registered through their OpenAPI annotations so the document and
/// the router cannot disagree. Every route also needs a rule in `auth::access::RULES`.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::health))
        .routes(routes!(health::ping))
        .routes(routes!(identity::admin_login))
        .routes(routes!(identity::callback))
        .routes(routes!(identity::me))
        .routes(routes!(identity::list_tokens, identity::create_token))
        .routes(routes!(identity::revoke_token))
        .routes(routes!(identity::audit))
        .routes(routes!(users::list, users::create, users::delete))
        .routes(routes!(users::get, users::update))
        .routes(routes!(teams::list, teams::create))
        .routes(routes!(teams::delete))
        .routes(routes!(teams::members, teams::add_member))
        .routes(routes!(teams::remove_member))
        .routes(routes!(teams::set_member_role))
        .routes(routes!(projects::list, projects::create))
        .routes(routes!(key_value::list, key_value::create))
        .routes(routes!(key_value::upsert))
        .routes(routes!(key_value::increment))
        .routes(routes!(doc_store::list))
        .routes(routes!(doc_store::collections, doc_store::create_collection))
        .routes(routes!(doc_store::collection, doc_store::delete_collection))
        .routes(routes!(doc_store::append_changelog))
        .routes(routes!(doc_query::query))
        .routes(routes!(locks::create))
        .routes(routes!(environments::list, environments::create))
        .routes(routes!(environments::orchestration_order))
        .routes(routes!(environments::get, environments::update, environments::delete))
        .routes(routes!(environment_locks::lock))
        .routes(routes!(environment_locks::ticket, environment_locks::unlock))
        .routes(routes!(tasks::list, tasks::submit))
        .routes(routes!(tasks::status))
        .routes(routes!(tasks::result))
        .routes(routes!(tasks::logs))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::stop_recurring))
        .routes(routes!(tasks::recurring_instances))
        .routes(routes!(pipelines::list, pipelines::define))
        .routes(routes!(pipelines::get))
        .routes(routes!(pipelines::run))
        .routes(routes!(pipelines::run_status))
        .routes(routes!(pipelines::approve))
        .routes(routes!(pipelines::reject))
        .routes(routes!(pipelines::replay))
        .routes(routes!(pipeline_triggers::list, pipeline_triggers::create))
        .routes(routes!(pipeline_triggers::delete))
        .routes(routes!(pipeline_triggers::event))
        .routes(routes!(salesforce::register))
        .routes(routes!(salesforce::register_sandbox))
        .routes(routes!(salesforce::list))
        .routes(routes!(salesforce::get, salesforce::delete))
        .routes(routes!(salesforce::test_connection))
        .routes(routes!(salesforce::frontdoor))
        .routes(routes!(integrations::list, integrations::create))
        .routes(routes!(integrations::delete))
        .routes(routes!(integrations::credentials, integrations::credentials_post))
        .routes(routes!(integrations::repository_token))
        .routes(routes!(workers::issue))
        .routes(routes!(workers::exchange))
        .routes(routes!(workers::release))
        .routes(routes!(workers::list_tokens, workers::create_token))
        .routes(routes!(workers::revoke_token))
        .routes(routes!(workers::access_log))
}

/// Lock paths hold a repository that may contain `/`.
const LOCK_ROUTE: &str = "/locks/{*path}";

/// Document keys are paths (`releases/2026/r1`).
const DOC_ROUTE: &str = "/doc-store/docs/{*key}";

/// Keys may contain `/` too (`releases/2026/r1`).
const KEY_ROUTE: &str = "/key-value/{*key}";

/// The project route's identifier may contain `/` (`org/repo`): axum needs a catch-all
/// segment there, which OpenAPI has no notation for, so it is routed by hand and documented
/// from its annotation.
const PROJECT_ROUTE: &str = "/projects/{*identifier}";

/// The OpenAPI document of everything under `/sfp/api` (served at `/sfp/apidocs-json`,
/// committed as `server/openapi.json`, checked for drift by the tests).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/sfp/api", api_routes()).split_for_parts();
    let (_, project) = OpenApiRouter::<AppState>::new()
        .nest(
            "/sfp/api",
            OpenApiRouter::new()
                .routes(routes!(projects::get))
                .routes(routes!(key_value::get, key_value::update, key_value::delete))
                .routes(routes!(doc_store::get, doc_store::put, doc_store::delete))
                .routes(routes!(locks::get, locks::delete)),
        )
        .split_for_parts();
    doc.merge(project);
    doc
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "sfp-server", description = "The control plane for Salesforce DevOps: identity, projects, tasks, \
        documents, key-values, environments and locks, credentials and webhooks. Every error answers \
        `{\"code\", \"message\"}`."),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A user's JWT (GoTrue-compatible) or an application token (sfp_at_...)"))
                    .build(),
            ),
        );
    }
}

async fn apidocs() -> axum::response::Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(|| openapi().to_pretty_json().unwrap_or_default());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

/// The whole router, with its layers. Tests can drive it without a socket.
pub fn router(state: AppState, config: &ApiConfig) -> Router {
    let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
    let (api, _) = api_routes().split_for_parts();
    let api = api
        .route(PROJECT_ROUTE, get(projects::get))
        .route(KEY_ROUTE, get(key_value::get).put(key_value::update).delete(key_value::delete))
        .route(DOC_ROUTE, get(doc_store::get).post(doc_store::put).delete(doc_store::delete))
        .route(LOCK_ROUTE, get(locks::get).delete(locks::delete))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::access::authorize));
    Router::new()
        .nest("/sfp/api", api)
        .route("/sfp/apidocs-json", get(apidocs))
        .nest("/auth/v1", gotrue::router(state.clone()))
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
    // Expired keys are invisible at once; this deletes them from the table.
    tokio::spawn(key_value::sweep_loop(state.pool.clone(), std::time::Duration::from_secs(60), shutdown.clone()));
    tokio::spawn(state.credentials.clone().sweep_loop(std::time::Duration::from_secs(30), shutdown.clone()));
    // Identities are reused for a few seconds only while this hears every change to them.
    let (auth, pool, stop) = (state.auth.clone(), state.pool.clone(), shutdown.clone());
    tokio::spawn(async move { auth.identities.listen(pool, stop).await });
    let app = router(state, &config);
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
