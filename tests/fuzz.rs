//! Property-based fuzzing of the GraphQL endpoint's input handling (proptest): arbitrary
//! bytes, and GraphQL-shaped documents with arbitrary variables, sent as an admin over POST
//! and GET. Whatever arrives, the server answers with a well-formed GraphQL error or result
//! and a 2xx/4xx status, never a 5xx or a dropped connection, and keeps serving.
//!
//! Bounded: `KEYSTONE_FUZZ_CASES` cases per backend (default 1000, a few seconds). Failures
//! shrink to a minimal input, printed by proptest.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb};

on_both_backends!(graphql_endpoint_survives_arbitrary_input);

const WORDS: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ":",
    "$",
    "!",
    "@",
    "...",
    "=",
    ",",
    "|",
    "&",
    "#",
    "query",
    "mutation",
    "subscription",
    "fragment",
    "on",
    "repositories",
    "repository",
    "apps",
    "app",
    "deployments",
    "deployment",
    "node",
    "nodes",
    "viewer",
    "apiTokens",
    "auditEvents",
    "createRepository",
    "updateRepository",
    "deleteRepository",
    "createApp",
    "deployApp",
    "createApiToken",
    "revokeApiToken",
    "input",
    "name",
    "gitUrl",
    "id",
    "appId",
    "first",
    "last",
    "after",
    "before",
    "filter",
    "orderBy",
    "totalCount",
    "edges",
    "cursor",
    "__schema",
    "__type",
    "__typename",
    "true",
    "false",
    "null",
    "\"x\"",
    "\"\\u0000\"",
    "\"UmVwb3NpdG9yeTox\"",
    "-1",
    "0",
    "101",
    "2147483648",
    "1e309",
    "ADMIN",
    "PORT",
    "@include(if: true)",
    "@skip(if: $v)",
    "\"\"\"block\"\"\"",
];

#[derive(Clone, Debug)]
enum Input {
    /// A POST body that may not be JSON at all.
    Bytes(Vec<u8>),
    /// A GraphQL request: POST as JSON, or GET in the query string.
    Request {
        query: String,
        variables: Value,
        operation_name: Option<String>,
        get: bool,
    },
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(WORDS).prop_map(str::to_owned),
            1 => "[a-zA-Z_][a-zA-Z0-9_]{0,10}",
            1 => ".{0,6}",
        ],
        0..60,
    )
    .prop_map(|words| words.join(" "))
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Input::Bytes),
        4 => (
            document(),
            json_value(),
            prop::option::of("[a-zA-Z]{0,8}"),
            any::<bool>()
        )
            .prop_map(|(query, variables, operation_name, get)| Input::Request {
                query,
                variables,
                operation_name,
                get,
            }),
    ]
}

async fn send(server: &Server, client: &reqwest::Client, input: &Input) -> (u16, String) {
    let url = server.url("/graphql");
    let request = match input {
        Input::Bytes(bytes) => client
            .post(&url)
            .header("content-type", "application/json")
            .body(bytes.clone()),
        Input::Request {
            query,
            variables,
            operation_name,
            get: false,
        } => client.post(&url).json(&json!({
            "query": query,
            "variables": variables,
            "operationName": operation_name,
        })),
        Input::Request {
            query,
            variables,
            operation_name,
            get: true,
        } => {
            let mut params = vec![
                ("query", query.clone()),
                ("variables", variables.to_string()),
            ];
            if let Some(name) = operation_name {
                params.push(("operationName", name.clone()));
            }
            client.get(&url).query(&params)
        }
    };
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

async fn graphql_endpoint_survives_arbitrary_input(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let client = server.admin();
    let cases = std::env::var("KEYSTONE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let result = runner.run(&input(), |input| {
        let (status, body) =
            tokio::task::block_in_place(|| handle.block_on(send(&server, &client, &input)));
        prop_assert!(
            matches!(status, 200 | 400 | 405 | 406 | 413 | 415),
            "status {status} for {input:?}: {body}"
        );
        let parsed: Value = serde_json::from_str(&body)
            .map_err(|e| TestCaseError::fail(format!("not JSON ({e}) for {input:?}: {body}")))?;
        prop_assert!(
            parsed["errors"].is_array() || parsed.get("data").is_some(),
            "neither errors nor data for {input:?}: {body}"
        );
        if let Some(errors) = parsed["errors"].as_array() {
            for error in errors {
                prop_assert!(error["message"].is_string(), "{body}");
                prop_assert!(
                    error["extensions"]["code"] != "INTERNAL",
                    "an input caused an internal error: {input:?}: {body}"
                );
            }
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // Still serving.
    let body = server.graphql("{ viewer { name } }", json!({})).await;
    assert_eq!(Server::data(&body)["viewer"]["name"], "admin");
    server.stop_ok().await;
}
