//! Trusted documents (persisted queries): `api_trusted_document` holds the GraphQL documents
//! an operator stored (`keystone documents add`), by the SHA-256 of their text, which clients
//! send instead of the text; and `api_audit_event.document_hash` records which document each
//! audited call ran.

use sea_orm_migration::prelude::*;

use crate::m20261126_000001_create_tables::timestamp;

#[derive(DeriveMigrationName)]
pub struct Migration;

const DOCUMENTS: &str = "api_trusted_document";
const AUDIT: &str = "api_audit_event";

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
                    .table(DOCUMENTS)
                    .col(
                        ColumnDef::new("hash")
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new("document").text().not_null())
                    .col(
                        ColumnDef::new("operation_names")
                            .string_len(1000)
                            .not_null(),
                    )
                    .col(timestamp(backend, DOCUMENTS, "created_at", true))
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(AUDIT)
                    .add_column(ColumnDef::new("document_hash").string_len(64).null())
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AUDIT)
                    .drop_column("document_hash")
                    .take(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(DOCUMENTS).take())
            .await
    }
}
