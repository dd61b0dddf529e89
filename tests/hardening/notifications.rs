//! PostgreSQL notifications cannot be replayed: a signed notification captured on Keystone's
//! channel and sent again, by another connection, reaches no subscriber.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, TestDb, global_id, insert_port_apps, ws_connect, ws_next};

async fn deploy(server: &Server, app: i64) {
    let body = server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": global_id("App", app) }),
        )
        .await;
    Server::data(&body);
}

crate::e2e!(a_replayed_notification_reaches_no_subscriber);
async fn a_replayed_notification_reaches_no_subscriber() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 2).await;
    let mut socket = ws_connect(&server, &server.admin_token).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    socket
        .send(Message::Text(
            json!({ "type": "subscribe", "id": "1", "payload": {
                "query": "subscription { deploymentUpdated { databaseId } }" } })
            .to_string()
            .into(),
        ))
        .await
        .expect("subscribe");
    let schema = db
        .rows("SELECT current_schema()")
        .await
        .pop()
        .expect("schema");
    let channel = format!("keystone_events:{schema}");
    // An eavesdropper with a connection of its own captures what goes by.
    let (database, _) = db.url.split_once('?').expect("a URL with options");
    let mut eavesdropper = sqlx::postgres::PgListener::connect(database)
        .await
        .expect("connect");
    eavesdropper.listen(&channel).await.expect("LISTEN");

    deploy(&server, 1).await;
    let first = ws_next(&mut socket).await.expect("an event");
    let replayed = first["payload"]["data"]["deploymentUpdated"]["databaseId"].clone();
    assert!(replayed.is_i64(), "{first}");
    let captured = eavesdropper.recv().await.expect("a notification");
    let captured = captured.payload().to_owned();

    // Sent again, as it was, by another connection.
    let conn = db.connect().await;
    use sea_orm::ConnectionTrait;
    conn.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [channel.clone().into(), captured.into()],
    ))
    .await
    .expect("NOTIFY");
    deploy(&server, 2).await;
    let next = ws_next(&mut socket).await.expect("an event");
    assert_ne!(
        next["payload"]["data"]["deploymentUpdated"]["databaseId"], replayed,
        "the replayed notification was delivered: {next}"
    );
    conn.close().await.ok();
    let (_, log) = server.stop().await;
    assert!(log.contains("a replay"), "{log}");
}
