//! `/metrics` cannot be grown by clients: operation names are labels only while short and
//! few, are taken from the document (never from the request's `operationName` alone), and
//! the scrape stays under 1 MB whatever is sent; the endpoint requires its token wherever
//! it is served.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::{Backend, Server, TestDb, http, http_as, keystone, parse_metrics};

/// The values of the `operation` label in a scrape.
fn operation_labels(scrape: &str) -> BTreeSet<String> {
    parse_metrics(scrape)
        .keys()
        .filter_map(|series| {
            let at = series.find("operation=\"")? + "operation=\"".len();
            let end = series[at..].find('"')?;
            Some(series[at..at + end].to_owned())
        })
        .collect()
}

async fn scrape(server: &Server) -> String {
    let response = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

crate::e2e!(clients_cannot_grow_the_scrape);
/// The finding: 200 operation names of 100 KB made every scrape 360 MB. Now 300 names, a
/// third of them 10 KB long, each as a query, a mutation and with a name the document does
/// not have, leave a scrape under 1 MB whose labels are short and few.
async fn clients_cannot_grow_the_scrape() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("frontend", "VIEWER").await;
    let client = http_as(&viewer);
    let real = client
        .post(server.url("/graphql"))
        .json(&json!({ "query": "query Real { __typename }" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(real.status(), 200);
    for n in 0..300 {
        let name = if n % 3 == 0 {
            format!("Long{n}_{}", "x".repeat(10_000))
        } else {
            format!("Op{n}")
        };
        for (query, operation_name) in [
            (format!("query {name} {{ __typename }}"), None),
            (
                format!(
                    "mutation {name} {{ revokeApiToken(input: {{ id: \"x\" }}) {{ clientMutationId }} }}"
                ),
                None,
            ),
            // The request names an operation the document does not have.
            ("query Real { __typename }".to_owned(), Some(name.clone())),
        ] {
            let response = client
                .post(server.url("/graphql"))
                .json(&json!({ "query": query, "operationName": operation_name }))
                .send()
                .await
                .expect("POST");
            assert!(response.status().is_success() || response.status() == 400);
        }
    }
    let text = scrape(&server).await;
    assert!(text.len() < 1 << 20, "the scrape is {} bytes", text.len());
    let labels = operation_labels(&text);
    assert!(labels.iter().all(|l| l.len() <= 64), "{labels:?}");
    assert!(labels.len() <= 100 + 3, "{} labels", labels.len());
    assert!(labels.contains("other"), "{labels:?}");
    assert!(labels.contains("Real"), "{labels:?}");
    // The names the document does not have are not labels.
    assert!(!labels.contains("Op299"), "{labels:?}");
    server.stop_ok().await;
}

crate::e2e!(trusted_documents_are_labelled_by_their_stored_names);
/// With trusted documents only, a stored document is labelled with its stored name,
/// whatever `operationName` the client sends with its hash.
async fn trusted_documents_are_labelled_by_their_stored_names() {
    let db = TestDb::new(Backend::Sqlite).await;
    // Migrate first: `documents add` needs the schema.
    keystone(&db, &["migrate", "up"]).await.assert_success();
    let text = "query Stored { __typename }";
    let file = db.dir().join("stored.graphql");
    std::fs::write(&file, text).expect("write");
    keystone(&db, &["documents", "add", file.to_str().expect("utf-8")])
        .await
        .assert_success();
    // Admins may run any document: the token below is made through the API.
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
    let hash = crate::support::sha256_hex(text);
    for operation_name in [None, Some("Stored"), Some("Evil".repeat(1000).as_str())] {
        http_as(&viewer)
            .post(server.url("/graphql"))
            .json(&json!({
                "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } },
                "operationName": operation_name,
            }))
            .send()
            .await
            .expect("POST");
    }
    let metrics = parse_metrics(&scrape(&server).await);
    let count = |operation: &str, outcome: &str| {
        metrics
            .get(&format!(
                "keystone_graphql_requests_total{{operation=\"{operation}\",type=\"{}\",outcome=\"{outcome}\"}}",
                if operation == "other" { "unknown" } else { "query" }
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(count("Stored", "ok"), 2.0, "{metrics:?}");
    assert_eq!(
        count("other", "GRAPHQL_VALIDATION_FAILED"),
        1.0,
        "{metrics:?}"
    );
    server.stop_ok().await;
}

crate::e2e!(metrics_on_the_main_listener_require_their_token);
/// `/metrics` on the API's own address requires the metrics token when one is configured.
async fn metrics_on_the_main_listener_require_their_token() {
    let db = TestDb::new(Backend::Sqlite).await;
    let token_file = db.dir().join("metrics.token");
    std::fs::write(&token_file, "scrape-secret\n").expect("token file");
    let server = Server::start(
        &db,
        &["--metrics-token-file", token_file.to_str().expect("utf-8")],
    )
    .await
    .expect("server starts");
    let url = server.url("/metrics");
    let without = http().get(&url).send().await.expect("GET");
    assert_eq!(without.status(), 401);
    // An API token is not the metrics token.
    let admin = http_as(&server.admin_token)
        .get(&url)
        .send()
        .await
        .expect("GET");
    assert_eq!(admin.status(), 401);
    let with = http_as("scrape-secret")
        .get(&url)
        .send()
        .await
        .expect("GET");
    assert_eq!(with.status(), 200);
    server.stop_ok().await;
}
