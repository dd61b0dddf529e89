//! Keystone's rules, independent of GraphQL: validation, and the write operations on
//! repositories, apps and deployments, each in one transaction. Resolvers call these; this
//! module never imports async-graphql.

pub mod apps;
pub mod events;
pub mod repositories;
pub mod validation;

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqlErr, SqliteTransactionMode,
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
    #[error("database error: {0}")]
    Database(DbErr),
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
        }
        DomainError::Database(error)
    }
}

/// Starts a transaction that will write. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later cannot
/// wait for a concurrent writer (SQLite answers `SQLITE_BUSY` at once to avoid deadlock),
/// while an immediate one waits on the busy timeout like any other writer.
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Checks one input value, naming the field on failure.
pub(crate) fn check(
    field: &'static str,
    rule: fn(&str) -> Result<(), String>,
    value: &str,
) -> Result<(), DomainError> {
    rule(value).map_err(|reason| DomainError::Invalid { field, reason })
}
