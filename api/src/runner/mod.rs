//! `keystone runner`: executes deployments. A client of the GraphQL API like any other (a
//! `runner` token; it never opens the database and uses nothing of the server's modules):
//!
//! 1. **Claim** the oldest queued deployment it may run, heartbeat it (reporting its stage
//!    and commit; a heartbeat that says "cancel" stops the step in progress), and stream its
//!    log, live and crash-safe ([`logs`]).
//! 2. **Deploy** it stage by stage ([`deploy`]): source (a hardened shallow clone,
//!    [`source`]; a rollback reuses the earlier release where it is), build (the stack's,
//!    [`buildpack`], then the `Procfile`'s `build:`), release phase, start and health check
//!    ([`health`]), switch. Each release is built in the directory it runs from and never
//!    moved. Where and how instances run is the [`runtime`]'s business (process or Docker).
//! 3. **Switch** traffic through `keystone proxy` ([`routing`], [`crate::proxy`]), the data
//!    plane that owns the apps' public ports and host names and outlives the runner: the new
//!    instance's address replaces the old one's atomically, then the old instance is
//!    drained and stopped. Apps keep serving while the runner is down.
//! 4. **Reconcile** what runs with what the server says should ([`reconcile`]): at start
//!    (re-adopting instances that survived a restart, restarting releases after a reboot),
//!    at every signal from the server ([`signals`]) and periodically.
//!
//! What it remembers lives in `<work>/state.json` ([`state`]).

pub mod buildpack;
pub mod client;
mod deploy;
mod health;
mod logs;
mod procfile;
mod reconcile;
mod routing;
pub mod runtime;
mod signals;
mod source;
mod state;
mod steps;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use self::client::operations::{Claim, claim};
use self::client::{Client, ClientError};
use self::health::HealthCheck;
use self::logs::Spooling;
use self::routing::{ProxySettings, Routing};
use self::runtime::Runtime;
use self::runtime::docker::Docker;
use self::runtime::process::Process;
use self::state::{Instance, State};
use self::steps::kill_orphaned_step;

/// `keystone runner` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct RunnerArgs {
    /// The Keystone server's base URL (`https://…` behind a TLS proxy: the token then never
    /// crosses the network in clear text).
    #[arg(long, env = "KEYSTONE_SERVER", default_value = "http://127.0.0.1:8000")]
    pub server: String,
    /// A PEM file of certificate authorities to trust besides the system's (a server behind
    /// a proxy whose certificate a private CA signed).
    #[arg(long, env = "KEYSTONE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A file holding a `runner` token (`keystone token create --role runner`).
    #[arg(
        long,
        env = "KEYSTONE_RUNNER_TOKEN_FILE",
        default_value = "keystone-runner.token"
    )]
    pub token_file: PathBuf,
    /// How apps run: `process` (the Procfile's `web:` as a process group) or `docker`
    /// (`docker build` of the repository's Dockerfile, then a container).
    #[arg(long, env = "KEYSTONE_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// The Docker CLI (Podman's `podman` works as well).
    #[arg(long, env = "KEYSTONE_DOCKER", default_value = "docker")]
    pub docker_binary: String,
    /// `host`: containers use the host's network; otherwise their port is published on
    /// 127.0.0.1 only.
    #[arg(long, env = "KEYSTONE_DOCKER_NETWORK", default_value = "bridge")]
    pub docker_network: String,
    /// Where releases, build directories and the state file live.
    #[arg(
        long,
        env = "KEYSTONE_RUNNER_WORK_DIR",
        default_value = "keystone-runner"
    )]
    pub work_dir: PathBuf,
    /// Address the apps' public ports listen on.
    #[arg(long, env = "KEYSTONE_RUNNER_BIND", default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// The host name where this runner's apps are reached (their `url`); the server's
    /// `--public-host` when unset.
    #[arg(long, env = "KEYSTONE_RUNNER_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Where `HOST` apps are served, by host name (put the TLS proxy in front of it).
    #[arg(long, env = "KEYSTONE_HOST_BIND", default_value = "127.0.0.1:8080")]
    pub host_bind: std::net::SocketAddr,
    /// The domain `HOST` apps are served under: `<app>.<domain>` (the server's
    /// `--apps-domain`).
    #[arg(long, env = "KEYSTONE_APPS_DOMAIN", default_value = "localhost")]
    pub apps_domain: String,
    /// Deployments built at once.
    #[arg(long, env = "KEYSTONE_RUNNER_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// Path probed by the health check of apps that do not set their own `healthCheckPath`
    /// (empty: no HTTP check, only "still running after 10 s and accepting TCP").
    #[arg(long, env = "KEYSTONE_HEALTH_PATH", default_value = "/")]
    pub health_path: String,
    /// Seconds between health probes.
    #[arg(long, env = "KEYSTONE_HEALTH_INTERVAL_SECS", default_value_t = 2)]
    pub health_interval_secs: u64,
    /// Seconds one probe may take.
    #[arg(long, env = "KEYSTONE_HEALTH_TIMEOUT_SECS", default_value_t = 5)]
    pub health_timeout_secs: u64,
    /// Seconds a new instance has to become healthy.
    #[arg(long, env = "KEYSTONE_HEALTH_DEADLINE_SECS", default_value_t = 60)]
    pub health_deadline_secs: u64,
    /// Seconds an old instance keeps its open connections after a switch.
    #[arg(long, env = "KEYSTONE_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
    /// Seconds between SIGTERM and SIGKILL when an instance stops.
    #[arg(long, env = "KEYSTONE_STOP_GRACE_SECS", default_value_t = 10)]
    pub stop_grace_secs: u64,
    /// Seconds a clone may take.
    #[arg(long, env = "KEYSTONE_CLONE_TIMEOUT_SECS", default_value_t = 300)]
    pub clone_timeout_secs: u64,
    /// Seconds a build may take.
    #[arg(long, env = "KEYSTONE_BUILD_TIMEOUT_SECS", default_value_t = 1800)]
    pub build_timeout_secs: u64,
    /// Seconds the release phase may take.
    #[arg(long, env = "KEYSTONE_RELEASE_TIMEOUT_SECS", default_value_t = 900)]
    pub release_timeout_secs: u64,
    /// Successful releases kept per app (for rollbacks without a rebuild).
    #[arg(long, env = "KEYSTONE_KEEP_RELEASES", default_value_t = 5)]
    pub keep_releases: usize,
    /// Free space (MiB) the work directory needs before a build starts.
    #[arg(long, env = "KEYSTONE_MIN_FREE_MIB", default_value_t = 2048)]
    pub min_free_mib: u64,
    /// Milliseconds between claims while nothing is queued.
    #[arg(long, env = "KEYSTONE_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// Seconds between reconciliations with the server's desired state.
    #[arg(long, env = "KEYSTONE_RECONCILE_SECS", default_value_t = 30)]
    pub reconcile_secs: u64,
    /// Milliseconds between log batches while a deployment prints (at least one batch this
    /// often; also one whenever 32 KiB are waiting).
    #[arg(long, env = "KEYSTONE_LOG_BATCH_MS", default_value_t = 500)]
    pub log_batch_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    Process,
    Docker,
}

impl RunnerArgs {
    fn runtime(&self) -> Box<dyn Runtime> {
        match self.runtime {
            RuntimeKind::Process => Box::new(Process),
            RuntimeKind::Docker => Box::new(Docker {
                binary: self.docker_binary.clone(),
                host_network: self.docker_network == "host",
            }),
        }
    }

    /// The health check of an app whose own path is `app_path` (the server always sends one;
    /// `--health-path` when it does not).
    fn health(&self, app_path: Option<&str>) -> HealthCheck {
        let path = app_path.unwrap_or(&self.health_path);
        HealthCheck {
            path: Some(path.to_owned()).filter(|p| !p.is_empty()),
            interval: Duration::from_secs(self.health_interval_secs.max(1)),
            timeout: Duration::from_secs(self.health_timeout_secs.max(1)),
            deadline: Duration::from_secs(self.health_deadline_secs.max(1)),
        }
    }

    fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }

    fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }
}

/// Why the runner could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot read the runner token from {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Proxy(String),
}

/// What the running runner shares between its tasks.
pub(crate) struct Runner {
    client: Client,
    args: RunnerArgs,
    runtime: Box<dyn Runtime>,
    work: PathBuf,
    state: Mutex<State>,
    routing: Routing,
    spooling: Spooling,
    /// Apps with a deployment (or a restart) in progress here: reconciliation leaves them
    /// alone.
    busy: Mutex<HashSet<i64>>,
}

/// Runs until SIGTERM or Ctrl-C: reconciles, then claims and runs deployments.
pub async fn run(args: RunnerArgs) -> Result<(), RunnerError> {
    let token = std::fs::read_to_string(&args.token_file).map_err(|source| RunnerError::Token {
        path: args.token_file.clone(),
        source,
    })?;
    let tls = client::tls_config(args.ca_file.as_deref())?;
    let client = Client::new(&args.server, &token, tls)?;
    if args.server.starts_with("http://")
        && !url::Url::parse(&args.server)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| {
                    h == "localhost"
                        || h.parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                })
            })
            .unwrap_or(false)
    {
        tracing::warn!(server = %args.server, "the server is reached in clear text: the runner's token crosses the network unencrypted; use https:// (README, \"Runners on other hosts\")");
    }
    let work = std::path::absolute(&args.work_dir).unwrap_or_else(|_| args.work_dir.clone());
    let work_error = |source| RunnerError::WorkDir {
        path: work.clone(),
        source,
    };
    crate::files::create_private_dir(&work).map_err(work_error)?;
    let _lock = lock_work_dir(&work).map_err(work_error)?;
    // Steps a killed runner left running are killed, and their scratch space removed (their
    // deployments are requeued by the server when the lease lapses).
    if let Ok(entries) = std::fs::read_dir(work.join("builds")) {
        for entry in entries.flatten() {
            kill_orphaned_step(&entry.path().join("group"));
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let routing = Routing::start(
        &work,
        ProxySettings {
            host_bind: args.host_bind,
            apps_domain: args.apps_domain.clone(),
            bind_address: args.bind_address,
        },
    )
    .await
    .map_err(RunnerError::Proxy)?;
    let spooling = Spooling {
        dir: work.join("spool"),
        batch: Duration::from_millis(args.log_batch_ms.max(50)),
    };
    let runner = Arc::new(Runner {
        state: Mutex::new(State::load(&work)),
        runtime: args.runtime(),
        client,
        work,
        routing,
        spooling,
        busy: Mutex::default(),
        args,
    });
    tracing::info!(server = %runner.args.server, work = %runner.work.display(), "runner started");
    logs::send_leftovers(&runner.client, &runner.spooling).await;
    reconcile::pass(&runner).await;
    let wake = Arc::new(tokio::sync::Notify::new());
    let reconciler = tokio::spawn(reconcile::every(runner.clone(), wake.clone()));
    let watcher = tokio::spawn(signals::watch(runner.client.clone(), wake));
    let slots = Arc::new(Semaphore::new(runner.args.concurrency.max(1)));
    let claims = claim_loop(runner.clone(), slots);
    tokio::select! {
        () = claims => {}
        () = crate::shutdown_signal() => {}
    }
    reconciler.abort();
    watcher.abort();
    // Instances keep running (their process groups are their own), and the proxy keeps
    // routing to them; the next start re-adopts them.
    tracing::info!("runner stopped; running apps keep serving until it starts again");
    Ok(())
}

/// Holds an exclusive lock on `<work>/runner.lock` for the process's life: two runners on one
/// work directory would fight over its releases and ports.
fn lock_work_dir(work: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(work.join("runner.lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(
            "another runner is using this work directory (runner.lock is held)",
        )),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

/// A claimed deployment, and its job (the server's types).
type ClaimedDeployment = claim::ClaimClaimDeploymentDeployment;
type Job = claim::ClaimClaimDeploymentJob;

/// Whether the job's app is reached by port (else by host name).
fn by_port(access: &claim::AccessMode) -> bool {
    matches!(access, claim::AccessMode::PORT)
}

async fn claim_loop(runner: Arc<Runner>, slots: Arc<Semaphore>) {
    let idle = Duration::from_millis(runner.args.poll_ms.max(50));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let claim = claim::Variables {
            public_host: runner.args.public_host.clone(),
        };
        match runner.client.run::<Claim>(claim).await {
            Ok(claim::ResponseData {
                claim_deployment:
                    claim::ClaimClaimDeployment {
                        deployment: Some(deployment),
                        job: Some(job),
                    },
            }) => {
                let runner = runner.clone();
                tokio::spawn(async move {
                    deploy::execute(&runner, deployment, job).await;
                    drop(slot);
                });
            }
            Ok(_) => {
                drop(slot);
                tokio::time::sleep(idle).await;
            }
            Err(error) => {
                drop(slot);
                tracing::warn!(%error, "cannot claim a deployment; retrying");
                tokio::time::sleep(idle * 3).await;
            }
        }
    }
}

impl Runner {
    fn app_dir(&self, app: &str) -> PathBuf {
        self.work.join("apps").join(app)
    }

    fn release_dir(&self, app: &str, deployment: i64) -> PathBuf {
        self.app_dir(app)
            .join("releases")
            .join(deployment.to_string())
    }

    fn cache_dir(&self, app: &str) -> PathBuf {
        self.work.join("cache").join(app)
    }

    fn build_dir(&self, deployment: i64) -> PathBuf {
        self.work.join("builds").join(deployment.to_string())
    }

    fn output_file(&self, app: &str, deployment: i64) -> PathBuf {
        self.app_dir(app)
            .join("output")
            .join(format!("{deployment}.log"))
    }

    /// Puts `instance` behind its app's route, records it, and drains and stops the instance
    /// it replaces in the background (after the proxy acknowledged the switch).
    async fn switch(self: &Arc<Self>, app_id: i64, instance: Instance) -> Result<(), String> {
        if let Some(route) = instance.route() {
            self.routing
                .set(route, instance.upstream())
                .await
                .map_err(|why| format!("switch: {why}"))?;
        }
        let previous = {
            let mut state = self.state.lock().expect("state");
            let previous = state.apps.insert(app_id, instance.clone());
            state.save(&self.work);
            previous
        };
        if let Some(previous) = previous {
            let runner = self.clone();
            tokio::spawn(async move {
                // The app moved to another route (its access mode changed): the old one goes.
                if let Some(old_route) = previous.route()
                    && Some(&old_route) != instance.route().as_ref()
                    && let Err(error) = runner.routing.remove(old_route).await
                {
                    tracing::warn!(%error, "cannot remove the app's old route");
                }
                runner
                    .routing
                    .drain(previous.upstream(), runner.args.drain())
                    .await;
                runner
                    .runtime
                    .stop(&previous.handle, runner.args.stop_grace())
                    .await;
            });
        }
        Ok(())
    }
}

/// Whether `name` is a DNS label (lowercase letters, digits, inner hyphens; at most 63).
pub(crate) fn dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn read_procfile(release: &Path) -> Result<Option<procfile::Procfile>, String> {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(release.join("Procfile")) else {
        return Ok(None);
    };
    let mut text = String::new();
    file.take(procfile::MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the Procfile: {e}"))?;
    procfile::parse(&text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::dns_label;

    #[test]
    fn only_dns_labels_become_paths() {
        for ok in ["web", "web-2", "a"] {
            assert!(dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "-web",
            "web-",
            "Web",
            "web.app",
            &"a".repeat(64),
        ] {
            assert!(!dns_label(bad), "{bad:?}");
        }
    }
}
