//! Upkeep of `api_deployment_status_count` (migration 10), where triggers on `api_deployment`
//! record every status change as signed deltas and [`crate::store::count_deployments`] sums
//! them. Folding the deltas keeps that sum a read of a few rows.

use std::collections::HashMap;

use entity::deployment::DeploymentStatus;
use entity::deployment_status_count::{self, Entity as DeploymentStatusCount};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    DatabaseConnection, DbErr, EntityTrait, Iterable, PaginatorTrait,
};

use super::begin_write;

/// Folds the deltas into one row per status, when there are more rows than statuses;
/// returns how many rows it folded (zero when it had nothing to do).
///
/// One transaction deletes every row it sees and inserts their sums, so each status's sum
/// is the same before and after, whatever writers or other servers do meanwhile: a delta
/// inserted concurrently is not deleted (it is not in the deleting statement's snapshot),
/// and a row another server's compaction deleted first is not counted twice.
pub async fn compact(db: &DatabaseConnection) -> Result<usize, DbErr> {
    let rows = DeploymentStatusCount::find().count(db).await?;
    if rows <= DeploymentStatus::iter().count() as u64 {
        return Ok(0);
    }
    let (_turn, txn) = begin_write(db).await?;
    let deleted = DeploymentStatusCount::delete_many()
        .exec_with_returning(&txn)
        .await?;
    let mut sums = HashMap::<DeploymentStatus, i64>::new();
    for row in &deleted {
        *sums.entry(row.status).or_default() += row.n;
    }
    let folded = sums
        .into_iter()
        .filter(|&(_, n)| n != 0)
        .map(|(status, n)| deployment_status_count::ActiveModel {
            id: NotSet,
            status: Set(status),
            n: Set(n),
        })
        .collect::<Vec<_>>();
    if !folded.is_empty() {
        DeploymentStatusCount::insert_many(folded)
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(deleted.len())
}
