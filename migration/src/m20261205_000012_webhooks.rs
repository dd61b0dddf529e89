//! Deploy on push: `api_app_webhook` holds each app's webhook secret (sealed, like config
//! vars: the server must read it back to check signatures) and the push that waits for the
//! running deployment to end (`pending_commit`); `api_webhook_delivery` remembers the
//! deliveries received (by the sender's delivery id) for a day, so a replayed delivery is
//! ignored. `api_deployment_run.branch` records the branch a deployment builds when it is not
//! the repository's default (`deployApp(input: { branch })`), and `pinned_commit` the commit
//! every attempt must build (a push's, or `deployApp(input: { commitSha })`). Deleting an app
//! deletes its webhook and deliveries.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

use crate::m20261126_000001_create_tables::timestamp;
use crate::m20261130_000008_check_enumerations::{Rule, add_rule, drop_rule};

#[derive(DeriveMigrationName)]
pub struct Migration;

const WEBHOOK: &str = "api_app_webhook";
const DELIVERY: &str = "api_webhook_delivery";
/// The columns `api_deployment_run` gains, with their lengths.
const RUN_COLUMNS: [(&str, u32); 2] = [("branch", 120), ("pinned_commit", 40)];
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
                    .table(WEBHOOK)
                    .col(
                        ColumnDef::new("app_id")
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new("sealed_secret").text().not_null())
                    .col(timestamp(backend, WEBHOOK, "created_at", true))
                    .col(ColumnDef::new("pending_commit").string_len(40).null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("api_app_webhook_app_id_fk")
                            .from(WEBHOOK, "app_id")
                            .to("api_app", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DELIVERY)
                    .col(ColumnDef::new("app_id").big_integer().not_null())
                    .col(ColumnDef::new("delivery").string_len(100).not_null())
                    .col(timestamp(backend, DELIVERY, "received_at", true))
                    .primary_key(Index::create().col("app_id").col("delivery"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("api_webhook_delivery_app_id_fk")
                            .from(DELIVERY, "app_id")
                            .to("api_app", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_webhook_delivery_received_at")
                    .table(DELIVERY)
                    .col("received_at")
                    .take(),
            )
            .await?;
        for (column, length) in RUN_COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(RUN)
                        .add_column(ColumnDef::new(column).string_len(length).null())
                        .take(),
                )
                .await?;
        }
        let db = manager.get_connection();
        for statement in add_rule(backend, WEBHOOK, "pending_commit", &Rule::MaxLength(40))
            .into_iter()
            .chain(add_rule(
                backend,
                DELIVERY,
                "delivery",
                &Rule::MaxLength(100),
            ))
            .chain(RUN_COLUMNS.into_iter().flat_map(|(column, length)| {
                add_rule(backend, RUN, column, &Rule::MaxLength(length))
            }))
        {
            if backend == sea_orm_migration::sea_orm::DbBackend::Sqlite {
                db.execute_unprepared(&statement).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        for (column, _) in RUN_COLUMNS.into_iter().rev() {
            for statement in drop_rule(backend, RUN, column) {
                if backend == sea_orm_migration::sea_orm::DbBackend::Sqlite {
                    db.execute_unprepared(&statement).await?;
                }
            }
            manager
                .alter_table(Table::alter().table(RUN).drop_column(column).take())
                .await?;
        }
        manager
            .drop_table(Table::drop().table(DELIVERY).take())
            .await?;
        manager
            .drop_table(Table::drop().table(WEBHOOK).take())
            .await
    }
}
