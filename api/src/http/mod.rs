//! The HTTP surface: the axum router, GraphQL over HTTP and WebSocket ([`graphql`]),
//! GraphiQL ([`graphiql`]), and the process-level endpoints (`/health`, `/ready`,
//! `/metrics`). One [`AppState`] is handed to every handler.

mod graphiql;
mod graphql;
mod websocket;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;

use crate::graphql::error::Code;
use serde_json::json;

use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::graphql::KeystoneSchema;
use crate::graphql::guardrails::{Admission, DocumentLimits};

pub use self::websocket::{Sockets, WebSocketLimits};

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub schema: KeystoneSchema,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    /// Longest a query over HTTP may run (mutations always finish).
    pub request_timeout: Duration,
    /// Checked on the parsed document before validation (over HTTP, on a blocking thread).
    pub document_limits: DocumentLimits,
    pub websocket: WebSocketLimits,
    /// Connections and subscriptions open, for the WebSocket limits.
    pub sockets: Arc<Sockets>,
    /// Turns `true` when the server shuts down: WebSocket connections close with 1001.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// What the router serves besides the API.
pub struct RouterOptions {
    pub max_body_bytes: usize,
    /// Serve GraphiQL at `/`.
    pub graphiql: bool,
    /// Browser origins allowed to call the API (CORS); none: same-origin only.
    pub cors_origins: Vec<HeaderValue>,
}

/// Counters served at `/metrics` (Prometheus text format).
#[derive(Debug, Default)]
pub struct Metrics {
    sql_statements: AtomicU64,
    graphql_requests: AtomicU64,
}

impl Metrics {
    /// Called by the database pool for every statement it runs.
    pub fn count_statement(&self) {
        self.sql_statements.fetch_add(1, Ordering::Relaxed);
    }

    fn count_request(&self) {
        self.graphql_requests.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn router(state: AppState, options: RouterOptions) -> Router {
    let mut router = Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/graphql/ws", get(websocket::websocket))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics));
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

async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let body = format!(
        "# HELP keystone_sql_statements_total SQL statements run by the server's pool.\n\
         # TYPE keystone_sql_statements_total counter\n\
         keystone_sql_statements_total {}\n\
         # HELP keystone_graphql_requests_total GraphQL requests over HTTP.\n\
         # TYPE keystone_graphql_requests_total counter\n\
         keystone_graphql_requests_total {}\n",
        m.sql_statements.load(Ordering::Relaxed),
        m.graphql_requests.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
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
