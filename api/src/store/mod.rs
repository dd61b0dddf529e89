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

use entity::{app, repository};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter};

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
