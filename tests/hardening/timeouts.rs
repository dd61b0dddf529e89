//! One deadline for every transport: a query over WebSocket that runs past the request
//! timeout is cancelled and answered `TIMEOUT`, as over HTTP; a mutation is answered
//! `TIMEOUT` (outcome unknown) and finishes. A lock held by another session stalls both
//! (PostgreSQL: SQLite's readers never wait on a writer).

use futures_util::SinkExt;
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, Socket, TestDb, codes, ws_connect, ws_next};

async fn run_over_websocket(socket: &mut Socket, id: &str, query: &str) -> Value {
    socket
        .send(Message::Text(
            json!({ "type": "subscribe", "id": id, "payload": { "query": query } })
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
    loop {
        let message = ws_next(socket).await.expect("the socket stays open");
        if message["id"] == id && message["type"] == "next" {
            return message["payload"].clone();
        }
    }
}

crate::e2e!(websocket_operations_have_the_request_timeout);
async fn websocket_operations_have_the_request_timeout() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = Server::start(&db, &["--request-timeout-secs", "1"])
        .await
        .expect("server starts");
    let mut socket = ws_connect(&server, &server.admin_token).await;
    // The token is checked and cached before the table is locked.
    let warm = run_over_websocket(&mut socket, "warm", "{ viewer { name } }").await;
    assert_eq!(warm["data"]["viewer"]["name"], "admin");
    let conn = db.connect().await;
    let lock = conn.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE api_repository IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let started = std::time::Instant::now();
    let payload = run_over_websocket(&mut socket, "q", "{ repositories { totalCount } }").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "TIMEOUT",
        "{payload}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    let payload = run_over_websocket(
        &mut socket,
        "m",
        r#"mutation { createRepository(input: { name: "late", gitUrl: "https://e.com/late.git" }) { repository { name } } }"#,
    )
    .await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "TIMEOUT",
        "{payload}"
    );
    assert!(
        payload["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("outcome is unknown")),
        "{payload}"
    );
    lock.rollback().await.expect("unlock");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.count("SELECT COUNT(*) FROM api_repository").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mutation finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The connection is still usable.
    let after = run_over_websocket(&mut socket, "after", "{ repositories { totalCount } }").await;
    assert_eq!(after["data"]["repositories"]["totalCount"], 1, "{after}");
    conn.close().await.ok();
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

crate::e2e!(queries_time_out_and_mutations_finish);

/// A query that does not finish within the timeout is cancelled with `TIMEOUT`; a
/// mutation is never cut in half: its client gets `TIMEOUT` (outcome unknown) while it runs
/// on to the end. A lock held on the table by another session makes both wait (PostgreSQL).
async fn queries_time_out_and_mutations_finish() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDb::new(Backend::Postgres).await;
    let server = Server::start(&db, &["--request-timeout-secs", "1"])
        .await
        .expect("server starts");
    // Authenticate once, so the token is cached and only the table below is waited on.
    server.graphql("{ viewer { name } }", json!({})).await;
    let conn = db.connect().await;
    let lock = conn.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE api_repository IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let started = std::time::Instant::now();
    let (status, body) = server
        .graphql_as(
            &server.admin_token,
            "{ repositories { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(codes(&body), ["TIMEOUT"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // A mutation is never cancelled: at the timeout its client is told the outcome is
    // unknown, and it goes on, to finish once the lock goes away.
    let (status, body) = server
        .graphql_as(
            &server.admin_token,
            r#"mutation { createRepository(input: { name: "slow", gitUrl: "https://e.com/slow.git" }) { repository { name } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(codes(&body), ["TIMEOUT"]);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("outcome is unknown"),
        "{body}"
    );
    lock.rollback().await.expect("unlock");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.count("SELECT COUNT(*) FROM api_repository").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mutation finished in the background"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(db.rows("SELECT name FROM api_repository").await, ["slow"]);
    conn.close().await.ok();
    server.stop_ok().await;
}
