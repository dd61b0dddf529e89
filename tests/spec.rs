//! Responses exactly as the GraphQL specification says: keys in selection-set order
//! (§7.2.2) through loaders, merged roots, nested connections, fragments, aliases and an
//! interface; variables that cannot be coerced are a request error (§6.1.2): nothing runs,
//! no `data`, HTTP 400 under `application/graphql-response+json`.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use crate::on_both_backends;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Server, Socket, TestDb, ws_connect, ws_subscribe};

/// A JSON value that remembers the order of object keys (the test's own `serde_json` sorts
/// them).
#[derive(Debug)]
enum Ordered {
    Object(Vec<(String, Ordered)>),
    List(Vec<Ordered>),
    Scalar,
}

impl Ordered {
    fn keys(&self) -> Vec<&str> {
        match self {
            Ordered::Object(entries) => entries.iter().map(|(k, _)| k.as_str()).collect(),
            other => panic!("not an object: {other:?}"),
        }
    }

    #[track_caller]
    fn get(&self, key: &str) -> &Ordered {
        match self {
            Ordered::Object(entries) => entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {key:?} in {self:?}")),
            other => panic!("not an object: {other:?}"),
        }
    }

    #[track_caller]
    fn at(&self, index: usize) -> &Ordered {
        match self {
            Ordered::List(items) => &items[index],
            other => panic!("not a list: {other:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Ordered>()? {
                    entries.push((k, v));
                }
                Ok(Ordered::Object(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Ordered>()? {
                    items.push(item);
                }
                Ok(Ordered::List(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
        }
        deserializer.deserialize_any(OrderedVisitor)
    }
}

/// POSTs `query` as admin; the response's `data`, keys in the order they were written.
async fn ordered_data(server: &Server, query: &str, variables: Value) -> Ordered {
    let text = server
        .admin()
        .post(server.url("/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("POST /graphql")
        .text()
        .await
        .expect("a body");
    let plain: Value = serde_json::from_str(&text).expect("JSON");
    assert!(plain.get("errors").is_none(), "unexpected errors: {text}");
    match serde_json::from_str(&text).expect("JSON") {
        Ordered::Object(entries) => entries.into_iter().find(|(k, _)| k == "data").unwrap().1,
        other => panic!("not an object: {other:?}"),
    }
}

async fn response_keys_follow_the_selection_set(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("web", "web-app").await;
    server.create_app("web", "other-app").await;
    for _ in 0..2 {
        server
            .graphql(
                "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
                json!({ "id": app }),
            )
            .await;
    }

    // Root fields from different parts of the merged Query, one of them waiting on SQL.
    let data = ordered_data(
        &server,
        "{ z: viewer { name } apps(first: 1) { totalCount } y: viewer { role } }",
        json!({}),
    )
    .await;
    assert_eq!(data.keys(), ["z", "apps", "y"]);

    // A nested connection whose count waits on a loader; aliases; a fragment in the middle.
    let data = ordered_data(
        &server,
        "query($id: ID!) { app(id: $id) {
            deployments { totalCount pageInfo { hasNextPage } nodes { status } }
            ...Named
            second: deployments(first: 1) { nodes { createdAt id } totalCount }
            id
        } }
        fragment Named on App { name repository { apps { totalCount nodes { name } } name } }",
        json!({ "id": app }),
    )
    .await;
    let app_data = data.get("app");
    assert_eq!(
        app_data.keys(),
        ["deployments", "name", "repository", "second", "id"]
    );
    assert_eq!(
        app_data.get("deployments").keys(),
        ["totalCount", "pageInfo", "nodes"]
    );
    assert_eq!(app_data.get("second").keys(), ["nodes", "totalCount"]);
    assert_eq!(
        app_data.get("second").get("nodes").at(0).keys(),
        ["createdAt", "id"]
    );
    assert_eq!(app_data.get("repository").keys(), ["apps", "name"]);
    assert_eq!(
        app_data.get("repository").get("apps").keys(),
        ["totalCount", "nodes"]
    );

    // An interface: which fragments apply depends on the object's type, and nothing the
    // server adds to find that out shows.
    let data = ordered_data(
        &server,
        "query($id: ID!) { node(id: $id) {
            ... on Repository { gitUrl }
            id
            ... on App { latest: deployments(first: 1) { totalCount } name }
            ... on Node { id }
        } }",
        json!({ "id": app }),
    )
    .await;
    assert_eq!(data.get("node").keys(), ["id", "latest", "name"]);

    // @skip and @include: a key keeps the place of its first selection that runs.
    let data = ordered_data(
        &server,
        "query($no: Boolean!) { app(name: \"web-app\") {
            name @include(if: $no)
            deployments { totalCount }
            id
            name
        } }",
        json!({ "no": false }),
    )
    .await;
    assert_eq!(data.get("app").keys(), ["deployments", "id", "name"]);

    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// The next `next` message's payload `data` from a WebSocket, keys in order.
async fn ws_ordered_data(socket: &mut Socket) -> Ordered {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a message");
        let Message::Text(text) = message else {
            continue;
        };
        let plain: Value = serde_json::from_str(&text).expect("JSON");
        if plain["type"] != "next" {
            continue;
        }
        assert!(plain["payload"].get("errors").is_none(), "{text}");
        let Ordered::Object(entries) = serde_json::from_str(&text).expect("JSON") else {
            panic!("not an object: {text}");
        };
        let payload = entries.into_iter().find(|(k, _)| k == "payload").unwrap().1;
        let Ordered::Object(entries) = payload else {
            panic!("no payload: {text}");
        };
        return entries.into_iter().find(|(k, _)| k == "data").unwrap().1;
    }
}

/// Over WebSocket too: a query, and the events of a subscription.
async fn websocket_responses_follow_the_selection_set(backend: Backend) {
    use futures_util::SinkExt;
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("web", "web-app").await;
    let mut socket = ws_connect(&server, &server.admin_token).await;
    socket
        .send(ws_subscribe(
            "q",
            "{ z: viewer { name } apps(first: 1) { totalCount } y: viewer { role } }",
        ))
        .await
        .expect("send");
    assert_eq!(
        ws_ordered_data(&mut socket).await.keys(),
        ["z", "apps", "y"]
    );

    socket
        .send(ws_subscribe(
            "s",
            "subscription { deploymentUpdated {
                z: app { name } app { deployments { totalCount pageInfo { hasNextPage } } name } status id } }",
        ))
        .await
        .expect("send");
    // Subscribed once the server answers a query sent after the subscription.
    socket
        .send(ws_subscribe("p", "{ viewer { name } }"))
        .await
        .expect("send");
    ws_ordered_data(&mut socket).await;
    server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    let event = ws_ordered_data(&mut socket).await;
    let deployment = event.get("deploymentUpdated");
    assert_eq!(deployment.keys(), ["z", "app", "status", "id"]);
    assert_eq!(deployment.get("app").keys(), ["deployments", "name"]);
    assert_eq!(
        deployment.get("app").get("deployments").keys(),
        ["totalCount", "pageInfo"]
    );

    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// POSTs a request asking for `application/graphql-response+json`: status and body.
async fn post_graphql_response(server: &Server, body: Value) -> (u16, Value) {
    let response = server
        .admin()
        .post(server.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&body)
        .send()
        .await
        .expect("POST /graphql");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

async fn uncoercible_variables_are_request_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let create = "mutation($input: CreateRepositoryInput!, $n: Int!) {
        createRepository(input: $input) { repository { id } }
        other: viewer { name }
    }";
    let query = "query($id: ID!, $first: Int) { viewer { name } app(id: $id) { name }
        apps(first: $first) { totalCount } }";
    let cases = [
        // A required variable missing.
        (json!({ "query": query, "variables": { "first": 1 } }), "id"),
        // A null for a non-null variable.
        (json!({ "query": query, "variables": { "id": null } }), "id"),
        // A wrong type.
        (
            json!({ "query": query, "variables": { "id": "x", "first": "ten" } }),
            "first",
        ),
        // An input object missing a required field; an unknown field.
        (
            json!({ "query": "mutation($input: CreateRepositoryInput!) { createRepository(input: $input) { repository { id } } }",
                    "variables": { "input": { "name": "r" } } }),
            "input",
        ),
        (
            json!({ "query": "mutation($input: CreateRepositoryInput!) { createRepository(input: $input) { repository { id } } }",
                    "variables": { "input": { "name": "r", "gitUrl": "https://e.com/r.git", "colour": "red" } } }),
            "input",
        ),
        // An enum value that does not exist.
        (
            json!({ "query": "query($s: [AppStatus!]) { apps(filter: { status: $s }) { totalCount } }",
                    "variables": { "s": ["RUNNING", "ASLEEP"] } }),
            "s",
        ),
        // A mutation whose second variable is missing: the first field must not run.
        (
            json!({ "query": create, "variables": { "input": { "name": "r", "gitUrl": "https://e.com/r.git" } } }),
            "n",
        ),
    ];
    for (body, variable) in cases {
        let (status, response) = post_graphql_response(&server, body.clone()).await;
        assert_eq!(status, 400, "{body}: {response:#}");
        assert!(response.get("data").is_none(), "no data: {response:#}");
        let errors = response["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 1, "{response:#}");
        assert_eq!(
            errors[0]["extensions"]["code"], "BAD_USER_INPUT",
            "{response:#}"
        );
        assert_eq!(
            errors[0]["extensions"]["variable"], variable,
            "{response:#}"
        );
        assert!(
            errors[0]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("${variable}")),
            "{response:#}"
        );
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_repository").await,
        0,
        "nothing executed"
    );

    // Under application/json the same request error is HTTP 200, still without data.
    let (status, response) = server
        .graphql_as(&server.admin_token, query, json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(response.get("data").is_none(), "{response:#}");
    assert_eq!(response["errors"][0]["extensions"]["variable"], "id");

    // Defaults and nullable variables may be left out; a single value is a list of one.
    let body = server
        .graphql(
            "query($first: Int = 1, $after: String, $s: [AppStatus!]) {
                apps(first: $first, after: $after, filter: { status: $s }) { totalCount } }",
            json!({ "s": "DRAFT" }),
        )
        .await;
    assert_eq!(Server::data(&body)["apps"]["totalCount"], 0);

    // A batch is refused with a clear message.
    let (status, response) =
        post_graphql_response(&server, json!([{ "query": "{ viewer { name } }" }])).await;
    assert_eq!(status, 400);
    assert_eq!(response["errors"][0]["extensions"]["code"], "BAD_REQUEST");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("batched requests are not supported"),
        "{response:#}"
    );

    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

on_both_backends!(
    response_keys_follow_the_selection_set,
    websocket_responses_follow_the_selection_set,
    uncoercible_variables_are_request_errors,
);
