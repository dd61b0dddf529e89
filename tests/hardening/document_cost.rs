//! A document's cost is bounded by its size: whatever fragments it spreads (unknown ones,
//! diamonds, cycles, under directives and inline fragments), it is answered within a small
//! multiple of a plain query's CPU time, and the server stays responsive and stoppable.

use std::time::Duration;

use futures_util::future::join_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::support::protocol::{claim, deploy};
use crate::support::{Backend, Server, TestDb, global_id, http, insert_port_apps, only_error};

/// What a release build may spend on any document of up to 2 KB: 50 ms, as a multiple of a
/// plain small query (`{ viewer { name } }`, about a quarter of a millisecond of the server's
/// CPU in a release build) measured on the same server in the same run.
const MAX_RATIO_TO_A_PLAIN_QUERY: f64 = 200.0;

/// The server's CPU time for `send`'s request, the median of `times` runs of it.
async fn cpu_for<F, Fut>(server: &Server, times: usize, send: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(times);
    for _ in 0..times {
        let before = server.cpu_time();
        send().await;
        samples.push(server.cpu_time().saturating_sub(before));
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// The body of fragment `index` of `fragments`: fields, spreads of earlier fragments (the
/// graph is then acyclic, and runs), now and then of a later one, of itself or of an unknown
/// one, inline fragments, with and without directives.
fn body(index: usize, fragments: usize) -> BoxedStrategy<String> {
    let earlier = if index == 0 {
        Just("__typename".to_owned()).boxed()
    } else {
        (0..index).prop_map(|n| format!("...F{n}")).boxed()
    };
    let leaf = prop_oneof![
        10 => Just("__typename".to_owned()),
        10 => Just("viewer { name }".to_owned()),
        5 => Just("viewer { name @skip(if: $v) role }".to_owned()),
        60 => earlier.clone(),
        10 => earlier.prop_map(|spread| format!("{spread} @include(if: $v)")),
        1 => (0..fragments + 1).prop_map(|n| format!("...F{n}")),
        1 => Just("...Nope".to_owned()),
    ];
    let selection = leaf.prop_recursive(3, 12, 4, |inner| {
        prop::collection::vec(inner, 1..4).prop_map(|items| {
            let directive = if items.len() % 2 == 0 {
                " @skip(if: $v)"
            } else {
                ""
            };
            format!("... on Query{directive} {{ {} }}", items.join(" "))
        })
    });
    prop::collection::vec(selection, 1..5)
        .prop_map(|items| items.join(" "))
        .boxed()
}

/// A document of up to 2 KB: an operation spreading its fragments, and a graph of
/// fragments on `Query` that spread each other.
fn fragment_graph() -> impl Strategy<Value = String> {
    (1usize..12).prop_flat_map(|fragments| {
        (
            (0..fragments)
                .map(|index| body(index, fragments))
                .collect::<Vec<_>>(),
            prop::collection::vec(0..fragments, 0..4),
        )
            .prop_map(move |(bodies, again)| {
                // Every fragment is used (an unused one fails validation), some twice.
                let spreads: Vec<String> = (0..fragments)
                    .chain(again)
                    .map(|n| format!("...F{n}"))
                    .collect();
                let mut document = format!(
                    "query Q($v: Boolean = false) {{ __typename @skip(if: $v) {} }}\n",
                    spreads.join(" ")
                );
                for (n, body) in bodies.iter().enumerate() {
                    document.push_str(&format!("fragment F{n} on Query {{ {body} }}\n"));
                }
                document
            })
            .prop_filter("at most 2 KB", |document| document.len() <= 2048)
    })
}

/// The finding: a family whose leaf spreads an unknown fragment measured as no fields, and
/// then every walk after the size check went through all 2^22 spreads (2.3 s of CPU for 900
/// bytes; two such requests froze the server). Now it is refused as soon as it is parsed.
fn unknown_fragment_family(depth: usize) -> String {
    let mut document = format!("query {{ ...F{depth} }}\nfragment F0 on Query {{ ...Nope }}\n");
    for level in 1..=depth {
        let previous = level - 1;
        document.push_str(&format!(
            "fragment F{level} on Query {{ ...F{previous} ...F{previous} }}\n"
        ));
    }
    document
}

async fn documents_cost_at_most_a_multiple_of_a_plain_query(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("reader", "VIEWER").await;
    let plain = cpu_for(&server, 21, || async {
        let (status, body) = server
            .graphql_as(&viewer, "{ viewer { name } }", json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
    let budget = plain.mul_f64(MAX_RATIO_TO_A_PLAIN_QUERY);

    for depth in [22, 30] {
        let document = unknown_fragment_family(depth);
        let (_, body) = server.graphql_as(&viewer, &document, json!({})).await;
        assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown fragment Nope")),
            "{body}"
        );
    }

    let cases = std::env::var("KEYSTONE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .map_or(300, |n| n.min(1000));
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let heaviest = std::cell::Cell::new(Duration::ZERO);
    let executed = std::cell::Cell::new(0u32);
    let result = runner.run(&fragment_graph(), |document| {
        let spent = tokio::task::block_in_place(|| {
            handle.block_on(cpu_for(&server, 3, || async {
                let (status, body) = server.graphql_as(&viewer, &document, json!({})).await;
                assert_eq!(status, 200, "{document}\n{body}");
                assert!(
                    body["errors"].is_array() || body["data"].is_object(),
                    "{body}"
                );
                if body["data"].is_object() {
                    executed.set(executed.get() + 1);
                }
            }))
        });
        heaviest.set(heaviest.get().max(spent));
        prop_assert!(
            spent <= budget,
            "{spent:?} of CPU, over {MAX_RATIO_TO_A_PLAIN_QUERY} times a plain query's \
             ({plain:?}), for\n{document}"
        );
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let heaviest = heaviest.get();
    eprintln!(
        "a plain query: {plain:?} of CPU; the heaviest of {cases} fragment graphs: {heaviest:?} \
         ({:.1}×); {} requests executed",
        heaviest.as_secs_f64() / plain.as_secs_f64().max(1e-9),
        executed.get()
    );
    // The graphs are not all refused: the property covers documents that run.
    assert!(executed.get() >= cases / 2, "{} executed", executed.get());
    server.stop_ok().await;
}

/// While clients send the costliest documents they can, `/health` answers and SIGTERM
/// stops the server: no document's checks hold the runtime's workers.
async fn hostile_documents_leave_the_server_responsive_and_stoppable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let viewer = server.create_token("reader", "VIEWER").await;
    let stop = tokio::sync::watch::channel(false);
    let attackers: Vec<_> = (0..4)
        .map(|n| {
            let url = server.url("/graphql");
            let client = crate::support::http_as(&viewer);
            let document = unknown_fragment_family(24 + n);
            let mut stop = stop.1.clone();
            tokio::spawn(async move {
                let mut sent = 0u32;
                while !*stop.borrow_and_update() {
                    let _ = client
                        .post(&url)
                        .json(&json!({ "query": document }))
                        .send()
                        .await;
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let response = http()
            .get(server.url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .expect("/health answers within 2 s under attack");
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    server.signal("TERM").await;
    let (status, log) = server.exited().await;
    let _ = stop.0.send(true);
    for attacker in attackers {
        assert!(attacker.await.expect("attacker") > 0);
    }
    assert!(status.success(), "{log}");
}

// No database is involved beyond the token check: SQLite is enough.
crate::e2e!(documents_cost_at_most_a_multiple_of_a_plain_query_sqlite);
async fn documents_cost_at_most_a_multiple_of_a_plain_query_sqlite() {
    documents_cost_at_most_a_multiple_of_a_plain_query(Backend::Sqlite).await;
}

crate::e2e!(hostile_documents_leave_the_server_responsive_and_stoppable_sqlite);
async fn hostile_documents_leave_the_server_responsive_and_stoppable_sqlite() {
    hostile_documents_leave_the_server_responsive_and_stoppable(Backend::Sqlite).await;
}

crate::on_both_backends!(
    multiplying_fragments_are_refused_before_validation,
    every_fields_cost_is_counted,
);

/// A document of fragments that each spread the previous one twice: `F<depth>` expands to
/// 2^depth selections in under 1.5 KB.
fn fragment_family(depth: usize) -> String {
    let mut document =
        format!("query {{ ...F{depth} }}\nfragment F0 on Query {{ viewer {{ name }} }}\n");
    for level in 1..=depth {
        let previous = level - 1;
        document.push_str(&format!(
            "fragment F{level} on Query {{ ...F{previous} ...F{previous} }}\n"
        ));
    }
    document
}

/// Validation used to walk every spread: a 24-level family took 90 s of CPU and froze the
/// server. Now the expanded size is computed once per fragment and refused first, while
/// `/health` keeps answering.
async fn multiplying_fragments_are_refused_before_validation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let family: Vec<String> = [8, 12, 16, 20, 24, 32, 60]
        .into_iter()
        .map(fragment_family)
        .collect();
    // All at once, twice over, with health checks in between.
    let attacks = join_all(
        family
            .iter()
            .chain(family.iter())
            .map(|document| server.graphql_as(&server.admin_token, document, json!({}))),
    );
    let health = async {
        for _ in 0..5 {
            let response = http().get(server.url("/health")).send().await;
            assert_eq!(response.expect("/health answers").status(), 200);
        }
    };
    let (answers, ()) = tokio::join!(attacks, health);
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert!(body.get("data").is_none(), "never ran: {body}");
        assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("once its fragments are expanded"),
            "{body}"
        );
    }
    // A cycle is refused too, and a small family still runs.
    let cycle = "query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }";
    let (_, body) = server
        .graphql_as(&server.admin_token, cycle, json!({}))
        .await;
    assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
    let body = server.graphql(&fragment_family(3), json!({})).await;
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");
    server.stop_ok().await;
}

/// `logs` reads from the end of the file within a byte limit, `tail` and id lists count
/// towards the complexity, and a response carries a bounded amount of log text.
async fn every_fields_cost_is_counted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--max-query-complexity", "20000"])
        .await
        .expect("server starts");
    insert_port_apps(&db, 2).await;
    deploy(&server, 1).await;
    let runner = server.create_token("builder", "RUNNER").await;
    let (id, path) = claim(&server, &runner).await;
    // An 18 MB log, as a runner that printed without end would leave it.
    let line = format!("{}\n", "x".repeat(99));
    std::fs::create_dir_all(std::path::Path::new(&path).parent().expect("dir")).expect("logs dir");
    std::fs::write(&path, line.repeat(180_000)).expect("write a big log");
    let query = "query($id: ID!, $tail: Int!) { deployment(id: $id) { logs(tail: $tail) } }";
    let body = server
        .graphql(
            query,
            json!({ "id": global_id("Deployment", id), "tail": 10000 }),
        )
        .await;
    let lines = Server::data(&body)["deployment"]["logs"]
        .as_array()
        .expect("lines")
        .len();
    assert_eq!(lines, 10000, "a 1 MB read holds 10,000 lines of 100 bytes");
    // tail counts: 2 × 10,001 > 20,000.
    let twice = "query($id: ID!) { a: deployment(id: $id) { logs(tail: 10000) } b: deployment(id: $id) { logs(tail: 10000) } }";
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            twice,
            json!({ "id": global_id("Deployment", id) }),
        )
        .await;
    assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
    // 10 fields of 10,000 lines would be 10 MB: the response stops at 4 MiB of log text.
    let server_wide = Server::start(&db, &[]).await.expect("second server");
    let many = format!(
        "query($id: ID!) {{ {} }}",
        (0..10)
            .map(|i| format!("d{i}: deployment(id: $id) {{ logs(tail: 10000) }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let response = server_wide
        .admin()
        .post(server_wide.url("/graphql"))
        .json(&json!({ "query": many, "variables": { "id": global_id("Deployment", id) } }))
        .send()
        .await
        .expect("POST");
    let text = response.text().await.expect("body");
    assert!(text.len() < 5 << 20, "response of {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).expect("JSON");
    let codes: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["extensions"]["code"].as_str())
        .collect();
    assert!(codes.contains(&"RESPONSE_TOO_LARGE"), "{codes:?}");
    server_wide.stop_ok().await;
    // Each of 100 ids counts: 100 × (a connection of 100) is over the limit.
    let ids: Vec<String> = (1..=100).map(|n| global_id("App", n)).collect();
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            "query($ids: [ID!]!) { nodes(ids: $ids) { ... on App { deployments(first: 100) { nodes { id } } } } }",
            json!({ "ids": ids }),
        )
        .await;
    assert_eq!(only_error(&body).0, "GRAPHQL_VALIDATION_FAILED", "{body}");
    server.stop_ok().await;
}
