//! The HTTP surface: the axum router, GraphQL over HTTP and WebSocket ([`graphql`]),
//! GraphiQL ([`graphiql`]), and the process-level endpoints (`/health`, `/ready`,
//! `/metrics`). One [`AppState`] is handed to every handler.

mod client;
mod graphiql;
mod graphql;
mod hooks;
mod websocket;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;

use crate::graphql::error::Code;
use crate::telemetry;
use serde_json::json;

use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::graphql::engine::Engine;
use crate::graphql::guardrails::Admission;

pub use self::hooks::Hooks;
pub use self::websocket::{Sockets, WebSocketLimits};

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    /// The schema, and what every operation passes around it.
    pub engine: Engine,
    /// The stored documents, and whether only they run (also in the schema's data).
    pub documents: Arc<crate::graphql::documents::TrustedDocuments>,
    /// The bearer token `/metrics` requires, if any.
    pub metrics_token: Option<Arc<str>>,
    pub admission: Arc<Admission>,
    pub websocket: WebSocketLimits,
    /// Connections and subscriptions open, for the WebSocket limits.
    pub sockets: Arc<Sockets>,
    /// Turns `true` when the server shuts down: WebSocket connections close with 1001.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Proxies whose forwarding headers name the client ([`client`]).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Push webhooks ([`hooks`]).
    pub hooks: Arc<Hooks>,
}

/// What the router serves besides the API.
pub struct RouterOptions {
    pub max_body_bytes: usize,
    /// Serve GraphiQL at `/`.
    pub graphiql: bool,
    /// Browser origins allowed to call the API (CORS); none: same-origin only.
    pub cors_origins: Vec<HeaderValue>,
    /// Serve `/metrics` here (else [`metrics_router`] serves it on its own address).
    pub metrics: bool,
}

pub fn router(state: AppState, options: RouterOptions) -> Router {
    let mut router = Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/graphql/ws", get(websocket::websocket))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route(
            "/hooks/git/{app}",
            axum::routing::post(hooks::receive)
                .layer(DefaultBodyLimit::max(crate::domain::webhooks::MAX_BODY)),
        );
    if options.metrics {
        router = router.route("/metrics", get(metrics));
    }
    if options.graphiql {
        router = router
            .route("/", get(graphiql::page))
            .route("/graphiql/{file}", get(graphiql::serve_asset));
    }
    if !options.cors_origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(options.cors_origins))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
                .max_age(Duration::from_secs(600)),
        );
    }
    router
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// A panic in a handler (a bug) becomes a generic 500 with a correlation id; the details go
/// to the log only.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    let error = crate::graphql::error::internal(format!("handler panicked: {detail}"));
    let body = json!({ "errors": [{
        "message": error.message,
        "extensions": { "code": Code::Internal.as_str() },
    }] });
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

/// `/metrics` alone, for `--metrics-bind`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The Prometheus scrape: every metric, with what is read at this moment (the pool,
/// WebSocket occupancy, deployments by status). Requires the metrics token when one is set.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !presented.is_some_and(|presented| same_secret(presented, token)) {
            telemetry::metrics().authentication_failed("metrics");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "/metrics requires the metrics token (--metrics-token-file)\n",
            )
                .into_response();
        }
    }
    let scrape = telemetry::Scrape {
        pool: pool_connections(&state.db),
        websocket_connections: state.sockets.connections(),
        subscriptions: state.sockets.subscriptions(),
        deployments: telemetry::unmeasured(crate::store::deployment_queue(&state.db))
            .await
            .ok(),
    };
    let body = telemetry::metrics().render(scrape);
    ([(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)], body).into_response()
}

/// Compares secrets by their digests, so the time taken says nothing about either.
fn same_secret(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.as_bytes())
}

/// The pool's connections in use and idle.
fn pool_connections(db: &DatabaseConnection) -> Option<(u32, u32)> {
    let (size, idle) = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        sea_orm::DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => return None,
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX);
    Some((size.saturating_sub(idle), idle))
}

/// The process is up and serving HTTP. Never touches the database.
async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and its schema is exactly what this binary expects: 200 when ready
/// for traffic, 503 with the reason otherwise.
async fn ready(State(state): State<AppState>) -> Response {
    if let Err(error) = state.db.ping().await {
        tracing::warn!(%error, "readiness: database unreachable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "database": "unreachable" })),
        )
            .into_response();
    }
    match migration::history::read(&state.db).await {
        Ok(history) => {
            let pending: Vec<&str> = history.pending().collect();
            let ready = pending.is_empty() && history.unknown.is_empty();
            let body = json!({
                "status": if ready { "ready" } else { "unavailable" },
                "database": "ok",
                "migrations": { "pending": pending, "unknown": history.unknown },
            });
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, Json(body)).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "readiness: cannot read migration history");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "database": "error" })),
            )
                .into_response()
        }
    }
}
