//! Desired state is exact: a stopped app being deployed again does not serve its old release
//! while the new one builds (process and Docker), and apps deleted in quick succession each
//! stop answering at once.

use std::time::{Duration, Instant};

use super::*;
use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb};

on_both_backends!(
    a_stopped_app_stays_stopped_while_it_builds,
    docker_a_stopped_app_stays_stopped_while_it_builds,
    deleted_apps_stop_answering_at_once,
);

async fn a_stopped_app_stays_stopped_while_it_builds(backend: Backend) {
    stays_stopped(backend, Flavor::Process).await;
}

async fn docker_a_stopped_app_stays_stopped_while_it_builds(backend: Backend) {
    docker_ready().await;
    stays_stopped(backend, Flavor::Docker).await;
}

async fn stays_stopped(backend: Backend, flavor: Flavor) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let range = format!("{port}-{port}");
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    git_server.commit("v1", &flavor.sources("v1")).await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("work");
    let runner = RunnerProcess::start(&server, &token_file, &work, flavor.runner_args()).await;
    let app = create_app(&server, &format!("paused-{port}"), &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let first = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");
    stop_app(&server, &app).await;
    eventually("the app to stop", Duration::from_secs(20), || async {
        answer(port).await.is_err()
    })
    .await;

    // v2 builds slowly; meanwhile (several reconciliations: one a second here) nothing
    // answers on the app's port.
    let gate = db.dir().join("gate");
    let mut sources = flavor.sources("v2");
    match flavor {
        Flavor::Process => {
            sources.retain(|(name, _)| *name != "Procfile");
            sources.push((
                "Procfile",
                format!(
                    "web: python3 app.py\nbuild: while [ ! -e '{}' ]; do sleep 0.1; done\n",
                    gate.display()
                ),
            ));
        }
        Flavor::Docker => {
            for (name, text) in &mut sources {
                if *name == "Dockerfile" {
                    // A step of its own (Docker's cache would skip a known one).
                    *text = text.replace("COPY", &format!("RUN echo {port} && sleep 5\nCOPY"));
                }
            }
        }
    }
    git_server.commit("v2", &sources).await;
    let deployment = deploy(&server, &app).await;
    at_stage(&server, &deployment, "BUILD").await;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(3) {
        let served = answer(port).await;
        assert!(
            served.is_err(),
            "the old release served while the new one built: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(&gate, "open").expect("gate");
    let second = finished(&server, &deployment).await;
    assert_eq!(second["status"], "SUCCESS", "{second:#}");
    assert_eq!(answer(port).await.expect("v2 answers"), "v2");
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}

/// Five apps deleted one right after another: each stops answering within a second or so
/// (the figures are printed; before, two of five kept serving for 24–27 s).
async fn deleted_apps_stop_answering_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = free_ports(5);
    let range = format!("{first}-{}", first + 4);
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    git_server.push("v1", PROCFILE).await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("work");
    // No periodic pass: deletions must reach the runner as signals.
    let runner =
        RunnerProcess::start(&server, &token_file, &work, &["--reconcile-secs", "3600"]).await;
    let mut apps = Vec::new();
    for n in 0..5 {
        let app = create_app(&server, &format!("gone-{n}-{first}"), &git_server.url(), "").await;
        let id = app["id"].as_str().expect("id").to_owned();
        let done = finished(&server, &deploy(&server, &id).await).await;
        assert_eq!(done["status"], "SUCCESS", "{done:#}");
        let body = server
            .graphql(
                "query($id: ID!) { node(id: $id) { ... on App { currentPort } } }",
                json!({ "id": id }),
            )
            .await;
        let port = Server::data(&body)["node"]["currentPort"]
            .as_u64()
            .expect("a port") as u16;
        assert_eq!(answer(port).await.expect("answers"), "v1");
        apps.push((id, port));
    }
    let mut deleted = Vec::new();
    for (id, port) in &apps {
        server.delete_app(id).await;
        deleted.push((*port, Instant::now()));
    }
    let mut took = Vec::new();
    for (port, at) in deleted {
        eventually(
            "a deleted app to stop answering",
            Duration::from_secs(5),
            || async { answer(port).await.is_err() },
        )
        .await;
        took.push(format!("{:.2} s", at.elapsed().as_secs_f64()));
    }
    eprintln!("deleted apps stopped answering after: {}", took.join(", "));
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}
