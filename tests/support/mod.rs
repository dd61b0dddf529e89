//! Test harness: a fresh database per test (a temporary SQLite file, or a PostgreSQL schema
//! of its own), the real `keystone` binary run as a command or started as a server, and
//! helpers to look at the database directly.
//!
//! PostgreSQL: `KEYSTONE_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! names a server; tests create the database `keystone_test` there if needed and one schema
//! per test, dropped at the end. Schemas left by crashed runs (whose process is gone) are
//! dropped when the next run starts. A test that needs what this machine lacks (PostgreSQL,
//! Docker, a browser) stops where it finds out, and is reported **ignored**, with the reason
//! ([`skip`]); with `KEYSTONE_REQUIRE_POSTGRES=1` (and `…_DOCKER`, `…_BROWSER`, set by
//! `.ci/run`) it fails instead.
//!
//! The tests are registered with [`e2e!`] (and [`on_both_backends!`]) and run by this
//! binary's own harness (`tests/main.rs`, libtest-mimic), so that a skipped test is never
//! reported as passed.

pub mod cluster;
pub mod hooks;
pub mod protocol;
pub mod proxy;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every migration, oldest first, as `seaql_migrations` names them.
pub const MIGRATIONS: [&str; 12] = [
    "m20261126_000001_create_tables",
    "m20261126_000002_index_deployments_by_app_and_time",
    "m20261126_000003_create_tokens_and_audit_events",
    "m20261126_000004_deployment_lifecycle",
    "m20261130_000005_runner_placement_and_commits",
    "m20261130_000006_app_config",
    "m20261130_000007_index_deployments_by_status",
    "m20261130_000008_check_enumerations",
    "m20261130_000009_trusted_documents",
    "m20261201_000010_count_deployments_by_status",
    "m20261205_000011_audit_actors",
    "m20261205_000012_webhooks",
];

/// A registered end-to-end test: its module, its name, and how to run it.
pub struct E2e {
    pub module: &'static str,
    pub name: &'static str,
    pub run: fn(),
}

inventory::collect!(E2e);

/// Why a test did not run (the payload of its [`skip`] panic).
pub struct Skip(pub String);

/// Stops the test: it is reported ignored, saying `why`.
pub fn skip(why: impl Into<String>) -> ! {
    std::panic::panic_any(Skip(why.into()))
}

/// Stops the test because `why` is missing: ignored, or failed when the environment
/// variable `required` is `1` (CI sets it).
pub fn unavailable(required: &str, why: impl Into<String>) -> ! {
    let why = why.into();
    if std::env::var(required).is_ok_and(|v| v == "1") {
        panic!("{required}=1 but {why}");
    }
    skip(why)
}

/// Runs an async test on a runtime of its own (two workers, as the server's tests need).
pub fn block_on(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(test)
}

/// Registers `async fn name()` (or, with `sync`, `fn name()`) as a test of this binary.
#[macro_export]
macro_rules! e2e {
    (sync $name:ident) => {
        const _: () = {
            inventory::submit! {
                $crate::support::E2e { module: module_path!(), name: stringify!($name), run: $name }
            }
        };
    };
    ($name:ident) => {
        const _: () = {
            fn run() {
                $crate::support::block_on($name())
            }
            inventory::submit! {
                $crate::support::E2e { module: module_path!(), name: stringify!($name), run }
            }
        };
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(Backend)` as two tests: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
                $crate::e2e!($name);
            )*
        }
        mod postgres {
            $(
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
                $crate::e2e!($name);
            )*
        }
    };
}

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const TEST_DATABASE: &str = "keystone_test";

fn postgres_server_url() -> String {
    std::env::var("KEYSTONE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("KEYSTONE_TEST_POSTGRES_URL is a URL");
    parsed.set_path(database);
    parsed.to_string()
}

/// The URL of the `keystone_test` database, created if missing; the test is skipped when
/// PostgreSQL cannot be reached (and is not required).
async fn postgres_test_database() -> String {
    static READY: OnceCell<Result<String, String>> = OnceCell::const_new();
    let ready = READY
        .get_or_init(|| async {
            let server = postgres_server_url();
            let mut options = sea_orm::ConnectOptions::new(server.clone());
            options
                .connect_timeout(Duration::from_secs(3))
                .acquire_timeout(Duration::from_secs(3))
                .sqlx_logging(false);
            let admin = match Database::connect(options).await {
                Ok(admin) => admin,
                Err(error) => {
                    return Err(format!(
                        "PostgreSQL at {server} cannot be reached ({error}); start it, or set \
                         KEYSTONE_TEST_POSTGRES_URL"
                    ));
                }
            };
            let exists = admin
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT 1 AS one FROM pg_database WHERE datname = '{TEST_DATABASE}'"),
                ))
                .await
                .expect("query pg_database")
                .is_some();
            if !exists {
                // Parallel test processes may race here; losing the race is fine.
                let _ = admin
                    .execute_unprepared(&format!("CREATE DATABASE {TEST_DATABASE}"))
                    .await;
            }
            let url = with_database(&server, TEST_DATABASE);
            drop_orphan_schemas(&url).await;
            Ok(url)
        })
        .await;
    match ready {
        Ok(url) => url.clone(),
        Err(why) => unavailable("KEYSTONE_REQUIRE_POSTGRES", why.clone()),
    }
}

/// Drops `kt_<pid>_<n>` schemas whose process no longer runs (crashed or killed runs).
async fn drop_orphan_schemas(url: &str) {
    let db = Database::connect(url)
        .await
        .expect("connect to keystone_test");
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'kt\\_%'",
        ))
        .await
        .expect("list schemas");
    for row in rows {
        let name: String = row.try_get("", "nspname").expect("nspname");
        let pid = name.split('_').nth(1).unwrap_or_default();
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = db
                .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
    db.close().await.ok();
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub backend: Backend,
    /// What `keystone` gets as `DATABASE_URL`.
    pub url: String,
    dir: tempfile::TempDir,
    schema: Option<(String, String)>,
}

impl TestDb {
    /// Skips the test when PostgreSQL is asked for and unreachable (and not required).
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Self {
                backend,
                url: format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("keystone.sqlite3").display()
                ),
                dir,
                schema: None,
            },
            Backend::Postgres => {
                let database = postgres_test_database().await;
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let schema = format!(
                    "kt_{}_{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                let admin = Database::connect(database.as_str()).await.expect("connect");
                admin
                    .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
                    .await
                    .expect("create schema");
                admin.close().await.ok();
                let mut url = url::Url::parse(&database).expect("url");
                url.query_pairs_mut()
                    .append_pair("options", &format!("-c search_path={schema}"));
                Self {
                    backend,
                    url: url.to_string(),
                    dir,
                    schema: Some((database, schema)),
                }
            }
        }
    }

    /// A database at `url` that the test owns whole (a private cluster's): nothing to drop.
    pub fn at(backend: Backend, url: String) -> Self {
        Self {
            backend,
            url,
            dir: tempfile::tempdir().expect("temp dir"),
            schema: None,
        }
    }

    /// The PostgreSQL schema this test database lives in (`None` on SQLite).
    pub fn postgres_schema(&self) -> Option<&str> {
        self.schema.as_ref().map(|(_, schema)| schema.as_str())
    }

    /// A directory that lives as long as the database (for server working dirs and files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A direct connection to the test database, bypassing Keystone.
    pub async fn connect(&self) -> DatabaseConnection {
        let mut options = sea_orm::ConnectOptions::new(self.url.clone());
        options.max_connections(1).sqlx_logging(false);
        Database::connect(options)
            .await
            .expect("connect to the test database")
    }

    /// Runs an SQL script (several statements) directly.
    pub async fn exec(&self, sql: &str) {
        let db = self.connect().await;
        db.execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{sql}"));
        db.close().await.ok();
    }

    /// The rows of `sql` with every column cast to text (NULL as `NULL`), one string per row.
    pub async fn rows(&self, sql: &str) -> Vec<String> {
        let db = self.connect().await;
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"));
        let out = rows
            .iter()
            .map(|row| {
                row.column_names()
                    .iter()
                    .map(|c| {
                        row.try_get::<Option<String>>("", c)
                            .unwrap_or_else(|e| panic!("column {c} is not text: {e}"))
                            .unwrap_or_else(|| "NULL".into())
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        db.close().await.ok();
        out
    }

    /// One integer from a query such as `SELECT COUNT(*) AS n …`.
    pub async fn count(&self, sql: &str) -> i64 {
        let db = self.connect().await;
        let row = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .expect("query")
            .expect("one row");
        let n = row.try_get_by_index::<i64>(0).expect("an integer");
        db.close().await.ok();
        n
    }

    /// Waits (at most 10 s) until some token's first use is recorded: the server writes
    /// `lastUsedAt` in the background, and a test that counts statements must not count
    /// that `UPDATE` as its query's.
    pub async fn wait_for_token_use(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self
            .count("SELECT COUNT(*) FROM api_token WHERE last_used_at IS NOT NULL")
            .await
            == 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lastUsedAt never recorded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Every table of the test database, sorted.
    pub async fn tables(&self) -> Vec<String> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            }
            Backend::Postgres => {
                "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name"
            }
        };
        self.rows(sql).await
    }

    /// A textual snapshot of the whole schema (tables, columns, indexes, constraints), to
    /// prove that a refused operation changed nothing.
    pub async fn schema_snapshot(&self) -> Vec<String> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT type, name, COALESCE(sql, '') FROM sqlite_master ORDER BY type, name"
            }
            Backend::Postgres => {
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                 COALESCE(column_default::text, '') FROM information_schema.columns \
                 WHERE table_schema = current_schema() \
                 UNION ALL SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid), '', '' \
                 FROM pg_constraint WHERE connamespace = current_schema()::regnamespace \
                 UNION ALL SELECT tablename::text, indexname::text, indexdef, '', '' FROM pg_indexes \
                 WHERE schemaname = current_schema() ORDER BY 1, 2, 3"
            }
        };
        self.rows(sql).await
    }

    /// Loads the Django version's DDL for this backend (from `tests/fixtures/`), Django's
    /// own bookkeeping tables recording `api 0001_initial`, and one of Django's other tables.
    pub async fn load_django_schema(&self) {
        let (ddl, bookkeeping) = match self.backend {
            Backend::Sqlite => (
                include_str!("../fixtures/keystone-django-0001.sqlite.sql"),
                r#"CREATE TABLE "django_migrations" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "app" varchar(255) NOT NULL, "name" varchar(255) NOT NULL, "applied" datetime NOT NULL);
                   CREATE TABLE "auth_group" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "name" varchar(150) NOT NULL UNIQUE);"#,
            ),
            Backend::Postgres => (
                include_str!("../fixtures/keystone-django-0001.postgres.sql"),
                r#"CREATE TABLE "django_migrations" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "app" varchar(255) NOT NULL, "name" varchar(255) NOT NULL, "applied" timestamp with time zone NOT NULL);
                   CREATE TABLE "auth_group" ("id" integer NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "name" varchar(150) NOT NULL UNIQUE);"#,
            ),
        };
        self.exec(ddl).await;
        self.exec(bookkeeping).await;
        self.exec(
            "INSERT INTO django_migrations (app, name, applied) VALUES \
             ('contenttypes', '0001_initial', '2024-01-01 00:00:00'), \
             ('api', '0001_initial', '2024-01-01 00:00:01'); \
             INSERT INTO auth_group (name) VALUES ('operators');",
        )
        .await;
    }
}

impl Drop for TestDb {
    /// Drops the test's PostgreSQL schema (its SQLite file goes with its directory), on a
    /// thread of its own: the test's runtime may be shutting down.
    fn drop(&mut self) {
        let Some((database, schema)) = self.schema.take() else {
            return;
        };
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let admin = Database::connect(database.as_str()).await?;
                admin
                    .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !std::thread::panicking() {
            dropped
                .expect("the schema-dropping thread")
                .expect("drop the test's schema");
        }
    }
}

/// What a finished `keystone` command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "keystone failed ({})\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "keystone should have failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

fn keystone_command(db: &TestDb) -> Command {
    keystone_env(Command::new(env!("CARGO_BIN_EXE_keystone")), db)
}

/// `keystone <args>` on a pseudo-terminal, as a person runs it (util-linux `script`): what
/// the terminal shows comes out of the child's stdout.
pub fn keystone_on_a_terminal(db: &TestDb, args: &[&str]) -> Command {
    let line = std::iter::once(env!("CARGO_BIN_EXE_keystone"))
        .chain(args.iter().copied())
        .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = keystone_env(Command::new("script"), db);
    command
        .args(["-qefc", &line, "/dev/null"])
        .env("TERM", "xterm")
        .stdout(Stdio::piped());
    command
}

/// The environment every `keystone` a test runs gets.
fn keystone_env(mut command: Command, db: &TestDb) -> Command {
    command
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info,sqlx=warn")
        // Tests make many requests quickly; the rate-limit test sets its own limit.
        .env("KEYSTONE_RATE_LIMIT_PER_SECOND", "0")
        .env("NO_COLOR", "1")
        // The client commands' login lives in the test's directory, never the user's.
        .env("XDG_CONFIG_HOME", db.dir().join(".config"))
        .env_remove("KEYSTONE_URL")
        .env_remove("KEYSTONE_TOKEN")
        .current_dir(db.dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `keystone <args>` against `db` and waits for it.
pub async fn keystone(db: &TestDb, args: &[&str]) -> Output {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        keystone_command(db).args(args).output(),
    )
    .await
    .expect("keystone did not finish within 120 s")
    .expect("run keystone");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `keystone serve` on a free loopback port.
pub struct Server {
    pub base_url: String,
    /// The admin token the first start wrote to `keystone-admin.token` (empty if none).
    pub admin_token: String,
    child: Child,
    log: tokio::task::JoinHandle<String>,
}

impl Server {
    /// Starts `keystone serve --bind 127.0.0.1:0 <extra>` (`extra` may name another
    /// `--bind`) and waits until it listens. `Err` holds everything it printed when it exited
    /// instead.
    pub async fn start(db: &TestDb, extra: &[&str]) -> Result<Server, String> {
        let bind: &[&str] = if extra.contains(&"--bind") {
            &[]
        } else {
            &["--bind", "127.0.0.1:0"]
        };
        let mut child = keystone_command(db)
            .arg("serve")
            .args(bind)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keystone serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = String::new();
        let base_url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push_str(&line);
                seen.push('\n');
                if let Some(at) = line.find("listening on http://") {
                    return Some(line[at + "listening on ".len()..].trim().to_owned());
                }
            }
            None
        })
        .await
        .expect("keystone serve did not start within 60 s");
        match base_url {
            Some(base_url) => {
                // Keep draining the log so the server never blocks on a full pipe.
                let log = tokio::spawn(async move {
                    let mut rest = seen;
                    while let Ok(Some(line)) = lines.next_line().await {
                        rest.push_str(&line);
                        rest.push('\n');
                    }
                    rest
                });
                let admin_token = std::fs::read_to_string(db.dir().join("keystone-admin.token"))
                    .map(|t| t.trim().to_owned())
                    .unwrap_or_default();
                Ok(Server {
                    base_url,
                    admin_token,
                    child,
                    log,
                })
            }
            None => {
                let _ = child.wait().await;
                Err(seen)
            }
        }
    }

    /// The server's process id (for reading its `/proc` entries).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// The CPU time the server's threads have run, to the nanosecond (Linux's schedstat).
    pub fn cpu_time(&self) -> Duration {
        let tasks = format!("/proc/{}/task", self.pid());
        let nanos: u64 = std::fs::read_dir(tasks)
            .expect("the server's threads")
            .filter_map(|task| {
                let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
                stat.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        Duration::from_nanos(nanos)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends SIGTERM and waits: the exit status and everything the server logged.
    /// Sends the server `signal` (`TERM`, `KILL`, …) without waiting for it to exit.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("server pid");
        Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .await
            .expect("kill");
    }

    /// Waits (at most 30 s) for the server to exit: its status and everything it logged.
    pub async fn exited(mut self) -> (ExitStatus, String) {
        let Ok(status) = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await
        else {
            let _ = self.child.kill().await;
            let log = self.log.await.unwrap_or_default();
            panic!("server did not exit within 30 s; its log:\n{log}");
        };
        let log = self.log.await.unwrap_or_default();
        (status.expect("wait"), log)
    }

    /// SIGTERM, then waits for the server to exit: its status and everything it logged.
    #[must_use = "check how the server stopped, or call `stop_ok`"]
    pub async fn stop(self) -> (ExitStatus, String) {
        self.signal("TERM").await;
        self.exited().await
    }

    /// [`Server::stop`], asserting a clean exit and no `ERROR` in its log.
    pub async fn stop_ok(self) {
        let (status, log) = self.stop().await;
        assert!(status.success(), "the server exited with {status}:\n{log}");
        assert!(
            !log.lines().any(|line| line.contains(" ERROR ")),
            "the server logged an error:\n{log}"
        );
    }
}

pub fn http() -> reqwest::Client {
    api::install_tls_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// An HTTP client that sends `token` as a bearer token on every request.
pub fn http_as(token: &str) -> reqwest::Client {
    api::install_tls_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("http client")
}

impl Server {
    /// A client signed in with the admin token.
    pub fn admin(&self) -> reqwest::Client {
        http_as(&self.admin_token)
    }

    /// POSTs a GraphQL request as admin and returns the JSON body (asserting HTTP 200).
    pub async fn graphql(&self, query: &str, variables: serde_json::Value) -> serde_json::Value {
        let (status, body) = self.graphql_as(&self.admin_token, query, variables).await;
        assert_eq!(status, 200, "POST /graphql status: {body:#}");
        body
    }

    /// POSTs a GraphQL request with `token` (none when empty): the status and JSON body.
    pub async fn graphql_as(
        &self,
        token: &str,
        query: &str,
        variables: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let client = if token.is_empty() {
            http()
        } else {
            http_as(token)
        };
        let response = client
            .post(self.url("/graphql"))
            .json(&serde_json::json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("POST /graphql");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Creates a token with `role` through the API; returns its secret.
    pub async fn create_token(&self, name: &str, role: &str) -> String {
        let body = self
            .graphql(
                &format!(
                    "mutation {{ createApiToken(input: {{ name: \"{name}\", role: {role} }}) {{ secret }} }}"
                ),
                serde_json::json!({}),
            )
            .await;
        Self::data(&body)["createApiToken"]["secret"]
            .as_str()
            .expect("secret")
            .to_owned()
    }

    /// Like [`Server::graphql`], asserting there are no errors, and returning `data`.
    #[track_caller]
    pub fn data(body: &serde_json::Value) -> &serde_json::Value {
        assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
        &body["data"]
    }

    /// `GET /ready`: the status and the JSON body.
    pub async fn ready(&self) -> (u16, serde_json::Value) {
        let response = http()
            .get(self.url("/ready"))
            .send()
            .await
            .expect("GET /ready");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }

    /// How many SQL statements the server has run (from `/metrics`).
    pub async fn sql_statements(&self) -> u64 {
        self.metric("keystone_sql_statements_total").await as u64
    }

    /// Every series `/metrics` serves now: `name{labels}` → value.
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let text = http()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        parse_metrics(&text)
    }

    /// One series of `/metrics` (`name{labels}`, as served), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.get(series).copied().unwrap_or(0.0)
    }
}

impl Server {
    /// Creates a repository named `repository` and an app named `app` in it, through the
    /// API as admin; returns the app's ID.
    pub async fn create_app(&self, repository: &str, app: &str) -> String {
        let body = self
            .graphql(
                "mutation($n: String!) { createRepository(input: { name: $n, gitUrl: \"https://e.com/r.git\" }) { repository { id } } }",
                serde_json::json!({ "n": repository }),
            )
            .await;
        let repository = Self::data(&body)["createRepository"]["repository"]["id"].clone();
        let body = self
            .graphql(
                "mutation($r: ID!, $n: String!) { createApp(input: { name: $n, repositoryId: $r }) { app { id } } }",
                serde_json::json!({ "r": repository, "n": app }),
            )
            .await;
        Self::data(&body)["createApp"]["app"]["id"]
            .as_str()
            .expect("app id")
            .to_owned()
    }

    /// `deleteApp` of app `id` as the admin, which must succeed.
    pub async fn delete_app(&self, id: &str) {
        let body = self
            .graphql(
                "mutation($id: ID!) { deleteApp(input: { appId: $id }) { deletedAppId } }",
                serde_json::json!({ "id": id }),
            )
            .await;
        assert_eq!(Self::data(&body)["deleteApp"]["deletedAppId"], id, "{body}");
    }
}

/// A certificate authority of the test's own, and a certificate it signed for `localhost`
/// and 127.0.0.1 (TLS to the server, and to a private PostgreSQL cluster).
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    TestPki {
        ca_pem: ca.pem(),
        cert_pem: server.pem(),
        key_pem: key.serialize_pem(),
        cert_der: server.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

/// The global ID of object `n` of `kind` (`App`, `Deployment`, `ApiToken`, …).
pub fn global_id(kind: &str, n: impl std::fmt::Display) -> String {
    base64_url(&format!("{kind}:{n}"))
}

/// The SHA-256 of `text`, in lowercase hex (as trusted documents are named).
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Inserts repository 1 (default branch `release`) and `count` PORT apps `app-1`… in it,
/// straight into the database (ids 1…`count`).
pub async fn insert_port_apps(db: &TestDb, count: i64) {
    db.exec("INSERT INTO api_repository (id, name, git_url, default_branch) VALUES (1, 'r', 'https://e.com/r.git', 'release')")
        .await;
    let values: Vec<String> = (1..=count)
        .map(|n| format!("({n}, 'app-{n}', 'PORT', 'draft', 1)"))
        .collect();
    db.exec(&format!(
        "INSERT INTO api_app (id, name, access_mode, status, repo_id) VALUES {}",
        values.join(", ")
    ))
    .await;
}

/// The error of a GraphQL response that failed with exactly one error: (code, field).
#[track_caller]
pub fn only_error(body: &serde_json::Value) -> (String, Option<String>) {
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("expected errors: {body:#}"));
    assert_eq!(errors.len(), 1, "expected one error: {body:#}");
    let ext = &errors[0]["extensions"];
    (
        ext["code"].as_str().unwrap_or_default().to_owned(),
        ext["field"].as_str().map(str::to_owned),
    )
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Every series of a Prometheus text scrape: `name{labels}` → value.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A `graphql-transport-ws` `subscribe` message for operation `id`.
pub fn ws_subscribe(id: &str, query: &str) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Text(
        serde_json::json!({ "type": "subscribe", "id": id, "payload": { "query": query } })
            .to_string()
            .into(),
    )
}

/// Sends a `subscribe` message on `socket`.
pub async fn ws_start(socket: &mut Socket, id: &str, query: &str) {
    socket.send(ws_subscribe(id, query)).await.expect("send");
}

/// Opens `/graphql/ws` and sends `connection_init` with `token` (none when empty).
pub async fn ws_connect(server: &Server, token: &str) -> Socket {
    let url = server.url("/graphql/ws").replace("http://", "ws://");
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let payload = if token.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "Authorization": format!("Bearer {token}") })
    };
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            serde_json::json!({ "type": "connection_init", "payload": payload })
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
    socket
}

/// The payload of the next `next` message of operation `id` on `socket` (request errors
/// arrive this way too, with `data: null`); other messages are skipped.
pub async fn ws_next_payload(socket: &mut Socket, id: &str) -> serde_json::Value {
    loop {
        let message = ws_next(socket).await.expect("the socket stays open");
        if message["type"] == "next" && message["id"] == id {
            return message["payload"].clone();
        }
    }
}

/// The next message: `Ok(json)` for text, `Err(close reason)` when the server closed.
pub async fn ws_next(socket: &mut Socket) -> Result<serde_json::Value, String> {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s");
        match message {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                return Ok(serde_json::from_str(&text).expect("JSON message"));
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                return Err(frame.map(|f| f.reason.to_string()).unwrap_or_default());
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

pub fn codes(body: &serde_json::Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A free loopback port for a process the test starts to listen on later.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive loopback ports that are free now and stay ours: they
/// come from below the kernel's ephemeral range (32768–60999 here), so no `bind(0)` or
/// outgoing connection takes them between this check and the test's use, and a counter
/// shared by every test in the process never hands a port out twice.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u32 = 12_000;
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts elsewhere in the range (runs may overlap on one machine).
    let start = std::process::id() % SPAN;
    loop {
        let k = HANDED_OUT.fetch_add(u32::from(n), Ordering::SeqCst);
        let first = LOW + ((start + k) % (SPAN - u32::from(n))) as u16;
        if (first..first + n).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return first;
        }
    }
}
