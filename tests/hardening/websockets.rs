//! WebSocket connections are bounded (per address, per token, per connection) and closed
//! when their token is revoked.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, Socket, TestDb, global_id, ws_connect, ws_next, ws_start};

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
    ws_start(&mut first, "1", query).await;
    ws_start(&mut first, "2", query).await;
    ws_start(&mut first, "3", query).await;
    let refused = ws_next(&mut first).await.expect("an error for 3");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "3");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );
    ws_start(&mut second, "a", query).await;
    ws_start(&mut second, "a", query).await;
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
    ws_start(&mut expiring, "1", query).await;
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
