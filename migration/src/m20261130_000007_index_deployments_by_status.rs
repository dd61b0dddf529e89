//! An index on `api_deployment (status, created_at, id)`: the newest deployments in a state
//! across all apps (`deployments(filter: { status: [FAILED] })`, newest first) are read in
//! index order, and their `totalCount` counted from the index, instead of scanning and
//! sorting every deployment.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "api_deployment_status_created_at_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table("api_deployment")
                    .col("status")
                    .col("created_at")
                    .col("id")
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table("api_deployment").to_owned())
            .await
    }
}
