//! Every write is audited, whatever its entry point: `api_audit_event.token_role` also
//! accepts the actors that are not API tokens — `operator` (the `keystone` command on the
//! server), `webhook` (a Git host's push notification) and `system` (Keystone itself, e.g.
//! the lease sweeper) — and the object acted on is stored as its type and row id
//! (`object_type`, `object_database_id`), which the API formats as a global ID when read.
//! `object_id` keeps the ID a caller sent when the call failed before naming an object, and
//! the global IDs of rows written before this migration (the trail is append-only: they stay
//! as written).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

use crate::m20261130_000008_check_enumerations::{Rule, add_rule, drop_rule};

#[derive(DeriveMigrationName)]
pub struct Migration;

const AUDIT: &str = "api_audit_event";
const TOKEN_ROLE: &str = "token_role";
const OBJECT_TYPE: &str = "object_type";

const ROLES_BEFORE: &[&str] = &["admin", "viewer", "runner", "anonymous"];
const ROLES: &[&str] = &[
    "admin",
    "viewer",
    "runner",
    "anonymous",
    "operator",
    "webhook",
    "system",
];
const OBJECT_TYPES: &[&str] = &["Repository", "App", "Deployment", "ApiToken"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        manager
            .alter_table(
                Table::alter()
                    .table(AUDIT)
                    .add_column(ColumnDef::new(OBJECT_TYPE).string_len(16).null())
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(AUDIT)
                    .add_column(ColumnDef::new("object_database_id").big_integer().null())
                    .take(),
            )
            .await?;
        let statements = drop_rule(backend, AUDIT, TOKEN_ROLE)
            .into_iter()
            .chain(add_rule(backend, AUDIT, TOKEN_ROLE, &Rule::OneOf(ROLES)))
            .chain(add_rule(
                backend,
                AUDIT,
                OBJECT_TYPE,
                &Rule::NullOrOneOf(OBJECT_TYPES),
            ));
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    /// Refused by PostgreSQL once the trail holds a row of an actor added here (the old
    /// constraint cannot hold): such rows cannot be deleted, and must not be lost.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let statements = drop_rule(backend, AUDIT, OBJECT_TYPE)
            .into_iter()
            .chain(drop_rule(backend, AUDIT, TOKEN_ROLE))
            .chain(add_rule(
                backend,
                AUDIT,
                TOKEN_ROLE,
                &Rule::OneOf(ROLES_BEFORE),
            ));
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        for column in ["object_database_id", OBJECT_TYPE] {
            manager
                .alter_table(Table::alter().table(AUDIT).drop_column(column).take())
                .await?;
        }
        Ok(())
    }
}
