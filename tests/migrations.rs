//! `keystone migrate …` and `keystone verify` on an empty database: applying, status,
//! rolling back, drift detection and the refusal to touch a newer schema.

use sea_orm::ConnectionTrait;

use crate::on_both_backends;
use crate::support::{Backend, MIGRATIONS, TestDb, keystone};

const INITIAL: &str = MIGRATIONS[0];
const INDEX: &str = MIGRATIONS[1];
const TOKENS: &str = MIGRATIONS[2];
const LIFECYCLE: &str = MIGRATIONS[3];
const RUNNER: &str = MIGRATIONS[4];
const CONFIG_VARS: &str = MIGRATIONS[5];
const STATUS_INDEX: &str = MIGRATIONS[6];
const CHECKS: &str = MIGRATIONS[7];
const DOCUMENTS: &str = MIGRATIONS[8];
const COUNTS: &str = MIGRATIONS[9];
const ACTORS: &str = MIGRATIONS[10];
const WEBHOOKS: &str = MIGRATIONS[11];
/// Every table the migrations create.
const KEYSTONE_TABLES: [&str; 13] = [
    "api_app",
    "api_app_env",
    "api_app_placement",
    "api_app_settings",
    "api_app_webhook",
    "api_audit_event",
    "api_deployment",
    "api_deployment_run",
    "api_deployment_status_count",
    "api_repository",
    "api_token",
    "api_trusted_document",
    "api_webhook_delivery",
];
/// The tables of the Django schema (migrations 1 and 2).
const DJANGO_TABLES: [&str; 3] = ["api_app", "api_deployment", "api_repository"];

fn keystone_tables(tables: &[String]) -> Vec<&str> {
    tables
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("api_"))
        .collect()
}

async fn migrate_from_empty(backend: Backend) {
    let db = TestDb::new(backend).await;
    let out = keystone(&db, &["migrate", "up"]).await;
    out.assert_success();
    assert!(
        out.stdout.contains(&format!("Applied {INITIAL}")),
        "{}",
        out.stdout
    );
    assert_eq!(keystone_tables(&db.tables().await), KEYSTONE_TABLES);
    assert!(
        out.stdout.contains(&format!("Applied {INDEX}"))
            && out.stdout.contains(&format!("Applied {TOKENS}"))
            && out.stdout.contains(&format!("Applied {LIFECYCLE}")),
        "{}",
        out.stdout
    );
    assert_eq!(
        db.rows("SELECT version FROM seaql_migrations ORDER BY version")
            .await,
        MIGRATIONS
    );

    // Applying again is a no-op that says so.
    let again = keystone(&db, &["migrate", "up"]).await;
    again.assert_success();
    assert!(again.stdout.contains("Nothing to do"), "{}", again.stdout);
}

async fn status_output(backend: Backend) {
    let db = TestDb::new(backend).await;
    let before = keystone(&db, &["migrate", "status"]).await;
    before.assert_success();
    assert!(
        before
            .stdout
            .lines()
            .any(|l| l == format!(" [ ] {INITIAL}")),
        "{}",
        before.stdout
    );
    // Status changes nothing: not even the bookkeeping table is created.
    assert!(db.tables().await.is_empty(), "{:?}", db.tables().await);

    keystone(&db, &["migrate", "up"]).await.assert_success();
    let after = keystone(&db, &["migrate", "status"]).await;
    after.assert_success();
    assert!(
        after.stdout.lines().any(|l| l == format!(" [X] {INITIAL}")),
        "{}",
        after.stdout
    );
}

/// `migrate status --check` is a gate: non-zero while anything is pending (and with the
/// pending names), zero once the schema is current, non-zero again for an unknown migration.
async fn status_check_gates_on_pending_and_unknown(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pending = keystone(&db, &["migrate", "status", "--check"]).await;
    pending.assert_failure();
    let printed = format!("{}{}", pending.stdout, pending.stderr);
    assert!(printed.contains("12 migration(s) pending"), "{printed}");
    assert!(printed.contains(CHECKS), "{printed}");
    keystone(&db, &["migrate", "up", "11"])
        .await
        .assert_success();
    let one = keystone(&db, &["migrate", "status", "--check"]).await;
    one.assert_failure();
    assert!(
        one.stderr
            .contains(&format!("1 migration(s) pending: {WEBHOOKS}")),
        "{}",
        one.stderr
    );
    keystone(&db, &["migrate", "up"]).await.assert_success();
    keystone(&db, &["migrate", "status", "--check"])
        .await
        .assert_success();
    db.exec(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000001_later', 0)",
    )
    .await;
    let newer = keystone(&db, &["migrate", "status", "--check"]).await;
    newer.assert_failure();
    assert!(newer.stderr.contains("does not know"), "{}", newer.stderr);
}

/// Another program's writes of values Keystone cannot read are refused by the database;
/// a database that holds such rows already is not migrated, and the rows are named.
async fn the_database_refuses_what_keystone_cannot_read(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let db = TestDb::new(backend).await;
    keystone(&db, &["migrate", "up", "7"])
        .await
        .assert_success();
    db.exec(
        "INSERT INTO api_repository (id, name, git_url, default_branch) VALUES (1, 'r', 'https://e.com/r.git', 'main');
         INSERT INTO api_app (id, name, access_mode, status, repo_id) VALUES (1, 'a', 'PORT', 'paused', 1);",
    )
    .await;
    let refused = keystone(&db, &["migrate", "up"]).await;
    refused.assert_failure();
    let printed = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        printed.contains("api_app id 1: status is \"paused\" but must be one of draft"),
        "{printed}"
    );
    assert!(
        !db.rows("SELECT version FROM seaql_migrations")
            .await
            .contains(&CHECKS.to_owned()),
        "nothing changed"
    );
    db.exec("UPDATE api_app SET status = 'stopped' WHERE id = 1")
        .await;
    keystone(&db, &["migrate", "up"]).await.assert_success();

    let foreign = db.connect().await;
    let long_name = "n".repeat(121);
    for statement in [
        "UPDATE api_app SET status = 'paused' WHERE id = 1".to_owned(),
        "UPDATE api_app SET access_mode = 'TUNNEL' WHERE id = 1".to_owned(),
        "INSERT INTO api_deployment (status, image_tag, created_at, error_summary, logs_path, app_id) \
         VALUES ('exploded', '', CURRENT_TIMESTAMP, '', '', 1)"
            .to_owned(),
        format!("UPDATE api_repository SET name = '{long_name}' WHERE id = 1"),
    ] {
        let result = foreign.execute_unprepared(&statement).await;
        assert!(result.is_err(), "refused: {statement}");
    }
    assert_eq!(
        db.rows("SELECT status FROM api_app WHERE id = 1").await,
        ["stopped"]
    );
    // What Keystone writes still goes in.
    foreign
        .execute_unprepared("UPDATE api_app SET status = 'running' WHERE id = 1")
        .await
        .expect("a known value");
}

crate::e2e!(concurrent_migrations_take_turns);
/// Two instances starting together on PostgreSQL take turns on an advisory lock: both
/// succeed, one applies every migration, the other finds nothing left to do.
async fn concurrent_migrations_take_turns() {
    let db = TestDb::new(Backend::Postgres).await;
    for _ in 0..3 {
        let (a, b) = tokio::join!(
            keystone(&db, &["migrate", "up"]),
            keystone(&db, &["migrate", "up"])
        );
        a.assert_success();
        b.assert_success();
        let applied = |out: &crate::support::Output| out.stdout.matches("Applied ").count();
        let mut counts = [applied(&a), applied(&b)];
        counts.sort_unstable();
        assert_eq!(counts, [0, 12], "{}\n---\n{}", a.stdout, b.stdout);
        assert_eq!(
            db.count("SELECT COUNT(*) FROM seaql_migrations").await,
            12,
            "each migration recorded once"
        );
        keystone(&db, &["migrate", "reset"]).await.assert_success();
    }
}

async fn down_up_round_trip(backend: Backend) {
    let db = TestDb::new(backend).await;
    keystone(&db, &["migrate", "up"]).await.assert_success();
    // Step by step back: the newest migration first.
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {WEBHOOKS}")),
        "{}",
        down.stdout
    );
    for table in ["api_app_webhook", "api_webhook_delivery"] {
        assert!(!db.tables().await.contains(&table.to_owned()), "{table}");
    }
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {ACTORS}")),
        "{}",
        down.stdout
    );
    // The old actors only again.
    let refused = db
        .connect()
        .await
        .execute_unprepared(
            "INSERT INTO api_audit_event (token_name, token_role, operation, arguments, outcome) \
             VALUES ('root', 'operator', 'token create', '{}', 'success')",
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {COUNTS}")),
        "{}",
        down.stdout
    );
    assert!(
        !db.tables()
            .await
            .contains(&"api_deployment_status_count".to_owned())
    );
    // Its triggers went with it: deployments can be written without the table.
    db.exec(
        "INSERT INTO api_repository (name, git_url) VALUES ('r', 'https://e.com/r.git'); \
         INSERT INTO api_app (name, repo_id) SELECT 'a', id FROM api_repository; \
         INSERT INTO api_deployment (app_id) SELECT id FROM api_app; \
         DELETE FROM api_repository",
    )
    .await;
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {DOCUMENTS}")),
        "{}",
        down.stdout
    );
    assert!(
        !db.tables()
            .await
            .contains(&"api_trusted_document".to_owned())
    );
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {CHECKS}")),
        "{}",
        down.stdout
    );
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {STATUS_INDEX}")),
        "{}",
        down.stdout
    );
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {CONFIG_VARS}")),
        "{}",
        down.stdout
    );
    assert!(!db.tables().await.contains(&"api_app_env".to_owned()));
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {RUNNER}")),
        "{}",
        down.stdout
    );
    assert!(!db.tables().await.contains(&"api_app_placement".to_owned()));
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {LIFECYCLE}")),
        "{}",
        down.stdout
    );
    assert!(!db.tables().await.contains(&"api_deployment_run".to_owned()));
    let down = keystone(&db, &["migrate", "down"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {TOKENS}")),
        "{}",
        down.stdout
    );
    assert_eq!(keystone_tables(&db.tables().await), DJANGO_TABLES);
    let down = keystone(&db, &["migrate", "down", "2"]).await;
    down.assert_success();
    assert!(
        down.stdout.contains(&format!("Rolled back {INDEX}"))
            && down.stdout.contains(&format!("Rolled back {INITIAL}")),
        "{}",
        down.stdout
    );
    assert!(keystone_tables(&db.tables().await).is_empty());
    let status = keystone(&db, &["migrate", "status"]).await;
    assert!(
        status.stdout.contains(&format!(" [ ] {INITIAL}")),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains(&format!(" [ ] {INDEX}")),
        "{}",
        status.stdout
    );

    // Partial up: the first migration only.
    keystone(&db, &["migrate", "up", "1"])
        .await
        .assert_success();
    let status = keystone(&db, &["migrate", "status"]).await;
    assert!(
        status.stdout.contains(&format!(" [X] {INITIAL}"))
            && status.stdout.contains(&format!(" [ ] {INDEX}")),
        "{}",
        status.stdout
    );

    keystone(&db, &["migrate", "up"]).await.assert_success();
    assert_eq!(keystone_tables(&db.tables().await), KEYSTONE_TABLES);
    // Re-applied, the schema is exactly the one `verify` expects.
    keystone(&db, &["verify", "--in-place"])
        .await
        .assert_success();

    // fresh, refresh and reset do what they say.
    db.exec("INSERT INTO api_repository (name, git_url) VALUES ('r', 'https://example.com/r.git')")
        .await;
    keystone(&db, &["migrate", "refresh"])
        .await
        .assert_success();
    assert_eq!(db.count("SELECT COUNT(*) FROM api_repository").await, 0);
    keystone(&db, &["migrate", "reset"]).await.assert_success();
    assert!(keystone_tables(&db.tables().await).is_empty());
    keystone(&db, &["migrate", "fresh"]).await.assert_success();
    assert_eq!(keystone_tables(&db.tables().await), KEYSTONE_TABLES);
}

async fn verify_passes_on_scratch_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let out = keystone(&db, &["verify"]).await;
    out.assert_success();
    let ok_lines = out.stdout.lines().filter(|l| l.starts_with("[ok]")).count();
    assert_eq!(ok_lines, 5, "{}", out.stdout);
    // The scratch database is not the configured one, which stays empty.
    assert!(keystone_tables(&db.tables().await).is_empty());
}

async fn drift_detection_names_the_column(backend: Backend) {
    let db = TestDb::new(backend).await;
    keystone(&db, &["migrate", "up"]).await.assert_success();
    keystone(&db, &["verify", "--in-place"])
        .await
        .assert_success();

    // Shrink a column behind Keystone's back, and add one no entity knows.
    if backend == Backend::Sqlite {
        // SQLite's length checks are triggers on the column (migration 8).
        db.exec(
            "DROP TRIGGER api_deployment_logs_path_insert; \
             DROP TRIGGER api_deployment_logs_path_update;",
        )
        .await;
    }
    db.exec(
        "ALTER TABLE api_deployment DROP COLUMN logs_path; \
         ALTER TABLE api_deployment ADD COLUMN logs_path varchar(100) NOT NULL DEFAULT ''; \
         ALTER TABLE api_repository ADD COLUMN owner varchar(50) NULL;",
    )
    .await;
    let out = keystone(&db, &["verify", "--in-place"]).await;
    out.assert_failure();
    assert!(
        out.stdout
            .contains("[FAIL] entities match the migrated schema"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "column api_deployment.logs_path: type varchar(255) in entities, varchar(100) in migrated schema"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("column api_repository.owner: in migrated schema, missing from entities"),
        "{}",
        out.stdout
    );
}

/// `verify --in-place` notices per-status deployment counts (migration 10) that something
/// bypassed, naming the status.
async fn verify_compares_the_kept_counts(backend: Backend) {
    let db = TestDb::new(backend).await;
    keystone(&db, &["migrate", "up"]).await.assert_success();
    db.exec(
        "INSERT INTO api_repository (name, git_url) VALUES ('r', 'https://e.com/r.git'); \
         INSERT INTO api_app (name, repo_id) SELECT 'a', id FROM api_repository; \
         INSERT INTO api_deployment (app_id) SELECT id FROM api_app; \
         INSERT INTO api_deployment (app_id, status) SELECT id, 'failed' FROM api_app;",
    )
    .await;
    let out = keystone(&db, &["verify", "--in-place"]).await;
    out.assert_success();
    assert!(
        out.stdout.contains(
            "[ok]   deployment counts agree with the deployments: 2 deployments in 2 statuses"
        ),
        "{}",
        out.stdout
    );
    db.exec("DELETE FROM api_deployment_status_count WHERE status = 'failed'")
        .await;
    let out = keystone(&db, &["verify", "--in-place"]).await;
    out.assert_failure();
    assert!(
        out.stdout.contains(
            "[FAIL] deployment counts agree with the deployments: failed: counted 0, there are 1;"
        ),
        "{}",
        out.stdout
    );
}

async fn refuses_newer_unknown_migration(backend: Backend) {
    let db = TestDb::new(backend).await;
    keystone(&db, &["migrate", "up"]).await.assert_success();
    let future = "m20991231_000001_from_the_future";
    db.exec(&format!(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{future}', 0)"
    ))
    .await;
    let snapshot = db.schema_snapshot().await;

    for args in [
        &["migrate", "up"][..],
        &["migrate", "down"],
        &["serve", "--bind", "127.0.0.1:0"],
    ] {
        let out = keystone(&db, args).await;
        out.assert_failure();
        let printed = format!("{}{}", out.stdout, out.stderr);
        assert!(printed.contains("does not know"), "{args:?}: {printed}");
        assert!(printed.contains(future), "{args:?}: {printed}");
    }
    let status = keystone(&db, &["migrate", "status"]).await;
    status.assert_success();
    assert!(
        status.stdout.contains(&format!(" [X] {future}  (unknown")),
        "{}",
        status.stdout
    );
    assert_eq!(
        db.schema_snapshot().await,
        snapshot,
        "a refused command changed the schema"
    );
}

on_both_backends!(
    shared_ports_stop_the_lifecycle_migration,
    migrate_from_empty,
    status_output,
    status_check_gates_on_pending_and_unknown,
    the_database_refuses_what_keystone_cannot_read,
    down_up_round_trip,
    verify_passes_on_scratch_database,
    drift_detection_names_the_column,
    verify_compares_the_kept_counts,
    refuses_newer_unknown_migration,
);

/// Apps that share a port (possible in a Django database) stop migration 4 with a message
/// naming the port; the schema stays at migration 3 until they are fixed.
async fn shared_ports_stop_the_lifecycle_migration(backend: Backend) {
    let db = TestDb::new(backend).await;
    keystone(&db, &["migrate", "up", "3"])
        .await
        .assert_success();
    db.exec(
        "INSERT INTO api_repository (id, name, git_url) VALUES (1, 'r', 'https://e.com/r.git'); \
         INSERT INTO api_app (name, access_mode, current_port, status, repo_id) VALUES \
         ('a', 'PORT', 9005, 'running', 1), ('b', 'PORT', 9005, 'running', 1)",
    )
    .await;
    let up = keystone(&db, &["migrate", "up"]).await;
    up.assert_failure();
    let said = format!("{}{}", up.stdout, up.stderr);
    assert!(
        said.contains("several apps hold the same port (9005)"),
        "{said}"
    );
    assert!(!db.tables().await.contains(&"api_deployment_run".to_owned()));
    db.exec("UPDATE api_app SET current_port = 9006 WHERE name = 'b'")
        .await;
    keystone(&db, &["migrate", "up"]).await.assert_success();
    assert_eq!(
        db.rows("SELECT version FROM seaql_migrations ORDER BY version")
            .await
            .last()
            .map(String::as_str),
        Some(WEBHOOKS)
    );
}
