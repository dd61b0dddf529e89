//! Batched reads for nested fields. One [`Reader`] implements `Loader` for every key type;
//! a fresh `DataLoader<Reader>` is made per request (or WebSocket connection), so batching
//! never crosses callers. Every batch is one SQL statement, however many parents asked.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use async_graphql::dataloader::{DataLoader, Loader};
use entity::Timestamp;
use entity::app::{self, AccessMode, AppStatus};
use entity::deployment::{self, DeploymentStatus};
use entity::prelude::*;
use entity::repository;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, FromQueryResult, QueryFilter,
    QuerySelect,
};

use super::connection::{
    Cursor, PageArgs, PageRows, Paged, SortKey, SortValue, load_pages_per_parent,
};

pub type Loaders = DataLoader<Reader>;

/// Loaders whose batches run as tasks of their own, after async-graphql's default 1 ms
/// delay. For WebSocket connections, whose operations run inside async-graphql-axum.
pub fn loaders(db: DatabaseConnection) -> Loaders {
    DataLoader::new(Reader { db }, tokio::spawn)
}

/// Runs `work` (one GraphQL request) with loaders whose batches run inside the same task,
/// and start only once every resolver of the request is waiting.
///
/// Each batch then holds every key of its level however long the resolvers took to get
/// there, and starts at once, with no timer. (With batches spawned onto other worker
/// threads after a fixed delay, a slow or preempted request splits a level into several
/// statements; and list resolution yields part-way through long lists, so "the request
/// returned Pending" does not yet mean "every resolver is waiting".)
pub async fn with_request_loaders<T>(
    db: DatabaseConnection,
    work: impl FnOnce(Loaders) -> BoxFuture<'static, T>,
) -> T {
    let (spawn, spawned) = tokio::sync::mpsc::unbounded_channel::<BoxFuture<'static, ()>>();
    let loaders = DataLoader::new(Reader { db }, move |batch| {
        let _ = spawn.send(batch);
    })
    .delay(Duration::ZERO);
    RequestDriver {
        work: work(loaders),
        spawned,
        batches: FuturesUnordered::new(),
    }
    .await
}

struct RequestDriver<T> {
    work: BoxFuture<'static, T>,
    spawned: tokio::sync::mpsc::UnboundedReceiver<BoxFuture<'static, ()>>,
    batches: FuturesUnordered<BoxFuture<'static, ()>>,
}

/// Forwards wake-ups, noting whether one happened (a future that wakes itself while being
/// polled wants to be polled again: it yielded, it is not waiting).
struct NotingWaker {
    inner: Waker,
    woken: AtomicBool,
}

impl Wake for NotingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.inner.wake_by_ref();
    }
}

impl<T> Future for RequestDriver<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        /// Re-polls of a self-waking request before batches run anyway (and the task
        /// yields to the runtime), so tokio's cooperative budget can never make this spin.
        const MAX_REPOLLS: usize = 64;
        let noting = Arc::new(NotingWaker {
            inner: cx.waker().clone(),
            woken: AtomicBool::new(false),
        });
        let waker = Waker::from(noting.clone());
        let this = &mut *self;
        loop {
            let mut repolls = 0;
            loop {
                noting.woken.store(false, Ordering::Release);
                if let Poll::Ready(output) =
                    this.work.as_mut().poll(&mut Context::from_waker(&waker))
                {
                    return Poll::Ready(output);
                }
                repolls += 1;
                if !noting.woken.load(Ordering::Acquire) || repolls == MAX_REPOLLS {
                    break;
                }
            }
            while let Poll::Ready(Some(batch)) = this.spawned.poll_recv(cx) {
                this.batches.push(batch);
            }
            match this.batches.poll_next_unpin(cx) {
                // A batch finished: its results may let the request go on.
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

pub struct Reader {
    db: DatabaseConnection,
}

type LoadResult<K, V> = Result<HashMap<K, V>, Arc<DbErr>>;

/// A filter that becomes a SQL condition.
pub trait FilterCondition {
    fn condition(&self) -> Condition;
}

/// Filters on repositories.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RepositoryFilter {
    pub name_contains: Option<String>,
}

impl FilterCondition for RepositoryFilter {
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if let Some(part) = &self.name_contains {
            // `%` and `_` are matched as themselves, not as wildcards.
            let escaped = part
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            condition = condition.add(
                repository::Column::Name
                    .like(sea_orm::sea_query::LikeExpr::new(format!("%{escaped}%")).escape('\\')),
            );
        }
        condition
    }
}

/// Filters on apps (hashable, so pages can be batched by filter).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppFilter {
    pub statuses: Vec<AppStatus>,
    pub access_mode: Option<AccessMode>,
    pub repo_id: Option<i64>,
}

impl FilterCondition for AppFilter {
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if !self.statuses.is_empty() {
            condition = condition.add(app::Column::Status.is_in(self.statuses.clone()));
        }
        if let Some(mode) = self.access_mode {
            condition = condition.add(app::Column::AccessMode.eq(mode));
        }
        if let Some(repo_id) = self.repo_id {
            condition = condition.add(app::Column::RepoId.eq(repo_id));
        }
        condition
    }
}

/// Filters on deployments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeploymentFilter {
    pub statuses: Vec<DeploymentStatus>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub app_id: Option<i64>,
}

impl FilterCondition for DeploymentFilter {
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if !self.statuses.is_empty() {
            condition = condition.add(deployment::Column::Status.is_in(self.statuses.clone()));
        }
        if let Some(after) = self.created_after {
            condition = condition.add(deployment::Column::CreatedAt.gte(after));
        }
        if let Some(before) = self.created_before {
            condition = condition.add(deployment::Column::CreatedAt.lt(before));
        }
        if let Some(app_id) = self.app_id {
            condition = condition.add(deployment::Column::AppId.eq(app_id));
        }
        condition
    }
}

/// Repositories and apps are ordered by id or by name.
fn name_or_id_cursor(key: SortKey, name: &str, id: i64) -> Cursor {
    let value = match key {
        SortKey::Name => SortValue::Name(name.to_owned()),
        SortKey::Id | SortKey::CreatedAt => SortValue::Id,
    };
    Cursor { value, id }
}

impl Paged for repository::Entity {
    fn id_column() -> Self::Column {
        repository::Column::Id
    }
    fn sort_column(key: SortKey) -> Option<Self::Column> {
        match key {
            SortKey::Name => Some(repository::Column::Name),
            SortKey::Id | SortKey::CreatedAt => None,
        }
    }
    fn cursor(model: &Self::Model, key: SortKey) -> Cursor {
        name_or_id_cursor(key, &model.name, model.id)
    }
}

impl Paged for app::Entity {
    fn id_column() -> Self::Column {
        app::Column::Id
    }
    fn sort_column(key: SortKey) -> Option<Self::Column> {
        match key {
            SortKey::Name => Some(app::Column::Name),
            SortKey::Id | SortKey::CreatedAt => None,
        }
    }
    fn cursor(model: &Self::Model, key: SortKey) -> Cursor {
        name_or_id_cursor(key, &model.name, model.id)
    }
}

impl Paged for deployment::Entity {
    fn id_column() -> Self::Column {
        deployment::Column::Id
    }
    fn sort_column(key: SortKey) -> Option<Self::Column> {
        match key {
            SortKey::CreatedAt => Some(deployment::Column::CreatedAt),
            SortKey::Id | SortKey::Name => None,
        }
    }
    fn cursor(model: &Self::Model, key: SortKey) -> Cursor {
        let value = match key {
            SortKey::CreatedAt => SortValue::CreatedAt(model.created_at),
            SortKey::Id | SortKey::Name => SortValue::Id,
        };
        Cursor {
            value,
            id: model.id,
        }
    }
}

/// Rows by primary key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RepositoryId(pub i64);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppId(pub i64);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentId(pub i64);

/// A page of one repository's apps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppsOfRepository {
    pub repo_id: i64,
    pub filter: AppFilter,
    pub page: PageArgs,
}

/// A page of one app's deployments (also its latest deployment: first 1, newest first).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentsOfApp {
    pub app_id: i64,
    pub filter: DeploymentFilter,
    pub page: PageArgs,
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

async fn by_id<E, K>(
    db: &DatabaseConnection,
    keys: &[K],
    id_of_key: fn(&K) -> i64,
    id_column: E::Column,
    id_of: fn(&E::Model) -> i64,
    key_of: fn(i64) -> K,
) -> LoadResult<K, E::Model>
where
    E: EntityTrait,
    K: std::hash::Hash + Eq,
{
    let rows = E::find()
        .filter(id_column.is_in(keys.iter().map(id_of_key)))
        .all(db)
        .await
        .map_err(Arc::new)?;
    Ok(rows.into_iter().map(|m| (key_of(id_of(&m)), m)).collect())
}

impl Loader<RepositoryId> for Reader {
    type Value = repository::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[RepositoryId]) -> LoadResult<RepositoryId, Self::Value> {
        by_id::<Repository, _>(
            &self.db,
            keys,
            |k| k.0,
            repository::Column::Id,
            |m| m.id,
            RepositoryId,
        )
        .await
    }
}

impl Loader<AppId> for Reader {
    type Value = app::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[AppId]) -> LoadResult<AppId, Self::Value> {
        by_id::<App, _>(&self.db, keys, |k| k.0, app::Column::Id, |m| m.id, AppId).await
    }
}

impl Loader<DeploymentId> for Reader {
    type Value = deployment::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[DeploymentId]) -> LoadResult<DeploymentId, Self::Value> {
        by_id::<Deployment, _>(
            &self.db,
            keys,
            |k| k.0,
            deployment::Column::Id,
            |m| m.id,
            DeploymentId,
        )
        .await
    }
}

/// Where an app is placed (which runner), by app id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlacementOfApp(pub i64);

impl Loader<PlacementOfApp> for Reader {
    type Value = entity::app_placement::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[PlacementOfApp]) -> LoadResult<PlacementOfApp, Self::Value> {
        by_id::<entity::prelude::AppPlacement, _>(
            &self.db,
            keys,
            |k| k.0,
            entity::app_placement::Column::AppId,
            |m| m.app_id,
            PlacementOfApp,
        )
        .await
    }
}

/// The runner bookkeeping of a deployment (`api_deployment_run`), by deployment id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunOfDeployment(pub i64);

impl Loader<RunOfDeployment> for Reader {
    type Value = entity::deployment_run::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[RunOfDeployment]) -> LoadResult<RunOfDeployment, Self::Value> {
        by_id::<entity::prelude::DeploymentRun, _>(
            &self.db,
            keys,
            |k| k.0,
            entity::deployment_run::Column::DeploymentId,
            |m| m.deployment_id,
            RunOfDeployment,
        )
        .await
    }
}

/// Pages are handed out in an `Arc`: `DataLoader::load_one` clones the value it returns,
/// and a page holds whole rows.
///
/// Loads pages for keys that differ only by parent: one statement per distinct
/// (filter, page) pair, which in practice is one per nested field of a query.
async fn pages_per_parent<E, K, F>(
    db: &DatabaseConnection,
    keys: &[K],
    parent_column: E::Column,
    parent_of: fn(&E::Model) -> i64,
    split: fn(&K) -> (i64, &F, &PageArgs),
) -> LoadResult<K, Arc<PageRows<E::Model>>>
where
    E: Paged,
    E::Model: FromQueryResult + Clone,
    K: Clone + std::hash::Hash + Eq,
    F: Clone + std::hash::Hash + Eq + FilterCondition,
{
    let mut groups: HashMap<(F, PageArgs), Vec<&K>> = HashMap::new();
    for key in keys {
        let (_, filter, page) = split(key);
        groups
            .entry((filter.clone(), page.clone()))
            .or_default()
            .push(key);
    }
    let mut out = HashMap::new();
    for ((filter, page), group) in groups {
        let parents: Vec<i64> = group.iter().map(|k| split(k).0).collect();
        let mut pages = load_pages_per_parent::<E>(
            db,
            parent_column,
            parent_of,
            &parents,
            filter.condition(),
            &page,
        )
        .await
        .map_err(Arc::new)?;
        for key in group {
            let parent = split(key).0;
            out.insert(
                key.clone(),
                Arc::new(pages.remove(&parent).unwrap_or_default()),
            );
        }
    }
    Ok(out)
}

impl Loader<AppsOfRepository> for Reader {
    type Value = Arc<PageRows<app::Model>>;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[AppsOfRepository]) -> LoadResult<AppsOfRepository, Self::Value> {
        pages_per_parent::<App, _, _>(
            &self.db,
            keys,
            app::Column::RepoId,
            |m| m.repo_id,
            |k| (k.repo_id, &k.filter, &k.page),
        )
        .await
    }
}

impl Loader<DeploymentsOfApp> for Reader {
    type Value = Arc<PageRows<deployment::Model>>;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[DeploymentsOfApp]) -> LoadResult<DeploymentsOfApp, Self::Value> {
        pages_per_parent::<Deployment, _, _>(
            &self.db,
            keys,
            deployment::Column::AppId,
            |m| m.app_id,
            |k| (k.app_id, &k.filter, &k.page),
        )
        .await
    }
}

#[derive(FromQueryResult)]
struct ParentCount {
    parent: i64,
    n: i64,
}

/// `SELECT parent, COUNT(*) … GROUP BY parent` for keys that differ only by parent.
async fn counts_per_parent<E, K, F>(
    db: &DatabaseConnection,
    keys: &[K],
    parent_column: E::Column,
    split: fn(&K) -> (i64, &F),
) -> LoadResult<K, u64>
where
    E: EntityTrait,
    K: Clone + std::hash::Hash + Eq,
    F: Clone + std::hash::Hash + Eq + FilterCondition,
{
    let mut groups: HashMap<F, Vec<&K>> = HashMap::new();
    for key in keys {
        groups.entry(split(key).1.clone()).or_default().push(key);
    }
    let mut out = HashMap::new();
    for (filter, group) in groups {
        let parents: Vec<i64> = group.iter().map(|k| split(k).0).collect();
        let counts: HashMap<i64, i64> = E::find()
            .select_only()
            .column_as(parent_column, "parent")
            .column_as(Expr::col(parent_column).count(), "n")
            .filter(parent_column.is_in(parents))
            .filter(filter.condition())
            .group_by(parent_column)
            .into_model::<ParentCount>()
            .all(db)
            .await
            .map_err(Arc::new)?
            .into_iter()
            .map(|c| (c.parent, c.n))
            .collect();
        for key in group {
            let n = counts.get(&split(key).0).copied().unwrap_or(0);
            out.insert(key.clone(), n as u64);
        }
    }
    Ok(out)
}

impl Loader<AppCount> for Reader {
    type Value = u64;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[AppCount]) -> LoadResult<AppCount, u64> {
        counts_per_parent::<App, _, _>(&self.db, keys, app::Column::RepoId, |k| {
            (k.repo_id, &k.filter)
        })
        .await
    }
}

impl Loader<DeploymentCount> for Reader {
    type Value = u64;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[DeploymentCount]) -> LoadResult<DeploymentCount, u64> {
        counts_per_parent::<Deployment, _, _>(&self.db, keys, deployment::Column::AppId, |k| {
            (k.app_id, &k.filter)
        })
        .await
    }
}
