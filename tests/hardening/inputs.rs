//! Hostile inputs from users and runners are refused with a stable code and write nothing:
//! `--upload-pack=…`, `ext::`, `file:///etc`, `../`, NUL bytes, 10 MB strings, deep nesting,
//! alias and duplicate-field bombs; runner reports, stages, commits and log chunks.

use serde_json::{Value, json};

use crate::support::protocol::{append, claim, deploy};
use crate::support::{Backend, Server, TestDb, codes, global_id, insert_port_apps, only_error};

crate::on_both_backends!(
    hostile_inputs_are_refused_and_write_nothing,
    runner_inputs_are_validated,
);

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

/// Values from runners are inputs: lengths, an image reference grammar, escaped control
/// characters; and a client's operation name cannot forge a server log line.
async fn runner_inputs_are_validated(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 1).await;
    deploy(&server, 1).await;
    let runner = server.create_token("runner", "RUNNER").await;
    let (id, _) = claim(&server, &runner).await;
    let report = "mutation($id: ID!, $tag: String, $e: String) { reportDeployment(input: { deploymentId: $id, status: FAILED, imageTag: $tag, errorSummary: $e }) { deployment { status } } }";
    for (field, tag, summary) in [
        ("imageTag", Some("--privileged".to_owned()), None),
        ("imageTag", Some("web:latest\n-v /:/host".to_owned()), None),
        ("errorSummary", None, Some("e".repeat(900_000))),
    ] {
        let (_, body) = server
            .graphql_as(
                &runner,
                report,
                json!({ "id": global_id("Deployment", id), "tag": tag, "e": summary }),
            )
            .await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".to_owned(), Some(field.to_owned())),
            "{body}"
        );
    }
    assert_eq!(
        db.rows(&format!("SELECT status || '|' || image_tag || '|' || error_summary FROM api_deployment WHERE id = {id}"))
            .await,
        ["running||"],
        "nothing was stored"
    );
    // Terminal escapes in a log are stored escaped.
    Server::data(&append(&server, &runner, id, "\u{1b}]0;pwned\u{7}\u{1b}[2Jok\r\n").await);
    let body = server
        .graphql(
            "query($id: ID!) { deployment(id: $id) { logs } }",
            json!({ "id": global_id("Deployment", id) }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["deployment"]["logs"],
        json!(["\\u{1b}]0;pwned\\u{7}\\u{1b}[2Jok"])
    );
    // A good report goes through.
    let (_, body) = server
        .graphql_as(
            &runner,
            report,
            json!({ "id": global_id("Deployment", id), "tag": "keystone/app-1:1-abc1234", "e": "exit 1\n\u{1b}[31m" }),
        )
        .await;
    Server::data(&body);
    assert_eq!(
        db.rows(&format!(
            "SELECT error_summary FROM api_deployment WHERE id = {id}"
        ))
        .await,
        ["exit 1\n\\u{1b}[31m"]
    );
    // An operation name cannot forge a log line.
    let forged = "x\n2030-01-01T00:00:00Z  INFO keystone: FORGED admin login";
    let response = server
        .admin()
        .post(server.url("/graphql"))
        .json(&json!({ "query": "query x { viewer { name } }", "operationName": forged }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let (_, log) = server.stop().await;
    assert!(
        !log.lines().any(|line| line.starts_with("2030-01-01")),
        "{log}"
    );
    assert!(log.contains("x\\n2030-01-01"), "the name is logged escaped");
}
