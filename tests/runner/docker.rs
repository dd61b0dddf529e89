//! The Docker runtime's own cases: cancelling a build stops its `RUN` step, and a runner
//! killed mid-build is replaced by one that finishes the deployment.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb};

on_both_backends!(
    docker_cancel_during_build_leaves_no_process,
    docker_kill_mid_build_then_finish
);

/// A sample Dockerfile app whose build runs `run` (then serves `index.html`).
fn docker_sources(run: &str, page: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {BASE_IMAGE}\nRUN {run}\nCOPY index.html /www/index.html\nCMD [\"sh\", \"-c\", \"exec httpd -f -p 127.0.0.1:$PORT -h /www\"]\n"
            ),
        ),
        ("index.html", page.to_owned()),
    ]
}

/// A Docker runner caught in a `docker build` whose `RUN` step is `sleep <marker>…` (the
/// marker finds its processes): the server, git daemon, runner, app and deployment.
struct BuildInProgress {
    db: TestDb,
    server: Server,
    git_server: GitServer,
    token_file: PathBuf,
    work: PathBuf,
    /// `None` while it is down.
    runner: Option<RunnerProcess>,
    app: String,
    deployment: String,
    marker: String,
}

impl BuildInProgress {
    /// Skips the test when Docker or the database is not available.
    async fn start(backend: Backend, run: impl Fn(&str) -> String) -> Self {
        docker_ready().await;
        let db = TestDb::new(backend).await;
        let server = Server::start(&db, &["--allow-private-git-hosts", "--lease-secs", "3"])
            .await
            .expect("server starts");
        let git_server = GitServer::start(db.dir()).await;
        let marker = format!("{}", 50_000 + u32::from(free_port() % 10_000));
        git_server
            .commit("slow", &docker_sources(&run(&marker), "slow"))
            .await;
        let token_file = runner_token_file(&server, &db).await;
        let work = db.dir().join("work");
        let runner =
            RunnerProcess::start(&server, &token_file, &work, Flavor::Docker.runner_args()).await;
        let name = format!("build-{marker}");
        let app = create_app(&server, &name, &git_server.url(), "accessMode: HOST").await["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let deployment = deploy(&server, &app).await;
        at_stage(&server, &deployment, "BUILD").await;
        eventually(
            "the build's RUN step to start",
            Duration::from_secs(30),
            || async { processes_with(&format!("sleep {marker}")) >= 1 },
        )
        .await;
        Self {
            db,
            server,
            git_server,
            token_file,
            work,
            runner: Some(runner),
            app,
            deployment,
            marker,
        }
    }

    /// How many processes of the build's `RUN` step run.
    fn build_processes(&self) -> usize {
        processes_with(&format!("sleep {}", self.marker))
    }

    async fn stop(self) {
        if let Some(runner) = self.runner {
            runner.stop().await;
        }
        drop(self.git_server.daemon);
        self.server.stop_ok().await;
    }
}

/// Docker: cancelling during `docker build` (a `RUN` step that backgrounds a child) ends the
/// deployment `CANCELLED` and leaves no process of the build behind.
async fn docker_cancel_during_build_leaves_no_process(backend: Backend) {
    let build = BuildInProgress::start(backend, |marker| {
        format!("sleep {marker}1 & sleep {marker}2")
    })
    .await;
    Server::data(
        &build
            .server
            .graphql(
                "mutation($id: ID!) { cancelDeployment(input: { id: $id }) { cancelled } }",
                json!({ "id": build.deployment }),
            )
            .await,
    );
    let ended = finished(&build.server, &build.deployment).await;
    assert_eq!(ended["status"], "CANCELLED", "{ended:#}");
    eventually(
        "no process of the build to be left",
        Duration::from_secs(15),
        || async { build.build_processes() == 0 },
    )
    .await;
    build.stop().await;
}

/// Docker: `kill -9` of the runner during `docker build` leaves the build running; the runner
/// started again kills it, and claims the deployment again once the lease lapses (its second
/// attempt builds the branch as it is then) and finishes it.
async fn docker_kill_mid_build_then_finish(backend: Backend) {
    let mut build = BuildInProgress::start(backend, |marker| format!("sleep {marker}3")).await;
    build.runner.take().expect("a runner").kill().await;
    assert!(
        build.build_processes() >= 1,
        "the build outlived its runner"
    );
    build
        .git_server
        .commit("quick", &docker_sources("true", "quick"))
        .await;
    build.runner = Some(
        RunnerProcess::start(
            &build.server,
            &build.token_file,
            &build.work,
            Flavor::Docker.runner_args(),
        )
        .await,
    );
    eventually(
        "the orphaned build to be stopped",
        Duration::from_secs(20),
        || async { build.build_processes() == 0 },
    )
    .await;
    let ended = finished(&build.server, &build.deployment).await;
    assert_eq!(ended["status"], "SUCCESS", "{ended:#}");
    let id = ended["databaseId"].as_i64().expect("id");
    assert_eq!(
        build
            .db
            .count(&format!(
                "SELECT CAST(attempts AS BIGINT) FROM api_deployment_run WHERE deployment_id = {id}"
            ))
            .await,
        2,
        "claimed again after the lease lapsed"
    );
    build.server.delete_app(&build.app).await;
    eventually(
        "the app's containers and images to go",
        Duration::from_secs(20),
        || async { docker_objects(&format!("build-{}", build.marker)).await == 0 },
    )
    .await;
    build.stop().await;
}
