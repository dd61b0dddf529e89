//! The runner, end to end: a real `git daemon` on loopback serving sample app repositories,
//! the real server, `keystone runner` and the `keystone proxy` it starts. This module holds
//! what the runner's tests share (the git server, the runner process, deploying and
//! waiting); each submodule is one concern.

mod data_plane;
mod desired_state;
mod docker;
mod lifecycle;
mod logs;
mod on_push;
mod protocol;
mod stacks;
mod tls;
mod walkthrough;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{Server, TestDb, free_port, free_ports, http};

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

/// Makes sure Docker can be used: `docker info` answers and the base image exists (it is
/// imported when missing). Without Docker the test is skipped (reported ignored), unless
/// `KEYSTONE_REQUIRE_DOCKER=1` (set by `.ci/run`) makes it fail.
async fn docker_ready() {
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
    if let Err(why) = ready {
        crate::support::unavailable(
            "KEYSTONE_REQUIRE_DOCKER",
            format!("Docker cannot be used ({why}); start dockerd (see .ci/run)"),
        );
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
        if self.path == "/headers":
            body = "\n".join(f"{k.lower()}={v}" for k, v in self.headers.items()).encode()
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

/// `git daemon` serving the repositories under `base` on a free loopback port: the process
/// and its port, once it listens.
async fn git_daemon(base: &Path) -> (Child, u16) {
    let port = free_port();
    // `git-daemon` itself: `git daemon` runs it as a child of its own, which killing `git`
    // would leave running.
    let exec_path = PathBuf::from(git(base, &["--exec-path"]).await);
    let daemon = Command::new(exec_path.join("git-daemon"))
        .args([
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", base.display()),
        ])
        .arg(base)
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
    (daemon, port)
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
        let (daemon, port) = git_daemon(&base).await;
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
        Self::start_at(&server.base_url, token_file, work, extra).await
    }

    /// A runner of the server at `url`.
    async fn start_at(url: &str, token_file: &Path, work: &Path, extra: &[&str]) -> RunnerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.with_extension("log"))
            .expect("runner log");
        let child = Command::new(env!("CARGO_BIN_EXE_keystone"))
            .arg("runner")
            .args(["--server", url])
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
            "mutation($id: ID!) { stopApp(input: { appId: $id }) { app { status } } }",
            json!({ "id": app }),
        )
        .await;
    assert_eq!(Server::data(&body)["stopApp"]["app"]["status"], "STOPPED");
}

async fn deploy(server: &Server, app: &str) -> String {
    deploy_with(server, app, "").await
}

/// `deployApp` with `fields` added to its input (`branch: "b"`): the deployment's ID.
async fn deploy_with(server: &Server, app: &str, fields: &str) -> String {
    let body = server
        .graphql(
            &format!(
                "mutation($id: ID!) {{ deployApp(input: {{ appId: $id, {fields} }}) {{ deployment {{ id }} }} }}"
            ),
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

/// Stops the proxy of `work` (it outlives the runner by design).
fn stop_proxy(work: &Path) {
    if let Ok(pid) = std::fs::read_to_string(work.join("proxy/proxy.pid")) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status();
    }
}
