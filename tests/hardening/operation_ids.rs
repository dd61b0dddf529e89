//! WebSocket operation ids are the client's to choose: whatever characters they hold, a
//! finished operation gives its slot back.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, TestDb, ws_connect, ws_next};

crate::e2e!(ids_with_quotes_and_backslashes_do_not_leak_slots);
async fn ids_with_quotes_and_backslashes_do_not_leak_slots() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &["--ws-max-subscriptions", "32"])
        .await
        .expect("server starts");
    let mut socket = ws_connect(&server, &server.admin_token).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    // 33 queries one after the other, each id with a quote or a backslash: each finishes
    // and frees its slot, so the 33rd runs.
    for n in 0..33 {
        let id = if n % 2 == 0 {
            format!("q\"{n}")
        } else {
            format!("q\\{n}")
        };
        socket
            .send(Message::Text(
                json!({ "type": "subscribe", "id": id,
                        "payload": { "query": "{ viewer { name } }" } })
                .to_string()
                .into(),
            ))
            .await
            .expect("send");
        let message = loop {
            let message = ws_next(&mut socket).await.expect("open");
            if message["id"] == id.as_str() {
                break message;
            }
        };
        assert_eq!(message["type"], "next", "operation {n}: {message}");
        assert_eq!(message["payload"]["data"]["viewer"]["name"], "admin");
        let complete = ws_next(&mut socket).await.expect("open");
        assert_eq!(complete["type"], "complete", "{complete}");
    }
    server.stop_ok().await;
}
