//! One deployment on this runner, stage by stage: [`Deployment::source`] (a clone, or the
//! earlier release a rollback reuses where it is), [`Deployment::build`],
//! [`Deployment::release_phase`], [`Deployment::start_and_check`] and
//! [`Deployment::switch`]. Each stage returns `Err(Ending)` to stop the deployment; the
//! release directory a deployment made is removed when it does not end up serving (the
//! [`NewRelease`] guard), whatever stage it stops at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::client::Client;
use super::client::operations::{Heartbeat, Report, heartbeat, report};
use super::logs::{self, Delivered, LogSender, Redactor};
use super::runtime::{Handle, Release};
use super::state::Instance;
use super::steps::{StepContext, StepError};
use super::{ClaimedDeployment, Job, Runner, by_port, dns_label, read_procfile, source};

/// How a deployment ended on this runner.
pub enum Ending {
    Success,
    Failed(String),
    Cancelled,
}

/// What the heartbeat reports: the stage reached and the commit.
#[derive(Clone, Default)]
struct Progress {
    stage: Option<heartbeat::DeploymentStage>,
    commit_sha: Option<String>,
    image_tag: Option<String>,
}

/// A release directory this deployment made: removed when dropped, unless it serves.
struct NewRelease {
    dir: PathBuf,
    keep: bool,
}

impl Drop for NewRelease {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a claimed deployment to its end and reports it.
pub async fn execute(runner: &Arc<Runner>, deployment: ClaimedDeployment, job: Job) {
    let (app_id, app_name) = (job.app_database_id, job.app_name.clone());
    runner.busy.lock().expect("busy").insert(app_id);
    tracing::info!(deployment = deployment.database_id, app = %app_name, "deploying");
    // Values of config vars never reach the log.
    let redactor = Redactor::new(job.env.iter().map(|var| var.value.clone()).collect());
    let spooled = logs::spool(
        runner.client.clone(),
        deployment.id.clone(),
        deployment.database_id,
        redactor,
        job.log_sequence,
        &runner.spooling,
    );
    let (log, spooler) = match spooled {
        Ok(spooled) => spooled,
        Err(error) => {
            report(
                &runner.client,
                &deployment.id,
                Ending::Failed(format!("the runner cannot spool the log: {error}")),
                Progress::default(),
            )
            .await;
            runner.busy.lock().expect("busy").remove(&app_id);
            return;
        }
    };
    if job.attempt > 1 {
        log.line(format!(
            "==> attempt {}: attempt {} was interrupted (its runner stopped or lost its lease)",
            job.attempt,
            job.attempt - 1
        ))
        .await;
    }
    let (progress_tx, progress) = watch::channel(Progress::default());
    let (cancel_tx, cancel) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat(
        runner.client.clone(),
        deployment.id.clone(),
        job.lease_expires_at,
        progress,
        cancel_tx,
    ));
    // Scratch space for the deployment: the clone, git's empty HOME, the running step's
    // process group. Removed when the deployment ends, whatever the outcome.
    let build_dir = runner.build_dir(deployment.database_id);
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
            let mut stages = Deployment {
                runner,
                job: &job,
                id: deployment.database_id,
                app_id,
                cache: runner.cache_dir(&job.app_name),
                output: runner.output_file(&job.app_name, deployment.database_id),
                env: job
                    .env
                    .iter()
                    .map(|var| (var.name.clone(), var.value.clone()))
                    .collect(),
                progress: &progress_tx,
                context: &mut context,
            };
            match stages.run().await {
                Ok(()) => Ending::Success,
                Err(ending) => ending,
            }
        }
        Err(error) => Ending::Failed(format!("cannot create {}: {error}", build_dir.display())),
    };
    drop(context);
    let _ = std::fs::remove_dir_all(&build_dir);
    match &ending {
        Ending::Success => log.line("==> deployed").await,
        Ending::Failed(why) => log.line(format!("==> failed: {why}")).await,
        Ending::Cancelled => log.line("==> cancelled").await,
    }
    drop(log);
    // The log is sent before the report (a reader sees every line once it is final); a
    // server out of reach does not hold the report forever: the spool stays for later.
    match tokio::time::timeout(Duration::from_secs(60), spooler).await {
        Ok(Ok(Delivered::All)) => {}
        _ => tracing::warn!(
            deployment = deployment.database_id,
            "not every log line could be sent; they stay spooled for the next start"
        ),
    }
    heartbeat.abort();
    let progress = progress_tx.borrow().clone();
    let status = report(&runner.client, &deployment.id, ending, progress).await;
    runner.busy.lock().expect("busy").remove(&app_id);
    tracing::info!(
        deployment = deployment.database_id,
        status,
        "deployment ended"
    );
}

/// Reports how the deployment ended (retried while the server is out of reach); returns the
/// status reported.
async fn report(
    client: &Client,
    deployment: &str,
    ending: Ending,
    progress: Progress,
) -> &'static str {
    use report::DeploymentOutcome as Outcome;
    let (status, outcome, summary) = match ending {
        Ending::Success => ("SUCCESS", Outcome::SUCCESS, None),
        Ending::Failed(why) => ("FAILED", Outcome::FAILED, Some(why)),
        Ending::Cancelled => ("CANCELLED", Outcome::CANCELLED, None),
    };
    let variables = report::Variables {
        id: deployment.to_owned(),
        status: outcome,
        error_summary: summary.map(|s| s.chars().take(3900).collect::<String>()),
        commit_sha: progress.commit_sha,
        image_tag: progress.image_tag,
    };
    for attempt in 0..5u32 {
        match client.run::<Report>(variables.clone()).await {
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
    status
}

/// Where a deployment's release comes from.
struct Source {
    /// The release directory.
    dir: PathBuf,
    /// Made by this deployment (removed unless it serves); `None`: an earlier release,
    /// reused where it is (a rollback).
    new: Option<NewRelease>,
    /// The earlier deployment's image, when it is reused.
    image: Option<String>,
}

struct Deployment<'a, 'ctx> {
    runner: &'a Arc<Runner>,
    job: &'a Job,
    id: i64,
    app_id: i64,
    env: Vec<(String, String)>,
    /// The app's build caches.
    cache: PathBuf,
    /// The new instance's output file.
    output: PathBuf,
    progress: &'a watch::Sender<Progress>,
    context: &'a mut StepContext<'ctx>,
}

impl Deployment<'_, '_> {
    fn log(&self) -> &LogSender {
        self.context.log
    }

    fn app(&self) -> &str {
        &self.job.app_name
    }

    async fn stage(&self, stage: heartbeat::DeploymentStage, marker: &str) {
        self.progress.send_modify(|p| p.stage = Some(stage));
        self.log().stage(marker).await;
    }

    /// A step's failure as the deployment's ending.
    fn failed(what: &str, error: StepError) -> Ending {
        match error {
            StepError::Cancelled => Ending::Cancelled,
            other => Ending::Failed(format!("{what}: {other}")),
        }
    }

    async fn run(&mut self) -> Result<(), Ending> {
        enough_disk(&self.runner.work, self.runner.args.min_free_mib).map_err(Ending::Failed)?;
        let mut source = self.source().await?;
        let procfile = read_procfile(&source.dir).map_err(Ending::Failed)?;
        let image = match source.image.take() {
            Some(image) => Some(image),
            None if source.new.is_none() => None,
            None => {
                let image = self
                    .build(
                        &source.dir,
                        procfile.as_ref().and_then(|p| p.build.as_deref()),
                    )
                    .await?;
                if let Some(command) = procfile.as_ref().and_then(|p| p.release.as_deref()) {
                    self.release_phase(&source.dir, command, image.as_deref())
                        .await?;
                }
                image
            }
        };
        if let Some(image) = &image {
            self.progress
                .send_modify(|p| p.image_tag = Some(image.clone()));
        }
        if *self.context.cancel.borrow() {
            return Err(Ending::Cancelled);
        }
        let web = procfile
            .and_then(|p| p.web)
            .or_else(|| self.runner.runtime.default_web(&source.dir));
        let (handle, upstream) = self
            .start_and_check(&source.dir, web.as_deref(), image.as_deref())
            .await?;
        self.switch(&source.dir, handle, upstream, image).await?;
        if let Some(new) = &mut source.new {
            new.keep = true;
        }
        self.runner.prune_releases(self.app(), &source.dir).await;
        Ok(())
    }

    /// The release: an earlier one a rollback reuses (when this runner still has it, and
    /// its image), else a fresh clone of the branch (or of the commit a rollback recorded).
    async fn source(&mut self) -> Result<Source, Ending> {
        let runner = self.runner;
        if let Some(from) = &self.job.rollback_from {
            let dir = runner.release_dir(self.app(), from.deployment_database_id);
            let image = Some(from.image_tag.clone()).filter(|tag| !tag.is_empty());
            let image_kept = match &image {
                Some(image) => runner.runtime.has_image(image).await,
                None => true,
            };
            if dir.is_dir() && image_kept {
                self.log()
                    .line(format!(
                        "==> rollback: running the release of deployment {} again, where it was \
                         built (no rebuild)",
                        from.deployment_database_id
                    ))
                    .await;
                if let Ok(sha) = std::fs::read_to_string(dir.join(".keystone-commit")) {
                    self.progress
                        .send_modify(|p| p.commit_sha = Some(sha.trim().to_owned()));
                }
                return Ok(Source {
                    dir,
                    new: None,
                    image,
                });
            }
        }
        self.stage(heartbeat::DeploymentStage::CLONE, "clone").await;
        // The commit the server names (a push's), or the one a rollback whose release is
        // gone recorded; else the branch's head.
        let commit = self.job.commit_sha.clone().or_else(|| {
            self.job
                .rollback_from
                .as_ref()
                .and_then(|from| from.commit_sha.clone())
        });
        if let (Some(from), Some(commit)) = (&self.job.rollback_from, &commit) {
            self.log()
                .line(format!(
                    "==> rollback: the release of deployment {} is gone; rebuilding commit {commit}",
                    from.deployment_database_id
                ))
                .await;
        }
        let build_dir = runner.build_dir(self.id);
        let checkout = build_dir.join("source");
        let sha = source::clone(
            &self.job.repository_url,
            &self.job.branch,
            commit.as_deref(),
            &checkout,
            &build_dir.join("home"),
            Duration::from_secs(runner.args.clone_timeout_secs),
            self.context,
        )
        .await
        .map_err(|error| Self::failed("clone", error))?;
        self.log().line(format!("commit {sha}")).await;
        self.progress
            .send_modify(|p| p.commit_sha = Some(sha.clone()));
        let _ = std::fs::remove_dir_all(checkout.join(".git"));
        let _ = std::fs::write(checkout.join(".keystone-commit"), &sha);
        // The release is built where it will run, and never moved again.
        let dir = runner.release_dir(self.app(), self.id);
        let moved = std::fs::create_dir_all(dir.parent().expect("a parent")).and_then(|()| {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&checkout, &dir)
        });
        let new = NewRelease {
            dir: dir.clone(),
            keep: false,
        };
        moved.map_err(|e| Ending::Failed(format!("cannot create the release directory: {e}")))?;
        Ok(Source {
            dir,
            new: Some(new),
            image: None,
        })
    }

    /// Builds the release; returns the image built, if any.
    async fn build(&mut self, dir: &Path, build: Option<&str>) -> Result<Option<String>, Ending> {
        self.stage(heartbeat::DeploymentStage::BUILD, "build").await;
        let commit = self
            .progress
            .borrow()
            .commit_sha
            .clone()
            .unwrap_or_default();
        let release = Release {
            app: &self.job.app_name,
            deployment: self.id,
            dir,
            env: &self.env,
            cache: &self.cache,
            output: &self.output,
        };
        let image = self
            .runner
            .runtime
            .build(
                release,
                &commit,
                build,
                Duration::from_secs(self.runner.args.build_timeout_secs),
                self.context,
            )
            .await
            .map_err(|error| Self::failed("build", error))?;
        if let Some(image) = &image {
            self.log().line(format!("image {image}")).await;
        }
        Ok(image)
    }

    /// The Procfile's `release:`, before traffic moves.
    async fn release_phase(
        &mut self,
        dir: &Path,
        command: &str,
        image: Option<&str>,
    ) -> Result<(), Ending> {
        self.stage(heartbeat::DeploymentStage::RELEASE, "release")
            .await;
        let release = Release {
            app: &self.job.app_name,
            deployment: self.id,
            dir,
            env: &self.env,
            cache: &self.cache,
            output: &self.output,
        };
        self.runner
            .runtime
            .release(
                command,
                release,
                image,
                Duration::from_secs(self.runner.args.release_timeout_secs),
                self.context,
            )
            .await
            .map_err(|error| Self::failed("release", error))
    }

    /// Starts an instance and waits until it is healthy; one that is not is stopped, its
    /// last output lines go to the log.
    async fn start_and_check(
        &mut self,
        dir: &Path,
        web: Option<&str>,
        image: Option<&str>,
    ) -> Result<(Handle, SocketAddr), Ending> {
        self.stage(heartbeat::DeploymentStage::START, "start").await;
        let runtime = &self.runner.runtime;
        if web.is_none() && !runtime.serves_without_web() {
            return Err(Ending::Failed(
                "start: nothing serves this release: add a Procfile with a `web:` process \
                 (Keystone found no stack that gives one)"
                    .to_owned(),
            ));
        }
        let release = Release {
            app: &self.job.app_name,
            deployment: self.id,
            dir,
            env: &self.env,
            cache: &self.cache,
            output: &self.output,
        };
        let (handle, upstream) = runtime
            .start(release, web, image)
            .await
            .map_err(|why| Ending::Failed(format!("start: {why}")))?;
        self.stage(heartbeat::DeploymentStage::HEALTH_CHECK, "health check")
            .await;
        let check = self.runner.args.health(Some(&self.job.health_check_path));
        let healthy = tokio::select! {
            result = super::health::wait_healthy(&check, upstream, runtime.as_ref(), &handle) => result,
            () = wait_for(&mut self.context.cancel) => Err(String::new()),
        };
        if let Err(why) = healthy {
            let output = runtime.last_output(&handle, release.output, 100).await;
            runtime.stop(&handle, self.runner.args.stop_grace()).await;
            self.log()
                .line("==> the new instance's last output lines:")
                .await;
            for line in output {
                self.log().line(line).await;
            }
            if *self.context.cancel.borrow() {
                return Err(Ending::Cancelled);
            }
            return Err(Ending::Failed(why));
        }
        Ok((handle, upstream))
    }

    /// Moves the app's traffic to the new instance.
    async fn switch(
        &mut self,
        dir: &Path,
        handle: Handle,
        upstream: SocketAddr,
        image: Option<String>,
    ) -> Result<(), Ending> {
        self.stage(heartbeat::DeploymentStage::SWITCH, "switch")
            .await;
        let job = self.job;
        let instance = Instance {
            app_name: job.app_name.clone(),
            deployment: self.id,
            release: dir.to_owned(),
            handle: handle.clone(),
            image,
            upstream: Some(upstream),
            private_port: upstream.port(),
            public_port: job
                .port
                .and_then(|port| u16::try_from(port).ok())
                .filter(|_| by_port(&job.access_mode)),
            host_routed: !by_port(&job.access_mode),
        };
        if let Err(why) = self.runner.switch(self.app_id, instance).await {
            self.runner
                .runtime
                .stop(&handle, self.runner.args.stop_grace())
                .await;
            return Err(Ending::Failed(why));
        }
        let serving = match job.port.filter(|_| by_port(&job.access_mode)) {
            Some(port) => format!("serving on port {port}"),
            None => format!("serving as {}", job.app_name),
        };
        self.log().line(serving).await;
        Ok(())
    }
}

impl Runner {
    /// Keeps the newest `keep_releases` releases of `app`, and always the one `serving` (a
    /// rollback serves an older one where it is); and the images of those deployments.
    async fn prune_releases(&self, app: &str, serving: &Path) {
        let dir = self.app_dir(app).join("releases");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut ids: Vec<i64> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let keep = self.args.keep_releases.max(1);
        let mut kept = Vec::new();
        for (rank, id) in ids.into_iter().enumerate() {
            let release = dir.join(id.to_string());
            if rank < keep || release == serving {
                kept.push(id);
            } else {
                let _ = std::fs::remove_dir_all(&release);
                let _ = std::fs::remove_file(self.output_file(app, id));
            }
        }
        self.runtime.prune_images(app, &kept).await;
    }
}

/// Resolves when `cancel` turns true.
async fn wait_for(cancel: &mut watch::Receiver<bool>) {
    while !*cancel.borrow_and_update() {
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `Err` when the work directory's file system has less than `min_mib` free.
fn enough_disk(dir: &Path, min_mib: u64) -> Result<(), String> {
    let Ok(stats) = rustix::fs::statvfs(dir) else {
        return Ok(());
    };
    let free_mib = stats.f_bavail.saturating_mul(stats.f_frsize) >> 20;
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
    let lease = (lease_expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::from_secs(30));
    let every = (lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut progress = progress;
    loop {
        let current = progress.borrow_and_update().clone();
        let variables = heartbeat::Variables {
            id: deployment.clone(),
            stage: current.stage,
            commit_sha: current.commit_sha,
        };
        match client.run::<Heartbeat>(variables).await {
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
