//! `api_audit_event`: one mutation, as the audit trail recorded it. Append-only (the
//! database refuses updates and deletes).

use sea_orm::entity::prelude::*;

use crate::Timestamp;
use crate::api_token::Role;

/// Who acted, as stored in `api_audit_event.token_role`: a token's role, `anonymous` for a
/// call refused before any token was accepted, or an actor that is not a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum ActorRole {
    #[sea_orm(string_value = "admin")]
    Admin,
    #[sea_orm(string_value = "viewer")]
    Viewer,
    #[sea_orm(string_value = "runner")]
    Runner,
    #[sea_orm(string_value = "anonymous")]
    Anonymous,
    /// Someone running the `keystone` command on the server (e.g. `keystone token create`).
    #[sea_orm(string_value = "operator")]
    Operator,
    /// A Git host's push notification.
    #[sea_orm(string_value = "webhook")]
    Webhook,
    /// Keystone itself (e.g. the sweeper requeueing a deployment whose lease lapsed).
    #[sea_orm(string_value = "system")]
    System,
}

/// The kind of row an event acted on, as stored in `api_audit_event.object_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum ObjectType {
    #[sea_orm(string_value = "Repository")]
    Repository,
    #[sea_orm(string_value = "App")]
    App,
    #[sea_orm(string_value = "Deployment")]
    Deployment,
    #[sea_orm(string_value = "ApiToken")]
    ApiToken,
}

impl From<Role> for ActorRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Admin => ActorRole::Admin,
            Role::Viewer => ActorRole::Viewer,
            Role::Runner => ActorRole::Runner,
        }
    }
}

impl ActorRole {
    /// The token role, or `None` for an actor that is not a token.
    pub fn role(self) -> Option<Role> {
        match self {
            ActorRole::Admin => Some(Role::Admin),
            ActorRole::Viewer => Some(Role::Viewer),
            ActorRole::Runner => Some(Role::Runner),
            ActorRole::Anonymous | ActorRole::Operator | ActorRole::Webhook | ActorRole::System => {
                None
            }
        }
    }
}

/// How a mutation ended, as stored in `api_audit_event.outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Outcome {
    #[sea_orm(string_value = "success")]
    Success,
    #[sea_orm(string_value = "error")]
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_audit_event")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(default_expr = "Expr::current_timestamp()")]
    pub occurred_at: Timestamp,
    /// The token's id when the caller had one (no foreign key: the trail outlives tokens).
    pub token_id: Option<i64>,
    #[sea_orm(column_type = "String(StringLen::N(100))")]
    pub token_name: String,
    pub token_role: ActorRole,
    /// The mutation field, e.g. `createRepository`.
    #[sea_orm(column_type = "String(StringLen::N(100))")]
    pub operation: String,
    /// The arguments as JSON, secrets redacted.
    #[sea_orm(column_type = "Text")]
    pub arguments: String,
    /// The ID a caller named, when the call failed before acting on an object (and the
    /// object's global ID in rows written before `object_type` existed).
    #[sea_orm(column_type = "String(StringLen::N(200))", nullable)]
    pub object_id: Option<String>,
    /// The kind of row acted on, with its id in `object_database_id`.
    pub object_type: Option<ObjectType>,
    pub object_database_id: Option<i64>,
    pub outcome: Outcome,
    #[sea_orm(column_type = "String(StringLen::N(50))", nullable)]
    pub error_code: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
    /// The SHA-256 of the document the call ran (hex), when it came through the GraphQL API.
    #[sea_orm(column_type = "String(StringLen::N(64))", nullable)]
    pub document_hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
