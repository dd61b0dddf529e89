//! The database refuses what Keystone cannot read: every enumerated column accepts only the
//! values Keystone knows, and on SQLite (which does not enforce `varchar(n)`) text columns
//! keep the lengths the model declares. A row written by another program (an old Django
//! process, a hand-made `UPDATE`) with an unknown status can then no longer turn every list
//! that contains it into an error.
//!
//! PostgreSQL gets `CHECK` constraints. SQLite cannot add a constraint to an existing table
//! without rebuilding it, so it gets the same checks as triggers that abort the statement
//! (`RAISE(ABORT, …)`), before insert and before update of the column.
//!
//! Rows that already break a rule stop the migration, which names them and changes nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

const APP_STATUSES: &[&str] = &["draft", "deploying", "running", "failed", "stopped"];
const ROLES: &[&str] = &["admin", "viewer", "runner"];

pub(crate) enum Rule {
    /// One of these values.
    OneOf(&'static [&'static str]),
    /// NULL, or one of these values.
    NullOrOneOf(&'static [&'static str]),
    /// At most this many characters (SQLite only: PostgreSQL's `varchar(n)` holds already).
    MaxLength(u32),
}

/// (table, its key, column, rule).
const RULES: &[(&str, &str, &str, Rule)] = &[
    ("api_repository", "id", "name", Rule::MaxLength(120)),
    ("api_repository", "id", "git_url", Rule::MaxLength(200)),
    (
        "api_repository",
        "id",
        "default_branch",
        Rule::MaxLength(120),
    ),
    ("api_app", "id", "name", Rule::MaxLength(120)),
    (
        "api_app",
        "id",
        "access_mode",
        Rule::OneOf(&["PORT", "HOST"]),
    ),
    ("api_app", "id", "status", Rule::OneOf(APP_STATUSES)),
    (
        "api_deployment",
        "id",
        "status",
        Rule::OneOf(&["queued", "running", "success", "failed", "cancelled"]),
    ),
    ("api_deployment", "id", "image_tag", Rule::MaxLength(200)),
    ("api_deployment", "id", "logs_path", Rule::MaxLength(255)),
    ("api_token", "id", "name", Rule::MaxLength(100)),
    ("api_token", "id", "role", Rule::OneOf(ROLES)),
    (
        "api_audit_event",
        "id",
        "token_role",
        Rule::OneOf(&["admin", "viewer", "runner", "anonymous"]),
    ),
    (
        "api_audit_event",
        "id",
        "outcome",
        Rule::OneOf(&["success", "error"]),
    ),
    (
        "api_deployment_run",
        "deployment_id",
        "stage",
        Rule::NullOrOneOf(&[
            "clone",
            "build",
            "release",
            "start",
            "health_check",
            "switch",
        ]),
    ),
    (
        "api_deployment_run",
        "deployment_id",
        "previous_app_status",
        Rule::OneOf(APP_STATUSES),
    ),
];

impl Rule {
    /// The condition a row must meet, on `column` (quoted, perhaps `NEW.`-qualified).
    fn condition(&self, column: &str) -> String {
        let list = |values: &[&str]| {
            values
                .iter()
                .map(|v| format!("'{v}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Rule::OneOf(values) => format!("{column} IN ({})", list(values)),
            Rule::NullOrOneOf(values) => {
                format!("{column} IS NULL OR {column} IN ({})", list(values))
            }
            Rule::MaxLength(n) => format!("length({column}) <= {n}"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Rule::OneOf(values) | Rule::NullOrOneOf(values) => {
                format!("must be one of {}", values.join(", "))
            }
            Rule::MaxLength(n) => format!("must be at most {n} characters"),
        }
    }

    fn applies_to(&self, backend: DbBackend) -> bool {
        !matches!(self, Rule::MaxLength(_)) || backend == DbBackend::Sqlite
    }
}

fn object_name(table: &str, column: &str, suffix: &str) -> String {
    format!("{table}_{column}_{suffix}")
}

/// The statements that make the database enforce `rule` on `table.column`: a `CHECK`
/// constraint on PostgreSQL, triggers before insert and update on SQLite.
pub(crate) fn add_rule(backend: DbBackend, table: &str, column: &str, rule: &Rule) -> Vec<String> {
    match backend {
        DbBackend::Postgres => vec![format!(
            "ALTER TABLE {table} ADD CONSTRAINT {} CHECK ({})",
            object_name(table, column, "check"),
            rule.condition(column)
        )],
        _ => ["INSERT", "UPDATE"]
            .iter()
            .map(|event| {
                let on = match *event {
                    "UPDATE" => format!("UPDATE OF {column}"),
                    other => other.to_owned(),
                };
                format!(
                    "CREATE TRIGGER {} BEFORE {on} ON {table} WHEN NOT ({}) BEGIN \
                     SELECT RAISE(ABORT, 'CHECK constraint failed: {table}.{column} {}'); END",
                    object_name(table, column, &event.to_lowercase()),
                    rule.condition(&format!("NEW.{column}")),
                    rule.describe()
                )
            })
            .collect(),
    }
}

/// The statements that undo [`add_rule`].
pub(crate) fn drop_rule(backend: DbBackend, table: &str, column: &str) -> Vec<String> {
    match backend {
        DbBackend::Postgres => vec![format!(
            "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {}",
            object_name(table, column, "check")
        )],
        _ => ["insert", "update"]
            .iter()
            .map(|event| {
                format!(
                    "DROP TRIGGER IF EXISTS {}",
                    object_name(table, column, event)
                )
            })
            .collect(),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let mut offenders = Vec::new();
        for (table, key, column, rule) in RULES {
            if !rule.applies_to(backend) {
                continue;
            }
            let rows = db
                .query_all_raw(Statement::from_string(
                    backend,
                    format!(
                        "SELECT CAST({key} AS varchar(20)) AS k, CAST({column} AS varchar(300)) AS v \
                         FROM {table} WHERE NOT ({}) LIMIT 5",
                        rule.condition(column)
                    ),
                ))
                .await?;
            for row in rows {
                let k: String = row.try_get("", "k").unwrap_or_default();
                let v: Option<String> = row.try_get("", "v").ok();
                let shown = match rule {
                    Rule::MaxLength(_) => {
                        format!("{} characters", v.unwrap_or_default().chars().count())
                    }
                    _ => format!("{:?}", v.unwrap_or_else(|| "NULL".to_owned())),
                };
                offenders.push(format!(
                    "{table} {key} {k}: {column} is {shown} but {}",
                    rule.describe()
                ));
            }
        }
        if !offenders.is_empty() {
            return Err(DbErr::Migration(format!(
                "rows that Keystone cannot read stop this migration; fix them (UPDATE … SET …) \
                 and migrate again:\n  - {}",
                offenders.join("\n  - ")
            )));
        }
        for (table, _, column, rule) in RULES {
            if rule.applies_to(backend) {
                for statement in add_rule(backend, table, column, rule) {
                    db.execute_unprepared(&statement).await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        for (table, _, column, rule) in RULES {
            if rule.applies_to(backend) {
                for statement in drop_rule(backend, table, column) {
                    db.execute_unprepared(&statement).await?;
                }
            }
        }
        Ok(())
    }
}
