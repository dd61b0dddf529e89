//! Nothing a client sends is logged or echoed unbounded: before its token is checked nothing
//! of the request body reaches the log; after, operation names are cut and escaped
//! (bidirectional controls and line separators too), and every error message is cut, over
//! HTTP and WebSocket.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, TestDb, http, ws_connect, ws_next};

crate::e2e!(the_log_and_error_messages_stay_bounded);
async fn the_log_and_error_messages_stay_bounded() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let huge_name = format!("Op{}", "n".repeat(100_000));
    let huge_query = format!("query {huge_name} {{ __typename }}");

    // 100 unauthenticated requests, each with 200 KB of names: refused, and not logged.
    for n in 0..100 {
        let response = http()
            .post(server.url("/graphql"))
            .header(
                "authorization",
                if n % 2 == 0 { "Bearer kst_nope" } else { "" },
            )
            .json(&json!({ "query": huge_query, "operationName": huge_name }))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 401);
    }

    // Authenticated: the name is logged cut, with its disguising characters escaped.
    let disguised = format!("Op\u{202e}gol\u{2028}FORGED{}", "z".repeat(100_000));
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            &format!("query {huge_name} {{ __typename }}"),
            json!({}),
        )
        .await;
    assert!(body["data"].is_object(), "{body}");
    let response = server
        .admin()
        .post(server.url("/graphql"))
        .json(&json!({ "query": "{ __typename }", "operationName": disguised }))
        .send()
        .await
        .expect("POST");
    let body: serde_json::Value = response.json().await.expect("JSON");
    // async-graphql echoes the unknown name; the message is cut.
    let message = body["errors"][0]["message"].as_str().expect("a message");
    assert!(message.len() <= 1100, "{} bytes", message.len());

    // Error messages that echo values are cut: a parse error quoting a 100 KB line, a name
    // that is not found, over HTTP and WebSocket.
    for query in [
        format!("{{ app(name: \"{}\") {{ id }} }}", "a".repeat(100_000)),
        format!("{{ viewer {{ name }} }} {}", "!".repeat(100_000)),
    ] {
        let (_, body) = server
            .graphql_as(&server.admin_token, &query, json!({}))
            .await;
        for error in body["errors"].as_array().expect("errors") {
            let message = error["message"].as_str().expect("a message");
            assert!(
                message.len() <= 1100,
                "{} bytes: {}",
                message.len(),
                &message[..200]
            );
        }
        let mut socket = ws_connect(&server, &server.admin_token).await;
        socket
            .send(Message::Text(
                json!({ "type": "subscribe", "id": "1", "payload": { "query": query } })
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send");
        let payload = loop {
            let message = ws_next(&mut socket).await.expect("open");
            if message["id"] == "1" && matches!(message["type"].as_str(), Some("next" | "error")) {
                break message["payload"].clone();
            }
        };
        let errors = payload["errors"].as_array().or(payload.as_array()).cloned();
        for error in errors.expect("errors") {
            let message = error["message"].as_str().expect("a message");
            assert!(
                message.len() <= 1100,
                "{} bytes over WebSocket",
                message.len()
            );
        }
    }

    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
    assert!(
        log.len() < 100 * 1024,
        "the log grew to {} bytes; its longest line: {}",
        log.len(),
        log.lines().map(str::len).max().unwrap_or_default()
    );
    assert!(
        !log.contains('\u{202e}') && !log.contains('\u{2028}'),
        "{log}"
    );
    assert!(log.contains("Op\\u{202e}gol\\u{2028}FORGED"), "{log}");
    assert!(!log.contains("kst_nope"), "{log}");
}

crate::on_both_backends!(internal_errors_are_generic_and_logged,);

/// A failure inside the server reaches the client as a generic message with a correlation
/// id, and the server log has the details under that id.
async fn internal_errors_are_generic_and_logged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    server.create_app("doomed", "doomed").await;
    // Break the schema underneath the running server.
    db.exec(match backend {
        Backend::Sqlite => "DROP TABLE api_deployment",
        Backend::Postgres => "DROP TABLE api_deployment CASCADE",
    })
    .await;
    let body = server
        .graphql("{ deployments { nodes { id } } }", json!({}))
        .await;
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], "INTERNAL", "{body}");
    let id = error["extensions"]["correlationId"]
        .as_str()
        .expect("a correlation id")
        .to_owned();
    let message = error["message"].as_str().unwrap_or_default();
    assert_eq!(message, format!("internal error (correlation id {id})"));
    let text = body.to_string().to_lowercase();
    for leak in [
        "select",
        "api_deployment",
        "sqlx",
        "no such table",
        "does not exist",
        ".rs",
    ] {
        assert!(!text.contains(leak), "{leak} leaked: {body}");
    }
    let (_, log) = server.stop().await;
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("api_deployment")),
        "the log explains {id}:\n{log}"
    );
}
