//! App configuration beside Django's columns: `api_app_env` holds each app's config vars,
//! the values sealed (the server encrypts them with a key of its own before they reach the
//! database; see the server's `domain::secrets`), and `api_app_settings` its runner settings
//! (the health-check path). Deleting an app deletes both.

use sea_orm_migration::prelude::*;

use crate::m20261126_000001_create_tables::timestamp;

#[derive(DeriveMigrationName)]
pub struct Migration;

const ENV: &str = "api_app_env";
const SETTINGS: &str = "api_app_settings";

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
                    .table(ENV)
                    .col(ColumnDef::new("app_id").big_integer().not_null())
                    .col(ColumnDef::new("name").string_len(128).not_null())
                    .col(ColumnDef::new("sealed").text().not_null())
                    .col(timestamp(backend, ENV, "updated_at", true))
                    .primary_key(Index::create().col("app_id").col("name"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("api_app_env_app_id_fk")
                            .from(ENV, "app_id")
                            .to("api_app", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SETTINGS)
                    .col(
                        ColumnDef::new("app_id")
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new("health_check_path").string_len(200).null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("api_app_settings_app_id_fk")
                            .from(SETTINGS, "app_id")
                            .to("api_app", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SETTINGS).take())
            .await?;
        manager.drop_table(Table::drop().table(ENV).take()).await
    }
}
