//! Every read goes through the batched store: a query selecting **every** field of every type
//! reachable from a root connection (generated from `schema.graphql`, so a new field is
//! covered the day it appears) costs the same number of statements for 1 repository as
//! for 500 — one per nesting level and batched field, never one per row.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_graphql::parser::types::{BaseType, Type, TypeKind, TypeSystemDefinition};
use serde_json::json;

use crate::graphql::{seed, statements_for};
use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb};

on_both_backends!(every_field_costs_a_fixed_number_of_statements);

/// The root connections whose nodes the query selects in full.
const ROOTS: [&str; 3] = ["repositories", "apps", "deployments"];

/// What the SDL says about one output field.
struct Field {
    name: String,
    /// Its named type (lists and non-null unwrapped).
    type_name: String,
    /// Names of its arguments, and whether any is required.
    arguments: Vec<String>,
    required_arguments: bool,
}

struct Sdl {
    /// Object and interface types by name.
    objects: HashMap<String, Vec<Field>>,
}

fn named(ty: &Type) -> String {
    match &ty.base {
        BaseType::Named(name) => name.to_string(),
        BaseType::List(inner) => named(inner),
    }
}

impl Sdl {
    fn read() -> Sdl {
        let document = async_graphql::parser::parse_schema(include_str!("../schema.graphql"))
            .expect("schema.graphql parses");
        let mut objects = HashMap::new();
        for definition in document.definitions {
            let TypeSystemDefinition::Type(ty) = definition else {
                continue;
            };
            let ty = ty.node;
            let fields = match ty.kind {
                TypeKind::Object(object) => object.fields,
                TypeKind::Interface(interface) => interface.fields,
                _ => continue,
            };
            let fields = fields
                .into_iter()
                .map(|field| {
                    let field = field.node;
                    Field {
                        name: field.name.node.to_string(),
                        type_name: named(&field.ty.node),
                        required_arguments: field.arguments.iter().any(|argument| {
                            !argument.node.ty.node.nullable && argument.node.default_value.is_none()
                        }),
                        arguments: field
                            .arguments
                            .iter()
                            .map(|argument| argument.node.name.node.to_string())
                            .collect(),
                    }
                })
                .collect();
            objects.insert(ty.name.node.to_string(), fields);
        }
        Sdl { objects }
    }

    /// The selection of every field of `type_name`, recursing into object fields whose type
    /// is not already on the path (connections get `first: 3`). Fields that need arguments
    /// the generator cannot make up are listed in `left_out`.
    fn select_all(
        &self,
        type_name: &str,
        path: &mut Vec<String>,
        left_out: &mut BTreeSet<String>,
    ) -> String {
        path.push(type_name.to_owned());
        let mut parts = Vec::new();
        for field in &self.objects[type_name] {
            let key = format!("{type_name}.{}", field.name);
            if field.required_arguments {
                left_out.insert(key);
                continue;
            }
            let arguments = if field.arguments.iter().any(|a| a == "first") {
                "(first: 3)"
            } else {
                ""
            };
            if !self.objects.contains_key(&field.type_name) {
                parts.push(format!("{}{arguments}", field.name));
            } else if path.contains(&field.type_name) {
                left_out.insert(format!("{key} (cycle)"));
            } else {
                let inner = self.select_all(&field.type_name, path, left_out);
                parts.push(format!("{}{arguments} {{ {inner} }}", field.name));
            }
        }
        path.pop();
        parts.join(" ")
    }
}

async fn every_field_costs_a_fixed_number_of_statements(backend: Backend) {
    let sdl = Sdl::read();
    let query_fields = &sdl.objects["Query"];
    let mut left_out = BTreeSet::new();
    let queries: Vec<(&str, String)> = ROOTS
        .iter()
        .map(|root| {
            let field = query_fields
                .iter()
                .find(|f| f.name == *root)
                .expect("a root connection");
            let selection = sdl.select_all(&field.type_name, &mut Vec::new(), &mut left_out);
            (*root, format!("{{ {root}(first: 50) {{ {selection} }} }}"))
        })
        .collect();
    let runner_apps = sdl.select_all("RunnerApp", &mut Vec::new(), &mut left_out);
    // What the generator cannot select says why: arguments it cannot make up, or a type
    // already selected above it.
    let unexplained: Vec<&String> = left_out
        .iter()
        .filter(|f| !f.ends_with("(cycle)") && !f.ends_with(".logs"))
        .collect();
    assert!(unexplained.is_empty(), "fields left out: {unexplained:?}");

    let mut counts: Vec<Vec<u64>> = Vec::new();
    // One repository (3 apps, 36 deployments: every root reads fewer than a page) against
    // 500 (every root reads a full page of 50).
    for repositories in [1, 500] {
        let db = TestDb::new(backend).await;
        seed(&db, repositories, 3, 12).await;
        // Tokens stay cached: only the queries' statements are counted.
        let server = Server::start(
            &db,
            &[
                "--token-cache-ms",
                "600000",
                "--max-query-complexity",
                "1000000000",
                "--max-fields",
                "100000",
                "--max-query-depth",
                "64",
            ],
        )
        .await
        .expect("server starts");
        let mut these = Vec::new();
        for (root, query) in &queries {
            let body = server.graphql(query, json!({})).await;
            let nodes = Server::data(&body)[root]["nodes"]
                .as_array()
                .map(Vec::len)
                .expect("nodes");
            assert!(nodes > 0, "{root}: nothing read");
            db.wait_for_token_use().await;
            these.push(statements_for(&server, query).await);
        }
        // What a runner reconciles against: every app placed on it, with its configuration.
        db.exec(
            "INSERT INTO api_app_placement (app_id, runner_name, placed_at) \
             SELECT id, 'reader', CURRENT_TIMESTAMP FROM api_app",
        )
        .await;
        let runner = server.create_token("reader", "RUNNER").await;
        let placed = format!("{{ runnerApps {{ {runner_apps} }} }}");
        let (_, body) = server.graphql_as(&runner, &placed, json!({})).await;
        let apps = Server::data(&body)["runnerApps"].as_array().map(Vec::len);
        assert_eq!(apps, Some(repositories * 3));
        let used = "SELECT COUNT(*) FROM api_token WHERE last_used_at IS NOT NULL";
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.count(used).await < 2 {
            assert!(
                Instant::now() < deadline,
                "the runner's lastUsedAt never recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = server.sql_statements().await;
        let (_, body) = server.graphql_as(&runner, &placed, json!({})).await;
        Server::data(&body);
        these.push(server.sql_statements().await - before);
        counts.push(these);
        server.stop_ok().await;
    }
    for (i, root) in ROOTS.iter().chain(&["runnerApps"]).enumerate() {
        assert_eq!(
            counts[0][i], counts[1][i],
            "{root}: 1 and 500 repositories must cost the same statements ({counts:?})"
        );
    }
    eprintln!(
        "statements per full read of {ROOTS:?} and runnerApps: {:?}",
        counts[0]
    );
}
