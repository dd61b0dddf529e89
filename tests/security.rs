//! The security suite (hardening, round 2): one test per class of attack, each sent as an
//! attacker would, over HTTP or WebSocket, against the real server. What each asserts is
//! what the README's "Security model" promises.

use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::on_both_backends;
use crate::support::{
    Backend, Server, Socket, TestDb, global_id, http, insert_port_apps, only_error, ws_connect,
    ws_next,
};

on_both_backends!(
    multiplying_fragments_are_refused_before_validation,
    every_fields_cost_is_counted,
    roles_hold_through_nested_fields,
    log_volume_is_bounded,
    the_audit_trail_is_complete_and_safe,
    runner_inputs_are_validated,
    files_are_confined_and_private,
    hostile_git_urls_are_refused,
);

/// A document of fragments that each spread the previous one twice: `F<depth>` expands to
/// 2^depth selections in under 1.5 KB.
fn fragment_family(depth: usize) -> String {
    let mut document =
        format!("query {{ ...F{depth} }}\nfragment F0 on Query {{ viewer {{ name }} }}\n");
    for level in 1..=depth {
        let previous = level - 1;
        document.push_str(&format!(
            "fragment F{level} on Query {{ ...F{previous} ...F{previous} }}\n"
        ));
    }
    document
}

/// Validation used to walk every spread: a 24-level family took 90 s of CPU and froze the
/// server. Now the expanded size is computed once per fragment and refused first, while
/// `/health` keeps answering.
async fn multiplying_fragments_are_refused_before_validation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let family: Vec<String> = [8, 12, 16, 20, 24, 32, 60]
        .into_iter()
        .map(fragment_family)
        .collect();
    // All at once, twice over, with health checks in between.
    let attacks = join_all(
        family
            .iter()
            .chain(family.iter())
            .map(|document| server.graphql_as(&server.admin_token, document, json!({}))),
    );
    let health = async {
        for _ in 0..5 {
            let response = http().get(server.url("/health")).send().await;
            assert_eq!(response.expect("/health answers").status(), 200);
        }
    };
    let (answers, ()) = tokio::join!(attacks, health);
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert!(body.get("data").is_none(), "never ran: {body}");
        assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("once its fragments are expanded"),
            "{body}"
        );
    }
    // A cycle is refused too, and a small family still runs.
    let cycle = "query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }";
    let (_, body) = server
        .graphql_as(&server.admin_token, cycle, json!({}))
        .await;
    assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
    let body = server.graphql(&fragment_family(3), json!({})).await;
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");
    server.stop_ok().await;
}

/// Claims the oldest queued deployment with `token`: its database id and logs path.
async fn claim(server: &Server, token: &str) -> (i64, String) {
    let (status, body) = server
        .graphql_as(
            token,
            "mutation { claimDeployment { deployment { databaseId logsPath } } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deployment = &Server::data(&body)["claimDeployment"]["deployment"];
    (
        deployment["databaseId"].as_i64().expect("a deployment"),
        deployment["logsPath"].as_str().expect("a path").to_owned(),
    )
}

async fn deploy(server: &Server, app: i64) {
    let body = server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": global_id("App", app) }),
        )
        .await;
    Server::data(&body);
}

const APPEND: &str = "mutation($id: ID!, $chunk: String!) { appendDeploymentLog(input: { deploymentId: $id, chunk: $chunk }) { bytesWritten logFull } }";

async fn append(server: &Server, token: &str, id: i64, chunk: &str) -> Value {
    let (status, body) = server
        .graphql_as(
            token,
            APPEND,
            json!({ "id": global_id("Deployment", id), "chunk": chunk }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `logs` reads from the end of the file within a byte limit, `tail` and id lists count
/// towards the complexity, and a response carries a bounded amount of log text.
async fn every_fields_cost_is_counted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--max-query-complexity", "20000"])
        .await
        .expect("server starts");
    insert_port_apps(&db, 2).await;
    deploy(&server, 1).await;
    let runner = server.create_token("builder", "RUNNER").await;
    let (id, path) = claim(&server, &runner).await;
    // An 18 MB log, as a runner that printed without end would leave it.
    let line = format!("{}\n", "x".repeat(99));
    std::fs::create_dir_all(std::path::Path::new(&path).parent().expect("dir")).expect("logs dir");
    std::fs::write(&path, line.repeat(180_000)).expect("write a big log");
    let query = "query($id: ID!, $tail: Int!) { deployment(id: $id) { logs(tail: $tail) } }";
    let body = server
        .graphql(
            query,
            json!({ "id": global_id("Deployment", id), "tail": 10000 }),
        )
        .await;
    let lines = Server::data(&body)["deployment"]["logs"]
        .as_array()
        .expect("lines")
        .len();
    assert_eq!(lines, 10000, "a 1 MB read holds 10,000 lines of 100 bytes");
    // tail counts: 2 × 10,001 > 20,000.
    let twice = "query($id: ID!) { a: deployment(id: $id) { logs(tail: 10000) } b: deployment(id: $id) { logs(tail: 10000) } }";
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            twice,
            json!({ "id": global_id("Deployment", id) }),
        )
        .await;
    assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
    // 10 fields of 10,000 lines would be 10 MB: the response stops at 4 MiB of log text.
    let server_wide = Server::start(&db, &[]).await.expect("second server");
    let many = format!(
        "query($id: ID!) {{ {} }}",
        (0..10)
            .map(|i| format!("d{i}: deployment(id: $id) {{ logs(tail: 10000) }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let response = server_wide
        .admin()
        .post(server_wide.url("/graphql"))
        .json(&json!({ "query": many, "variables": { "id": global_id("Deployment", id) } }))
        .send()
        .await
        .expect("POST");
    let text = response.text().await.expect("body");
    assert!(text.len() < 5 << 20, "response of {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).expect("JSON");
    let codes: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["extensions"]["code"].as_str())
        .collect();
    assert!(codes.contains(&"RESPONSE_TOO_LARGE"), "{codes:?}");
    server_wide.stop_ok().await;
    // Each of 100 ids counts: 100 × (a connection of 100) is over the limit.
    let ids: Vec<String> = (1..=100).map(|n| global_id("App", n)).collect();
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            "query($ids: [ID!]!) { nodes(ids: $ids) { ... on App { deployments(first: 100) { nodes { id } } } } }",
            json!({ "ids": ids }),
        )
        .await;
    assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
    server.stop_ok().await;
}

/// A runner token reaches its claimed deployment and its job, nothing else: a document that
/// selects any object field of a runner payload that leads elsewhere is refused whole with
/// `FORBIDDEN` (its mutation does not happen), and no other deployment's log line comes back.
async fn roles_hold_through_nested_fields(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 2).await;
    // Another runner's deployment with a secret in its log.
    deploy(&server, 1).await;
    let other = server.create_token("other-runner", "RUNNER").await;
    let (other_id, _) = claim(&server, &other).await;
    Server::data(&append(&server, &other, other_id, "DB_PASSWORD=hunter2\n").await);
    deploy(&server, 2).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let queued = "SELECT COUNT(*) FROM api_deployment WHERE app_id = 2 AND status = 'queued'";

    // Refused before it runs: nothing is claimed.
    let walk = "mutation { claimDeployment { deployment { databaseId status logs app { repository { apps { nodes { deployments { nodes { logs } } } } } } } job { appName repositoryUrl } } }";
    let (status, body) = server.graphql_as(&runner, walk, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("hunter2"), "{body}");
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(
        only_error(&body),
        ("FORBIDDEN".to_owned(), Some("Deployment.app".to_owned())),
        "{body}"
    );
    assert_eq!(db.count(queued).await, 1, "nothing was claimed");
    // The same through a fragment, and through a fragment on an interface.
    for query in [
        "mutation { claimDeployment { deployment { ...Leak } } } fragment Leak on Deployment { app { name } }",
        "mutation { claimDeployment { deployment { ... on Node { ... on Deployment { app { name } } } } } }",
    ] {
        let (_, body) = server.graphql_as(&runner, query, json!({})).await;
        assert_eq!(only_error(&body).0, "FORBIDDEN", "{query}: {body}");
    }
    // Left out by `@skip`, it is not asked for.
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation { claimDeployment { deployment { databaseId app @skip(if: true) { name } } } }",
            json!({}),
        )
        .await;
    let id = Server::data(&body)["claimDeployment"]["deployment"]["databaseId"]
        .as_i64()
        .unwrap_or_else(|| panic!("claimed: {body}"));
    assert_eq!(db.count(queued).await, 0);
    let deployment = global_id("Deployment", id);
    // Every other way out of a runner payload.
    for (what, query) in [
        (
            "heartbeat → app",
            "mutation($id: ID!) { heartbeatDeployment(input: { deploymentId: $id }) { deployment { app { name } } } }",
        ),
        (
            "report → app → repository",
            "mutation($id: ID!) { reportDeployment(input: { deploymentId: $id, status: FAILED }) { deployment { status } app { name status repository { name } deployments { nodes { logs } } latestDeployment { logs } } } }",
        ),
    ] {
        let (_, body) = server
            .graphql_as(&runner, query, json!({ "id": deployment }))
            .await;
        assert_eq!(only_error(&body).0, "FORBIDDEN", "{what}: {body}");
        assert!(!body.to_string().contains("hunter2"), "{what}: {body}");
    }
    // What a runner needs still answers (the refused report did not happen).
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!) { heartbeatDeployment(input: { deploymentId: $id }) { cancelRequested deployment { status logs } } }",
            json!({ "id": deployment }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["heartbeatDeployment"]["deployment"]["status"],
        "RUNNING"
    );
    server.stop_ok().await;
}

/// Each deployment's log is capped (a marker, then nothing), appends leave no audit rows,
/// and the log file goes with its app.
async fn log_volume_is_bounded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--max-log-bytes", "1000"])
        .await
        .expect("server starts");
    insert_port_apps(&db, 1).await;
    deploy(&server, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let (id, path) = claim(&server, &runner).await;
    let chunk = format!("{}\n", "y".repeat(599));
    let first = append(&server, &runner, id, &chunk).await;
    assert_eq!(
        Server::data(&first)["appendDeploymentLog"]["logFull"],
        false
    );
    let second = append(&server, &runner, id, &chunk).await;
    assert_eq!(
        Server::data(&second)["appendDeploymentLog"]["logFull"],
        true
    );
    let third = append(&server, &runner, id, &chunk).await;
    assert_eq!(
        Server::data(&third)["appendDeploymentLog"],
        json!({ "bytesWritten": 0, "logFull": true })
    );
    use std::os::unix::fs::PermissionsExt;
    let logs_dir = std::path::Path::new(&path).parent().expect("dir");
    let dir_mode = std::fs::metadata(logs_dir)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "the logs directory is private");
    let size = std::fs::metadata(&path).expect("the log").len();
    assert!(size < 1200, "capped at 1000 bytes plus the marker: {size}");
    let text = std::fs::read_to_string(&path).expect("the log");
    assert_eq!(text.matches("reached its size limit").count(), 1, "{text}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE operation = 'appendDeploymentLog'")
            .await,
        0,
        "successful appends are not audited"
    );
    // Refusals are: another runner writing here.
    let intruder = server.create_token("intruder", "RUNNER").await;
    let refused = append(&server, &intruder, id, "x\n").await;
    assert_eq!(only_error(&refused).0, "CONFLICT");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE operation = 'appendDeploymentLog'")
            .await,
        1
    );
    // Deleting the app deletes the log.
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!) { reportDeployment(input: { deploymentId: $id, status: FAILED }) { deployment { status } } }",
            json!({ "id": global_id("Deployment", id) }),
        )
        .await;
    Server::data(&body);
    Server::data(
        &server
            .graphql(
                "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
                json!({ "id": global_id("App", 1) }),
            )
            .await,
    );
    assert!(!std::path::Path::new(&path).exists(), "{path} was deleted");
    server.stop_ok().await;
}

/// Refused calls are recorded — failed authentication, the rate limit, a 300-character id —
/// and runner text (log chunks, error summaries) never is.
async fn the_audit_trail_is_complete_and_safe(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(
        &db,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "400"],
    )
    .await
    .expect("server starts");
    // Failed authentication.
    let (status, _) = server
        .graphql_as(
            "kst_not-a-real-token-at-all-0000000000000000000",
            "{ viewer { name } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .graphql_as("", "{ viewer { name } }", json!({}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        db.rows("SELECT token_name || '|' || token_role || '|' || operation || '|' || error_code FROM api_audit_event WHERE outcome = 'error' ORDER BY id")
            .await,
        [
            "(anonymous)|anonymous|(authentication)|UNAUTHENTICATED",
            "(anonymous)|anonymous|(authentication)|UNAUTHENTICATED"
        ]
    );
    // A refused mutation with a 300-character id keeps its row (the id cut to the column).
    let long = "A".repeat(300);
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
            json!({ "id": long }),
        )
        .await;
    assert_eq!(only_error(&body).0, "BAD_USER_INPUT", "{body}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE operation = 'deleteApp' AND LENGTH(object_id) <= 200")
            .await,
        1
    );
    // A runner's error summary is not copied into the trail.
    insert_port_apps(&db, 1).await;
    deploy(&server, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let (id, _) = claim(&server, &runner).await;
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!, $e: String!) { reportDeployment(input: { deploymentId: $id, status: FAILED, errorSummary: $e }) { deployment { status } } }",
            json!({ "id": global_id("Deployment", id), "e": "build failed: AWS_SECRET=wJalrXUtnFEMI" }),
        )
        .await;
    Server::data(&body);
    let recorded = db
        .rows("SELECT arguments FROM api_audit_event WHERE operation = 'reportDeployment'")
        .await;
    assert_eq!(recorded.len(), 1);
    assert!(!recorded[0].contains("wJalrXUtnFEMI"), "{recorded:?}");
    // Over the rate limit: refused with 429, and recorded.
    let viewer = server.create_token("eager", "VIEWER").await;
    let mut limited = 0;
    for _ in 0..450 {
        let (status, _) = server
            .graphql_as(&viewer, "{ viewer { name } }", json!({}))
            .await;
        if status == 429 {
            limited += 1;
            break;
        }
    }
    assert_eq!(limited, 1, "the rate limit was reached");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE token_name = 'eager' AND operation = '(rate limit)' AND error_code = 'RATE_LIMITED'")
            .await,
        1
    );
    // Admins read anonymous rows with a null role.
    let body = server
        .graphql(
            "{ auditEvents(filter: { operation: \"(authentication)\" }) { nodes { tokenName tokenRole outcome } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["auditEvents"]["nodes"][0],
        json!({ "tokenName": "(anonymous)", "tokenRole": null, "outcome": "ERROR" })
    );
    server.stop_ok().await;
}

/// Values from runners are inputs: lengths, an image reference grammar, escaped control
/// characters; and a client's operation name cannot forge a server log line.
async fn runner_inputs_are_validated(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 1).await;
    deploy(&server, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let (id, _) = claim(&server, &runner).await;
    let report = "mutation($id: ID!, $tag: String, $e: String) { reportDeployment(input: { deploymentId: $id, status: FAILED, imageTag: $tag, errorSummary: $e }) { deployment { status } } }";
    for (field, tag, summary) in [
        ("imageTag", Some("--privileged".to_owned()), None),
        ("imageTag", Some("web:latest\n-v /:/host".to_owned()), None),
        ("errorSummary", None, Some("e".repeat(900_000))),
    ] {
        let (_, body) = server
            .graphql_as(
                &runner,
                report,
                json!({ "id": global_id("Deployment", id), "tag": tag, "e": summary }),
            )
            .await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".to_owned(), Some(field.to_owned())),
            "{body}"
        );
    }
    assert_eq!(
        db.rows(&format!("SELECT status || '|' || image_tag || '|' || error_summary FROM api_deployment WHERE id = {id}"))
            .await,
        ["running||"],
        "nothing was stored"
    );
    // Terminal escapes in a log are stored escaped.
    Server::data(&append(&server, &runner, id, "\u{1b}]0;pwned\u{7}\u{1b}[2Jok\r\n").await);
    let body = server
        .graphql(
            "query($id: ID!) { deployment(id: $id) { logs } }",
            json!({ "id": global_id("Deployment", id) }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["deployment"]["logs"],
        json!(["\\u{1b}]0;pwned\\u{7}\\u{1b}[2Jok"])
    );
    // A good report goes through.
    let (_, body) = server
        .graphql_as(
            &runner,
            report,
            json!({ "id": global_id("Deployment", id), "tag": "keystone/app-1:1-abc1234", "e": "exit 1\n\u{1b}[31m" }),
        )
        .await;
    Server::data(&body);
    assert_eq!(
        db.rows(&format!(
            "SELECT error_summary FROM api_deployment WHERE id = {id}"
        ))
        .await,
        ["exit 1\n\\u{1b}[31m"]
    );
    // An operation name cannot forge a log line.
    let forged = "x\n2030-01-01T00:00:00Z  INFO keystone: FORGED admin login";
    let response = server
        .admin()
        .post(server.url("/graphql"))
        .json(&json!({ "query": "query x { viewer { name } }", "operationName": forged }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let (_, log) = server.stop().await;
    assert!(
        !log.lines().any(|line| line.starts_with("2030-01-01")),
        "{log}"
    );
    assert!(log.contains("x\\n2030-01-01"), "the name is logged escaped");
}

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

crate::e2e!(the_first_admin_token_is_not_printed_to_a_log);
/// The first admin token goes to the file, not to a standard output that is not a terminal,
/// and `.gitignore` keeps what `cargo run` writes out of commits.
async fn the_first_admin_token_is_not_printed_to_a_log() {
    let db = TestDb::new(Backend::Sqlite).await;
    let output = tokio::time::timeout(Duration::from_secs(60), async {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keystone"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("DATABASE_URL", &db.url)
            .current_dir(db.dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
        let mut log = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.contains("listening on") {
                break;
            }
        }
        child.start_kill().expect("kill");
        let output = child.wait_with_output().await.expect("wait");
        (String::from_utf8_lossy(&output.stdout).into_owned(), log)
    })
    .await
    .expect("started and stopped");
    let (stdout, log) = output;
    let token = std::fs::read_to_string(db.dir().join("keystone-admin.token")).expect("token file");
    assert!(token.starts_with("kst_"));
    assert!(
        !stdout.contains("kst_") && !log.contains("kst_"),
        "{stdout}\n{log}"
    );
    assert!(log.contains("keystone-admin.token"), "says where: {log}");
    let ignored = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.gitignore"))
        .expect(".gitignore");
    for entry in ["keystone-admin.token", "keystone-logs/", "*.sqlite3"] {
        assert!(
            ignored.lines().any(|l| l.trim() == entry),
            "{entry} is ignored"
        );
    }
}

/// Git URLs that would run commands or reach metadata services are refused, and nothing is
/// written.
async fn hostile_git_urls_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    for url in [
        "ssh://-oProxyCommand=touch%20pwned@host/repo",
        "ssh://%2doProxyCommand=x@host/repo",
        "https://example.com/$(touch pwned).git",
        "https://example.com/a%0aX.git",
        "http://169.254.169.254/latest/meta-data",
        "ssh://git@169.254.169.254/x.git",
        "git://[fe80::1]/x.git",
    ] {
        let (_, body) = server
            .graphql_as(
                &server.admin_token,
                "mutation($u: String!) { createRepository(input: { name: \"r\", gitUrl: $u }) { repository { id } } }",
                json!({ "u": url }),
            )
            .await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".to_owned(), Some("gitUrl".to_owned())),
            "{url}: {body}"
        );
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM api_repository").await, 0);
    server.stop_ok().await;
}

async fn subscribe(socket: &mut Socket, id: &str, query: &str) {
    socket
        .send(Message::Text(
            json!({ "id": id, "type": "subscribe", "payload": { "query": query } })
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
}

/// The close code and reason the server ends `socket` with.
async fn closed_with(socket: &mut Socket) -> (u16, String) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("the server closes within 15 s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn raw_socket(server: &Server) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = server.url("/graphql/ws").replace("http://", "ws://");
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

crate::e2e!(websocket_connections_are_bounded_and_revocable);
/// WebSocket connections: closed without `connection_init` (4408), bounded messages, bounded
/// connections per address and per token, bounded subscriptions, duplicate ids refused
/// (4409), and subscriptions ended by revocation and expiry (4403).
async fn websocket_connections_are_bounded_and_revocable() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(
        &db,
        &[
            "--ws-init-timeout-secs",
            "1",
            "--max-body-bytes",
            "20000",
            "--ws-max-per-address",
            "6",
            "--ws-max-per-token",
            "2",
            "--ws-max-subscriptions",
            "2",
        ],
    )
    .await
    .expect("server starts");
    // No connection_init: closed with 4408.
    let mut silent = raw_socket(&server).await.expect("upgrade");
    assert_eq!(closed_with(&mut silent).await.0, 4408);
    // A message over the body limit ends the connection before it is read.
    let viewer = server.create_token("watcher", "VIEWER").await;
    let mut big = ws_connect(&server, &viewer).await;
    assert_eq!(
        ws_next(&mut big).await.expect("ack")["type"],
        "connection_ack"
    );
    let _ = big.send(Message::Text("x".repeat(50_000).into())).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match big.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "an oversized message closes the connection");
    drop(big);
    // Per token: a third connection is refused at init.
    let mut first = ws_connect(&server, &viewer).await;
    assert_eq!(
        ws_next(&mut first).await.expect("ack")["type"],
        "connection_ack"
    );
    let mut second = ws_connect(&server, &viewer).await;
    assert_eq!(
        ws_next(&mut second).await.expect("ack")["type"],
        "connection_ack"
    );
    let mut third = ws_connect(&server, &viewer).await;
    let (_, reason) = closed_with(&mut third).await;
    assert!(reason.contains("TOO_MANY_CONNECTIONS"), "{reason}");
    // Per connection: a third subscription is refused, a duplicate id closes with 4409.
    let query = "subscription { deploymentUpdated { id } }";
    subscribe(&mut first, "1", query).await;
    subscribe(&mut first, "2", query).await;
    subscribe(&mut first, "3", query).await;
    let refused = ws_next(&mut first).await.expect("an error for 3");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "3");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );
    subscribe(&mut second, "a", query).await;
    subscribe(&mut second, "a", query).await;
    assert_eq!(closed_with(&mut second).await.0, 4409);
    // Revoking the token ends its live subscriptions with 4403.
    let token_id = db
        .count("SELECT id FROM api_token WHERE name = 'watcher'")
        .await;
    Server::data(
        &server
            .graphql(
                "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { revokedAt } } }",
                json!({ "id": global_id("ApiToken", token_id) }),
            )
            .await,
    );
    let (code, reason) = closed_with(&mut first).await;
    assert_eq!(code, 4403, "{reason}");
    // Expiry does the same.
    let body = server
        .graphql(
            "mutation($at: DateTime!) { createApiToken(input: { name: \"brief\", role: VIEWER, expiresAt: $at }) { secret } }",
            json!({ "at": (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339() }),
        )
        .await;
    let brief = Server::data(&body)["createApiToken"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let mut expiring = ws_connect(&server, &brief).await;
    assert_eq!(
        ws_next(&mut expiring).await.expect("ack")["type"],
        "connection_ack"
    );
    subscribe(&mut expiring, "1", query).await;
    let (code, reason) = closed_with(&mut expiring).await;
    assert_eq!(code, 4403, "{reason}");
    // Per address: with 6 allowed, the 7th upgrade is refused (429).
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(raw_socket(&server).await.expect("within the limit"));
    }
    let refused = raw_socket(&server).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| "a connection")),
    }
    drop(open);
    server.stop_ok().await;
}

crate::e2e!(forged_notifications_are_dropped);
/// Any role that can connect may `pg_notify` on Keystone's channel: an unsigned (forged)
/// notification never reaches subscribers; the signed one that follows it does.
async fn forged_notifications_are_dropped() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 2).await;
    // A deployment the forger names, made without an event.
    db.exec("INSERT INTO api_deployment (id, app_id, status, image_tag, assigned_port, created_at, logs_path, error_summary) VALUES (77, 1, 'failed', '', NULL, CURRENT_TIMESTAMP, '', 'FORGED')")
        .await;
    let mut socket = ws_connect(&server, &server.admin_token).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    subscribe(
        &mut socket,
        "1",
        "subscription { deploymentUpdated { databaseId } }",
    )
    .await;
    let schema = db
        .rows("SELECT current_schema()")
        .await
        .pop()
        .expect("a schema");
    let channel = format!("keystone_events:{schema}");
    db.exec(&format!(
        "SELECT pg_notify('{channel}', '{{\"k\":\"deployment_id\",\"id\":77}}'), pg_notify('{channel}', '{}.{{\"k\":\"deployment_id\",\"id\":77}}')",
        "0".repeat(64)
    ))
    .await;
    deploy(&server, 2).await;
    let first = ws_next(&mut socket).await.expect("an event");
    assert_ne!(
        first["payload"]["data"]["deploymentUpdated"]["databaseId"], 77,
        "the forged event was delivered: {first}"
    );
    assert_eq!(first["type"], "next", "{first}");
    let (_, log) = server.stop().await;
    assert!(log.contains("signature does not verify"), "{log}");
}
