//! Faults: what clients see, and what the database holds, when parts of the system fail.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, TestDb, ws_connect, ws_next};

/// The next `next` payload of operation `id` on `socket`.
async fn next_payload(socket: &mut crate::support::Socket, id: &str) -> Value {
    loop {
        let message = ws_next(socket).await.expect("the socket stays open");
        if message["type"] == "next" && message["id"] == id {
            return message["payload"].clone();
        }
    }
}

/// The server's `LISTEN` connection drops (its backend is terminated, as a failover or a
/// network cut would do): the server listens again by itself, tells every subscriber to
/// refetch with a `RESYNC` error, and events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_are_told_to_resync_after_the_event_connection_drops() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let schema = db
        .postgres_schema()
        .expect("a PostgreSQL schema")
        .to_owned();
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("web", "web-app").await;
    let mut socket = ws_connect(&server, &server.admin_token).await;
    let subscribe = |id: &str, query: &str| {
        Message::Text(
            json!({ "type": "subscribe", "id": id, "payload": { "query": query } })
                .to_string()
                .into(),
        )
    };
    socket
        .send(subscribe(
            "s",
            "subscription { deploymentUpdated { status } }",
        ))
        .await
        .expect("send");
    // The subscription is live once a query sent after it has been answered.
    socket
        .send(subscribe("q", "{ viewer { name } }"))
        .await
        .expect("send");
    next_payload(&mut socket, "q").await;

    let listening = format!("LISTEN \"keystone_events:{schema}\"");
    let terminated = db
        .rows(&format!(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE query = '{listening}'"
        ))
        .await;
    assert_eq!(terminated, ["true"], "the server's LISTEN connection");

    let payload = next_payload(&mut socket, "s").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "RESYNC",
        "{payload:#}"
    );
    // Listening again: a change made now reaches the subscriber.
    server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    let payload = next_payload(&mut socket, "s").await;
    assert_eq!(payload["data"]["deploymentUpdated"]["status"], "QUEUED");
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
    db.cleanup().await;
}
