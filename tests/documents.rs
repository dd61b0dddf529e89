//! Trusted documents: `keystone documents add|list|remove`, requests that send only a
//! document's hash (Apollo's `extensions.persistedQuery`, a `documentId` body field or query
//! parameter), over HTTP POST and GET and over WebSocket; `--trusted-documents-only` refusing
//! anything else, admins excepted when allowed; the audit trail recording the hash. (A stock
//! Apollo client that sends hashes: `browser::stock_apollo_client_sends_hashes`.)

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    Backend, Server, TestDb, http_as, keystone, ws_connect, ws_next, ws_next_payload,
};

const APPS: &str = "query Apps { apps(first: 5) { nodes { name } } }\n";
const CLAIM: &str = "mutation Claim { claimDeployment { deployment { status } } }\n";
const WATCH: &str = "subscription Watch { deploymentUpdated { status } }\n";

use crate::support::sha256_hex as sha256;

fn persisted(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

/// POSTs `body` with `token`: the status and JSON body.
async fn post(server: &Server, token: &str, body: Value) -> (u16, Value) {
    let response = http_as(token)
        .post(server.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
}

async fn trusted_documents_only_runs_stored_documents(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(
        &db,
        &[
            "--trusted-documents-only",
            "--trusted-documents-allow-admins",
        ],
    )
    .await
    .expect("server starts");
    let viewer = server.create_token("frontend", "VIEWER").await;
    let runner = server.create_token("builder", "RUNNER").await;
    let app = server.create_app("web", "web-app").await;

    // Store three documents; storing one again changes nothing; an invalid one is refused.
    let mut files = Vec::new();
    for (name, text) in [("apps", APPS), ("claim", CLAIM), ("watch", WATCH)] {
        let path = db.dir().join(format!("{name}.graphql"));
        std::fs::write(&path, text).expect("write document");
        files.push(path.to_str().expect("utf-8").to_owned());
    }
    let mut add = vec!["documents", "add"];
    add.extend(files.iter().map(String::as_str));
    let added = keystone(&db, &add).await;
    added.assert_success();
    for text in [APPS, CLAIM, WATCH] {
        assert!(
            added.stdout.contains(&format!("{}  ", sha256(text))),
            "{}",
            added.stdout
        );
    }
    assert_eq!(
        added.stdout.matches("(added)").count(),
        3,
        "{}",
        added.stdout
    );
    let again = keystone(&db, &["documents", "add", &files[0]]).await;
    assert!(again.assert_success().stdout.contains("already stored"));
    let invalid = db.dir().join("invalid.graphql");
    std::fs::write(&invalid, "{ apps { nope } }").expect("write");
    let refused = keystone(&db, &["documents", "add", invalid.to_str().unwrap()]).await;
    assert!(
        refused.assert_failure().stderr.contains("nope"),
        "{}",
        refused.stderr
    );
    let listed = keystone(&db, &["documents", "list"]).await;
    assert_eq!(listed.assert_success().stdout.lines().count(), 3);
    assert!(listed.stdout.contains("Apps") && listed.stdout.contains("Watch"));

    let apps_hash = sha256(APPS);
    let names = |body: &Value| body["data"]["apps"]["nodes"][0]["name"].clone();
    // By hash alone: Apollo's extension, a documentId field, a GET.
    let (status, body) = post(
        &server,
        &viewer,
        json!({ "extensions": persisted(&apps_hash) }),
    )
    .await;
    assert_eq!((status, names(&body)), (200, json!("web-app")), "{body}");
    let (_, body) = post(
        &server,
        &viewer,
        json!({ "documentId": format!("sha256:{apps_hash}") }),
    )
    .await;
    assert_eq!(names(&body), "web-app", "{body}");
    let response = http_as(&viewer)
        .get(server.url("/graphql"))
        .query(&[("extensions", persisted(&apps_hash).to_string())])
        .send()
        .await
        .expect("GET");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(names(&body), "web-app", "{body}");
    let response = http_as(&viewer)
        .get(server.url("/graphql"))
        .query(&[("documentId", apps_hash.as_str())])
        .send()
        .await
        .expect("GET");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(names(&body), "web-app", "{body}");
    // The text of a stored document runs too; any other does not.
    let (_, body) = post(&server, &viewer, json!({ "query": APPS })).await;
    assert_eq!(names(&body), "web-app", "{body}");
    let (status, body) = post(&server, &viewer, json!({ "query": "{ viewer { name } }" })).await;
    assert_eq!((status, code(&body)), (403, "FORBIDDEN_DOCUMENT"), "{body}");
    assert!(body.get("data").is_none(), "nothing ran: {body}");
    let (status, body) = post(
        &server,
        &viewer,
        json!({ "extensions": persisted(&"0".repeat(64)) }),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, "PERSISTED_QUERY_NOT_FOUND"),
        "{body}"
    );
    let (status, body) = post(
        &server,
        &viewer,
        json!({ "query": "{ viewer { name } }", "extensions": persisted(&apps_hash) }),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, "BAD_REQUEST"),
        "a hash that is not the text's: {body}"
    );
    let (status, body) = post(&server, &viewer, json!({ "documentId": "sha256:xyz" })).await;
    assert_eq!((status, code(&body)), (400, "BAD_REQUEST"), "{body}");
    // Admins are allowed any document here (GraphiQL keeps working for operators).
    let (status, body) = post(
        &server,
        &server.admin_token,
        json!({ "query": "{ viewer { name } }" }),
    )
    .await;
    assert_eq!(
        (status, &body["data"]["viewer"]["name"]),
        (200, &json!("admin")),
        "{body}"
    );

    // WebSocket: a subscription by hash gets its event; another document is refused.
    let mut socket = ws_connect(&server, &viewer).await;
    assert_eq!(
        ws_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    let subscribe = |id: &str, payload: Value| {
        Message::Text(
            json!({ "type": "subscribe", "id": id, "payload": payload })
                .to_string()
                .into(),
        )
    };
    socket
        .send(subscribe(
            "other",
            json!({ "query": "{ viewer { name } }" }),
        ))
        .await
        .expect("send");
    let refusal = ws_next_payload(&mut socket, "other").await;
    assert_eq!(
        refusal["errors"][0]["extensions"]["code"], "FORBIDDEN_DOCUMENT",
        "{refusal}"
    );
    assert_eq!(refusal["data"], Value::Null, "nothing ran: {refusal}");
    socket
        .send(subscribe(
            "w",
            json!({ "query": "", "extensions": persisted(&sha256(WATCH)) }),
        ))
        .await
        .expect("send");
    socket
        .send(subscribe(
            "a",
            json!({ "query": "", "extensions": persisted(&apps_hash) }),
        ))
        .await
        .expect("send");
    assert_eq!(names(&ws_next_payload(&mut socket, "a").await), "web-app");
    let (_, body) = post(
        &server,
        &server.admin_token,
        json!({
            "query": "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            "variables": { "id": app },
        }),
    )
    .await;
    assert!(body.get("errors").is_none(), "{body}");
    let event = ws_next_payload(&mut socket, "w").await;
    assert_eq!(
        event["data"]["deploymentUpdated"]["status"], "QUEUED",
        "{event}"
    );

    // A mutation by hash: its audit row names the document.
    let (_, body) = post(
        &server,
        &runner,
        json!({ "extensions": persisted(&sha256(CLAIM)) }),
    )
    .await;
    assert_eq!(
        body["data"]["claimDeployment"]["deployment"]["status"], "RUNNING",
        "{body}"
    );
    assert_eq!(
        db.rows("SELECT document_hash FROM api_audit_event WHERE operation = 'claimDeployment'")
            .await,
        [sha256(CLAIM)]
    );

    // The runner's own operations are trusted without being stored.
    let (status, body) = post(
        &server,
        &runner,
        json!({ "query": api::runner::client::operations::RUNNER_APPS }),
    )
    .await;
    assert_eq!((status, body.get("errors")), (200, None), "{body}");

    // Removed: servers stop running it once they read the documents again (each second).
    let removed = keystone(&db, &["documents", "remove", &apps_hash]).await;
    assert!(removed.assert_success().stdout.contains("Removed 1 of 1"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = post(
            &server,
            &viewer,
            json!({ "extensions": persisted(&apps_hash) }),
        )
        .await;
        if code(&body) == "PERSISTED_QUERY_NOT_FOUND" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still served: {body}");
        tokio::task::yield_now().await;
    }
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

crate::on_both_backends!(trusted_documents_only_runs_stored_documents);

crate::e2e!(hashes_are_optional_and_admins_are_not_exempt_by_default);
/// Without `--trusted-documents-only`, any document runs, and one sent by hash alone still
/// needs to be stored; admins are not exempt unless the setting says so.
async fn hashes_are_optional_and_admins_are_not_exempt_by_default() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let (_, body) = post(
        &server,
        &server.admin_token,
        json!({ "query": "{ viewer { name } }" }),
    )
    .await;
    assert_eq!(body["data"]["viewer"]["name"], "admin");
    let text = "{ viewer { role } }";
    let (_, body) = post(
        &server,
        &server.admin_token,
        json!({ "query": text, "extensions": persisted(&sha256(text)) }),
    )
    .await;
    assert_eq!(
        body["data"]["viewer"]["role"], "ADMIN",
        "a matching hash is fine: {body}"
    );
    let (_, body) = post(
        &server,
        &server.admin_token,
        json!({ "extensions": persisted(&sha256(text)) }),
    )
    .await;
    assert_eq!(
        code(&body),
        "PERSISTED_QUERY_NOT_FOUND",
        "never stored by a client: {body}"
    );
    server.stop_ok().await;

    let server = Server::start(&db, &["--trusted-documents-only"])
        .await
        .expect("restarts");
    let (status, body) = post(
        &server,
        &server.admin_token,
        json!({ "query": "{ viewer { name } }" }),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "FORBIDDEN_DOCUMENT"), "{body}");
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}
