//! The production switches: no GraphiQL, no introspection, CORS origins, the clear-text
//! warning.

use serde_json::json;

use crate::support::{Backend, Server, TestDb, http};

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
