//! Every read below GraphQL: filters, keyset pages, counts, nested pages for many parents
//! at once, the loader keys and their batches, and the per-request batching driver.
//!
//! Nothing here knows GraphQL (no async-graphql imports): [`crate::graphql`] turns
//! arguments into these inputs and these results into its types. Writes, and reads that
//! decide a rule, live in [`crate::domain`].

pub mod batch;
pub mod filters;
pub mod loaders;
pub mod nested;
pub mod page;

use entity::deployment::{self, DeploymentStatus};
use entity::{Timestamp, app, deployment_status_count, repository};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use self::filters::{DeploymentFilter, FilterCondition};

/// How many rows of `E` match `filter`.
pub async fn count<E: EntityTrait>(
    db: &impl ConnectionTrait,
    filter: &impl FilterCondition,
) -> Result<u64, DbErr>
where
    E::Model: Sync,
{
    E::find().filter(filter.condition()).count(db).await
}

/// How many deployments match `filter`. Filtered by status alone (or not at all), the answer
/// is the sum of the counts the database keeps per status (`api_deployment_status_count`,
/// migration 10): a few rows, however many deployments match. Any other filter counts the
/// matching rows.
pub async fn count_deployments(
    db: &impl ConnectionTrait,
    filter: &DeploymentFilter,
) -> Result<u64, DbErr> {
    let DeploymentFilter {
        statuses,
        created_after: None,
        created_before: None,
        app_id: None,
    } = filter
    else {
        return count::<deployment::Entity>(db, filter).await;
    };
    let mut query = deployment_status_count::Entity::find()
        .select_only()
        .expr(Expr::cust("CAST(COALESCE(SUM(n), 0) AS BIGINT)"));
    if !statuses.is_empty() {
        query = query.filter(deployment_status_count::Column::Status.is_in(statuses.clone()));
    }
    let sum: Option<i64> = query.into_tuple().one(db).await?;
    Ok(sum.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// How many deployments are in each status, counted row by row (from the
/// `(status, created_at, id)` index); statuses without deployments are left out.
pub async fn deployments_by_status(
    db: &impl ConnectionTrait,
) -> Result<Vec<(DeploymentStatus, i64)>, DbErr> {
    deployment::Entity::find()
        .select_only()
        .column(deployment::Column::Status)
        .column_as(deployment::Column::Id.count(), "count")
        .group_by(deployment::Column::Status)
        .into_tuple()
        .all(db)
        .await
}

/// The counts kept per status (`api_deployment_status_count`): each status's sum of the
/// deltas up to id `up_to` (all of them when `None`). A status whose deltas cancel out has a
/// sum of zero.
pub async fn kept_deployment_counts(
    db: &impl ConnectionTrait,
    up_to: Option<i64>,
) -> Result<Vec<(DeploymentStatus, i64)>, DbErr> {
    let mut query = deployment_status_count::Entity::find()
        .select_only()
        .column(deployment_status_count::Column::Status)
        .expr(Expr::cust("CAST(SUM(n) AS BIGINT)"))
        .group_by(deployment_status_count::Column::Status);
    if let Some(id) = up_to {
        query = query.filter(deployment_status_count::Column::Id.lte(id));
    }
    query.into_tuple().all(db).await
}

/// How an app is named in a lookup.
pub enum AppKey<'a> {
    Id(i64),
    Name(&'a str),
}

/// One app, with its repository when `with_repository` (read in the same statement).
pub async fn app(
    db: &impl ConnectionTrait,
    key: AppKey<'_>,
    with_repository: bool,
) -> Result<Option<(app::Model, Option<repository::Model>)>, DbErr> {
    let query = app::Entity::find().filter(match key {
        AppKey::Id(id) => app::Column::Id.eq(id),
        AppKey::Name(name) => app::Column::Name.eq(name),
    });
    if with_repository {
        query.find_also_related(repository::Entity).one(db).await
    } else {
        Ok(query.one(db).await?.map(|app| (app, None)))
    }
}

/// Deployments by status, and how long the oldest queued one has waited (zero when none
/// is): the deployment queue as `/metrics` shows it. Both read the `(status, created_at, id)`
/// index.
pub async fn deployment_queue(
    db: &impl ConnectionTrait,
) -> Result<(Vec<(DeploymentStatus, i64)>, std::time::Duration), DbErr> {
    let counts = deployments_by_status(db).await?;
    let oldest: Option<Timestamp> = deployment::Entity::find()
        .select_only()
        .column(deployment::Column::CreatedAt)
        .filter(deployment::Column::Status.eq(DeploymentStatus::Queued))
        .order_by_asc(deployment::Column::CreatedAt)
        .into_tuple()
        .one(db)
        .await?;
    let waited = oldest
        .and_then(|at| (Timestamp::now().as_utc() - at.as_utc()).to_std().ok())
        .unwrap_or_default();
    Ok((counts, waited))
}
