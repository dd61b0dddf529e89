//! `api_app_webhook`: an app's push webhook: its secret, sealed like config vars (signatures are
//! checked with the secret itself), and the push waiting for the running deployment to end.

use sea_orm::entity::prelude::*;

use crate::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_app_webhook")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub app_id: i64,
    /// The secret, sealed (see the server's `domain::secrets`).
    #[sea_orm(column_type = "Text")]
    pub sealed_secret: String,
    pub created_at: Timestamp,
    /// A pushed commit to deploy once the running deployment ends.
    #[sea_orm(column_type = "String(StringLen::N(40))", nullable)]
    pub pending_commit: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::app::Entity",
        from = "Column::AppId",
        to = "super::app::Column::Id",
        on_delete = "Cascade"
    )]
    App,
}

impl Related<super::app::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::App.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
