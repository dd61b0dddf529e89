//! Tokens: revoked, expired and malformed ones refused over every transport (live
//! WebSockets too), the `keystone token` commands, the first start's admin token (kept out
//! of logs), bearer tokens over POST and GET.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    Backend, Server, TestDb, base64_url, codes, global_id, http, http_as, keystone, ws_connect,
    ws_next,
};

crate::on_both_backends!(
    revoked_expired_and_malformed_tokens_are_rejected,
    token_commands_and_first_start,
);

async fn revoked_expired_and_malformed_tokens_are_rejected(backend: Backend) {
    let db = TestDb::new(backend).await;
    // Default token cache: revocation through this server still takes effect at once.
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("soon-revoked", "VIEWER").await;
    let query = "{ viewer { name role } }";
    let (status, body) = server.graphql_as(&viewer, query, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        Server::data(&body)["viewer"],
        json!({ "name": "soon-revoked", "role": "VIEWER" })
    );

    let id = db
        .rows("SELECT CAST(id AS TEXT) FROM api_token WHERE name = 'soon-revoked'")
        .await
        .remove(0);
    let global = global_id("ApiToken", &id);
    let body = server
        .graphql(
            "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { name revokedAt active } } }",
            json!({ "id": global }),
        )
        .await;
    let revoked = &Server::data(&body)["revokeApiToken"]["token"];
    assert_eq!(revoked["active"], false);
    assert!(revoked["revokedAt"].is_string());
    let (status, body) = server.graphql_as(&viewer, query, json!({})).await;
    assert_eq!(
        (status, codes(&body)),
        (401, vec!["UNAUTHENTICATED".to_owned()]),
        "{body}"
    );
    // Revoking twice is a conflict that says so.
    let body = server
        .graphql(
            "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { id } } }",
            json!({ "id": global }),
        )
        .await;
    assert_eq!(codes(&body), ["CONFLICT"]);

    // Malformed headers and well-formed unknown secrets.
    let unknown = format!("kst_{}", "A".repeat(43));
    for header in [
        "Bearer".to_owned(),
        "Bearer not-a-token".to_owned(),
        format!("Basic {}", base64_url("admin:admin")),
        format!("Token {}", server.admin_token),
        format!("Bearer {unknown}"),
        format!("Bearer {}x", server.admin_token),
    ] {
        let response = http()
            .post(server.url("/graphql"))
            .header("authorization", &header)
            .json(&json!({ "query": query }))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 401, "{header}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"keystone\""
        );
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"], "{header}: {body}");
    }

    // An expiry in the past is refused at creation; a token that expires stops working.
    let body = server
        .graphql(
            r#"mutation { createApiToken(input: { name: "late", role: VIEWER, expiresAt: "2020-01-01T00:00:00Z" }) { secret } }"#,
            json!({}),
        )
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    assert_eq!(body["errors"][0]["extensions"]["field"], "expiresAt");
    server.stop_ok().await;

    let server = Server::start(&db, &["--token-cache-ms", "0"])
        .await
        .expect("server starts");
    let expiring = server.create_token("expiring", "VIEWER").await;
    let (status, _) = server.graphql_as(&expiring, query, json!({})).await;
    assert_eq!(status, 200);
    db.exec("UPDATE api_token SET expires_at = created_at WHERE name = 'expiring'")
        .await;
    let (status, body) = server.graphql_as(&expiring, query, json!({})).await;
    assert_eq!(status, 401);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );
    server.stop_ok().await;
}

/// The first start creates one admin token (owner-only file); `keystone token` creates,
/// lists (without secrets) and revokes; the table holds hashes only.
async fn token_commands_and_first_start(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--token-cache-ms", "0"])
        .await
        .expect("server starts");
    let file = db.dir().join("keystone-admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the admin token file is readable by its owner only"
        );
    }
    let admin = server.admin_token.clone();
    assert!(admin.starts_with("kst_") && admin.len() == 47, "{admin}");

    let created = keystone(
        &db,
        &["token", "create", "--name", "ci", "--role", "runner"],
    )
    .await;
    created.assert_success();
    let secret = created.stdout.trim().to_owned();
    assert!(secret.starts_with("kst_"), "{}", created.stdout);
    let (status, body) = server
        .graphql_as(&secret, "{ viewer { name role } }", json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(Server::data(&body)["viewer"]["role"], "RUNNER");
    // Use is recorded (in the background, so within a moment); unused tokens stay blank.
    let used = "SELECT name FROM api_token WHERE last_used_at IS NOT NULL ORDER BY name";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.rows(used).await != ["ci"] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            db.rows(used).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A runner may not read repositories.
    let (_, body) = server
        .graphql_as(&secret, "{ repositories { totalCount } }", json!({}))
        .await;
    assert_eq!(codes(&body), ["FORBIDDEN"]);

    let duplicate = keystone(
        &db,
        &["token", "create", "--name", "ci", "--role", "viewer"],
    )
    .await;
    duplicate.assert_failure();
    assert!(
        duplicate.stderr.contains("a token with this name exists"),
        "{}",
        duplicate.stderr
    );
    let bad = keystone(
        &db,
        &["token", "create", "--name", "../etc", "--role", "viewer"],
    )
    .await;
    bad.assert_failure();

    let list = keystone(&db, &["token", "list"]).await;
    list.assert_success();
    for expected in ["admin", "ci", "runner", "active", &secret[..12]] {
        assert!(
            list.stdout.contains(expected),
            "{expected} in:\n{}",
            list.stdout
        );
    }
    assert!(!list.stdout.contains(&secret) && !list.stdout.contains(&admin));

    // Only hashes are stored: no column of any token row holds a secret.
    let rows = db
        .rows("SELECT name, role, secret_hash, secret_prefix, created_by FROM api_token")
        .await
        .join("\n");
    for plain in [&secret, &admin] {
        assert!(
            !rows.contains(plain.as_str()),
            "a secret is stored in clear"
        );
        let hash: String = Sha256::digest(plain.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(rows.contains(&hash), "the SHA-256 of each secret is stored");
    }

    let revoke = keystone(&db, &["token", "revoke", "ci"]).await;
    revoke.assert_success();
    let (status, _) = server
        .graphql_as(&secret, "{ viewer { name } }", json!({}))
        .await;
    assert_eq!(status, 401, "a token revoked by the command is refused");
    let list = keystone(&db, &["token", "list"]).await;
    assert!(list.stdout.contains("revoked"), "{}", list.stdout);
    let (_, log) = server.stop().await;
    assert!(
        !log.contains(&admin),
        "the server log never holds the secret"
    );

    // A second start finds tokens and creates none; the file is left alone.
    let server = Server::start(&db, &[]).await.expect("server starts");
    assert_eq!(server.admin_token, admin);
    assert_eq!(db.count("SELECT COUNT(*) FROM api_token").await, 2);
    let (_, log) = server.stop().await;
    assert!(log.contains("sign in with the token in"), "{log}");
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

crate::e2e!(bearer_tokens_over_post_and_get);

/// The bearer scheme is case-insensitive, and `GET` queries need a token like `POST`.
async fn bearer_tokens_over_post_and_get() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let response = http()
        .post(server.url("/graphql"))
        .header("authorization", format!("bearer {}", server.admin_token))
        .json(&json!({ "query": "{ viewer { name } }" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");
    let get = server.url("/graphql?query=%7Bviewer%7Bname%7D%7D");
    let response = http().get(&get).send().await.expect("GET");
    assert_eq!(response.status(), 401, "GET without a token");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    let response = http_as(&server.admin_token)
        .get(&get)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");
    server.stop_ok().await;
}

crate::e2e!(websocket_operations_are_checked_again_after_revocation);

/// A token reaches a WebSocket through `connection_init` and keeps working on it; once
/// revoked, the connection cannot start new operations.
async fn websocket_operations_are_checked_again_after_revocation() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("ws-viewer", "VIEWER").await;
    let mut socket = ws_connect(&server, &viewer).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    let query = |id: &str| {
        Message::Text(
            json!({ "id": id, "type": "subscribe", "payload": { "query": "{ viewer { name } }" } })
                .to_string()
                .into(),
        )
    };
    socket.send(query("1")).await.expect("send");
    let first = ws_next(&mut socket).await.expect("next");
    assert_eq!(first["payload"]["data"]["viewer"]["name"], "ws-viewer");
    assert_eq!(
        ws_next(&mut socket).await.expect("complete")["type"],
        "complete"
    );

    let id = db
        .rows("SELECT CAST(id AS TEXT) FROM api_token WHERE name = 'ws-viewer'")
        .await
        .remove(0);
    let body = server
        .graphql(
            "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { id } } }",
            json!({ "id": global_id("ApiToken", &id) }),
        )
        .await;
    Server::data(&body);
    socket.send(query("2")).await.expect("send");
    let refused = ws_next(&mut socket).await.expect("answer");
    let errors = if refused["type"] == "error" {
        refused["payload"].clone()
    } else {
        refused["payload"]["errors"].clone()
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "UNAUTHENTICATED",
        "{refused}"
    );
    socket.close(None).await.ok();
    server.stop_ok().await;
}
