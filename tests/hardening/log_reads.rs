//! Every field's cost is counted before it runs: `Deployment.logs(after:)` seeks through the
//! log's line index instead of reading the file from its start, and each `logs` field counts
//! towards the query's complexity for the bytes it may read.

use serde_json::json;

use crate::support::protocol::{append, claim, deploy};
use crate::support::{Backend, Server, TestDb, global_id, insert_port_apps, only_error};

async fn log_reads_cost_what_they_may_read(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 1).await;
    let body = server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": global_id("App", 1) }),
        )
        .await;
    Server::data(&body);
    let runner = server.create_token("builder", "RUNNER").await;
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation { claimDeployment { deployment { databaseId logsPath } } }",
            json!({}),
        )
        .await;
    let claimed = &Server::data(&body)["claimDeployment"]["deployment"];
    let id = global_id("Deployment", claimed["databaseId"].as_i64().expect("id"));
    let path = claimed["logsPath"].as_str().expect("path").to_owned();
    // A 10 MB log of 100,000 lines, as a runner's long build leaves it.
    let log: String = (0..100_000)
        .map(|i| format!("line {i:>6} {}\n", "x".repeat(87)))
        .collect();
    std::fs::create_dir_all(std::path::Path::new(&path).parent().expect("dir")).expect("dir");
    std::fs::write(&path, log).expect("write the log");
    let viewer = server.create_token("reader", "VIEWER").await;

    // The first read indexes the log (once).
    let (_, body) = server
        .graphql_as(
            &viewer,
            "query($id: ID!) { deployment(id: $id) { logs(after: 99000, tail: 1) } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["deployment"]["logs"][0]
            .as_str()
            .map(|l| &l[..11]),
        Some("line  99000")
    );

    // 30 reads deep into the log cost a small multiple of a plain query, not 30 reads of
    // the whole file.
    let plain = {
        let before = server.cpu_time();
        for _ in 0..5 {
            server
                .graphql_as(&viewer, "{ viewer { name } }", json!({}))
                .await;
        }
        (server.cpu_time() - before) / 5
    };
    let deep = format!(
        "query($id: ID!) {{ deployment(id: $id) {{ {} }} }}",
        (0..30)
            .map(|i| format!("a{i}: logs(after: {}, tail: 1)", 98_000 + i * 60))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let before = server.cpu_time();
    let (_, body) = server.graphql_as(&viewer, &deep, json!({ "id": id })).await;
    let spent = server.cpu_time() - before;
    let data = &Server::data(&body)["deployment"];
    for i in 0..30 {
        let expected = format!("line {:>6}", 98_000 + i * 60);
        assert_eq!(
            data[format!("a{i}")][0].as_str().map(|l| &l[..11]),
            Some(expected.as_str())
        );
    }
    assert!(
        spent < plain * 200,
        "30 deep reads took {spent:?} of CPU; a plain query {plain:?}"
    );

    // Each `logs` field counts 1,024 towards complexity: a page of 100 deployments with ten
    // of them is over the limit before anything is read.
    let (_, body) = server
        .graphql_as(
            &viewer,
            &format!(
                "{{ deployments(first: 100) {{ nodes {{ {} }} }} }}",
                (0..10)
                    .map(|i| format!("a{i}: logs(after: 1, tail: 1)"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            json!({}),
        )
        .await;
    assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

crate::on_both_backends!(log_reads_cost_what_they_may_read, log_volume_is_bounded,);

/// Each deployment's log is capped (a marker, then nothing), appends leave no audit rows,
/// and the log file goes with its app.
async fn log_volume_is_bounded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--max-log-bytes", "1000"])
        .await
        .expect("server starts");
    insert_port_apps(&db, 1).await;
    deploy(&server, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let (id, path) = claim(&server, &runner).await;
    let chunk = format!("{}\n", "y".repeat(599));
    let first = append(&server, &runner, id, &chunk).await;
    assert_eq!(
        Server::data(&first)["appendDeploymentLog"]["logFull"],
        false
    );
    let second = append(&server, &runner, id, &chunk).await;
    assert_eq!(
        Server::data(&second)["appendDeploymentLog"]["logFull"],
        true
    );
    let third = append(&server, &runner, id, &chunk).await;
    assert_eq!(
        Server::data(&third)["appendDeploymentLog"],
        json!({ "bytesWritten": 0, "logFull": true })
    );
    use std::os::unix::fs::PermissionsExt;
    let logs_dir = std::path::Path::new(&path).parent().expect("dir");
    let dir_mode = std::fs::metadata(logs_dir)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "the logs directory is private");
    let size = std::fs::metadata(&path).expect("the log").len();
    assert!(size < 1200, "capped at 1000 bytes plus the marker: {size}");
    let text = std::fs::read_to_string(&path).expect("the log");
    assert_eq!(text.matches("reached its size limit").count(), 1, "{text}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE operation = 'appendDeploymentLog'")
            .await,
        0,
        "successful appends are not audited"
    );
    // Refusals are: another runner writing here.
    let intruder = server.create_token("intruder", "RUNNER").await;
    let refused = append(&server, &intruder, id, "x\n").await;
    assert_eq!(only_error(&refused).0, "CONFLICT");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE operation = 'appendDeploymentLog'")
            .await,
        1
    );
    // Deleting the app deletes the log.
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!) { reportDeployment(input: { deploymentId: $id, status: FAILED }) { deployment { status } } }",
            json!({ "id": global_id("Deployment", id) }),
        )
        .await;
    Server::data(&body);
    server.delete_app(&global_id("App", 1)).await;
    assert!(!std::path::Path::new(&path).exists(), "{path} was deleted");
    server.stop_ok().await;
}
