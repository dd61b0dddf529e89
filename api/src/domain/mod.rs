//! Keystone's rules, independent of GraphQL: validation, and the write operations on
//! repositories, apps and deployments, each in one transaction. Resolvers call these; this
//! module never imports async-graphql.

pub mod access;
pub mod apps;
pub mod audit;
pub mod counts;
pub mod documents;
pub mod env;
pub mod events;
pub mod logs;
pub mod ports;
pub mod repositories;
pub mod runs;
pub mod secrets;
pub mod validation;
pub mod webhooks;

use tokio::sync::{Mutex, MutexGuard};

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, SqlErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

/// Why a domain operation was refused. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The object named by `field` does not exist.
    #[error("{entity} {id} does not exist")]
    NotFound {
        entity: &'static str,
        field: &'static str,
        id: i64,
    },
    /// The request is valid but clashes with the current state.
    #[error("{message}")]
    Conflict {
        field: Option<&'static str>,
        message: String,
    },
    /// An input value breaks a rule.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The caller may not have this, whatever its role.
    #[error("{0}")]
    Forbidden(String),
    #[error("database error: {0}")]
    Database(DbErr),
    /// The disk under the logs directory (or the database) is full: nothing was stored.
    #[error("{0}")]
    StorageFull(String),
    /// Something the server needs failed (not the database).
    #[error("{0}")]
    Internal(String),
}

impl From<DbErr> for DomainError {
    /// Unique-constraint violations become `Conflict` on the input field they concern
    /// (the one place that knows which constraint guards which field); anything else is a
    /// database error.
    fn from(error: DbErr) -> Self {
        if let Some(SqlErr::UniqueConstraintViolation(message)) = error.sql_err() {
            // SQLite: "UNIQUE constraint failed: api_app.name";
            // PostgreSQL: "... unique constraint \"api_app_name_key\"".
            if message.contains("api_app.name") || message.contains("api_app_name_key") {
                return DomainError::Conflict {
                    field: Some("name"),
                    message: "an app with this name already exists".into(),
                };
            }
            if message.contains("api_token.name") || message.contains("api_token_name_key") {
                return DomainError::Conflict {
                    field: Some("name"),
                    message: "a token with this name exists (names stay taken after revocation, so the audit trail stays unambiguous)".into(),
                };
            }
        }
        DomainError::Database(error)
    }
}

/// SQLite has one writer at a time. This process's writers take turns here, first come
/// first served, instead of waiting inside SQLite's busy handler, which polls the lock with
/// sleeps of up to 100 ms (long tails under concurrent writes). Other processes on the same
/// file still wait on the busy timeout.
static SQLITE_WRITERS: Mutex<()> = Mutex::const_new(());

/// Held until the write transaction has ended (declare it before the transaction).
pub(crate) struct WriterTurn(#[allow(dead_code)] Option<MutexGuard<'static, ()>>);

/// Waits for this process's turn to write (SQLite only; PostgreSQL writers do not queue).
/// Enough on its own for a single-statement write, which is atomic by itself.
pub(crate) async fn writer_turn(db: &DatabaseConnection) -> WriterTurn {
    WriterTurn(match db.get_database_backend() {
        DbBackend::Sqlite => Some(SQLITE_WRITERS.lock().await),
        _ => None,
    })
}

/// Starts a transaction that will write. On SQLite it first waits for this process's turn,
/// then takes the write lock at once (`BEGIN IMMEDIATE`): a deferred transaction that reads
/// first and writes later cannot wait for a concurrent writer (SQLite answers `SQLITE_BUSY`
/// at once to avoid a deadlock).
pub(crate) async fn begin_write(
    db: &DatabaseConnection,
) -> Result<(WriterTurn, DatabaseTransaction), DbErr> {
    let turn = writer_turn(db).await;
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    Ok((turn, txn))
}

/// Lowercase hex SHA-256 of `text`'s UTF-8 bytes (token hashes, document names).
pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Checks one input value, naming the field on failure.
pub(crate) fn check(
    field: &'static str,
    rule: impl FnOnce(&str) -> Result<(), String>,
    value: &str,
) -> Result<(), DomainError> {
    rule(value).map_err(|reason| DomainError::Invalid { field, reason })
}
