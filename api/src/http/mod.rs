//! The HTTP surface: the axum router, GraphQL over HTTP and WebSocket ([`graphql`]),
//! GraphiQL ([`graphiql`]), and the process-level endpoints (`/health`, `/ready`,
//! `/metrics`). One [`AppState`] is handed to every handler.

mod graphiql;
mod graphql;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use serde_json::json;

use crate::graphql::KeystoneSchema;

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub schema: KeystoneSchema,
    pub metrics: Arc<Metrics>,
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

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/", get(graphiql::page))
        .route("/graphiql/{file}", get(graphiql::serve_asset))
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/graphql/ws", get(graphql::websocket))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
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
