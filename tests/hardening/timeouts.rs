//! One deadline for every transport: a query over WebSocket that runs past the request
//! timeout is cancelled and answered `TIMEOUT`, as over HTTP; a mutation is answered
//! `TIMEOUT` (outcome unknown) and finishes. A lock held by another session stalls both
//! (PostgreSQL: SQLite's readers never wait on a writer).

use futures_util::SinkExt;
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, Socket, TestDb, ws_connect, ws_next};

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
