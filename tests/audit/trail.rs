//! The trail as admins read it: a scenario of calls by several tokens, with refusals and
//! failures, each recorded newest first with who, what, which object and the outcome;
//! secrets and runner text kept out; the table append-only.

use serde_json::{Value, json};

use crate::support::protocol::{claim, deploy};
use crate::support::{Backend, Server, TestDb, codes, global_id, insert_port_apps, only_error};

crate::on_both_backends!(
    audit_trail_records_every_mutation,
    the_audit_trail_is_complete_and_safe,
);

/// A scenario of mutations by several tokens, with refusals and failures: each one is in
/// the audit trail, newest first, with who, what, which object and the outcome; secrets
/// are redacted; the table refuses changes.
async fn audit_trail_records_every_mutation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("auditor", "VIEWER").await;
    let app = server.create_app("audited", "audited").await;
    let deployed = server
        .graphql(
            "mutation($app: ID!) { deployApp(input: { appId: $app }) { deployment { id } } }",
            json!({ "app": app }),
        )
        .await;
    Server::data(&deployed);
    let (_, refused) = server
        .graphql_as(
            &viewer,
            "mutation($app: ID!) { deleteApp(input: { id: $app }) { deletedAppId } }",
            json!({ "app": app }),
        )
        .await;
    assert_eq!(codes(&refused), ["FORBIDDEN"]);
    let invalid = server
        .graphql(
            r#"mutation { createRepository(input: { name: "leak", gitUrl: "https://me:hunter2@e.com/x.git" }) { repository { id } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(codes(&invalid), ["BAD_USER_INPUT"]);
    let deleted = server
        .graphql(
            "mutation($app: ID!) { deleteApp(input: { id: $app }) { deletedAppId } }",
            json!({ "app": app }),
        )
        .await;
    Server::data(&deleted);
    // Queries are not audited.
    server
        .graphql("{ repositories { totalCount } }", json!({}))
        .await;

    let body = server
        .graphql(
            "{ auditEvents(first: 20) { totalCount nodes { tokenName tokenRole operation arguments objectId outcome errorCode errorMessage occurredAt } } }",
            json!({}),
        )
        .await;
    let events = &Server::data(&body)["auditEvents"];
    let nodes = events["nodes"].as_array().expect("nodes");
    let summary: Vec<(String, String, String, String)> = nodes
        .iter()
        .map(|e| {
            (
                e["tokenName"].as_str().unwrap_or_default().to_owned(),
                e["operation"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
                e["errorCode"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("admin", "deleteApp", "SUCCESS", "-"),
        ("admin", "createRepository", "ERROR", "BAD_USER_INPUT"),
        ("auditor", "deleteApp", "ERROR", "FORBIDDEN"),
        ("admin", "deployApp", "SUCCESS", "-"),
        ("admin", "createApp", "SUCCESS", "-"),
        ("admin", "createRepository", "SUCCESS", "-"),
        ("admin", "createApiToken", "SUCCESS", "-"),
        ("first start", "createApiToken", "SUCCESS", "-"),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(summary, expected, "{events:#}");
    assert_eq!(events["totalCount"], 8);
    // Who, on which object, with which arguments.
    assert_eq!(nodes[2]["tokenRole"], "VIEWER");
    assert_eq!(
        nodes[2]["objectId"],
        app.as_str(),
        "a refused call names its target"
    );
    assert_eq!(nodes[0]["objectId"], app.as_str());
    assert_eq!(nodes[3]["objectId"], app.as_str());
    assert!(nodes[4]["objectId"].as_str().is_some_and(|id| id == app));
    let leaked = nodes[1]["arguments"].as_str().expect("arguments");
    assert!(
        !leaked.contains("hunter2") && leaked.contains("e.com"),
        "{leaked}"
    );
    assert!(
        nodes[1]["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("gitUrl")
    );
    let token_args: Value =
        serde_json::from_str(nodes[6]["arguments"].as_str().expect("arguments")).expect("JSON");
    assert_eq!(token_args["input"]["name"], "auditor");
    // The secret returned by createApiToken is nowhere in the trail.
    let all = db
        .rows("SELECT arguments, COALESCE(error_message, '') FROM api_audit_event")
        .await
        .join("\n");
    assert!(!all.contains(&viewer));

    // Filters.
    let body = server
        .graphql(
            r#"{ errors: auditEvents(filter: { outcome: ERROR }) { totalCount }
                 deletes: auditEvents(filter: { operation: "deleteApp", tokenName: "admin" }) { totalCount }
                 aboutApp: auditEvents(filter: { objectId: "APP" }) { totalCount } }"#
                .replace("APP", &app)
                .as_str(),
            json!({}),
        )
        .await;
    let data = Server::data(&body);
    assert_eq!(data["errors"]["totalCount"], 2);
    assert_eq!(data["deletes"]["totalCount"], 1);
    assert_eq!(data["aboutApp"]["totalCount"], 4);
    // Viewers may not read the trail.
    let (_, body) = server
        .graphql_as(&viewer, "{ auditEvents { totalCount } }", json!({}))
        .await;
    assert_eq!(codes(&body), ["FORBIDDEN"]);

    // Append-only, whatever the client.
    let conn = db.connect().await;
    use sea_orm::ConnectionTrait;
    for statement in [
        "UPDATE api_audit_event SET outcome = 'success'",
        "DELETE FROM api_audit_event",
    ] {
        let result = conn.execute_unprepared(statement).await;
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.to_string().contains("append-only")),
            "{statement}: {result:?}"
        );
    }
    conn.close().await.ok();
    assert_eq!(db.count("SELECT COUNT(*) FROM api_audit_event").await, 8);
    server.stop_ok().await;
}

/// Refused calls are recorded — failed authentication, the rate limit, a 300-character id —
/// and runner text (log chunks, error summaries) never is.
async fn the_audit_trail_is_complete_and_safe(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(
        &db,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "400"],
    )
    .await
    .expect("server starts");
    // Failed authentication.
    let (status, _) = server
        .graphql_as(
            "kst_not-a-real-token-at-all-0000000000000000000",
            "{ viewer { name } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .graphql_as("", "{ viewer { name } }", json!({}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        db.rows("SELECT token_name || '|' || token_role || '|' || operation || '|' || error_code FROM api_audit_event WHERE outcome = 'error' ORDER BY id")
            .await,
        [
            "(anonymous)|anonymous|(authentication)|UNAUTHENTICATED",
            "(anonymous)|anonymous|(authentication)|UNAUTHENTICATED"
        ]
    );
    // A refused mutation with a 300-character id keeps its row (the id cut to the column).
    let long = "A".repeat(300);
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
            json!({ "id": long }),
        )
        .await;
    assert_eq!(only_error(&body).0, "BAD_USER_INPUT", "{body}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE operation = 'deleteApp' AND LENGTH(object_id) <= 200")
            .await,
        1
    );
    // A runner's error summary is not copied into the trail.
    insert_port_apps(&db, 1).await;
    deploy(&server, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let (id, _) = claim(&server, &runner).await;
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!, $e: String!) { reportDeployment(input: { deploymentId: $id, status: FAILED, errorSummary: $e }) { deployment { status } } }",
            json!({ "id": global_id("Deployment", id), "e": "build failed: AWS_SECRET=wJalrXUtnFEMI" }),
        )
        .await;
    Server::data(&body);
    let recorded = db
        .rows("SELECT arguments FROM api_audit_event WHERE operation = 'reportDeployment'")
        .await;
    assert_eq!(recorded.len(), 1);
    assert!(!recorded[0].contains("wJalrXUtnFEMI"), "{recorded:?}");
    // Over the rate limit: refused with 429, and recorded.
    let viewer = server.create_token("eager", "VIEWER").await;
    let mut limited = 0;
    for _ in 0..450 {
        let (status, _) = server
            .graphql_as(&viewer, "{ viewer { name } }", json!({}))
            .await;
        if status == 429 {
            limited += 1;
            break;
        }
    }
    assert_eq!(limited, 1, "the rate limit was reached");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_audit_event WHERE token_name = 'eager' AND operation = '(rate limit)' AND error_code = 'RATE_LIMITED'")
            .await,
        1
    );
    // Admins read anonymous rows with a null role.
    let body = server
        .graphql(
            "{ auditEvents(filter: { operation: \"(authentication)\" }) { nodes { tokenName tokenRole outcome } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["auditEvents"]["nodes"][0],
        json!({ "tokenName": "(anonymous)", "tokenRole": null, "outcome": "ERROR" })
    );
    server.stop_ok().await;
}
