//! The database floor: the rows a workload's GraphQL request returns, fetched with the
//! minimal plain SQL statements over the same kind of pool at the same concurrency, with
//! no HTTP or GraphQL. Our throughput is reported as a fraction of this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};

use super::Measured;

#[derive(Clone, Copy, Debug)]
pub enum FloorWorkload {
    /// First 50 repositories by id; their apps; each app's 10 newest deployments.
    W1,
    /// One app by name with its repository; its 5 newest deployments.
    W2,
}

/// `?, ?, …` (SQLite) or `$1, $2, …` (PostgreSQL) for `n` parameters, from `start`.
fn placeholders(backend: DbBackend, start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| match backend {
            DbBackend::Postgres => format!("${i}"),
            _ => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type of a selected column, so each is decoded once, as the server's models are.
#[derive(Clone, Copy)]
enum Column {
    /// The row's id (collected for the next statement).
    Id,
    BigInt,
    NullableInt,
    Text,
    Timestamp,
}

/// Reads every column of every row, as a server must before it can answer; returns the ids.
fn consume(rows: &[sea_orm::QueryResult], columns: &[Column]) -> Result<Vec<i64>, DbErr> {
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        for (i, column) in columns.iter().enumerate() {
            match column {
                Column::Id => ids.push(row.try_get_by_index::<i64>(i)?),
                Column::BigInt => drop(row.try_get_by_index::<i64>(i)?),
                Column::NullableInt => drop(row.try_get_by_index::<Option<i32>>(i)?),
                Column::Text => drop(row.try_get_by_index::<String>(i)?),
                Column::Timestamp => drop(row.try_get_by_index::<entity::Timestamp>(i)?),
            }
        }
    }
    Ok(ids)
}

async fn w1(db: &DatabaseConnection) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let repositories = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT id FROM api_repository ORDER BY id LIMIT 50",
        ))
        .await?;
    let repository_ids = consume(&repositories, &[Column::Id])?;
    let apps = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT id, name, status, current_port, repo_id FROM api_app WHERE repo_id IN ({}) ORDER BY id",
                placeholders(backend, 1, repository_ids.len())
            ),
            repository_ids.iter().map(|&id| Value::from(id)),
        ))
        .await?;
    let app_ids = consume(
        &apps,
        &[
            Column::Id,
            Column::Text,
            Column::Text,
            Column::NullableInt,
            Column::BigInt,
        ],
    )?;
    let deployments = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT id, status, image_tag, created_at, app_id FROM (
                   SELECT id, status, image_tag, created_at, app_id,
                          ROW_NUMBER() OVER (PARTITION BY app_id ORDER BY created_at DESC, id DESC) AS rn
                   FROM api_deployment WHERE app_id IN ({})) AS page
                 WHERE rn <= 10",
                placeholders(backend, 1, app_ids.len())
            ),
            app_ids.iter().map(|&id| Value::from(id)),
        ))
        .await?;
    consume(
        &deployments,
        &[
            Column::Id,
            Column::Text,
            Column::Text,
            Column::Timestamp,
            Column::BigInt,
        ],
    )?;
    Ok(())
}

async fn w2(db: &DatabaseConnection, name: &str) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let app = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT a.id, a.name, r.name AS repository_name, r.git_url FROM api_app a
                 JOIN api_repository r ON r.id = a.repo_id WHERE a.name = {}",
                placeholders(backend, 1, 1)
            ),
            [Value::from(name)],
        ))
        .await?;
    let ids = consume(
        &app,
        &[Column::Id, Column::Text, Column::Text, Column::Text],
    )?;
    let deployments = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT id, status, image_tag, created_at FROM api_deployment WHERE app_id = {}
                 ORDER BY created_at DESC, id DESC LIMIT 5",
                placeholders(backend, 1, 1)
            ),
            [Value::from(ids.first().copied().unwrap_or_default())],
        ))
        .await?;
    consume(
        &deployments,
        &[Column::Id, Column::Text, Column::Text, Column::Timestamp],
    )?;
    Ok(())
}

/// Runs `workload` from `concurrency` tasks: `warmup` unmeasured, then `duration` measured.
pub async fn run(
    db: &DatabaseConnection,
    workload: FloorWorkload,
    app_names: Arc<Vec<String>>,
    concurrency: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<Measured, DbErr> {
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let db = db.clone();
        let names = app_names.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = task as usize * 7919;
            loop {
                let begun = Instant::now();
                if begun >= end {
                    break;
                }
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let outcome = match workload {
                    FloorWorkload::W1 => w1(&db).await,
                    FloorWorkload::W2 => w2(&db, &names[(i >> 33) % names.len()]).await,
                };
                if begun >= measure_from {
                    match outcome {
                        Ok(()) => latencies.push(begun.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await.map_err(|e| DbErr::Custom(e.to_string()))?;
        latencies.append(&mut l);
        errors += e;
    }
    Ok(Measured::from_latencies(latencies, errors, duration))
}
