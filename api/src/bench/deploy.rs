//! `keystone bench-deploy`: what a deployment costs and what a switch costs its clients.
//!
//! It starts everything on loopback in a scratch directory — this binary's server (SQLite),
//! a `git daemon` with a sample app (Python's standard-library HTTP server), and this
//! binary's runner (process runtime) — then:
//!
//! 1. deploys v1 and reports the time spent in each stage (from `Deployment.stage`, polled
//!    every 10 ms) and in all;
//! 2. redeploys v2 while a client requests the app's port back to back, and reports the
//!    longest interval in which no request succeeded, and how many failed;
//! 3. measures the baseline in the same run: the same two versions restarted in place on
//!    one port (stop v1, start v2: what Piku does, and Dokku with raw host ports), with the
//!    same client; and prints the ratio;
//! 4. deploys a Flask app (gunicorn, from PyPI) and an Express app (from npm) as pushed,
//!    then deploys each again without a change: the redeploy finds its dependencies in the
//!    app's caches. Prints both times and their ratio (`--no-stacks` skips this part, which
//!    needs the package registries).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::runner::client::Client;

const APP: &str = r#"import http.server, os
VERSION = "__VERSION__"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[derive(Clone, Debug, clap::Args)]
pub struct DeployBenchArgs {
    /// Redeploys measured (the longest gap over all is reported).
    #[arg(long, default_value_t = 3)]
    pub redeploys: u32,
    /// Skip the Flask and Express apps (they download from PyPI and npm).
    #[arg(long)]
    pub no_stacks: bool,
}

const FLASK_APP: &str = "from flask import Flask\napp = Flask(__name__)\n\n@app.route(\"/\")\ndef index():\n    return \"flask\"\n";
const EXPRESS_PACKAGE: &str = r#"{"name": "bench-express", "version": "1.0.0", "private": true, "scripts": {"start": "node server.js"}, "dependencies": {"express": "^4.21.0"}}"#;
const EXPRESS_SERVER: &str = "const app = require('express')();\napp.get('/', (req, res) => res.send('express'));\napp.listen(Number(process.env.PORT), '127.0.0.1');\n";

/// A repository served by the bench's git daemon, and a work tree to push to it from.
struct Repo {
    work: std::path::PathBuf,
}

impl Repo {
    async fn create(root: &Path, name: &str) -> anyhow::Result<Self> {
        let bare = root.join("git").join(format!("{name}.git"));
        std::fs::create_dir_all(&bare)?;
        run_ok(git(&bare).args(["init", "-q", "--bare", "--initial-branch=main"])).await?;
        let work = root.join("src").join(name);
        std::fs::create_dir_all(&work)?;
        run_ok(git(&work).args(["init", "-q", "--initial-branch=main"])).await?;
        run_ok(git(&work).args(["remote", "add", "origin"]).arg(&bare)).await?;
        Ok(Self { work })
    }

    async fn push(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<()> {
        for (name, text) in files {
            std::fs::write(self.work.join(name), text)?;
        }
        run_ok(git(&self.work).args(["add", "-A"])).await?;
        run_ok(git(&self.work).args(["commit", "-q", "--allow-empty", "-m", message])).await?;
        run_ok(git(&self.work).args(["push", "-q", "origin", "main"])).await?;
        Ok(())
    }
}

/// Creates a HOST app named `name` from `git://127.0.0.1:<git_port>/<name>.git`.
async fn create_app(
    admin: &Client,
    git_port: u16,
    name: &str,
    access: &str,
) -> anyhow::Result<String> {
    let body: Value = admin
        .call(
            "mutation($n: String!, $u: String!) { createRepository(input: { name: $n, gitUrl: $u }) { repository { id } } }",
            json!({ "n": name, "u": format!("git://127.0.0.1:{git_port}/{name}.git") }),
        )
        .await?;
    let repository = body["createRepository"]["repository"]["id"].clone();
    let body: Value = admin
        .call(
            &format!("mutation($n: String!, $r: ID!) {{ createApp(input: {{ name: $n, repositoryId: $r, accessMode: {access} }}) {{ app {{ id }} }} }}"),
            json!({ "n": name, "r": repository }),
        )
        .await?;
    Ok(body["createApp"]["app"]["id"]
        .as_str()
        .context("app id")?
        .to_owned())
}

/// A Flask and an Express app: first deployment, then a redeploy without a change.
async fn measure_stacks(admin: &Client, root: &Path, git_port: u16) -> anyhow::Result<()> {
    let flask = Repo::create(root, "flask").await?;
    flask
        .push(
            &[
                ("app.py", FLASK_APP),
                ("requirements.txt", "flask\ngunicorn\n"),
                (
                    "Procfile",
                    "web: gunicorn app:app --bind 127.0.0.1:$PORT --workers 1\n",
                ),
            ],
            "flask",
        )
        .await?;
    let express = Repo::create(root, "express").await?;
    std::fs::write(express.work.join("package.json"), EXPRESS_PACKAGE)?;
    run_ok(
        Command::new("npm")
            .args([
                "install",
                "--package-lock-only",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
            ])
            .current_dir(&express.work),
    )
    .await
    .context("npm, to write the Express app's lockfile")?;
    express
        .push(&[("server.js", EXPRESS_SERVER)], "express")
        .await?;
    println!();
    println!("Stacks as pushed: first deployment, then a redeploy without a change:");
    for name in ["flask", "express"] {
        let app = create_app(admin, git_port, name, "HOST").await?;
        let first: Duration = deploy(admin, &app).await?.iter().map(|(_, d)| *d).sum();
        let again: Duration = deploy(admin, &app).await?.iter().map(|(_, d)| *d).sum();
        println!(
            "  {name:<8} first {:>7.3} s   no-change redeploy {:>7.3} s   ratio {:.3}",
            first.as_secs_f64(),
            again.as_secs_f64(),
            again.as_secs_f64() / first.as_secs_f64()
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().await?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@keystone.invalid",
        ])
        .current_dir(dir);
    command
}

async fn push(work: &Path, version: &str) -> anyhow::Result<()> {
    std::fs::write(work.join("app.py"), APP.replace("__VERSION__", version))?;
    std::fs::write(work.join("Procfile"), "web: python3 app.py\n")?;
    run_ok(git(work).args(["add", "-A"])).await?;
    run_ok(git(work).args(["commit", "-q", "-m", version])).await?;
    run_ok(git(work).args(["push", "-q", "origin", "main"])).await?;
    Ok(())
}

/// Starts `keystone serve` in `dir`; returns it and its base URL.
async fn start_server(dir: &Path, port: u16) -> anyhow::Result<(Child, String)> {
    let range = format!("{port}-{port}");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--bind", "127.0.0.1:0", "--port-range", &range])
        .arg("--allow-private-git-hosts")
        .args(["--rate-limit-per-second", "0"])
        .env("DATABASE_URL", "sqlite://bench.sqlite3?mode=rwc")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(at) = line.find("listening on http://") {
            let base = line[at + "listening on ".len()..].trim().to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, base));
        }
    }
    bail!("the server did not start")
}

/// Requests `http://127.0.0.1:<port>/` back to back until `stop`; the longest interval
/// without a successful answer (ms) and the failures go into the counters.
fn probe(port: u16, stop: Arc<AtomicBool>, gap_us: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut last_ok = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let ok = client
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let now = Instant::now();
            if ok {
                let gap = now.duration_since(last_ok).as_micros() as u64;
                gap_us.fetch_max(gap, Ordering::SeqCst);
                last_ok = now;
            } else {
                failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
}

/// Deploys `app` and waits for the end, timing each stage.
async fn deploy(admin: &Client, app: &str) -> anyhow::Result<Vec<(String, Duration)>> {
    let body: Value = admin
        .call(
            "mutation($a: ID!) { deployApp(input: { appId: $a }) { deployment { id } } }",
            json!({ "a": app }),
        )
        .await?;
    let id = body["deployApp"]["deployment"]["id"]
        .as_str()
        .context("deployment id")?
        .to_owned();
    let started = Instant::now();
    let mut stages: Vec<(String, Instant)> = vec![("QUEUED".into(), started)];
    loop {
        let body: Value = admin
            .call(
                "query($id: ID!) { deployment(id: $id) { status stage errorSummary } }",
                json!({ "id": id }),
            )
            .await?;
        let deployment = &body["deployment"];
        let stage = deployment["stage"].as_str().unwrap_or("QUEUED").to_owned();
        if stages.last().is_some_and(|(last, _)| *last != stage) {
            stages.push((stage, Instant::now()));
        }
        match deployment["status"].as_str() {
            Some("SUCCESS") => break,
            Some("QUEUED" | "RUNNING") => tokio::time::sleep(Duration::from_millis(10)).await,
            other => bail!(
                "the deployment ended {other:?}: {}",
                deployment["errorSummary"]
            ),
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the deployment did not finish within 120 s");
        }
    }
    let end = Instant::now();
    let mut timed = Vec::new();
    for (i, (stage, at)) in stages.iter().enumerate() {
        let next = stages.get(i + 1).map_or(end, |(_, t)| *t);
        timed.push((stage.clone(), next - *at));
    }
    Ok(timed)
}

/// The longest gap while `work` runs against a client probing `port`.
async fn measure_gap<F: std::future::Future<Output = anyhow::Result<()>>>(
    port: u16,
    work: F,
) -> anyhow::Result<(Duration, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (gap, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    probe(port, stop.clone(), gap.clone(), failed.clone());
    let result = work.await;
    // Let the client see the new version answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    result?;
    Ok((
        Duration::from_micros(gap.load(Ordering::SeqCst)),
        failed.load(Ordering::SeqCst),
    ))
}

pub async fn run(args: DeployBenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; measure with `cargo run --release -- bench-deploy`"
        );
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let port = free_port()?;
    let (_server, base) = start_server(root, port).await?;
    let admin_token = std::fs::read_to_string(root.join("keystone-admin.token"))?;
    let admin = Client::new(
        &base,
        &admin_token,
        crate::runner::client::tls_config(None)?,
    )?;
    let runner_token = run_ok(
        Command::new(std::env::current_exe()?)
            .args(["token", "create", "--name", "bench", "--role", "runner"])
            .env("DATABASE_URL", "sqlite://bench.sqlite3?mode=rwc")
            .current_dir(root),
    )
    .await?;
    std::fs::write(root.join("runner.token"), runner_token)?;
    // The repository.
    let sample = Repo::create(root, "sample").await?;
    push(&sample.work, "v1").await?;
    let git_port = free_port()?;
    // `git-daemon` itself: `git daemon` runs it as a child of its own, which killing `git`
    // would leave running.
    let exec_path = run_ok(git(root).arg("--exec-path")).await?;
    let _daemon = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={git_port}"))
        .arg(format!("--base-path={}", root.join("git").display()))
        .arg(root.join("git"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let _runner = Command::new(std::env::current_exe()?)
        .args(["runner", "--server", &base, "--token-file", "runner.token"])
        .args([
            "--work-dir",
            "runner",
            "--poll-ms",
            "50",
            "--health-interval-secs",
            "1",
        ])
        .args([
            "--drain-secs",
            "1",
            "--stop-grace-secs",
            "1",
            "--min-free-mib",
            "1",
            "--host-bind",
            "127.0.0.1:0",
        ])
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let app = create_app(&admin, git_port, "sample", "PORT").await?;

    let first = deploy(&admin, &app).await?;
    println!("First deployment of the sample app (process runtime), per stage:");
    let total: Duration = first.iter().map(|(_, d)| *d).sum();
    for (stage, took) in &first {
        println!("  {stage:<13} {:>8.3} s", took.as_secs_f64());
    }
    println!("  {:<13} {:>8.3} s", "total", total.as_secs_f64());

    let mut keystone_gap = Duration::ZERO;
    let mut keystone_failed = 0;
    for round in 0..args.redeploys {
        let version = format!("v{}", round + 2);
        push(&sample.work, &version).await?;
        let (gap, failed) =
            measure_gap(port, async { deploy(&admin, &app).await.map(|_| ()) }).await?;
        keystone_gap = keystone_gap.max(gap);
        keystone_failed += failed;
    }

    // Baseline: restart in place on one port.
    let baseline_port = free_port()?;
    let start = |version: &str| -> anyhow::Result<Child> {
        let script = root.join(format!("baseline-{version}.py"));
        std::fs::write(&script, APP.replace("__VERSION__", version))?;
        Ok(Command::new("python3")
            .arg(&script)
            .env("PORT", baseline_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?)
    };
    let mut current = start("v1")?;
    let ready = Instant::now();
    while reqwest::get(format!("http://127.0.0.1:{baseline_port}/"))
        .await
        .is_err()
    {
        if ready.elapsed() > Duration::from_secs(20) {
            bail!("the baseline app did not start");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut baseline_gap = Duration::ZERO;
    let mut baseline_failed = 0;
    for round in 0..args.redeploys {
        let version = format!("v{}", round + 2);
        let (gap, failed) = measure_gap(baseline_port, async {
            current.kill().await?;
            current = start(&version)?;
            let since = Instant::now();
            while reqwest::get(format!("http://127.0.0.1:{baseline_port}/"))
                .await
                .is_err()
            {
                if since.elapsed() > Duration::from_secs(20) {
                    bail!("the baseline app did not restart");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        })
        .await?;
        baseline_gap = baseline_gap.max(gap);
        baseline_failed += failed;
    }

    println!();
    println!(
        "Switch under a back-to-back client, worst of {} redeploys:",
        args.redeploys
    );
    println!(
        "  keystone (health-checked switch)   longest interval without an answer {:>8.3} s, failed requests {keystone_failed}",
        keystone_gap.as_secs_f64()
    );
    println!(
        "  baseline (restart in place)        longest interval without an answer {:>8.3} s, failed requests {baseline_failed}",
        baseline_gap.as_secs_f64()
    );
    if !baseline_gap.is_zero() {
        println!(
            "  ratio keystone / baseline: {:.3}",
            keystone_gap.as_secs_f64() / baseline_gap.as_secs_f64()
        );
    }
    if !args.no_stacks {
        measure_stacks(&admin, root, git_port).await?;
    }
    Ok(())
}
