//! Roles: every root field checked for every role over HTTP and WebSocket (the matrix fails
//! when a field is missing from it), and a role's reach below the root fields, through
//! fragments, interfaces and `@include`, refused whole.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::protocol::{append, claim, deploy};
use crate::support::{
    Backend, Server, TestDb, codes, global_id, http_as, insert_port_apps, only_error, ws_connect,
    ws_next,
};

crate::on_both_backends!(
    a_role_reaches_only_its_fields,
    every_operation_checks_the_role,
    roles_hold_through_nested_fields,
);

/// What a root field needs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    /// Any valid token.
    Token,
    Read,
    Write,
    Admin,
    /// The runner protocol.
    Run,
}

const MISSING_REPOSITORY: &str = "UmVwb3NpdG9yeTo5OTk5OTk"; // Repository:999999

const MISSING_APP: &str = "QXBwOjk5OTk5OQ"; // App:999999

const MISSING_DEPLOYMENT: &str = "RGVwbG95bWVudDo5OTk5OTk"; // Deployment:999999

const MISSING_TOKEN: &str = "QXBpVG9rZW46OTk5OTk5"; // ApiToken:999999

/// Every query and mutation root field, with a document that calls it. Calls that are
/// allowed act on objects that do not exist (or create fresh ones), so order does not matter.
fn http_operations(caller: &str) -> Vec<(&'static str, Needs, String)> {
    vec![
        (
            "node",
            Needs::Read,
            format!(r#"{{ node(id: "{MISSING_REPOSITORY}") {{ id }} }}"#),
        ),
        (
            "nodes",
            Needs::Read,
            format!(r#"{{ nodes(ids: ["{MISSING_APP}"]) {{ id }} }}"#),
        ),
        (
            "repositories",
            Needs::Read,
            "{ repositories { totalCount } }".into(),
        ),
        (
            "repository",
            Needs::Read,
            format!(r#"{{ repository(id: "{MISSING_REPOSITORY}") {{ id }} }}"#),
        ),
        ("apps", Needs::Read, "{ apps { totalCount } }".into()),
        (
            "app",
            Needs::Read,
            r#"{ app(name: "no-such-app") { id } }"#.into(),
        ),
        (
            "deployments",
            Needs::Read,
            "{ deployments { totalCount } }".into(),
        ),
        (
            "deployment",
            Needs::Read,
            format!(r#"{{ deployment(id: "{MISSING_DEPLOYMENT}") {{ id }} }}"#),
        ),
        ("viewer", Needs::Token, "{ viewer { name role } }".into()),
        (
            "apiTokens",
            Needs::Admin,
            "{ apiTokens { totalCount } }".into(),
        ),
        (
            "auditEvents",
            Needs::Admin,
            "{ auditEvents { totalCount } }".into(),
        ),
        (
            "createRepository",
            Needs::Write,
            format!(
                r#"mutation {{ createRepository(input: {{ name: "by-{caller}", gitUrl: "https://e.com/{caller}.git" }}) {{ repository {{ id }} }} }}"#
            ),
        ),
        (
            "updateRepository",
            Needs::Write,
            format!(
                r#"mutation {{ updateRepository(input: {{ id: "{MISSING_REPOSITORY}", name: "x" }}) {{ repository {{ id }} }} }}"#
            ),
        ),
        (
            "deleteRepository",
            Needs::Write,
            format!(
                r#"mutation {{ deleteRepository(input: {{ id: "{MISSING_REPOSITORY}" }}) {{ deletedRepositoryId }} }}"#
            ),
        ),
        (
            "createApp",
            Needs::Write,
            format!(
                r#"mutation {{ createApp(input: {{ name: "app-{caller}", repositoryId: "{MISSING_REPOSITORY}" }}) {{ app {{ id }} }} }}"#
            ),
        ),
        (
            "updateApp",
            Needs::Write,
            format!(
                r#"mutation {{ updateApp(input: {{ id: "{MISSING_APP}", name: "x" }}) {{ app {{ id }} }} }}"#
            ),
        ),
        (
            "deleteApp",
            Needs::Write,
            format!(
                r#"mutation {{ deleteApp(input: {{ id: "{MISSING_APP}" }}) {{ deletedAppId }} }}"#
            ),
        ),
        (
            "deployApp",
            Needs::Write,
            format!(
                r#"mutation {{ deployApp(input: {{ appId: "{MISSING_APP}" }}) {{ deployment {{ id }} }} }}"#
            ),
        ),
        (
            "rollbackApp",
            Needs::Write,
            format!(
                r#"mutation {{ rollbackApp(input: {{ appId: "{MISSING_APP}", toDeploymentId: "{MISSING_DEPLOYMENT}" }}) {{ deployment {{ id }} }} }}"#
            ),
        ),
        (
            "setAppEnv",
            Needs::Admin,
            format!(
                r#"mutation {{ setAppEnv(input: {{ appId: "{MISSING_APP}", name: "X", value: "y" }}) {{ appId }} }}"#
            ),
        ),
        (
            "unsetAppEnv",
            Needs::Admin,
            format!(
                r#"mutation {{ unsetAppEnv(input: {{ appId: "{MISSING_APP}", name: "X" }}) {{ removed }} }}"#
            ),
        ),
        (
            "changeAppEnv",
            Needs::Admin,
            format!(
                r#"mutation {{ changeAppEnv(input: {{ appId: "{MISSING_APP}", set: [{{ name: "X", value: "y" }}] }}) {{ appId }} }}"#
            ),
        ),
        (
            "rotateAppWebhook",
            Needs::Admin,
            format!(
                r#"mutation {{ rotateAppWebhook(input: {{ appId: "{MISSING_APP}" }}) {{ path }} }}"#
            ),
        ),
        (
            "runnerApps",
            Needs::Run,
            "{ runnerApps { name status } }".into(),
        ),
        (
            "cancelDeployment",
            Needs::Write,
            format!(
                r#"mutation {{ cancelDeployment(input: {{ id: "{MISSING_DEPLOYMENT}" }}) {{ cancelled }} }}"#
            ),
        ),
        (
            "claimDeployment",
            Needs::Run,
            "mutation { claimDeployment { deployment { id } job { appName } } }".into(),
        ),
        (
            "heartbeatDeployment",
            Needs::Run,
            format!(
                r#"mutation {{ heartbeatDeployment(input: {{ deploymentId: "{MISSING_DEPLOYMENT}" }}) {{ cancelRequested }} }}"#
            ),
        ),
        (
            "reportDeployment",
            Needs::Run,
            format!(
                r#"mutation {{ reportDeployment(input: {{ deploymentId: "{MISSING_DEPLOYMENT}", status: SUCCESS }}) {{ app {{ id }} }} }}"#
            ),
        ),
        (
            "appendDeploymentLog",
            Needs::Run,
            format!(
                r#"mutation {{ appendDeploymentLog(input: {{ deploymentId: "{MISSING_DEPLOYMENT}", chunk: "x\n" }}) {{ bytesWritten }} }}"#
            ),
        ),
        (
            "stopApp",
            Needs::Write,
            format!(
                r#"mutation {{ stopApp(input: {{ id: "{MISSING_APP}" }}) {{ app {{ id }} }} }}"#
            ),
        ),
        (
            "createApiToken",
            Needs::Admin,
            format!(
                r#"mutation {{ createApiToken(input: {{ name: "made-by-{caller}", role: VIEWER }}) {{ secret }} }}"#
            ),
        ),
        (
            "revokeApiToken",
            Needs::Admin,
            format!(
                r#"mutation {{ revokeApiToken(input: {{ id: "{MISSING_TOKEN}" }}) {{ token {{ id }} }} }}"#
            ),
        ),
    ]
}

fn allowed(role: &str, needs: Needs) -> bool {
    match role {
        "admin" => true,
        "viewer" => matches!(needs, Needs::Token | Needs::Read),
        "runner" => matches!(needs, Needs::Token | Needs::Run),
        _ => false,
    }
}

/// The root fields the schema has, by operation type (from introspection, as admin).
async fn root_fields(server: &Server) -> Vec<String> {
    let body = server
        .graphql(
            "{ __schema { queryType { fields { name } } mutationType { fields { name } } subscriptionType { fields { name } } } }",
            json!({}),
        )
        .await;
    let schema = &Server::data(&body)["__schema"];
    let mut names: Vec<String> = ["queryType", "mutationType", "subscriptionType"]
        .iter()
        .flat_map(|t| schema[t]["fields"].as_array().cloned().unwrap_or_default())
        .map(|f| f["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

/// Every subscription root field: its document (variable `$id`), and the mutation (as
/// admin, variable `$id`) that makes it send a first event, whose `status` (or value) is
/// one of `expected`. The deploy supersedes a deployment queued before, so the first
/// deployment event may be that one's cancellation.
const SUBSCRIPTIONS: [(&str, &str, &str, &str); 5] = [
    (
        "runnerSignals",
        "subscription { runnerSignals { reason } }",
        "query { viewer { name } }",
        "SUBSCRIBED",
    ),
    (
        "deploymentUpdated",
        "subscription($id: ID) { deploymentUpdated(appId: $id) { status } }",
        "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
        "QUEUED|CANCELLED",
    ),
    (
        "appUpdated",
        "subscription($id: ID) { appUpdated(id: $id) { status } }",
        "mutation($id: ID!) { updateApp(input: { id: $id, accessMode: PORT }) { app { id } } }",
        "DRAFT|DEPLOYING",
    ),
    (
        "deploymentLog",
        "subscription($id: ID!) { deploymentLog(deploymentId: $id) }",
        "mutation($id: ID!) { appendDeploymentLog(input: { deploymentId: $id, chunk: \"step 1\\n\" }) { bytesWritten } }",
        "step 1\n",
    ),
    (
        "deploymentLogLines",
        "subscription($id: ID!) { deploymentLogLines(deploymentId: $id) { firstLine lines } }",
        "mutation($id: ID!) { appendDeploymentLog(input: { deploymentId: $id, chunk: \"step 1\\n\" }) { bytesWritten } }",
        "step 1",
    ),
];

/// Subscribes with `document` and `token`; once the server has the subscription, an admin
/// runs `trigger`. Both get `{ "id": id }`. Returns the first subscription message, or the
/// close reason.
async fn subscription_as(
    server: &Server,
    token: &str,
    document: &str,
    trigger: &str,
    id: &str,
) -> Result<Value, String> {
    let mut socket = ws_connect(server, token).await;
    let ack = ws_next(&mut socket).await?;
    assert_eq!(ack["type"], "connection_ack");
    socket
        .send(Message::Text(
            json!({ "id": "1", "type": "subscribe", "payload": {
                "query": document,
                "variables": { "id": id },
            }})
            .to_string()
            .into(),
        ))
        .await
        .expect("send");
    // The server registers the subscription before it reads the next message: a ping
    // round trip proves it is in place before the trigger runs.
    socket
        .send(Message::Text(json!({ "type": "ping" }).to_string().into()))
        .await
        .expect("send");
    let mut first = ws_next(&mut socket).await?;
    if first["type"] == "pong" {
        // May be refused (a deploy while a runner holds one of the app's deployments); the
        // subscriptions that need its event run before that can happen.
        server.graphql(trigger, json!({ "id": id })).await;
        first = ws_next(&mut socket).await?;
    }
    socket.close(None).await.ok();
    Ok(first)
}

/// The errors of a refused WebSocket operation: an `error` message's payload, or a `next`
/// payload's `errors` (request errors arrive either way, by protocol).
fn refusal_errors(message: &Value) -> &Value {
    if message["type"] == "error" {
        &message["payload"]
    } else {
        &message["payload"]["errors"]
    }
}

/// Below the root fields, a role reaches only its types and fields, at any depth and through
/// fragments, over HTTP and WebSocket: a document that asks for more is refused whole
/// (`FORBIDDEN`, `extensions.field` naming the field), and one that leaves it out by
/// `@include` runs.
async fn a_role_reaches_only_its_fields(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("reach", "web").await;
    let viewer = server.create_token("viewer", "VIEWER").await;
    let refused = |body: &Value| {
        assert!(body.get("data").is_none(), "{body}");
        assert_eq!(codes(body), ["FORBIDDEN"], "{body}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], "App.runner",
            "{body}"
        );
        assert!(
            body["errors"][0]["locations"][0]["line"].is_number(),
            "{body}"
        );
    };
    for query in [
        "{ apps(first: 1) { nodes { name runner } } }",
        "query($id: ID!) { node(id: $id) { id ... on App { runner } } }",
        "query($id: ID!) { nodes(ids: [$id]) { ...Placed } } fragment Placed on App { runner }",
        "{ repositories { nodes { apps { nodes { ... { runner } } } } } }",
    ] {
        let (status, body) = server
            .graphql_as(&viewer, query, json!({ "id": app }))
            .await;
        assert_eq!(status, 200, "{query}: {body}");
        refused(&body);
    }
    // Under the GraphQL media type, a refused document is a 403.
    let response = http_as(&viewer)
        .post(server.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": "{ apps { nodes { runner } } }" }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    refused(&response.json().await.expect("json"));
    // Left out, it is not asked for; the admin reads it.
    let placed = "query($id: ID!, $admin: Boolean!) { node(id: $id) { ... on App { name runner @include(if: $admin) } } }";
    let (_, body) = server
        .graphql_as(&viewer, placed, json!({ "id": app, "admin": false }))
        .await;
    assert_eq!(Server::data(&body)["node"], json!({ "name": "web" }));
    let body = server
        .graphql(placed, json!({ "id": app, "admin": true }))
        .await;
    assert_eq!(
        Server::data(&body)["node"],
        json!({ "name": "web", "runner": null })
    );
    // A subscription asking for it is refused before it starts.
    let refusal = subscription_as(
        &server,
        &viewer,
        "subscription($id: ID!) { appUpdated(id: $id) { name runner } }",
        "query($id: ID!) { node(id: $id) { id } }",
        &app,
    )
    .await
    .expect("an answer");
    assert_eq!(
        refusal_errors(&refusal)[0]["extensions"]["field"],
        "App.runner",
        "{refusal}"
    );
    server.stop_ok().await;
}

/// Role × operation: every query, mutation and subscription is allowed, `FORBIDDEN` or
/// `UNAUTHENTICATED` exactly as the role model says.
async fn every_operation_checks_the_role(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("viewer", "VIEWER").await;
    let runner = server.create_token("runner", "RUNNER").await;
    // A deployment held by the admin, whose log the `deploymentLog` subscriptions follow.
    let logged_app = server.create_app("matrix-log", "matrix-log").await;
    let body = server
        .graphql(
            "mutation($app: ID!) { deployApp(input: { appId: $app }) { deployment { id } } }",
            json!({ "app": logged_app }),
        )
        .await;
    Server::data(&body);
    let body = server
        .graphql(
            "mutation { claimDeployment { deployment { id } } }",
            json!({}),
        )
        .await;
    let logged = Server::data(&body)["claimDeployment"]["deployment"]["id"]
        .as_str()
        .expect("claimed")
        .to_owned();
    let app = server.create_app("matrix", "matrix").await;

    let mut covered: Vec<String> = http_operations("x")
        .into_iter()
        .map(|(name, _, _)| name.to_owned())
        .collect();
    covered.extend(SUBSCRIPTIONS.iter().map(|(name, ..)| name.to_string()));
    covered.sort();
    assert_eq!(
        covered,
        root_fields(&server).await,
        "the matrix must cover every root field"
    );

    let callers = [
        ("admin", server.admin_token.clone()),
        ("viewer", viewer.clone()),
        ("runner", runner.clone()),
        ("nobody", String::new()),
    ];
    for (role, token) in &callers {
        for (name, needs, document) in http_operations(role) {
            let (status, body) = server.graphql_as(token, &document, json!({})).await;
            let codes = codes(&body);
            if role == &"nobody" {
                assert_eq!(status, 401, "{name} without a token: {body}");
                assert_eq!(codes, ["UNAUTHENTICATED"], "{name}: {body}");
                assert!(body.get("data").is_none(), "{name}: {body}");
            } else if allowed(role, needs) {
                assert_eq!(status, 200, "{role} {name}: {body}");
                assert!(
                    !codes
                        .iter()
                        .any(|c| c == "FORBIDDEN" || c == "UNAUTHENTICATED"),
                    "{role} may call {name}: {body}"
                );
            } else {
                assert_eq!(status, 200, "{role} {name}: {body}");
                assert_eq!(codes, ["FORBIDDEN"], "{role} may not call {name}: {body}");
                let message = body["errors"][0]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(role),
                    "the message names the role: {message}"
                );
            }
        }

        for (name, document, trigger, expected) in SUBSCRIPTIONS {
            let id = if name.starts_with("deploymentLog") {
                &logged
            } else {
                &app
            };
            let subscription = subscription_as(&server, token, document, trigger, id).await;
            // `runnerSignals` is the runner protocol's: admins and runners, not viewers.
            let allowed = match name {
                "runnerSignals" => ["admin", "runner"],
                _ => ["admin", "viewer"],
            };
            match (*role, subscription) {
                ("nobody", Err(reason)) => {
                    assert!(reason.contains("UNAUTHENTICATED"), "{reason}")
                }
                (role, Ok(message)) if allowed.contains(&role) => {
                    assert_eq!(message["type"], "next", "{role} {name}: {message}");
                    let data = &message["payload"]["data"][name];
                    let value = data["status"]
                        .as_str()
                        .or(data["reason"].as_str())
                        .or(data["lines"][0].as_str())
                        .or(data.as_str())
                        .unwrap_or_default();
                    assert!(
                        expected.split('|').any(|s| s == value),
                        "{role} {name}: {message}"
                    );
                }
                (_, Ok(message)) => {
                    assert_eq!(
                        refusal_errors(&message)[0]["extensions"]["code"],
                        "FORBIDDEN",
                        "{message}"
                    );
                }
                (role, other) => panic!("{name} as {role}: {other:?}"),
            }
        }
    }
    // Only the admin's calls changed anything.
    assert_eq!(
        db.rows("SELECT name FROM api_repository ORDER BY name")
            .await,
        ["by-admin", "matrix", "matrix-log"]
    );
    assert_eq!(
        db.rows("SELECT name FROM api_token WHERE name LIKE 'made-by-%'")
            .await,
        ["made-by-admin"]
    );
    server.stop_ok().await;
}

/// A runner token reaches its claimed deployment and its job, nothing else: a document that
/// selects any object field of a runner payload that leads elsewhere is refused whole with
/// `FORBIDDEN` (its mutation does not happen), and no other deployment's log line comes back.
async fn roles_hold_through_nested_fields(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 2).await;
    // Another runner's deployment with a secret in its log.
    deploy(&server, 1).await;
    let other = server.create_token("other-runner", "RUNNER").await;
    let (other_id, _) = claim(&server, &other).await;
    Server::data(&append(&server, &other, other_id, "DB_PASSWORD=hunter2\n").await);
    deploy(&server, 2).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let queued = "SELECT COUNT(*) FROM api_deployment WHERE app_id = 2 AND status = 'queued'";

    // Refused before it runs: nothing is claimed.
    let walk = "mutation { claimDeployment { deployment { databaseId status logs app { repository { apps { nodes { deployments { nodes { logs } } } } } } } job { appName repositoryUrl } } }";
    let (status, body) = server.graphql_as(&runner, walk, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("hunter2"), "{body}");
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(
        only_error(&body),
        ("FORBIDDEN".to_owned(), Some("Deployment.app".to_owned())),
        "{body}"
    );
    assert_eq!(db.count(queued).await, 1, "nothing was claimed");
    // The same through a fragment, and through a fragment on an interface.
    for query in [
        "mutation { claimDeployment { deployment { ...Leak } } } fragment Leak on Deployment { app { name } }",
        "mutation { claimDeployment { deployment { ... on Node { ... on Deployment { app { name } } } } } }",
    ] {
        let (_, body) = server.graphql_as(&runner, query, json!({})).await;
        assert_eq!(only_error(&body).0, "FORBIDDEN", "{query}: {body}");
    }
    // Left out by `@skip`, it is not asked for.
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation { claimDeployment { deployment { databaseId app @skip(if: true) { name } } } }",
            json!({}),
        )
        .await;
    let id = Server::data(&body)["claimDeployment"]["deployment"]["databaseId"]
        .as_i64()
        .unwrap_or_else(|| panic!("claimed: {body}"));
    assert_eq!(db.count(queued).await, 0);
    let deployment = global_id("Deployment", id);
    // Every other way out of a runner payload.
    for (what, query) in [
        (
            "heartbeat → app",
            "mutation($id: ID!) { heartbeatDeployment(input: { deploymentId: $id }) { deployment { app { name } } } }",
        ),
        (
            "report → app → repository",
            "mutation($id: ID!) { reportDeployment(input: { deploymentId: $id, status: FAILED }) { deployment { status } app { name status repository { name } deployments { nodes { logs } } latestDeployment { logs } } } }",
        ),
    ] {
        let (_, body) = server
            .graphql_as(&runner, query, json!({ "id": deployment }))
            .await;
        assert_eq!(only_error(&body).0, "FORBIDDEN", "{what}: {body}");
        assert!(!body.to_string().contains("hunter2"), "{what}: {body}");
    }
    // What a runner needs still answers (the refused report did not happen).
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!) { heartbeatDeployment(input: { deploymentId: $id }) { cancelRequested deployment { status logs } } }",
            json!({ "id": deployment }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["heartbeatDeployment"]["deployment"]["status"],
        "RUNNING"
    );
    server.stop_ok().await;
}
