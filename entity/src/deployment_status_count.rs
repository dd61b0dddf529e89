//! `api_deployment_status_count`: signed deltas of how many deployments are in each status,
//! inserted by triggers on `api_deployment` (migration 10). A status's count is the sum of
//! its rows; the server now and then folds them into one row per status.

use sea_orm::entity::prelude::*;

use crate::deployment::DeploymentStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_deployment_status_count")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub status: DeploymentStatus,
    /// How many deployments entered (positive) or left (negative) `status`.
    pub n: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
