//! async-graphql's `DataLoader` over [`crate::store::loaders`]: a fresh one per request (or
//! WebSocket connection), so batching never crosses callers.

use std::time::Duration;

use async_graphql::dataloader::{DataLoader, Loader};
use futures_util::future::BoxFuture;
use sea_orm::DatabaseConnection;

use crate::store::batch::run_with_batches;
use crate::store::loaders::{BatchLoad, Store};

pub use crate::store::loaders::{
    AppCount, AppId, AppsOfRepository, DeploymentCount, DeploymentId, DeploymentsOfApp, EnvOfApp,
    PlacementOfApp, RepositoryId, RunOfDeployment, ServedOfApp, SettingsOfApp, WebhookOfApp,
};

pub type Loaders = DataLoader<Reader>;

/// The store, as a `Loader` of every key it can batch.
pub struct Reader(Store);

impl<K> Loader<K> for Reader
where
    K: Send + Sync + Clone + Eq + std::hash::Hash + 'static,
    Store: BatchLoad<K>,
{
    type Value = <Store as BatchLoad<K>>::Value;
    type Error = std::sync::Arc<sea_orm::DbErr>;

    async fn load(
        &self,
        keys: &[K],
    ) -> Result<std::collections::HashMap<K, Self::Value>, Self::Error> {
        self.0.load(keys).await
    }
}

/// Loaders whose batches run as tasks of their own, after async-graphql's default 1 ms
/// delay. For WebSocket connections, whose operations run inside async-graphql-axum.
pub fn loaders(db: DatabaseConnection) -> Loaders {
    DataLoader::new(Reader(Store { db }), tokio::spawn)
}

/// Runs `work` (one GraphQL request) with loaders whose batches run inside the request's
/// task, by the rules of [`crate::store::batch`]: one batch per level, no timer.
pub async fn with_request_loaders<T>(
    db: DatabaseConnection,
    work: impl FnOnce(Loaders) -> BoxFuture<'static, T>,
) -> T {
    run_with_batches(move |queue| {
        let loaders = DataLoader::new(Reader(Store { db }), move |batch| queue.push(batch))
            .delay(Duration::ZERO);
        work(loaders)
    })
    .await
}
