//! The HTTP surface: the axum router and the process-level endpoints (`/health`, `/ready`).
//! One [`AppState`] is handed to every handler.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use serde_json::json;

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
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
