//! The rate limit is per token, answers `RATE_LIMITED` with `retryAfterSeconds`, and is
//! audited.

use serde_json::{Value, json};

use crate::support::{Backend, Server, TestDb, codes};

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
