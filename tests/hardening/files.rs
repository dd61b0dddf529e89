//! Files the server writes stay where they belong and private: logs confined to their
//! directory, owner-only keys and logs.

use serde_json::{Value, json};

use crate::support::protocol::{append, claim, deploy};
use crate::support::{Backend, Server, TestDb, global_id, insert_port_apps, only_error};

crate::on_both_backends!(files_are_confined_and_private,);

/// Logs are read only from Keystone's own files in its directory; a new database never shows
/// an old database's log; files are private; `nameContains` matches `%` and `_` literally;
/// the first admin token is not printed where stdout is not a terminal.
async fn files_are_confined_and_private(backend: Backend) {
    let db = TestDb::new(backend).await;
    // An older database's log for deployment 1, left in the directory.
    let logs_dir = db.dir().join("keystone-logs");
    std::fs::create_dir_all(&logs_dir).expect("logs dir");
    std::fs::write(logs_dir.join("deployment-1.log"), "OLD_SECRET=1\n").expect("old log");
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 1).await;
    deploy(&server, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let (id, path) = claim(&server, &runner).await;
    assert_eq!(id, 1);
    let logs = "query($id: ID!) { deployment(id: $id) { logs } }";
    let body = server
        .graphql(logs, json!({ "id": global_id("Deployment", 1) }))
        .await;
    assert_eq!(Server::data(&body)["deployment"]["logs"], json!([]));
    Server::data(&append(&server, &runner, id, "new line\n").await);
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(std::path::Path::new(&path)), 0o600, "{path}");
    if backend == Backend::Sqlite {
        assert_eq!(mode(&db.dir().join("keystone.sqlite3")), 0o600);
    }
    // A row naming another file is not read.
    db.exec("UPDATE api_deployment SET logs_path = '/etc/passwd' WHERE id = 1")
        .await;
    let body = server
        .graphql(logs, json!({ "id": global_id("Deployment", 1) }))
        .await;
    assert_eq!(only_error(&body).0, "FORBIDDEN", "{body}");
    assert!(!body.to_string().contains("root:"), "{body}");
    // `%` and `_` are not wildcards.
    // (API names are plain words; rows adopted from Django may hold anything.)
    db.exec("INSERT INTO api_repository (id, name, git_url, default_branch) VALUES (50, '100% real', 'https://e.com/a.git', 'main'), (51, 'plain', 'https://e.com/b.git', 'main')")
        .await;
    for (pattern, expected) in [("%", json!(["100% real"])), ("_", json!([]))] {
        let body = server
            .graphql(
                "query($p: String!) { repositories(filter: { nameContains: $p }) { nodes { name } } }",
                json!({ "p": pattern }),
            )
            .await;
        let names: Vec<Value> = Server::data(&body)["repositories"]["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["name"].clone())
            .collect();
        assert_eq!(json!(names), expected, "nameContains {pattern:?}");
    }
    server.stop_ok().await;
}
