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
use entity::{Timestamp, app, repository};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use self::filters::FilterCondition;

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
    let counts: Vec<(DeploymentStatus, i64)> = deployment::Entity::find()
        .select_only()
        .column(deployment::Column::Status)
        .column_as(deployment::Column::Id.count(), "count")
        .group_by(deployment::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
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
