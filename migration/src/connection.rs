//! Opening a database the way every Keystone command does: one place that knows the default
//! database, the SQLite pragmas, pool sizes and how to print a URL without its password.

use std::time::Duration;

use sea_orm_migration::sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm_migration::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
};

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

impl PoolSettings {
    /// The defaults for the database at `url`. SQLite gets a smaller pool: it has one writer
    /// at a time and every pooled connection is an OS thread with its own page cache, so on a
    /// small machine 4 connections serve reads faster, and in less memory, than 10 (see
    /// docs/benchmarks.md).
    pub fn for_url(url: &str) -> Self {
        let max_connections = match backend_of(url) {
            Some(DbBackend::Sqlite) => 4,
            _ => 10,
        };
        Self {
            max_connections,
            ..Self::default()
        }
    }
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

/// A pooled connection idle at least this long is tested (pinged) before it is handed out;
/// one in use a moment ago is not. sqlx's default pings on every checkout, a round trip per
/// statement on top of the one sqlx makes when a connection is returned (which catches a
/// connection broken while in use); after a database restart every idle connection has been
/// idle longer than this.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Connects to `url` (`sqlite://…` or `postgres://…`).
///
/// SQLite connections enforce foreign keys, use WAL journaling, wait up to five seconds
/// on a locked database and create the file if it is missing, readable only by its owner
/// (SQLite gives its `-wal` and `-shm` files the same mode).
pub async fn connect(url: &str, pool: &PoolSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(pool.max_connections)
        .min_connections(pool.min_connections)
        .acquire_timeout(pool.acquire_timeout)
        .connect_timeout(pool.connect_timeout)
        .idle_timeout(pool.idle_timeout)
        .test_before_acquire_if_idle_for(PING_AFTER_IDLE)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            create_private_file(opts.get_filename());
            opts.foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .create_if_missing(true)
        });
    Database::connect(options).await
}

/// Creates an empty database file with mode 0600 if there is none (SQLite itself would
/// create it world-readable). Errors are left to SQLite to report when it opens the file.
fn create_private_file(path: &std::path::Path) {
    // sqlx names an in-memory database `file:sqlx-in-memory-<n>` (a URI, not a file).
    let name = path.to_string_lossy();
    let in_memory =
        name.is_empty() || name.contains(":memory:") || name.starts_with("file:sqlx-in-memory-");
    if in_memory {
        return;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let _ = options.open(path);
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

/// `url` (PostgreSQL) with its search path set to `schema`, so that every connection opened
/// from it creates and finds unqualified tables there.
pub fn url_in_schema(url: &str, schema: &str) -> Result<String, DbErr> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| DbErr::Custom(format!("invalid database URL: {e}")))?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| key != "options")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("options", &format!("-c search_path={schema}"));
    Ok(parsed.to_string())
}

/// A throwaway database on the same backend as a given URL, for checks that must not touch
/// real data: an in-memory SQLite database (open it with [`connect_for_migrations`]: one
/// connection, since each in-memory connection is its own database), or a new schema in the
/// PostgreSQL database, dropped by [`Scratch::remove`].
pub struct Scratch {
    pub url: String,
    schema: Option<(DatabaseConnection, String)>,
}

impl Scratch {
    pub async fn new(like: &str) -> Result<Self, DbErr> {
        match backend_of(like) {
            Some(DbBackend::Postgres) => {
                let admin = connect_for_migrations(like).await?;
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or_default();
                let name = format!("keystone_scratch_{}_{nanos}", std::process::id());
                admin
                    .execute_unprepared(&format!("CREATE SCHEMA \"{name}\""))
                    .await?;
                Ok(Self {
                    url: url_in_schema(like, &name)?,
                    schema: Some((admin, name)),
                })
            }
            _ => Ok(Self {
                url: "sqlite::memory:".to_owned(),
                schema: None,
            }),
        }
    }

    pub async fn remove(self) -> Result<(), DbErr> {
        if let Some((admin, name)) = self.schema {
            admin
                .execute_unprepared(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                .await?;
            admin.close().await?;
        }
        Ok(())
    }
}
