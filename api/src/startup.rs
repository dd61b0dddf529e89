//! Starting the server: [`Application::build`] migrates (unless turned off), connects, wires
//! the state and binds the listener; [`Application::run_until_stopped`] serves until its stop
//! signal, lets in-flight requests finish and closes the pool. [`serve`] is both, stopped by
//! SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use migration::connection::{self, redact};
use migration::{MigrateError, history};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::domain::access::{self, Authenticator, Secret};
use crate::domain::events::EventBus;
use crate::domain::runs::{self, RunnerPolicy};
use crate::graphql::guardrails::{Admission, RateLimit};
use crate::{domain, graphql, http, telemetry};

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
    #[error("{0}")]
    Access(#[from] domain::DomainError),
    #[error("cannot write the admin token to {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("cannot read or create the config-var key {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown_signal())
        .await
}

/// A server that is listening and ready to serve.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    app: axum::Router,
    db: DatabaseConnection,
    relay: EventBus,
    sweeper: tokio::task::JoinHandle<()>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    stopping: tokio::sync::watch::Sender<bool>,
    shutdown_timeout: std::time::Duration,
}

impl Application {
    /// Migrates (unless turned off), connects, creates the first admin token on an empty
    /// database, and binds `config.bind` (port 0: any free port, see [`Application::port`]).
    pub async fn build(config: Config) -> Result<Application, ServeError> {
        tracing::info!(database = %redact(&config.database_url), "starting Keystone");
        let schema_current = prepare_schema(&config).await?;

        let mut db = connection::connect(&config.database_url, &config.pool).await?;
        db.set_metric_callback(move |info| {
            telemetry::metrics().statement(info.elapsed);
            tracing::debug!(target: "keystone::sql", elapsed_us = info.elapsed.as_micros() as u64, sql = %info.statement.sql);
        });
        let secrets = domain::secrets::SecretBox::load_or_create(&config.secrets_key_file)
            .map_err(|source| ServeError::KeyFile {
                path: config.secrets_key_file.clone(),
                source,
            })?;
        let admission = Arc::new(Admission::new(
            Arc::new(Authenticator::new(config.token_cache)),
            RateLimit::new(config.rate_limit_per_second, config.rate_limit_burst),
        ));
        let logs_dir = config.runners.logs.dir.clone();
        let events = EventBus::for_database(&db, || domain::events::signing_key(&logs_dir)).await?;
        let secrets = Arc::new(secrets);
        let hooks = Arc::new(http::Hooks::new(
            secrets.clone(),
            events.clone(),
            config.ports,
        ));
        let relay = events.clone();
        let sweeper = tokio::spawn(sweep(db.clone(), events.clone(), config.runners.clone()));
        let documents = Arc::new(graphql::documents::TrustedDocuments::new(
            domain::documents::DocumentStore::new(db.clone(), DOCUMENTS_REFRESH),
            config.documents,
        ));
        let engine = graphql::schema(
            graphql::ApiContext {
                db: db.clone(),
                public_host: config.public_host.clone(),
                apps_domain: config.apps_domain.clone(),
                events,
                admission: admission.clone(),
                secrets: secrets.clone(),
                ports: config.ports,
                runners: config.runners.clone(),
                documents: documents.clone(),
                git_hosts: config.git_hosts,
            },
            config.limits,
        )
        .await;
        let metrics_token = match &config.metrics_token_file {
            None => None,
            Some(path) => Some(read_metrics_token(path)?),
        };
        let stopping = tokio::sync::watch::Sender::new(false);
        let state = http::AppState {
            db: db.clone(),
            engine,
            metrics_token,
            documents,
            admission,
            websocket: config.websocket,
            sockets: Arc::default(),
            shutdown: stopping.subscribe(),
            trusted_proxies: config.trusted_proxies.clone().into(),
            hooks,
        };
        let metrics_server = match config.metrics_bind {
            Some(address) => {
                Some(serve_metrics(address, state.clone(), stopping.subscribe()).await?)
            }
            None => None,
        };
        let app = http::router(
            state,
            http::RouterOptions {
                max_body_bytes: config.max_body_bytes,
                graphiql: config.graphiql,
                cors_origins: config.cors_origins.clone(),
                metrics: config.metrics_bind.is_none(),
            },
        );
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.bind,
                source,
            })?;
        let address = listener.local_addr()?;
        if !address.ip().is_loopback() && !config.behind_tls_proxy {
            tracing::warn!(
                "listening on {address}, which other machines can reach, without TLS: tokens would \
                 cross the network in clear text. Put a TLS-terminating reverse proxy in front \
                 (README, \"Production\") and pass --behind-tls-proxy, or bind to 127.0.0.1."
            );
        }
        let base = browser_base(address);
        let first_admin = if schema_current {
            access::create_first_admin(&db).await?
        } else {
            tracing::warn!("tokens cannot be checked until the migrations are applied");
            None
        };
        match first_admin {
            Some(secret) => announce_first_admin(&config, &base, &secret)?,
            None if config.graphiql => {
                let hint = if config.admin_token_file.exists() {
                    format!("the token in {}", config.admin_token_file.display())
                } else {
                    "an admin token (`keystone token create --name me --role admin`)".to_owned()
                };
                tracing::info!(
                    "GraphiQL: {base}/ (sign in with {hint})  ·  GraphQL endpoint: {base}/graphql"
                );
            }
            None => tracing::info!("GraphQL endpoint: {base}/graphql"),
        }
        tracing::info!("listening on http://{address}");
        Ok(Application {
            listener,
            address,
            app,
            db,
            relay,
            sweeper,
            metrics_server,
            stopping,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until `stop` completes, then stops accepting, tells WebSocket connections to
    /// go away, lets in-flight requests finish (for at most the shutdown timeout) and closes
    /// the pool.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Application {
            listener,
            address: _,
            app,
            db,
            relay,
            sweeper,
            metrics_server,
            stopping,
            shutdown_timeout,
        } = self;
        let signalled = stopping.clone();
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            stop.await;
            // Stops accepting; WebSocket connections are told to go away.
            signalled.send_replace(true);
        })
        .into_future();
        // In-flight requests finish, for at most the shutdown timeout after the signal.
        let mut signal = stopping.subscribe();
        let deadline = async move {
            let _ = signal.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(shutdown_timeout).await;
        };
        tokio::select! {
            served = server => served?,
            () = deadline => tracing::warn!(
                timeout_s = shutdown_timeout.as_secs_f64(),
                "requests still running at the shutdown timeout: exiting anyway"
            ),
        }
        sweeper.abort();
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        relay.close();
        tracing::info!("shutting down: closing the database pool");
        db.close().await?;
        Ok(())
    }
}

/// How often servers read the stored documents again (`keystone documents` changes them
/// from another process).
const DOCUMENTS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The bearer token `/metrics` requires, from its file (surrounding whitespace ignored).
fn read_metrics_token(path: &Path) -> Result<Arc<str>, ServeError> {
    let token = std::fs::read_to_string(path).map_err(|error| {
        ServeError::Config(format!(
            "cannot read the metrics token file {}: {error}",
            path.display()
        ))
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ServeError::Config(format!(
            "the metrics token file {} is empty",
            path.display()
        )));
    }
    Ok(Arc::from(token))
}

/// Serves `/metrics` alone on `address` (`--metrics-bind`) until the server stops.
async fn serve_metrics(
    address: SocketAddr,
    state: http::AppState,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind {
            addr: address,
            source,
        })?;
    tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
    let server =
        axum::serve(listener, http::metrics_router(state)).with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        });
    Ok(tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::warn!(%error, "the metrics listener failed");
        }
    }))
}

/// Every half lease: requeues (or fails) deployments whose runner stopped heartbeating (the
/// one place this happens), and folds the per-status deployment counts. Several servers may
/// overlap safely in both.
async fn sweep(db: DatabaseConnection, events: EventBus, policy: RunnerPolicy) {
    let mut every = tokio::time::interval(policy.lease / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Housekeeping, not a client's: `keystone_sql_statements_total` leaves it out.
        telemetry::unmeasured(async {
            if let Err(error) = runs::expire_leases(&db, &events, &policy).await {
                tracing::warn!(%error, "cannot check runner leases");
            }
            if let Err(error) = domain::counts::compact(&db).await {
                tracing::warn!(%error, "cannot fold the deployment counts");
            }
        })
        .await;
    }
}

/// `http://host:port` as a browser on this machine reaches the server.
fn browser_base(address: SocketAddr) -> String {
    if address.ip().is_unspecified() {
        format!("http://localhost:{}", address.port())
    } else {
        format!("http://{address}")
    }
}

/// Writes the first admin token to its file (owner-only) and, when standard output is a
/// terminal, prints it once, with a link that signs GraphiQL in (the secret travels in the
/// URL fragment, which browsers never send to the server; the page stores it and removes it
/// from the address bar). Under systemd or Docker, standard output is the service log, which
/// must not keep a secret: then only the file's path is logged.
fn announce_first_admin(config: &Config, base: &str, secret: &Secret) -> Result<(), ServeError> {
    let path = &config.admin_token_file;
    crate::files::write_owner_only(path, format!("{}\n", secret.0).as_bytes()).map_err(
        |source| ServeError::TokenFile {
            path: path.clone(),
            source,
        },
    )?;
    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        tracing::info!(
            file = %shown.display(),
            "created the first admin token; it is in this file (not printed: standard output is not a terminal)"
        );
        if config.graphiql {
            tracing::info!("GraphiQL: {base}/ (sign in with the token in that file)");
        }
        return Ok(());
    }
    let mut text = format!(
        "\nKeystone created its first admin token (shown once; also saved, readable only by \
         you, to {}):\n\n    {}\n\nSend it as `Authorization: Bearer <token>`.",
        shown.display(),
        secret.0
    );
    if config.graphiql {
        text.push_str(&format!(
            "\nGraphiQL, signed in: {base}/#token={}\n",
            secret.0
        ));
    }
    // Printed, not logged: log collectors should not keep the secret.
    println!("{text}");
    tracing::info!(file = %shown.display(), "created the first admin token (printed above, not logged)");
    Ok(())
}

/// Applies pending migrations (adopting a Django database first), or with migrations turned
/// off only checks that the schema is not newer than this binary. Returns whether the schema
/// is now current.
async fn prepare_schema(config: &Config) -> Result<bool, ServeError> {
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
            Ok(true)
        } else {
            let history = history::read(&db).await?;
            history.ensure_known()?;
            let pending: Vec<&str> = history.pending().collect();
            if !pending.is_empty() {
                tracing::warn!(?pending, "migrations are pending and --no-migrate is set; /ready reports 503 until they are applied");
            }
            Ok::<_, ServeError>(pending.is_empty())
        }
    }
    .await;
    db.close().await?;
    result
}

pub(crate) async fn shutdown_signal() {
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
