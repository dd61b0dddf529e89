//! `api_trusted_document`: a GraphQL document an operator stored, named by the SHA-256 of
//! its text (what clients send instead of the text).

use sea_orm::entity::prelude::*;

use crate::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_trusted_document")]
pub struct Model {
    /// Lowercase hex SHA-256 of `document`'s UTF-8 bytes.
    #[sea_orm(
        primary_key,
        auto_increment = false,
        column_type = "String(StringLen::N(64))"
    )]
    pub hash: String,
    /// The document, byte for byte as stored.
    #[sea_orm(column_type = "Text")]
    pub document: String,
    /// Its operations' names, comma-separated (for listing and metrics).
    #[sea_orm(column_type = "String(StringLen::N(1000))")]
    pub operation_names: String,
    pub created_at: Timestamp,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
