//! Keystone's schema history and everything that applies it: the migrations
//! (`m<date>_<seq>_<what>.rs`, which define their own identifiers and never import `entity`),
//! connection setup shared by every command, schema introspection, adoption of databases the
//! Django version created, and the migration CLI used by both `keystone migrate` and
//! `cargo run -p migration`.

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseConnection};

pub mod adopt;
pub mod cli;
pub mod connection;
pub mod history;
pub mod introspect;
mod m20261126_000001_create_tables;
mod m20261126_000002_index_deployments_by_app_and_time;
mod m20261126_000003_create_tokens_and_audit_events;
mod m20261126_000004_deployment_lifecycle;
mod m20261130_000005_runner_placement_and_commits;
mod m20261130_000006_app_config;
mod m20261130_000007_index_deployments_by_status;
mod m20261130_000008_check_enumerations;
mod m20261130_000009_trusted_documents;
mod m20261201_000010_count_deployments_by_status;
mod m20261205_000011_audit_actors;
mod m20261205_000012_webhooks;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_tables::Migration),
            Box::new(m20261126_000002_index_deployments_by_app_and_time::Migration),
            Box::new(m20261126_000003_create_tokens_and_audit_events::Migration),
            Box::new(m20261126_000004_deployment_lifecycle::Migration),
            Box::new(m20261130_000005_runner_placement_and_commits::Migration),
            Box::new(m20261130_000006_app_config::Migration),
            Box::new(m20261130_000007_index_deployments_by_status::Migration),
            Box::new(m20261130_000008_check_enumerations::Migration),
            Box::new(m20261130_000009_trusted_documents::Migration),
            Box::new(m20261201_000010_count_deployments_by_status::Migration),
            Box::new(m20261205_000011_audit_actors::Migration),
            Box::new(m20261205_000012_webhooks::Migration),
        ]
    }
}

/// The name of the migration that creates the tables Django's `api 0001_initial` created.
pub const INITIAL_MIGRATION: &str = m20261126_000001_create_tables::NAME;

/// Why the schema could not be brought up to date. Nothing was changed in any case but `Db`.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error(
        "the database has migrations this Keystone does not know: {}.\n\
         It was migrated by a newer version of Keystone. Run that version (or a newer one) \
         against it, or restore a backup taken before the upgrade; nothing was changed.",
        .0.join(", ")
    )]
    NewerSchema(Vec<String>),
    #[error(
        "this database was created by the Django version of Keystone, but it cannot be \
         adopted safely; nothing was changed. Differences:\n{}",
        bullets(.0)
    )]
    AdoptionRefused(Vec<String>),
    #[error(
        "{} migration(s) pending: {}. Run `keystone migrate up` (or start the server).",
        .0.len(),
        .0.join(", ")
    )]
    Pending(Vec<String>),
    #[error(
        "the database has Keystone tables ({}) but no migration history (neither \
         seaql_migrations nor Django's django_migrations); refusing to guess what created \
         them. Point DATABASE_URL at an empty database, or restore the migration history.",
        .0.join(", ")
    )]
    Unmanaged(Vec<String>),
}

fn bullets(lines: &[String]) -> String {
    lines
        .iter()
        .map(|line| format!("  - {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What [`upgrade`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upgrade {
    /// Set when a Django-created database was adopted first.
    pub adopted: Option<adopt::Adoption>,
    /// The migrations applied, oldest first.
    pub applied: Vec<String>,
}

/// Brings the schema up to date (at most `steps` migrations): refuses a database migrated by
/// a newer Keystone, adopts a Django-created one, then applies pending migrations. `db` must
/// come from [`connection::connect_for_migrations`] and `url` is its URL.
///
/// On PostgreSQL the whole upgrade holds an advisory lock, so that instances starting
/// together (or CI and an instance) take turns: the first applies, the others wait, then
/// find nothing left to do. (On SQLite, one file, the database's own write lock does.)
pub async fn upgrade(
    db: &DatabaseConnection,
    url: &str,
    steps: Option<u32>,
) -> Result<Upgrade, MigrateError> {
    let postgres = db.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Postgres;
    if postgres {
        // `db` has one connection (see `connect_for_migrations`): the lock is its session's.
        db.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await?;
    }
    let result = upgrade_locked(db, url, steps).await;
    if postgres {
        // Had the connection died, its session and lock went with it.
        let unlocked = db
            .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .await;
        if result.is_ok() {
            unlocked?;
        }
    }
    result
}

/// The advisory lock key migrations hold on PostgreSQL ("keystone" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b65_7973_746f_6e65;

async fn upgrade_locked(
    db: &DatabaseConnection,
    url: &str,
    steps: Option<u32>,
) -> Result<Upgrade, MigrateError> {
    history::read(db).await?.ensure_known()?;
    let adopted = match adopt::classify(db).await? {
        adopt::Existing::Django => Some(adopt::adopt(db, url).await?),
        adopt::Existing::Unmanaged(tables) => return Err(MigrateError::Unmanaged(tables)),
        adopt::Existing::Empty | adopt::Existing::Managed => None,
    };
    let mut applied: Vec<String> = history::read(db)
        .await?
        .pending()
        .map(str::to_owned)
        .collect();
    if let Some(steps) = steps {
        applied.truncate(steps as usize);
    }
    Migrator::up(db, steps).await?;
    Ok(Upgrade { adopted, applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adoption records the initial migration by this name: it must be the one the derive
    /// gives the first migration.
    #[test]
    fn the_initial_migration_is_named_as_adoption_records_it() {
        assert_eq!(Migrator::migrations()[0].name(), INITIAL_MIGRATION);
    }
}
