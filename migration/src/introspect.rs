//! What Keystone's tables look like in a live database, read with sea-schema and reduced to
//! the facts that matter (types, nullability, defaults, keys, uniqueness, foreign keys,
//! indexes), so that two schemas can be compared on either backend: the migrated schema
//! against the entities (`keystone verify`), or a Django-created database against the
//! initial migration (adoption).
//!
//! Only Keystone's own tables are read: their names start with `api_` (Django's app label,
//! kept for compatibility). Django's other tables and `seaql_migrations` are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sea_orm_migration::sea_orm::sea_query::{ColumnType, ForeignKeyAction, StringLen};
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement,
};

/// Prefix of every table Keystone owns.
pub const TABLE_PREFIX: &str = "api_";

/// A column type, normalized so equal types compare equal across the ways they are spelled.
/// On SQLite every integer is `BigInteger` (SQLite has one 64-bit integer type) and
/// `datetime` is `Timestamp`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SqlType {
    Integer,
    BigInteger,
    VarChar(u32),
    Text,
    /// A date and time with time zone (PostgreSQL `timestamptz`; SQLite `datetime`).
    Timestamp,
    Other(String),
}

impl SqlType {
    /// Normalizes a sea-query column type as `backend` stores it.
    pub fn from_column_type(ty: &ColumnType, backend: DbBackend) -> Self {
        let sqlite = backend == DbBackend::Sqlite;
        match ty {
            ColumnType::TinyInteger | ColumnType::SmallInteger | ColumnType::Integer if !sqlite => {
                SqlType::Integer
            }
            ColumnType::TinyInteger
            | ColumnType::SmallInteger
            | ColumnType::Integer
            | ColumnType::BigInteger => SqlType::BigInteger,
            ColumnType::String(StringLen::N(len)) => SqlType::VarChar(*len),
            ColumnType::Text => SqlType::Text,
            ColumnType::TimestampWithTimeZone => SqlType::Timestamp,
            ColumnType::DateTime | ColumnType::Timestamp if sqlite => SqlType::Timestamp,
            ColumnType::Custom(name) if sqlite && name.to_string() == "datetime" => {
                SqlType::Timestamp
            }
            other => SqlType::Other(format!("{other:?}")),
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Integer => f.write_str("integer"),
            SqlType::BigInteger => f.write_str("bigint"),
            SqlType::VarChar(len) => write!(f, "varchar({len})"),
            SqlType::Text => f.write_str("text"),
            SqlType::Timestamp => f.write_str("timestamp with time zone"),
            SqlType::Other(other) => f.write_str(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FkAction {
    NoAction,
    Restrict,
    Cascade,
    SetNull,
    SetDefault,
    /// An action added to sea-query after this code was written.
    Unknown,
}

impl FkAction {
    /// The action an entity relation declares (`None` is the SQL default, NO ACTION).
    pub fn from_declared(action: Option<ForeignKeyAction>) -> Self {
        match action {
            None | Some(ForeignKeyAction::NoAction) => FkAction::NoAction,
            Some(ForeignKeyAction::Restrict) => FkAction::Restrict,
            Some(ForeignKeyAction::Cascade) => FkAction::Cascade,
            Some(ForeignKeyAction::SetNull) => FkAction::SetNull,
            Some(ForeignKeyAction::SetDefault) => FkAction::SetDefault,
            Some(_) => FkAction::Unknown,
        }
    }
}

impl fmt::Display for FkAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FkAction::NoAction => "NO ACTION",
            FkAction::Restrict => "RESTRICT",
            FkAction::Cascade => "CASCADE",
            FkAction::SetNull => "SET NULL",
            FkAction::SetDefault => "SET DEFAULT",
            FkAction::Unknown => "(unknown action)",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnShape {
    pub ty: SqlType,
    pub nullable: bool,
    pub has_default: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignKeyShape {
    pub columns: Vec<String>,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
    pub on_delete: FkAction,
}

impl fmt::Display for ForeignKeyShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "foreign key ({}) -> {}({})",
            self.columns.join(", "),
            self.ref_table,
            self.ref_columns.join(", ")
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableShape {
    pub columns: BTreeMap<String, ColumnShape>,
    pub primary_key: Vec<String>,
    /// Column sets with a unique constraint or unique index (the primary key excluded).
    pub uniques: BTreeSet<Vec<String>>,
    pub foreign_keys: BTreeSet<ForeignKeyShape>,
    /// Column lists of non-unique indexes.
    pub indexes: BTreeSet<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaShape {
    pub backend: DbBackend,
    pub tables: BTreeMap<String, TableShape>,
}

/// Which facts a comparison looks at.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// Whether columns must agree on having a database default.
    pub defaults: bool,
    /// Whether foreign keys must agree on their `ON DELETE` action.
    pub on_delete: bool,
    /// Whether the expected non-unique indexes must exist (extra ones are always allowed).
    pub indexes: bool,
}

impl Compare {
    pub const EVERYTHING: Compare = Compare {
        defaults: true,
        on_delete: true,
        indexes: true,
    };
}

fn cols(columns: &[String]) -> String {
    columns.join(", ")
}

/// Every way `actual` differs from `expected`, one human-readable line each; empty when they
/// agree. `expected_name` and `actual_name` say where each side comes from ("entities",
/// "database", ...).
pub fn differences(
    expected: &SchemaShape,
    actual: &SchemaShape,
    expected_name: &str,
    actual_name: &str,
    compare: Compare,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, table) in &expected.tables {
        match actual.tables.get(name) {
            None => out.push(format!(
                "table {name}: in {expected_name}, missing from {actual_name}"
            )),
            Some(other) => table_differences(
                name,
                table,
                other,
                expected_name,
                actual_name,
                compare,
                &mut out,
            ),
        }
    }
    for name in actual.tables.keys() {
        if !expected.tables.contains_key(name) {
            out.push(format!(
                "table {name}: in {actual_name}, missing from {expected_name}"
            ));
        }
    }
    out
}

fn table_differences(
    table: &str,
    expected: &TableShape,
    actual: &TableShape,
    en: &str,
    an: &str,
    compare: Compare,
    out: &mut Vec<String>,
) {
    for (name, col) in &expected.columns {
        let Some(other) = actual.columns.get(name) else {
            out.push(format!("column {table}.{name}: in {en}, missing from {an}"));
            continue;
        };
        if col.ty != other.ty {
            out.push(format!(
                "column {table}.{name}: type {} in {en}, {} in {an}",
                col.ty, other.ty
            ));
        }
        if col.nullable != other.nullable {
            let null = |n: bool| if n { "NULL" } else { "NOT NULL" };
            out.push(format!(
                "column {table}.{name}: {} in {en}, {} in {an}",
                null(col.nullable),
                null(other.nullable)
            ));
        }
        if compare.defaults && col.has_default != other.has_default {
            let default = |d: bool| if d { "a default" } else { "no default" };
            out.push(format!(
                "column {table}.{name}: {} in {en}, {} in {an}",
                default(col.has_default),
                default(other.has_default)
            ));
        }
    }
    for name in actual.columns.keys() {
        if !expected.columns.contains_key(name) {
            out.push(format!("column {table}.{name}: in {an}, missing from {en}"));
        }
    }
    if expected.primary_key != actual.primary_key {
        out.push(format!(
            "table {table}: primary key ({}) in {en}, ({}) in {an}",
            cols(&expected.primary_key),
            cols(&actual.primary_key)
        ));
    }
    for unique in expected.uniques.symmetric_difference(&actual.uniques) {
        let (has, lacks) = if expected.uniques.contains(unique) {
            (en, an)
        } else {
            (an, en)
        };
        out.push(format!(
            "table {table}: unique ({}) in {has}, missing from {lacks}",
            cols(unique)
        ));
    }
    let key = |fk: &ForeignKeyShape| {
        (
            fk.columns.clone(),
            fk.ref_table.clone(),
            fk.ref_columns.clone(),
        )
    };
    for fk in &expected.foreign_keys {
        match actual
            .foreign_keys
            .iter()
            .find(|other| key(other) == key(fk))
        {
            None => out.push(format!("table {table}: {fk} in {en}, missing from {an}")),
            Some(other) if compare.on_delete && other.on_delete != fk.on_delete => {
                out.push(format!(
                    "table {table}: {fk} is ON DELETE {} in {en}, ON DELETE {} in {an}",
                    fk.on_delete, other.on_delete
                ))
            }
            Some(_) => {}
        }
    }
    for fk in &actual.foreign_keys {
        if !expected
            .foreign_keys
            .iter()
            .any(|other| key(other) == key(fk))
        {
            out.push(format!("table {table}: {fk} in {an}, missing from {en}"));
        }
    }
    if compare.indexes {
        for index in expected.indexes.difference(&actual.indexes) {
            out.push(format!(
                "table {table}: index on ({}) in {en}, missing from {an}",
                cols(index)
            ));
        }
    }
}

fn discovery_error(error: impl fmt::Display) -> DbErr {
    DbErr::Custom(format!("schema discovery failed: {error}"))
}

/// Reads the shape of Keystone's tables (`api_*`) from a live database.
pub async fn discover(db: &DatabaseConnection) -> Result<SchemaShape, DbErr> {
    let tables = match db.get_database_backend() {
        DbBackend::Sqlite => discover_sqlite(db).await?,
        DbBackend::Postgres => discover_postgres(db).await?,
        other => return Err(DbErr::Custom(format!("unsupported database: {other:?}"))),
    };
    Ok(SchemaShape {
        backend: db.get_database_backend(),
        tables: tables
            .into_iter()
            .filter(|(name, _)| name.starts_with(TABLE_PREFIX))
            .collect(),
    })
}

async fn discover_sqlite(db: &DatabaseConnection) -> Result<BTreeMap<String, TableShape>, DbErr> {
    use sea_schema::sqlite::def::{DefaultType, ForeignKeyAction};
    use sea_schema::sqlite::discovery::SchemaDiscovery;

    let schema = SchemaDiscovery::new(db.get_sqlite_connection_pool().clone())
        .discover()
        .await
        .map_err(discovery_error)?;
    let mut tables = BTreeMap::new();
    for table in schema.tables {
        let mut shape = TableShape::default();
        for column in &table.columns {
            shape.columns.insert(
                column.name.clone(),
                ColumnShape {
                    ty: SqlType::from_column_type(&column.r#type, DbBackend::Sqlite),
                    nullable: !column.not_null,
                    has_default: !matches!(column.default_value, DefaultType::Unspecified),
                },
            );
            if column.primary_key {
                shape.primary_key.push(column.name.clone());
            }
        }
        for unique in &table.constraints {
            shape.uniques.insert(unique.columns.clone());
        }
        for fk in &table.foreign_keys {
            shape.foreign_keys.insert(ForeignKeyShape {
                columns: fk.from.clone(),
                ref_table: fk.table.clone(),
                ref_columns: fk.to.clone(),
                on_delete: match fk.on_delete {
                    ForeignKeyAction::NoAction => FkAction::NoAction,
                    ForeignKeyAction::Restrict => FkAction::Restrict,
                    ForeignKeyAction::Cascade => FkAction::Cascade,
                    ForeignKeyAction::SetNull => FkAction::SetNull,
                    ForeignKeyAction::SetDefault => FkAction::SetDefault,
                },
            });
        }
        tables.insert(table.name.clone(), shape);
    }
    for index in schema.indexes {
        if let Some(shape) = tables.get_mut(&index.table_name) {
            if index.unique {
                shape.uniques.insert(index.columns);
            } else {
                shape.indexes.insert(index.columns);
            }
        }
    }
    Ok(tables)
}

/// The schema unqualified names resolve to (PostgreSQL), i.e. the first of the search path.
pub async fn current_schema(db: &impl ConnectionTrait) -> Result<String, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_schema() AS schema",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("no current schema".into()))?;
    let schema: Option<String> = row.try_get("", "schema")?;
    schema.ok_or_else(|| DbErr::Custom("the search path names no existing schema".into()))
}

/// Whether a failed catalog query met DDL running in another session (SQLSTATE XX000,
/// PostgreSQL's class for "the object vanished under me" in catalog functions).
fn is_catalog_race(error: &sea_schema::sqlx_types::SqlxError) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "XX000")
}

async fn discover_postgres(db: &DatabaseConnection) -> Result<BTreeMap<String, TableShape>, DbErr> {
    use sea_schema::postgres::def::{ColumnDefault, ForeignKeyAction, Type};
    use sea_schema::postgres::discovery::SchemaDiscovery;

    let schema_name = current_schema(db).await?;
    // The catalog views sea-schema reads (`information_schema.check_constraints`, the
    // columns' privilege checks) evaluate functions on every schema's rows before the
    // schema filter applies, so DDL in another schema of the same database (a table
    // dropped meanwhile) can fail one discovery with an internal error such as "could not
    // open relation with OID" or "cache lookup failed for relation". PostgreSQL reports
    // those catalog races as SQLSTATE XX000, never a fault of this schema: retried.
    let mut attempt = 0;
    let schema = loop {
        attempt += 1;
        match SchemaDiscovery::new(db.get_postgres_connection_pool().clone(), &schema_name)
            .discover()
            .await
        {
            Ok(schema) => break schema,
            Err(error) if attempt < 5 && is_catalog_race(&error) => {
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            Err(error) => return Err(discovery_error(error)),
        }
    };
    let mut tables = BTreeMap::new();
    for table in schema.tables {
        let mut shape = TableShape::default();
        for column in &table.columns {
            let ty = match &column.col_type {
                Type::Integer => SqlType::Integer,
                Type::BigInt => SqlType::BigInteger,
                Type::Varchar(attr) => match attr.length {
                    Some(len) => SqlType::VarChar(len.into()),
                    None => SqlType::Other("varchar".into()),
                },
                Type::Text => SqlType::Text,
                Type::TimestampWithTimeZone(_) => SqlType::Timestamp,
                other => SqlType::Other(format!("{other:?}")),
            };
            shape.columns.insert(
                column.name.clone(),
                ColumnShape {
                    ty,
                    nullable: column.not_null.is_none(),
                    has_default: matches!(
                        column.default,
                        Some(ref d) if !matches!(d, ColumnDefault::AutoIncrement(_))
                    ),
                },
            );
        }
        if let Some(pk) = table.primary_key_constraints.first() {
            shape.primary_key = pk.columns.clone();
        }
        for unique in &table.unique_constraints {
            shape.uniques.insert(unique.columns.clone());
        }
        for fk in &table.reference_constraints {
            shape.foreign_keys.insert(ForeignKeyShape {
                columns: fk.columns.clone(),
                ref_table: fk.table.clone(),
                ref_columns: fk.foreign_columns.clone(),
                on_delete: match fk.on_delete {
                    None | Some(ForeignKeyAction::NoAction) => FkAction::NoAction,
                    Some(ForeignKeyAction::Restrict) => FkAction::Restrict,
                    Some(ForeignKeyAction::Cascade) => FkAction::Cascade,
                    Some(ForeignKeyAction::SetNull) => FkAction::SetNull,
                    Some(ForeignKeyAction::SetDefault) => FkAction::SetDefault,
                },
            });
        }
        tables.insert(table.info.name.clone(), shape);
    }
    // sea-schema reports constraints but not plain indexes; read those from the catalog.
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            r#"SELECT t.relname AS table_name, ix.indisunique AS is_unique,
                      array_to_string(ARRAY(
                          SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                          ORDER BY k.ord), ',') AS columns
               FROM pg_index ix
               JOIN pg_class t ON t.oid = ix.indrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace
               WHERE n.nspname = current_schema() AND NOT ix.indisprimary"#,
        ))
        .await?;
    for row in rows {
        let table: String = row.try_get("", "table_name")?;
        let unique: bool = row.try_get("", "is_unique")?;
        let columns: String = row.try_get("", "columns")?;
        let columns: Vec<String> = columns.split(',').map(str::to_owned).collect();
        if let Some(shape) = tables.get_mut(&table) {
            if unique {
                shape.uniques.insert(columns);
            } else {
                shape.indexes.insert(columns);
            }
        }
    }
    Ok(tables)
}

/// Whether a table exists (in the current schema on PostgreSQL).
pub async fn table_exists(db: &impl ConnectionTrait, table: &str) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
        }
        _ => {
            "SELECT COUNT(*) AS n FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [table.into()]))
        .await?
        .ok_or_else(|| DbErr::Custom("COUNT returned no row".into()))?;
    Ok(row.try_get::<i64>("", "n")? > 0)
}

/// The names of Keystone's tables (`api_*`) that exist.
pub async fn keystone_tables(db: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'api\\_%' ESCAPE '\\' ORDER BY name"
        }
        _ => {
            "SELECT table_name AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name LIKE 'api\\_%' ESCAPE '\\' ORDER BY table_name"
        }
    };
    let rows = db
        .query_all_raw(Statement::from_string(backend, sql))
        .await?;
    rows.iter()
        .map(|row| row.try_get::<String>("", "name"))
        .collect()
}
