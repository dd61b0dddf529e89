//! An index on `api_deployment (app_id, created_at, id)`: an app's deployments newest first
//! (`App.deployments`, `App.latestDeployment`, the nested pages of `Repository.apps`) are
//! then read in index order instead of sorted, on SQLite and PostgreSQL. It starts with
//! `app_id`, so it also serves the foreign key and replaces the plain index Django made.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NEW: &str = "api_deployment_app_id_created_at_id";
const OLD: &str = "api_deployment_app_id_1bd474a8";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NEW)
                    .table("api_deployment")
                    .col("app_id")
                    .col("created_at")
                    .col("id")
                    .take(),
            )
            .await?;
        manager
            .drop_index(Index::drop().name(OLD).table("api_deployment").to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(OLD)
                    .table("api_deployment")
                    .col("app_id")
                    .take(),
            )
            .await?;
        manager
            .drop_index(Index::drop().name(NEW).table("api_deployment").to_owned())
            .await
    }
}
