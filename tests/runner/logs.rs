//! A deployment's log is live and survives a crash: lines printed by a long build reach the
//! server while it still runs; and after a `kill -9` of the runner mid-build, the lines it
//! had read but not sent are sent by the runner started again, once each, before the next
//! attempt's, with a line saying the first attempt was interrupted.

use std::time::Duration;

use super::*;
use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb};

on_both_backends!(
    a_long_build_is_seen_live,
    a_killed_runner_loses_no_line,
    keystone_logs_follow_loses_no_line_across_a_cut,
);

const LOGS: &str = "query($id: ID!) { deployment(id: $id) { status stage logs(tail: 2000) } }";

async fn logs_of(server: &Server, deployment: &str) -> (String, Vec<String>) {
    let body = server.graphql(LOGS, json!({ "id": deployment })).await;
    let deployment = &Server::data(&body)["deployment"];
    let lines = deployment["logs"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_owned())
        .collect();
    (
        deployment["status"].as_str().unwrap_or_default().to_owned(),
        lines,
    )
}

/// A build that prints a line every 200 ms for 5 s: its lines show up while it runs.
async fn a_long_build_is_seen_live(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--allow-private-git-hosts"])
        .await
        .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    git_server
        .push(
            "v1",
            "web: python3 app.py\nbuild: for i in $(seq 1 25); do echo tick $i; sleep 0.2; done\n",
        )
        .await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("work");
    let runner = RunnerProcess::start(&server, &token_file, &work, &[]).await;
    let app = create_app(&server, "ticking", &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deployment = deploy(&server, &app).await;
    eventually("tick 5 to show", Duration::from_secs(60), || async {
        let (_, lines) = logs_of(&server, &deployment).await;
        lines.iter().any(|l| l == "tick 5")
    })
    .await;
    let (status, lines) = logs_of(&server, &deployment).await;
    assert_eq!(status, "RUNNING", "the build still runs");
    assert!(
        !lines.iter().any(|l| l == "tick 25"),
        "the lines arrived while the build printed: {lines:?}"
    );
    let done = finished(&server, &deployment).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}

/// The first attempt's build prints 200 lines and then hangs; the runner sends its log only
/// every 30 s, so none of them has reached the server when it is killed. The runner started
/// again sends them; the deployment, requeued when its lease lapses, finishes on attempt 2.
async fn a_killed_runner_loses_no_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--allow-private-git-hosts", "--lease-secs", "3"])
        .await
        .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    let marker = db.dir().join("first-attempt-done");
    git_server
        .push(
            "v1",
            &format!(
                "web: python3 app.py\nbuild: seq 1 200 | sed 's/^/line /'; if [ ! -e '{0}' ]; then touch '{0}'; sleep 120; fi\n",
                marker.display()
            ),
        )
        .await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("work");
    let runner =
        RunnerProcess::start(&server, &token_file, &work, &["--log-batch-ms", "30000"]).await;
    let app = create_app(&server, "spooled", &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deployment = deploy(&server, &app).await;
    // Every line is in the runner's spool on disk…
    eventually(
        "the build's lines to be spooled",
        Duration::from_secs(60),
        || async {
            marker.exists()
                && std::fs::read_dir(work.join("spool")).is_ok_and(|entries| {
                    entries.flatten().any(|entry| {
                        std::fs::read_to_string(entry.path())
                            .is_ok_and(|text| text.contains("line 200\n"))
                    })
                })
        },
    )
    .await;
    // …and none at the server yet.
    let (_, before) = logs_of(&server, &deployment).await;
    assert!(
        !before.iter().any(|l| l.starts_with("line ")),
        "sent before the kill: {before:?}"
    );
    runner.kill().await;

    let runner = RunnerProcess::start(&server, &token_file, &work, &[]).await;
    let done = finished(&server, &deployment).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    let (_, lines) = logs_of(&server, &deployment).await;
    let interrupted = lines
        .iter()
        .position(|l| l.contains("attempt 1 was interrupted"))
        .unwrap_or_else(|| panic!("the log says the attempt was interrupted: {lines:?}"));
    for n in 1..=200 {
        let line = format!("line {n}");
        let at: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == line)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at.len(), 2, "{line} once per attempt: {lines:?}");
        assert!(
            at[0] < interrupted && at[1] > interrupted,
            "{line}: {lines:?}"
        );
    }
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}

/// `keystone logs -f` through a proxy that stalls, then cuts, the connection while the build
/// prints a third of its lines, and the build prints the rest after the cut: the command
/// reconnects and prints every line of the log once, in order, and exits 0 when the
/// deployment succeeds.
async fn keystone_logs_follow_loses_no_line_across_a_cut(backend: Backend) {
    use tokio::io::AsyncBufReadExt;
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--allow-private-git-hosts"])
        .await
        .expect("server starts");
    let (gate, last_gate) = (db.dir().join("gate"), db.dir().join("last-gate"));
    let git_server = GitServer::start(db.dir()).await;
    git_server
        .push(
            "v1",
            &format!(
                "web: python3 app.py\nbuild: for i in $(seq 1 20); do echo tick $i; done; \
                 while [ ! -e '{}' ]; do sleep 0.1; done; for i in $(seq 21 40); do echo tick $i; done; \
                 while [ ! -e '{}' ]; do sleep 0.1; done; for i in $(seq 41 60); do echo tick $i; done\n",
                gate.display(),
                last_gate.display()
            ),
        )
        .await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("work");
    let runner = RunnerProcess::start(&server, &token_file, &work, &[]).await;
    let app = create_app(&server, "followed", &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deployment = deploy(&server, &app).await;
    let upstream = server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address");
    let proxy = crate::support::proxy::ChaosProxy::start(upstream).await;
    let mut follower = Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args(["logs", "followed", "-f", "-n", "10000"])
        .env("KEYSTONE_URL", format!("http://{}", proxy.address))
        .env("KEYSTONE_TOKEN", &server.admin_token)
        .env("HOME", db.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("keystone logs -f");
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut stdout = tokio::io::BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let collect = {
        let printed = printed.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                printed.lock().expect("lines").push(line);
            }
        })
    };
    eventually("tick 20 to be printed", Duration::from_secs(60), || async {
        printed
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l == "tick 20")
    })
    .await;
    // The rest of the build's lines are written while nothing passes; then the connection
    // is cut, and the command must reconnect and catch up.
    proxy.stall();
    std::fs::write(&gate, "").expect("gate");
    eventually("tick 40 to be logged", Duration::from_secs(60), || async {
        let (_, lines) = logs_of(&server, &deployment).await;
        lines.iter().any(|l| l == "tick 40")
    })
    .await;
    proxy.cut();
    proxy.resume();
    // The build goes on after the cut: its last lines come over the new subscription.
    std::fs::write(&last_gate, "").expect("gate");
    let status = tokio::time::timeout(Duration::from_secs(90), follower.wait())
        .await
        .expect("logs -f ends with the deployment")
        .expect("wait");
    collect.await.expect("collector");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(
        &mut follower.stderr.take().expect("stderr"),
        &mut stderr,
    )
    .await
    .expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("resuming after line"),
        "the cut was noticed: {stderr}"
    );
    let (final_status, logged) = logs_of(&server, &deployment).await;
    assert_eq!(final_status, "SUCCESS");
    assert_eq!(
        *printed.lock().expect("lines"),
        logged,
        "every line once, in order"
    );
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}
