//! The Keystone server crate: configuration, the HTTP server, and the `keystone` subcommands
//! that are more than a call into another crate (`verify`, `bench`). `main.rs` only sets up
//! the runtime and logging and calls in here.

pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod graphql;
pub mod http;
pub mod verify;

use std::sync::Arc;

use migration::connection::{self, redact};
use migration::{MigrateError, history};
use sea_orm::DbErr;
use tokio::net::TcpListener;

use crate::config::Config;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until SIGTERM or Ctrl-C: migrates (unless turned off), listens, and on
/// shutdown stops accepting, lets in-flight requests finish and closes the pool.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    tracing::info!(database = %redact(&config.database_url), "starting Keystone");
    prepare_schema(&config).await?;

    let metrics = Arc::new(http::Metrics::default());
    let mut db = connection::connect(&config.database_url, &config.pool).await?;
    let counter = metrics.clone();
    db.set_metric_callback(move |info| {
        counter.count_statement();
        tracing::debug!(target: "keystone::sql", elapsed_us = info.elapsed.as_micros() as u64, sql = %info.statement.sql);
    });
    let schema = graphql::schema(
        graphql::ApiContext {
            db: db.clone(),
            public_host: config.public_host.clone(),
            apps_domain: config.apps_domain.clone(),
            events: domain::events::EventBus::default(),
        },
        config.limits,
    );
    let app = http::router(
        http::AppState {
            db: db.clone(),
            schema,
            metrics,
        },
        config.max_body_bytes,
    );
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.bind,
            source,
        })?;
    let address = listener.local_addr()?;
    tracing::info!("listening on http://{address}");
    tracing::info!("GraphiQL: http://{address}/  ·  GraphQL endpoint: http://{address}/graphql");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down: closing the database pool");
    db.close().await?;
    Ok(())
}

/// Applies pending migrations (adopting a Django database first), or with migrations turned
/// off only checks that the schema is not newer than this binary.
async fn prepare_schema(config: &Config) -> Result<(), ServeError> {
    let db = connection::connect_for_migrations(&config.database_url).await?;
    let result = async {
        if config.migrate_on_start {
            let upgrade = migration::upgrade(&db, &config.database_url, None).await?;
            if let Some(adoption) = &upgrade.adopted {
                tracing::info!(rows = ?adoption.rows, "adopted a database created by the Django version of Keystone");
            }
            if upgrade.applied.is_empty() {
                tracing::info!("schema is up to date");
            }
            for name in &upgrade.applied {
                tracing::info!(migration = %name, "applied migration");
            }
        } else {
            let history = history::read(&db).await?;
            history.ensure_known()?;
            let pending: Vec<&str> = history.pending().collect();
            if !pending.is_empty() {
                tracing::warn!(?pending, "migrations are pending and --no-migrate is set; /ready reports 503 until they are applied");
            }
        }
        Ok::<_, ServeError>(())
    }
    .await;
    db.close().await?;
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}
