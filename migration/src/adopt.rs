//! Taking over a database that the Django version of Keystone created, in place.
//!
//! Such a database has the `api_*` tables, Django's `django_migrations` recording
//! `api 0001_initial`, and no `seaql_migrations`. Adoption is Django's `--fake-initial` made
//! safe:
//!
//! 1. check, changing nothing, that the tables are what our initial migration would create
//!    (it is run into a scratch database or schema and both are introspected), that Django
//!    recorded no later `api` migration, and that every stored status and access mode is one
//!    Keystone knows; any difference stops adoption with the full list;
//! 2. in one transaction, give the tables what Django only emulated in Python — database
//!    defaults and `ON DELETE CASCADE` — so an adopted database behaves exactly like a fresh
//!    one: `ALTER TABLE` on PostgreSQL, SQLite's documented table rebuild (create, copy,
//!    drop, rename) with row counts and `AUTOINCREMENT` counters checked and kept;
//! 3. in the same transaction, record the initial migration as applied.
//!
//! Rows are never rewritten: every value is copied as stored.

use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};

use crate::m20261126_000001_create_tables as initial;
use crate::{MigrateError, Migrator, connection, history, introspect};

/// What a database holds before Keystone migrates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Existing {
    /// No Keystone tables and no history: migrations create everything.
    Empty,
    /// Keystone's own migration history is present.
    Managed,
    /// Keystone tables created by the Django version.
    Django,
    /// Keystone tables with no migration history at all.
    Unmanaged(Vec<String>),
}

pub async fn classify(db: &DatabaseConnection) -> Result<Existing, DbErr> {
    if history::read(db).await?.applied_count() > 0 {
        return Ok(Existing::Managed);
    }
    let tables = introspect::keystone_tables(db).await?;
    if tables.is_empty() {
        Ok(Existing::Empty)
    } else if introspect::table_exists(db, "django_migrations").await? {
        Ok(Existing::Django)
    } else {
        Ok(Existing::Unmanaged(tables))
    }
}

/// Row counts of the adopted tables, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adoption {
    pub rows: Vec<(String, i64)>,
}

/// Adopts a Django-created database (see the module docs). `url` is the database's URL; on
/// PostgreSQL a scratch schema is created in it for the comparison and dropped afterwards.
pub async fn adopt(db: &DatabaseConnection, url: &str) -> Result<Adoption, MigrateError> {
    let mut problems = django_history_problems(db).await?;
    let expected = initial_shape(url).await?;
    let actual = introspect::discover(db).await?;
    // Django kept defaults and cascades in Python, and named nothing else differently.
    let compare = introspect::Compare {
        defaults: false,
        on_delete: false,
        indexes: true,
    };
    problems.extend(introspect::differences(
        &expected,
        &actual,
        "Keystone's initial migration",
        "the existing database",
        compare,
    ));
    if problems.is_empty() {
        problems.extend(unknown_values(db).await?);
    }
    if !problems.is_empty() {
        return Err(MigrateError::AdoptionRefused(problems));
    }

    let before = row_counts(db).await?;
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            // Foreign-key enforcement can only change outside a transaction; `db` is a
            // single-connection pool (see `connection::connect_for_migrations`).
            db.execute_unprepared("PRAGMA foreign_keys = OFF").await?;
            let result = rebuild_sqlite(db, &before).await;
            db.execute_unprepared("PRAGMA foreign_keys = ON").await?;
            result?;
        }
        _ => alter_postgres(db).await?,
    }
    Ok(Adoption { rows: before })
}

async fn django_history_problems(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM django_migrations WHERE app = 'api' ORDER BY id",
        ))
        .await?;
    let names: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "name"))
        .collect::<Result<_, _>>()?;
    let mut problems = Vec::new();
    if !names.iter().any(|n| n == "0001_initial") {
        problems.push("django_migrations does not record api 0001_initial".to_owned());
    }
    for name in names.iter().filter(|n| *n != "0001_initial") {
        problems.push(format!(
            "django_migrations records api {name}, a Django migration Keystone does not know"
        ));
    }
    Ok(problems)
}

/// The shape the initial migration creates, built in a scratch database on the same backend.
async fn initial_shape(url: &str) -> Result<introspect::SchemaShape, DbErr> {
    let scratch = connection::Scratch::new(url).await?;
    let shape = async {
        let db = connection::connect_for_migrations(&scratch.url).await?;
        initial::Migration.up(&SchemaManager::new(&db)).await?;
        let shape = introspect::discover(&db).await;
        db.close().await?;
        shape
    }
    .await;
    scratch.remove().await?;
    shape
}

async fn unknown_values(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let backend = db.get_database_backend();
    let mut problems = Vec::new();
    for (table, column, known) in initial::KNOWN_VALUES {
        let placeholders: Vec<String> = (1..=known.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT \"{column}\" AS value, COUNT(*) AS n FROM \"{table}\" \
             WHERE \"{column}\" NOT IN ({}) GROUP BY \"{column}\" ORDER BY \"{column}\"",
            placeholders.join(", ")
        );
        let values = known.iter().map(|v| (*v).into());
        for row in db
            .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?
        {
            let value: String = row.try_get("", "value")?;
            let count: i64 = row.try_get("", "n")?;
            problems.push(format!(
                "{table}.{column}: {count} row(s) hold {value:?}, which Keystone does not know (known: {})",
                known.join(", ")
            ));
        }
    }
    Ok(problems)
}

async fn row_counts(db: &impl ConnectionTrait) -> Result<Vec<(String, i64)>, DbErr> {
    let mut counts = Vec::new();
    for table in initial::TABLES {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM \"{table}\""),
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("COUNT returned no row".into()))?;
        counts.push((table.to_owned(), row.try_get::<i64>("", "n")?));
    }
    Ok(counts)
}

/// Records the initial migration as applied, in the caller's transaction.
async fn record_initial(txn: &impl ConnectionTrait) -> Result<(), DbErr> {
    Migrator::install(txn).await?;
    let applied_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        format!(
            "INSERT INTO {} (version, applied_at) VALUES ($1, $2)",
            history::TABLE
        ),
        [initial::NAME.into(), applied_at.into()],
    ))
    .await?;
    Ok(())
}

/// SQLite cannot add defaults or change a foreign key in place, so each table is rebuilt
/// as SQLite's documentation prescribes, parents first. Foreign keys are off (the caller),
/// and `PRAGMA foreign_key_check` must come back empty before anything is committed.
async fn rebuild_sqlite(
    db: &DatabaseConnection,
    before: &[(String, i64)],
) -> Result<(), MigrateError> {
    let txn = db.begin().await?;
    let has_sequence = introspect::table_exists(&txn, "sqlite_sequence").await?;
    for table in initial::TABLES {
        let columns: Vec<String> = txn
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            ))
            .await?
            .iter()
            .map(|row| {
                row.try_get::<String>("", "name")
                    .map(|c| format!("\"{c}\""))
            })
            .collect::<Result<_, _>>()?;
        let columns = columns.join(", ");
        let sequence = if has_sequence {
            sqlite_sequence(&txn, table).await?
        } else {
            None
        };
        let new = format!("new__{table}");
        txn.execute(&initial::create_table(DbBackend::Sqlite, table, &new))
            .await?;
        txn.execute_unprepared(&format!(
            "INSERT INTO \"{new}\" ({columns}) SELECT {columns} FROM \"{table}\""
        ))
        .await?;
        txn.execute_unprepared(&format!("DROP TABLE \"{table}\""))
            .await?;
        txn.execute_unprepared(&format!("ALTER TABLE \"{new}\" RENAME TO \"{table}\""))
            .await?;
        // Keep AUTOINCREMENT's promise: ids of deleted rows are never handed out again.
        if let Some(seq) = sequence {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "UPDATE sqlite_sequence SET seq = MAX(seq, $1) WHERE name = $2",
                [seq.into(), table.into()],
            ))
            .await?;
            if sqlite_sequence(&txn, table).await?.is_none() {
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ($1, $2)",
                    [table.into(), seq.into()],
                ))
                .await?;
            }
        }
    }
    for index in initial::indexes() {
        txn.execute(&index).await?;
    }
    let violations = txn
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA foreign_key_check",
        ))
        .await?;
    if !violations.is_empty() {
        return Err(MigrateError::AdoptionRefused(vec![format!(
            "{} row(s) reference a missing parent (PRAGMA foreign_key_check); fix them first",
            violations.len()
        )]));
    }
    if row_counts(&txn).await? != before {
        return Err(MigrateError::AdoptionRefused(vec![
            "row counts changed while rebuilding the tables; nothing was changed".to_owned(),
        ]));
    }
    record_initial(&txn).await?;
    txn.commit().await?;
    Ok(())
}

async fn sqlite_sequence(db: &impl ConnectionTrait, table: &str) -> Result<Option<i64>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT seq FROM sqlite_sequence WHERE name = $1",
            [table.into()],
        ))
        .await?;
    row.map(|r| r.try_get::<i64>("", "seq")).transpose()
}

/// PostgreSQL alters in place: set the defaults, replace each foreign key by its cascading
/// version under the same name, and bring identity sequences up to the highest id.
async fn alter_postgres(db: &DatabaseConnection) -> Result<(), MigrateError> {
    let txn = db.begin().await?;
    for (table, column, default) in initial::DEFAULTS {
        let alter = Table::alter()
            .table(Alias::new(*table))
            .modify_column(ColumnDef::new(Alias::new(*column)).default(default.expr()))
            .take();
        txn.execute(&alter).await?;
    }
    for (table, fk) in [
        ("api_app", initial::app_repository_fk()),
        ("api_deployment", initial::deployment_app_fk()),
    ] {
        let existing = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT conname FROM pg_constraint \
                 WHERE contype = 'f' AND conrelid = (quote_ident(current_schema()) || '.' || quote_ident($1))::regclass",
                [table.into()],
            ))
            .await?;
        for row in existing {
            let name: String = row.try_get("", "conname")?;
            txn.execute_unprepared(&format!(
                "ALTER TABLE \"{table}\" DROP CONSTRAINT \"{name}\""
            ))
            .await?;
        }
        txn.execute(&fk).await?;
    }
    // Rows inserted with explicit ids (fixtures, `loaddata`, hand-written SQL) leave an
    // identity sequence behind its table; move each forward to cover every id, never back.
    for table in initial::TABLES {
        txn.execute_unprepared(&format!(
            "SELECT setval(seq, GREATEST(COALESCE(pg_sequence_last_value(seq), 0), max_id)) \
             FROM (SELECT pg_get_serial_sequence('\"{table}\"', 'id')::regclass AS seq, \
                          (SELECT MAX(id) FROM \"{table}\") AS max_id) AS s \
             WHERE max_id IS NOT NULL"
        ))
        .await?;
    }
    record_initial(&txn).await?;
    txn.commit().await?;
    Ok(())
}
