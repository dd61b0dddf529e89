//! The GraphQL API over real HTTP: every query and mutation, validation with codes and
//! fields (and nothing written), pagination, not-found and conflict, and the SQL statement
//! count of a nested query.

use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb, global_id, keystone, only_error};

async fn start(backend: Backend) -> (TestDb, Server) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    (db, server)
}

async fn finish(_db: TestDb, server: Server) {
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

const CREATE_REPOSITORY: &str = "mutation($input: CreateRepositoryInput!) {
    createRepository(input: $input) { repository { id databaseId name gitUrl defaultBranch } } }";
const CREATE_APP: &str = "mutation($input: CreateAppInput!) {
    createApp(input: $input) { app { id databaseId name status accessMode currentPort url repository { name } } } }";

async fn create_repository(server: &Server, name: &str, git_url: &str) -> Value {
    let body = server
        .graphql(
            CREATE_REPOSITORY,
            json!({ "input": { "name": name, "gitUrl": git_url } }),
        )
        .await;
    Server::data(&body)["createRepository"]["repository"].clone()
}

async fn create_app(server: &Server, name: &str, repository_id: &Value) -> Value {
    let body = server
        .graphql(
            CREATE_APP,
            json!({ "input": { "name": name, "repositoryId": repository_id } }),
        )
        .await;
    Server::data(&body)["createApp"]["app"].clone()
}

async fn row_counts(db: &TestDb) -> [i64; 3] {
    [
        db.count("SELECT COUNT(*) FROM api_repository").await,
        db.count("SELECT COUNT(*) FROM api_app").await,
        db.count("SELECT COUNT(*) FROM api_deployment").await,
    ]
}

async fn repositories_crud(backend: Backend) {
    let (db, server) = start(backend).await;
    let repo = create_repository(&server, "web", "https://github.com/acme/web.git").await;
    assert_eq!(repo["name"], "web");
    assert_eq!(
        repo["defaultBranch"], "main",
        "the default branch defaults to main"
    );
    let id = repo["id"].clone();
    let database_id = repo["databaseId"].as_i64().expect("databaseId");
    assert_eq!(
        db.rows(&format!(
            "SELECT name, git_url FROM api_repository WHERE id = {database_id}"
        ))
        .await,
        ["web|https://github.com/acme/web.git"]
    );

    let body = server
        .graphql(
            "mutation($input: UpdateRepositoryInput!) { updateRepository(input: $input) {
                repository { id name gitUrl defaultBranch } } }",
            json!({ "input": { "id": id, "gitUrl": "git@github.com:acme/web2.git", "defaultBranch": "release/2.0" } }),
        )
        .await;
    let updated = &Server::data(&body)["updateRepository"]["repository"];
    assert_eq!(updated["name"], "web", "fields not given stay as they were");
    assert_eq!(updated["gitUrl"], "git@github.com:acme/web2.git");
    assert_eq!(updated["defaultBranch"], "release/2.0");

    let body = server
        .graphql(
            "query($id: ID!) { repository(id: $id) { name defaultBranch }
               node(id: $id) { id ... on Repository { gitUrl } } }",
            json!({ "id": id }),
        )
        .await;
    let data = Server::data(&body);
    assert_eq!(data["repository"]["defaultBranch"], "release/2.0");
    assert_eq!(data["node"]["id"], id);
    assert_eq!(data["node"]["gitUrl"], "git@github.com:acme/web2.git");

    let body = server
        .graphql(
            "mutation($id: ID!) { deleteRepository(input: { id: $id }) { deletedRepositoryId deletedAppCount } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["deleteRepository"]["deletedRepositoryId"],
        id
    );
    assert_eq!(row_counts(&db).await, [0, 0, 0]);
    finish(db, server).await;
}

/// Each invalid input is refused with BAD_USER_INPUT on the offending field, and nothing
/// is written.
async fn validation_rules(backend: Backend) {
    let (db, server) = start(backend).await;
    let repo = create_repository(&server, "web", "https://github.com/acme/web.git").await;
    let app = create_app(&server, "web-app", &repo["id"]).await;
    let before = row_counts(&db).await;

    let long = "x".repeat(121);
    // Far over the 200-character rule, under the body limit (10 MB bodies: http_api.rs).
    let huge = "a".repeat(300_000);
    let repository_cases: Vec<(Value, &str)> = vec![
        (
            json!({ "name": "", "gitUrl": "https://example.com/a.git" }),
            "name",
        ),
        (
            json!({ "name": long, "gitUrl": "https://example.com/a.git" }),
            "name",
        ),
        (
            json!({ "name": "nul\u{0}byte", "gitUrl": "https://example.com/a.git" }),
            "name",
        ),
        (
            json!({ "name": "ok", "gitUrl": "file:///etc/passwd" }),
            "gitUrl",
        ),
        (json!({ "name": "ok", "gitUrl": "/srv/git/web" }), "gitUrl"),
        (json!({ "name": "ok", "gitUrl": "../web" }), "gitUrl"),
        (
            json!({ "name": "ok", "gitUrl": "--upload-pack=touch /tmp/pwned" }),
            "gitUrl",
        ),
        (
            json!({ "name": "ok", "gitUrl": "ext::sh -c touch% /tmp/pwned" }),
            "gitUrl",
        ),
        (
            json!({ "name": "ok", "gitUrl": "http://example.com/a.git" }),
            "gitUrl",
        ),
        (
            json!({ "name": "ok", "gitUrl": format!("https://example.com/{huge}") }),
            "gitUrl",
        ),
        (
            json!({ "name": "ok", "gitUrl": "https://example.com/a.git", "defaultBranch": "a..b" }),
            "defaultBranch",
        ),
        (
            json!({ "name": "ok", "gitUrl": "https://example.com/a.git", "defaultBranch": "-f" }),
            "defaultBranch",
        ),
        (
            json!({ "name": "ok", "gitUrl": "https://example.com/a.git", "defaultBranch": "x.lock" }),
            "defaultBranch",
        ),
        (
            json!({ "name": "ok", "gitUrl": "https://example.com/a.git", "defaultBranch": "has space" }),
            "defaultBranch",
        ),
    ];
    for (input, field) in repository_cases {
        let body = server
            .graphql(CREATE_REPOSITORY, json!({ "input": input }))
            .await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".into(), Some(field.into())),
            "{input:.200}"
        );
        assert!(body["data"].is_null(), "{body:#}");
    }

    for name in [
        "Web",
        "web_app",
        "-web",
        "web-",
        "../x",
        "a/b",
        "web.app",
        &"a".repeat(64),
    ] {
        let body = server
            .graphql(
                CREATE_APP,
                json!({ "input": { "name": name, "repositoryId": repo["id"] } }),
            )
            .await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".into(), Some("name".into())),
            "{name}"
        );
    }
    let id_cases = [
        (json!("not-an-id"), "BAD_USER_INPUT"),
        (app["id"].clone(), "BAD_USER_INPUT"),
        (json!("UmVwb3NpdG9yeTo5OTk5"), "NOT_FOUND"), // Repository:9999
    ];
    for (repository_id, code) in id_cases {
        let body = server
            .graphql(
                CREATE_APP,
                json!({ "input": { "name": "fine", "repositoryId": repository_id } }),
            )
            .await;
        assert_eq!(
            only_error(&body),
            (code.into(), Some("repositoryId".into())),
            "{repository_id}"
        );
    }
    let body = server
        .graphql(
            CREATE_APP,
            json!({ "input": { "name": "web-app", "repositoryId": repo["id"] } }),
        )
        .await;
    assert_eq!(only_error(&body), ("CONFLICT".into(), Some("name".into())));

    // Updates are validated the same way.
    let body = server
        .graphql(
            "mutation($input: UpdateRepositoryInput!) { updateRepository(input: $input) { repository { id } } }",
            json!({ "input": { "id": repo["id"], "name": "renamed", "gitUrl": "file:///etc" } }),
        )
        .await;
    assert_eq!(
        only_error(&body),
        ("BAD_USER_INPUT".into(), Some("gitUrl".into()))
    );
    assert_eq!(
        db.rows("SELECT name FROM api_repository").await,
        ["web"],
        "a refused update changed nothing"
    );

    assert_eq!(
        row_counts(&db).await,
        before,
        "a refused mutation wrote a row"
    );
    finish(db, server).await;
}

async fn apps_and_deployments(backend: Backend) {
    let (db, server) = start(backend).await;
    let repo = create_repository(&server, "web", "https://github.com/acme/web.git").await;
    let other = create_repository(&server, "other", "git://example.org/other").await;
    let app = create_app(&server, "web-app", &repo["id"]).await;
    assert_eq!(app["status"], "DRAFT");
    assert_eq!(app["accessMode"], "PORT");
    assert_eq!(app["repository"]["name"], "web");
    assert!(app["url"].is_null(), "no port yet, no URL");
    let app_id = app["id"].clone();
    let app_db_id = app["databaseId"].as_i64().expect("databaseId");

    const DEPLOY: &str = "mutation($id: ID!) { deployApp(input: { appId: $id }) {
        deployment { id databaseId status imageTag assignedPort createdAt startedAt endedAt duration errorSummary logsPath app { name } }
        app { status } } }";
    let body = server.graphql(DEPLOY, json!({ "id": app_id })).await;
    let deployed = &Server::data(&body)["deployApp"];
    assert_eq!(deployed["app"]["status"], "DEPLOYING");
    let deployment = &deployed["deployment"];
    assert_eq!(deployment["status"], "QUEUED");
    assert_eq!(deployment["app"]["name"], "web-app");
    assert!(deployment["startedAt"].is_null() && deployment["duration"].is_null());
    assert_eq!(deployment["imageTag"], "");
    assert_eq!(
        db.rows(&format!(
            "SELECT status FROM api_deployment WHERE app_id = {app_db_id}"
        ))
        .await,
        ["queued"]
    );
    assert_eq!(
        db.rows(&format!(
            "SELECT status FROM api_app WHERE id = {app_db_id}"
        ))
        .await,
        ["deploying"]
    );

    let body = server
        .graphql(
            "query($id: ID!) { deployment(id: $id) { databaseId status app { databaseId } } }",
            json!({ "id": deployment["id"] }),
        )
        .await;
    let fetched = &Server::data(&body)["deployment"];
    assert_eq!(fetched["databaseId"], deployment["databaseId"]);
    assert_eq!(fetched["app"]["databaseId"], app_db_id);

    // What a runner will record: a port, a start and an end.
    let deployment_db_id = deployment["databaseId"].as_i64().expect("databaseId");
    let (start, end) = match backend {
        Backend::Sqlite => ("'2030-01-01 10:00:00'", "'2030-01-01 10:01:30.5'"),
        Backend::Postgres => ("'2030-01-01 10:00:00+00'", "'2030-01-01 10:01:30.5+00'"),
    };
    db.exec(&format!(
        "UPDATE api_app SET current_port = 9001, status = 'running' WHERE id = {app_db_id};
         UPDATE api_deployment SET status = 'success', started_at = {start}, ended_at = {end}, assigned_port = 9001
         WHERE id = {deployment_db_id};"
    ))
    .await;
    let body = server
        .graphql(
            "query($id: ID!) { app(id: $id) { url currentPort status
                latestDeployment { status assignedPort duration startedAt endedAt } } }",
            json!({ "id": app_id }),
        )
        .await;
    let found = &Server::data(&body)["app"];
    assert_eq!(found["url"], "http://localhost:9001");
    assert_eq!(found["status"], "RUNNING");
    let latest = &found["latestDeployment"];
    assert_eq!(latest["status"], "SUCCESS");
    assert_eq!(latest["duration"], 90.5);
    assert_eq!(latest["startedAt"], "2030-01-01T10:00:00+00:00");

    // app(name:) finds the same app; switching to HOST releases the port; moving repository.
    let body = server
        .graphql("{ app(name: \"web-app\") { databaseId } }", json!({}))
        .await;
    assert_eq!(Server::data(&body)["app"]["databaseId"], app_db_id);
    let body = server
        .graphql(
            "mutation($input: UpdateAppInput!) { updateApp(input: $input) { app { name accessMode currentPort url repository { name } } } }",
            json!({ "input": { "id": app_id, "name": "web-two", "accessMode": "HOST", "repositoryId": other["id"] } }),
        )
        .await;
    let updated = &Server::data(&body)["updateApp"]["app"];
    assert_eq!(updated["name"], "web-two");
    assert_eq!(updated["accessMode"], "HOST");
    assert!(updated["currentPort"].is_null() && updated["url"].is_null());
    assert_eq!(updated["repository"]["name"], "other");

    // A running deployment blocks deleting its app and its repository.
    server.graphql(DEPLOY, json!({ "id": app_id })).await;
    db.exec(&format!("UPDATE api_deployment SET status = 'running' WHERE app_id = {app_db_id} AND status = 'queued'"))
        .await;
    let before = row_counts(&db).await;
    let body = server
        .graphql(
            "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
            json!({ "id": app_id }),
        )
        .await;
    assert_eq!(only_error(&body).0, "CONFLICT");
    let body = server
        .graphql(
            "mutation($id: ID!) { deleteRepository(input: { id: $id }) { deletedRepositoryId } }",
            json!({ "id": other["id"] }),
        )
        .await;
    let (code, field) = only_error(&body);
    assert_eq!((code.as_str(), field.as_deref()), ("CONFLICT", Some("id")));
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("running"),
        "{body}"
    );
    assert_eq!(
        row_counts(&db).await,
        before,
        "a refused delete removed rows"
    );

    db.exec(&format!(
        "UPDATE api_deployment SET status = 'failed' WHERE app_id = {app_db_id}"
    ))
    .await;
    let body = server
        .graphql(
            "mutation($id: ID!) { deleteRepository(input: { id: $id }) { deletedAppCount deletedDeploymentCount } }",
            json!({ "id": other["id"] }),
        )
        .await;
    let deleted = &Server::data(&body)["deleteRepository"];
    assert_eq!(deleted["deletedAppCount"], 1);
    assert_eq!(deleted["deletedDeploymentCount"], 2);
    assert_eq!(
        row_counts(&db).await,
        [1, 0, 0],
        "apps and deployments cascade"
    );

    let app2 = create_app(&server, "second", &repo["id"]).await;
    let body = server
        .graphql(
            "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
            json!({ "id": app2["id"] }),
        )
        .await;
    assert_eq!(Server::data(&body)["deleteApp"]["deletedAppId"], app2["id"]);
    finish(db, server).await;
}

async fn not_found_and_bad_ids(backend: Backend) {
    let (db, server) = start(backend).await;
    let repo = create_repository(&server, "web", "https://github.com/acme/web.git").await;
    let missing_repo = "UmVwb3NpdG9yeTo5OTk5"; // Repository:9999
    let body = server
        .graphql(
            "query($id: ID!) { repository(id: $id) { name } }",
            json!({ "id": missing_repo }),
        )
        .await;
    assert_eq!(only_error(&body), ("NOT_FOUND".into(), Some("id".into())));
    assert!(body["data"]["repository"].is_null());

    let body = server
        .graphql("{ app(name: \"nope\") { id } }", json!({}))
        .await;
    assert_eq!(only_error(&body), ("NOT_FOUND".into(), Some("name".into())));
    let body = server.graphql("{ app { id } }", json!({})).await;
    assert_eq!(only_error(&body).0, "BAD_USER_INPUT");
    let body = server
        .graphql(
            "query($id: ID!) { deployment(id: $id) { id } }",
            json!({ "id": repo["id"] }),
        )
        .await;
    assert_eq!(
        only_error(&body),
        ("BAD_USER_INPUT".into(), Some("id".into()))
    );

    // node: null without an error when absent; nodes keeps order.
    let body = server
        .graphql(
            "query($ids: [ID!]!) { nodes(ids: $ids) { id __typename } node(id: \"UmVwb3NpdG9yeTo5OTk5\") { id } }",
            json!({ "ids": [repo["id"], missing_repo, repo["id"]] }),
        )
        .await;
    let data = Server::data(&body);
    assert_eq!(
        data["nodes"],
        json!([{ "id": repo["id"], "__typename": "Repository" }, null, { "id": repo["id"], "__typename": "Repository" }])
    );
    assert!(data["node"].is_null());
    let body = server
        .graphql("{ node(id: \"%%%\") { id } }", json!({}))
        .await;
    assert_eq!(
        only_error(&body),
        ("BAD_USER_INPUT".into(), Some("id".into()))
    );

    for (mutation, field) in [
        (
            "mutation { deployApp(input: { appId: \"QXBwOjk5OTk\" }) { app { id } } }",
            "appId",
        ),
        (
            "mutation { deleteApp(input: { id: \"QXBwOjk5OTk\" }) { deletedAppId } }",
            "id",
        ),
        (
            "mutation { updateRepository(input: { id: \"UmVwb3NpdG9yeTo5OTk5\", name: \"x\" }) { repository { id } } }",
            "id",
        ),
        (
            "mutation { deleteRepository(input: { id: \"UmVwb3NpdG9yeTo5OTk5\" }) { deletedRepositoryId } }",
            "id",
        ),
    ] {
        let body = server.graphql(mutation, json!({})).await;
        assert_eq!(
            only_error(&body),
            ("NOT_FOUND".into(), Some(field.into())),
            "{mutation}"
        );
    }
    finish(db, server).await;
}

/// `count` rows of each table with deterministic, spread-out values, inserted directly.
/// Repository i is named `repo-<(i * 7) % count>` so name order differs from id order;
/// deployment k of an app is created k hours after 2030-01-01 and has status by k % 5.
pub async fn seed(
    db: &TestDb,
    repositories: usize,
    apps_per_repository: usize,
    deployments_per_app: usize,
) {
    keystone(db, &["migrate", "up"]).await.assert_success();
    const STATUSES: [&str; 5] = ["queued", "running", "success", "failed", "cancelled"];
    let tz = if db.backend == Backend::Postgres {
        "+00"
    } else {
        ""
    };
    let mut repos = Vec::new();
    let mut apps = Vec::new();
    let mut deployments = Vec::new();
    let mut app_id = 0;
    let mut deployment_id = 0;
    for r in 1..=repositories {
        repos.push(format!(
            "({r}, 'repo-{:04}', 'https://example.com/{r}.git', 'main')",
            (r * 7) % repositories
        ));
        for a in 0..apps_per_repository {
            app_id += 1;
            let mode = if a % 2 == 0 { "PORT" } else { "HOST" };
            apps.push(format!(
                "({app_id}, 'app-{app_id}', '{mode}', NULL, 'draft', {r})"
            ));
            for k in 0..deployments_per_app {
                deployment_id += 1;
                deployments.push(format!(
                    "({deployment_id}, '{}', '', NULL, '2030-01-{:02} {:02}:00:00{tz}', NULL, NULL, '', '', {app_id})",
                    STATUSES[k % 5],
                    1 + k / 24,
                    k % 24
                ));
            }
        }
    }
    let insert = |table: &str, columns: &str, rows: &[String]| {
        rows.chunks(500)
            .map(|chunk| {
                format!(
                    "INSERT INTO {table} ({columns}) VALUES {};",
                    chunk.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    db.exec(&insert(
        "api_repository",
        "id, name, git_url, default_branch",
        &repos,
    ))
    .await;
    db.exec(&insert(
        "api_app",
        "id, name, access_mode, current_port, status, repo_id",
        &apps,
    ))
    .await;
    if !deployments.is_empty() {
        db.exec(&insert(
            "api_deployment",
            "id, status, image_tag, assigned_port, created_at, started_at, ended_at, error_summary, logs_path, app_id",
            &deployments,
        ))
        .await;
    }
    if db.backend == Backend::Postgres {
        // Explicit ids leave the identity sequences behind; later inserts must not reuse them.
        for table in ["api_repository", "api_app", "api_deployment"] {
            db.exec(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
            ))
            .await;
        }
    }
}

/// Walks a connection page by page (forward with `first`/`after`, or backward with
/// `last`/`before`) and returns every node's `databaseId` in order.
async fn walk(server: &Server, field_query: &str, page: i32, backward: bool) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let args = if backward {
            "last: $n, before: $cursor"
        } else {
            "first: $n, after: $cursor"
        };
        let query = format!(
            "query($n: Int, $cursor: String) {{ list: {} {{ pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} nodes {{ databaseId }} }} }}",
            field_query.replace("ARGS", args)
        );
        let body = server
            .graphql(&query, json!({ "n": page, "cursor": cursor }))
            .await;
        let list = &Server::data(&body)["list"];
        let ids: Vec<i64> = list["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["databaseId"].as_i64().expect("id"))
            .collect();
        assert!(ids.len() <= page as usize);
        let more = if backward {
            &list["pageInfo"]["hasPreviousPage"]
        } else {
            &list["pageInfo"]["hasNextPage"]
        };
        if backward {
            seen.splice(0..0, ids);
            cursor = list["pageInfo"]["startCursor"].as_str().map(str::to_owned);
        } else {
            seen.extend(ids);
            cursor = list["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        }
        if more != true {
            return seen;
        }
    }
    panic!("more than 100 pages")
}

async fn pagination(backend: Backend) {
    let db = TestDb::new(backend).await;
    seed(&db, 45, 3, 30).await;
    let server = Server::start(&db, &[]).await.expect("server starts");

    // Repositories by id, forward and backward, in pages of 10: all 45, in order, once.
    let by_id: Vec<i64> = (1..=45).collect();
    assert_eq!(walk(&server, "repositories(ARGS)", 10, false).await, by_id);
    assert_eq!(walk(&server, "repositories(ARGS)", 10, true).await, by_id);
    // By name descending: the order the names give, not the ids.
    let mut by_name: Vec<(String, i64)> = (1..=45)
        .map(|r| (format!("repo-{:04}", (r * 7) % 45), r))
        .collect();
    by_name.sort();
    by_name.reverse();
    let expected: Vec<i64> = by_name.iter().map(|(_, id)| *id).collect();
    let order = "orderBy: { field: NAME, direction: DESC }";
    assert_eq!(
        walk(&server, &format!("repositories(ARGS, {order})"), 7, false).await,
        expected
    );
    assert_eq!(
        walk(&server, &format!("repositories(ARGS, {order})"), 7, true).await,
        expected
    );
    // Filter plus totalCount.
    let body = server
        .graphql("{ repositories(filter: { nameContains: \"repo-001\" }) { totalCount nodes { name } } }", json!({}))
        .await;
    let filtered = &Server::data(&body)["repositories"];
    assert_eq!(filtered["totalCount"], 10, "repo-0010 .. repo-0019");
    assert_eq!(filtered["nodes"].as_array().map(Vec::len), Some(10));

    // Deployments of app 2, newest first by default, then filtered by status and time.
    let app2 = walk(&server, "deployments(ARGS, appId: \"QXBwOjI\")", 8, false).await;
    assert_eq!(app2, (31..=60).rev().collect::<Vec<i64>>(), "newest first");
    assert_eq!(
        walk(&server, "deployments(ARGS, appId: \"QXBwOjI\")", 8, true).await,
        app2
    );
    let filter = "filter: { status: [SUCCESS, FAILED], createdAfter: \"2030-01-01T05:00:00Z\", createdBefore: \"2030-01-01T20:00:00Z\" }";
    let ids = walk(&server, &format!("deployments(ARGS, appId: \"QXBwOjI\", {filter}, orderBy: {{ field: CREATED_AT, direction: ASC }})"), 3, false).await;
    // Hours 5..=19 with k % 5 in {2, 3}: k = 7, 8, 12, 13, 17, 18 -> ids 30 + k + 1.
    assert_eq!(ids, [38, 39, 43, 44, 48, 49]);
    let body = server
        .graphql(
            &format!("{{ deployments(appId: \"QXBwOjI\", {filter}) {{ totalCount }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(Server::data(&body)["deployments"]["totalCount"], 6);
    let body = server
        .graphql("{ apps(repositoryId: \"UmVwb3NpdG9yeToz\", filter: { accessMode: HOST }) { totalCount nodes { name } } }", json!({}))
        .await;
    assert_eq!(
        Server::data(&body)["apps"]["nodes"],
        json!([{ "name": "app-8" }])
    );

    // Nested: each repository's apps, each app's deployments, with a cursor.
    let body = server
        .graphql(
            "{ repositories(first: 2) { nodes { apps(first: 2) { totalCount pageInfo { hasNextPage }
                 nodes { databaseId deployments(first: 2, filter: { status: [QUEUED] }) { totalCount pageInfo { endCursor } nodes { databaseId } } } } } } }",
            json!({}),
        )
        .await;
    let repos = &Server::data(&body)["repositories"]["nodes"];
    assert_eq!(repos[1]["apps"]["totalCount"], 3);
    assert_eq!(repos[1]["apps"]["pageInfo"]["hasNextPage"], true);
    let app4 = &repos[1]["apps"]["nodes"][0];
    assert_eq!(app4["databaseId"], 4);
    // App 4 has deployments 91..=120; queued ones are k % 5 == 0: newest first 116, 111, …
    assert_eq!(app4["deployments"]["totalCount"], 6);
    assert_eq!(
        app4["deployments"]["nodes"],
        json!([{ "databaseId": 116 }, { "databaseId": 111 }])
    );
    let cursor = app4["deployments"]["pageInfo"]["endCursor"].clone();
    let body = server
        .graphql(
            "query($c: String) { app(id: \"QXBwOjQ\") { deployments(first: 2, after: $c, filter: { status: [QUEUED] }) { nodes { databaseId } } } }",
            json!({ "c": cursor }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["app"]["deployments"]["nodes"],
        json!([{ "databaseId": 106 }, { "databaseId": 101 }])
    );

    // Bad pagination arguments.
    let cases = [
        ("{ repositories(first: 101) { totalCount } }", "first"),
        ("{ repositories(last: -1) { totalCount } }", "last"),
        ("{ repositories(first: 1, last: 1) { totalCount } }", "last"),
        (
            "{ repositories(after: \"garbage\") { totalCount } }",
            "after",
        ),
    ];
    for (query, field) in cases {
        let body = server.graphql(query, json!({})).await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".into(), Some(field.into())),
            "{query}"
        );
    }
    let name_cursor = server
        .graphql(
            "{ repositories(first: 1, orderBy: { field: NAME }) { pageInfo { endCursor } } }",
            json!({}),
        )
        .await["data"]["repositories"]["pageInfo"]["endCursor"]
        .clone();
    let body = server
        .graphql(
            "query($c: String) { repositories(after: $c) { totalCount } }",
            json!({ "c": name_cursor }),
        )
        .await;
    assert_eq!(
        only_error(&body),
        ("BAD_USER_INPUT".into(), Some("after".into()))
    );
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

const NESTED: &str = "{ repositories(first: 50) { nodes { apps { nodes { deployments(first: 10) { nodes { id status } } } } } } }";

/// SQL statements the server runs for `query` (from `/metrics`, nothing else running).
pub async fn statements_for(server: &Server, query: &str) -> u64 {
    let before = server.sql_statements().await;
    let body = server.graphql(query, json!({})).await;
    Server::data(&body);
    server.sql_statements().await - before
}

async fn nested_query_statement_count(backend: Backend) {
    let mut counts = Vec::new();
    for repositories in [5, 500] {
        let db = TestDb::new(backend).await;
        seed(&db, repositories, 3, 12).await;
        // Tokens stay cached for the whole test: only the query's statements are counted.
        let server = Server::start(&db, &["--token-cache-ms", "600000"])
            .await
            .expect("server starts");
        let body = server.graphql(NESTED, json!({})).await;
        let nodes = Server::data(&body)["repositories"]["nodes"]
            .as_array()
            .expect("nodes")
            .clone();
        assert_eq!(nodes.len(), repositories.min(50));
        assert_eq!(
            nodes[0]["apps"]["nodes"][2]["deployments"]["nodes"]
                .as_array()
                .map(Vec::len),
            Some(10)
        );
        db.wait_for_token_use().await;
        counts.push(statements_for(&server, NESTED).await);
        // totalCount and latestDeployment are batched too.
        let wider = "{ repositories(first: 50) { totalCount nodes { apps { totalCount nodes { latestDeployment { id } repository { id }
                       deployments(first: 10) { totalCount nodes { app { id } } } } } } } }";
        counts.push(statements_for(&server, wider).await);
        let (status, _) = server.stop().await;
        assert!(status.success());
    }
    // One statement per level: repositories, apps per repository, deployments per app.
    assert_eq!(counts[0], 3, "statements for the nested query");
    assert_eq!(counts[0], counts[2], "5 and 500 repositories cost the same");
    assert_eq!(
        counts[1], counts[3],
        "5 and 500 repositories cost the same (wider query)"
    );
    assert!(counts[1] <= 9, "wider query: {} statements", counts[1]);
}

/// Nested pages read only the columns their selection needs: whichever way a field is
/// selected (`nodes`, `edges { node }`, a fragment, `latestDeployment`), its value is the
/// stored one, as a lookup of the whole row shows.
async fn nested_pages_read_the_columns_selected(backend: Backend) {
    let db = TestDb::new(backend).await;
    seed(&db, 2, 2, 6).await;
    let tz = if backend == Backend::Postgres {
        "+00"
    } else {
        ""
    };
    db.exec(&format!(
        "UPDATE api_deployment SET image_tag = 'img:' || id, assigned_port = 9000 + id,
            started_at = '2030-02-01 10:00:00{tz}', ended_at = '2030-02-01 10:05:00{tz}',
            error_summary = 'broke ' || id, logs_path = 'logs/' || id"
    ))
    .await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    const FIELDS: &str =
        "databaseId imageTag assignedPort startedAt endedAt duration errorSummary logsPath";
    let body = server
        .graphql(
            &format!(
                "query {{ apps(first: 4) {{ nodes {{
                    latestDeployment {{ {FIELDS} }}
                    a: deployments(first: 3) {{ nodes {{ {FIELDS} }} }}
                    b: deployments(first: 3) {{ edges {{ node {{ ...F }} }} }}
                    c: deployments(first: 3) {{ nodes {{ databaseId ... on Deployment {{ errorSummary }} }} }}
                }} }} }}
                fragment F on Deployment {{ {FIELDS} }}"
            ),
            json!({}),
        )
        .await;
    let apps = Server::data(&body)["apps"]["nodes"]
        .as_array()
        .expect("apps")
        .clone();
    assert_eq!(apps.len(), 4);
    let mut checked = 0;
    for app in &apps {
        let mut seen = vec![app["latestDeployment"].clone()];
        seen.extend(app["a"]["nodes"].as_array().unwrap().iter().cloned());
        seen.extend(
            app["b"]["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"].clone()),
        );
        for node in seen {
            let id = node["databaseId"].as_i64().expect("databaseId");
            let body = server
                .graphql(
                    &format!(
                        "{{ deployment(id: \"{}\") {{ {FIELDS} }} }}",
                        global_id("Deployment", id)
                    ),
                    json!({}),
                )
                .await;
            assert_eq!(node, Server::data(&body)["deployment"], "deployment {id}");
            assert_eq!(node["errorSummary"], format!("broke {id}"));
            checked += 1;
        }
        for node in app["c"]["nodes"].as_array().unwrap() {
            assert_eq!(
                node["errorSummary"],
                format!("broke {}", node["databaseId"]),
                "a field selected in an inline fragment"
            );
        }
    }
    assert_eq!(checked, 4 * 7);
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// `totalCount` of deployments filtered by status alone comes from the counts the database
/// keeps per status (migration 10): they must follow every write, whoever makes it (rows
/// written as Django did, Keystone's mutations, cascading deletes, a plain `UPDATE`), and
/// keep their sums when the server folds them.
async fn status_counts_follow_every_write(backend: Backend) {
    let db = TestDb::new(backend).await;
    seed(&db, 4, 2, 10).await;
    // A short lease makes the server fold the counts every second.
    let server = Server::start(&db, &["--lease-secs", "2"])
        .await
        .expect("server starts");
    let filters = [
        ("", "1 = 1"),
        ("filter: { status: [FAILED] }", "status = 'failed'"),
        ("filter: { status: [QUEUED] }", "status = 'queued'"),
        (
            "filter: { status: [SUCCESS, CANCELLED, SUCCESS] }",
            "status IN ('success', 'cancelled')",
        ),
        ("filter: { status: [] }", "1 = 1"),
    ];
    let agree = |when: &'static str| {
        let (server, db) = (&server, &db);
        async move {
            for (filter, condition) in filters {
                let args = if filter.is_empty() {
                    String::new()
                } else {
                    format!("({filter})")
                };
                let body = server
                    .graphql(
                        &format!("{{ deployments{args} {{ totalCount }} }}"),
                        json!({}),
                    )
                    .await;
                let counted = db
                    .count(&format!(
                        "SELECT COUNT(*) FROM api_deployment WHERE {condition}"
                    ))
                    .await;
                assert_eq!(
                    Server::data(&body)["deployments"]["totalCount"],
                    counted,
                    "{when}: {filter}"
                );
            }
        }
    };
    agree("seeded").await;
    assert_eq!(db.count("SELECT COUNT(*) FROM api_deployment").await, 80);

    // Deploying supersedes an app's queued deployments; a running one would refuse it, as
    // it would deleting its repository.
    db.exec(
        "UPDATE api_deployment SET status = 'success' \
         WHERE status = 'running' AND app_id IN (1, 2, 3, 4, 7)",
    )
    .await;
    for app in ["QXBwOjE", "QXBwOjI", "QXBwOjc"] {
        let body = server
            .graphql(
                "mutation($app: ID!) { deployApp(input: { appId: $app }) { deployment { status } } }",
                json!({ "app": app }),
            )
            .await;
        assert_eq!(
            Server::data(&body)["deployApp"]["deployment"]["status"],
            "QUEUED",
            "{body}"
        );
    }
    db.exec("UPDATE api_deployment SET status = 'failed' WHERE id % 3 = 0")
        .await;
    let body = server
        .graphql(
            "mutation { deleteRepository(input: { id: \"UmVwb3NpdG9yeToy\" }) { deletedRepositoryId } }",
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["deleteRepository"]["deletedRepositoryId"],
        "UmVwb3NpdG9yeToy",
        "{body}"
    );
    db.exec("DELETE FROM api_app WHERE id = 5").await;
    agree("after writes").await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_deployment").await,
        83 - 20 - 10
    );

    // The server folds the deltas into at most one row per status, sums unchanged.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while db
        .count("SELECT COUNT(*) FROM api_deployment_status_count")
        .await
        > 5
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not fold the counts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    agree("folded").await;
    // The answer is the kept counts' sum, not a count of the rows: a delta written behind
    // the triggers' back shows in it.
    let failed = db
        .count("SELECT COUNT(*) FROM api_deployment WHERE status = 'failed'")
        .await;
    db.exec("INSERT INTO api_deployment_status_count (status, n) VALUES ('failed', 1000)")
        .await;
    let body = server
        .graphql(
            "{ deployments(filter: { status: [FAILED] }) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["deployments"]["totalCount"],
        failed + 1000
    );
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// A page of deployments across apps that selects their apps reads them in the page's own
/// statement (a join): W5 of the benchmark costs the page and its count, whichever way the
/// app is asked for (under `nodes`, under `edges { node }`, in a fragment).
async fn deployments_across_apps_read_their_apps_with_the_page(backend: Backend) {
    let db = TestDb::new(backend).await;
    seed(&db, 4, 2, 10).await;
    let server = Server::start(&db, &["--token-cache-ms", "600000"])
        .await
        .expect("server starts");
    server.graphql("{ viewer { name } }", json!({})).await;
    db.wait_for_token_use().await;
    // Each failed deployment as `id|app name`, newest first.
    let newest_failed = db
        .rows(
            "SELECT CAST(d.id AS TEXT), a.name FROM api_deployment d JOIN api_app a ON a.id = d.app_id \
             WHERE d.status = 'failed' ORDER BY d.created_at DESC, d.id DESC LIMIT 12",
        )
        .await;
    assert_eq!(newest_failed.len(), 12);
    let page = "deployments(first: 12, filter: { status: [FAILED] })";
    let queries = [
        (
            format!("{{ {page} {{ nodes {{ databaseId owner: app {{ name }} }} }} }}"),
            1,
            true,
        ),
        (
            format!(
                "{{ {page} {{ edges {{ node {{ databaseId ... on Deployment {{ owner: app {{ name }} }} }} }} }} }}"
            ),
            1,
            true,
        ),
        (
            format!("{{ {page} {{ totalCount nodes {{ databaseId }} }} }}"),
            2,
            false,
        ),
    ];
    for (query, statements, with_app) in queries {
        let before = server.sql_statements().await;
        let body = server.graphql(&query, json!({})).await;
        assert_eq!(
            server.sql_statements().await - before,
            statements,
            "{query}"
        );
        let list = &Server::data(&body)["deployments"];
        let nodes: Vec<&serde_json::Value> = match list["nodes"].as_array() {
            Some(nodes) => nodes.iter().collect(),
            None => list["edges"]
                .as_array()
                .expect("edges")
                .iter()
                .map(|edge| &edge["node"])
                .collect(),
        };
        let got: Vec<String> = nodes
            .iter()
            .map(|node| match node["owner"]["name"].as_str() {
                Some(name) => format!("{}|{name}", node["databaseId"]),
                None => node["databaseId"].to_string(),
            })
            .collect();
        let want: Vec<String> = newest_failed
            .iter()
            .map(|row| match row.split_once('|') {
                Some((id, _)) if !with_app => id.to_owned(),
                _ => row.clone(),
            })
            .collect();
        assert_eq!(got, want, "{query}");
    }
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

on_both_backends!(
    repositories_crud,
    validation_rules,
    apps_and_deployments,
    not_found_and_bad_ids,
    pagination,
    nested_query_statement_count,
    nested_pages_read_the_columns_selected,
    status_counts_follow_every_write,
    deployments_across_apps_read_their_apps_with_the_page,
);
