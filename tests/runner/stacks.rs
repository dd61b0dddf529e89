//! Apps deploy as they are pushed: a Flask app served by gunicorn (its dependencies installed
//! into a virtualenv in the release, from PyPI), an Express app (`npm ci` from its lockfile,
//! `npm run build`, served by `npm start` without a Procfile), a static site (served by
//! Keystone itself). Releases are built where they run: after seven deploys of a virtualenv
//! app, rollbacks to the oldest kept release and to a pruned one both serve.
//!
//! These tests download from the package registries this machine reaches. The backend plays
//! no part in a build (the runner protocol runs on both in `lifecycle`): SQLite only.

use super::*;
use crate::support::{Backend, Server, TestDb, global_id};

const FLASK_APP: &str = r#"from flask import Flask
app = Flask(__name__)

@app.route("/")
def index():
    return "__VERSION__"
"#;

const GUNICORN: &str = "web: gunicorn app:app --bind 127.0.0.1:$PORT --workers 1\n";

fn flask(version: &str) -> Vec<(&'static str, String)> {
    vec![
        ("app.py", FLASK_APP.replace("__VERSION__", version)),
        ("requirements.txt", "flask\ngunicorn\n".to_owned()),
        ("Procfile", GUNICORN.to_owned()),
    ]
}

/// A server, a git server and a runner on a PORT app of its own: (server, git, runner,
/// work dir, app id, port).
struct Setup {
    /// Kept for the test's life (its schema and directory go with it).
    _db: TestDb,
    server: Server,
    git: GitServer,
    runner: RunnerProcess,
    work: std::path::PathBuf,
    port: u16,
}

impl Setup {
    async fn start(extra: &[&str]) -> Setup {
        let db = TestDb::new(Backend::Sqlite).await;
        let port = free_port();
        let range = format!("{port}-{port}");
        let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
            .await
            .expect("server starts");
        let git = GitServer::start(db.dir()).await;
        let token_file = runner_token_file(&server, &db).await;
        let work = db.dir().join("work");
        // Builds download: give health checks and builds room on a slow machine.
        let mut args = vec!["--health-deadline-secs", "60"];
        args.extend_from_slice(extra);
        let runner = RunnerProcess::start(&server, &token_file, &work, &args).await;
        Setup {
            _db: db,
            server,
            git,
            runner,
            work,
            port,
        }
    }

    async fn app(&self, name: &str) -> String {
        create_app(&self.server, name, &self.git.url(), "").await["id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    async fn deployed(&self, app: &str) -> Value {
        finished(&self.server, &deploy(&self.server, app).await).await
    }

    async fn stop(self) {
        self.runner.stop().await;
        stop_proxy(&self.work);
        self.server.stop_ok().await;
    }
}

crate::e2e!(a_flask_app_deploys_as_pushed);
async fn a_flask_app_deploys_as_pushed() {
    let setup = Setup::start(&[]).await;
    setup.git.commit("v1", &flask("flask-v1")).await;
    let app = setup.app("flask").await;
    let first = setup.deployed(&app).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");
    assert_eq!(answer(setup.port).await.expect("answers"), "flask-v1");
    let log = first["logs"].to_string();
    for marker in [
        "Python app detected",
        "downloading and building dependencies",
    ] {
        assert!(log.contains(marker), "{marker} in {log}");
    }
    // The virtualenv is in the release, and what it records points there.
    let releases = setup.work.join("apps/flask/releases");
    let release = std::fs::read_dir(&releases)
        .expect("releases")
        .flatten()
        .next()
        .expect("a release")
        .path();
    let gunicorn = std::fs::read_to_string(release.join(".venv/bin/gunicorn")).expect("gunicorn");
    assert!(
        gunicorn.starts_with(&format!("#!{}", release.join(".venv/bin/python").display())),
        "{gunicorn}"
    );

    // Unchanged dependencies: installed from the app's wheel cache, without the index.
    setup.git.commit("v2", &flask("flask-v2")).await;
    let second = setup.deployed(&app).await;
    assert_eq!(second["status"], "SUCCESS", "{second:#}");
    assert!(
        second["logs"]
            .to_string()
            .contains("dependencies unchanged"),
        "{second:#}"
    );
    assert_eq!(answer(setup.port).await.expect("answers"), "flask-v2");

    // A version the host does not have is refused, naming what it has.
    let mut files = flask("flask-v3");
    files.push((".python-version", "2.6\n".to_owned()));
    setup.git.commit("v3", &files).await;
    let third = setup.deployed(&app).await;
    assert_eq!(third["status"], "FAILED", "{third:#}");
    let summary = third["errorSummary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(".python-version asks for Python 2.6") && summary.contains("it has 3."),
        "{summary}"
    );
    assert_eq!(
        answer(setup.port).await.expect("v2 still serves"),
        "flask-v2"
    );

    // KEYSTONE_BUILDPACK=none: no detection, so nothing installs gunicorn.
    let body = setup
        .server
        .graphql(
            "mutation($a: ID!) { setAppEnv(input: { appId: $a, name: \"KEYSTONE_BUILDPACK\", value: \"none\", restart: false }) { appId } }",
            json!({ "a": app }),
        )
        .await;
    Server::data(&body);
    setup.git.commit("v4", &flask("flask-v4")).await;
    let fourth = setup.deployed(&app).await;
    assert_eq!(fourth["status"], "FAILED", "{fourth:#}");
    let log = fourth["logs"].to_string();
    assert!(log.contains("stack detection is off"), "{log}");
    assert!(log.contains("gunicorn: not found"), "{log}");
    setup.stop().await;
}

/// The lockfile npm writes for `package_json` (made once here, committed with the app).
async fn npm_lockfile(package_json: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("package.json"), package_json).expect("package.json");
    let output = Command::new("npm")
        .args([
            "install",
            "--package-lock-only",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
        ])
        .current_dir(dir.path())
        .output()
        .await
        .expect("npm");
    assert!(
        output.status.success(),
        "npm: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(dir.path().join("package-lock.json")).expect("package-lock.json")
}

fn express(version: &str, engines: &str, lockfile: &str) -> Vec<(&'static str, String)> {
    let package = express_package(engines);
    vec![
        ("package.json", package),
        ("package-lock.json", lockfile.to_owned()),
        (
            "server.js",
            "const express = require('express');\nconst fs = require('fs');\nconst app = express();\n\
             app.get('/', (req, res) => res.send(fs.readFileSync('dist/version.txt', 'utf8') + ' ' + process.env.NODE_ENV));\n\
             app.listen(Number(process.env.PORT), '127.0.0.1');\n"
                .to_owned(),
        ),
        (
            "build.js",
            format!(
                "const fs = require('fs');\nfs.mkdirSync('dist', {{ recursive: true }});\n\
                 fs.writeFileSync('dist/version.txt', '{version}');\nconsole.log('built {version}');\n"
            ),
        ),
    ]
}

fn express_package(engines: &str) -> String {
    json!({
        "name": "express-sample",
        "version": "1.0.0",
        "private": true,
        "scripts": { "start": "node server.js", "build": "node build.js" },
        "engines": { "node": engines },
        "dependencies": { "express": "^4.21.0" }
    })
    .to_string()
}

crate::e2e!(an_express_app_deploys_as_pushed);
async fn an_express_app_deploys_as_pushed() {
    let setup = Setup::start(&[]).await;
    let lockfile = npm_lockfile(&express_package(">=18")).await;
    setup
        .git
        .commit("v1", &express("express-v1", ">=18", &lockfile))
        .await;
    let app = setup.app("express").await;
    let first = setup.deployed(&app).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");
    // Built by `npm run build`, served by `npm start` (no Procfile), in production.
    assert_eq!(
        answer(setup.port).await.expect("answers"),
        "express-v1 production"
    );
    let log = first["logs"].to_string();
    for marker in ["Node.js app detected", "npm run build", "built express-v1"] {
        assert!(log.contains(marker), "{marker} in {log}");
    }

    // engines.node that the host's Node.js is not in: refused, naming both.
    setup
        .git
        .commit("v2", &express("express-v2", ">=99", &lockfile))
        .await;
    let second = setup.deployed(&app).await;
    assert_eq!(second["status"], "FAILED", "{second:#}");
    let summary = second["errorSummary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("engines.node asks for \">=99\"")
            && summary.contains("this host has Node.js"),
        "{summary}"
    );
    assert_eq!(
        answer(setup.port).await.expect("v1 still serves"),
        "express-v1 production"
    );
    setup.stop().await;
}

crate::e2e!(a_static_site_deploys_as_pushed);
async fn a_static_site_deploys_as_pushed() {
    let setup = Setup::start(&[]).await;
    setup
        .git
        .commit(
            "site",
            &[
                ("index.html", "<h1>static site</h1>".to_owned()),
                ("about.html", "about".to_owned()),
            ],
        )
        .await;
    let app = setup.app("site").await;
    let first = setup.deployed(&app).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");
    assert!(
        first["logs"].to_string().contains("static site detected"),
        "{first:#}"
    );
    assert_eq!(
        answer(setup.port).await.expect("answers"),
        "<h1>static site</h1>"
    );
    let about = http()
        .get(format!("http://127.0.0.1:{}/about.html", setup.port))
        .send()
        .await
        .expect("GET");
    assert_eq!(about.text().await.expect("body"), "about");
    // Nothing outside the site, and no hidden file (a raw request: clients would normalise
    // the path).
    for path in [
        "/../../../../../etc/passwd",
        "/.keystone-commit",
        "/.keystone/build.json",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", setup.port))
            .await
            .expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(!response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    }
    setup.stop().await;
}

crate::e2e!(releases_are_never_moved_and_rollbacks_always_serve);
/// Seven deploys of a virtualenv app with five releases kept: a rollback to the oldest kept
/// release runs it where it was built, and a rollback to a pruned one rebuilds its commit;
/// both serve.
async fn releases_are_never_moved_and_rollbacks_always_serve() {
    let setup = Setup::start(&["--keep-releases", "5"]).await;
    let app = setup.app("venv").await;
    let mut deployments = Vec::new();
    for version in 1..=7 {
        setup
            .git
            .commit(&format!("v{version}"), &flask(&format!("venv-v{version}")))
            .await;
        let done = setup.deployed(&app).await;
        assert_eq!(done["status"], "SUCCESS", "v{version}: {done:#}");
        deployments.push(done["databaseId"].as_i64().expect("id"));
    }
    let releases = std::fs::read_dir(setup.work.join("apps/venv/releases"))
        .expect("releases")
        .count();
    assert_eq!(releases, 5, "--keep-releases 5");
    for (version, expect_rebuild) in [(3, false), (1, true)] {
        let body = setup
            .server
            .graphql(
                "mutation($app: ID!, $to: ID!) { rollbackApp(input: { appId: $app, toDeploymentId: $to }) { deployment { id } } }",
                json!({ "app": app, "to": global_id("Deployment", deployments[version - 1]) }),
            )
            .await;
        let rollback = Server::data(&body)["rollbackApp"]["deployment"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let rolled = finished(&setup.server, &rollback).await;
        assert_eq!(rolled["status"], "SUCCESS", "to v{version}: {rolled:#}");
        let log = rolled["logs"].to_string();
        assert_eq!(
            log.contains("is gone; rebuilding commit"),
            expect_rebuild,
            "{log}"
        );
        assert_eq!(
            answer(setup.port).await.expect("answers"),
            format!("venv-v{version}")
        );
    }
    setup.stop().await;
}
