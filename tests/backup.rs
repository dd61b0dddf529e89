//! Backups that restore: a copy taken while the server writes, restored, served, read back.

use serde_json::json;

use crate::support::cluster::PrivateCluster;
use crate::support::{Backend, Server, TestDb, http_as, keystone};

/// The repository names a server lists, sorted (read with `token`).
async fn repository_names(server: &Server, token: &str) -> Vec<String> {
    let body: serde_json::Value = http_as(token)
        .post(server.url("/graphql"))
        .json(&json!({ "query": "{ repositories(first: 100) { totalCount nodes { name } } }" }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let mut names: Vec<String> = body["data"]["repositories"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{body:#}"))
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

async fn create_repositories(server: &Server, prefix: &str, count: usize) {
    for n in 0..count {
        server
            .graphql(
                "mutation($input: CreateRepositoryInput!) { createRepository(input: $input) { repository { id } } }",
                json!({ "input": { "name": format!("{prefix}-{n:02}"), "gitUrl": "https://e.com/r.git" } }),
            )
            .await;
    }
}

crate::e2e!(sqlite_backup_while_serving_restores);
/// `keystone backup FILE` while the server keeps writing: the copy is a sound database
/// with everything written before it began; a server started on it serves it.
async fn sqlite_backup_while_serving_restores() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &["--rate-limit-per-second", "0"])
        .await
        .expect("server starts");
    create_repositories(&server, "before", 20).await;
    let copy = db.dir().join("copy.sqlite3");
    let copy_url = format!("sqlite://{}", copy.display());
    let args = ["backup", copy.to_str().expect("a UTF-8 path")];
    let (backup, ()) = tokio::join!(
        keystone(&db, &args),
        create_repositories(&server, "during", 20)
    );
    backup.assert_success();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&copy).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the copy is private");
    // A second backup to the same file is refused.
    keystone(&db, &["backup", copy.to_str().unwrap()])
        .await
        .assert_failure();
    let original = repository_names(&server, &server.admin_token).await;
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");

    let restored_db = TestDb::at(Backend::Sqlite, format!("{copy_url}?mode=rw"));
    assert_eq!(restored_db.rows("PRAGMA integrity_check").await, ["ok"]);
    let restored = Server::start(&restored_db, &[])
        .await
        .expect("serves the copy");
    // The same tokens: the original admin token works on the copy.
    let names = repository_names(&restored, &server_token(&db)).await;
    for n in 0..20 {
        assert!(names.contains(&format!("before-{n:02}")), "{names:?}");
    }
    assert!(
        names.iter().all(|n| original.contains(n)),
        "nothing invented"
    );
    let (status, log) = restored.stop().await;
    assert!(status.success(), "{log}");
}

fn server_token(db: &TestDb) -> String {
    std::fs::read_to_string(db.dir().join("keystone-admin.token"))
        .expect("admin token")
        .trim()
        .to_owned()
}

crate::e2e!(postgres_pg_dump_restores);
/// PostgreSQL: `pg_dump` while the server runs, `pg_restore` into a new database, and a
/// server on it reads everything back. `keystone backup` points there.
async fn postgres_pg_dump_restores() {
    let cluster = PrivateCluster::start();
    let db = cluster.test_db();
    let server = Server::start(&db, &[]).await.expect("server starts");
    create_repositories(&server, "r", 15).await;
    let refused = keystone(&db, &["backup", "/tmp/never-written.sqlite3"]).await;
    refused.assert_failure();
    assert!(refused.stderr.contains("pg_dump"), "{}", refused.stderr);

    let dump = db.dir().join("keystone.dump");
    let out = std::process::Command::new(cluster.program("pg_dump"))
        .args(["--format=custom", "--file"])
        .arg(&dump)
        .arg(cluster.url("postgres"))
        .output()
        .expect("pg_dump");
    assert!(out.status.success(), "{out:?}");
    let original = repository_names(&server, &server.admin_token).await;
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");

    let out = std::process::Command::new(cluster.program("createdb"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "restored",
        ])
        .output()
        .expect("createdb");
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(cluster.program("pg_restore"))
        .args(["--exit-on-error", "--dbname"])
        .arg(cluster.url("restored"))
        .arg(&dump)
        .output()
        .expect("pg_restore");
    assert!(out.status.success(), "{out:?}");
    let restored_db = TestDb::at(Backend::Postgres, cluster.url("restored"));
    keystone(&restored_db, &["migrate", "status", "--check"])
        .await
        .assert_success();
    let restored = Server::start(&restored_db, &[])
        .await
        .expect("serves the copy");
    assert_eq!(
        repository_names(&restored, &server_token(&db)).await,
        original
    );
    assert_eq!(original.len(), 15);
    let (status, log) = restored.stop().await;
    assert!(status.success(), "{log}");
}
