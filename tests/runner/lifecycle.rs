//! The runner's life cycle of an app on both runtimes: deploy, redeploy under load with zero
//! failed requests, a failing health check that leaves the old version serving, a rollback
//! without a rebuild, a runner restart, stop and delete; cancellation, a killed runner and
//! retention; HOST apps; config vars; repositories that cannot deploy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use super::*;
use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb, global_id, http};

on_both_backends!(
    deploy_switch_rollback_restart_stop,
    docker_deploy_switch_rollback_restart_stop,
    cancel_kill_and_retention,
    host_apps_are_routed_by_name,
    config_vars_reach_the_app_and_stay_secret,
    hostile_repositories_fail_clearly,
);

async fn deploy_switch_rollback_restart_stop(backend: Backend) {
    lifecycle(backend, Flavor::Process).await;
}

async fn docker_deploy_switch_rollback_restart_stop(backend: Backend) {
    docker_ready().await;
    lifecycle(backend, Flavor::Docker).await;
}

async fn lifecycle(backend: Backend, flavor: Flavor) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let range = format!("{port}-{port}");
    // Containers and images are shared by parallel tests: a name of its own.
    let name = format!("sample-{port}");
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    let v1 = git_server.commit("v1", &flavor.sources("v1")).await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("runner-work");
    let extra = [flavor.runner_args(), &["--public-host", "runner-1.test"]].concat();
    let extra = extra.as_slice();
    let runner = RunnerProcess::start(&server, &token_file, &work, extra).await;

    let app = create_app(
        &server,
        &name,
        &git_server.url(),
        "healthCheckPath: \"/index.html\"",
    )
    .await["id"]
        .as_str()
        .expect("app")
        .to_owned();

    // v1: cloned, built, released, started, checked, switched.
    let first = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");
    assert_eq!(first["commitSha"], v1.as_str());
    assert_eq!(first["stage"], "SWITCH");
    let log = first["logs"].to_string();
    let built = match flavor {
        Flavor::Process => "building",
        Flavor::Docker => "image keystone/",
    };
    for marker in [
        "==> clone",
        "==> build",
        built,
        "==> release",
        "release phase",
        "==> start",
        "==> health check",
        "==> switch",
    ] {
        assert!(log.contains(marker), "{marker} in {log}");
    }
    if flavor == Flavor::Docker {
        let short: String = v1.chars().take(7).collect();
        let image = format!("keystone/{name}:{}-{short}", first["databaseId"]);
        assert_eq!(first["imageTag"], image.as_str(), "{first:#}");
        let labels = Command::new("docker")
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .Config.Labels}}",
                &image,
            ])
            .output()
            .await
            .expect("docker image inspect");
        let labels: Value = serde_json::from_slice(&labels.stdout).expect("labels");
        assert_eq!(labels["keystone.managed"], "true");
        assert_eq!(labels["keystone.app"], name.as_str());
    }
    assert_eq!(answer(port).await.expect("v1 answers"), "v1");
    let body = server
        .graphql(
            "query($id: ID!) { app: node(id: $id) { ... on App { status url runner } } }",
            json!({ "id": app }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["app"],
        json!({ "status": "RUNNING", "url": format!("http://runner-1.test:{port}"), "runner": "builder" }),
        "placed on its runner, reached at the host it advertises"
    );
    let viewer = server.create_token("watcher", "VIEWER").await;
    let (_, body) = server
        .graphql_as(
            &viewer,
            "query($id: ID!) { app: node(id: $id) { ... on App { runner } } }",
            json!({ "id": app }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );

    // v2 under load: not one request fails while traffic moves.
    let v2 = git_server.commit("v2", &flavor.sources("v2")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, served_v1, served_v2) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let load = {
        let (stop, failures) = (stop.clone(), failures.clone());
        let (served_v1, served_v2) = (served_v1.clone(), served_v2.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                match answer(port).await.as_deref() {
                    Ok("v1") => {
                        served_v1.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok("v2") => {
                        served_v2.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                sent += 1;
            }
            sent
        })
    };
    // The load runs across the switch: v1 answers it first.
    eventually("v1 to serve the load", Duration::from_secs(10), || async {
        served_v1.load(Ordering::SeqCst) > 0
    })
    .await;
    let second = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(second["status"], "SUCCESS", "{second:#}");
    assert_eq!(second["commitSha"], v2.as_str());
    eventually("v2 to serve the load", Duration::from_secs(10), || async {
        served_v2.load(Ordering::SeqCst) > 0
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let sent = load.await.expect("load");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed requests of {sent}"
    );

    // A version that does not start: v2 keeps serving; the log has its output.
    git_server.commit("broken", &flavor.sources("broken")).await;
    let third = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(third["status"], "FAILED", "{third:#}");
    let summary = third["errorSummary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("health check") && summary.contains("GET /index.html"),
        "the app's own check path is named: {summary}"
    );
    assert!(
        third["logs"].to_string().contains("missing DATABASE_URL"),
        "the app's output is in the log: {third:#}"
    );
    assert_eq!(answer(port).await.expect("v2 still answers"), "v2");

    // Roll back to v1: its release is reused, nothing is rebuilt.
    let body = server
        .graphql(
            "mutation($app: ID!, $to: ID!) { rollbackApp(input: { appId: $app, toDeploymentId: $to }) { deployment { id } } }",
            json!({ "app": app, "to": global_id("Deployment", first["databaseId"].as_i64().expect("id")) }),
        )
        .await;
    let rollback = Server::data(&body)["rollbackApp"]["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let rolled = finished(&server, &rollback).await;
    assert_eq!(rolled["status"], "SUCCESS", "{rolled:#}");
    assert_eq!(rolled["commitSha"], v1.as_str());
    let log = rolled["logs"].to_string();
    assert!(
        log.contains("again, where it was built (no rebuild)"),
        "{log}"
    );
    assert!(
        !log.contains("==> clone") && !log.contains("==> build"),
        "{log}"
    );
    assert_eq!(answer(port).await.expect("v1 again"), "v1");
    if flavor == Flavor::Docker {
        // Retention (`--keep-releases 2`): the releases of deployments 2 and 4 stay, and of
        // the images the two kept ones and the one the rollback runs (deployment 1's); the
        // failed deployment's image is gone.
        let releases = std::fs::read_dir(work.join("apps").join(&name).join("releases"))
            .expect("releases")
            .count();
        assert_eq!(releases, 2, "--keep-releases 2");
        let images = Command::new("docker")
            .args([
                "images",
                "--quiet",
                "--filter",
                &format!("label=keystone.app={name}"),
            ])
            .output()
            .await
            .expect("docker images");
        assert_eq!(String::from_utf8_lossy(&images.stdout).lines().count(), 2);
    }

    // A runner restart: the instance outlives it and is re-adopted (its port re-opened).
    runner.stop().await;
    let runner = RunnerProcess::start(&server, &token_file, &work, extra).await;
    let readopted = tokio::time::timeout(Duration::from_secs(20), async {
        while !answer(port).await.is_ok_and(|a| a == "v1") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        readopted.is_ok(),
        "the re-adopted app answers; runner log:\n{}",
        RunnerProcess::log(&work)
    );

    // Stop closes the port; delete removes releases.
    stop_app(&server, &app).await;
    eventually(
        "the stopped app's port to close",
        Duration::from_secs(20),
        || async { answer(port).await.is_err() },
    )
    .await;
    server.delete_app(&app).await;
    let releases = work.join("apps").join(&name);
    eventually(
        "the deleted app's releases to go",
        Duration::from_secs(20),
        || {
            let gone = !releases.exists();
            async move { gone }
        },
    )
    .await;
    if flavor == Flavor::Docker {
        eventually(
            "the deleted app's containers and images to go",
            Duration::from_secs(20),
            || {
                let name = name.clone();
                async move { docker_objects(&name).await == 0 }
            },
        )
        .await;
    }
    runner.stop().await;
    drop(git_server.daemon);
    server.stop_ok().await;
}

/// Cancelling during a build that daemonized a child leaves no process; a runner killed with
/// `kill -9` mid-build is replaced and the deployment finishes on its second attempt; only
/// the newest releases are kept.
async fn cancel_kill_and_retention(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let range = format!("{port}-{port}");
    let server = Server::start(
        &db,
        &[
            "--allow-private-git-hosts",
            "--port-range",
            &range,
            "--lease-secs",
            "3",
        ],
    )
    .await
    .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    // A build that puts a child in the background, then waits on another.
    let marker = format!("{}", 40_000 + u32::from(port % 1000));
    git_server
        .push(
            "slow",
            &format!("web: python3 app.py\nbuild: sleep {marker}1 & sleep {marker}2\n"),
        )
        .await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("runner-work");
    let keep = ["--keep-releases", "2"];
    let runner = RunnerProcess::start(&server, &token_file, &work, &keep).await;
    let app = create_app(&server, "sample", &git_server.url(), "").await["id"]
        .as_str()
        .expect("app")
        .to_owned();

    let cancelled = deploy(&server, &app).await;
    at_stage(&server, &cancelled, "BUILD").await;
    // (`sh -c` itself has the command in its command line too.)
    assert!(
        processes_with(&format!("sleep {marker}1")) >= 1,
        "the daemonized child runs"
    );
    Server::data(
        &server
            .graphql(
                "mutation($id: ID!) { cancelDeployment(input: { id: $id }) { cancelled } }",
                json!({ "id": cancelled }),
            )
            .await,
    );
    let ended = finished(&server, &cancelled).await;
    assert_eq!(ended["status"], "CANCELLED", "{ended:#}");
    eventually(
        "no build process to be left",
        Duration::from_secs(10),
        || async {
            processes_with(&format!("sleep {marker}1"))
                + processes_with(&format!("sleep {marker}2"))
                == 0
        },
    )
    .await;

    // kill -9 of the runner during a build; its successor kills the orphaned build and
    // finishes the deployment. (The build hangs until the flag exists: the retry is quick.)
    let flag = db.dir().join("crashed");
    let crash_commit = git_server
        .push(
            "v-after-crash",
            &format!(
                "web: python3 app.py\nbuild: test -e {} || sleep {marker}3\n",
                flag.display()
            ),
        )
        .await;
    let crashed = deploy(&server, &app).await;
    at_stage(&server, &crashed, "BUILD").await;
    let body = server.graphql(DEPLOYMENT, json!({ "id": crashed })).await;
    let id = Server::data(&body)["deployment"]["databaseId"]
        .as_i64()
        .expect("id");
    let group = std::fs::read_to_string(work.join(format!("builds/{id}/group")))
        .expect("the running step's group is recorded");
    runner.kill().await;
    std::fs::write(&flag, "").expect("flag");
    assert!(
        group_alive(group.trim()).await,
        "the build outlived its runner"
    );
    let runner = RunnerProcess::start(&server, &token_file, &work, &keep).await;
    eventually(
        "the orphaned build to be killed",
        Duration::from_secs(10),
        || async { !group_alive(group.trim()).await },
    )
    .await;
    let ended = finished(&server, &crashed).await;
    assert_eq!(ended["status"], "SUCCESS", "{ended:#}");
    assert_eq!(
        db.count(&format!(
            "SELECT CAST(attempts AS BIGINT) FROM api_deployment_run WHERE deployment_id = {id}"
        ))
        .await,
        2,
        "claimed again after the lease lapsed"
    );
    assert_eq!(answer(port).await.expect("answers"), "v-after-crash");

    // Retention: two more releases, and only the newest two are kept.
    for version in ["r2", "r3"] {
        git_server.push(version, "web: python3 app.py\n").await;
        let done = finished(&server, &deploy(&server, &app).await).await;
        assert_eq!(done["status"], "SUCCESS", "{done:#}");
    }
    assert_eq!(answer(port).await.expect("answers"), "r3");
    let releases = std::fs::read_dir(work.join("apps/sample/releases"))
        .expect("releases")
        .count();
    assert_eq!(releases, 2, "--keep-releases 2");
    // A rollback to a release that was pruned rebuilds the commit it recorded.
    let body = server
        .graphql(
            "mutation($app: ID!, $to: ID!) { rollbackApp(input: { appId: $app, toDeploymentId: $to }) { deployment { id } } }",
            json!({ "app": app, "to": global_id("Deployment", id) }),
        )
        .await;
    let rollback = Server::data(&body)["rollbackApp"]["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let rolled = finished(&server, &rollback).await;
    assert_eq!(rolled["status"], "SUCCESS", "{rolled:#}");
    assert_eq!(rolled["commitSha"], crash_commit.as_str());
    assert!(
        rolled["logs"].to_string().contains("rebuilding commit"),
        "{rolled:#}"
    );
    assert_eq!(answer(port).await.expect("answers"), "v-after-crash");
    runner.stop().await;
    // The app's instance outlives the runner; stop it for the next test.
    stop_app(&server, &app).await;
    let runner = RunnerProcess::start(&server, &token_file, &work, &keep).await;
    eventually(
        "the stopped app's port to close",
        Duration::from_secs(20),
        || async { answer(port).await.is_err() },
    )
    .await;
    runner.stop().await;
    drop(git_server.daemon);
    server.stop_ok().await;
}

/// A `HOST` app is served by name through the runner's router, switches without a gap like
/// a `PORT` app, and stops answering when stopped; other names get a 404.
async fn host_apps_are_routed_by_name(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(
        &db,
        &["--allow-private-git-hosts", "--apps-domain", "apps.test"],
    )
    .await
    .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    git_server.push("v1", PROCFILE).await;
    let token_file = runner_token_file(&server, &db).await;
    let router = free_port();
    let bind = format!("127.0.0.1:{router}");
    let extra = ["--host-bind", &bind, "--apps-domain", "apps.test"];
    let runner = RunnerProcess::start(&server, &token_file, &db.dir().join("work"), &extra).await;
    let name = format!("web-{router}");
    let created = &create_app(&server, &name, &git_server.url(), "accessMode: HOST").await;
    assert_eq!(created["url"], Value::Null, "no URL before it ever served");
    let app = created["id"].as_str().expect("id").to_owned();
    let first = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");
    let host = format!("{name}.apps.test");
    assert_eq!(answer_as(router, &host).await, Some((200, "v1".to_owned())));
    let body = server
        .graphql(
            "query($id: ID!) { node(id: $id) { ... on App { url } } }",
            json!({ "id": app }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["node"]["url"],
        format!("http://{name}.apps.test")
    );
    assert_eq!(
        answer_as(router, &format!("{host}:8080")).await,
        Some((200, "v1".to_owned())),
        "a port in Host is ignored"
    );
    let unknown = answer_as(router, "nobody.apps.test")
        .await
        .expect("answers");
    assert_eq!(unknown.0, 404);

    git_server.push("v2", PROCFILE).await;
    let second = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(second["status"], "SUCCESS", "{second:#}");
    assert_eq!(answer_as(router, &host).await, Some((200, "v2".to_owned())));

    stop_app(&server, &app).await;
    eventually(
        "the stopped HOST app to stop answering",
        Duration::from_secs(20),
        || async {
            answer_as(router, &host)
                .await
                .is_some_and(|(status, _)| status == 404)
        },
    )
    .await;
    runner.stop().await;
    drop(git_server.daemon);
    server.stop_ok().await;
}

/// Config vars reach the build and web processes, their values are never shown (API, log,
/// audit trail, database), and a change takes effect at the next deployment.
async fn config_vars_reach_the_app_and_stay_secret(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let range = format!("{port}-{port}");
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    let key = db.dir().join("keystone-secrets.key");
    let mode = std::fs::metadata(&key).expect("the key file").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let git_server = GitServer::start(db.dir()).await;
    git_server
        .push(
            "v1",
            "web: python3 app.py\nbuild: echo \"token is $API_TOKEN\"; echo \"build env: $(env | cut -d= -f1 | sort | tr '\\n' ' ')\"\n",
        )
        .await;
    let token_file = runner_token_file(&server, &db).await;
    let runner = RunnerProcess::start(
        &server,
        &token_file,
        &db.dir().join("work"),
        // No periodic pass during the test: the stop below reaches the runner as a signal.
        &["--reconcile-secs", "3600"],
    )
    .await;
    let app = create_app(&server, "configured", &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let secret = "s3cr3t-value-0123456789";
    for (name, value) in [("GREETING", "hello"), ("API_TOKEN", secret)] {
        let body = server
            .graphql(
                "mutation($a: ID!, $n: String!, $v: String!) { setAppEnv(input: { appId: $a, name: $n, value: $v }) { variable { name updatedAt } } }",
                json!({ "a": app, "n": name, "v": value }),
            )
            .await;
        assert_eq!(Server::data(&body)["setAppEnv"]["variable"]["name"], name);
    }
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            "mutation($a: ID!) { setAppEnv(input: { appId: $a, name: \"PORT\", value: \"1\" }) { appId } }",
            json!({ "a": app }),
        )
        .await;
    assert_eq!(
        crate::support::only_error(&body),
        ("BAD_USER_INPUT".to_owned(), Some("name".to_owned()))
    );
    let viewer = server.create_token("watcher", "VIEWER").await;
    let (_, body) = server
        .graphql_as(
            &viewer,
            "query($a: ID!) { node(id: $a) { ... on App { env { name } } } }",
            json!({ "a": app }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["node"]["env"],
        json!([{ "name": "API_TOKEN" }, { "name": "GREETING" }])
    );
    let done = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    assert_eq!(answer(port).await.expect("answers"), "v1hello");
    // Apps get their config vars, PORT and a few of the runner's variables; never the
    // runner's own settings.
    let names = http()
        .get(format!("http://127.0.0.1:{port}/env"))
        .send()
        .await
        .expect("GET /env")
        .text()
        .await
        .expect("body");
    let names: Vec<&str> = names.split(' ').collect();
    for name in ["API_TOKEN", "GREETING", "PORT", "PATH"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    for name in ["DATABASE_URL", "KEYSTONE_RUNNER_ONLY", "RUST_LOG"] {
        assert!(!names.contains(&name), "{name} in {names:?}");
    }
    let log = done["logs"].to_string();
    assert!(log.contains("token is [REDACTED]"), "{log}");
    assert!(
        log.contains("build env: ") && log.contains("API_TOKEN"),
        "{log}"
    );
    assert!(
        !log.contains("DATABASE_URL") && !log.contains("KEYSTONE_RUNNER_ONLY"),
        "{log}"
    );
    for place in [
        log,
        db.rows("SELECT arguments FROM api_audit_event")
            .await
            .join("\n"),
        db.rows("SELECT sealed FROM api_app_env").await.join("\n"),
    ] {
        assert!(!place.contains(secret), "the value leaked: {place}");
    }
    // With `restart: false`, a change waits for the next deployment.
    let body = server
        .graphql(
            "mutation($a: ID!) { unsetAppEnv(input: { appId: $a, name: \"GREETING\", restart: false }) { removed restart { id } } }",
            json!({ "a": app }),
        )
        .await;
    assert_eq!(Server::data(&body)["unsetAppEnv"]["restart"], Value::Null);
    assert_eq!(answer(port).await.expect("answers"), "v1hello");
    let done = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    assert_eq!(answer(port).await.expect("answers"), "v1");
    // By default a change restarts the running app with the new values (as `dokku
    // config:set` does): its release runs again, switched like a deploy, and not one
    // request fails meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures) = (stop.clone(), failures.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                if answer(port).await.is_err() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                sent += 1;
            }
            sent
        })
    };
    let body = server
        .graphql(
            "mutation($a: ID!) { setAppEnv(input: { appId: $a, name: \"GREETING\", value: \"bonjour\" }) { restart { id } } }",
            json!({ "a": app }),
        )
        .await;
    let restart = Server::data(&body)["setAppEnv"]["restart"]["id"]
        .as_str()
        .expect("a restart was queued")
        .to_owned();
    let restarted = finished(&server, &restart).await;
    assert_eq!(restarted["status"], "SUCCESS", "{restarted:#}");
    assert!(
        restarted["logs"].to_string().contains("(no rebuild)"),
        "the release runs again: {restarted:#}"
    );
    assert_eq!(answer(port).await.expect("answers"), "v1bonjour");
    stop.store(true, Ordering::SeqCst);
    let sent = load.await.expect("load");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed requests of {sent}"
    );
    stop_app(&server, &app).await;
    eventually("the app to stop", Duration::from_secs(20), || async {
        answer(port).await.is_err()
    })
    .await;
    runner.stop().await;
    drop(git_server.daemon);
    server.stop_ok().await;
}

/// Repositories that cannot deploy end in a clear `errorSummary`: one that does not exist, a
/// Procfile without `web`, and a build that prints 60 MB (the log stops at its cap with a
/// marker; the deployment still finishes).
async fn hostile_repositories_fail_clearly(backend: Backend) {
    let db = TestDb::new(backend).await;
    // One port: only the app that gets as far as serving is a PORT app.
    let port = free_port();
    let range = format!("{port}-{port}");
    let server = Server::start(
        &db,
        &[
            "--allow-private-git-hosts",
            "--max-log-bytes",
            "100000",
            "--port-range",
            &range,
        ],
    )
    .await
    .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    let token_file = runner_token_file(&server, &db).await;
    let runner = RunnerProcess::start(&server, &token_file, &db.dir().join("work"), &[]).await;
    let app_for = |url: String, name: &'static str, access: &'static str| {
        let server = &server;
        async move {
            create_app(server, name, &url, &format!("accessMode: {access}")).await["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let missing = app_for(
        format!("git://127.0.0.1:{}/gone.git", git_server.port),
        "missing",
        "HOST",
    )
    .await;
    let ended = finished(&server, &deploy(&server, &missing).await).await;
    assert_eq!(ended["status"], "FAILED", "{ended:#}");
    let summary = ended["errorSummary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("clone: exited with status"),
        "{summary}"
    );
    // The summary carries the failing step's last output: git's own message.
    assert!(summary.contains("fatal:"), "{summary}");

    git_server.push("v1", "release: echo no web here\n").await;
    let webless = app_for(git_server.url(), "webless", "HOST").await;
    let ended = finished(&server, &deploy(&server, &webless).await).await;
    assert_eq!(ended["status"], "FAILED", "{ended:#}");
    assert!(
        ended["errorSummary"]
            .as_str()
            .unwrap_or_default()
            .contains("add a Procfile with a `web:` process"),
        "{ended:#}"
    );

    git_server
        .push(
            "v1",
            "web: python3 app.py\nbuild: head -c 60000000 /dev/zero | tr '\\0' 'x' | fold -w 100\n",
        )
        .await;
    let chatty = app_for(git_server.url(), "chatty", "PORT").await;
    let ended = finished(&server, &deploy(&server, &chatty).await).await;
    assert_eq!(ended["status"], "SUCCESS", "{ended:#}");
    let log = ended["logs"].to_string();
    assert!(log.contains("reached its size limit"), "the log was capped");
    stop_app(&server, &chatty).await;
    runner.stop().await;
    drop(git_server.daemon);
    server.stop_ok().await;
}
