//! The HTTP surface around the schema: GraphQL-over-HTTP rules (methods, media types,
//! status codes), limits, the offline GraphiQL page, the WebSocket protocol, and the
//! checked-in `schema.graphql`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Backend, Server, TestDb, keystone};

async fn sqlite_server(extra: &[&str]) -> (TestDb, Server) {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, extra).await.expect("server starts");
    (db, server)
}

crate::e2e!(get_and_post_follow_graphql_over_http);
async fn get_and_post_follow_graphql_over_http() {
    let (db, server) = sqlite_server(&[]).await;
    let client = server.admin();
    let endpoint = server.url("/graphql");

    // GET runs queries.
    let response = client
        .get(&endpoint)
        .query(&[
            (
                "query",
                "query Q($n: Int) { repositories(first: $n) { totalCount } }",
            ),
            ("variables", "{\"n\": 1}"),
            ("operationName", "Q"),
        ])
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["repositories"]["totalCount"], 0);

    // GET refuses mutations with 405 and writes nothing.
    let response = client
        .get(&endpoint)
        .query(&[("query", "mutation { createRepository(input: { name: \"x\", gitUrl: \"https://e.com/x.git\" }) { repository { id } } }")])
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(db.count("SELECT COUNT(*) FROM api_repository").await, 0);

    // Accept: application/graphql-response+json → that media type; request errors are 400
    // without `data`; field errors stay 200.
    let post = |accept: &'static str, body: &'static str| {
        client
            .post(&endpoint)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body)
            .send()
    };
    let response = post(
        "application/graphql-response+json",
        r#"{"query":"{ repositories { "}"#,
    )
    .await
    .expect("POST");
    assert_eq!(response.status(), 400);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/graphql-response+json")
    );
    let body: Value = response.json().await.expect("json");
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_PARSE_FAILED"
    );
    let response = post(
        "application/graphql-response+json",
        r#"{"query":"{ noSuchField }"}"#,
    )
    .await
    .expect("POST");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    let response = post(
        "application/graphql-response+json",
        r#"{"query":"{ repository(id: \"UmVwb3NpdG9yeTo5\") { id } }"}"#,
    )
    .await
    .expect("POST");
    assert_eq!(
        response.status(),
        200,
        "a field error is not a request error"
    );
    // Legacy application/json: 200 even for request errors.
    let response = post("application/json", r#"{"query":"{ repositories { "}"#)
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/json")
    );
    // Preference by q-value.
    let response = post(
        "application/json;q=0.9, application/graphql-response+json;q=0.5",
        r#"{"query":"{ __typename }"}"#,
    )
    .await
    .expect("POST");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/json")
    );
    let response = post("text/html", r#"{"query":"{ __typename }"}"#)
        .await
        .expect("POST");
    assert_eq!(response.status(), 406);
    let response = post("", r#"{"query":"{ __typename }"}"#)
        .await
        .expect("POST");
    assert_eq!(response.status(), 200, "an empty Accept is no preference");

    // Malformed requests.
    let response = post("application/json", r#"{"query":"#)
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    let response = client
        .post(&endpoint)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 415);
    let response = client
        .post(&endpoint)
        .body(r#"{"query":"{ __typename }"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 415, "no content type");

    server.stop_ok().await;
}

crate::e2e!(limits_refuse_oversized_and_abusive_queries);
async fn limits_refuse_oversized_and_abusive_queries() {
    let (db, server) = sqlite_server(&[
        "--max-body-bytes",
        "65536",
        "--max-query-depth",
        "8",
        "--max-query-complexity",
        "5000",
    ])
    .await;
    let client = server.admin();

    let big = format!(
        r#"{{"query":"{{ __typename }}", "variables": {{"pad": "{}"}}}}"#,
        "x".repeat(70_000)
    );
    let response = client
        .post(server.url("/graphql"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    let ten_megabytes = json!({
        "query": "mutation($n: String!) { createRepository(input: { name: $n, gitUrl: \"https://e.com/x.git\" }) { repository { id } } }",
        "variables": { "n": "x".repeat(10 << 20) },
    });
    // Refused from its Content-Length: a 413, or the connection closed under the upload.
    match client
        .post(server.url("/graphql"))
        .json(&ten_megabytes)
        .send()
        .await
    {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(error) => assert!(error.is_request(), "{error}"),
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM api_repository").await, 0);

    let deep = "{ repositories(first: 1) { nodes { apps(first: 1) { nodes { repository { apps(first: 1) { nodes { repository { apps(first: 1) { nodes { id } } } } } } } } } } }";
    let body = server.graphql(deep, json!({})).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nested too deep"),
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );

    let complex =
        "{ repositories(first: 100) { nodes { apps(first: 100) { nodes { id name } } } } }";
    let body = server.graphql(complex, json!({})).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too complex"),
        "{body}"
    );
    server.stop_ok().await;
}

crate::e2e!(graphiql_is_served_offline);
/// GraphiQL at `/` loads nothing from elsewhere: every reference is to this server, every
/// referenced file is served, and the vendored bundles arrive byte for byte.
async fn graphiql_is_served_offline() {
    let (_db, server) = sqlite_server(&[]).await;
    let client = server.admin();
    let response = client.get(server.url("/")).send().await.expect("GET /");
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("CSP")
        .to_owned();
    // Scripts and connections (HTTP and WebSocket) only to this server.
    let directive = |name: &str| {
        csp.split(';')
            .map(str::trim)
            .find(|d| d.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(directive("default-src"), "default-src 'none'", "{csp}");
    assert_eq!(directive("script-src"), "script-src 'self'", "{csp}");
    assert_eq!(directive("connect-src"), "connect-src 'self'", "{csp}");
    let page = response.text().await.expect("page");
    assert!(page.contains("<div id=\"graphiql\">"));
    assert!(
        !page.contains("http://")
            && !page.contains("https://")
            && !page.contains("//cdn")
            && !page.contains("src=\"//"),
        "{page}"
    );

    let references: Vec<&str> = page
        .split(['"', '\''])
        .filter(|part| part.starts_with("/graphiql/"))
        .collect();
    assert_eq!(references.len(), 5, "{references:?}");
    let vendor = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/graphiql");
    for reference in references {
        let response = client
            .get(server.url(reference))
            .send()
            .await
            .expect("GET asset");
        assert_eq!(response.status(), 200, "{reference}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("type")
            .to_owned();
        let bytes = response.bytes().await.expect("asset");
        let name = reference.trim_start_matches("/graphiql/");
        let ours = if name == "keystone-graphiql.js" {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/http/graphiql")
                .join(name)
        } else {
            vendor.join(name)
        };
        let expected_bytes = std::fs::read(&ours).expect("the file the page references");
        assert!(
            bytes == expected_bytes,
            "{name} differs from {}",
            ours.display()
        );
        let expected = if name.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(content_type.starts_with(expected), "{name}: {content_type}");
    }
    let start = client
        .get(server.url("/graphiql/keystone-graphiql.js"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("js");
    assert!(
        start.contains("/graphql/ws") && !start.contains("https://"),
        "{start}"
    );
    let missing = client
        .get(server.url("/graphiql/nope.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    server.stop_ok().await;
}

crate::e2e!(websocket_speaks_graphql_transport_ws);
/// `/graphql/ws` speaks graphql-transport-ws: init/ack, subscribe, next, complete, ping/pong.
async fn websocket_speaks_graphql_transport_ws() {
    let (db, server) = sqlite_server(&[]).await;
    db.exec("INSERT INTO api_repository (name, git_url) VALUES ('web', 'https://e.com/web.git')")
        .await;
    let url = server.url("/graphql/ws").replace("http://", "ws://");
    let connect = || async {
        let mut request = url.as_str().into_client_request().expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "graphql-transport-ws"
        );
        socket
    };

    // Without a token in connection_init, the server closes the connection.
    let mut anonymous = connect().await;
    anonymous
        .send(Message::Text(
            json!({ "type": "connection_init" }).to_string().into(),
        ))
        .await
        .expect("send");
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), anonymous.next())
        .await
        .expect("an answer within 10 s");
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert!(frame.reason.contains("UNAUTHENTICATED"), "{frame:?}")
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    let mut socket = connect().await;
    let send = |value: Value| Message::Text(value.to_string().into());
    async fn socket_next(
        socket: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Option<Value> {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("message");
        match message {
            Message::Text(text) => Some(serde_json::from_str(&text).expect("JSON message")),
            _ => None,
        }
    }
    socket
        .send(send(json!({
            "type": "connection_init",
            "payload": { "Authorization": format!("Bearer {}", server.admin_token) }
        })))
        .await
        .expect("send");
    assert_eq!(
        socket_next(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    socket
        .send(send(json!({ "type": "ping" })))
        .await
        .expect("send");
    assert_eq!(
        socket_next(&mut socket).await.expect("pong")["type"],
        "pong"
    );
    socket
        .send(send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ repositories { nodes { name } } }" } })))
        .await
        .expect("send");
    let result = socket_next(&mut socket).await.expect("next");
    assert_eq!(result["type"], "next");
    assert_eq!(result["id"], "1");
    assert_eq!(
        result["payload"]["data"]["repositories"]["nodes"][0]["name"],
        "web"
    );
    assert_eq!(
        socket_next(&mut socket).await.expect("complete")["type"],
        "complete"
    );
    socket.close(None).await.ok();
    server.stop_ok().await;
}

crate::e2e!(schema_diff_gates_breaking_changes);
/// The schema gate: `keystone schema diff` exits 1 on a breaking change (naming it), 0
/// once it is acknowledged, and 0 for the safe change of a field added.
async fn schema_diff_gates_breaking_changes() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = db.dir();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let old = write("old.graphql", "type Query { apps: Int! name: String }");
    let safe = write(
        "safe.graphql",
        "type Query { apps: Int! name: String extra: Int }",
    );
    let breaking = write("breaking.graphql", "type Query { apps: Int }");
    let out = keystone(&db, &["schema", "diff", &old, &safe]).await;
    out.assert_success();
    assert!(
        out.stdout.contains("safe      Query.extra: added"),
        "{}",
        out.stdout
    );
    let out = keystone(&db, &["schema", "diff", &old, &breaking]).await;
    out.assert_failure();
    assert!(
        out.stdout.contains("BREAKING  Query.name: removed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("2 breaking change(s) not acknowledged"),
        "{}",
        out.stderr
    );
    let allow = write(
        "allow.txt",
        "Query.name: removed\nQuery.apps: type changed from Int! to Int\n",
    );
    keystone(&db, &["schema", "diff", &old, &breaking, "--allow", &allow])
        .await
        .assert_success();
    // Without NEW, the schema this binary serves: against schema.graphql, no change at all.
    let current = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql");
    let same = keystone(&db, &["schema", "diff", current.to_str().unwrap()]).await;
    same.assert_success();
    assert!(same.stdout.contains("0 change(s)"), "{}", same.stdout);
}

crate::e2e!(schema_graphql_matches_the_code);
/// `schema.graphql` is exactly what `keystone schema` prints.
async fn schema_graphql_matches_the_code() {
    let db = TestDb::new(Backend::Sqlite).await;
    let out = keystone(&db, &["schema"]).await;
    out.assert_success();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql");
    let checked_in = std::fs::read_to_string(&path).expect("schema.graphql");
    assert!(
        out.stdout == checked_in,
        "schema.graphql is out of date: run `cargo run -- schema > schema.graphql`"
    );
    assert!(out.stdout.contains("interface Node"));
}
