//! The deployment lifecycle: port allocation (race-free, kept, released, reused, exhausted),
//! the app state machine, and the supersede policy for repeated deploys.

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb, global_id, insert_port_apps, only_error};

on_both_backends!(
    concurrent_deploys_get_distinct_ports,
    ports_are_kept_released_and_reused,
    app_transitions_and_the_supersede_policy,
    app_mutations_take_app_id_and_still_id,
);

const DEPLOY: &str = "mutation($app: ID!) { deployApp(input: { appId: $app }) { deployment { databaseId status assignedPort errorSummary } app { status currentPort } } }";

async fn deploy(server: &Server, n: i64) -> Value {
    server
        .graphql(DEPLOY, json!({ "app": global_id("App", n) }))
        .await
}

/// 200 concurrent `deployApp` calls on 200 PORT apps: 200 distinct ports in the range, and
/// the database agrees (its unique index would refuse anything else).
async fn concurrent_deploys_get_distinct_ports(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 200).await;
    let responses = join_all((1..=200).map(|n| deploy(&server, n))).await;
    let mut ports: Vec<i64> = responses
        .iter()
        .map(|body| {
            let data = Server::data(body);
            let port = data["deployApp"]["deployment"]["assignedPort"]
                .as_i64()
                .expect("a port");
            assert_eq!(data["deployApp"]["app"]["currentPort"], port);
            port
        })
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 200, "every app got its own port");
    assert!(ports.iter().all(|p| (9000..=9999).contains(p)));
    assert_eq!(
        db.rows("SELECT CAST(COUNT(DISTINCT current_port) AS TEXT), CAST(COUNT(*) AS TEXT), CAST(MIN(current_port) AS TEXT), CAST(MAX(current_port) AS TEXT) FROM api_app")
            .await,
        ["200|200|9000|9199"],
        "the lowest 200 ports, each held once"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_deployment d JOIN api_app a ON a.id = d.app_id WHERE d.assigned_port = a.current_port")
            .await,
        200
    );
    // The database itself refuses a second holder of a port.
    let conn = db.connect().await;
    use sea_orm::ConnectionTrait;
    let duplicate = conn
        .execute_unprepared("UPDATE api_app SET current_port = 9000 WHERE current_port = 9001")
        .await;
    assert!(duplicate.is_err(), "the unique index holds");
    conn.close().await.ok();
    server.stop_ok().await;
}

async fn ports_are_kept_released_and_reused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--port-range", "9000-9001"])
        .await
        .expect("server starts");
    insert_port_apps(&db, 3).await;
    let port_of =
        |body: &Value| Server::data(body)["deployApp"]["deployment"]["assignedPort"].clone();
    assert_eq!(port_of(&deploy(&server, 1).await), 9000);
    assert_eq!(
        port_of(&deploy(&server, 1).await),
        9000,
        "kept across redeploys"
    );
    assert_eq!(port_of(&deploy(&server, 2).await), 9001);

    // Exhausted: a clear error, and nothing changes for app 3.
    let body = deploy(&server, 3).await;
    assert_eq!(only_error(&body).0, "CONFLICT");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("9000-9001"), "{message}");
    assert_eq!(
        db.rows(
            "SELECT status, COALESCE(CAST(current_port AS TEXT), '-') FROM api_app WHERE id = 3"
        )
        .await,
        ["draft|-"]
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_deployment WHERE app_id = 3")
            .await,
        0
    );

    // Switching to HOST releases the port; the next PORT app reuses it.
    let body = server
        .graphql(
            "mutation($id: ID!) { updateApp(input: { id: $id, accessMode: HOST }) { app { currentPort } } }",
            json!({ "id": global_id("App", 1) }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["updateApp"]["app"]["currentPort"],
        Value::Null
    );
    assert_eq!(
        port_of(&deploy(&server, 3).await),
        9000,
        "released, then reused"
    );
    // A HOST app gets no port.
    assert_eq!(port_of(&deploy(&server, 1).await), Value::Null);

    // Deleting an app releases its port too.
    let body = server
        .graphql(
            "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
            json!({ "id": global_id("App", 2) }),
        )
        .await;
    Server::data(&body);
    db.exec("INSERT INTO api_app (id, name, access_mode, status, repo_id) VALUES (4, 'app-4', 'PORT', 'draft', 1)")
        .await;
    assert_eq!(port_of(&deploy(&server, 4).await), 9001);
    server.stop_ok().await;
}

/// `draft → deploying` on deploy; a second deploy supersedes a queued deployment (cancelled,
/// naming its successor) but is a `CONFLICT` while one runs; `stopApp` only from `running`.
/// Every refusal names the current state and changes nothing.
async fn app_transitions_and_the_supersede_policy(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    insert_port_apps(&db, 1).await;
    let stop = "mutation($id: ID!) { stopApp(input: { id: $id }) { app { status } } }";
    let body = server
        .graphql(stop, json!({ "id": global_id("App", 1) }))
        .await;
    assert_eq!(
        only_error(&body),
        ("CONFLICT".to_owned(), Some("id".to_owned()))
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("draft")
    );

    let first = deploy(&server, 1).await;
    let first_id = Server::data(&first)["deployApp"]["deployment"]["databaseId"].clone();
    assert_eq!(
        Server::data(&first)["deployApp"]["app"]["status"],
        "DEPLOYING"
    );
    let second = deploy(&server, 1).await;
    let second_id = Server::data(&second)["deployApp"]["deployment"]["databaseId"].clone();
    assert_eq!(
        db.rows(&format!(
            "SELECT status, error_summary, CASE WHEN ended_at IS NULL THEN 'open' ELSE 'ended' END FROM api_deployment WHERE id = {first_id}"
        ))
        .await,
        [format!("cancelled|superseded by deployment {second_id}|ended")]
    );

    // While a deployment runs, another deploy is refused, naming it.
    db.exec(&format!(
        "UPDATE api_deployment SET status = 'running' WHERE id = {second_id}"
    ))
    .await;
    let before = db
        .rows("SELECT CAST(id AS TEXT), status FROM api_deployment ORDER BY id")
        .await;
    let body = deploy(&server, 1).await;
    assert_eq!(
        only_error(&body),
        ("CONFLICT".to_owned(), Some("appId".to_owned()))
    );
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("deployment {second_id} is running")),
        "{message}"
    );
    assert_eq!(
        db.rows("SELECT CAST(id AS TEXT), status FROM api_deployment ORDER BY id")
            .await,
        before
    );

    // A running app stops; a stopped one cannot stop again.
    db.exec(&format!(
        "UPDATE api_deployment SET status = 'success' WHERE id = {second_id}; UPDATE api_app SET status = 'running' WHERE id = 1"
    ))
    .await;
    let body = server
        .graphql(stop, json!({ "id": global_id("App", 1) }))
        .await;
    assert_eq!(Server::data(&body)["stopApp"]["app"]["status"], "STOPPED");
    let body = server
        .graphql(stop, json!({ "id": global_id("App", 1) }))
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped")
    );
    // A stopped app may be deployed again; it keeps its port.
    let body = deploy(&server, 1).await;
    assert_eq!(
        Server::data(&body)["deployApp"]["app"]["status"],
        "DEPLOYING"
    );
    assert_eq!(Server::data(&body)["deployApp"]["app"]["currentPort"], 9000);
    server.stop_ok().await;
}

/// Every app mutation names its app `appId`; `stopApp`, `deleteApp` and `updateApp` still take
/// `id`, deprecated, for a release. One of the two, not both.
async fn app_mutations_take_app_id_and_still_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    for name in ["by-app-id", "by-id"] {
        server.create_app(name, name).await;
    }
    let id_of = async |name: &str| {
        let body = server
            .graphql(
                "query($n: String!) { app(name: $n) { id } }",
                json!({ "n": name }),
            )
            .await;
        Server::data(&body)["app"]["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let (new, old) = (id_of("by-app-id").await, id_of("by-id").await);
    for (key, app) in [("appId", &new), ("id", &old)] {
        let body = server
            .graphql(
                &format!(r#"mutation($a: ID!) {{ updateApp(input: {{ {key}: $a, healthCheckPath: "/up" }}) {{ app {{ healthCheckPath }} }} }}"#),
                json!({ "a": app }),
            )
            .await;
        assert_eq!(
            Server::data(&body)["updateApp"]["app"]["healthCheckPath"],
            "/up"
        );
        let body = server
            .graphql(
                &format!(
                    "mutation($a: ID!) {{ deleteApp(input: {{ {key}: $a }}) {{ deletedAppId }} }}"
                ),
                json!({ "a": app }),
            )
            .await;
        assert_eq!(
            Server::data(&body)["deleteApp"]["deletedAppId"],
            app.as_str()
        );
    }
    for input in [
        format!(r#"{{ appId: "{new}", id: "{new}" }}"#),
        "{}".to_owned(),
    ] {
        let body = server
            .graphql(
                &format!("mutation {{ stopApp(input: {input}) {{ app {{ id }} }} }}"),
                json!({}),
            )
            .await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".to_owned(), Some("appId".to_owned())),
            "{body}"
        );
    }
    server.stop_ok().await;
}
