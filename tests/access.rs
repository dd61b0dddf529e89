//! Access control and hardening: tokens and roles over HTTP and WebSocket, the token
//! commands, the audit trail, hostile inputs (nothing written), rate limits, production
//! switches and error hygiene.

use futures_util::SinkExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

use crate::on_both_backends;
use crate::support::{
    Backend, Server, TestDb, base64_url, global_id, http, http_as, keystone, ws_connect, ws_next,
};

on_both_backends!(
    every_operation_checks_the_role,
    a_role_reaches_only_its_fields,
    revoked_expired_and_malformed_tokens_are_rejected,
    token_commands_and_first_start,
    audit_trail_records_every_mutation,
    hostile_inputs_are_refused_and_write_nothing,
    internal_errors_are_generic_and_logged,
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

fn codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
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

async fn revoked_expired_and_malformed_tokens_are_rejected(backend: Backend) {
    let db = TestDb::new(backend).await;
    // Default token cache: revocation through this server still takes effect at once.
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("soon-revoked", "VIEWER").await;
    let query = "{ viewer { name role } }";
    let (status, body) = server.graphql_as(&viewer, query, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        Server::data(&body)["viewer"],
        json!({ "name": "soon-revoked", "role": "VIEWER" })
    );

    let id = db
        .rows("SELECT CAST(id AS TEXT) FROM api_token WHERE name = 'soon-revoked'")
        .await
        .remove(0);
    let global = global_id("ApiToken", &id);
    let body = server
        .graphql(
            "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { name revokedAt active } } }",
            json!({ "id": global }),
        )
        .await;
    let revoked = &Server::data(&body)["revokeApiToken"]["token"];
    assert_eq!(revoked["active"], false);
    assert!(revoked["revokedAt"].is_string());
    let (status, body) = server.graphql_as(&viewer, query, json!({})).await;
    assert_eq!(
        (status, codes(&body)),
        (401, vec!["UNAUTHENTICATED".to_owned()]),
        "{body}"
    );
    // Revoking twice is a conflict that says so.
    let body = server
        .graphql(
            "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { id } } }",
            json!({ "id": global }),
        )
        .await;
    assert_eq!(codes(&body), ["CONFLICT"]);

    // Malformed headers and well-formed unknown secrets.
    let unknown = format!("kst_{}", "A".repeat(43));
    for header in [
        "Bearer".to_owned(),
        "Bearer not-a-token".to_owned(),
        format!("Basic {}", base64_url("admin:admin")),
        format!("Token {}", server.admin_token),
        format!("Bearer {unknown}"),
        format!("Bearer {}x", server.admin_token),
    ] {
        let response = http()
            .post(server.url("/graphql"))
            .header("authorization", &header)
            .json(&json!({ "query": query }))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 401, "{header}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"keystone\""
        );
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"], "{header}: {body}");
    }

    // An expiry in the past is refused at creation; a token that expires stops working.
    let body = server
        .graphql(
            r#"mutation { createApiToken(input: { name: "late", role: VIEWER, expiresAt: "2020-01-01T00:00:00Z" }) { secret } }"#,
            json!({}),
        )
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    assert_eq!(body["errors"][0]["extensions"]["field"], "expiresAt");
    server.stop_ok().await;

    let server = Server::start(&db, &["--token-cache-ms", "0"])
        .await
        .expect("server starts");
    let expiring = server.create_token("expiring", "VIEWER").await;
    let (status, _) = server.graphql_as(&expiring, query, json!({})).await;
    assert_eq!(status, 200);
    db.exec("UPDATE api_token SET expires_at = created_at WHERE name = 'expiring'")
        .await;
    let (status, body) = server.graphql_as(&expiring, query, json!({})).await;
    assert_eq!(status, 401);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );
    server.stop_ok().await;
}

/// The first start creates one admin token (owner-only file); `keystone token` creates,
/// lists (without secrets) and revokes; the table holds hashes only.
async fn token_commands_and_first_start(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--token-cache-ms", "0"])
        .await
        .expect("server starts");
    let file = db.dir().join("keystone-admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the admin token file is readable by its owner only"
        );
    }
    let admin = server.admin_token.clone();
    assert!(admin.starts_with("kst_") && admin.len() == 47, "{admin}");

    let created = keystone(
        &db,
        &["token", "create", "--name", "ci", "--role", "runner"],
    )
    .await;
    created.assert_success();
    let secret = created.stdout.trim().to_owned();
    assert!(secret.starts_with("kst_"), "{}", created.stdout);
    let (status, body) = server
        .graphql_as(&secret, "{ viewer { name role } }", json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(Server::data(&body)["viewer"]["role"], "RUNNER");
    // Use is recorded (in the background, so within a moment); unused tokens stay blank.
    let used = "SELECT name FROM api_token WHERE last_used_at IS NOT NULL ORDER BY name";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.rows(used).await != ["ci"] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            db.rows(used).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A runner may not read repositories.
    let (_, body) = server
        .graphql_as(&secret, "{ repositories { totalCount } }", json!({}))
        .await;
    assert_eq!(codes(&body), ["FORBIDDEN"]);

    let duplicate = keystone(
        &db,
        &["token", "create", "--name", "ci", "--role", "viewer"],
    )
    .await;
    duplicate.assert_failure();
    assert!(
        duplicate.stderr.contains("a token with this name exists"),
        "{}",
        duplicate.stderr
    );
    let bad = keystone(
        &db,
        &["token", "create", "--name", "../etc", "--role", "viewer"],
    )
    .await;
    bad.assert_failure();

    let list = keystone(&db, &["token", "list"]).await;
    list.assert_success();
    for expected in ["admin", "ci", "runner", "active", &secret[..12]] {
        assert!(
            list.stdout.contains(expected),
            "{expected} in:\n{}",
            list.stdout
        );
    }
    assert!(!list.stdout.contains(&secret) && !list.stdout.contains(&admin));

    // Only hashes are stored: no column of any token row holds a secret.
    let rows = db
        .rows("SELECT name, role, secret_hash, secret_prefix, created_by FROM api_token")
        .await
        .join("\n");
    for plain in [&secret, &admin] {
        assert!(
            !rows.contains(plain.as_str()),
            "a secret is stored in clear"
        );
        let hash: String = Sha256::digest(plain.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(rows.contains(&hash), "the SHA-256 of each secret is stored");
    }

    let revoke = keystone(&db, &["token", "revoke", "ci"]).await;
    revoke.assert_success();
    let (status, _) = server
        .graphql_as(&secret, "{ viewer { name } }", json!({}))
        .await;
    assert_eq!(status, 401, "a token revoked by the command is refused");
    let list = keystone(&db, &["token", "list"]).await;
    assert!(list.stdout.contains("revoked"), "{}", list.stdout);
    let (_, log) = server.stop().await;
    assert!(
        !log.contains(&admin),
        "the server log never holds the secret"
    );

    // A second start finds tokens and creates none; the file is left alone.
    let server = Server::start(&db, &[]).await.expect("server starts");
    assert_eq!(server.admin_token, admin);
    assert_eq!(db.count("SELECT COUNT(*) FROM api_token").await, 2);
    let (_, log) = server.stop().await;
    assert!(log.contains("sign in with the token in"), "{log}");
}

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

/// Counts of the rows a hostile request could have written.
async fn written(db: &TestDb) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in ["api_repository", "api_app", "api_deployment", "api_token"] {
        counts.push(db.count(&format!("SELECT COUNT(*) FROM {table}")).await);
    }
    counts
}

/// Hostile inputs are refused with a clear error, and no row is written.
async fn hostile_inputs_are_refused_and_write_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("target", "target").await;
    let before = written(&db).await;

    let create_repository = "mutation($n: String!, $u: String!) { createRepository(input: { name: $n, gitUrl: $u }) { repository { id } } }";
    let ten_megabytes = "a".repeat(10 << 20);
    let cases: Vec<(&str, &str, Value, &str, Option<&str>)> = vec![
        (
            "option injection",
            create_repository,
            json!({ "n": "ok", "u": "--upload-pack=touch /tmp/pwned" }),
            "BAD_USER_INPUT",
            Some("gitUrl"),
        ),
        (
            "ext:: helper",
            create_repository,
            json!({ "n": "ok", "u": "ext::sh -c touch% /tmp/pwned" }),
            "BAD_USER_INPUT",
            Some("gitUrl"),
        ),
        (
            "local file",
            create_repository,
            json!({ "n": "ok", "u": "file:///etc" }),
            "BAD_USER_INPUT",
            Some("gitUrl"),
        ),
        (
            "path traversal name",
            create_repository,
            json!({ "n": "../../etc", "u": "https://e.com/a.git" }),
            "BAD_USER_INPUT",
            Some("name"),
        ),
        (
            "slash in name",
            create_repository,
            json!({ "n": "a/b", "u": "https://e.com/a.git" }),
            "BAD_USER_INPUT",
            Some("name"),
        ),
        (
            "NUL byte",
            create_repository,
            json!({ "n": "a\u{0}b", "u": "https://e.com/a.git" }),
            "BAD_USER_INPUT",
            Some("name"),
        ),
        (
            "app name traversal",
            "mutation($n: String!) { updateApp(input: { id: \"APP\", name: $n }) { app { id } } }",
            json!({ "n": "../x" }),
            "BAD_USER_INPUT",
            Some("name"),
        ),
        (
            "token name with slash",
            "mutation($n: String!) { createApiToken(input: { name: $n, role: ADMIN }) { secret } }",
            json!({ "n": "ops/../root" }),
            "BAD_USER_INPUT",
            Some("name"),
        ),
    ];
    for (what, query, variables, code, field) in cases {
        let query = query.replace("APP", &app);
        let body = server.graphql(&query, variables).await;
        let errors = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {body}"));
        assert_eq!(errors[0]["extensions"]["code"], code, "{what}: {body}");
        if let Some(field) = field {
            assert_eq!(errors[0]["extensions"]["field"], field, "{what}: {body}");
        }
    }

    // A 10 MB string: refused at the door from its Content-Length (413, never parsed); the
    // server may close the connection before the client has finished sending.
    let response = server
        .admin()
        .post(server.url("/graphql"))
        .json(&json!({ "query": create_repository, "variables": { "n": ten_megabytes, "u": "https://e.com/a.git" } }))
        .send()
        .await;
    match response {
        Ok(response) => {
            assert_eq!(response.status(), 413);
            let body: Value = response.json().await.expect("a JSON error");
            assert_eq!(codes(&body), ["PAYLOAD_TOO_LARGE"]);
        }
        Err(error) => assert!(
            error.is_request() || error.is_body(),
            "refused by closing the connection: {error:?}"
        ),
    }

    // Query shapes that cost the server more than they cost the client.
    let deep = format!(
        "{{ repositories {{ nodes {{ {} }} }} }}",
        "apps { nodes { repository { ".repeat(6) + "id" + &" } } }".repeat(6)
    );
    let aliases = format!(
        "{{ {} }}",
        (0..40)
            .map(|i| format!("a{i}: repositories(first: 100) {{ totalCount }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let duplicated = format!("{{ {} }}", "viewer { name } ".repeat(600));
    let fragments = format!(
        "query {{ ...F {} }} fragment F on Query {{ repositories(first: 100) {{ nodes {{ apps(first: 100) {{ nodes {{ deployments(first: 100) {{ totalCount }} }} }} }} }} }}",
        "...F ".repeat(10)
    );
    let directives = format!(
        "{{ viewer {{ name {} }} }}",
        "@include(if: true) ".repeat(50)
    );
    for (what, query) in [
        ("deep nesting", deep),
        ("alias bomb", aliases),
        ("duplicated fields", duplicated),
        ("fragment spreads", fragments),
        ("directive pile", directives),
    ] {
        let (status, body) = server
            .graphql_as(&server.admin_token, &query, json!({}))
            .await;
        assert_eq!(status, 200, "{what}: {body}");
        assert!(body.get("data").is_none(), "{what} never ran: {body}");
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{what}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: {body}");
    }

    assert_eq!(
        written(&db).await,
        before,
        "no row was written by any hostile request"
    );
    assert_eq!(
        db.rows("SELECT name FROM api_repository").await,
        ["target"],
        "the one repository is the fixture"
    );
    server.stop_ok().await;
}

/// A failure inside the server reaches the client as a generic message with a correlation
/// id, and the server log has the details under that id.
async fn internal_errors_are_generic_and_logged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    server.create_app("doomed", "doomed").await;
    // Break the schema underneath the running server.
    db.exec(match backend {
        Backend::Sqlite => "DROP TABLE api_deployment",
        Backend::Postgres => "DROP TABLE api_deployment CASCADE",
    })
    .await;
    let body = server
        .graphql("{ deployments { nodes { id } } }", json!({}))
        .await;
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], "INTERNAL", "{body}");
    let id = error["extensions"]["correlationId"]
        .as_str()
        .expect("a correlation id")
        .to_owned();
    let message = error["message"].as_str().unwrap_or_default();
    assert_eq!(message, format!("internal error (correlation id {id})"));
    let text = body.to_string().to_lowercase();
    for leak in [
        "select",
        "api_deployment",
        "sqlx",
        "no such table",
        "does not exist",
        ".rs",
    ] {
        assert!(!text.contains(leak), "{leak} leaked: {body}");
    }
    let (_, log) = server.stop().await;
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("api_deployment")),
        "the log explains {id}:\n{log}"
    );
}

crate::e2e!(rate_limit_is_per_token);
/// Each token has its own budget; over it, `RATE_LIMITED` with HTTP 429 and Retry-After.
async fn rate_limit_is_per_token() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(
        &db,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "5"],
    )
    .await
    .expect("server starts");
    let viewer = server.create_token("patient", "VIEWER").await;
    let mut limited = None;
    for attempt in 0..20 {
        let response = server
            .admin()
            .post(server.url("/graphql"))
            .json(&json!({ "query": "{ viewer { name } }" }))
            .send()
            .await
            .expect("POST");
        if response.status() == 429 {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            let body: Value = response.json().await.expect("JSON");
            limited = Some((attempt, retry, body));
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let (attempt, retry, body) = limited.expect("the admin token hit its limit");
    assert!(
        (3..=6).contains(&attempt),
        "burst of 5 (one used to create a token): {attempt}"
    );
    assert!(retry >= 1);
    assert_eq!(codes(&body), ["RATE_LIMITED"]);
    assert_eq!(body["errors"][0]["extensions"]["retryAfterSeconds"], retry);
    // Another token is not affected.
    let (status, _) = server
        .graphql_as(&viewer, "{ viewer { name } }", json!({}))
        .await;
    assert_eq!(status, 200);
    server.stop_ok().await;
}

crate::e2e!(production_switches);
/// `--no-introspection`, `--no-graphiql`, the CORS allowlist, and the warning for a
/// non-loopback address.
async fn production_switches() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(
        &db,
        &[
            "--no-introspection",
            "--no-graphiql",
            "--cors-origin",
            "https://console.example.com",
            "--bind",
            "0.0.0.0:0",
        ],
    )
    .await
    .expect("server starts");
    let client = server.admin();
    let page = client.get(server.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 404, "GraphiQL is off");
    let body = server
        .graphql(
            r#"{ __schema { queryType { name } } __type(name: "App") { name } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body),
        &json!({ "__schema": null, "__type": null }),
        "introspection is off"
    );
    let body = server.graphql("{ viewer { name } }", json!({})).await;
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");

    let preflight = |origin: &'static str| {
        http()
            .request(reqwest::Method::OPTIONS, server.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://console.example.com")
        .await
        .expect("OPTIONS");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://console.example.com"
    );
    let allowed_headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let other = preflight("https://evil.example.com")
        .await
        .expect("OPTIONS");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let (_, log) = server.stop().await;
    assert!(log.contains("without TLS"), "{log}");

    // Defaults: loopback without a warning, no CORS for anyone.
    let server = Server::start(&db, &[]).await.expect("server starts");
    let response = http()
        .request(reqwest::Method::OPTIONS, server.url("/graphql"))
        .header("origin", "https://console.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("OPTIONS");
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let bad = Server::start(&db, &["--cors-origin", "*"]).await;
    assert!(bad.is_err_and(|log| log.contains("--cors-origin")));
    let (_, log) = server.stop().await;
    assert!(!log.contains("without TLS"));
}

crate::e2e!(websocket_operations_are_checked_again_after_revocation);
/// A token reaches a WebSocket through `connection_init` and keeps working on it; once
/// revoked, the connection cannot start new operations.
async fn websocket_operations_are_checked_again_after_revocation() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("ws-viewer", "VIEWER").await;
    let mut socket = ws_connect(&server, &viewer).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    let query = |id: &str| {
        Message::Text(
            json!({ "id": id, "type": "subscribe", "payload": { "query": "{ viewer { name } }" } })
                .to_string()
                .into(),
        )
    };
    socket.send(query("1")).await.expect("send");
    let first = ws_next(&mut socket).await.expect("next");
    assert_eq!(first["payload"]["data"]["viewer"]["name"], "ws-viewer");
    assert_eq!(
        ws_next(&mut socket).await.expect("complete")["type"],
        "complete"
    );

    let id = db
        .rows("SELECT CAST(id AS TEXT) FROM api_token WHERE name = 'ws-viewer'")
        .await
        .remove(0);
    let body = server
        .graphql(
            "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { id } } }",
            json!({ "id": global_id("ApiToken", &id) }),
        )
        .await;
    Server::data(&body);
    socket.send(query("2")).await.expect("send");
    let refused = ws_next(&mut socket).await.expect("answer");
    let errors = if refused["type"] == "error" {
        refused["payload"].clone()
    } else {
        refused["payload"]["errors"].clone()
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "UNAUTHENTICATED",
        "{refused}"
    );
    socket.close(None).await.ok();
    server.stop_ok().await;
}

crate::e2e!(bearer_tokens_over_post_and_get);
/// The bearer scheme is case-insensitive, and `GET` queries need a token like `POST`.
async fn bearer_tokens_over_post_and_get() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let response = http()
        .post(server.url("/graphql"))
        .header("authorization", format!("bearer {}", server.admin_token))
        .json(&json!({ "query": "{ viewer { name } }" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");
    let get = server.url("/graphql?query=%7Bviewer%7Bname%7D%7D");
    let response = http().get(&get).send().await.expect("GET");
    assert_eq!(response.status(), 401, "GET without a token");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    let response = http_as(&server.admin_token)
        .get(&get)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");
    server.stop_ok().await;
}

crate::e2e!(queries_time_out_and_mutations_finish);
/// A query that does not finish within the timeout is cancelled with `TIMEOUT`; a
/// mutation is never cut in half: its client gets `TIMEOUT` (outcome unknown) while it runs
/// on to the end. A lock held on the table by another session makes both wait (PostgreSQL).
async fn queries_time_out_and_mutations_finish() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDb::new(Backend::Postgres).await;
    let server = Server::start(&db, &["--request-timeout-secs", "1"])
        .await
        .expect("server starts");
    // Authenticate once, so the token is cached and only the table below is waited on.
    server.graphql("{ viewer { name } }", json!({})).await;
    let conn = db.connect().await;
    let lock = conn.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE api_repository IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let started = std::time::Instant::now();
    let (status, body) = server
        .graphql_as(
            &server.admin_token,
            "{ repositories { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(codes(&body), ["TIMEOUT"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // A mutation is never cancelled: at the timeout its client is told the outcome is
    // unknown, and it goes on, to finish once the lock goes away.
    let (status, body) = server
        .graphql_as(
            &server.admin_token,
            r#"mutation { createRepository(input: { name: "slow", gitUrl: "https://e.com/slow.git" }) { repository { name } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(codes(&body), ["TIMEOUT"]);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("outcome is unknown"),
        "{body}"
    );
    lock.rollback().await.expect("unlock");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.count("SELECT COUNT(*) FROM api_repository").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mutation finished in the background"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(db.rows("SELECT name FROM api_repository").await, ["slow"]);
    conn.close().await.ok();
    server.stop_ok().await;
}
