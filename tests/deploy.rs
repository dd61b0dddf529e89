//! The runner, end to end: a real `git daemon` on loopback serving a sample app repository
//! (a small HTTP server from Python's standard library that answers with its version), the
//! real server, and `keystone runner` with the process runtime. Deploy, redeploy under load
//! with zero failed requests, a failing health check that leaves the old version serving,
//! a rollback without a rebuild, a runner restart, stop and delete.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb, global_id, http};

on_both_backends!(
    deploy_switch_rollback_restart_stop,
    docker_deploy_switch_rollback_restart_stop,
    cancel_kill_and_retention,
    host_apps_are_routed_by_name,
    config_vars_reach_the_app_and_stay_secret,
    hostile_repositories_fail_clearly,
    docker_cancel_during_build_leaves_no_process,
    docker_kill_mid_build_then_finish
);

/// The runner's runtimes, as the lifecycle test drives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Process,
    Docker,
}

/// The local base image Docker builds start from (no registry is reachable): a root file
/// system holding a static busybox, imported once.
const BASE_IMAGE: &str = "keystone-test/busybox:latest";

impl Flavor {
    fn runner_args(self) -> &'static [&'static str] {
        match self {
            Flavor::Process => &[],
            Flavor::Docker => &[
                "--runtime",
                "docker",
                "--docker-network",
                "host",
                "--keep-releases",
                "2",
            ],
        }
    }

    /// The sample app at `version` ("broken" exits at once, printing why).
    fn sources(self, version: &str) -> Vec<(&'static str, String)> {
        match self {
            Flavor::Process => vec![
                ("app.py", APP.replace("__VERSION__", version)),
                ("Procfile", PROCFILE.to_owned()),
            ],
            Flavor::Docker => {
                let command = if version == "broken" {
                    r#"echo "app: refusing to start: missing DATABASE_URL"; exit 3"#.to_owned()
                } else {
                    "exec httpd -f -p 127.0.0.1:$PORT -h /www".to_owned()
                };
                vec![
                    (
                        "Dockerfile",
                        format!(
                            "FROM {BASE_IMAGE}\nCOPY index.html /www/index.html\nCMD [\"sh\", \"-c\", {}]\n",
                            serde_json::to_string(&command).expect("json")
                        ),
                    ),
                    ("index.html", version.to_owned()),
                    (
                        "Procfile",
                        "web: unused with docker\nrelease: echo release phase\n".to_owned(),
                    ),
                ]
            }
        }
    }
}

/// Whether Docker can be used: `docker info` answers and the base image exists (it is
/// imported when missing). Without Docker the Docker tests say so and pass, unless
/// `KEYSTONE_REQUIRE_DOCKER=1` (set by `.ci/run`) makes them fail.
async fn docker_ready() -> bool {
    static READY: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();
    let ready = READY
        .get_or_init(|| async {
            let info = Command::new("docker").arg("info").output().await;
            if !info.is_ok_and(|o| o.status.success()) {
                return Err("`docker info` fails: no Docker engine is running".to_owned());
            }
            let present = Command::new("docker")
                .args(["image", "inspect", BASE_IMAGE])
                .output()
                .await
                .is_ok_and(|o| o.status.success());
            if present {
                return Ok(());
            }
            let busybox = ["/bin/busybox", "/usr/bin/busybox"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .ok_or(
                    "no busybox to build the base image from (apt-get install busybox-static)",
                )?;
            let root = tempfile::tempdir().map_err(|e| e.to_string())?;
            std::fs::create_dir_all(root.path().join("bin")).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(root.path().join("www")).map_err(|e| e.to_string())?;
            std::fs::copy(busybox, root.path().join("bin/busybox")).map_err(|e| e.to_string())?;
            for applet in ["sh", "echo", "httpd", "sleep", "cat", "ls", "true"] {
                std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet))
                    .map_err(|e| e.to_string())?;
            }
            let import = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "tar -C '{}' -c . | docker import - {BASE_IMAGE}",
                    root.path().display()
                ))
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if import.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "docker import: {}",
                    String::from_utf8_lossy(&import.stderr)
                ))
            }
        })
        .await;
    match ready {
        Ok(()) => true,
        Err(why) if std::env::var("KEYSTONE_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("KEYSTONE_REQUIRE_DOCKER=1 but Docker cannot be used: {why}")
        }
        Err(why) => {
            eprintln!(
                "note: skipping the Docker runtime test ({why}); start dockerd (see .ci/run) to run it"
            );
            false
        }
    }
}

/// The Docker objects labelled for `app`: containers and images.
async fn docker_objects(app: &str) -> usize {
    let filter = format!("label=keystone.app={app}");
    let mut count = 0;
    for args in [
        vec!["ps", "--all", "--quiet", "--filter", &filter],
        vec!["images", "--quiet", "--filter", &filter],
    ] {
        let output = Command::new("docker")
            .args(&args)
            .output()
            .await
            .expect("docker");
        count += String::from_utf8_lossy(&output.stdout).lines().count();
    }
    count
}

const APP: &str = r#"import http.server, os, sys
VERSION = "__VERSION__"
if VERSION == "broken":
    print("app: refusing to start: missing DATABASE_URL", flush=True)
    sys.exit(3)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (VERSION + os.environ.get("GREETING", "")).encode()
        if self.path == "/env":
            body = " ".join(sorted(os.environ)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("app: serving", VERSION, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// A bare repository served by `git daemon` on loopback, and a work tree to push from.
struct GitServer {
    daemon: Child,
    port: u16,
    work: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A runner token for `server`, in `<test dir>/runner.token`; the file's path.
async fn runner_token_file(server: &Server, db: &TestDb) -> PathBuf {
    let token = server.create_token("builder", "RUNNER").await;
    let path = db.dir().join("runner.token");
    std::fs::write(&path, token).expect("token file");
    path
}

/// A repository at `url` and an app of it, both called `name`, with the extra `createApp`
/// input `fields` (`accessMode: HOST`, …): the app's `{ id url healthCheckPath }`.
async fn create_app(server: &Server, name: &str, url: &str, fields: &str) -> Value {
    let body = server
        .graphql(
            "mutation($n: String!, $u: String!) { createRepository(input: { name: $n, gitUrl: $u }) { repository { id } } }",
            json!({ "n": name, "u": url }),
        )
        .await;
    let repository = Server::data(&body)["createRepository"]["repository"]["id"].clone();
    let body = server
        .graphql(
            &format!(
                "mutation($n: String!, $r: ID!) {{ createApp(input: {{ name: $n, repositoryId: $r, {fields} }}) {{ app {{ id url healthCheckPath }} }} }}"
            ),
            json!({ "n": name, "r": repository }),
        )
        .await;
    Server::data(&body)["createApp"]["app"].clone()
}

async fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Keystone Test",
            "-c",
            "user.email=test@keystone.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .expect("git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Waits until `condition` holds, checking every 100 ms, for at most `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl GitServer {
    async fn start(dir: &Path) -> GitServer {
        let base = dir.join("git");
        let bare = base.join("app.git");
        std::fs::create_dir_all(&bare).expect("dirs");
        git(&bare, &["init", "--bare", "--initial-branch=main"]).await;
        let work = dir.join("app-src");
        std::fs::create_dir_all(&work).expect("dirs");
        git(&work, &["init", "--initial-branch=main"]).await;
        git(
            &work,
            &["remote", "add", "origin", bare.to_str().expect("path")],
        )
        .await;
        let port = free_port();
        // `git-daemon` itself: `git daemon` runs it as a child of its own, which killing
        // `git` would leave running.
        let exec_path = PathBuf::from(git(&base, &["--exec-path"]).await);
        let daemon = Command::new(exec_path.join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
            ])
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("git daemon");
        eventually("git daemon to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        GitServer { daemon, port, work }
    }

    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/app.git", self.port)
    }

    /// Commits the app at `version` (and `procfile`) and pushes it; returns the commit.
    async fn push(&self, version: &str, procfile: &str) -> String {
        self.commit(
            version,
            &[
                ("app.py", APP.replace("__VERSION__", version)),
                ("Procfile", procfile.to_owned()),
            ],
        )
        .await
    }

    /// Replaces the work tree's files with `files`, commits and pushes; returns the commit.
    async fn commit(&self, message: &str, files: &[(&str, String)]) -> String {
        for entry in std::fs::read_dir(&self.work).expect("work tree").flatten() {
            if entry.file_name() != ".git" {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for (name, content) in files {
            std::fs::write(self.work.join(name), content).expect("file");
        }
        git(&self.work, &["add", "-A"]).await;
        git(&self.work, &["commit", "-q", "-m", message]).await;
        git(&self.work, &["push", "-q", "origin", "main"]).await;
        git(&self.work, &["rev-parse", "HEAD"]).await
    }
}

const PROCFILE: &str = "web: python3 app.py\nbuild: echo building $(cat app.py | wc -l) lines\nrelease: echo release phase\n";

/// `extra`, plus the tests' defaults for the settings it does not name (quick polls and
/// passes, short drains and deadlines).
fn with_defaults<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    // The HOST router on a port of its own: tests run in parallel.
    const DEFAULTS: [(&str, &str); 8] = [
        ("--host-bind", "127.0.0.1:0"),
        ("--poll-ms", "200"),
        ("--reconcile-secs", "1"),
        ("--health-interval-secs", "1"),
        ("--health-deadline-secs", "15"),
        ("--drain-secs", "2"),
        ("--stop-grace-secs", "2"),
        ("--min-free-mib", "1"),
    ];
    let mut args = extra.to_vec();
    for (flag, value) in DEFAULTS {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args
}

/// A `keystone runner` process.
struct RunnerProcess {
    child: Child,
}

impl RunnerProcess {
    /// Its log (both runs of a test append to one file beside the work directory).
    fn log(work: &Path) -> String {
        std::fs::read_to_string(work.with_extension("log")).unwrap_or_default()
    }

    async fn start(
        server: &Server,
        token_file: &Path,
        work: &Path,
        extra: &[&str],
    ) -> RunnerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.with_extension("log"))
            .expect("runner log");
        let child = Command::new(env!("CARGO_BIN_EXE_keystone"))
            .arg("runner")
            .args(["--server", &server.base_url])
            .arg("--token-file")
            .arg(token_file)
            .arg("--work-dir")
            .arg(work)
            .args(with_defaults(extra))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // The runner's own settings, which no app may see.
            .env("DATABASE_URL", "postgres://runner:secret@127.0.0.1/runner")
            .env("KEYSTONE_RUNNER_ONLY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("keystone runner");
        RunnerProcess { child }
    }

    /// SIGKILL: the runner dies mid-step, as on a crash.
    async fn kill(mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("wait");
    }

    /// SIGTERM, and wait for it to exit.
    async fn stop(mut self) {
        let pid = self.child.id().expect("pid");
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the runner stops within 20 s")
            .expect("wait");
    }
}

/// `stopApp`: the app is `STOPPED`; its runner stops it when it reconciles.
async fn stop_app(server: &Server, app: &str) {
    let body = server
        .graphql(
            "mutation($id: ID!) { stopApp(input: { id: $id }) { app { status } } }",
            json!({ "id": app }),
        )
        .await;
    assert_eq!(Server::data(&body)["stopApp"]["app"]["status"], "STOPPED");
}

async fn deploy(server: &Server, app: &str) -> String {
    let body = server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    Server::data(&body)["deployApp"]["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

const DEPLOYMENT: &str = "query($id: ID!) { deployment(id: $id) { databaseId status stage commitSha imageTag errorSummary logs(tail: 500) } }";

/// Waits for `deployment` to end; returns it.
async fn finished(server: &Server, deployment: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let body = server
            .graphql(DEPLOYMENT, json!({ "id": deployment }))
            .await;
        let last = Server::data(&body)["deployment"].clone();
        if !matches!(last["status"].as_str(), Some("QUEUED" | "RUNNING")) {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment still {}: {last:#}",
            last["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `http://127.0.0.1:<port>/` answers.
async fn answer(port: u16) -> Result<String, reqwest::Error> {
    let text = http()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text.trim().to_owned())
}

async fn deploy_switch_rollback_restart_stop(backend: Backend) {
    lifecycle(backend, Flavor::Process).await;
}

async fn docker_deploy_switch_rollback_restart_stop(backend: Backend) {
    if docker_ready().await {
        lifecycle(backend, Flavor::Docker).await;
    }
}

async fn lifecycle(backend: Backend, flavor: Flavor) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
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
    let (failures, served_v2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, failures, served_v2) = (stop.clone(), failures.clone(), served_v2.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                match answer(port).await.as_deref() {
                    Ok("v1") => {}
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
    assert!(sent > 20, "the load ran: {sent} requests");

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
    assert!(log.contains("again, where it was built (no rebuild)"), "{log}");
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
    Server::data(
        &server
            .graphql(
                "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
                json!({ "id": app }),
            )
            .await,
    );
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
    server.stop().await;
    db.cleanup().await;
}

/// How many processes have `needle` in their command line.
fn processes_with(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
                .is_ok_and(|cmdline| cmdline.contains(needle))
        })
        .count()
}

/// Waits until `deployment` has reached `stage`.
async fn at_stage(server: &Server, deployment: &str, stage: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = server
            .graphql(DEPLOYMENT, json!({ "id": deployment }))
            .await;
        let current = Server::data(&body)["deployment"].clone();
        if current["stage"] == stage {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment never reached {stage}: {current:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cancelling during a build that daemonized a child leaves no process; a runner killed with
/// `kill -9` mid-build is replaced and the deployment finishes on its second attempt; only
/// the newest releases are kept.
async fn cancel_kill_and_retention(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
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
    server.stop().await;
    db.cleanup().await;
}

/// Whether any process of group `group` lives (`kill -0 -- -<group>`).
async fn group_alive(group: &str) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success())
}

/// What the runner's HOST router answers for `host`: (status, body).
async fn answer_as(router: u16, host: &str) -> Option<(u16, String)> {
    let response = http()
        .get(format!("http://127.0.0.1:{router}/"))
        .header("Host", host)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?.trim().to_owned()))
}

/// A `HOST` app is served by name through the runner's router, switches without a gap like
/// a `PORT` app, and stops answering when stopped; other names get a 404.
async fn host_apps_are_routed_by_name(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
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
    assert_eq!(created["url"], format!("http://{name}.apps.test"));
    let app = created["id"].as_str().expect("id").to_owned();
    let first = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");
    let host = format!("{name}.apps.test");
    assert_eq!(answer_as(router, &host).await, Some((200, "v1".to_owned())));
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
    server.stop().await;
    db.cleanup().await;
}

/// Config vars reach the build and web processes, their values are never shown (API, log,
/// audit trail, database), and a change takes effect at the next deployment.
async fn config_vars_reach_the_app_and_stay_secret(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
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
    // A change takes effect at the next deployment.
    Server::data(
        &server
            .graphql(
                "mutation($a: ID!) { unsetAppEnv(input: { appId: $a, name: \"GREETING\" }) { removed } }",
                json!({ "a": app }),
            )
            .await,
    );
    assert_eq!(answer(port).await.expect("answers"), "v1hello");
    let done = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    assert_eq!(answer(port).await.expect("answers"), "v1");
    stop_app(&server, &app).await;
    eventually("the app to stop", Duration::from_secs(20), || async {
        answer(port).await.is_err()
    })
    .await;
    runner.stop().await;
    drop(git_server.daemon);
    server.stop().await;
    db.cleanup().await;
}

/// Repositories that cannot deploy end in a clear `errorSummary`: one that does not exist, a
/// Procfile without `web`, and a build that prints 60 MB (the log stops at its cap with a
/// marker; the deployment still finishes).
async fn hostile_repositories_fail_clearly(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
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
    server.stop().await;
    db.cleanup().await;
}

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
    /// `None` when Docker or the database is not available (the caller's test then passes).
    async fn start(backend: Backend, run: impl Fn(&str) -> String) -> Option<Self> {
        if !docker_ready().await {
            return None;
        }
        let db = TestDb::new(backend).await?;
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
        Some(Self {
            db,
            server,
            git_server,
            token_file,
            work,
            runner: Some(runner),
            app,
            deployment,
            marker,
        })
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
        self.server.stop().await;
        self.db.cleanup().await;
    }
}

/// Docker: cancelling during `docker build` (a `RUN` step that backgrounds a child) ends the
/// deployment `CANCELLED` and leaves no process of the build behind.
async fn docker_cancel_during_build_leaves_no_process(backend: Backend) {
    let Some(build) = BuildInProgress::start(backend, |marker| {
        format!("sleep {marker}1 & sleep {marker}2")
    })
    .await
    else {
        return;
    };
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
    let Some(mut build) =
        BuildInProgress::start(backend, |marker| format!("sleep {marker}3")).await
    else {
        return;
    };
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
    Server::data(
        &build
            .server
            .graphql(
                "mutation($id: ID!) { deleteApp(input: { id: $id }) { deletedAppId } }",
                json!({ "id": build.app }),
            )
            .await,
    );
    eventually(
        "the app's containers and images to go",
        Duration::from_secs(20),
        || async { docker_objects(&format!("build-{}", build.marker)).await == 0 },
    )
    .await;
    build.stop().await;
}
