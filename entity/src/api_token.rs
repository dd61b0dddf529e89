//! `api_token`: an API token. Only a SHA-256 hash of its secret is stored.

use sea_orm::entity::prelude::*;

use crate::Timestamp;

/// What a token may do, as stored in `api_token.role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Role {
    #[sea_orm(string_value = "admin")]
    Admin,
    #[sea_orm(string_value = "viewer")]
    Viewer,
    #[sea_orm(string_value = "runner")]
    Runner,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_token")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "String(StringLen::N(100))", unique)]
    pub name: String,
    pub role: Role,
    #[sea_orm(column_type = "String(StringLen::N(64))", unique)]
    pub secret_hash: String,
    #[sea_orm(column_type = "String(StringLen::N(16))")]
    pub secret_prefix: String,
    #[sea_orm(default_expr = "Expr::current_timestamp()")]
    pub created_at: Timestamp,
    #[sea_orm(column_type = "String(StringLen::N(100))")]
    pub created_by: String,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
