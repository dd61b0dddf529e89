//! `keystone serve`: migrations on start, `/health` and `/ready`, graceful shutdown.

use crate::on_both_backends;
use crate::support::{Backend, MIGRATIONS, Server, TestDb, http, keystone};

async fn serve_migrates_and_reports_ready(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let client = http();

    let health = client
        .get(server.url("/health"))
        .send()
        .await
        .expect("GET /health");
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.expect("JSON");
    assert_eq!(body["status"], "ok");

    let (status, body) = server.ready().await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["migrations"]["pending"], serde_json::json!([]));

    let (status, log) = server.stop().await;
    assert!(status.success(), "exit on SIGTERM: {status}\n{log}");
    assert!(log.contains("applied migration"), "{log}");
    assert!(log.contains("closing the database pool"), "{log}");
    // The startup log names the database without a password.
    assert!(log.contains("starting Keystone"), "{log}");
}

async fn no_migrate_leaves_schema_alone_and_is_not_ready(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--no-migrate"])
        .await
        .expect("server starts");
    let (status, body) = server.ready().await;
    assert_eq!(status, 503);
    assert_eq!(body["migrations"]["pending"], serde_json::json!(MIGRATIONS));
    server.stop_ok().await;
    assert!(!db.tables().await.iter().any(|t| t.starts_with("api_")));

    // Once CI has migrated, the same flag serves a ready instance.
    keystone(&db, &["migrate", "up"]).await.assert_success();
    let server = Server::start(&db, &["--no-migrate"])
        .await
        .expect("server starts");
    assert_eq!(server.ready().await.0, 200);
    server.stop_ok().await;
}

on_both_backends!(
    serve_migrates_and_reports_ready,
    no_migrate_leaves_schema_alone_and_is_not_ready,
);

crate::e2e!(startup_log_redacts_password);
/// A password in DATABASE_URL never reaches the log.
async fn startup_log_redacts_password() {
    let db = TestDb::new(Backend::Sqlite).await;
    let out = keystone(
        &db,
        &[
            "migrate",
            "status",
            "--database-url",
            "postgres://keystone:s3cret@127.0.0.1:1/none",
        ],
    )
    .await;
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("keystone:***@127.0.0.1"), "{printed}");
    out.assert_failure();
}

crate::e2e!(default_database_is_sqlite_file_in_working_directory);
/// With no DATABASE_URL, `keystone` uses `keystone.sqlite3` in the working directory, the
/// same file `cargo run -p migration` uses.
async fn default_database_is_sqlite_file_in_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args(["migrate", "up"])
        .env_remove("DATABASE_URL")
        .current_dir(dir.path())
        .output()
        .await
        .expect("run keystone");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(migration::connection::DEFAULT_DATABASE_URL),
        "{stdout}"
    );
    assert!(dir.path().join("keystone.sqlite3").exists());
}

crate::e2e!(postgres_over_tls);
/// A PostgreSQL that accepts TLS only: `sslmode=require` connects, `verify-full` connects
/// with the CA that signed its certificate (`sslrootcert`) and is refused without it, and a
/// clear-text connection is refused by the server.
async fn postgres_over_tls() {
    let pki = crate::support::test_pki();
    let cluster = crate::support::cluster::PrivateCluster::start_tls(&pki);
    let plain = cluster.url("postgres");
    let ca = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(ca.path(), &pki.ca_pem).expect("write the CA");
    let ca = ca.path().display().to_string();

    let refused = TestDb::at(Backend::Postgres, format!("{plain}?sslmode=disable"));
    let out = keystone(&refused, &["migrate", "status"]).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("no encryption") || out.stderr.contains("pg_hba.conf"),
        "{}",
        out.stderr
    );
    let unverified = TestDb::at(
        Backend::Postgres,
        format!("{plain}?sslmode=verify-full&sslrootcert=/dev/null"),
    );
    keystone(&unverified, &["migrate", "status"])
        .await
        .assert_failure();

    for url in [
        format!("{plain}?sslmode=require"),
        format!("{plain}?sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let db = TestDb::at(Backend::Postgres, url.clone());
        let mut server = Server::start(&db, &[]).await.expect("server starts");
        if server.admin_token.is_empty() {
            // The first start made the admin token, in the other test database's directory.
            let name = format!("admin-{}", server.pid());
            let made = keystone(
                &db,
                &["token", "create", "--name", &name, "--role", "admin"],
            )
            .await;
            made.assert_success();
            server.admin_token = made.stdout.trim().to_owned();
        }
        let body = server
            .graphql(
                r#"mutation { createRepository(input: { name: "tls", gitUrl: "https://example.com/t.git" }) { repository { id name } } }"#,
                serde_json::json!({}),
            )
            .await;
        let created = &Server::data(&body)["createRepository"]["repository"];
        assert_eq!(created["name"], "tls", "{url}");
        let body = server
            .graphql(
                "mutation($id: ID!) { deleteRepository(input: { id: $id }) { deletedRepositoryId } }",
                serde_json::json!({ "id": created["id"] }),
            )
            .await;
        Server::data(&body);
        server.stop_ok().await;
    }
    // Every connection the server made was encrypted.
    let db = TestDb::at(Backend::Postgres, format!("{plain}?sslmode=require"));
    assert_eq!(
        db.count("SELECT COUNT(*) FROM pg_stat_ssl WHERE ssl AND pid = pg_backend_pid()")
            .await,
        1
    );
}

crate::e2e!(commands_leave_the_working_directory_alone);
/// No command leaves a file in the working directory when the database is elsewhere (the
/// `file:sqlx-in-memory-…` that `verify`'s scratch database once left, say).
async fn commands_leave_the_working_directory_alone() {
    let db = TestDb::new(Backend::Sqlite).await;
    let cwd = tempfile::tempdir().expect("temp dir");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let document = elsewhere.path().join("me.graphql");
    std::fs::write(&document, "query Me { viewer { name } }").expect("write");
    let backup = elsewhere.path().join("copy.sqlite3");
    let document = document.display().to_string();
    let backup = backup.display().to_string();
    let commands: [&[&str]; 12] = [
        &["migrate", "status"],
        &["migrate", "up"],
        &["verify"],
        &["verify", "--in-place"],
        &["schema"],
        &["token", "create", "--name", "ci", "--role", "viewer"],
        &["token", "list"],
        &["token", "revoke", "ci"],
        &["documents", "add", &document],
        &["documents", "list"],
        &["backup", &backup],
        &["migrate", "down"],
    ];
    for args in commands {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keystone"))
            .args(args)
            .env("DATABASE_URL", &db.url)
            .current_dir(cwd.path())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run keystone");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(cwd.path())
            .expect("read the directory")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}
