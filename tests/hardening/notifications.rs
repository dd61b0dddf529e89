//! PostgreSQL notifications cannot be replayed: a signed notification captured on Keystone's
//! channel and sent again, by another connection, reaches no subscriber.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::protocol::deploy;
use crate::support::{Backend, Server, TestDb, insert_port_apps, ws_connect, ws_next, ws_start};

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
    ws_start(
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
