//! Taking over a database created by the Django version of Keystone: adopted in place with
//! nothing lost, given defaults and cascading deletes, or refused with nothing changed.

use crate::on_both_backends;
use crate::support::{Backend, MIGRATIONS, Server, TestDb, keystone};

const INITIAL: &str = MIGRATIONS[0];

/// Rows as Django wrote them: explicit ids with gaps, every status and access mode, NULLs,
/// microsecond timestamps. Repository 99 is deleted so AUTOINCREMENT / identity must not
/// hand out 99 again.
fn sample_rows(backend: Backend) -> String {
    let tz = if backend == Backend::Postgres {
        "+00"
    } else {
        ""
    };
    format!(
        "INSERT INTO api_repository (id, name, git_url, default_branch) VALUES \
           (1, 'web', 'https://example.com/web.git', 'main'), \
           (7, 'api', 'git@example.com:team/api.git', 'develop'), \
           (99, 'gone', 'https://example.com/gone.git', 'main'); \
         DELETE FROM api_repository WHERE id = 99; \
         INSERT INTO api_app (id, name, access_mode, current_port, status, repo_id) VALUES \
           (3, 'web-app', 'PORT', 9001, 'running', 1), \
           (4, 'docs', 'HOST', NULL, 'draft', 1), \
           (5, 'api-app', 'PORT', 9002, 'failed', 7), \
           (6, 'old', 'PORT', NULL, 'stopped', 7), \
           (8, 'busy', 'PORT', 9003, 'deploying', 7); \
         INSERT INTO api_deployment (id, status, image_tag, assigned_port, created_at, started_at, ended_at, error_summary, logs_path, app_id) VALUES \
           (10, 'success', 'web:1', 9001, '2024-02-01 10:00:00.123456{tz}', '2024-02-01 10:00:01{tz}', '2024-02-01 10:02:00{tz}', '', '/var/log/keystone/10.log', 3), \
           (11, 'failed', '', NULL, '2024-02-02 09:30:00{tz}', '2024-02-02 09:30:05{tz}', '2024-02-02 09:31:00{tz}', 'docker build failed:\nstep 3', '/var/log/keystone/11.log', 5), \
           (12, 'queued', '', NULL, '2024-02-03 08:00:00.5{tz}', NULL, NULL, '', '', 8), \
           (13, 'running', 'api:7', 9003, '2024-02-03 08:01:00{tz}', '2024-02-03 08:01:02{tz}', NULL, '', '/var/log/keystone/13.log', 8), \
           (14, 'cancelled', '', NULL, '2024-02-04 00:00:00{tz}', NULL, '2024-02-04 00:00:01{tz}', 'cancelled by admin', '', 6);"
    )
}

/// Before and after adoption, everything stored, as text.
async fn all_rows(db: &TestDb) -> Vec<String> {
    let mut rows = db
        .rows("SELECT CAST(id AS TEXT), name, git_url, default_branch FROM api_repository ORDER BY id")
        .await;
    rows.extend(
        db.rows(
            "SELECT CAST(id AS TEXT), name, access_mode, CAST(current_port AS TEXT), status, \
             CAST(repo_id AS TEXT) FROM api_app ORDER BY id",
        )
        .await,
    );
    rows.extend(
        db.rows(
            "SELECT CAST(id AS TEXT), status, image_tag, CAST(assigned_port AS TEXT), \
             CAST(created_at AS TEXT), CAST(started_at AS TEXT), CAST(ended_at AS TEXT), \
             error_summary, logs_path, CAST(app_id AS TEXT) FROM api_deployment ORDER BY id",
        )
        .await,
    );
    rows
}

async fn django_database(backend: Backend) -> TestDb {
    let db = TestDb::new(backend).await;
    db.load_django_schema().await;
    db.exec(&sample_rows(backend)).await;
    if backend == Backend::Postgres {
        // Django inserted through the identity, so its sequence had reached 99.
        db.exec("SELECT setval(pg_get_serial_sequence('api_repository', 'id'), 99)")
            .await;
    }
    db
}

/// What an adopted database must do like a fresh one: fill defaults, never reuse ids,
/// cascade deletes; and Django's other tables are left alone.
async fn assert_behaves_like_fresh(db: &TestDb) {
    assert_eq!(
        db.rows("SELECT version FROM seaql_migrations ORDER BY version")
            .await,
        MIGRATIONS,
        "adopted, then migrated on"
    );
    db.exec(
        "INSERT INTO api_repository (name, git_url) VALUES ('new', 'https://example.com/new.git')",
    )
    .await;
    assert_eq!(
        db.rows(
            "SELECT CASE WHEN id > 99 THEN 'unused id' ELSE 'reused id' END, default_branch \
             FROM api_repository WHERE name = 'new'"
        )
        .await,
        ["unused id|main"],
        "a new repository must get the default branch and an id never used before"
    );
    db.exec("INSERT INTO api_app (name, repo_id) SELECT 'fresh-app', id FROM api_repository WHERE name = 'new'").await;
    assert_eq!(
        db.rows("SELECT access_mode, status FROM api_app WHERE name = 'fresh-app'")
            .await,
        ["PORT|draft"]
    );
    db.exec("INSERT INTO api_deployment (app_id) VALUES (3)")
        .await;
    assert_eq!(
        db.rows(
            "SELECT status, image_tag, error_summary, logs_path, \
             CASE WHEN created_at IS NULL THEN 'no created_at' ELSE 'created_at set' END \
             FROM api_deployment WHERE id = (SELECT MAX(id) FROM api_deployment)"
        )
        .await,
        ["queued||||created_at set"]
    );

    // Deleting repository 1 removes its apps (3, 4) and their deployments, nothing else.
    db.exec("DELETE FROM api_repository WHERE id = 1").await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_app WHERE repo_id = 1")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_deployment WHERE app_id IN (3, 4)")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_app WHERE repo_id = 7")
            .await,
        3
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM api_deployment").await, 4);
    // The per-status counts started from Django's rows and followed every change since,
    // the cascade included.
    db.exec("UPDATE api_deployment SET status = 'failed' WHERE id = 12")
        .await;
    assert_eq!(
        db.rows(
            "SELECT status, CAST(SUM(n) AS TEXT) FROM api_deployment_status_count \
             GROUP BY status HAVING SUM(n) <> 0 ORDER BY status"
        )
        .await,
        ["cancelled|1", "failed|2", "running|1"]
    );

    assert_eq!(db.rows("SELECT name FROM auth_group").await, ["operators"]);
    assert_eq!(db.count("SELECT COUNT(*) FROM django_migrations").await, 2);
}

async fn migrate_adopts_django_database(backend: Backend) {
    let db = django_database(backend).await;
    let before = all_rows(&db).await;
    assert_eq!(before.len(), 2 + 5 + 5);

    let out = keystone(&db, &["migrate", "up"]).await;
    out.assert_success();
    assert!(
        out.stdout.contains("Adopted the Django-created database"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("api_deployment: 5 rows"),
        "{}",
        out.stdout
    );

    assert_eq!(all_rows(&db).await, before, "adoption changed stored rows");
    let status = keystone(&db, &["migrate", "status"]).await;
    assert!(
        status.stdout.contains(&format!(" [X] {INITIAL}")),
        "{}",
        status.stdout
    );
    // The adopted schema is exactly what the entities describe, and rows read back.
    keystone(&db, &["verify", "--in-place"])
        .await
        .assert_success();
    assert_behaves_like_fresh(&db).await;
}

async fn serve_adopts_django_database(backend: Backend) {
    let db = django_database(backend).await;
    let before = all_rows(&db).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    assert_eq!(server.ready().await.0, 200);
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("adopted a database created by the Django version"),
        "{log}"
    );
    assert_eq!(all_rows(&db).await, before);
    assert_behaves_like_fresh(&db).await;
}

/// Runs `migrate up` and `serve`, expects both to refuse with `expected` in the message,
/// and the database untouched.
async fn assert_refused(db: &TestDb, expected: &[&str]) {
    let snapshot = db.schema_snapshot().await;
    let rows = all_rows(db).await;
    for args in [&["migrate", "up"][..], &["serve", "--bind", "127.0.0.1:0"]] {
        let out = keystone(db, args).await;
        out.assert_failure();
        let printed = format!("{}{}", out.stdout, out.stderr);
        assert!(
            printed.contains("cannot be adopted safely"),
            "{args:?}: {printed}"
        );
        for needle in expected {
            assert!(
                printed.contains(needle),
                "{args:?}: expected {needle:?} in:\n{printed}"
            );
        }
    }
    assert_eq!(
        db.schema_snapshot().await,
        snapshot,
        "a refused adoption changed the schema"
    );
    assert_eq!(all_rows(db).await, rows, "a refused adoption changed rows");
}

async fn refuses_differing_schema(backend: Backend) {
    let db = django_database(backend).await;
    db.exec("ALTER TABLE api_app ADD COLUMN owner varchar(50) NULL")
        .await;
    assert_refused(&db, &["column api_app.owner: in the existing database, missing from Keystone's initial migration"]).await;
}

async fn refuses_unknown_values(backend: Backend) {
    let db = django_database(backend).await;
    db.exec(
        "UPDATE api_app SET status = 'archived' WHERE id IN (4, 6); \
         UPDATE api_app SET access_mode = 'SOCKET' WHERE id = 5;",
    )
    .await;
    assert_refused(
        &db,
        &[
            "api_app.status: 2 row(s) hold \"archived\"",
            "api_app.access_mode: 1 row(s) hold \"SOCKET\"",
        ],
    )
    .await;
}

async fn refuses_later_django_migration(backend: Backend) {
    let db = django_database(backend).await;
    db.exec("INSERT INTO django_migrations (app, name, applied) VALUES ('api', '0002_app_owner', '2024-03-01 00:00:00')").await;
    assert_refused(&db, &["api 0002_app_owner"]).await;
}

async fn refuses_tables_without_history(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ddl = match backend {
        Backend::Sqlite => include_str!("fixtures/keystone-django-0001.sqlite.sql"),
        Backend::Postgres => include_str!("fixtures/keystone-django-0001.postgres.sql"),
    };
    db.exec(ddl).await;
    let out = keystone(&db, &["migrate", "up"]).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("no migration history"),
        "{}",
        out.stderr
    );
    assert!(!db.tables().await.contains(&"seaql_migrations".to_owned()));
}

on_both_backends!(
    migrate_adopts_django_database,
    serve_adopts_django_database,
    refuses_differing_schema,
    refuses_unknown_values,
    refuses_later_django_migration,
    refuses_tables_without_history,
);
