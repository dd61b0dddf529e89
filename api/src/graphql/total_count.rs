//! `totalCount` on connections: a `COUNT` that runs only when the field is selected, through
//! a loader when the connection is nested (one `GROUP BY` for all parents).

use async_graphql::{Context, Object};
use entity::prelude::*;

use super::error::OrInternal;
use super::loaders::{AppCount, DeploymentCount};
use super::{api, loaders};
use crate::store::filters::{
    ApiTokenFilter, AppFilter, AuditEventFilter, DeploymentFilter, RepositoryFilter,
};
use crate::store::{count, count_deployments};

pub enum TotalCount {
    Repositories(RepositoryFilter),
    Apps(AppFilter),
    Deployments(DeploymentFilter),
    AppsOfRepository(AppCount),
    DeploymentsOfApp(DeploymentCount),
    ApiTokens(ApiTokenFilter),
    AuditEvents(AuditEventFilter),
}

#[Object]
impl TotalCount {
    /// How many items match, across all pages. Computed only when selected.
    async fn total_count(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        let db = &api(ctx)?.db;
        let count = match self {
            TotalCount::Repositories(f) => count::<Repository>(db, f).await,
            TotalCount::Apps(f) => count::<App>(db, f).await,
            TotalCount::Deployments(f) => count_deployments(db, f).await,
            TotalCount::ApiTokens(f) => count::<ApiToken>(db, f).await,
            TotalCount::AuditEvents(f) => count::<AuditEvent>(db, f).await,
            TotalCount::AppsOfRepository(key) => {
                return Ok(loaders(ctx)?
                    .load_one(key.clone())
                    .await
                    .or_internal()?
                    .unwrap_or(0) as i64);
            }
            TotalCount::DeploymentsOfApp(key) => {
                return Ok(loaders(ctx)?
                    .load_one(key.clone())
                    .await
                    .or_internal()?
                    .unwrap_or(0) as i64);
            }
        };
        Ok(count.or_internal()? as i64)
    }
}
