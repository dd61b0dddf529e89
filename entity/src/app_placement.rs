//! `api_app_placement`: the runner an app runs on (the first runner that claimed one of its
//! deployments); later deployments of the app are claimed only by that runner.

use sea_orm::entity::prelude::*;

use crate::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_app_placement")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub app_id: i64,
    /// The runner's token name.
    #[sea_orm(column_type = "String(StringLen::N(100))")]
    pub runner_name: String,
    /// The host name the runner advertises for its apps (`App.url`), if any.
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub public_host: Option<String>,
    pub placed_at: Timestamp,
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
