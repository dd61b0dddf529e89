//! The benchmark's deterministic dataset: `repositories × 5 apps × N deployments`, with
//! statuses and timestamps spread the way a real installation's are (most deployments
//! succeeded, some failed or were cancelled, each app's newest may still be queued or
//! running; one every 37 minutes, oldest first).

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait};

pub const APPS_PER_REPOSITORY: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Size {
    /// 100 repositories × 5 apps × 20 deployments.
    Small,
    /// 1,000 repositories × 5 apps × 20 deployments.
    Large,
    /// SMALL with a long history: 100 repositories × 5 apps × 500 deployments. Reads of
    /// an app's newest deployments must cost what they cost on SMALL.
    History,
}

impl Size {
    pub fn repositories(self) -> usize {
        match self {
            Size::Small | Size::History => 100,
            Size::Large => 1_000,
        }
    }

    pub fn deployments_per_app(self) -> usize {
        match self {
            Size::Small | Size::Large => 20,
            Size::History => 500,
        }
    }
}

/// `2026-01-01 00:00:00` plus `minutes`, as each backend stores `created_at`.
fn timestamp(backend: DbBackend, minutes: usize) -> String {
    let at = chrono::DateTime::UNIX_EPOCH
        + chrono::Duration::minutes(1_767_225_600 / 60 + minutes as i64);
    let text = at.format("%Y-%m-%d %H:%M:%S");
    match backend {
        DbBackend::Postgres => format!("'{text}+00'"),
        _ => format!("'{text}'"),
    }
}

/// Inserts the dataset into an empty, migrated database, in one transaction.
pub async fn load(db: &DatabaseConnection, size: Size) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let mut repositories = Vec::new();
    let mut apps = Vec::new();
    let mut deployments = Vec::new();
    let mut next_port = 9000;
    for r in 1..=size.repositories() {
        repositories.push(format!(
            "({r}, 'service-{r:04}', 'https://git.example.com/team-{}/service-{r:04}.git', 'main')",
            r % 17
        ));
        for a in 0..APPS_PER_REPOSITORY {
            let app = (r - 1) * APPS_PER_REPOSITORY + a + 1;
            let (status, port_mode) = match app % 20 {
                0 => ("failed", true),
                1 => ("draft", false),
                2 => ("stopped", true),
                3 => ("deploying", true),
                _ => ("running", true),
            };
            let host = app % 5 == 4;
            let port = if !host && port_mode && next_port <= 9999 {
                next_port += 1;
                (next_port - 1).to_string()
            } else {
                "NULL".to_owned()
            };
            let mode = if host { "HOST" } else { "PORT" };
            apps.push(format!(
                "({app}, 'app-{app:05}', '{mode}', {port}, '{status}', {r})"
            ));
            let per_app = size.deployments_per_app();
            for k in 0..per_app {
                let id = (app - 1) * per_app + k + 1;
                let minutes = (id - 1) * 37 / 10;
                let newest = k == per_app - 1;
                let status = match (newest, status, id % 20) {
                    (true, "deploying", _) => {
                        if id.is_multiple_of(2) {
                            "queued"
                        } else {
                            "running"
                        }
                    }
                    (true, "failed", _) | (false, _, 0..=2) => "failed",
                    (false, _, 3) => "cancelled",
                    _ => "success",
                };
                let created = timestamp(backend, minutes);
                let (started, ended) = match status {
                    "queued" => ("NULL".to_owned(), "NULL".to_owned()),
                    "running" => (timestamp(backend, minutes + 1), "NULL".to_owned()),
                    _ => (
                        timestamp(backend, minutes + 1),
                        timestamp(backend, minutes + 3),
                    ),
                };
                let image = if status == "success" {
                    format!("app-{app:05}:{k}")
                } else {
                    String::new()
                };
                let error = if status == "failed" {
                    "build failed: exit status 1"
                } else {
                    ""
                };
                deployments.push(format!(
                    "({id}, '{status}', '{image}', {port}, {created}, {started}, {ended}, '{error}', '/var/lib/keystone/logs/{id}.log', {app})"
                ));
            }
        }
    }
    let txn = db.begin().await?;
    for (table, columns, rows) in [
        (
            "api_repository",
            "id, name, git_url, default_branch",
            &repositories,
        ),
        (
            "api_app",
            "id, name, access_mode, current_port, status, repo_id",
            &apps,
        ),
        (
            "api_deployment",
            "id, status, image_tag, assigned_port, created_at, started_at, ended_at, error_summary, logs_path, app_id",
            &deployments,
        ),
    ] {
        for chunk in rows.chunks(1_000) {
            txn.execute_unprepared(&format!(
                "INSERT INTO {table} ({columns}) VALUES {}",
                chunk.join(", ")
            ))
            .await?;
        }
    }
    if backend == DbBackend::Postgres {
        // Rows went in with explicit ids; move the identity sequences past them.
        for table in ["api_repository", "api_app", "api_deployment"] {
            txn.execute_unprepared(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            ))
            .await?;
        }
    }
    txn.commit().await?;
    // As autovacuum would leave it: statistics, and (PostgreSQL) a visibility map that lets
    // counts be answered from an index alone.
    let settle = match backend {
        DbBackend::Postgres => "VACUUM ANALYZE",
        _ => "ANALYZE",
    };
    db.execute_unprepared(settle).await?;
    Ok(())
}
