//! `keystone runner`: executes deployments. A client of the GraphQL API like any other (a
//! `runner` token; it never opens the database and uses nothing of the server's modules):
//!
//! 1. **Claim** the oldest queued deployment it may run, heartbeat it (reporting its stage
//!    and commit; a heartbeat that says "cancel" stops the step in progress), and stream its
//!    log ([`logs`]).
//! 2. **Source**: a hardened shallow clone ([`source`]); the checkout becomes an immutable
//!    release directory per deployment (`<work>/apps/<app>/releases/<deployment>`), without
//!    `.git`. A rollback copies the earlier release instead of rebuilding it.
//! 3. **Build and release** with the repository's `Procfile` ([`procfile`]): `build:` and
//!    `release:` run in the release directory, each with a timeout, in their own process group
//!    ([`process`]); a failing release phase leaves traffic untouched.
//! 4. **Start** `web:` on a free private port (`PORT`), in its own process group (it outlives
//!    a runner restart), **health-check** it from the host ([`health`]), then **switch**: the
//!    app's public port is owned by a forwarder ([`endpoint`]) whose upstream is swapped
//!    atomically; the old instance is drained, then stopped (SIGTERM, SIGKILL after a grace).
//!    A failed check leaves the old instance serving, and puts the new one's last output
//!    lines into the log.
//! 5. **Reconcile** what runs with what the server says should ([`reconcile`]): at start
//!    (re-adopting instances that survived a restart, restarting releases after a reboot),
//!    at every signal from the server ([`signals`]) and periodically: stopped apps are
//!    stopped, deleted apps removed with their releases.
//!
//! What it remembers lives in `<work>/state.json` ([`state`]).

pub mod client;
mod endpoint;
mod health;
mod host_router;
mod logs;
mod process;
mod procfile;
mod reconcile;
mod runtime;
mod signals;
mod source;
mod state;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::process::Command;
use tokio::sync::{Semaphore, watch};

use self::client::{Client, ClientError, operations};
use self::endpoint::{Endpoint, Upstream, free_private_port};
use self::health::HealthCheck;
use self::host_router::HostRouter;
use self::process::{StepContext, StepError, kill_orphaned_step};
use self::runtime::{Docker, Handle, Release, Runtime};
use self::state::{Instance, State};

/// `keystone runner` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct RunnerArgs {
    /// The Keystone server's base URL.
    #[arg(long, env = "KEYSTONE_SERVER", default_value = "http://127.0.0.1:8000")]
    pub server: String,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    Process,
    Docker,
}

impl RunnerArgs {
    fn runtime(&self) -> Runtime {
        match self.runtime {
            RuntimeKind::Process => Runtime::Process,
            RuntimeKind::Docker => Runtime::Docker(Docker {
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
}

/// What the running runner shares between its tasks.
pub(crate) struct Runner {
    client: Client,
    args: RunnerArgs,
    runtime: Runtime,
    work: PathBuf,
    state: Mutex<State>,
    endpoints: Mutex<std::collections::HashMap<i64, Endpoint>>,
    /// The listener of `HOST` apps (none when `--host-bind` could not be bound).
    host_router: Option<HostRouter>,
    /// Apps with a deployment in progress here (reconciliation leaves them alone).
    busy: Mutex<HashSet<i64>>,
}

/// Runs until SIGTERM or Ctrl-C: reconciles, then claims and runs deployments.
pub async fn run(args: RunnerArgs) -> Result<(), RunnerError> {
    let token = std::fs::read_to_string(&args.token_file).map_err(|source| RunnerError::Token {
        path: args.token_file.clone(),
        source,
    })?;
    let client = Client::new(&args.server, &token)?;
    let work = std::path::absolute(&args.work_dir).unwrap_or_else(|_| args.work_dir.clone());
    let work_error = |source| RunnerError::WorkDir {
        path: work.clone(),
        source,
    };
    create_private_dir(&work).map_err(work_error)?;
    let _lock = lock_work_dir(&work).map_err(work_error)?;
    // Steps a killed runner left running are killed, and their scratch space removed (their
    // deployments are requeued by the server when the lease lapses).
    if let Ok(entries) = std::fs::read_dir(work.join("builds")) {
        for entry in entries.flatten() {
            kill_orphaned_step(&entry.path().join("group"));
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let host_router = match HostRouter::open(args.host_bind, &args.apps_domain).await {
        Ok(router) => {
            tracing::info!(address = %router.address, domain = %args.apps_domain, "serving HOST apps");
            Some(router)
        }
        Err(error) => {
            tracing::warn!(bind = %args.host_bind, %error, "cannot serve HOST apps (--host-bind); their deployments will fail");
            None
        }
    };
    let runner = Arc::new(Runner {
        host_router,
        state: Mutex::new(State::load(&work)),
        runtime: args.runtime(),
        client,
        work,
        endpoints: Mutex::default(),
        busy: Mutex::default(),
        args,
    });
    tracing::info!(server = %runner.args.server, work = %runner.work.display(), "runner started");
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
    // Instances keep running (their process groups are their own); the next start re-adopts
    // them.
    tracing::info!("runner stopped; running apps keep serving until it starts again");
    Ok(())
}

/// Holds an exclusive lock on `<work>/runner.lock` for the process's life: two runners on one
/// work directory would fight over its releases and ports.
fn lock_work_dir(work: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(work.join("runner.lock"))?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::other(
            "another runner is using this work directory (runner.lock is held)",
        ));
    }
    Ok(file)
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimData {
    claim_deployment: Claimed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claimed {
    deployment: Option<ClaimedDeployment>,
    job: Option<Job>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimedDeployment {
    id: String,
    database_id: i64,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Job {
    repository_url: String,
    branch: String,
    app_name: String,
    app_database_id: i64,
    access_mode: String,
    port: Option<u16>,
    log_sequence: i64,
    #[serde(default)]
    health_check_path: Option<String>,
    lease_expires_at: chrono::DateTime<chrono::Utc>,
    rollback_from: Option<RollbackFrom>,
    #[serde(default)]
    env: Vec<EnvVar>,
}

/// A config var, as the server hands it to the runner.
#[derive(Clone, Deserialize)]
pub(crate) struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RollbackFrom {
    deployment_database_id: i64,
    image_tag: String,
    commit_sha: Option<String>,
}

async fn claim_loop(runner: Arc<Runner>, slots: Arc<Semaphore>) {
    let idle = Duration::from_millis(runner.args.poll_ms.max(50));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let claim = json!({ "publicHost": runner.args.public_host });
        match runner
            .client
            .call::<ClaimData>(operations::CLAIM, claim)
            .await
        {
            Ok(ClaimData {
                claim_deployment:
                    Claimed {
                        deployment: Some(deployment),
                        job: Some(job),
                    },
            }) => {
                let runner = runner.clone();
                tokio::spawn(async move {
                    runner.execute(deployment, job).await;
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

/// How a deployment ended on this runner.
enum Ending {
    Success,
    Failed(String),
    Cancelled,
}

/// What the heartbeat reports: the stage reached and the commit.
#[derive(Clone, Default)]
struct Progress {
    stage: Option<&'static str>,
    commit_sha: Option<String>,
    image_tag: Option<String>,
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

    fn build_dir(&self, deployment: i64) -> PathBuf {
        self.work.join("builds").join(deployment.to_string())
    }

    fn output_file(&self, app: &str, deployment: i64) -> PathBuf {
        self.app_dir(app)
            .join("output")
            .join(format!("{deployment}.log"))
    }

    async fn execute(self: &Arc<Self>, deployment: ClaimedDeployment, job: Job) {
        let (app_id, app_name) = (job.app_database_id, job.app_name.clone());
        self.busy.lock().expect("busy").insert(app_id);
        tracing::info!(deployment = deployment.database_id, app = %app_name, "deploying");
        // Values of config vars never reach the log.
        let secrets = job.env.iter().map(|var| var.value.clone()).collect();
        let (log, spooler) = logs::spool(
            self.client.clone(),
            deployment.id.clone(),
            secrets,
            job.log_sequence,
        );
        let (progress_tx, progress) = watch::channel(Progress::default());
        let (cancel_tx, cancel) = watch::channel(false);
        let heartbeat = tokio::spawn(heartbeat(
            self.client.clone(),
            deployment.id.clone(),
            job.lease_expires_at,
            progress,
            cancel_tx,
        ));
        // Scratch space for the deployment: the clone, git's empty HOME, the running step's
        // process group. Removed when the deployment ends, whatever the outcome.
        let build_dir = self.build_dir(deployment.database_id);
        let _ = std::fs::remove_dir_all(&build_dir);
        let mut context = StepContext {
            log: &log,
            cancel,
            group_file: build_dir.join("group"),
        };
        let ending = match std::fs::create_dir_all(&build_dir) {
            // App names become directories, image tags and container names here: only DNS
            // labels (the API enforces it; a row adopted from Django may hold anything).
            Ok(()) if !dns_label(&job.app_name) => Ending::Failed(format!(
                "the app's name {:?} is not a DNS label; rename it (updateApp) to deploy it",
                job.app_name
            )),
            Ok(()) => {
                self.deploy(&deployment, &job, app_id, &progress_tx, &mut context)
                    .await
            }
            Err(error) => Ending::Failed(format!("cannot create {}: {error}", build_dir.display())),
        };
        drop(context);
        let _ = std::fs::remove_dir_all(&build_dir);
        let (commit_sha, image_tag) = {
            let progress = progress_tx.borrow();
            (progress.commit_sha.clone(), progress.image_tag.clone())
        };
        match &ending {
            Ending::Success => log.line("==> deployed").await,
            Ending::Failed(why) => log.line(format!("==> failed: {why}")).await,
            Ending::Cancelled => log.line("==> cancelled").await,
        }
        drop(log);
        let _ = spooler.await;
        heartbeat.abort();
        let (status, summary) = match ending {
            Ending::Success => ("SUCCESS", None),
            Ending::Failed(why) => ("FAILED", Some(why)),
            Ending::Cancelled => ("CANCELLED", None),
        };
        let report = json!({
            "id": deployment.id,
            "status": status,
            "errorSummary": summary.map(|s| s.chars().take(3900).collect::<String>()),
            "commitSha": commit_sha,
            "imageTag": image_tag,
        });
        for attempt in 0..5u32 {
            match self
                .client
                .call::<serde_json::Value>(operations::REPORT, report.clone())
                .await
            {
                Ok(_) => break,
                Err(error) if error.code().is_some() => {
                    tracing::warn!(%error, "the server refused the report");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "cannot report; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
                }
            }
        }
        self.busy.lock().expect("busy").remove(&app_id);
        tracing::info!(
            deployment = deployment.database_id,
            status,
            "deployment ended"
        );
    }

    async fn deploy(
        self: &Arc<Self>,
        deployment: &ClaimedDeployment,
        job: &Job,
        app_id: i64,
        progress: &watch::Sender<Progress>,
        context: &mut StepContext<'_>,
    ) -> Ending {
        let log = context.log;
        let runtime = &self.runtime;
        let id = deployment.database_id;
        let env: Vec<(String, String)> = job
            .env
            .iter()
            .map(|var| (var.name.clone(), var.value.clone()))
            .collect();
        let app = job.app_name.as_str();
        let stage = |name: &'static str| {
            progress.send_modify(|p| p.stage = Some(name));
        };
        let step_failed = |what: &str, error: StepError| match error {
            StepError::Cancelled => Ending::Cancelled,
            other => Ending::Failed(format!("{what}: {other}")),
        };
        let release = self.release_dir(app, id);
        // Cleans up what this deployment made when it does not serve.
        let discard = || {
            let _ = std::fs::remove_dir_all(&release);
        };
        if let Err(why) = enough_disk(&self.work, self.args.min_free_mib) {
            return Ending::Failed(why);
        }
        // Source: a rollback reuses the earlier release (and image) when this runner still has
        // them; anything else is cloned.
        let earlier = match &job.rollback_from {
            Some(from) => {
                let dir = self.release_dir(app, from.deployment_database_id);
                let image_kept = match runtime {
                    Runtime::Process => true,
                    Runtime::Docker(_) => runtime.has_image(&from.image_tag).await,
                };
                (dir.is_dir() && image_kept).then_some((dir, from))
            }
            None => None,
        };
        let mut image = None;
        let reused = earlier.is_some();
        if let Some((dir, from)) = earlier {
            log.line(format!(
                "==> rollback: reusing the release of deployment {} (no rebuild)",
                from.deployment_database_id
            ))
            .await;
            if let Ok(sha) = std::fs::read_to_string(dir.join(".keystone-commit")) {
                progress.send_modify(|p| p.commit_sha = Some(sha.trim().to_owned()));
            }
            if let Err(error) = copy_release(&dir, &release).await {
                return Ending::Failed(format!("rollback: cannot copy the release: {error}"));
            }
            image = Some(from.image_tag.clone()).filter(|tag| !tag.is_empty());
        } else {
            stage("CLONE");
            log.stage("clone").await;
            // A rollback whose release is gone rebuilds the commit it recorded.
            let commit = job
                .rollback_from
                .as_ref()
                .and_then(|from| from.commit_sha.as_deref());
            if let (Some(from), Some(commit)) = (&job.rollback_from, commit) {
                log.line(format!(
                    "==> rollback: the release of deployment {} is gone; rebuilding commit {commit}",
                    from.deployment_database_id
                ))
                .await;
            }
            let build_dir = self.build_dir(id);
            let checkout = build_dir.join("source");
            let cloned = source::clone(
                &job.repository_url,
                &job.branch,
                commit,
                &checkout,
                &build_dir.join("home"),
                Duration::from_secs(self.args.clone_timeout_secs),
                context,
            )
            .await;
            let sha = match cloned {
                Ok(sha) => sha,
                Err(error) => return step_failed("clone", error),
            };
            log.line(format!("commit {sha}")).await;
            progress.send_modify(|p| p.commit_sha = Some(sha.clone()));
            let _ = std::fs::remove_dir_all(checkout.join(".git"));
            let _ = std::fs::write(checkout.join(".keystone-commit"), &sha);
            let moved = std::fs::create_dir_all(release.parent().expect("parent")).and_then(|()| {
                let _ = std::fs::remove_dir_all(&release);
                std::fs::rename(&checkout, &release)
            });
            if let Err(error) = moved {
                return Ending::Failed(format!("cannot create the release directory: {error}"));
            }
        }
        // The Procfile: required by the process runtime; optional with Docker (the image's
        // command serves; `release:` still runs before traffic moves).
        let procfile = match (read_procfile(&release), runtime) {
            (Ok(procfile), _) => Some(procfile),
            (Err(_), Runtime::Docker(_)) if !release.join("Procfile").exists() => None,
            (Err(why), _) => {
                discard();
                return Ending::Failed(why);
            }
        };
        if !reused {
            stage("BUILD");
            log.stage("build").await;
            let commit = progress.borrow().commit_sha.clone().unwrap_or_default();
            let built = runtime
                .build(
                    Release {
                        app,
                        deployment: id,
                        dir: &release,
                        env: &env,
                    },
                    &commit,
                    procfile.as_ref().and_then(|p| p.build.as_deref()),
                    Duration::from_secs(self.args.build_timeout_secs),
                    context,
                )
                .await;
            match built {
                Ok(built) => image = built,
                Err(error) => {
                    discard();
                    return step_failed("build", error);
                }
            }
            if let Some(image) = &image {
                progress.send_modify(|p| p.image_tag = Some(image.clone()));
                log.line(format!("image {image}")).await;
            }
            if let Some(command) = procfile.as_ref().and_then(|p| p.release.as_deref()) {
                stage("RELEASE");
                log.stage("release").await;
                let outcome = runtime
                    .release(
                        command,
                        Release {
                            app,
                            deployment: id,
                            dir: &release,
                            env: &env,
                        },
                        image.as_deref(),
                        Duration::from_secs(self.args.release_timeout_secs),
                        context,
                    )
                    .await;
                if let Err(error) = outcome {
                    discard();
                    return step_failed("release", error);
                }
            }
        } else if let Some(image) = &image {
            progress.send_modify(|p| p.image_tag = Some(image.clone()));
        }
        if *context.cancel.borrow() {
            discard();
            return Ending::Cancelled;
        }
        stage("START");
        log.stage("start").await;
        let web = procfile.as_ref().map(|p| p.web.as_str());
        let (handle, port) = match self
            .start_instance(
                Release {
                    app,
                    deployment: id,
                    dir: &release,
                    env: &env,
                },
                web,
                image.as_deref(),
            )
            .await
        {
            Ok(started) => started,
            Err(why) => {
                discard();
                return Ending::Failed(format!("start: {why}"));
            }
        };
        stage("HEALTH_CHECK");
        log.stage("health check").await;
        let check = self.args.health(job.health_check_path.as_deref());
        let healthy = tokio::select! {
            result = health::wait_healthy(&check, port, runtime, &handle) => result,
            () = wait_for(&mut context.cancel) => Err(String::new()),
        };
        if let Err(why) = healthy {
            let output = runtime
                .last_output(&handle, &self.output_file(app, id), 100)
                .await;
            runtime.stop(&handle, self.stop_grace()).await;
            log.line("==> the new instance's last output lines:").await;
            for line in output {
                log.line(line).await;
            }
            discard();
            if *context.cancel.borrow() {
                return Ending::Cancelled;
            }
            return Ending::Failed(why);
        }
        stage("SWITCH");
        log.stage("switch").await;
        let instance = Instance {
            app_name: app.to_owned(),
            deployment: id,
            release: release.clone(),
            handle: handle.clone(),
            image: image.clone(),
            private_port: port,
            public_port: job.port.filter(|_| job.access_mode == "PORT"),
            host_routed: job.access_mode == "HOST",
        };
        if let Err(why) = self.switch(app_id, instance).await {
            runtime.stop(&handle, self.stop_grace()).await;
            discard();
            return Ending::Failed(why);
        }
        log.line(format!(
            "serving on {}",
            job.port.map_or_else(
                || format!("private port {port}"),
                |public| format!("port {public}")
            )
        ))
        .await;
        self.prune_releases(app, id).await;
        Ending::Success
    }

    fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.args.stop_grace_secs)
    }

    /// Starts an instance of `release` on a free private port: (handle, port).
    async fn start_instance(
        &self,
        release: Release<'_>,
        web: Option<&str>,
        image: Option<&str>,
    ) -> Result<(Handle, u16), String> {
        let port = free_private_port().map_err(|e| format!("no free port: {e}"))?;
        let output = self.output_file(release.app, release.deployment);
        let handle = self
            .runtime
            .start(release, web, image, port, &output)
            .await?;
        Ok((handle, port))
    }

    /// Puts `instance` behind the app's endpoint (opening it if needed), records it, and
    /// drains and stops the instance it replaces in the background.
    async fn switch(self: &Arc<Self>, app_id: i64, instance: Instance) -> Result<(), String> {
        let upstream = Upstream::new(instance.private_port);
        let replaced_upstream = match instance.public_port {
            None if instance.host_routed => match &self.host_router {
                Some(router) => router.switch(&instance.app_name, upstream),
                None => {
                    return Err(format!(
                        "switch: HOST apps are not served: --host-bind {} could not be bound",
                        self.args.host_bind
                    ));
                }
            },
            None => None,
            Some(port) => {
                let mut endpoints = self.endpoints.lock().expect("endpoints");
                match endpoints.get(&app_id) {
                    Some(endpoint) => Some(endpoint.switch(upstream)),
                    None => {
                        endpoints.insert(app_id, self.open_endpoint(port, upstream)?);
                        None
                    }
                }
            }
        };
        let previous = {
            let mut state = self.state.lock().expect("state");
            let previous = state.apps.insert(app_id, instance);
            state.save(&self.work);
            previous
        };
        if let Some(previous) = previous {
            let runner = self.clone();
            tokio::spawn(async move {
                if let Some(upstream) = replaced_upstream {
                    upstream
                        .drained(Duration::from_secs(runner.args.drain_secs))
                        .await;
                }
                runner
                    .runtime
                    .stop(&previous.handle, runner.stop_grace())
                    .await;
            });
        }
        Ok(())
    }

    fn open_endpoint(&self, port: u16, upstream: Upstream) -> Result<Endpoint, String> {
        let bind = self.args.bind_address;
        // Bound synchronously here so that a taken port fails this deployment clearly.
        let listener = std::net::TcpListener::bind((bind, port))
            .map_err(|e| format!("switch: cannot listen on the app's port {bind}:{port}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("switch: {e}"))?;
        Endpoint::from_listener(listener, upstream).map_err(|e| format!("switch: {e}"))
    }

    /// Keeps the newest `keep_releases` releases of `app` (and always `current`).
    /// Keeps the newest `keep_releases` releases of `app` (always `current`), and the images
    /// of those deployments (an image a container still runs is never removed).
    async fn prune_releases(&self, app: &str, current: i64) {
        let dir = self.app_dir(app).join("releases");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut ids: Vec<i64> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let keep = self.args.keep_releases.max(1);
        let mut kept = vec![current];
        for (rank, id) in ids.into_iter().enumerate() {
            if rank < keep || id == current {
                kept.push(id);
            } else {
                let _ = std::fs::remove_dir_all(dir.join(id.to_string()));
                let _ = std::fs::remove_file(self.output_file(app, id));
            }
        }
        self.runtime.prune_images(app, &kept).await;
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

/// Resolves when `cancel` turns true.
async fn wait_for(cancel: &mut watch::Receiver<bool>) {
    while !*cancel.borrow_and_update() {
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn read_procfile(release: &Path) -> Result<procfile::Procfile, String> {
    use std::io::Read;
    let file = std::fs::File::open(release.join("Procfile"))
        .map_err(|_| "the repository has no Procfile (it must name a `web:` process)".to_owned())?;
    let mut text = String::new();
    file.take(procfile::MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the Procfile: {e}"))?;
    procfile::parse(&text)
}

/// `cp -a` of a release (a rollback's copy; releases are never changed in place).
async fn copy_release(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("cp -a {status}")))
    }
}

/// `Err` when the work directory's file system has less than `min_mib` free.
fn enough_disk(dir: &Path, min_mib: u64) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Ok(());
    }
    let free_mib = (stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64) >> 20;
    if free_mib < min_mib {
        return Err(format!(
            "not enough disk space: {free_mib} MiB free in {}, at least {min_mib} MiB needed (KEYSTONE_MIN_FREE_MIB)",
            dir.display()
        ));
    }
    Ok(())
}

/// Renews the lease at a third of its length, reporting progress; turns `cancel` on when the
/// server asks for it or the lease is lost.
async fn heartbeat(
    client: Client,
    deployment: String,
    lease_expires_at: chrono::DateTime<chrono::Utc>,
    progress: watch::Receiver<Progress>,
    cancel: watch::Sender<bool>,
) {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        heartbeat_deployment: Beat,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Beat {
        cancel_requested: bool,
    }
    let lease = (lease_expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::from_secs(30));
    let every = (lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut progress = progress;
    loop {
        let current = progress.borrow_and_update().clone();
        match client
            .call::<Data>(
                operations::HEARTBEAT,
                json!({ "id": deployment, "stage": current.stage, "commitSha": current.commit_sha }),
            )
            .await
        {
            Ok(data) => {
                if data.heartbeat_deployment.cancel_requested {
                    let _ = cancel.send(true);
                }
            }
            Err(error) if error.code() == Some("CONFLICT") => {
                tracing::warn!(%error, "lost the lease on the deployment; stopping it");
                let _ = cancel.send(true);
                return;
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed; retrying"),
        }
        // Beat again at the interval, or as soon as the stage changes.
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            changed = progress.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(every).await;
                }
            }
        }
    }
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
