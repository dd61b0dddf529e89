//! `api_app`: something deployable, built from one repository.

use sea_orm::entity::prelude::*;

/// How an app is reached: on an allocated host port, or behind a host name.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(10))")]
pub enum AccessMode {
    #[sea_orm(string_value = "PORT")]
    Port,
    #[sea_orm(string_value = "HOST")]
    Host,
}

/// An app's lifecycle state, as stored in `api_app.status`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(20))")]
pub enum AppStatus {
    #[sea_orm(string_value = "draft")]
    Draft,
    #[sea_orm(string_value = "deploying")]
    Deploying,
    #[sea_orm(string_value = "running")]
    Running,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "stopped")]
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "api_app")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "String(StringLen::N(120))", unique)]
    pub name: String,
    #[sea_orm(default_value = "PORT")]
    pub access_mode: AccessMode,
    /// The host port of a PORT app, from its first deploy; unique across apps.
    #[sea_orm(unique)]
    pub current_port: Option<i32>,
    #[sea_orm(default_value = "draft")]
    pub status: AppStatus,
    pub repo_id: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::repository::Entity",
        from = "Column::RepoId",
        to = "super::repository::Column::Id",
        on_delete = "Cascade"
    )]
    Repository,
    #[sea_orm(has_many = "super::deployment::Entity")]
    Deployments,
    #[sea_orm(has_one = "super::app_placement::Entity")]
    Placement,
}

impl Related<super::repository::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Repository.def()
    }
}

impl Related<super::deployment::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Deployments.def()
    }
}

impl Related<super::app_placement::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Placement.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
