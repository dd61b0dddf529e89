//! One `Config` for the server, built from command-line flags and environment variables;
//! every setting has a default that works with zero setup (SQLite file, loopback port).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderValue;
use migration::connection::{DEFAULT_DATABASE_URL, PoolSettings};

use crate::domain::logs::LogStore;
use crate::domain::ports::PortRange;
use crate::domain::runs::RunnerPolicy;
use crate::graphql::Limits;
use crate::graphql::guardrails::DocumentLimits;
use crate::http::WebSocketLimits;

/// Where the database is and how the pool behaves (for the commands that use one; listed
/// under their own heading in `--help`).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,
    /// Most connections the pool opens (default: 4 for SQLite, 10 for PostgreSQL).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", global = true)]
    pub database_max_connections: Option<u32>,
    /// Connections kept open while idle.
    #[arg(
        long,
        env = "DATABASE_MIN_CONNECTIONS",
        default_value_t = 0,
        global = true
    )]
    pub database_min_connections: u32,
    /// Seconds to wait for a free connection (and to connect) before failing.
    #[arg(
        long,
        env = "DATABASE_TIMEOUT_SECS",
        default_value_t = 5,
        global = true
    )]
    pub database_timeout_secs: u64,
    /// Seconds an idle connection stays open.
    #[arg(
        long,
        env = "DATABASE_IDLE_TIMEOUT_SECS",
        default_value_t = 600,
        global = true
    )]
    pub database_idle_timeout_secs: u64,
}

impl DatabaseArgs {
    pub fn pool(&self) -> PoolSettings {
        let defaults = PoolSettings::for_url(&self.database_url);
        PoolSettings {
            max_connections: self
                .database_max_connections
                .unwrap_or(defaults.max_connections),
            min_connections: self.database_min_connections,
            acquire_timeout: Duration::from_secs(self.database_timeout_secs),
            connect_timeout: Duration::from_secs(self.database_timeout_secs),
            idle_timeout: Duration::from_secs(self.database_idle_timeout_secs),
        }
    }
}

/// `keystone serve` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYSTONE_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
    /// Seconds a runner's claim or heartbeat holds a deployment.
    #[arg(long, env = "KEYSTONE_LEASE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_secs: u64,
    /// Claims a deployment gets before a lapsed lease fails it.
    #[arg(long, env = "KEYSTONE_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub max_attempts: i32,
    /// Where deployment logs are written.
    #[arg(long, env = "KEYSTONE_LOGS_DIR", default_value = "keystone-logs")]
    pub logs_dir: PathBuf,
    /// Host ports given to `PORT` apps, `FIRST-LAST`.
    #[arg(long, env = "KEYSTONE_PORT_RANGE", default_value = "9000-9999")]
    pub port_range: PortRange,
    /// Do not apply pending migrations at start (for setups where CI migrates); the server
    /// still refuses to start on a schema it does not know, and `/ready` reports pending ones.
    #[arg(long, env = "KEYSTONE_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Host name in the `url` of PORT apps (`http://<host>:<port>`).
    #[arg(long, env = "KEYSTONE_PUBLIC_HOST", default_value = "localhost")]
    pub public_host: String,
    /// Domain HOST apps are served under (`http://<app>.<domain>`); unset: no URL.
    #[arg(long, env = "KEYSTONE_APPS_DOMAIN")]
    pub apps_domain: Option<String>,
    /// Deepest query nesting accepted.
    #[arg(long, env = "KEYSTONE_MAX_QUERY_DEPTH", default_value_t = 16)]
    pub max_query_depth: usize,
    /// Highest query complexity accepted (each field costs 1, times the page size of the
    /// connections around it).
    #[arg(
        long,
        env = "KEYSTONE_MAX_QUERY_COMPLEXITY",
        default_value_t = 1_000_000
    )]
    pub max_query_complexity: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "KEYSTONE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most aliases in one query document.
    #[arg(long, env = "KEYSTONE_MAX_ALIASES", default_value_t = 30)]
    pub max_aliases: usize,
    /// Most field selections in one query document once its fragments are expanded
    /// (duplicates included).
    #[arg(long, env = "KEYSTONE_MAX_FIELDS", default_value_t = 1000)]
    pub max_fields: usize,
    /// Seconds a query or mutation may take, over HTTP and WebSocket alike: a query is then
    /// cancelled (`TIMEOUT`); a mutation is never cancelled halfway, its client is answered
    /// `TIMEOUT` (outcome unknown) while it finishes.
    #[arg(long, env = "KEYSTONE_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Run only trusted documents (stored with `keystone documents add`, sent by hash or in
    /// full); refuse any other with `FORBIDDEN_DOCUMENT`.
    #[arg(long, env = "KEYSTONE_TRUSTED_DOCUMENTS_ONLY")]
    pub trusted_documents_only: bool,
    /// With `--trusted-documents-only`, still run any document for admin tokens (GraphiQL).
    #[arg(long, env = "KEYSTONE_TRUSTED_DOCUMENTS_ALLOW_ADMINS")]
    pub trusted_documents_allow_admins: bool,
    /// Serve `/metrics` on this address (one only Prometheus reaches) instead of on the
    /// API's: operation names and runner names appear in it.
    #[arg(long, env = "KEYSTONE_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// A file holding the bearer token `/metrics` then requires (Prometheus:
    /// `authorization: { credentials_file: … }`); unset: `/metrics` is open.
    #[arg(long, env = "KEYSTONE_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C before the process
    /// exits anyway (WebSocket clients are closed with 1001 at once).
    #[arg(long, env = "KEYSTONE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Requests per second each token may make on average (0: no limit).
    #[arg(long, env = "KEYSTONE_RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,
    /// Requests a token may make at once above its average rate.
    #[arg(long, env = "KEYSTONE_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Milliseconds a verified token is trusted without reading it again (0: every request
    /// reads it). A revocation made elsewhere takes effect within this time.
    #[arg(long, env = "KEYSTONE_TOKEN_CACHE_MS", default_value_t = 1000)]
    pub token_cache_ms: u64,
    /// Where the first start writes the admin token it creates (readable only by you).
    #[arg(
        long,
        env = "KEYSTONE_ADMIN_TOKEN_FILE",
        default_value = "keystone-admin.token"
    )]
    pub admin_token_file: PathBuf,
    /// Do not answer schema introspection (`__schema`, `__type`); GraphiQL then cannot work.
    #[arg(long, env = "KEYSTONE_NO_INTROSPECTION")]
    pub no_introspection: bool,
    /// Do not serve GraphiQL at `/`.
    #[arg(long, env = "KEYSTONE_NO_GRAPHIQL")]
    pub no_graphiql: bool,
    /// A browser origin allowed to call the API (repeat, or comma-separate in the
    /// environment); none by default.
    #[arg(
        long = "cors-origin",
        env = "KEYSTONE_CORS_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub cors_origins: Vec<HeaderValue>,
    /// TLS is terminated by a reverse proxy in front: silences the warning about listening
    /// on a non-loopback address in clear text.
    #[arg(long, env = "KEYSTONE_BEHIND_TLS_PROXY")]
    pub behind_tls_proxy: bool,
    /// Accept repositories on loopback and private hosts (`git://127.0.0.1/…`, `10.0.0.0/8`,
    /// `localhost`): for a git server on this machine or its network. Off, such URLs are
    /// refused: whoever may create a repository could otherwise make the runner reach
    /// services that only this network can.
    #[arg(long, env = "KEYSTONE_ALLOW_PRIVATE_GIT_HOSTS")]
    pub allow_private_git_hosts: bool,
    /// A proxy (address or CIDR block) whose `Forwarded` / `X-Forwarded-For` headers name
    /// the client, for per-address limits and the audit trail (repeat, or comma-separate in
    /// the environment); requests from any other peer are keyed on the peer.
    #[arg(
        long = "trusted-proxy",
        env = "KEYSTONE_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a WebSocket may stay open without a successful `connection_init` (then it is
    /// closed with 4408).
    #[arg(long, env = "KEYSTONE_WS_INIT_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_init_timeout_secs: u64,
    /// WebSocket connections one client address may hold open.
    #[arg(long, env = "KEYSTONE_WS_MAX_PER_ADDRESS", default_value_t = 256)]
    pub ws_max_per_address: usize,
    /// WebSocket connections one token may hold open.
    #[arg(long, env = "KEYSTONE_WS_MAX_PER_TOKEN", default_value_t = 64)]
    pub ws_max_per_token: usize,
    /// Subscriptions one WebSocket connection may run at once.
    #[arg(long, env = "KEYSTONE_WS_MAX_SUBSCRIPTIONS", default_value_t = 32)]
    pub ws_max_subscriptions: usize,
    /// Subscriptions one token may run at once, over all its connections.
    #[arg(
        long,
        env = "KEYSTONE_WS_MAX_SUBSCRIPTIONS_PER_TOKEN",
        default_value_t = 256
    )]
    pub ws_max_subscriptions_per_token: usize,
    /// Bytes per second one WebSocket connection is sent on average (bursts of 8 times
    /// that); a subscriber over it falls behind and loses the oldest events
    /// (`EVENTS_DROPPED`).
    #[arg(long, env = "KEYSTONE_WS_BYTES_PER_SECOND", default_value_t = 1 << 20)]
    pub ws_bytes_per_second: u32,
    /// The key that seals config vars (made with mode 0600 at first start; back it up with
    /// the database, and give every instance the same file).
    #[arg(
        long,
        env = "KEYSTONE_SECRETS_KEY_FILE",
        default_value = "keystone-secrets.key"
    )]
    pub secrets_key_file: PathBuf,
    /// Most bytes a deployment's log may hold; past it a marker line is written and further
    /// output is dropped.
    #[arg(long, env = "KEYSTONE_MAX_LOG_BYTES", default_value_t = 10 << 20)]
    pub max_log_bytes: u64,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// A CIDR block, or one address (a block of one).
/// A `--cors-origin` value: `scheme://host[:port]`, exactly as browsers send `Origin` (no
/// path, no wildcard: with tokens, every allowed origin must be named).
fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
    let url = url::Url::parse(origin.trim())
        .map_err(|_| "expected an origin such as https://app.example.com".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || url.query().is_some() {
        return Err("expected scheme://host[:port] with nothing after it".to_owned());
    }
    HeaderValue::from_str(&url.origin().ascii_serialization())
        .map_err(|_| "not a valid header value".to_owned())
}

fn parse_network(value: &str) -> Result<ipnet::IpNet, String> {
    let value = value.trim();
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{value:?} is neither an address nor a CIDR block (10.0.0.0/8)"))
}

/// Everything the server needs, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    pub pool: PoolSettings,
    pub bind: SocketAddr,
    pub documents: crate::graphql::documents::DocumentPolicy,
    /// `/metrics` on its own address instead of the API's.
    pub metrics_bind: Option<SocketAddr>,
    /// The file of the bearer token `/metrics` requires.
    pub metrics_token_file: Option<PathBuf>,
    pub migrate_on_start: bool,
    pub public_host: String,
    pub apps_domain: Option<String>,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub shutdown_timeout: Duration,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub token_cache: Duration,
    pub admin_token_file: PathBuf,
    pub secrets_key_file: PathBuf,
    pub graphiql: bool,
    pub cors_origins: Vec<HeaderValue>,
    pub behind_tls_proxy: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub git_hosts: crate::domain::validation::GitHosts,
    pub ports: PortRange,
    pub runners: RunnerPolicy,
    pub websocket: WebSocketLimits,
}

impl Config {
    pub fn new(serve: &ServeArgs) -> Self {
        let database = &serve.database;
        Self {
            database_url: database.database_url.clone(),
            pool: database.pool(),
            bind: serve.bind,
            documents: crate::graphql::documents::DocumentPolicy {
                trusted_only: serve.trusted_documents_only,
                admins_exempt: serve.trusted_documents_allow_admins,
            },
            metrics_bind: serve.metrics_bind,
            metrics_token_file: serve.metrics_token_file.clone(),
            migrate_on_start: !serve.no_migrate,
            public_host: serve.public_host.clone(),
            apps_domain: serve.apps_domain.clone(),
            limits: Limits {
                depth: serve.max_query_depth,
                complexity: serve.max_query_complexity,
                document: DocumentLimits {
                    aliases: serve.max_aliases,
                    fields: serve.max_fields,
                },
                introspection: !serve.no_introspection,
                request_timeout: Duration::from_secs(serve.request_timeout_secs),
            },
            max_body_bytes: serve.max_body_bytes,
            shutdown_timeout: Duration::from_secs(serve.shutdown_timeout_secs),
            rate_limit_per_second: serve.rate_limit_per_second,
            rate_limit_burst: serve.rate_limit_burst,
            token_cache: Duration::from_millis(serve.token_cache_ms),
            admin_token_file: serve.admin_token_file.clone(),
            secrets_key_file: serve.secrets_key_file.clone(),
            graphiql: !serve.no_graphiql,
            cors_origins: serve.cors_origins.clone(),
            behind_tls_proxy: serve.behind_tls_proxy,
            trusted_proxies: serve.trusted_proxies.clone(),
            git_hosts: crate::domain::validation::GitHosts {
                allow_private: serve.allow_private_git_hosts,
            },
            ports: serve.port_range,
            runners: RunnerPolicy {
                lease: Duration::from_secs(serve.lease_secs),
                max_attempts: serve.max_attempts,
                logs: LogStore {
                    dir: std::path::absolute(&serve.logs_dir)
                        .unwrap_or_else(|_| serve.logs_dir.clone()),
                    max_bytes: serve.max_log_bytes,
                },
                ports: serve.port_range,
            },
            websocket: WebSocketLimits {
                init_timeout: Duration::from_secs(serve.ws_init_timeout_secs),
                max_message_bytes: serve.max_body_bytes,
                per_address: serve.ws_max_per_address,
                per_token: serve.ws_max_per_token,
                subscriptions: serve.ws_max_subscriptions,
                subscriptions_per_token: serve.ws_max_subscriptions_per_token,
                bytes_per_second: serve.ws_bytes_per_second,
                // Revocation and expiry reach open connections within the cache interval.
                recheck: Duration::from_millis(serve.token_cache_ms)
                    .clamp(Duration::from_millis(250), Duration::from_secs(5)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Args;

    use super::ServeArgs;

    /// The README's configuration table: (variable, flag, default) per row that names a flag.
    fn documented() -> Vec<(String, String, String)> {
        let readme = include_str!("../../README.md");
        let table = readme
            .split_once("\n### Configuration\n")
            .and_then(|(_, rest)| rest.split("\n### ").next())
            .expect("README has a Configuration section");
        let cell = |text: &str| text.trim().trim_matches('`').to_owned();
        table
            .lines()
            .filter(|line| line.starts_with("| `"))
            .filter_map(|line| {
                // Cells hold no `|` of their own.
                let cells: Vec<&str> = line.split('|').skip(1).collect();
                let flag = cell(cells.get(1)?);
                let flag = flag.strip_prefix("serve ").unwrap_or(&flag).to_owned();
                (!flag.is_empty()).then(|| (cell(cells[0]), flag, cell(cells[2])))
            })
            .collect()
    }

    /// Every `serve` flag (database options included) has its row in the README's table,
    /// with its environment variable and default, and every row names a flag that exists.
    #[test]
    fn the_readme_configuration_table_matches_the_flags() {
        let rows = documented();
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let mut flags = Vec::new();
        for argument in command.get_arguments() {
            let Some(long) = argument.get_long() else {
                continue;
            };
            let flag = format!("--{long}");
            let row = rows
                .iter()
                .find(|(_, documented, _)| *documented == flag)
                .unwrap_or_else(|| panic!("{flag} has no row in the README's Configuration"));
            let env = argument.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(Some(&row.0), env.as_ref(), "{flag}: environment variable");
            let default: Vec<String> = argument
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let expected = match default.as_slice() {
                [] => None,
                [value] if value == "false" => Some("off".to_owned()),
                [value] => Some(value.clone()),
                _ => None,
            };
            if let Some(expected) = expected {
                assert_eq!(row.2, expected, "{flag}: default");
            }
            flags.push(flag);
        }
        for (_, flag, _) in &rows {
            assert!(
                flags.contains(flag),
                "the README documents {flag}, which serve lacks"
            );
        }
    }
}
