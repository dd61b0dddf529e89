//! The data plane outlives the runner: `keystone proxy` owns the apps' ports and host names,
//! so apps keep serving while the runner is killed and restarted; a proxy started beside the
//! running one takes its listening sockets over without a failed request; a killed proxy is
//! started again by the runner with its saved routes. The HOST router routes each request of
//! a kept-alive connection by its own `Host`, refuses ambiguous ones, and tells the app who
//! asked (`X-Forwarded-*`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::on_both_backends;
use crate::support::{Backend, Server, TestDb};

on_both_backends!(
    apps_keep_serving_while_the_runner_is_down,
    docker_apps_keep_serving_while_the_runner_is_down,
    a_new_proxy_takes_over_and_a_killed_one_comes_back,
    each_request_is_routed_by_its_own_host,
);

/// Requests `port` back to back until stopped: (requests sent, requests failed).
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<usize>,
}

impl Load {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, failed) = (stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    if answer(port).await.is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    sent += 1;
                }
                sent
            })
        };
        Self { stop, failed, task }
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Lets the load run for `window` (what is measured), then stops it: (sent, failed).
    async fn run_for(self, window: Duration) -> (usize, usize) {
        let started = Instant::now();
        while started.elapsed() < window {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.finish().await
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.task.await.expect("load");
        (sent, self.failed.load(Ordering::SeqCst))
    }
}

/// The pid the proxy of `work` wrote.
fn proxy_pid(work: &Path) -> i32 {
    std::fs::read_to_string(work.join("proxy/proxy.pid"))
        .expect("the proxy's pid file")
        .trim()
        .parse()
        .expect("a pid")
}

fn running(pid: i32) -> bool {
    // A zombie (reaped by nobody yet) has stopped serving.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z'))
    })
}

async fn apps_keep_serving_while_the_runner_is_down(backend: Backend) {
    keep_serving(backend, Flavor::Process).await;
}

async fn docker_apps_keep_serving_while_the_runner_is_down(backend: Backend) {
    docker_ready().await;
    keep_serving(backend, Flavor::Docker).await;
}

/// `kill -9` of the runner: the app keeps answering (0 failed requests over 10 s); a
/// restarted runner re-adopts it, and a redeploy still switches with 0 failures.
async fn keep_serving(backend: Backend, flavor: Flavor) {
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
    let name = format!("kept-{port}");
    let app = create_app(&server, &name, &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let first = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");

    let load = Load::start(port);
    runner.kill().await;
    let (sent, failed) = load.run_for(Duration::from_secs(10)).await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while the runner was down"
    );
    assert!(sent > 50, "the load ran: {sent} requests");

    // Started again, the runner re-adopts the app, and a redeploy switches without a gap.
    let runner = RunnerProcess::start(&server, &token_file, &work, flavor.runner_args()).await;
    let load = Load::start(port);
    git_server.commit("v2", &flavor.sources("v2")).await;
    let second = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(second["status"], "SUCCESS", "{second:#}");
    eventually("v2 to serve", Duration::from_secs(10), || async {
        answer(port).await.is_ok_and(|body| body == "v2")
    })
    .await;
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the redeploy"
    );
    server.delete_app(&app).await;
    eventually("the app to go", Duration::from_secs(20), || async {
        answer(port).await.is_err()
    })
    .await;
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}

/// A second `keystone proxy` on the same directory takes the listening sockets over from the
/// running one while clients request back to back: not one request fails. Then the proxy is
/// killed: requests fail until the runner starts it again with its saved routes (the
/// figure is printed; README, "Deploying apps").
async fn a_new_proxy_takes_over_and_a_killed_one_comes_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let range = format!("{port}-{port}");
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    git_server.push("v1", PROCFILE).await;
    let token_file = runner_token_file(&server, &db).await;
    let work = db.dir().join("work");
    let runner = RunnerProcess::start(&server, &token_file, &work, &[]).await;
    let app = create_app(&server, &format!("handed-{port}"), &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let first = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(first["status"], "SUCCESS", "{first:#}");

    let old = proxy_pid(&work);
    let load = Load::start(port);
    let mut newer = std::process::Command::new(env!("CARGO_BIN_EXE_keystone"))
        .arg("proxy")
        .arg("--dir")
        .arg(work.join("proxy"))
        .args(["--host-bind", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(work.join("proxy/proxy.log"))
                .expect("log"),
        )
        .spawn()
        .expect("keystone proxy");
    eventually(
        "the new proxy to take over",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(work.join("proxy/proxy.pid"))
                .is_ok_and(|pid| pid.trim() == newer.id().to_string())
        },
    )
    .await;
    eventually("the old proxy to exit", Duration::from_secs(40), || async {
        !running(old)
    })
    .await;
    let before = Instant::now();
    eventually(
        "requests through the new proxy",
        Duration::from_secs(10),
        || async { answer(port).await.is_ok() && before.elapsed() > Duration::from_millis(500) },
    )
    .await;
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the handover"
    );

    // kill -9: the port closes until the runner (its reconciliation, every second here)
    // starts a proxy again, which reopens it from the saved routes.
    let load = Load::start(port);
    let killed = Instant::now();
    let _ = newer.kill();
    let _ = newer.wait();
    eventually("a failed request", Duration::from_secs(10), || async {
        load.failed() > 0
    })
    .await;
    eventually(
        "the app to answer again",
        Duration::from_secs(30),
        || async { answer(port).await.is_ok() },
    )
    .await;
    let gap = killed.elapsed();
    let (sent, failed) = load.finish().await;
    eprintln!(
        "proxy killed: {failed} of {sent} requests failed; serving again after {:.1} s",
        gap.as_secs_f64()
    );
    assert_ne!(
        proxy_pid(&work),
        newer.id() as i32,
        "the runner started another proxy"
    );
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}

/// One HTTP/1.1 response read off `stream`: (status, headers and body as text).
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).await.expect("read");
        assert!(
            read > 0,
            "the connection closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head[9..12].parse().expect("a status");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("body");
    (status, head + &String::from_utf8_lossy(&body))
}

async fn each_request_is_routed_by_its_own_host(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(
        &db,
        &["--allow-private-git-hosts", "--apps-domain", "apps.test"],
    )
    .await
    .expect("server starts");
    let git_server = GitServer::start(db.dir()).await;
    let token_file = runner_token_file(&server, &db).await;
    let router = free_port();
    let bind = format!("127.0.0.1:{router}");
    let work = db.dir().join("work");
    let runner = RunnerProcess::start(
        &server,
        &token_file,
        &work,
        &["--host-bind", &bind, "--apps-domain", "apps.test"],
    )
    .await;
    let mut hosts = Vec::new();
    for version in ["one", "two"] {
        git_server.push(version, PROCFILE).await;
        let name = format!("{version}-{router}");
        let app = create_app(&server, &name, &git_server.url(), "accessMode: HOST").await["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let done = finished(&server, &deploy(&server, &app).await).await;
        assert_eq!(done["status"], "SUCCESS", "{done:#}");
        hosts.push(format!("{name}.apps.test"));
    }

    // One kept-alive connection, one request for each app, in turn: each reaches its own.
    let mut connection = TcpStream::connect(("127.0.0.1", router))
        .await
        .expect("connect");
    for (host, version) in [(&hosts[0], "one"), (&hosts[1], "two"), (&hosts[0], "one")] {
        connection
            .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nCookie: s=1\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let (status, text) = read_response(&mut connection).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.ends_with(version),
            "{host} on a kept-alive connection: {text}"
        );
    }

    // The app is told who asked, and under which name.
    connection
        .write_all(
            format!(
                "GET /headers HTTP/1.1\r\nHost: {}\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
                hosts[1]
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let (status, text) = read_response(&mut connection).await;
    assert_eq!(status, 200, "{text}");
    for expected in [
        "x-forwarded-for=203.0.113.9, 127.0.0.1".to_owned(),
        "x-forwarded-proto=http".to_owned(),
        format!("x-forwarded-host={}", hosts[1]),
        format!("host={}", hosts[1]),
    ] {
        assert!(
            text.to_lowercase().contains(&expected),
            "{expected} in {text}"
        );
    }

    // Two Host headers, or a malformed one, are refused.
    for head in [
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nHost: {}\r\n\r\n",
            hosts[0], hosts[1]
        ),
        "GET / HTTP/1.1\r\nHost: bad host!\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\n\r\n".to_owned(),
    ] {
        let mut fresh = TcpStream::connect(("127.0.0.1", router))
            .await
            .expect("connect");
        fresh.write_all(head.as_bytes()).await.expect("write");
        let (status, text) = read_response(&mut fresh).await;
        assert_eq!(status, 400, "{head:?}: {text}");
    }
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}
