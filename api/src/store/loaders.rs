//! The keys nested reads are batched by, and how one batch of each is read: one statement
//! per batch (per distinct filter and page, for pages and counts), however many parents
//! asked. [`crate::graphql::loaders`] hands these to async-graphql's `DataLoader`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use entity::Timestamp;
use entity::prelude::*;
use entity::{
    app, app_env, app_placement, app_settings, app_webhook, deployment, deployment_run, repository,
};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};

use super::filters::{AppFilter, DeploymentFilter, FilterCondition};
use super::nested::{Columns, StandIns, counts_per_parent, pages_per_parent};
use super::page::{PageArgs, PageRows};

/// Reads batches of keys of type `K`.
pub trait BatchLoad<K> {
    type Value: Clone + Send + Sync + 'static;
    fn load(
        &self,
        keys: &[K],
    ) -> impl Future<Output = Result<HashMap<K, Self::Value>, Arc<DbErr>>> + Send;
}

/// What the batches read from.
#[derive(Clone)]
pub struct Store {
    pub db: DatabaseConnection,
}

type LoadResult<K, V> = Result<HashMap<K, V>, Arc<DbErr>>;

/// A repository by primary key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RepositoryId(pub i64);
/// An app by primary key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppId(pub i64);
/// A deployment by primary key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentId(pub i64);
/// Where an app is placed (which runner), by app id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlacementOfApp(pub i64);
/// Whether an app ever became healthy (has a successful deployment), by app id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServedOfApp(pub i64);
/// An app's settings (`api_app_settings`: its health-check path), by app id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SettingsOfApp(pub i64);
/// An app's push webhook, by app id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WebhookOfApp(pub i64);
/// An app's config var names with when each was set, by name, by app id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnvOfApp(pub i64);
/// The runner bookkeeping of a deployment (`api_deployment_run`), by deployment id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunOfDeployment(pub i64);

/// A page of one repository's apps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppsOfRepository {
    pub repo_id: i64,
    pub filter: AppFilter,
    pub page: PageArgs,
}

/// A page of one app's deployments (also its latest deployment: first 1, newest first),
/// with the columns the query reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentsOfApp {
    pub app_id: i64,
    pub filter: DeploymentFilter,
    pub page: PageArgs,
    pub columns: Columns,
}

/// How many apps of one repository match a filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppCount {
    pub repo_id: i64,
    pub filter: AppFilter,
}

/// How many deployments of one app match a filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentCount {
    pub app_id: i64,
    pub filter: DeploymentFilter,
}

/// Rows of `E` whose `column` is one of the keys' ids.
async fn by_column<E, K>(
    db: &DatabaseConnection,
    keys: &[K],
    column: E::Column,
    id_of_key: fn(&K) -> i64,
    id_of: fn(&E::Model) -> i64,
    key_of: fn(i64) -> K,
) -> LoadResult<K, E::Model>
where
    E: EntityTrait,
    K: Hash + Eq,
{
    let rows = E::find()
        .filter(column.is_in(keys.iter().map(id_of_key)))
        .all(db)
        .await
        .map_err(Arc::new)?;
    Ok(rows.into_iter().map(|m| (key_of(id_of(&m)), m)).collect())
}

macro_rules! by_column {
    ($key:ident, $entity:ident, $module:ident, $column:ident, $field:ident) => {
        impl BatchLoad<$key> for Store {
            type Value = $module::Model;
            async fn load(&self, keys: &[$key]) -> LoadResult<$key, Self::Value> {
                by_column::<$entity, _>(
                    &self.db,
                    keys,
                    $module::Column::$column,
                    |k| k.0,
                    |m| m.$field,
                    $key,
                )
                .await
            }
        }
    };
}

by_column!(RepositoryId, Repository, repository, Id, id);
by_column!(AppId, App, app, Id, id);
by_column!(DeploymentId, Deployment, deployment, Id, id);
by_column!(PlacementOfApp, AppPlacement, app_placement, AppId, app_id);
by_column!(SettingsOfApp, AppSettings, app_settings, AppId, app_id);
by_column!(WebhookOfApp, AppWebhook, app_webhook, AppId, app_id);
by_column!(
    RunOfDeployment,
    DeploymentRun,
    deployment_run,
    DeploymentId,
    deployment_id
);

impl BatchLoad<ServedOfApp> for Store {
    type Value = bool;
    async fn load(&self, keys: &[ServedOfApp]) -> LoadResult<ServedOfApp, bool> {
        use sea_orm::QuerySelect;
        let served: Vec<i64> = Deployment::find()
            .select_only()
            .column(deployment::Column::AppId)
            .distinct()
            .filter(deployment::Column::AppId.is_in(keys.iter().map(|k| k.0)))
            .filter(deployment::Column::Status.eq(deployment::DeploymentStatus::Success))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(Arc::new)?;
        Ok(keys
            .iter()
            .map(|key| (*key, served.contains(&key.0)))
            .collect())
    }
}

impl BatchLoad<EnvOfApp> for Store {
    type Value = Vec<(String, Timestamp)>;
    async fn load(&self, keys: &[EnvOfApp]) -> LoadResult<EnvOfApp, Self::Value> {
        use sea_orm::{QueryOrder, QuerySelect};
        // Names and times only: values stay sealed in the database.
        let rows: Vec<(i64, String, Timestamp)> = AppEnv::find()
            .select_only()
            .columns([
                app_env::Column::AppId,
                app_env::Column::Name,
                app_env::Column::UpdatedAt,
            ])
            .filter(app_env::Column::AppId.is_in(keys.iter().map(|k| k.0)))
            .order_by_asc(app_env::Column::Name)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(Arc::new)?;
        let mut out: HashMap<EnvOfApp, Self::Value> =
            keys.iter().map(|key| (*key, Vec::new())).collect();
        for (app_id, name, updated_at) in rows {
            if let Some(names) = out.get_mut(&EnvOfApp(app_id)) {
                names.push((name, updated_at));
            }
        }
        Ok(out)
    }
}

/// Groups keys that differ only by parent, so that each group is one statement.
fn groups<K, G: Hash + Eq>(keys: &[K], group_of: impl Fn(&K) -> G) -> HashMap<G, Vec<&K>> {
    let mut groups: HashMap<G, Vec<&K>> = HashMap::new();
    for key in keys {
        groups.entry(group_of(key)).or_default().push(key);
    }
    groups
}

/// Pages are handed out in an `Arc`: `DataLoader::load_one` clones the value it returns,
/// and a page holds whole rows.
async fn pages<E, K, F>(
    db: &DatabaseConnection,
    keys: &[K],
    parent_column: E::Column,
    parent_of: fn(&E::Model) -> i64,
    split: fn(&K) -> (i64, &F, &PageArgs, Columns),
) -> LoadResult<K, Arc<PageRows<E::Model>>>
where
    E: StandIns,
    E::Model: sea_orm::FromQueryResult,
    K: Clone + Hash + Eq,
    F: Clone + Hash + Eq + FilterCondition,
{
    let mut out = HashMap::new();
    for ((filter, page, columns), group) in groups(keys, |k| {
        let (_, filter, page, columns) = split(k);
        (filter.clone(), page.clone(), columns)
    }) {
        let parents: Vec<i64> = group.iter().map(|k| split(k).0).collect();
        let mut pages = pages_per_parent::<E>(
            db,
            parent_column,
            parent_of,
            &parents,
            filter.condition(),
            &page,
            columns,
        )
        .await
        .map_err(Arc::new)?;
        for key in group {
            let page = pages.remove(&split(key).0).unwrap_or_default();
            out.insert(key.clone(), Arc::new(page));
        }
    }
    Ok(out)
}

impl BatchLoad<AppsOfRepository> for Store {
    type Value = Arc<PageRows<app::Model>>;
    async fn load(&self, keys: &[AppsOfRepository]) -> LoadResult<AppsOfRepository, Self::Value> {
        pages::<App, _, _>(
            &self.db,
            keys,
            app::Column::RepoId,
            |m| m.repo_id,
            |k| (k.repo_id, &k.filter, &k.page, Columns::ALL),
        )
        .await
    }
}

impl BatchLoad<DeploymentsOfApp> for Store {
    type Value = Arc<PageRows<deployment::Model>>;
    async fn load(&self, keys: &[DeploymentsOfApp]) -> LoadResult<DeploymentsOfApp, Self::Value> {
        pages::<Deployment, _, _>(
            &self.db,
            keys,
            deployment::Column::AppId,
            |m| m.app_id,
            |k| (k.app_id, &k.filter, &k.page, k.columns),
        )
        .await
    }
}

async fn counts<E, K, F>(
    db: &DatabaseConnection,
    keys: &[K],
    parent_column: E::Column,
    split: fn(&K) -> (i64, &F),
) -> LoadResult<K, u64>
where
    E: EntityTrait,
    K: Clone + Hash + Eq,
    F: Clone + Hash + Eq + FilterCondition,
{
    let mut out = HashMap::new();
    for (filter, group) in groups(keys, |k| split(k).1.clone()) {
        let parents: Vec<i64> = group.iter().map(|k| split(k).0).collect();
        let counts = counts_per_parent::<E>(db, parent_column, &parents, filter.condition())
            .await
            .map_err(Arc::new)?;
        for key in group {
            out.insert(key.clone(), counts.get(&split(key).0).copied().unwrap_or(0));
        }
    }
    Ok(out)
}

impl BatchLoad<AppCount> for Store {
    type Value = u64;
    async fn load(&self, keys: &[AppCount]) -> LoadResult<AppCount, u64> {
        counts::<App, _, _>(&self.db, keys, app::Column::RepoId, |k| {
            (k.repo_id, &k.filter)
        })
        .await
    }
}

impl BatchLoad<DeploymentCount> for Store {
    type Value = u64;
    async fn load(&self, keys: &[DeploymentCount]) -> LoadResult<DeploymentCount, u64> {
        counts::<Deployment, _, _>(&self.db, keys, deployment::Column::AppId, |k| {
            (k.app_id, &k.filter)
        })
        .await
    }
}
