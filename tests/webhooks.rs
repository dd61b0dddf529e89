//! Deploy on push: `POST /hooks/git/<app>` as GitHub, Gitea, GitLab and the generic form
//! send it. A signed push to the app's branch queues a deployment of exactly that commit;
//! everything else is refused (401 for any wrong or missing proof, the same for an unknown
//! app) or acknowledged and ignored (other branches, tags, deletions, pings, replays). A push
//! that arrives while a deployment runs waits for it and is deployed when it ends. The
//! runner side (the pushed commit is what runs) is in `runner::lifecycle`.

use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::hooks::{self, Host, push_body, push_from};
use crate::support::protocol::claim;
use crate::support::{Backend, Server, TestDb, codes, http};

on_both_backends!(
    signed_pushes_deploy_the_pushed_commit,
    a_push_while_a_deployment_runs_waits_for_it,
);

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const C: &str = "3333333333333333333333333333333333333333";
const D: &str = "4444444444444444444444444444444444444444";
const E: &str = "5555555555555555555555555555555555555555";

/// The app's deployments, newest first: (status, commitSha).
async fn deployments(server: &Server, app: &str) -> Vec<(String, Value)> {
    let body = server
        .graphql(
            "query($id: ID!) { node(id: $id) { ... on App { deployments(first: 20) { nodes { status commitSha } } } } }",
            json!({ "id": app }),
        )
        .await;
    Server::data(&body)["node"]["deployments"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|d| {
            (
                d["status"].as_str().expect("status").to_owned(),
                d["commitSha"].clone(),
            )
        })
        .collect()
}

async fn webhook_of(server: &Server, app: &str) -> Value {
    let body = server
        .graphql(
            "query($id: ID!) { node(id: $id) { ... on App { webhook { path createdAt pendingCommit } } } }",
            json!({ "id": app }),
        )
        .await;
    Server::data(&body)["node"]["webhook"].clone()
}

async fn signed_pushes_deploy_the_pushed_commit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("hooked", "hooked").await;
    let main = |sha: &str| push_body("refs/heads/main", sha);
    let post = |path: &str, host, secret: &str, event: &str, id: &str, body: Vec<u8>| {
        let (server, path, secret, event, id) = (
            &server,
            path.to_owned(),
            secret.to_owned(),
            event.to_owned(),
            id.to_owned(),
        );
        async move { hooks::post(server, &path, host, &secret, &event, &id, &body).await }
    };

    // No webhook yet: refused like a wrong signature.
    assert_eq!(webhook_of(&server, &app).await, Value::Null);
    let (status, _) = post(
        "/hooks/git/hooked",
        Host::GitHub,
        "guess",
        "push",
        "d0",
        main(A),
    )
    .await;
    assert_eq!(status, 401);

    let (path, secret) = hooks::rotate(&server, &app).await;
    assert_eq!(path, "/hooks/git/hooked");
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    let shown = webhook_of(&server, &app).await;
    assert_eq!(shown["path"], path.as_str());
    assert_eq!(shown["pendingCommit"], Value::Null);
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is shown once: {shown}"
    );
    // Viewers do not see it at all.
    let viewer = server.create_token("watcher", "VIEWER").await;
    let (_, body) = server
        .graphql_as(
            &viewer,
            "query($id: ID!) { node(id: $id) { ... on App { webhook { path } } } }",
            json!({ "id": app }),
        )
        .await;
    assert_eq!(codes(&body), ["FORBIDDEN"], "{body}");

    // Every wrong or missing proof, and an unknown app, get the same 401.
    for host in [Host::GitHub, Host::Gitea, Host::GitLab, Host::Generic] {
        let (status, answer) = post(&path, host, "not-the-secret", "push", "bad", main(A)).await;
        assert_eq!(status, 401, "{host:?}: {answer}");
    }
    let (status, unknown) = post(
        "/hooks/git/nope",
        Host::GitHub,
        &secret,
        "push",
        "x",
        main(A),
    )
    .await;
    assert_eq!(status, 401);
    let unsigned = http()
        .post(server.url(&path))
        .body(main(A))
        .send()
        .await
        .expect("post");
    assert_eq!(unsigned.status().as_u16(), 401);
    let (_, wrong) = post(
        &path,
        Host::GitHub,
        "not-the-secret",
        "push",
        "bad",
        main(A),
    )
    .await;
    assert_eq!(
        unknown, wrong,
        "an unknown app and a wrong signature look the same"
    );
    // A body signed with the secret but altered on the way is refused.
    let signature = hooks::sign(&secret, &main(A));
    let altered = http()
        .post(server.url(&path))
        .header("X-Hub-Signature-256", format!("sha256={signature}"))
        .header("X-GitHub-Event", "push")
        .body(main(B))
        .send()
        .await
        .expect("post");
    assert_eq!(altered.status().as_u16(), 401);
    assert!(
        deployments(&server, &app).await.is_empty(),
        "nothing refused deployed"
    );

    // A push to the app's branch deploys that commit, once per delivery.
    let (status, answer) = post(&path, Host::GitHub, &secret, "push", "d1", main(A)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["commit"], A);
    assert_eq!(
        deployments(&server, &app).await,
        [("QUEUED".to_owned(), json!(A))]
    );
    let (status, answer) = post(&path, Host::GitHub, &secret, "push", "d1", main(A)).await;
    assert_eq!(status, 200);
    assert!(
        answer["ignored"]
            .as_str()
            .expect("why")
            .contains("received before"),
        "{answer}"
    );

    // Acknowledged and ignored: another branch, a tag, a deleted branch, a ping.
    let zeros = "0".repeat(40);
    for (event, body) in [
        ("push", push_body("refs/heads/feature", B)),
        ("push", push_body("refs/tags/v1", B)),
        ("push", main(&zeros)),
        ("ping", br#"{"zen":"hi"}"#.to_vec()),
    ] {
        let (status, answer) = post(&path, Host::GitHub, &secret, event, "", body).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["ignored"].is_string(), "{answer}");
    }
    assert_eq!(deployments(&server, &app).await.len(), 1);

    // Signed but not a push Keystone can read: 400, naming what is wrong.
    for (body, says) in [
        (b"not json".to_vec(), "not JSON"),
        (br#"{"ref":"refs/heads/main"}"#.to_vec(), "after"),
        (
            br#"{"ref":"refs/heads/main","after":"HEAD~1"}"#.to_vec(),
            "after",
        ),
    ] {
        let (status, answer) = post(&path, Host::GitHub, &secret, "push", "", body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"].as_str().expect("error").contains(says),
            "{answer}"
        );
    }
    // More than a mebibyte is refused before it is read.
    let huge = vec![b' '; (1 << 20) + 1];
    let (status, _) = post(&path, Host::GitHub, &secret, "push", "", huge).await;
    assert_eq!(status, 413);

    // The other hosts' forms; each newer push supersedes the queued one.
    for (host, event, sha) in [
        (Host::Gitea, "push", B),
        (Host::GitLab, "Push Hook", C),
        (Host::Generic, "push", D),
    ] {
        let body = push_from(host, "refs/heads/main", sha);
        let (status, answer) = post(&path, host, &secret, event, &format!("{host:?}"), body).await;
        assert_eq!(status, 202, "{host:?}: {answer}");
        assert_eq!(answer["commit"], sha);
    }
    let all = deployments(&server, &app).await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[0], ("QUEUED".to_owned(), json!(D)));
    assert!(
        all[1..].iter().all(|(status, _)| status == "CANCELLED"),
        "{all:?}"
    );

    // A new secret replaces the old one at once.
    let (_, fresh) = hooks::rotate(&server, &app).await;
    assert_ne!(fresh, secret);
    let (status, _) = post(&path, Host::GitHub, &secret, "push", "old", main(E)).await;
    assert_eq!(status, 401);
    let (status, _) = post(&path, Host::GitHub, &fresh, "push", "new", main(E)).await;
    assert_eq!(status, 202);

    // Deliveries are audited with the webhook as the actor, refused ones included.
    let body = server
        .graphql(
            "{ auditEvents(first: 100) { nodes { actor tokenName operation outcome errorCode } } }",
            json!({}),
        )
        .await;
    let events = Server::data(&body)["auditEvents"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    let pushes: Vec<&Value> = events.iter().filter(|e| e["actor"] == "WEBHOOK").collect();
    assert!(
        pushes.iter().all(|e| e["operation"] == "push"),
        "{pushes:#?}"
    );
    assert!(
        pushes
            .iter()
            .any(|e| e["errorCode"] == "UNAUTHENTICATED" && e["tokenName"] == "github webhook"),
        "{pushes:#?}"
    );
    assert!(
        pushes
            .iter()
            .any(|e| e["outcome"] == "SUCCESS" && e["tokenName"] == "gitlab webhook"),
        "{pushes:#?}"
    );
    server.stop_ok().await;
}

async fn a_push_while_a_deployment_runs_waits_for_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("busy", "busy").await;
    let (path, secret) = hooks::rotate(&server, &app).await;
    let push = |sha: &'static str, id: &'static str| {
        let (server, path, secret) = (&server, path.clone(), secret.clone());
        async move {
            hooks::post(
                server,
                &path,
                Host::GitHub,
                &secret,
                "push",
                id,
                &push_body("refs/heads/main", sha),
            )
            .await
        }
    };
    let (status, _) = push(A, "a").await;
    assert_eq!(status, 202);
    let runner = server.create_token("builder", "RUNNER").await;
    let (running, _) = claim(&server, &runner).await;

    // B, then C, arrive while A builds: they wait, the newest winning.
    for (sha, id) in [(B, "b"), (C, "c")] {
        let (status, answer) = push(sha, id).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["waiting"], sha, "{answer}");
    }
    assert_eq!(webhook_of(&server, &app).await["pendingCommit"], C);
    assert_eq!(deployments(&server, &app).await.len(), 1);

    // A ends: C is queued in the same transaction, and nothing waits any more.
    let (_, body) = server
        .graphql_as(
            &runner,
            "mutation($id: ID!) { reportDeployment(input: { deploymentId: $id, status: FAILED, errorSummary: \"tests failed\" }) { deployment { status } } }",
            json!({ "id": crate::support::global_id("Deployment", running) }),
        )
        .await;
    Server::data(&body);
    let all = deployments(&server, &app).await;
    assert_eq!(
        all,
        [
            ("QUEUED".to_owned(), json!(C)),
            ("FAILED".to_owned(), json!(A))
        ],
        "{all:?}"
    );
    assert_eq!(
        webhook_of(&server, &app).await["pendingCommit"],
        Value::Null
    );
    server.stop_ok().await;
}

crate::e2e!(deliveries_are_rate_limited_per_app_and_per_address);
/// A flood is refused (429, with `Retry-After`) before the database is touched: first per
/// app (bursts of 30), then per client address (bursts of 50), whatever the app.
async fn deliveries_are_rate_limited_per_app_and_per_address() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let flood = |app: &'static str, times: usize| {
        let server = &server;
        async move {
            let mut statuses = Vec::new();
            for _ in 0..times {
                let response = http()
                    .post(server.url(&format!("/hooks/git/{app}")))
                    .body("{}")
                    .send()
                    .await
                    .expect("post");
                if response.status() == 429 {
                    assert_eq!(response.headers()["retry-after"], "1");
                    let answer: Value = response.json().await.expect("json");
                    statuses.push(answer["error"].as_str().expect("error").to_owned());
                } else {
                    statuses.push(response.status().as_str().to_owned());
                }
            }
            statuses
        }
    };
    let first = flood("one", 40).await;
    let refused = first
        .iter()
        .position(|s| s.contains("for this app"))
        .expect("a per-app refusal");
    assert!((30..40).contains(&refused), "{first:?}");
    assert!(first[..30].iter().all(|s| s == "401"), "{first:?}");
    // The address has spent 40 of its 50 (plus what it regained meanwhile): another app's
    // deliveries hit the address's limit.
    let second = flood("two", 30).await;
    assert!(
        second.iter().any(|s| s.contains("from this address")),
        "{second:?}"
    );
    server.stop_ok().await;
}
