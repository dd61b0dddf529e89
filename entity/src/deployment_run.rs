//! `api_deployment_run`: the runner protocol's bookkeeping for one deployment (attempts,
//! lease, cancellation), beside the columns Django defined.

use sea_orm::entity::prelude::*;

use crate::Timestamp;
use crate::app::AppStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_deployment_run")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub deployment_id: i64,
    /// How many times a runner has claimed it.
    #[sea_orm(default_value = 0)]
    pub attempts: i32,
    /// The token name of the runner holding it, while it runs.
    #[sea_orm(column_type = "String(StringLen::N(100))", nullable)]
    pub runner_name: Option<String>,
    /// When the runner's lease ends unless it heartbeats.
    pub lease_expires_at: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    /// An admin asked to cancel it while it ran; the runner learns it from its heartbeat.
    #[sea_orm(default_value = false)]
    pub cancel_requested: bool,
    /// The app's status before this deployment was queued (restored if it is cancelled).
    #[sea_orm(default_value = "draft")]
    pub previous_app_status: AppStatus,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::deployment::Entity",
        from = "Column::DeploymentId",
        to = "super::deployment::Column::Id",
        on_delete = "Cascade"
    )]
    Deployment,
}

impl Related<super::deployment::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Deployment.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
