//! Two `keystone serve` processes on one PostgreSQL behave as one service: a subscriber on
//! one receives, in order, the events caused through the other (LISTEN/NOTIFY), log lines
//! arrive live, and runners claim from either without double claims.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, Socket, TestDb, ws_connect, ws_next};

async fn subscribe(socket: &mut Socket, id: &str, query: &str, variables: Value) {
    socket
        .send(Message::Text(
            json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } })
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
}

/// Reads `next` messages (first those in `early`, which arrived before) until each
/// subscription id in `wanted` has its count; returns each one's data in arrival order.
async fn collect(
    socket: &mut Socket,
    mut early: Vec<Value>,
    wanted: &[(&str, usize)],
) -> Vec<Vec<Value>> {
    early.reverse();
    let mut got: Vec<Vec<Value>> = vec![Vec::new(); wanted.len()];
    while wanted.iter().zip(&got).any(|((_, n), g)| g.len() < *n) {
        let message = match early.pop() {
            Some(message) => message,
            None => ws_next(socket).await.expect("open"),
        };
        assert!(message["type"] != "error", "{message}");
        if message["type"] != "next" {
            continue;
        }
        assert!(message["payload"]["errors"].is_null(), "{message}");
        if let Some(slot) = wanted.iter().position(|(id, _)| message["id"] == *id) {
            got[slot].push(message["payload"]["data"].clone());
        }
    }
    got
}

/// A ping round trip: every subscription sent before is registered on the server. Returns
/// the messages that arrived before the pong.
async fn settle(socket: &mut Socket) -> Vec<Value> {
    socket
        .send(Message::Text(json!({ "type": "ping" }).to_string().into()))
        .await
        .expect("send");
    let mut early = Vec::new();
    loop {
        let message = ws_next(socket).await.expect("open");
        if message["type"] == "pong" {
            return early;
        }
        early.push(message);
    }
}

crate::e2e!(two_servers_on_one_postgres_act_as_one);
async fn two_servers_on_one_postgres_act_as_one() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = Server::start(&db, &[]).await.expect("server A starts");
    let b = Server::start(&db, &[]).await.expect("server B starts");
    assert_eq!(
        a.admin_token, b.admin_token,
        "one installation, one first admin token"
    );
    let runner = a.create_token("runner", "RUNNER").await;

    let app = a.create_app("web", "web").await;

    // Subscribed on B; everything below happens through A.
    let mut socket = ws_connect(&b, &b.admin_token).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    subscribe(
        &mut socket,
        "deployments",
        "subscription($app: ID) { deploymentUpdated(appId: $app) { databaseId status } }",
        json!({ "app": app }),
    )
    .await;
    subscribe(
        &mut socket,
        "app",
        "subscription($app: ID) { appUpdated(id: $app) { status currentPort } }",
        json!({ "app": app }),
    )
    .await;
    let mut early = settle(&mut socket).await;

    let body = a
        .graphql(
            "mutation($app: ID!) { deployApp(input: { appId: $app }) { deployment { id databaseId } } }",
            json!({ "app": app }),
        )
        .await;
    let deployment = Server::data(&body)["deployApp"]["deployment"].clone();
    let deployment_id = deployment["id"].as_str().expect("id").to_owned();
    let (_, body) = a
        .graphql_as(
            &runner,
            "mutation { claimDeployment { deployment { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["claimDeployment"]["deployment"]["id"],
        deployment_id.as_str()
    );

    // Log lines appended through A stream to B.
    subscribe(
        &mut socket,
        "log",
        "subscription($d: ID!) { deploymentLog(deploymentId: $d) }",
        json!({ "d": deployment_id }),
    )
    .await;
    early.extend(settle(&mut socket).await);
    let append = "mutation($d: ID!, $c: String!) { appendDeploymentLog(input: { deploymentId: $d, chunk: $c }) { bytesWritten } }";
    for chunk in ["cloning\n", "building\n", "started\n"] {
        let (_, body) = a
            .graphql_as(&runner, append, json!({ "d": deployment_id, "c": chunk }))
            .await;
        Server::data(&body);
    }
    let (_, body) = a
        .graphql_as(
            &runner,
            "mutation($d: ID!) { reportDeployment(input: { deploymentId: $d, status: SUCCESS, imageTag: \"web:1\" }) { app { status } } }",
            json!({ "d": deployment_id }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["reportDeployment"]["app"]["status"],
        "RUNNING"
    );

    // B saw every step, in order.
    let got = collect(
        &mut socket,
        early,
        &[("deployments", 3), ("log", 3), ("app", 2)],
    )
    .await;
    let statuses: Vec<&str> = got[0]
        .iter()
        .map(|d| {
            assert_eq!(
                d["deploymentUpdated"]["databaseId"],
                deployment["databaseId"]
            );
            d["deploymentUpdated"]["status"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(statuses, ["QUEUED", "RUNNING", "SUCCESS"]);
    let lines: Vec<&str> = got[1]
        .iter()
        .map(|d| d["deploymentLog"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(lines, ["cloning\n", "building\n", "started\n"]);
    let app_statuses: Vec<&str> = got[2]
        .iter()
        .map(|d| {
            assert_eq!(d["appUpdated"]["currentPort"], 9000);
            d["appUpdated"]["status"].as_str().unwrap_or_default()
        })
        .collect();
    assert_eq!(app_statuses, ["DEPLOYING", "RUNNING"]);
    // And B serves what A wrote.
    let body = b
        .graphql(
            "query($d: ID!) { deployment(id: $d) { status imageTag logs(tail: 1) } }",
            json!({ "d": deployment_id }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["deployment"],
        json!({ "status": "SUCCESS", "imageTag": "web:1", "logs": ["started"] })
    );

    // Runners claim through either server; each deployment goes to one of them.
    let body = b
        .graphql(
            "mutation($app: ID!) { deployApp(input: { appId: $app }) { deployment { id } } }",
            json!({ "app": app }),
        )
        .await;
    let queued = Server::data(&body)["deployApp"]["deployment"]["id"].clone();
    let claim = "mutation { claimDeployment { deployment { id } } }";
    let (from_a, from_b) = tokio::join!(
        a.graphql_as(&runner, claim, json!({})),
        b.graphql_as(&runner, claim, json!({}))
    );
    let claimed: Vec<Value> = [from_a.1, from_b.1]
        .iter()
        .map(|body| Server::data(body)["claimDeployment"]["deployment"]["id"].clone())
        .collect();
    assert!(
        claimed.contains(&queued) && claimed.contains(&Value::Null),
        "exactly one server handed it out: {claimed:?}"
    );
    socket.close(None).await.ok();
    a.stop_ok().await;
    b.stop_ok().await;
}
