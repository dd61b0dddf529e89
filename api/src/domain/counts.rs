//! Upkeep of `api_deployment_status_count` (migration 10), where triggers on `api_deployment`
//! record every status change as signed deltas and [`crate::store::count_deployments`] sums
//! them. Folding the deltas keeps that sum a read of a few rows.

use entity::deployment::DeploymentStatus;
use entity::deployment_status_count::{self, Column, Entity as DeploymentStatusCount};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    IsolationLevel, Iterable, PaginatorTrait, QueryFilter, QuerySelect, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

use super::writer_turn;
use crate::store::kept_deployment_counts;

/// Folds the deltas into one row per status, when there are more rows than statuses;
/// returns how many rows it folded (zero when it had nothing to do).
///
/// One transaction sums the rows up to the newest, deletes them and inserts the sums, all
/// as of one snapshot (SQLite: the write lock, taken first; PostgreSQL: `REPEATABLE READ`),
/// so each status's sum is the same before and after, whatever writers do meanwhile: a
/// delta committed after the snapshot is neither summed nor deleted. Two servers folding at
/// once cannot both delete a row: PostgreSQL refuses the second (a serialization failure),
/// which then tries again at its next sweep. The database does the arithmetic; nothing but
/// the sums (one row per status) leaves it.
pub async fn compact(db: &DatabaseConnection) -> Result<u64, DbErr> {
    let rows = DeploymentStatusCount::find().count(db).await?;
    if rows <= DeploymentStatus::iter().count() as u64 {
        return Ok(0);
    }
    let backend = db.get_database_backend();
    let _turn = writer_turn(db).await;
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            isolation_level: (backend == DbBackend::Postgres)
                .then_some(IsolationLevel::RepeatableRead),
            ..Default::default()
        })
        .await?;
    let newest: Option<i64> = DeploymentStatusCount::find()
        .select_only()
        .expr(Column::Id.max())
        .into_tuple()
        .one(&txn)
        .await?
        .flatten();
    let Some(newest) = newest else {
        return Ok(0);
    };
    let sums = kept_deployment_counts(&txn, Some(newest)).await?;
    let folded = DeploymentStatusCount::delete_many()
        .filter(Column::Id.lte(newest))
        .exec(&txn)
        .await?
        .rows_affected;
    let sums = sums
        .into_iter()
        .filter(|&(_, n)| n != 0)
        .map(|(status, n)| deployment_status_count::ActiveModel {
            id: NotSet,
            status: Set(status),
            n: Set(n),
        })
        .collect::<Vec<_>>();
    if !sums.is_empty() {
        DeploymentStatusCount::insert_many(sums).exec(&txn).await?;
    }
    txn.commit().await?;
    if backend == DbBackend::Postgres {
        // The folded rows stay in the table, dead, until vacuumed, and every count reads
        // past them: after a bulk import, as slow as counting the deployments themselves.
        // Vacuuming a table of a few live rows takes a moment and blocks nobody.
        db.execute_unprepared("VACUUM api_deployment_status_count")
            .await?;
    }
    Ok(folded)
}
