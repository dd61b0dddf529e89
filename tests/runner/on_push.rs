//! Deploying exactly what was pushed: a signed push webhook names a commit that is not the
//! branch's head any more, and the runner builds and serves that commit; `deployApp` takes a
//! commit or a branch the same way; a commit the repository does not have fails clearly.

use super::*;
use crate::on_both_backends;
use crate::support::hooks::{self, Host, push_body};
use crate::support::{Backend, Server, TestDb, global_id};

on_both_backends!(the_pushed_commit_is_what_runs);

async fn the_pushed_commit_is_what_runs(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let range = format!("{port}-{port}");
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    let v1 = git_server.push("v1", PROCFILE).await;
    let v2 = git_server.push("v2", PROCFILE).await;
    git_server.push("v3", PROCFILE).await;
    // A branch of its own at v1.
    git(
        &git_server.work,
        &["push", "-q", "origin", &format!("{v1}:refs/heads/old")],
    )
    .await;
    let token_file = runner_token_file(&server, &db).await;
    let runner = RunnerProcess::start(&server, &token_file, &db.dir().join("work"), &[]).await;
    let app = create_app(&server, &format!("pushed-{port}"), &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // GitHub says v2 was pushed (v3 came after it): v2 is built and served.
    let (path, secret) = hooks::rotate(&server, &app).await;
    let (status, answer_body) = hooks::post(
        &server,
        &path,
        Host::GitHub,
        &secret,
        "push",
        "delivery-1",
        &push_body("refs/heads/main", &v2),
    )
    .await;
    assert_eq!(status, 202, "{answer_body}");
    let deployment = global_id(
        "Deployment",
        answer_body["deployment"].as_i64().expect("a deployment"),
    );
    let done = finished(&server, &deployment).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    assert_eq!(done["commitSha"], v2.as_str());
    assert_eq!(answer(port).await.expect("answers"), "v2");

    // deployApp with a branch: its head.
    let done = finished(
        &server,
        &deploy_with(&server, &app, "branch: \"old\"").await,
    )
    .await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    assert_eq!(done["commitSha"], v1.as_str());
    assert_eq!(answer(port).await.expect("answers"), "v1");

    // A commit the repository does not have: a clear failure, and v1 keeps serving.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let done = finished(
        &server,
        &deploy_with(&server, &app, &format!("commitSha: \"{missing}\"")).await,
    )
    .await;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    assert_eq!(done["stage"], "CLONE", "{done:#}");
    assert!(
        done["errorSummary"]
            .as_str()
            .expect("summary")
            .contains(missing),
        "{done:#}"
    );
    assert_eq!(answer(port).await.expect("answers"), "v1");

    // Bad names are refused before anything is queued.
    for (fields, field) in [
        ("commitSha: \"HEAD\"", "commitSha"),
        ("branch: \"--upload-pack=x\"", "branch"),
    ] {
        let body = server
            .graphql(
                &format!("mutation($id: ID!) {{ deployApp(input: {{ appId: $id, {fields} }}) {{ deployment {{ id }} }} }}"),
                json!({ "id": app }),
            )
            .await;
        let error = &body["errors"][0];
        assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{body}");
        assert_eq!(error["extensions"]["field"], field, "{body}");
    }
    // The last deployment failed, so the app is not RUNNING to stop: deleting it stops it.
    server.delete_app(&app).await;
    eventually("the app to stop", Duration::from_secs(20), || async {
        answer(port).await.is_err()
    })
    .await;
    runner.stop().await;
    stop_proxy(&db.dir().join("work"));
    server.stop_ok().await;
}
