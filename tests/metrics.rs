//! `/metrics`: after a scripted sequence of requests, the scrape holds the values that
//! sequence must produce (not just the names), on both backends; and the endpoint can move
//! to an address of its own and require a token.

use std::collections::HashMap;

use futures_util::SinkExt;
use serde_json::json;

use crate::support::{
    Backend, Server, TestDb, http, http_as, parse_metrics, ws_connect, ws_next, ws_next_payload,
    ws_subscribe,
};

async fn scrape(server: &Server) -> HashMap<String, f64> {
    let response = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse_metrics(&response.text().await.expect("body"))
}

/// The value of `series`, 0 when the scrape does not have it.
fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

async fn a_scripted_sequence_shows_in_the_metrics(backend: Backend) {
    let db = TestDb::new(backend).await;
    // A burst of 20 requests per token, refilled at one a second: a viewer's rapid
    // requests below run into it.
    let server = Server::start(
        &db,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "20"],
    )
    .await
    .expect("server starts");
    let viewer = server.create_token("watcher", "VIEWER").await;
    let runner = server.create_token("builder", "RUNNER").await;
    let app = server.create_app("web", "web-app").await;
    let before = scrape(&server).await;

    // Named queries, an anonymous one, a failing mutation, a forbidden one.
    let apps = "query Apps { apps(first: 1) { totalCount } }";
    for _ in 0..2 {
        let (status, body) = server.graphql_as(&viewer, apps, json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    server
        .graphql_as(&viewer, "{ viewer { name } }", json!({}))
        .await;
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            "mutation Remove { deleteApp(input: { id: \"nope\" }) { deletedAppId } }",
            json!({}),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let (_, body) = server
        .graphql_as(
            &viewer,
            "mutation Sneak($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN");
    // Authentication failures: no token, an unknown one.
    assert_eq!(server.graphql_as("", apps, json!({})).await.0, 401);
    let unknown = format!("kst_{}", "A".repeat(43));
    assert_eq!(server.graphql_as(&unknown, apps, json!({})).await.0, 401);

    // A subscriber, then a deploy it sees.
    let mut socket = ws_connect(&server, &viewer).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    socket
        .send(ws_subscribe(
            "s",
            "subscription Watch { deploymentUpdated { status } }",
        ))
        .await
        .expect("subscribe");
    socket
        .send(ws_subscribe("q", "query Ping { viewer { name } }"))
        .await
        .expect("query");
    assert_eq!(ws_next(&mut socket).await.expect("ping")["id"], "q");
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            "mutation Ship($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    let deployment = Server::data(&body)["deployApp"]["deployment"]["id"].clone();
    let event = ws_next_payload(&mut socket, "s").await;
    assert_eq!(
        event["data"]["deploymentUpdated"]["status"], "QUEUED",
        "{event}"
    );
    let queued = scrape(&server).await;
    assert_eq!(
        value(&queued, "keystone_deployments{status=\"queued\"}"),
        1.0
    );
    assert_eq!(
        value(&queued, "keystone_deployments{status=\"running\"}"),
        0.0
    );
    let age = value(&queued, "keystone_deployment_queue_oldest_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(value(&queued, "keystone_websocket_connections"), 1.0);
    assert_eq!(value(&queued, "keystone_graphql_subscriptions"), 1.0);

    // The runner: claim, two stages, report.
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation { claimDeployment { deployment { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["claimDeployment"]["deployment"]["id"],
        deployment
    );
    for stage in ["CLONE", "BUILD"] {
        let (_, body) = server
            .graphql_as(
                &runner,
                "mutation($d: ID!, $s: DeploymentStage) { heartbeatDeployment(input: { deploymentId: $d, stage: $s }) { cancelRequested } }",
                json!({ "d": deployment, "s": stage }),
            )
            .await;
        Server::data(&body);
    }
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($d: ID!) { reportDeployment(input: { deploymentId: $d, status: SUCCESS }) { app { status } } }",
            json!({ "d": deployment }),
        )
        .await;
    Server::data(&body);

    // The viewer's burst runs out.
    let mut refused = 0;
    for _ in 0..30 {
        if server.graphql_as(&viewer, apps, json!({})).await.0 == 429 {
            refused += 1;
        }
    }
    assert!(refused > 0, "the rate limit refused some");
    drop(socket);

    let after = scrape(&server).await;
    let delta = |series: &str| value(&after, series) - value(&before, series);
    let requests = |operation: &str, kind: &str, outcome: &str| {
        delta(&format!(
            "keystone_graphql_requests_total{{operation=\"{operation}\",type=\"{kind}\",outcome=\"{outcome}\"}}"
        ))
    };
    // 2 + the 30 rapid ones that were admitted.
    assert_eq!(requests("Apps", "query", "ok"), f64::from(2 + 30 - refused));
    assert_eq!(
        delta("keystone_graphql_request_duration_seconds_count{operation=\"Apps\",type=\"query\"}"),
        f64::from(2 + 30 - refused)
    );
    assert!(requests("anonymous", "query", "ok") >= 1.0);
    assert_eq!(requests("Remove", "mutation", "BAD_USER_INPUT"), 1.0);
    assert_eq!(requests("Sneak", "mutation", "FORBIDDEN"), 1.0);
    assert_eq!(requests("Ship", "mutation", "ok"), 1.0);
    assert_eq!(requests("Ping", "query", "ok"), 1.0, "over the WebSocket");
    assert_eq!(delta("keystone_rate_limited_total"), f64::from(refused));
    assert_eq!(
        delta("keystone_authentication_failures_total{reason=\"missing\"}"),
        1.0
    );
    assert_eq!(
        delta("keystone_authentication_failures_total{reason=\"invalid\"}"),
        1.0
    );
    // A deployment's updates: queued (deployApp), running (claim), success (report).
    assert_eq!(
        delta("keystone_events_published_total{kind=\"deployment_updated\"}"),
        3.0,
        "{after:#?}"
    );
    assert_eq!(
        value(
            &after,
            "keystone_runner_heartbeats_total{runner=\"builder\"}"
        ),
        2.0
    );
    for stage in ["clone", "build"] {
        assert_eq!(
            value(
                &after,
                &format!("keystone_deployment_stage_duration_seconds_count{{stage=\"{stage}\"}}")
            ),
            1.0,
            "{stage}"
        );
    }
    assert_eq!(
        value(&after, "keystone_deployments{status=\"success\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "keystone_deployments{status=\"queued\"}"),
        0.0
    );
    assert_eq!(value(&after, "keystone_event_listener_connected"), 1.0);
    let statements = value(&after, "keystone_sql_statements_total");
    assert!(statements > value(&before, "keystone_sql_statements_total"));
    assert_eq!(
        value(&after, "keystone_sql_statement_duration_seconds_count"),
        statements
    );
    assert!(value(&after, "keystone_db_pool_connections{state=\"idle\"}") >= 1.0);

    // The subscription ends when its connection does; the scrape after says so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (ended, open) = loop {
        let now = scrape(&server).await;
        let ended = value(
            &now,
            "keystone_graphql_requests_total{operation=\"Watch\",type=\"subscription\",outcome=\"ok\"}",
        );
        let open = value(&now, "keystone_websocket_connections");
        if (ended == 1.0 && open == 0.0) || std::time::Instant::now() > deadline {
            break (ended, open);
        }
        tokio::task::yield_now().await;
    };
    assert_eq!((ended, open), (1.0, 0.0));
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

crate::on_both_backends!(a_scripted_sequence_shows_in_the_metrics);

crate::e2e!(metrics_can_have_an_address_and_a_token_of_their_own);
/// `--metrics-bind` moves `/metrics` off the API's address; `--metrics-token-file` makes it
/// require that bearer token.
async fn metrics_can_have_an_address_and_a_token_of_their_own() {
    let db = TestDb::new(Backend::Sqlite).await;
    let port = crate::support::free_port();
    let token_file = db.dir().join("metrics.token");
    std::fs::write(&token_file, "s3cret-scrape\n").expect("token file");
    let bind = format!("127.0.0.1:{port}");
    let server = Server::start(
        &db,
        &[
            "--metrics-bind",
            &bind,
            "--metrics-token-file",
            token_file.to_str().expect("utf-8"),
        ],
    )
    .await
    .expect("server starts");
    let on_api = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(on_api.status(), 404, "not on the API's address");
    let url = format!("http://{bind}/metrics");
    let without = http().get(&url).send().await.expect("GET");
    assert_eq!(without.status(), 401);
    let wrong = http_as("nope").get(&url).send().await.expect("GET");
    assert_eq!(wrong.status(), 401);
    let with = http_as("s3cret-scrape")
        .get(&url)
        .send()
        .await
        .expect("GET");
    assert_eq!(with.status(), 200);
    let metrics = parse_metrics(&with.text().await.expect("body"));
    assert_eq!(
        value(
            &metrics,
            "keystone_authentication_failures_total{reason=\"metrics\"}"
        ),
        2.0
    );
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}
