//! `totalCount` on connections: a `COUNT` that runs only when the field is selected, through
//! a loader when the connection is nested (one `GROUP BY` for all parents).

use async_graphql::{Context, Object};
use entity::prelude::*;
use sea_orm::{EntityTrait, PaginatorTrait, QueryFilter};

use super::api_token::ApiTokenFilter;
use super::audit_event::AuditEventFilter;
use super::error::OrInternal;
use super::loaders::{
    AppCount, AppFilter, DeploymentCount, DeploymentFilter, FilterCondition, RepositoryFilter,
};
use super::{api, loaders};

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
            TotalCount::Repositories(f) => Repository::find().filter(f.condition()).count(db).await,
            TotalCount::Apps(f) => App::find().filter(f.condition()).count(db).await,
            TotalCount::Deployments(f) => Deployment::find().filter(f.condition()).count(db).await,
            TotalCount::ApiTokens(f) => ApiToken::find().filter(f.condition()).count(db).await,
            TotalCount::AuditEvents(f) => AuditEvent::find().filter(f.condition()).count(db).await,
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
