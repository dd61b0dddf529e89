//! The deployment lifecycle: no two apps may hold the same host port (a unique index on
//! `api_app.current_port`; NULLs, the apps without a port, do not collide), and
//! `api_deployment_run` keeps what the runner protocol needs per deployment without
//! touching the columns Django defined: attempts, the runner holding it, its lease,
//! whether cancellation was asked for, and the app's status before the deploy (restored
//! when the deployment is cancelled).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};

use crate::m20261126_000001_create_tables::timestamp;

#[derive(DeriveMigrationName)]
pub struct Migration;

const RUN: &str = "api_deployment_run";
const PORT_INDEX: &str = "api_app_current_port_key";
const LEASE_INDEX: &str = "api_deployment_run_lease_expires_at";

fn create_run_table(backend: DbBackend) -> TableCreateStatement {
    Table::create()
        .table(RUN)
        .col(
            ColumnDef::new("deployment_id")
                .big_integer()
                .not_null()
                .primary_key(),
        )
        .col(ColumnDef::new("attempts").integer().not_null().default(0))
        .col(ColumnDef::new("runner_name").string_len(100).null())
        .col(timestamp(backend, RUN, "lease_expires_at", false))
        .col(timestamp(backend, RUN, "heartbeat_at", false))
        .col(
            ColumnDef::new("cancel_requested")
                .boolean()
                .not_null()
                .default(false),
        )
        .col(
            ColumnDef::new("previous_app_status")
                .string_len(20)
                .not_null()
                .default("draft"),
        )
        .foreign_key(
            ForeignKey::create()
                .name("api_deployment_run_deployment_id_fk")
                .from(RUN, "deployment_id")
                .to("api_deployment", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        // A database where two apps share a port cannot get the index: say which, change
        // nothing.
        let shared = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT CAST(current_port AS TEXT) AS port, COUNT(*) AS apps FROM api_app \
                 WHERE current_port IS NOT NULL GROUP BY current_port HAVING COUNT(*) > 1",
            ))
            .await?;
        if !shared.is_empty() {
            let ports: Vec<String> = shared
                .iter()
                .filter_map(|row| row.try_get::<String>("", "port").ok())
                .collect();
            return Err(DbErr::Migration(format!(
                "several apps hold the same port ({}); give each a distinct port or none \
                 (UPDATE api_app SET current_port = NULL WHERE …), then migrate again",
                ports.join(", ")
            )));
        }
        manager
            .create_index(
                Index::create()
                    .name(PORT_INDEX)
                    .table("api_app")
                    .col("current_port")
                    .unique()
                    .take(),
            )
            .await?;
        manager.create_table(create_run_table(backend)).await?;
        // Every server looks for lapsed leases every half lease: with this index that reads
        // only the running deployments' entries, however many deployments there are.
        manager
            .create_index(
                Index::create()
                    .name(LEASE_INDEX)
                    .table(RUN)
                    .col("lease_expires_at")
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RUN).take()).await?;
        manager
            .drop_index(Index::drop().name(PORT_INDEX).table("api_app").to_owned())
            .await
    }
}
