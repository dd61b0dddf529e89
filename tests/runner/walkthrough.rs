//! The README's quick start, run as it is written: its sample repository block and its
//! client walkthrough, line by line in a shell, against a fresh server and runner (started
//! here as its first block says). Only addresses change: the test's own directory for
//! `/tmp/repos`, and the ports this run was given for the server, the git daemon and the app.

use super::*;
use crate::on_both_backends;
use crate::support::{Backend, TestDb};

on_both_backends!(the_readme_quick_start_works_as_written);

/// The code blocks of the README's "Quick start" section, in order.
fn quick_start_blocks() -> Vec<Vec<String>> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split_once("### Quick start")
        .and_then(|(_, rest)| rest.split_once("\n### "))
        .expect("README has a Quick start section")
        .0;
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| {
            block
                .split_once("```")
                .expect("a closed block")
                .0
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

async fn the_readme_quick_start_works_as_written(backend: Backend) {
    let blocks = quick_start_blocks();
    assert_eq!(
        blocks.len(),
        3,
        "server and runner, sample repository, walkthrough"
    );
    assert!(
        blocks[0].iter().any(|l| l.contains("keystone serve"))
            && blocks[0].iter().any(|l| l.contains("keystone runner")),
        "{:?}",
        blocks[0]
    );
    let db = TestDb::new(backend).await;
    let dir = db.dir().join("newcomer");
    std::fs::create_dir_all(&dir).expect("dir");
    let app_port = free_port();
    let range = format!("{app_port}-{app_port}");
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    std::fs::write(dir.join("keystone-admin.token"), &server.admin_token).expect("token");
    let token_file = runner_token_file(&server, &db).await;
    let runner = RunnerProcess::start(&server, &token_file, &db.dir().join("work"), &[]).await;
    // `keystone` on the PATH, as after `cargo install`; a config directory of its own.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_keystone"), bin.join("keystone"))
        .expect("symlink");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let repos = dir.join("repos");
    let mut git_port = 0;
    let mut daemon = None;
    let localize = |line: &str, git_port: u16| {
        line.replace("/tmp/repos", repos.to_str().expect("path"))
            .replace("git://127.0.0.1/", &format!("git://127.0.0.1:{git_port}/"))
            .replace("http://127.0.0.1:8000", &server.base_url)
            .replace("localhost:9000", &format!("localhost:{app_port}"))
    };
    let state = db.dir().join("cwd");
    let mut cwd = dir.clone();
    for line in blocks[1].iter().chain(&blocks[2]) {
        if line.starts_with("git daemon") {
            // The README's daemon, on a port of this run's.
            std::fs::create_dir_all(&repos).expect("repos");
            let (child, port) = git_daemon(&repos).await;
            (daemon, git_port) = (Some(child), port);
            continue;
        }
        let command = localize(line, git_port);
        // Each line in a shell of its own, in the directory the previous one ended in.
        let script = format!(
            "cd '{}'\n{command}\npwd > '{}'",
            cwd.display(),
            state.display()
        );
        let output = Command::new("sh")
            .args(["-ec", &script])
            .current_dir(&dir)
            .env("PATH", &path)
            .env("HOME", &dir)
            .env("XDG_CONFIG_HOME", dir.join(".config"))
            .env("GIT_AUTHOR_NAME", "newcomer")
            .env("GIT_AUTHOR_EMAIL", "newcomer@example.com")
            .env("GIT_COMMITTER_NAME", "newcomer")
            .env("GIT_COMMITTER_EMAIL", "newcomer@example.com")
            .env_remove("KEYSTONE_URL")
            .env_remove("KEYSTONE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "`{command}` failed ({}):\n{stdout}\n{stderr}\nrunner:\n{}",
            output.status,
            RunnerProcess::log(&db.dir().join("work"))
        );
        cwd = PathBuf::from(std::fs::read_to_string(&state).expect("cwd").trim());
        // What a person reads: a few checks that the output says what happened.
        if line.starts_with("keystone deploy hello --wait") {
            assert!(
                stdout.contains("==> clone"),
                "the build's log is shown live: {stdout}"
            );
            assert!(stdout.contains(": SUCCESS"), "{stdout}");
            // Not a terminal: no spinner and no control sequences in what is captured.
            assert!(
                !stderr.contains('\x1b') && !stderr.contains(" QUEUED ("),
                "{stderr}"
            );
        }
        if line.starts_with("keystone config hello") {
            assert!(
                stdout.contains("GREETING") && !stdout.contains("hi\n"),
                "{stdout}"
            );
        }
        if line.starts_with("keystone ps") {
            assert!(
                stdout.contains("hello") && stdout.contains("RUNNING"),
                "{stdout}"
            );
        }
    }
    assert!(daemon.is_some(), "the README starts a git daemon");
    // The login is private to the user.
    let login = dir.join(".config/keystone/login.json");
    let mode = std::fs::metadata(&login).expect("login.json").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // Nothing left running: the app stopped, then the runner and its proxy.
    let body = server
        .graphql(r#"{ app(name: "hello") { id } }"#, json!({}))
        .await;
    let app = Server::data(&body)["app"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    stop_app(&server, &app).await;
    eventually("the app to stop", Duration::from_secs(20), || async {
        answer(app_port).await.is_err()
    })
    .await;
    runner.stop().await;
    stop_proxy(&db.dir().join("work"));
    server.stop_ok().await;
}
