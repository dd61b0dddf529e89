//! The runner: which runner an app is placed on (`api_app_placement`: the first runner that
//! runs an app keeps it, so its port and instances stay on one host), and per deployment the
//! commit a runner built, the stage it is at, for a rollback the deployment whose release it
//! reuses, and the sequence number of the last log chunk applied (`api_deployment_run.
//! commit_sha`, `stage`, `source_deployment_id`, `log_sequence`).

use sea_orm_migration::prelude::*;

use crate::m20261126_000001_create_tables::timestamp;

#[derive(DeriveMigrationName)]
pub struct Migration;

const PLACEMENT: &str = "api_app_placement";
const RUN: &str = "api_deployment_run";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                Table::create()
                    .table(PLACEMENT)
                    .col(
                        ColumnDef::new("app_id")
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new("runner_name").string_len(100).not_null())
                    .col(ColumnDef::new("public_host").string_len(255).null())
                    .col(timestamp(backend, PLACEMENT, "placed_at", true))
                    .foreign_key(
                        ForeignKey::create()
                            .name("api_app_placement_app_id_fk")
                            .from(PLACEMENT, "app_id")
                            .to("api_app", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        // Runners ask for their own apps.
        manager
            .create_index(
                Index::create()
                    .name("api_app_placement_runner_name")
                    .table(PLACEMENT)
                    .col("runner_name")
                    .take(),
            )
            .await?;
        // SQLite adds one column per statement.
        for column in [
            ColumnDef::new("commit_sha").string_len(40).null().take(),
            ColumnDef::new("stage").string_len(20).null().take(),
            ColumnDef::new("source_deployment_id")
                .big_integer()
                .null()
                .take(),
            ColumnDef::new("log_sequence")
                .big_integer()
                .not_null()
                .default(0)
                .take(),
            ColumnDef::new("log_lines")
                .big_integer()
                .not_null()
                .default(0)
                .take(),
        ] {
            manager
                .alter_table(Table::alter().table(RUN).add_column(column).take())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            "commit_sha",
            "stage",
            "source_deployment_id",
            "log_sequence",
            "log_lines",
        ] {
            manager
                .alter_table(Table::alter().table(RUN).drop_column(column).take())
                .await?;
        }
        manager
            .drop_table(Table::drop().table(PLACEMENT).take())
            .await
    }
}
