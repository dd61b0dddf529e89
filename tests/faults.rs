//! Faults: what clients see, and what the database holds, when parts of the system fail.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::cluster::PrivateCluster;
use crate::support::{Backend, Server, TestDb, ws_connect, ws_next, ws_next_payload, ws_subscribe};

crate::e2e!(subscribers_are_told_to_resync_after_the_event_connection_drops);
/// The server's `LISTEN` connection drops (its backend is terminated, as a failover or a
/// network cut would do): the server listens again by itself, tells every subscriber to
/// refetch with a `RESYNC` error, and events flow again.
async fn subscribers_are_told_to_resync_after_the_event_connection_drops() {
    let db = TestDb::new(Backend::Postgres).await;
    let schema = db
        .postgres_schema()
        .expect("a PostgreSQL schema")
        .to_owned();
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("web", "web-app").await;
    let mut socket = ws_connect(&server, &server.admin_token).await;
    socket
        .send(ws_subscribe(
            "s",
            "subscription { deploymentUpdated { status } }",
        ))
        .await
        .expect("send");
    // The subscription is live once a query sent after it has been answered.
    socket
        .send(ws_subscribe("q", "{ viewer { name } }"))
        .await
        .expect("send");
    ws_next_payload(&mut socket, "q").await;

    let listening = format!("LISTEN \"keystone_events:{schema}\"");
    let terminated = db
        .rows(&format!(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE query = '{listening}'"
        ))
        .await;
    assert_eq!(terminated, ["true"], "the server's LISTEN connection");

    let payload = ws_next_payload(&mut socket, "s").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "RESYNC",
        "{payload:#}"
    );
    // Listening again: a change made now reaches the subscriber.
    server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    let payload = ws_next_payload(&mut socket, "s").await;
    assert_eq!(payload["data"]["deploymentUpdated"]["status"], "QUEUED");
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// What one request of the load saw.
struct Outcome {
    /// The repository a write tried to create (`None` for a read).
    write: Option<String>,
    status: u16,
    retry_after: bool,
    code: Option<String>,
    acknowledged: bool,
    elapsed: std::time::Duration,
    at: std::time::Instant,
}

/// A mixed load (reads, and writes that create uniquely named repositories) from
/// `clients` loops, until `stop` is set.
async fn mixed_load(
    server: &Server,
    clients: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<Outcome> {
    use std::sync::atomic::Ordering;
    let loops = (0..clients).map(|client| async move {
        let http = server.admin();
        let mut outcomes = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let write = (n % 3 == 0).then(|| format!("r-{client}-{n}"));
            let body = match &write {
                Some(name) => json!({
                    "query": "mutation($input: CreateRepositoryInput!) { createRepository(input: $input) { repository { id } } }",
                    "variables": { "input": { "name": name, "gitUrl": "https://e.com/r.git" } },
                }),
                None => json!({ "query": "{ apps(first: 5) { totalCount nodes { name } } }" }),
            };
            let at = std::time::Instant::now();
            let response = http.post(server.url("/graphql")).json(&body).send().await;
            let (status, retry_after, body) = match response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    (status, retry_after, response.json::<Value>().await.unwrap_or_default())
                }
                Err(_) => (0, false, Value::Null),
            };
            let acknowledged = status == 200
                && body.get("errors").is_none()
                && write.is_some()
                && body["data"]["createRepository"]["repository"]["id"].is_string();
            outcomes.push(Outcome {
                write,
                status,
                retry_after,
                code: body["errors"][0]["extensions"]["code"]
                    .as_str()
                    .map(str::to_owned),
                acknowledged,
                elapsed: at.elapsed(),
                at,
            });
        }
        outcomes
    });
    futures_util::future::join_all(loops)
        .await
        .into_iter()
        .flatten()
        .collect()
}

crate::e2e!(a_database_outage_under_load_loses_nothing_acknowledged);
/// PostgreSQL stops under load and comes back: meanwhile requests fail fast with
/// `SERVICE_UNAVAILABLE` (503, `Retry-After`) and `/ready` says the database is
/// unreachable; within 5 s of its return the service is whole without a restart. Every
/// write the server acknowledged is in the database, and none it refused is.
async fn a_database_outage_under_load_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let cluster = PrivateCluster::start();
    let db = cluster.test_db();
    let server = Server::start(
        &db,
        &[
            "--database-timeout-secs",
            "1",
            "--request-timeout-secs",
            "5",
            "--rate-limit-per-second",
            "0",
        ],
    )
    .await
    .expect("server starts");
    let stop = AtomicBool::new(false);
    let timeline = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        tokio::task::block_in_place(|| cluster.stop("fast"));
        let down = Instant::now();
        // While it is down: /ready says why.
        let mut ready = server.ready().await;
        while ready.0 == 200 {
            ready = server.ready().await;
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        tokio::task::block_in_place(|| cluster.start_again());
        let up = Instant::now();
        while server.ready().await.0 != 200 {
            assert!(
                up.elapsed() < Duration::from_secs(5),
                "ready within 5 s of return"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let recovered = up.elapsed();
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::Relaxed);
        (ready, down, up, recovered)
    };
    let (outcomes, (ready, down, up, recovered)) =
        tokio::join!(mixed_load(&server, 6, &stop), timeline);

    assert_eq!(ready.0, 503, "{:?}", ready.1);
    assert_eq!(ready.1["database"], "unreachable", "{:?}", ready.1);
    let during: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.at > down + Duration::from_millis(200) && o.at + o.elapsed < up)
        .collect();
    let summary: Vec<(u64, u16, Option<&str>, u128)> = outcomes
        .iter()
        .map(|o| {
            (
                o.at.duration_since(down.min(o.at)).as_millis() as u64,
                o.status,
                o.code.as_deref(),
                o.elapsed.as_millis(),
            )
        })
        .collect();
    assert!(
        !during.is_empty(),
        "requests were made during the outage: {summary:?}"
    );
    for outcome in &during {
        assert_eq!(outcome.status, 503, "fails fast with 503 during the outage");
        assert!(outcome.retry_after, "with Retry-After");
        assert_eq!(outcome.code.as_deref(), Some("SERVICE_UNAVAILABLE"));
    }
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(6),
        "nothing hangs: {slowest:?}"
    );
    let after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.at > up + recovered + Duration::from_millis(100))
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|o| o.status == 200),
        "whole again"
    );

    // The acknowledgement log against the rows.
    let stored = db.rows("SELECT name FROM api_repository").await;
    let stored: std::collections::HashSet<&str> = stored.iter().map(String::as_str).collect();
    let mut acknowledged = 0;
    for outcome in &outcomes {
        let Some(name) = &outcome.write else { continue };
        if outcome.acknowledged {
            acknowledged += 1;
            assert!(
                stored.contains(name.as_str()),
                "acknowledged {name} is stored"
            );
        } else {
            assert!(
                !stored.contains(name.as_str()),
                "refused {name} is not stored"
            );
        }
    }
    assert!(acknowledged > 10, "{acknowledged} writes acknowledged");
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// SIGTERM under a write load, with a WebSocket subscriber: the subscriber is closed with
/// 1001, the process exits cleanly within its shutdown timeout, and every write it
/// acknowledged is in the database.
async fn sigterm_under_load(backend: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let db = TestDb::new(backend).await;
    let server = Server::start(
        &db,
        &[
            "--shutdown-timeout-secs",
            "10",
            "--rate-limit-per-second",
            "0",
        ],
    )
    .await
    .expect("server starts");
    let mut socket = ws_connect(&server, &server.admin_token).await;
    socket
        .send(ws_subscribe(
            "s",
            "subscription { deploymentUpdated { id } }",
        ))
        .await
        .expect("send");
    let stop = AtomicBool::new(false);
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        server.signal("TERM").await;
        // The subscriber is told the server is going away.
        let closed = loop {
            match tokio::time::timeout(
                Duration::from_secs(10),
                futures_util::StreamExt::next(&mut socket),
            )
            .await
            .expect("a message within 10 s")
            {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        };
        // New connections are refused (polled: the listener goes as the signal is handled).
        let address = server.base_url.trim_start_matches("http://").to_owned();
        let mut refused = false;
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(&address).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "new connections are refused after SIGTERM");
        stop.store(true, Ordering::Relaxed);
        closed
    };
    let (outcomes, closed) = tokio::join!(mixed_load(&server, 4, &stop), terminate);
    let closed = closed.expect("a close frame");
    assert_eq!(u16::from(closed.code), 1001, "{closed:?}");
    assert!(
        outcomes.iter().all(|o| o.status < 500),
        "no request failed with a server error"
    );
    let (status, log) = server.exited().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("shutdown signal received"), "{log}");

    let stored = db.rows("SELECT name FROM api_repository").await;
    let acknowledged: Vec<&String> = outcomes
        .iter()
        .filter(|o| o.acknowledged)
        .filter_map(|o| o.write.as_ref())
        .collect();
    assert!(!acknowledged.is_empty());
    for name in acknowledged {
        assert!(stored.contains(name), "acknowledged {name} is stored");
    }
}

/// `kill -9` of the server during a stream of `deployApp` calls: after a restart every
/// acknowledged deployment exists, no two apps hold one port, and no app is left
/// `DEPLOYING` without a queued or running deployment.
async fn kill_9_mid_write_leaves_a_consistent_database(backend: Backend) {
    use std::time::Duration;
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--rate-limit-per-second", "0"])
        .await
        .expect("server starts");
    let mut apps = Vec::new();
    for n in 0..12 {
        apps.push(server.create_app("web", &format!("app-{n}")).await);
    }
    let deploys = apps.iter().enumerate().map(|(n, app)| {
        let (http, url) = (server.admin(), server.url("/graphql"));
        async move {
            let mut acknowledged = Vec::new();
            // Deploy, cancel, deploy again… until the server is gone.
            for round in 0.. {
                let query = if round % 2 == 0 {
                    "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { databaseId } } }"
                } else {
                    "mutation($id: ID!) { stopApp(input: { id: $id }) { app { id } } }"
                };
                let sent = http
                    .post(&url)
                    .json(&json!({ "query": query, "variables": { "id": app } }))
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                let Ok(body) = response.json::<Value>().await else { break };
                if let Some(id) = body["data"]["deployApp"]["deployment"]["databaseId"].as_i64() {
                    acknowledged.push(id);
                }
                if n == 0 && round > 1000 {
                    break;
                }
            }
            acknowledged
        }
    });
    let kill = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.signal("KILL").await;
    };
    let (acknowledged, ()) = tokio::join!(futures_util::future::join_all(deploys), kill);
    let (status, _) = server.exited().await;
    assert!(!status.success(), "killed");
    let acknowledged: Vec<i64> = acknowledged.into_iter().flatten().collect();
    assert!(
        !acknowledged.is_empty(),
        "some deployments were acknowledged"
    );

    // Restarted on the same database.
    let server = Server::start(&db, &[]).await.expect("server restarts");
    let stored = db
        .rows("SELECT CAST(id AS varchar(20)) FROM api_deployment")
        .await;
    for id in &acknowledged {
        assert!(
            stored.contains(&id.to_string()),
            "acknowledged deployment {id} exists"
        );
    }
    assert_eq!(
        db.rows(
            "SELECT CAST(current_port AS varchar(20)) FROM api_app
             WHERE current_port IS NOT NULL GROUP BY current_port HAVING COUNT(*) > 1"
        )
        .await,
        Vec::<String>::new(),
        "no port is held twice"
    );
    assert_eq!(
        db.rows(
            "SELECT name FROM api_app WHERE status = 'deploying' AND NOT EXISTS
             (SELECT 1 FROM api_deployment d WHERE d.app_id = api_app.id
              AND d.status IN ('queued', 'running'))"
        )
        .await,
        Vec::<String>::new(),
        "no app DEPLOYING without a pending deployment"
    );
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// A change and its audit row are one transaction: when the audit row cannot be written
/// (here a trigger refuses it, as a foreign writer, a full disk or a cut connection at that
/// moment would), the change is not stored either; otherwise both are, and the row names the
/// created object.
async fn a_change_is_stored_with_its_audit_row_or_not_at_all(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let refuse = match backend {
        Backend::Sqlite => vec![
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON api_audit_event
             WHEN NEW.operation = 'createRepository'
             BEGIN SELECT RAISE(ABORT, 'audit refused'); END",
        ],
        Backend::Postgres => vec![
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON api_audit_event FOR EACH ROW
             WHEN (NEW.operation = 'createRepository') EXECUTE FUNCTION refuse_audit()",
        ],
    };
    for statement in refuse {
        db.exec(statement).await;
    }
    let create = "mutation($name: String!) { createRepository(input: { name: $name, gitUrl: \"https://example.com/a.git\" }) { repository { id } } }";
    let body = server.graphql(create, json!({ "name": "refused" })).await;
    assert_eq!(crate::support::only_error(&body).0, "INTERNAL", "{body:#}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM api_repository WHERE name = 'refused'")
            .await,
        0,
        "no change without its audit row"
    );

    db.exec(match backend {
        Backend::Sqlite => "DROP TRIGGER refuse_audit",
        Backend::Postgres => "DROP TRIGGER refuse_audit ON api_audit_event",
    })
    .await;
    let body = server.graphql(create, json!({ "name": "kept" })).await;
    let id = Server::data(&body)["createRepository"]["repository"]["id"]
        .as_str()
        .expect("created")
        .to_owned();
    let body = server
        .graphql(
            r#"{ auditEvents(filter: { operation: "createRepository", outcome: SUCCESS }) { nodes { objectId } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        Server::data(&body)["auditEvents"]["nodes"],
        json!([{ "objectId": id }]),
        "the change and its audit row, naming the created repository"
    );
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// The server's resident memory (KiB) and open file descriptors, from `/proc`.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    (rss, fds)
}

/// A soak: the mixed load for `KEYSTONE_SOAK_SECS` (default 60; `.ci/run` sets 600) with
/// 500 idle WebSocket subscribers. The server's RSS and open file descriptors, sampled 20
/// times and printed (and written to `KEYSTONE_SOAK_REPORT_DIR` when set), stay flat: after the first quarter (warm-up: pools, caches and the
/// allocator's arenas fill), RSS grows by at most a quarter and descriptors by at most 16.
/// Every subscriber is still connected at the end.
async fn soak_with_idle_subscribers_stays_flat(backend: Backend) {
    let db = TestDb::new(backend).await;
    let seconds: u64 = std::env::var("KEYSTONE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    const SUBSCRIBERS: usize = 500;
    let server = Server::start(
        &db,
        &[
            "--rate-limit-per-second",
            "0",
            "--ws-max-per-address",
            "1000",
            "--ws-max-per-token",
            "1000",
            "--ws-max-subscriptions-per-token",
            "1000",
        ],
    )
    .await
    .expect("server starts");
    let mut sockets = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut socket = ws_connect(&server, &server.admin_token).await;
        assert_eq!(
            ws_next(&mut socket).await.expect("ack")["type"],
            "connection_ack"
        );
        socket
            .send(ws_subscribe(
                "s",
                "subscription { appUpdated { name status } }",
            ))
            .await
            .expect("subscribe");
        sockets.push(socket);
    }

    let stop = std::sync::atomic::AtomicBool::new(false);
    let pid = server.pid();
    let sampler = async {
        let mut samples = Vec::new();
        let mut curve = String::new();
        for n in 0..=20u64 {
            if n > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(seconds) / 20).await;
            }
            let (rss, fds) = rss_and_fds(pid);
            let line = format!(
                "soak {backend:?} t={:>4}s rss={:>7.1} MB fds={fds}\n",
                n * seconds / 20,
                rss as f64 / 1024.0
            );
            print!("{line}");
            curve.push_str(&line);
            samples.push((rss, fds));
        }
        // `.ci/run` prints the curve after the tests (their own output is captured).
        if let Ok(dir) = std::env::var("KEYSTONE_SOAK_REPORT_DIR") {
            let path = std::path::Path::new(&dir).join(format!("soak-{backend:?}.txt"));
            std::fs::write(path, &curve).expect("write the soak curve");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        samples
    };
    let (outcomes, samples) = tokio::join!(mixed_load(&server, 4, &stop), sampler);

    let served = outcomes.iter().filter(|o| o.status == 200).count();
    println!(
        "soak {backend:?}: {} requests in {seconds} s ({} a second), {served} served",
        outcomes.len(),
        outcomes.len() as u64 / seconds.max(1)
    );
    assert!(
        served * 100 >= outcomes.len() * 99,
        "{served} of {} requests served",
        outcomes.len()
    );
    let (warm_rss, warm_fds) = samples[5];
    let (peak_rss, peak_fds) = samples[5..]
        .iter()
        .fold((0, 0), |(r, f), &(rss, fds)| (r.max(rss), f.max(fds)));
    assert!(
        peak_rss <= warm_rss + warm_rss / 4,
        "RSS grew from {warm_rss} KiB to {peak_rss} KiB: {samples:?}"
    );
    assert!(
        peak_fds <= warm_fds + 16,
        "descriptors grew from {warm_fds} to {peak_fds}: {samples:?}"
    );
    // Every subscriber is still there: one change reaches each of them.
    let app = server.create_app("soak", "soak-app").await;
    server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    for socket in &mut sockets {
        let payload = ws_next_payload(socket, "s").await;
        assert_eq!(payload["data"]["appUpdated"]["name"], "soak-app");
    }
    drop(sockets);
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

crate::on_both_backends!(
    soak_with_idle_subscribers_stays_flat,
    a_change_is_stored_with_its_audit_row_or_not_at_all,
    sigterm_under_load,
    kill_9_mid_write_leaves_a_consistent_database
);

crate::e2e!(pool_exhaustion_answers_503_instead_of_queueing);
/// Every pooled connection busy (blocked behind a lock the test holds): further requests
/// wait at most `--database-timeout-secs`, then get 503 with `Retry-After`, while the
/// blocked ones are still blocked; once the lock goes, the blocked ones finish.
async fn pool_exhaustion_answers_503_instead_of_queueing() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDb::new(Backend::Postgres).await;
    let server = Server::start(
        &db,
        &[
            // Three connections: the event listener holds one, two serve requests.
            "--database-max-connections",
            "3",
            "--database-timeout-secs",
            "1",
            "--token-cache-ms",
            "600000",
        ],
    )
    .await
    .expect("server starts");
    // Warm the token cache (and the token's lastUsedAt), so requests need no connection
    // but for their query; then only the event listener holds one.
    server.graphql("{ apps { totalCount } }", json!({})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db
        .count("SELECT COUNT(*) FROM api_token WHERE last_used_at IS NOT NULL")
        .await
        == 0
        || server
            .metric("keystone_db_pool_connections{state=\"in_use\"}")
            .await
            > 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "lastUsedAt never written"
        );
        tokio::task::yield_now().await;
    }

    let holder = db.connect().await;
    let lock = holder.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE api_app IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let post = |query: &'static str| {
        let (http, url) = (server.admin(), server.url("/graphql"));
        async move {
            let response = http
                .post(url)
                .json(&json!({ "query": query }))
                .send()
                .await
                .expect("POST");
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.expect("JSON");
            (status, retry_after, body)
        }
    };
    // Two requests take both connections and wait behind the lock (the pool says so: they
    // and the event listener).
    let blocked: Vec<_> = (0..2)
        .map(|_| tokio::spawn(post("{ apps { totalCount } }")))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server
        .metric("keystone_db_pool_connections{state=\"in_use\"}")
        .await
        < 3.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the two never got connections"
        );
        tokio::task::yield_now().await;
    }
    let timeouts = server.metric("keystone_db_pool_timeouts_total").await;
    // The next ones find no connection, and are told so.
    for _ in 0..4 {
        let (status, retry_after, body) = post("{ repositories { totalCount } }").await;
        assert_eq!(status, 503, "{body:#}");
        assert!(retry_after);
        assert_eq!(
            body["errors"][0]["extensions"]["code"],
            "SERVICE_UNAVAILABLE"
        );
    }
    assert!(
        blocked.iter().all(|b| !b.is_finished()),
        "the first two still wait behind the lock"
    );
    assert_eq!(
        server.metric("keystone_db_pool_timeouts_total").await - timeouts,
        4.0,
        "each refusal counted"
    );
    lock.rollback().await.expect("release the lock");
    for request in blocked {
        let (status, _, body) = request.await.expect("join");
        assert_eq!(status, 200, "{body:#}");
    }
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}

/// A small filesystem of the test's own (tmpfs), unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the suite runs as root)"
        );
        Self { path }
    }

    /// Fills the disk to the last byte with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while file.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

crate::e2e!(a_full_disk_refuses_writes_cleanly_and_recovers);
/// The disk under the logs directory and the SQLite database fills up: log appends and
/// writes fail with `INSUFFICIENT_STORAGE` and store nothing, reads go on, and once space
/// returns the same chunk and new writes go through, each stored once.
async fn a_full_disk_refuses_writes_cleanly_and_recovers() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let disk = SmallDisk::mount(scratch.path().join("disk"), "4m");
    let db = TestDb::at(
        Backend::Sqlite,
        format!(
            "sqlite://{}?mode=rwc",
            disk.path.join("keystone.sqlite3").display()
        ),
    );
    let logs = disk.path.join("logs");
    let server = Server::start(
        &db,
        &[
            "--logs-dir",
            logs.to_str().unwrap(),
            "--rate-limit-per-second",
            "0",
        ],
    )
    .await
    .expect("server starts");
    let app = server.create_app("web", "web-app").await;
    server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": app }),
        )
        .await;
    let runner = server.create_token("r1", "RUNNER").await;
    let (_, claimed) = server
        .graphql_as(
            &runner,
            "mutation { claimDeployment { deployment { id } } }",
            json!({}),
        )
        .await;
    let deployment = claimed["data"]["claimDeployment"]["deployment"]["id"].clone();
    let append = |sequence: i64, chunk: String| {
        let (server, runner, deployment) = (&server, &runner, deployment.clone());
        async move {
            server
                .graphql_as(
                    runner,
                    "mutation($id: ID!, $chunk: String!, $n: Int) { appendDeploymentLog(input: { deploymentId: $id, chunk: $chunk, sequence: $n }) { sequence } }",
                    json!({ "id": deployment, "chunk": chunk, "n": sequence }),
                )
                .await
                .1
        }
    };
    let body = append(1, "line one\n".to_owned()).await;
    assert_eq!(
        body["data"]["appendDeploymentLog"]["sequence"], 1,
        "{body:#}"
    );

    let filler = disk.fill();
    let big = format!("{}\n", "x".repeat(60_000));
    let body = append(2, big.clone()).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INSUFFICIENT_STORAGE",
        "{body:#}"
    );
    // Reads go on.
    let body = server.graphql("{ apps { totalCount } }", json!({})).await;
    assert_eq!(Server::data(&body)["apps"]["totalCount"], 1);
    // The database refuses writes once its file cannot grow, and keeps none of them.
    let mut refused = None;
    for n in 0..5_000 {
        let name = format!("repo-{n:04}-{}", "y".repeat(110));
        let (_, body) = server
            .graphql_as(
                &server.admin_token,
                "mutation($input: CreateRepositoryInput!) { createRepository(input: $input) { repository { id } } }",
                json!({ "input": { "name": &name[..120], "gitUrl": "https://e.com/r.git" } }),
            )
            .await;
        if body.get("errors").is_some() {
            assert_eq!(
                body["errors"][0]["extensions"]["code"], "INSUFFICIENT_STORAGE",
                "{body:#}"
            );
            refused = Some(name[..120].to_owned());
            break;
        }
    }
    let refused = refused.expect("the database refused a write on a full disk");

    // Space returns.
    std::fs::remove_file(filler).expect("free the disk");
    let body = append(2, big.clone()).await;
    assert_eq!(
        body["data"]["appendDeploymentLog"]["sequence"], 2,
        "{body:#}"
    );
    server
        .graphql(
            "mutation { createRepository(input: { name: \"after\", gitUrl: \"https://e.com/a.git\" }) { repository { id } } }",
            json!({}),
        )
        .await;
    let names = db.rows("SELECT name FROM api_repository").await;
    assert!(names.contains(&"after".to_owned()));
    assert!(!names.contains(&refused), "the refused write left nothing");
    let log = std::fs::read_dir(&logs)
        .expect("logs dir")
        .filter_map(|e| e.ok())
        .find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("deployment-") && name.ends_with(".log")
        })
        .map(|e| std::fs::read_to_string(e.path()).expect("log"))
        .expect("the deployment's log");
    assert_eq!(
        log,
        format!("line one\n{big}"),
        "each chunk stored once, whole"
    );
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
    drop(disk);
}

crate::e2e!(cut_and_stalled_connections_leave_nothing_hanging);
/// The connections between Keystone and PostgreSQL are cut, then stall, then are cut again
/// (a proxy in between), under a mixed load: no request waits past the request timeout
/// (a stalled mutation is answered `TIMEOUT`, outcome unknown, and finishes in the
/// background), the pool recovers by itself, and every acknowledged write is stored.
async fn cut_and_stalled_connections_leave_nothing_hanging() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let cluster = PrivateCluster::start();
    let proxy = crate::support::proxy::ChaosProxy::start(
        format!("127.0.0.1:{}", cluster.port).parse().unwrap(),
    )
    .await;
    let db = TestDb::at(
        Backend::Postgres,
        format!("postgres://postgres@{}/postgres", proxy.address),
    );
    let server = Server::start(
        &db,
        &[
            "--request-timeout-secs",
            "2",
            "--database-timeout-secs",
            "1",
            "--rate-limit-per-second",
            "0",
        ],
    )
    .await
    .expect("server starts");
    let stop = AtomicBool::new(false);
    let timeline = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.stall();
        // Longer than twice the request timeout: a request that waited it out would show.
        tokio::time::sleep(Duration::from_secs(6)).await;
        proxy.cut();
        proxy.resume();
        let back = Instant::now();
        while server.ready().await.0 != 200 {
            assert!(back.elapsed() < Duration::from_secs(5), "ready within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let recovered = Instant::now();
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::Relaxed);
        recovered
    };
    let (outcomes, recovered) = tokio::join!(mixed_load(&server, 6, &stop), timeline);

    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(4500),
        "nothing waits past the 2 s request timeout: {slowest:?}"
    );
    let timeouts = outcomes
        .iter()
        .filter(|o| o.code.as_deref() == Some("TIMEOUT"))
        .count();
    assert!(timeouts > 0, "the stall was felt");
    let after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.at > recovered + Duration::from_millis(100))
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|o| o.status == 200),
        "the pool recovered"
    );
    let stored = db.rows("SELECT name FROM api_repository").await;
    for outcome in outcomes.iter().filter(|o| o.acknowledged) {
        let name = outcome.write.as_ref().unwrap();
        assert!(stored.contains(name), "acknowledged {name} is stored");
    }
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");
}
