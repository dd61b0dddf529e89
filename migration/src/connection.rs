//! Opening a database the way every Keystone command does: one place that knows the default
//! database, the SQLite pragmas, pool sizes and how to print a URL without its password.

use std::time::Duration;

use sea_orm_migration::sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm_migration::sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};

/// The zero-setup database: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keystone.sqlite3?mode=rwc";

/// Pool sizing and timeouts; the defaults suit one server process on a small machine.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Connects to `url` (`sqlite://…` or `postgres://…`).
///
/// SQLite connections enforce foreign keys, use WAL journaling, wait up to five seconds
/// on a locked database and create the file if it is missing.
pub async fn connect(url: &str, pool: &PoolSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(pool.max_connections)
        .min_connections(pool.min_connections)
        .acquire_timeout(pool.acquire_timeout)
        .connect_timeout(pool.connect_timeout)
        .idle_timeout(pool.idle_timeout)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .create_if_missing(true)
        });
    Database::connect(options).await
}

/// A connection for schema changes: a single connection, because on SQLite adopting a
/// database must turn foreign-key enforcement off and on around a transaction, which only
/// holds for the connection that ran the pragma.
pub async fn connect_for_migrations(url: &str) -> Result<DatabaseConnection, DbErr> {
    let settings = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    connect(url, &settings).await
}

/// The backend a URL names, or `None` for an unsupported scheme.
pub fn backend_of(url: &str) -> Option<DbBackend> {
    let scheme = url.split(':').next()?;
    match scheme {
        "sqlite" => Some(DbBackend::Sqlite),
        "postgres" | "postgresql" => Some(DbBackend::Postgres),
        _ => None,
    }
}

/// `url` with any password replaced by `***`, fit for logs and error messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A single-connection pool whose unqualified names resolve in PostgreSQL schema `schema`.
pub async fn connect_in_schema(url: &str, schema: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(1)
        .sqlx_logging(false)
        .set_schema_search_path(schema.to_owned());
    Database::connect(options).await
}
