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
    /// The commit to build (40 hex digits): set when the deployment is queued for a given
    /// commit (a push), else by the runner once it has cloned.
    #[sea_orm(column_type = "String(StringLen::N(40))", nullable)]
    pub commit_sha: Option<String>,
    /// The commit asked for (a push's, or `deployApp(commitSha:)`): every attempt builds it.
    /// `None`: each attempt builds the branch's head (and records it in `commit_sha`).
    #[sea_orm(column_type = "String(StringLen::N(40))", nullable)]
    pub pinned_commit: Option<String>,
    /// The branch to build, when not the repository's default.
    #[sea_orm(column_type = "String(StringLen::N(120))", nullable)]
    pub branch: Option<String>,
    /// Where the runner is with it.
    pub stage: Option<Stage>,
    /// For a rollback: the earlier successful deployment whose release it reuses.
    pub source_deployment_id: Option<i64>,
    /// The sequence number of the last log chunk applied (0: none).
    #[sea_orm(default_value = 0)]
    pub log_sequence: i64,
    /// Lines in the log written through numbered chunks (the next line's number is this + 1).
    #[sea_orm(default_value = 0)]
    pub log_lines: i64,
}

/// A running deployment's stage, as its runner reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(20))")]
pub enum Stage {
    #[sea_orm(string_value = "clone")]
    Clone,
    #[sea_orm(string_value = "build")]
    Build,
    #[sea_orm(string_value = "release")]
    Release,
    #[sea_orm(string_value = "start")]
    Start,
    #[sea_orm(string_value = "health_check")]
    HealthCheck,
    #[sea_orm(string_value = "switch")]
    Switch,
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
