//! Which migrations a database has applied, read without changing anything, and the check
//! that refuses to touch a database migrated by a newer Keystone.

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbErr, Statement};

use crate::{MigrateError, Migrator, introspect};

/// The migration bookkeeping table (sea-orm-migration's default name).
pub const TABLE: &str = "seaql_migrations";

/// One migration this binary knows, and whether the database has applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationState {
    pub name: String,
    pub applied: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Every migration this binary knows, oldest first.
    pub known: Vec<MigrationState>,
    /// Applied migrations this binary does not know: the database is newer than the binary.
    pub unknown: Vec<String>,
}

impl History {
    pub fn pending(&self) -> impl Iterator<Item = &str> {
        self.known
            .iter()
            .filter(|m| !m.applied)
            .map(|m| m.name.as_str())
    }

    pub fn applied_count(&self) -> usize {
        self.known.iter().filter(|m| m.applied).count() + self.unknown.len()
    }

    /// Fails when the database holds migrations this binary does not know.
    pub fn ensure_known(&self) -> Result<(), MigrateError> {
        if self.unknown.is_empty() {
            Ok(())
        } else {
            Err(MigrateError::NewerSchema(self.unknown.clone()))
        }
    }
}

/// Reads the migration history. Creates nothing: a database without the bookkeeping table
/// simply has nothing applied.
pub async fn read(db: &impl ConnectionTrait) -> Result<History, DbErr> {
    let applied: Vec<String> = if introspect::table_exists(db, TABLE).await? {
        let backend = db.get_database_backend();
        db.query_all_raw(Statement::from_string(
            backend,
            format!("SELECT version FROM {TABLE} ORDER BY version"),
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let known: Vec<MigrationState> = Migrator::migrations()
        .iter()
        .map(|m| MigrationState {
            name: m.name().to_owned(),
            applied: applied.iter().any(|a| a == m.name()),
        })
        .collect();
    let unknown = applied
        .into_iter()
        .filter(|a| !known.iter().any(|k| &k.name == a))
        .collect();
    Ok(History { known, unknown })
}
