//! `api_deployment_status_count`: how many deployments are in each status, kept by the
//! database itself, so `deployments(filter: { status: [FAILED] }) { totalCount }` reads a few
//! rows instead of counting every matching index entry (15,000 on the benchmark's LARGE
//! data).
//!
//! The table holds signed deltas, not one row per status: a status's count is the `SUM` of
//! its rows. Triggers on `api_deployment` only ever insert (`+1` for the new status, `-1` for
//! the old one), so concurrent writers never wait on a shared counter row, as they would if
//! each updated one (PostgreSQL would queue every `deployApp` behind the last until it
//! commits, and two transactions changing statuses in opposite orders could deadlock). The
//! server folds the deltas into one row per status now and then
//! (`domain::counts::compact`), which keeps every sum. Being triggers, they count what any
//! writer does, Keystone or not; only PostgreSQL's `TRUNCATE` bypasses them.
//!
//! `up` starts the table from the deployments already there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use crate::m20261126_000001_create_tables::id;

#[derive(DeriveMigrationName)]
pub struct Migration;

const COUNTS: &str = "api_deployment_status_count";
const INDEX: &str = "api_deployment_status_count_status";
const TRACK: &str = "api_deployment_status_count_track";

/// The triggers, named by the change they follow.
const TRIGGERS: [&str; 3] = [
    "api_deployment_status_count_insert",
    "api_deployment_status_count_update",
    "api_deployment_status_count_delete",
];

fn triggers(backend: DbBackend) -> Vec<String> {
    let [insert, update, delete] = TRIGGERS;
    let add = |values: &str| format!("INSERT INTO {COUNTS} (status, n) VALUES {values};");
    match backend {
        DbBackend::Postgres => {
            let function = format!(
                "CREATE FUNCTION {TRACK}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                   IF TG_OP <> 'INSERT' THEN {} END IF; \
                   IF TG_OP <> 'DELETE' THEN {} END IF; \
                   RETURN NULL; \
                 END $$",
                add("(OLD.status, -1)"),
                add("(NEW.status, 1)"),
            );
            let on = |name: &str, event: &str, when: &str| {
                format!(
                    "CREATE TRIGGER {name} AFTER {event} ON api_deployment FOR EACH ROW {when} \
                     EXECUTE FUNCTION {TRACK}()"
                )
            };
            vec![
                function,
                on(insert, "INSERT", ""),
                on(
                    update,
                    "UPDATE OF status",
                    "WHEN (OLD.status IS DISTINCT FROM NEW.status)",
                ),
                on(delete, "DELETE", ""),
            ]
        }
        _ => {
            let on = |name: &str, event: &str, when: &str, values: &str| {
                format!(
                    "CREATE TRIGGER {name} AFTER {event} ON api_deployment {when} BEGIN {} END",
                    add(values)
                )
            };
            vec![
                on(insert, "INSERT", "", "(NEW.status, 1)"),
                on(
                    update,
                    "UPDATE OF status",
                    "WHEN OLD.status IS NOT NEW.status",
                    "(OLD.status, -1), (NEW.status, 1)",
                ),
                on(delete, "DELETE", "", "(OLD.status, -1)"),
            ]
        }
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(COUNTS)
                    .col(id())
                    .col(ColumnDef::new("status").string_len(20).not_null())
                    .col(ColumnDef::new("n").big_integer().not_null())
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(COUNTS)
                    .col("status")
                    .take(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "INSERT INTO {COUNTS} (status, n) \
             SELECT status, COUNT(*) FROM api_deployment GROUP BY status"
        ))
        .await?;
        for statement in triggers(manager.get_database_backend()) {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        for trigger in TRIGGERS {
            let on = match backend {
                DbBackend::Postgres => " ON api_deployment",
                _ => "",
            };
            db.execute_unprepared(&format!("DROP TRIGGER {trigger}{on}"))
                .await?;
        }
        if backend == DbBackend::Postgres {
            db.execute_unprepared(&format!("DROP FUNCTION {TRACK}()"))
                .await?;
        }
        manager.drop_table(Table::drop().table(COUNTS).take()).await
    }
}
