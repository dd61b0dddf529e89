//! The audit trail records every change, whatever its entry point: each mutation of the
//! schema (the list is read from `schema.graphql`, so a new mutation fails this test until it
//! is covered), the `keystone token` and `keystone documents` commands (as the operator), and
//! Keystone's own changes (the first admin token, a lapsed lease), each naming its actor and
//! the object it acted on.

mod trail;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::hooks::{self, Host};
use crate::support::{Backend, Server, TestDb, global_id, keystone, sha256_hex};

on_both_backends!(every_change_is_audited_with_its_actor);

/// The mutations whose successes are not recorded, by design: a runner calls them every few
/// seconds, and their text (build output) must not reach the append-only trail. Their
/// failures are recorded like any other.
const SUCCESSES_NOT_RECORDED: [&str; 2] = ["heartbeatDeployment", "appendDeploymentLog"];

/// The `Mutation` fields `schema.graphql` declares.
fn mutation_fields() -> BTreeSet<String> {
    let sdl = include_str!("../../schema.graphql");
    let body = sdl
        .split_once("type Mutation {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .expect("schema.graphql declares type Mutation")
        .0;
    // Fields are `\tname(` or `\tname:`; descriptions and arguments are indented otherwise.
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('\t')?;
            let end = rest.find(|c: char| !c.is_ascii_alphanumeric())?;
            (end > 0 && rest[end..].starts_with(['(', ':'])).then(|| rest[..end].to_owned())
        })
        .collect()
}

/// The whole trail, oldest first.
async fn trail(server: &Server) -> Vec<Value> {
    let body = server
        .graphql(
            "{ auditEvents(last: 100) { nodes { actor tokenName tokenRole operation outcome errorCode objectId } } }",
            json!({}),
        )
        .await;
    let mut nodes = Server::data(&body)["auditEvents"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    nodes.reverse();
    nodes
}

fn id_of(body: &Value, path: &[&str]) -> String {
    let mut value = Server::data(body);
    for key in path {
        value = &value[key];
    }
    value
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} in {body:#}"))
        .to_owned()
}

/// One expected event: the actor, the operation, and the object it names ("" to skip).
type Expected = (&'static str, &'static str, String);

async fn every_change_is_audited_with_its_actor(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--lease-secs", "1"])
        .await
        .expect("server starts");
    let expected: RefCell<Vec<Expected>> =
        RefCell::new(vec![("SYSTEM", "createApiToken", String::new())]);
    // A mutation by `token` (the admin's when `None`): the ID at `object` in its payload is
    // what its event must name.
    let call = async |token: Option<&str>,
                      field: &'static str,
                      query: &str,
                      variables: Value,
                      object: &[&str]| {
        let token = token.unwrap_or(&server.admin_token);
        let (_, body) = server.graphql_as(token, query, variables).await;
        let mut path = vec![field];
        path.extend_from_slice(object);
        let id = id_of(&body, &path);
        expected.borrow_mut().push(("TOKEN", field, id.clone()));
        id
    };

    let repository = call(
        None,
        "createRepository",
        r#"mutation { createRepository(input: { name: "audited", gitUrl: "https://example.com/a.git" }) { repository { id } } }"#,
        json!({}),
        &["repository", "id"],
    )
    .await;
    call(
        None,
        "updateRepository",
        r#"mutation($id: ID!) { updateRepository(input: { id: $id, defaultBranch: "trunk" }) { repository { id } } }"#,
        json!({ "id": repository }),
        &["repository", "id"],
    )
    .await;
    let app = call(
        None,
        "createApp",
        r#"mutation($r: ID!) { createApp(input: { name: "audited", repositoryId: $r }) { app { id } } }"#,
        json!({ "r": repository }),
        &["app", "id"],
    )
    .await;
    let on_app = json!({ "id": app });
    call(
        None,
        "updateApp",
        r#"mutation($id: ID!) { updateApp(input: { id: $id, healthCheckPath: "/up" }) { app { id } } }"#,
        on_app.clone(),
        &["app", "id"],
    )
    .await;
    call(
        None,
        "setAppEnv",
        r#"mutation($id: ID!) { setAppEnv(input: { appId: $id, name: "GREETING", value: "hi" }) { appId } }"#,
        on_app.clone(),
        &["appId"],
    )
    .await;
    call(
        None,
        "unsetAppEnv",
        r#"mutation($id: ID!) { unsetAppEnv(input: { appId: $id, name: "GREETING" }) { appId } }"#,
        on_app.clone(),
        &["appId"],
    )
    .await;
    call(
        None,
        "changeAppEnv",
        r#"mutation($id: ID!) { changeAppEnv(input: { appId: $id, set: [{ name: "A", value: "1" }], unset: ["B"] }) { appId } }"#,
        on_app.clone(),
        &["appId"],
    )
    .await;
    // A push webhook: made by an admin, then posted to by a Git host (its ping: the
    // webhook is the actor, and nothing changes).
    let (path, secret) = hooks::rotate(&server, &app).await;
    expected
        .borrow_mut()
        .push(("TOKEN", "rotateAppWebhook", app.clone()));
    let (status, _) =
        hooks::post(&server, &path, Host::GitHub, &secret, "ping", "d-1", b"{}").await;
    assert_eq!(status, 200);
    expected
        .borrow_mut()
        .push(("WEBHOOK", "push", String::new()));
    call(
        None,
        "deployApp",
        "mutation($id: ID!) { deployApp(input: { appId: $id }) { app { id } } }",
        on_app.clone(),
        &["app", "id"],
    )
    .await;
    let create_token = r#"mutation($name: String!) { createApiToken(input: { name: $name, role: RUNNER }) { token { id } secret } }"#;
    let spare = call(
        None,
        "createApiToken",
        create_token,
        json!({ "name": "spare" }),
        &["token", "id"],
    )
    .await;
    call(
        None,
        "createApiToken",
        create_token,
        json!({ "name": "builder" }),
        &["token", "id"],
    )
    .await;
    let runner = server.create_token("builder-2", "RUNNER").await;
    expected
        .borrow_mut()
        .push(("TOKEN", "createApiToken", String::new()));

    let claim = "mutation { claimDeployment { deployment { id } } }";
    let first = call(
        Some(&runner),
        "claimDeployment",
        claim,
        json!({}),
        &["deployment", "id"],
    )
    .await;
    let held = json!({ "id": first });
    let (_, beat) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!) { heartbeatDeployment(input: { deploymentId: $id }) { cancelRequested } }",
            held.clone(),
        )
        .await;
    Server::data(&beat);
    let (_, appended) = server
        .graphql_as(
            &runner,
            r#"mutation($id: ID!) { appendDeploymentLog(input: { deploymentId: $id, chunk: "built\n" }) { bytesWritten } }"#,
            held.clone(),
        )
        .await;
    Server::data(&appended);
    call(
        Some(&runner),
        "reportDeployment",
        r#"mutation($id: ID!) { reportDeployment(input: { deploymentId: $id, status: SUCCESS, imageTag: "audited:1" }) { deployment { id } } }"#,
        held,
        &["deployment", "id"],
    )
    .await;
    call(
        None,
        "rollbackApp",
        "mutation($id: ID!, $to: ID!) { rollbackApp(input: { appId: $id, toDeploymentId: $to }) { app { id } } }",
        json!({ "id": app, "to": first }),
        &["app", "id"],
    )
    .await;
    // Claimed and abandoned: Keystone requeues it when the lease lapses.
    let second = call(
        Some(&runner),
        "claimDeployment",
        claim,
        json!({}),
        &["deployment", "id"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued = "SELECT COUNT(*) FROM api_deployment WHERE status = 'queued'";
    while db.count(queued).await == 0 {
        assert!(Instant::now() < deadline, "the lease never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expected
        .borrow_mut()
        .push(("SYSTEM", "expireLease", second.clone()));
    call(
        None,
        "cancelDeployment",
        "mutation($id: ID!) { cancelDeployment(input: { id: $id }) { deployment { id } } }",
        json!({ "id": second }),
        &["deployment", "id"],
    )
    .await;
    call(
        None,
        "stopApp",
        "mutation($id: ID!) { stopApp(input: { id: $id }) { app { id } } }",
        on_app.clone(),
        &["app", "id"],
    )
    .await;
    call(
        None,
        "revokeApiToken",
        "mutation($id: ID!) { revokeApiToken(input: { id: $id }) { token { id } } }",
        json!({ "id": spare }),
        &["token", "id"],
    )
    .await;
    call(
        None,
        "deleteApp",
        "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
        on_app,
        &["deletedAppId"],
    )
    .await;
    call(
        None,
        "deleteRepository",
        "mutation($id: ID!) { deleteRepository(input: { id: $id }) { deletedRepositoryId } }",
        json!({ "id": repository }),
        &["deletedRepositoryId"],
    )
    .await;

    // The scenario covers every mutation the schema declares.
    let mut expected = expected.into_inner();
    let covered: BTreeSet<String> = expected
        .iter()
        .filter(|(actor, ..)| *actor == "TOKEN")
        .map(|(_, field, _)| field.to_string())
        .chain(SUCCESSES_NOT_RECORDED.map(str::to_owned))
        .collect();
    assert_eq!(
        covered,
        mutation_fields(),
        "a mutation without an audit check"
    );

    // The operator's commands, as the operating-system user.
    keystone(
        &db,
        &["token", "create", "--name", "ci", "--role", "viewer"],
    )
    .await
    .assert_success();
    let ci = global_id(
        "ApiToken",
        db.count("SELECT id FROM api_token WHERE name = 'ci'").await,
    );
    keystone(&db, &["token", "revoke", "ci"])
        .await
        .assert_success();
    keystone(&db, &["token", "revoke", "ci"])
        .await
        .assert_failure();
    let text = "query Me { viewer { name } }";
    std::fs::write(db.dir().join("me.graphql"), text).expect("write the document");
    keystone(&db, &["documents", "add", "me.graphql"])
        .await
        .assert_success();
    keystone(&db, &["documents", "remove", &sha256_hex(text)])
        .await
        .assert_success();
    expected.extend([
        ("OPERATOR", "keystone token create", ci.clone()),
        ("OPERATOR", "keystone token revoke", ci.clone()),
        ("OPERATOR", "keystone token revoke", ci),
        ("OPERATOR", "keystone documents add", String::new()),
        ("OPERATOR", "keystone documents remove", String::new()),
    ]);

    let trail = trail(&server).await;
    let seen: Vec<(String, String)> = trail
        .iter()
        .map(|e| (text_of(&e["actor"]), text_of(&e["operation"])))
        .collect();
    let wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(actor, operation, _)| (actor.to_string(), operation.to_string()))
        .collect();
    assert_eq!(seen, wanted, "{trail:#?}");
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()));
    for ((actor, operation, object), event) in expected.iter().zip(&trail) {
        if !object.is_empty() {
            assert_eq!(event["objectId"], object.as_str(), "{operation}: {event}");
        }
        let who = text_of(&event["tokenName"]);
        match *actor {
            "TOKEN" if *operation == "claimDeployment" || *operation == "reportDeployment" => {
                assert_eq!(who, "builder-2")
            }
            "TOKEN" => assert_eq!(who, "admin", "{event}"),
            "SYSTEM" => assert_eq!(event["tokenRole"], Value::Null, "{event}"),
            "WEBHOOK" => assert_eq!(who, "github webhook", "{event}"),
            _ => match &user {
                Some(user) => assert_eq!(&who, user, "{event}"),
                None => assert!(who.starts_with("uid "), "{event}"),
            },
        }
    }
    let outcomes: Vec<String> = trail.iter().map(|e| text_of(&e["outcome"])).collect();
    let failed: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i] == "ERROR")
        .collect();
    assert_eq!(
        failed,
        [trail.len() - 3],
        "only the second revoke failed: {outcomes:?}"
    );
    assert_eq!(trail[trail.len() - 3]["errorCode"], "CONFLICT");
    assert_eq!(
        text_of(
            &trail
                .iter()
                .find(|e| e["operation"] == "expireLease")
                .expect("expired")["tokenName"]
        ),
        "lease sweeper"
    );
    server.stop_ok().await;
}

fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or("-").to_owned()
}
