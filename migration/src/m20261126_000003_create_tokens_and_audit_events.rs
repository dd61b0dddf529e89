//! Access control: `api_token` (API tokens, stored only as a SHA-256 hash of the secret) and
//! `api_audit_event` (one row per mutation: who, what, on which object, when, the outcome).
//!
//! The audit table is append-only in the database itself: triggers refuse `UPDATE` and
//! `DELETE` (and `TRUNCATE` on PostgreSQL), so no code path, not even a buggy one, can
//! rewrite history. Token names are unique forever (a revoked token keeps its name), so an
//! audit row's token name always means one token.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::m20261126_000001_create_tables::{id, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

const TOKEN: &str = "api_token";
const AUDIT: &str = "api_audit_event";

fn varchar(name: &str, len: u32) -> ColumnDef {
    ColumnDef::new(name.to_owned())
        .string_len(len)
        .not_null()
        .take()
}

fn now(mut column: ColumnDef) -> ColumnDef {
    column.default(Expr::current_timestamp());
    column
}

fn create_token_table(backend: DbBackend) -> TableCreateStatement {
    Table::create()
        .table(TOKEN)
        .col(id())
        .col(varchar("name", 100).unique_key().take())
        .col(varchar("role", 16))
        // Hex SHA-256 of the whole secret; the secret itself is never stored.
        .col(varchar("secret_hash", 64).unique_key().take())
        // The secret's first characters, to recognise a token in listings and logs.
        .col(varchar("secret_prefix", 16))
        .col(now(timestamp(backend, TOKEN, "created_at", true)))
        .col(varchar("created_by", 100))
        .col(timestamp(backend, TOKEN, "expires_at", false))
        .col(timestamp(backend, TOKEN, "last_used_at", false))
        .col(timestamp(backend, TOKEN, "revoked_at", false))
        .take()
}

fn create_audit_table(backend: DbBackend) -> TableCreateStatement {
    Table::create()
        .table(AUDIT)
        .col(id())
        .col(now(timestamp(backend, AUDIT, "occurred_at", true)))
        // No foreign key: the trail outlives anything it mentions.
        .col(ColumnDef::new("token_id").big_integer().null())
        .col(varchar("token_name", 100))
        .col(varchar("token_role", 16))
        .col(varchar("operation", 100))
        .col(ColumnDef::new("arguments").text().not_null())
        .col(ColumnDef::new("object_id").string_len(200).null())
        .col(varchar("outcome", 16))
        .col(ColumnDef::new("error_code").string_len(50).null())
        .col(ColumnDef::new("error_message").text().null())
        .take()
}

/// Statements that make `api_audit_event` append-only.
fn append_only(backend: DbBackend) -> Vec<&'static str> {
    match backend {
        DbBackend::Sqlite => vec![
            "CREATE TRIGGER api_audit_event_no_update BEFORE UPDATE ON api_audit_event \
             BEGIN SELECT RAISE(ABORT, 'api_audit_event is append-only'); END",
            "CREATE TRIGGER api_audit_event_no_delete BEFORE DELETE ON api_audit_event \
             BEGIN SELECT RAISE(ABORT, 'api_audit_event is append-only'); END",
        ],
        _ => vec![
            "CREATE OR REPLACE FUNCTION api_audit_event_append_only() RETURNS trigger \
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'api_audit_event is append-only'; END $$",
            "CREATE TRIGGER api_audit_event_no_change BEFORE UPDATE OR DELETE ON api_audit_event \
             FOR EACH ROW EXECUTE FUNCTION api_audit_event_append_only()",
            "CREATE TRIGGER api_audit_event_no_truncate BEFORE TRUNCATE ON api_audit_event \
             FOR EACH STATEMENT EXECUTE FUNCTION api_audit_event_append_only()",
        ],
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager.create_table(create_token_table(backend)).await?;
        manager.create_table(create_audit_table(backend)).await?;
        // The audit connection lists newest first, optionally by operation or token.
        for (name, columns) in [
            ("api_audit_event_occurred_at_id", &["occurred_at", "id"][..]),
            (
                "api_audit_event_operation",
                &["operation", "occurred_at"][..],
            ),
            (
                "api_audit_event_token_name",
                &["token_name", "occurred_at"][..],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(AUDIT);
            for column in columns {
                index.col(*column);
            }
            manager.create_index(index).await?;
        }
        let db = manager.get_connection();
        for statement in append_only(backend) {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping the table drops its triggers.
        manager
            .drop_table(Table::drop().table(AUDIT).take())
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS api_audit_event_append_only()")
                .await?;
        }
        manager.drop_table(Table::drop().table(TOKEN).take()).await
    }
}
