//! `keystone bench`: Keystone's throughput as a fraction of the database floor.
//!
//! For each backend and dataset it loads the deterministic dataset into a fresh database,
//! starts this binary as a separate `keystone serve` process (so run it as a release build:
//! `cargo run --release -- bench`), drives it over loopback HTTP with `wrk` at a fixed
//! concurrency, and reads the server's own counters (`/metrics`) for SQL statements per
//! request and `/proc` for its peak RSS. With the server stopped, it then measures the
//! database floor for W1 and W2 in-process (see [`floor`]). The load generator and the
//! server share the machine's cores; so do the floor's tasks and the database.
//!
//! Workloads: W1 nested list, W2 point lookup, W3 `deployApp` on random apps, W4 90% reads
//! (W1/W2 evenly) and 10% W3. Writes are checked afterwards: the deployments table must have
//! grown by exactly the number of successful `deployApp` responses.

mod dataset;
pub mod deploy;
mod floor;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use migration::connection::{self, PoolSettings};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use dataset::Size;
use floor::FloorWorkload;
use wrk::Mix;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Backends to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    backends: Vec<Backend>,
    /// Datasets to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "small,large")]
    datasets: Vec<Size>,
    /// Workloads to run (W1..W4).
    #[arg(long, value_delimiter = ',', default_value = "W1,W2,W3,W4")]
    workloads: Vec<String>,
    /// Concurrent connections (load) and tasks (floor).
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// Unmeasured seconds before each measurement.
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// A PostgreSQL server where a scratch database `keystone_bench_<pid>` may be created.
    #[arg(
        long,
        env = "KEYSTONE_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Another `keystone` binary (say, built from an earlier commit) to measure first, on
    /// the same dataset loaded afresh, in the same run: each of our rows then shows its
    /// requests/s as a multiple of the baseline's.
    #[arg(long)]
    baseline_server: Option<PathBuf>,
}

/// Throughput and latency of one measured run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measured {
    pub requests: u64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

impl Measured {
    fn from_latencies(mut latencies: Vec<Duration>, errors: u64, duration: Duration) -> Self {
        latencies.sort_unstable();
        let percentile = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Self {
            requests: latencies.len() as u64,
            requests_per_second: latencies.len() as f64 / duration.as_secs_f64(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            errors,
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `keystone` (this binary) or `baseline` (`--baseline-server`).
    server: &'static str,
    backend: Backend,
    dataset: Size,
    workload: &'static str,
    keystone: Measured,
    sql_statements_per_request: f64,
    /// Writes acknowledged vs. rows added (W3, W4). Every acknowledged write must be there;
    /// up to `concurrency` more may be, from requests in flight when the load stopped.
    writes_acknowledged: Option<u64>,
    rows_added: Option<u64>,
    /// Acknowledged writes missing from the table: must be 0.
    writes_lost: Option<u64>,
    floor: Option<Measured>,
    /// Keystone's requests/s divided by the floor's.
    fraction_of_floor: Option<f64>,
    /// Keystone's requests/s divided by the baseline server's, same workload and data.
    vs_baseline: Option<f64>,
    server_peak_rss_mb: f64,
}

const fn mix(w1: f64, w2: f64, w3: f64, w5: f64) -> Mix {
    Mix { w1, w2, w3, w5 }
}

const WORKLOADS: [(&str, Mix); 5] = [
    ("W1", mix(1.0, 0.0, 0.0, 0.0)),
    ("W2", mix(0.0, 1.0, 0.0, 0.0)),
    ("W3", mix(0.0, 0.0, 1.0, 0.0)),
    ("W4", mix(0.45, 0.45, 0.10, 0.0)),
    ("W5", mix(0.0, 0.0, 0.0, 1.0)),
];

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("the load generator wrk is not installed: `apt-get install wrk` (Debian) and retry");
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; measure with `cargo run --release -- bench`");
    }
    let mut rows = Vec::new();
    for &backend in &args.backends {
        for &size in &args.datasets {
            let baseline = match &args.baseline_server {
                Some(binary) => {
                    eprintln!("== {backend:?} / {size:?}, baseline {}", binary.display());
                    measure(&args, backend, size, Some(binary)).await?
                }
                None => Vec::new(),
            };
            eprintln!("== {backend:?} / {size:?}");
            let mut ours = measure(&args, backend, size, None).await?;
            for row in &mut ours {
                row.vs_baseline = baseline
                    .iter()
                    .find(|b| b.workload == row.workload)
                    .map(|b| {
                        row.keystone.requests_per_second / b.keystone.requests_per_second.max(1e-9)
                    });
            }
            rows.extend(baseline);
            rows.extend(ours);
        }
    }
    print_table(&rows);
    let report = serde_json::json!({
        "machine": machine(),
        "concurrency": args.concurrency,
        "warmup_secs": args.warmup_secs,
        "duration_secs": args.duration_secs,
        "rows": rows,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("results written to {}", args.json.display());
    Ok(())
}

/// A fresh database for one measurement, removed by `drop_database`.
struct ScratchDatabase {
    url: String,
    postgres: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

async fn create_database(args: &BenchArgs, backend: Backend) -> anyhow::Result<ScratchDatabase> {
    let dir = tempfile::tempdir()?;
    match backend {
        Backend::Sqlite => Ok(ScratchDatabase {
            url: format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("bench.sqlite3").display()
            ),
            postgres: None,
            _dir: dir,
        }),
        Backend::Postgres => {
            let name = format!("keystone_bench_{}", std::process::id());
            let admin = Database::connect(args.postgres_url.as_str())
                .await
                .with_context(|| {
                    format!("connecting to {}", connection::redact(&args.postgres_url))
                })?;
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
                .await?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await?;
            admin.close().await?;
            let mut url = url::Url::parse(&args.postgres_url)?;
            url.set_path(&name);
            Ok(ScratchDatabase {
                url: url.to_string(),
                postgres: Some((args.postgres_url.clone(), name)),
                _dir: dir,
            })
        }
    }
}

async fn drop_database(db: ScratchDatabase) -> anyhow::Result<()> {
    if let Some((server, name)) = db.postgres {
        let admin = Database::connect(server.as_str()).await?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin.close().await?;
    }
    Ok(())
}

/// The release server as a child process.
struct ServerProcess {
    child: tokio::process::Child,
    base_url: String,
    /// The admin token its first start created.
    token: String,
}

/// Starts the server with the rate limit off (the suite measures throughput, and sends all
/// its requests with one token) and a port range that fits LARGE; its first admin token is
/// written into `dir`.
async fn start_server(
    binary: Option<&Path>,
    database_url: &str,
    dir: &Path,
) -> anyhow::Result<ServerProcess> {
    let token_file = dir.join("admin.token");
    let binary = match binary {
        Some(binary) => binary.to_owned(),
        None => std::env::current_exe()?,
    };
    let mut child = tokio::process::Command::new(binary)
        .args([
            "serve",
            // The bench migrated the database (a baseline binary may know fewer migrations).
            "--no-migrate",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--rate-limit-per-second",
            "0",
            // LARGE has more PORT apps than the default range has ports.
            "--port-range",
            "9000-65000",
        ])
        .arg("--admin-token-file")
        .arg(&token_file)
        .env("RUST_LOG", "warn,api=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("server stderr")?).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(at) = line.find("listening on http://") {
            let base_url = line[at + "listening on ".len()..].trim().to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading {}", token_file.display()))?
                .trim()
                .to_owned();
            return Ok(ServerProcess {
                child,
                base_url,
                token,
            });
        }
    }
    bail!("the server exited before listening")
}

impl ServerProcess {
    /// (SQL statements, GraphQL requests) so far, from `/metrics`.
    async fn counters(&self) -> anyhow::Result<(u64, u64)> {
        let url = format!("{}/metrics", self.base_url);
        let text = http_get(&url).await?;
        // The sum over a metric's label sets (an older server's have none).
        let read = |name: &str| {
            text.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with([' ', '{']))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Ok((
            read("keystone_sql_statements_total"),
            read("keystone_graphql_requests_total"),
        ))
    }

    /// Peak resident memory so far, from `/proc/<pid>/status` (Linux).
    fn peak_rss_mb(&self) -> f64 {
        let Some(pid) = self.child.id() else {
            return 0.0;
        };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        self.child.wait().await?;
        Ok(())
    }
}

/// A GET over loopback (the server's own counters), the body as text.
async fn http_get(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(url).await?.error_for_status()?.text().await?)
}

async fn count(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("COUNT returned no row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// Loads `size` into a fresh database and measures the workloads against `server` (this
/// binary when `None`; then the database floor first, too).
async fn measure(
    args: &BenchArgs,
    backend: Backend,
    size: Size,
    server: Option<&Path>,
) -> anyhow::Result<Vec<Row>> {
    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    let scratch = create_database(args, backend).await?;
    match server {
        // A baseline binary gets the schema it knows (it refuses newer migrations).
        Some(binary) => {
            let status = tokio::process::Command::new(binary)
                .args(["migrate", "up", "--database-url", &scratch.url])
                .stdout(Stdio::null())
                .status()
                .await?;
            if !status.success() {
                bail!("`{} migrate up` failed", binary.display());
            }
        }
        None => {
            let migrating = connection::connect_for_migrations(&scratch.url).await?;
            migration::upgrade(&migrating, &scratch.url, None).await?;
            migrating.close().await?;
        }
    }
    let pool = PoolSettings::for_url(&scratch.url);
    let db = connection::connect(&scratch.url, &pool).await?;
    dataset::load(&db, size).await?;

    let app_names: Vec<String> = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM api_app ORDER BY id",
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "name"))
        .collect::<Result<_, _>>()?;
    // W3 deploys apps that can be deployed: over a running deployment, `deployApp` is a
    // CONFLICT by the lifecycle rules.
    let app_ids: Vec<String> = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM api_app WHERE id NOT IN \
             (SELECT app_id FROM api_deployment WHERE status = 'running') ORDER BY id",
        ))
        .await?
        .iter()
        .map(|row| {
            row.try_get::<i64>("", "id")
                .map(|id| crate::graphql::ids::NodeType::App.id(id).0)
        })
        .collect::<Result<_, _>>()?;

    // The floor first: W3 and W4 add rows, and the floor must see the data W1 and W2 see.
    let names = Arc::new(app_names.clone());
    let mut floors = Vec::new();
    for (workload, floor_workload) in [("W1", FloorWorkload::W1), ("W2", FloorWorkload::W2)] {
        if server.is_none()
            && args
                .workloads
                .iter()
                .any(|w| w.eq_ignore_ascii_case(workload))
        {
            eprintln!("   floor {workload}");
            floors.push((
                workload,
                floor::run(
                    &db,
                    floor_workload,
                    names.clone(),
                    args.concurrency,
                    warmup,
                    duration,
                )
                .await?,
            ));
        }
    }

    let work_dir = tempfile::tempdir()?;
    let label = if server.is_some() {
        "baseline"
    } else {
        "keystone"
    };
    let server = start_server(server, &scratch.url, work_dir.path()).await?;
    let endpoint = wrk::Endpoint {
        base_url: &server.base_url,
        token: &server.token,
    };
    let mut rows = Vec::new();
    for (name, mix) in WORKLOADS {
        if !args.workloads.iter().any(|w| w.eq_ignore_ascii_case(name)) {
            continue;
        }
        eprintln!(
            "   {name}: warm-up {}s, measure {}s",
            warmup.as_secs(),
            duration.as_secs()
        );
        let load = |time| {
            wrk::run(
                &endpoint,
                mix,
                &app_names,
                &app_ids,
                args.concurrency,
                time,
                work_dir.path(),
            )
        };
        load(warmup).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let deployments_before = count(&db, "SELECT COUNT(*) FROM api_deployment").await?;
        let (sql_before, requests_before) = server.counters().await?;
        let run = load(duration).await?;
        // Requests still in flight when wrk stopped finish (or roll back) on the server.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (sql_after, requests_after) = server.counters().await?;
        let deployments_after = count(&db, "SELECT COUNT(*) FROM api_deployment").await?;
        let writes = mix.w3 > 0.0;
        rows.push(Row {
            server: label,
            backend,
            dataset: size,
            workload: name,
            keystone: run.measured,
            sql_statements_per_request: (sql_after - sql_before) as f64
                / (requests_after - requests_before).max(1) as f64,
            writes_acknowledged: writes.then_some(run.writes),
            rows_added: writes.then_some((deployments_after - deployments_before) as u64),
            writes_lost: writes.then_some(
                run.writes
                    .saturating_sub((deployments_after - deployments_before) as u64),
            ),
            floor: None,
            fraction_of_floor: None,
            vs_baseline: None,
            server_peak_rss_mb: server.peak_rss_mb(),
        });
    }
    server.stop().await?;
    for (workload, floor) in floors {
        if let Some(row) = rows.iter_mut().find(|r| r.workload == workload) {
            row.fraction_of_floor =
                Some(row.keystone.requests_per_second / floor.requests_per_second.max(1e-9));
            row.floor = Some(floor);
        }
    }

    db.close().await?;
    drop_database(scratch).await?;
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:<9} {:<8} {:<3} {:>9} {:>8} {:>8} {:>7} {:>8} {:>8} {:>10} {:>9} {:>8} {:>8}",
        "server",
        "backend",
        "data",
        "wl",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "sql/req",
        "rss MB",
        "floor r/s",
        "fraction",
        "vs base",
        "writes"
    );
    for row in rows {
        let floor = row
            .floor
            .as_ref()
            .map_or("-".to_owned(), |f| format!("{:.0}", f.requests_per_second));
        let fraction = row
            .fraction_of_floor
            .map_or("-".to_owned(), |f| format!("{f:.2}"));
        let vs_baseline = row
            .vs_baseline
            .map_or("-".to_owned(), |r| format!("{r:.2}x"));
        let writes = match (row.writes_acknowledged, row.writes_lost) {
            (Some(ack), Some(0)) => format!("{ack} ok"),
            (Some(_), Some(lost)) => format!("{lost} LOST"),
            _ => "-".to_owned(),
        };
        println!(
            "{:<9} {:<9} {:<8} {:<3} {:>9.0} {:>8.2} {:>8.2} {:>7} {:>8.2} {:>8.1} {:>10} {:>9} {:>8} {:>8}",
            row.server,
            format!("{:?}", row.backend).to_lowercase(),
            format!("{:?}", row.dataset).to_uppercase(),
            row.workload,
            row.keystone.requests_per_second,
            row.keystone.p50_ms,
            row.keystone.p99_ms,
            row.keystone.errors,
            row.sql_statements_per_request,
            row.server_peak_rss_mb,
            floor,
            fraction,
            vs_baseline,
            writes,
        );
    }
}

/// What the numbers were measured on.
fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        });
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "os": std::env::consts::OS,
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
    })
}
