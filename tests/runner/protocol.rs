//! The runner protocol: exactly-once claims under concurrency, leases (requeue, then fail),
//! reports and the app's status, cancellation of queued and running deployments, logs, and
//! refused transitions that change nothing.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::on_both_backends;
use crate::support::{
    Backend, Server, TestDb, global_id, insert_port_apps, only_error, ws_connect, ws_next,
};

on_both_backends!(
    concurrent_claimers_get_each_deployment_once,
    lapsed_leases_requeue_then_fail,
    reports_cancellation_and_logs,
    log_chunks_apply_once_and_resume,
);

/// `count` PORT apps (see `insert_port_apps`), each deployed once through the API.
async fn queue_deployments(server: &Server, db: &TestDb, count: i64) {
    insert_port_apps(db, count).await;
    for n in 1..=count {
        let body = server
            .graphql(
                "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
                json!({ "id": global_id("App", n) }),
            )
            .await;
        Server::data(&body);
    }
}

const CLAIM: &str = "mutation { claimDeployment { deployment { id databaseId status startedAt logsPath } job { repositoryUrl branch appName accessMode port logsPath attempt leaseExpiresAt } } }";

async fn claim(server: &Server, token: &str) -> Value {
    let (status, body) = server.graphql_as(token, CLAIM, json!({})).await;
    assert_eq!(status, 200, "{body}");
    Server::data(&body)["claimDeployment"].clone()
}

/// 10 runners claim concurrently from 100 queued deployments: each is claimed exactly
/// once, none is lost, and the database agrees.
async fn concurrent_claimers_get_each_deployment_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    queue_deployments(&server, &db, 100).await;
    let mut tokens = Vec::new();
    for n in 0..10 {
        tokens.push(server.create_token(&format!("runner-{n}"), "RUNNER").await);
    }
    let claimed = join_all(tokens.iter().map(|token| async {
        let mut mine = Vec::new();
        loop {
            let claim = claim(&server, token).await;
            match claim["deployment"]["databaseId"].as_i64() {
                Some(id) => {
                    assert_eq!(claim["deployment"]["status"], "RUNNING");
                    assert_eq!(claim["job"]["branch"], "release");
                    assert_eq!(claim["job"]["repositoryUrl"], "https://e.com/r.git");
                    assert_eq!(claim["job"]["attempt"], 1);
                    assert!(claim["job"]["port"].is_i64());
                    mine.push(id);
                }
                None => return mine,
            }
        }
    }))
    .await;
    let all: Vec<i64> = claimed.iter().flatten().copied().collect();
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 100, "every claim handed out one deployment");
    assert_eq!(distinct.len(), 100, "no deployment was handed out twice");
    assert!(
        claimed.iter().filter(|mine| !mine.is_empty()).count() > 1,
        "the work was shared"
    );
    assert_eq!(
        db.rows("SELECT status, CAST(COUNT(*) AS TEXT) FROM api_deployment GROUP BY status")
            .await,
        ["running|100"]
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_deployment_run WHERE attempts = 1 AND runner_name LIKE 'runner-%'")
            .await,
        100
    );
    server.stop_ok().await;
}

/// Polls `sql` (one text row) until it equals `expected`, for at most 15 s.
async fn wait_for(db: &TestDb, sql: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = db.rows(sql).await;
        if rows.first().map(String::as_str) == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {rows:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A runner that stops heartbeating loses the deployment: it is requeued and claimed again
/// (attempt 2), and after the last attempt it fails with an error summary. A heartbeat
/// keeps it.
async fn lapsed_leases_requeue_then_fail(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--lease-secs", "2", "--max-attempts", "2"])
        .await
        .expect("server starts");
    queue_deployments(&server, &db, 1).await;
    let runner = server.create_token("flaky", "RUNNER").await;
    let first = claim(&server, &runner).await;
    assert_eq!(first["job"]["attempt"], 1);
    let deployment = first["deployment"]["id"].as_str().expect("id").to_owned();

    // Heartbeats keep it past its first lease.
    let heartbeat = "mutation($id: ID!) { heartbeatDeployment(input: { deploymentId: $id }) { cancelRequested leaseExpiresAt } }";
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, body) = server
            .graphql_as(&runner, heartbeat, json!({ "id": deployment }))
            .await;
        assert_eq!(
            Server::data(&body)["heartbeatDeployment"]["cancelRequested"],
            false
        );
    }
    assert_eq!(
        db.rows("SELECT status FROM api_deployment").await,
        ["running"]
    );

    // Silence: the sweeper requeues it, and it is claimed again.
    wait_for(&db, "SELECT status FROM api_deployment", "queued").await;
    let (_, body) = server
        .graphql_as(&runner, heartbeat, json!({ "id": deployment }))
        .await;
    assert_eq!(
        only_error(&body).0,
        "CONFLICT",
        "a lapsed lease cannot be renewed"
    );
    let second = claim(&server, &runner).await;
    assert_eq!(second["deployment"]["id"], deployment.as_str());
    assert_eq!(second["job"]["attempt"], 2);

    // Silence again, and no attempts are left: failed, with the reason.
    wait_for(&db, "SELECT status FROM api_deployment", "failed").await;
    let rows = db
        .rows("SELECT d.error_summary, a.status, CASE WHEN d.ended_at IS NULL THEN 'open' ELSE 'ended' END FROM api_deployment d JOIN api_app a ON a.id = d.app_id")
        .await;
    assert!(rows[0].contains("stopped heartbeating"), "{rows:?}");
    assert!(rows[0].ends_with("|failed|ended"), "{rows:?}");
    assert_eq!(claim(&server, &runner).await["deployment"], Value::Null);
    server.stop_ok().await;
}

/// Reports move the app, cancellation works for queued and running deployments, logs are
/// appended and tailed, and every refused transition names the state and changes nothing.
async fn reports_cancellation_and_logs(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    queue_deployments(&server, &db, 3).await;
    let runner = server.create_token("builder", "RUNNER").await;
    let other = server.create_token("other-runner", "RUNNER").await;
    let report = "mutation($id: ID!, $status: DeploymentOutcome!, $tag: String, $error: String) { reportDeployment(input: { deploymentId: $id, status: $status, imageTag: $tag, errorSummary: $error }) { deployment { status imageTag errorSummary endedAt } app { status } } }";
    let append = "mutation($id: ID!, $chunk: String!) { appendDeploymentLog(input: { deploymentId: $id, chunk: $chunk }) { bytesWritten } }";
    let cancel = "mutation($id: ID!) { cancelDeployment(input: { id: $id }) { cancelled deployment { status errorSummary } } }";

    // Deployment 1: logs, then success; the app runs.
    let one = claim(&server, &runner).await;
    let one_id = one["deployment"]["id"].as_str().expect("id").to_owned();
    assert!(
        one["job"]["logsPath"]
            .as_str()
            .unwrap_or_default()
            .contains("/deployment-1-")
    );
    for chunk in ["cloning\n", "building\nstep 2\n", "started\n"] {
        let (_, body) = server
            .graphql_as(&runner, append, json!({ "id": one_id, "chunk": chunk }))
            .await;
        assert_eq!(
            Server::data(&body)["appendDeploymentLog"]["bytesWritten"],
            chunk.len()
        );
    }
    // Another runner may not write to it.
    let (_, body) = server
        .graphql_as(
            &other,
            append,
            json!({ "id": one_id, "chunk": "intruder\n" }),
        )
        .await;
    assert_eq!(only_error(&body).0, "CONFLICT");
    // The refusal is audited against the deployment it was about.
    let body = server
        .graphql(
            r#"{ auditEvents(filter: { tokenName: "other-runner" }) { nodes { operation outcome errorCode objectId } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["auditEvents"]["nodes"],
        json!([{ "operation": "appendDeploymentLog", "outcome": "ERROR", "errorCode": "CONFLICT", "objectId": one_id }])
    );
    let (_, body) = server
        .graphql_as(
            &runner,
            append,
            json!({ "id": one_id, "chunk": "x".repeat(70_000) }),
        )
        .await;
    assert_eq!(
        only_error(&body),
        ("BAD_USER_INPUT".to_owned(), Some("chunk".to_owned()))
    );
    let body = server
        .graphql(
            "query($id: ID!) { deployment(id: $id) { last2: logs(tail: 2) all: logs } }",
            json!({ "id": one_id }),
        )
        .await;
    let logs = &Server::data(&body)["deployment"];
    assert_eq!(logs["last2"], json!(["step 2", "started"]));
    assert_eq!(
        logs["all"],
        json!(["cloning", "building", "step 2", "started"])
    );
    let (_, body) = server
        .graphql_as(
            &runner,
            report,
            json!({ "id": one_id, "status": "SUCCESS", "tag": "registry/app-1:abc123" }),
        )
        .await;
    let reported = &Server::data(&body)["reportDeployment"];
    assert_eq!(reported["deployment"]["status"], "SUCCESS");
    assert_eq!(reported["deployment"]["imageTag"], "registry/app-1:abc123");
    assert!(reported["deployment"]["endedAt"].is_string());
    assert_eq!(reported["app"]["status"], "RUNNING");

    // Final states are final: reporting again, or cancelling, is refused and changes nothing.
    let before = db
        .rows("SELECT status, image_tag FROM api_deployment WHERE id = 1")
        .await;
    let (_, body) = server
        .graphql_as(&runner, report, json!({ "id": one_id, "status": "FAILED" }))
        .await;
    assert_eq!(only_error(&body).0, "CONFLICT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("success")
    );
    let body = server.graphql(cancel, json!({ "id": one_id })).await;
    assert_eq!(only_error(&body).0, "CONFLICT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("success")
    );
    assert_eq!(
        db.rows("SELECT status, image_tag FROM api_deployment WHERE id = 1")
            .await,
        before
    );

    // Deployment 2: running, cancelled by an admin; the runner learns it and reports it.
    let two = claim(&server, &runner).await;
    let two_id = two["deployment"]["id"].as_str().expect("id").to_owned();
    let body = server.graphql(cancel, json!({ "id": two_id })).await;
    assert_eq!(Server::data(&body)["cancelDeployment"]["cancelled"], false);
    assert_eq!(
        Server::data(&body)["cancelDeployment"]["deployment"]["status"],
        "RUNNING"
    );
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!) { heartbeatDeployment(input: { deploymentId: $id }) { cancelRequested } }",
            json!({ "id": two_id }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["heartbeatDeployment"]["cancelRequested"],
        true
    );
    let (_, body) = server
        .graphql_as(
            &runner,
            report,
            json!({ "id": two_id, "status": "CANCELLED" }),
        )
        .await;
    let reported = &Server::data(&body)["reportDeployment"];
    assert_eq!(reported["deployment"]["status"], "CANCELLED");
    assert_eq!(
        reported["app"]["status"], "DRAFT",
        "the app is back where it was"
    );

    // Deployment 3: cancelled while queued, at once.
    let three_id = global_id("Deployment", 3);
    let body = server.graphql(cancel, json!({ "id": three_id })).await;
    let cancelled = &Server::data(&body)["cancelDeployment"];
    assert_eq!(cancelled["cancelled"], true);
    assert_eq!(cancelled["deployment"]["status"], "CANCELLED");
    assert_eq!(
        cancelled["deployment"]["errorSummary"],
        "cancelled by admin"
    );
    assert_eq!(
        db.rows("SELECT status FROM api_app WHERE id = 3").await,
        ["draft"]
    );
    // Nothing is left to claim; a queued deployment cannot be reported on.
    assert_eq!(claim(&server, &runner).await["deployment"], Value::Null);
    let (_, body) = server
        .graphql_as(
            &runner,
            report,
            json!({ "id": three_id, "status": "SUCCESS" }),
        )
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled")
    );
    server.stop_ok().await;
}

/// Numbered log chunks: a retry is applied once (also when it races the original), a gap is
/// refused, a reader resumes after the line it read last, and a re-claimed deployment
/// continues the numbering.
async fn log_chunks_apply_once_and_resume(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--lease-secs", "2", "--max-attempts", "3"])
        .await
        .expect("server starts");
    queue_deployments(&server, &db, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let claim_with_sequence =
        "mutation { claimDeployment { deployment { id } job { attempt logSequence } } }";
    let (_, body) = server
        .graphql_as(&runner, claim_with_sequence, json!({}))
        .await;
    let claimed = Server::data(&body)["claimDeployment"].clone();
    let id = claimed["deployment"]["id"].as_str().expect("id").to_owned();
    assert_eq!(claimed["job"]["logSequence"], 0);
    let append = "mutation($id: ID!, $chunk: String!, $n: Int) { appendDeploymentLog(input: { deploymentId: $id, chunk: $chunk, sequence: $n }) { bytesWritten sequence duplicate } }";
    let send = |chunk: &'static str, n: i64| {
        let (server, runner, id) = (&server, runner.clone(), id.clone());
        async move {
            server
                .graphql_as(&runner, append, json!({ "id": id, "chunk": chunk, "n": n }))
                .await
                .1
        }
    };
    let first = send("a\n", 1).await;
    assert_eq!(
        Server::data(&first)["appendDeploymentLog"],
        json!({ "bytesWritten": 2, "sequence": 1, "duplicate": false })
    );
    let retry = send("a\n", 1).await;
    assert_eq!(
        Server::data(&retry)["appendDeploymentLog"],
        json!({ "bytesWritten": 0, "sequence": 1, "duplicate": true })
    );
    let gap = send("x\n", 3).await;
    assert_eq!(
        only_error(&gap),
        ("CONFLICT".to_owned(), Some("sequence".to_owned()))
    );
    Server::data(&send("b\nc\n", 2).await);
    // The original and its retry at once: one is applied.
    let (one, other) = tokio::join!(send("d\n", 3), send("d\n", 3));
    let duplicates = [one, other]
        .iter()
        .filter(|body| Server::data(body)["appendDeploymentLog"]["duplicate"] == true)
        .count();
    assert_eq!(duplicates, 1);
    let read = "query($id: ID!, $after: Int, $tail: Int!) { deployment(id: $id) { logs(after: $after, tail: $tail) } }";
    for (after, tail, expected) in [
        (0, 100, json!(["a", "b", "c", "d"])),
        (1, 100, json!(["b", "c", "d"])),
        (2, 1, json!(["c"])),
        (4, 100, json!([])),
    ] {
        let body = server
            .graphql(read, json!({ "id": id, "after": after, "tail": tail }))
            .await;
        assert_eq!(
            Server::data(&body)["deployment"]["logs"],
            expected,
            "after {after}"
        );
    }
    // A subscriber that has read 2 lines gets the stored rest, then each append, numbered.
    let mut socket = ws_connect(&server, &server.admin_token).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    socket
        .send(Message::Text(
            json!({ "id": "1", "type": "subscribe", "payload": {
                "query": "subscription($id: ID!) { deploymentLogLines(deploymentId: $id, after: 2) { firstLine lines } }",
                "variables": { "id": id },
            }})
            .to_string()
            .into(),
        ))
        .await
        .expect("send");
    let stored = ws_next(&mut socket).await.expect("the stored lines");
    assert_eq!(
        stored["payload"]["data"]["deploymentLogLines"],
        json!({ "firstLine": 3, "lines": ["c", "d"] }),
        "{stored}"
    );
    Server::data(&send("e\nf\n", 4).await);
    let live = ws_next(&mut socket).await.expect("the appended lines");
    assert_eq!(
        live["payload"]["data"]["deploymentLogLines"],
        json!({ "firstLine": 5, "lines": ["e", "f"] }),
        "{live}"
    );
    drop(socket);
    // The runner goes silent; the deployment is claimed again and numbering continues.
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let (_, body) = server
            .graphql_as(&runner, claim_with_sequence, json!({}))
            .await;
        let claimed = Server::data(&body)["claimDeployment"].clone();
        if !claimed["deployment"].is_null() {
            break claimed;
        }
        assert!(
            Instant::now() < deadline,
            "the lease lapsed and it was requeued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again["job"]["attempt"], 2);
    assert_eq!(again["job"]["logSequence"], 4);
    assert_eq!(
        server
            .metric("keystone_deployment_leases_lapsed_total{outcome=\"requeued\"}")
            .await,
        1.0,
        "the lapse is counted"
    );
    Server::data(&send("g\n", 5).await);
    let body = server
        .graphql(read, json!({ "id": id, "after": 0, "tail": 100 }))
        .await;
    assert_eq!(
        Server::data(&body)["deployment"]["logs"],
        json!(["a", "b", "c", "d", "e", "f", "g"]),
        "no gap, no duplicate"
    );
    server.stop_ok().await;
}
