//! The initial schema: `api_repository`, `api_app`, `api_deployment`, column for column what
//! the Django version of Keystone created (`../shared/fixtures/`), plus what Django only
//! emulated in Python: database defaults and `ON DELETE CASCADE` from repository to apps to
//! deployments. Index and constraint names are Django's, so an adopted database and a fresh
//! one end up identical.
//!
//! The table definitions are also used by [`crate::adopt`], which rebuilds (SQLite) or alters
//! (PostgreSQL) a Django-created database into exactly this shape.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

pub const NAME: &str = "m20261126_000001_create_tables";

/// The tables this migration owns, parents first.
pub(crate) const TABLES: [&str; 3] = ["api_repository", "api_app", "api_deployment"];

/// A column's database default.
#[derive(Clone, Copy)]
pub(crate) enum Default {
    Text(&'static str),
    Now,
}

impl Default {
    pub(crate) fn expr(self) -> SimpleExpr {
        match self {
            Default::Text(text) => text.into(),
            Default::Now => Expr::current_timestamp(),
        }
    }
}

/// Every database default, as (table, column, default). Django kept these in Python.
pub(crate) const DEFAULTS: &[(&str, &str, Default)] = &[
    ("api_repository", "default_branch", Default::Text("main")),
    ("api_app", "access_mode", Default::Text("PORT")),
    ("api_app", "status", Default::Text("draft")),
    ("api_deployment", "status", Default::Text("queued")),
    ("api_deployment", "image_tag", Default::Text("")),
    ("api_deployment", "created_at", Default::Now),
    ("api_deployment", "error_summary", Default::Text("")),
    ("api_deployment", "logs_path", Default::Text("")),
];

fn with_default(mut column: ColumnDef, table: &str, name: &str) -> ColumnDef {
    if let Some((_, _, default)) = DEFAULTS.iter().find(|(t, c, _)| *t == table && *c == name) {
        column.default(default.expr());
    }
    column
}

pub(crate) fn id() -> ColumnDef {
    ColumnDef::new("id")
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .take()
}

fn varchar(table: &str, name: &str, len: u32) -> ColumnDef {
    with_default(
        ColumnDef::new(name.to_owned())
            .string_len(len)
            .not_null()
            .take(),
        table,
        name,
    )
}

/// `timestamp with time zone` on PostgreSQL; `datetime` on SQLite, as Django declared it.
pub(crate) fn timestamp(backend: DbBackend, table: &str, name: &str, not_null: bool) -> ColumnDef {
    let mut column = ColumnDef::new(name.to_owned());
    match backend {
        DbBackend::Sqlite => column.custom("datetime"),
        _ => column.timestamp_with_time_zone(),
    };
    if not_null {
        column.not_null();
    } else {
        column.null();
    }
    with_default(column, table, name)
}

/// `api_app.repo_id → api_repository.id`, cascading.
pub(crate) fn app_repository_fk() -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name("api_app_repo_id_650c880a_fk_api_repository_id")
        .from("api_app", "repo_id")
        .to("api_repository", "id")
        .on_delete(ForeignKeyAction::Cascade)
        .take()
}

/// `api_deployment.app_id → api_app.id`, cascading.
pub(crate) fn deployment_app_fk() -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name("api_deployment_app_id_1bd474a8_fk_api_app_id")
        .from("api_deployment", "app_id")
        .to("api_app", "id")
        .on_delete(ForeignKeyAction::Cascade)
        .take()
}

/// The CREATE TABLE statement for one of [`TABLES`], created under `name` (the adoption
/// rebuild on SQLite creates `new__<table>` first).
pub(crate) fn create_table(backend: DbBackend, table: &str, name: &str) -> TableCreateStatement {
    let mut stmt = Table::create();
    stmt.table(Alias::new(name)).col(id());
    match table {
        "api_repository" => {
            stmt.col(varchar(table, "name", 120))
                .col(varchar(table, "git_url", 200))
                .col(varchar(table, "default_branch", 120));
        }
        "api_app" => {
            stmt.col(varchar(table, "name", 120).unique_key().take())
                .col(varchar(table, "access_mode", 10))
                .col(ColumnDef::new("current_port").integer().null())
                .col(varchar(table, "status", 20))
                .col(ColumnDef::new("repo_id").big_integer().not_null())
                .foreign_key(&mut app_repository_fk());
        }
        "api_deployment" => {
            stmt.col(varchar(table, "status", 20))
                .col(varchar(table, "image_tag", 200))
                .col(ColumnDef::new("assigned_port").integer().null())
                .col(timestamp(backend, table, "created_at", true))
                .col(timestamp(backend, table, "started_at", false))
                .col(timestamp(backend, table, "ended_at", false))
                .col(with_default(
                    ColumnDef::new("error_summary").text().not_null().take(),
                    table,
                    "error_summary",
                ))
                .col(varchar(table, "logs_path", 255))
                .col(ColumnDef::new("app_id").big_integer().not_null())
                .foreign_key(&mut deployment_app_fk());
        }
        other => unreachable!("not a table of this migration: {other}"),
    }
    stmt
}

/// The indexes on foreign keys, named as Django named them.
pub(crate) fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        Index::create()
            .name("api_app_repo_id_650c880a")
            .table("api_app")
            .col("repo_id")
            .take(),
        Index::create()
            .name("api_deployment_app_id_1bd474a8")
            .table("api_deployment")
            .col("app_id")
            .take(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        for table in TABLES {
            manager
                .create_table(create_table(backend, table, table))
                .await?;
        }
        for index in indexes() {
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(Alias::new(*table)).take())
                .await?;
        }
        Ok(())
    }
}

/// The values this schema defines for its enumerated columns, as (table, column, values).
pub(crate) const KNOWN_VALUES: &[(&str, &str, &[&str])] = &[
    ("api_app", "access_mode", &["PORT", "HOST"]),
    (
        "api_app",
        "status",
        &["draft", "deploying", "running", "failed", "stopped"],
    ),
    (
        "api_deployment",
        "status",
        &["queued", "running", "success", "failed", "cancelled"],
    ),
];
