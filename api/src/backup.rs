//! `keystone backup FILE`: a consistent copy of a SQLite database, taken while servers keep
//! reading and writing it.
//!
//! `VACUUM INTO` copies the database as one read transaction sees it (SQLite 3.27+): a
//! snapshot with every committed write up to its start and none after, compacted, written
//! to a new file that is a complete database on its own. It is SQLite's own online copy,
//! like the backup API, without a page-by-page loop to restart when writers intervene.
//! PostgreSQL has `pg_dump` for this, consistent by the same snapshot rule (README,
//! "Backups").

use std::path::Path;

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, Statement};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} exists already; choose a new file")]
    Exists(String),
    #[error(
        "keystone backup copies SQLite databases; for PostgreSQL use pg_dump \
         (pg_dump --format=custom --file=FILE DATABASE_URL), see the README"
    )]
    Postgres,
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("cannot read the copy: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the copy; returns its size in bytes.
pub async fn write(db: &DatabaseConnection, file: &Path) -> Result<u64, BackupError> {
    if db.get_database_backend() != DatabaseBackend::Sqlite {
        return Err(BackupError::Postgres);
    }
    // The copy holds Keystone's tokens and config: only its owner may read it, from its first
    // byte (SQLite writes `VACUUM INTO` into an empty file).
    match crate::files::create_new_owner_only(file) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BackupError::Exists(file.display().to_string()));
        }
        Err(e) => return Err(e.into()),
    }
    db.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Sqlite,
        "VACUUM INTO ?",
        [file.display().to_string().into()],
    ))
    .await?;
    Ok(std::fs::metadata(file)?.len())
}
