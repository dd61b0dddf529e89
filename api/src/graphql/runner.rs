//! The runner protocol (`runner` tokens; admins may call it too): the mutations
//! `claimDeployment`, `heartbeatDeployment`, `reportDeployment`, `appendDeploymentLog`, and
//! the query `runnerApps` (what the calling runner should be running).
//! The rules are in [`crate::domain::runs`].

use async_graphql::{Context, Enum, ID, InputObject, Object, ResultExt, SimpleObject};
use chrono::{DateTime, Utc};

use super::app::{AccessMode, App, AppStatus};
use super::auth::{Require, audited, audited_failures, principal};
use super::deployment::{Deployment, DeploymentStage};
use super::ids::{NodeType, decode_as};
use super::{ApiContext, api};
use crate::domain::access::Capability;
use crate::domain::events::Event;
use crate::domain::runs::{self, Outcome};

/// Everything a runner needs to build and start a claimed deployment.
#[derive(SimpleObject)]
pub struct RunnerJob {
    /// Where to clone from.
    repository_url: String,
    /// The branch to build.
    branch: String,
    /// The commit to build (check out exactly this one); null: the branch's head.
    commit_sha: Option<String>,
    /// The app's name (also its DNS label for `HOST` apps).
    app_name: String,
    /// The app's primary key (what `runnerApps` lists it by).
    app_database_id: i64,
    /// How the app is reached: publish on `port`, or behind its host name.
    access_mode: AccessMode,
    /// The host port to publish on, for `PORT` apps.
    port: Option<i32>,
    /// The server's log file for this deployment (append through `appendDeploymentLog`).
    logs_path: String,
    /// 1 on the first claim, more after lapsed leases.
    attempt: i32,
    /// The number of the deployment's last log chunk applied: number the next one after it.
    log_sequence: i64,
    /// What the health check requests before traffic moves (empty: no HTTP check).
    health_check_path: String,
    /// Heartbeat before this, or the deployment is requeued.
    lease_expires_at: DateTime<Utc>,
    /// For a rollback: the earlier deployment whose release (or image) to reuse; rebuild its
    /// `commitSha` when the runner no longer has it.
    rollback_from: Option<RollbackSource>,
    /// The app's config vars, with their values (only runners receive them): set them for
    /// the build, release and web processes, and keep them out of logs.
    env: Vec<EnvVar>,
}

/// A config var with its value.
#[derive(SimpleObject)]
pub struct EnvVar {
    /// The variable's name.
    name: String,
    /// Its value (a secret: keep it out of logs).
    value: String,
}

/// The release a rollback reuses.
#[derive(SimpleObject)]
pub struct RollbackSource {
    /// The earlier deployment's primary key (its release directory and image carry it).
    deployment_database_id: i64,
    /// The commit it built, to rebuild when its release is gone.
    commit_sha: Option<String>,
    /// The image it built (Docker runtime).
    image_tag: String,
}

/// What a runner tells the server when it asks for work.
#[derive(InputObject, Default)]
pub struct ClaimDeploymentInput {
    /// The host name where this runner's apps are reached (`App.url` of the apps placed on
    /// it); the server's `--public-host` otherwise.
    public_host: Option<String>,
}

/// The deployment claimed, if any, and what to do with it.
#[derive(SimpleObject)]
pub struct ClaimDeploymentPayload {
    /// The claimed deployment, now `RUNNING`; null when nothing is queued.
    deployment: Option<Deployment>,
    /// Everything needed to build and start it; null when nothing is queued.
    job: Option<RunnerJob>,
}

/// A runner renews its lease on a deployment, and says how far it got.
#[derive(InputObject)]
pub struct HeartbeatDeploymentInput {
    /// The deployment's ID.
    deployment_id: ID,
    /// The stage the runner has reached.
    stage: Option<DeploymentStage>,
    /// The commit being built, once cloned (40 hex digits).
    commit_sha: Option<String>,
}

/// The renewed lease.
#[derive(SimpleObject)]
pub struct HeartbeatDeploymentPayload {
    /// The deployment, still `RUNNING`.
    deployment: Deployment,
    /// The renewed lease's end.
    lease_expires_at: DateTime<Utc>,
    /// An admin cancelled the deployment: stop, then report `CANCELLED`.
    cancel_requested: bool,
}

/// How a deployment ended, as its runner reports it.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentOutcome {
    /// Built, started and healthy: traffic moved to it.
    Success,
    /// It failed (say why in `errorSummary`).
    Failed,
    /// Stopped because an admin cancelled it.
    Cancelled,
}

/// How a claimed deployment ended.
#[derive(InputObject)]
pub struct ReportDeploymentInput {
    /// The deployment's ID.
    deployment_id: ID,
    /// How it ended.
    status: DeploymentOutcome,
    /// The image built: a Docker image reference (`keystone/web:12-abc1234`), at most 200
    /// characters.
    image_tag: Option<String>,
    /// What went wrong, for `FAILED` (at most 4,000 characters).
    error_summary: Option<String>,
    /// The commit built (40 hex digits).
    commit_sha: Option<String>,
}

/// The finished deployment and its app.
#[derive(SimpleObject)]
pub struct ReportDeploymentPayload {
    /// The deployment, now finished.
    deployment: Deployment,
    /// The app, whose status follows its latest deployment.
    app: App,
}

/// A chunk of a deployment's log, from its runner.
#[derive(InputObject)]
pub struct AppendDeploymentLogInput {
    /// The deployment's ID.
    deployment_id: ID,
    /// Log text (at most 64 KiB per call); lines end with `\n`.
    chunk: String,
    /// The chunk's number (1, 2, … per deployment; continue from the job's `logSequence`):
    /// a retried chunk is applied once, and a gap is a `CONFLICT`.
    sequence: Option<i64>,
}

/// What happened to the chunk.
#[derive(SimpleObject)]
pub struct AppendDeploymentLogPayload {
    /// The deployment's ID.
    deployment_id: ID,
    /// Bytes stored (control characters are stored escaped; 0 once the log is full).
    bytes_written: i32,
    /// The deployment's log reached its size limit (`--max-log-bytes`): a marker line was
    /// written and further appends are dropped, so the runner may stop sending.
    log_full: bool,
    /// The number of the last chunk applied.
    sequence: i64,
    /// This chunk's number was applied before (a retry): nothing was written.
    duplicate: bool,
}

#[derive(Default)]
pub struct RunnerMutation;

#[Object]
impl RunnerMutation {
    /// Hands the oldest queued deployment to the calling runner (exactly one runner gets
    /// each), with everything needed to run it, and starts its lease.
    async fn claim_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: Option<
            ClaimDeploymentInput,
        >,
    ) -> async_graphql::Result<ClaimDeploymentPayload> {
        audited(ctx, Capability::Run, async |audit| {
            let api: &ApiContext = api(ctx)?;
            let input = input.unwrap_or_default();
            let claim = runs::claim(
                &api.db,
                audit,
                &api.events,
                &api.runners,
                &api.secrets,
                input.public_host.as_deref(),
            )
            .await
            .extend()?;
            Ok(match claim {
                None => ClaimDeploymentPayload {
                    deployment: None,
                    job: None,
                },
                Some(claim) => {
                    let env = env_vars(claim.config.env);
                    ClaimDeploymentPayload {
                        job: Some(RunnerJob {
                            repository_url: claim.repository.git_url,
                            branch: claim.branch.unwrap_or(claim.repository.default_branch),
                            commit_sha: claim.commit,
                            app_name: claim.app.name,
                            app_database_id: claim.app.id,
                            access_mode: claim.app.access_mode.into(),
                            port: claim.deployment.assigned_port,
                            logs_path: claim.deployment.logs_path.clone(),
                            attempt: claim.attempt,
                            log_sequence: claim.log_sequence,
                            health_check_path: claim.config.health_check_path,
                            lease_expires_at: claim.lease_expires_at.as_utc(),
                            rollback_from: claim.source.map(|source| RollbackSource {
                                deployment_database_id: source.deployment_id,
                                commit_sha: source.commit_sha,
                                image_tag: source.image_tag,
                            }),
                            env,
                        }),
                        deployment: Some(Deployment::from(claim.deployment)),
                    }
                }
            })
        })
        .await
    }

    /// Renews the lease on a deployment this runner holds; says whether it was cancelled.
    async fn heartbeat_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: HeartbeatDeploymentInput,
    ) -> async_graphql::Result<HeartbeatDeploymentPayload> {
        audited_failures(ctx, Capability::Run, async {
            let id = decode_as(&input.deployment_id, NodeType::Deployment, "deploymentId")?;
            let api = api(ctx)?;
            let progress = runs::Progress {
                stage: input.stage.map(Into::into),
                commit_sha: input.commit_sha,
            };
            let beat = runs::heartbeat(&api.db, &api.runners, principal(ctx)?, id, progress)
                .await
                .extend()?;
            Ok(HeartbeatDeploymentPayload {
                deployment: Deployment::from(beat.deployment),
                lease_expires_at: beat.lease_expires_at.as_utc(),
                cancel_requested: beat.cancel_requested,
            })
        })
        .await
    }

    /// Ends a deployment this runner holds. Its app becomes `RUNNING` on success, `FAILED`
    /// on failure, and returns to its status before the deploy when cancelled.
    async fn report_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: ReportDeploymentInput,
    ) -> async_graphql::Result<ReportDeploymentPayload> {
        audited(ctx, Capability::Run, async |audit| {
            let id = decode_as(&input.deployment_id, NodeType::Deployment, "deploymentId")?;
            let outcome = match input.status {
                DeploymentOutcome::Success => Outcome::Success,
                DeploymentOutcome::Failed => Outcome::Failed,
                DeploymentOutcome::Cancelled => Outcome::Cancelled,
            };
            let api = api(ctx)?;
            let (deployment, app) = runs::report(
                &api.db,
                audit,
                &api.events,
                &api.runners,
                id,
                runs::Report {
                    outcome,
                    image_tag: input.image_tag,
                    error_summary: input.error_summary,
                    commit_sha: input.commit_sha,
                },
            )
            .await
            .extend()?;
            Ok(ReportDeploymentPayload {
                deployment: Deployment::from(deployment),
                app: app.into(),
            })
        })
        .await
    }

    /// Appends to the log of a deployment this runner holds (the server chose the file);
    /// `deploymentLog` subscribers receive the lines.
    async fn append_deployment_log(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: AppendDeploymentLogInput,
    ) -> async_graphql::Result<AppendDeploymentLogPayload> {
        audited_failures(ctx, Capability::Run, async {
            let id = decode_as(&input.deployment_id, NodeType::Deployment, "deploymentId")?;
            let api = api(ctx)?;
            let append = runs::append_log(
                &api.db,
                &api.events,
                &api.runners,
                principal(ctx)?,
                id,
                &input.chunk,
                input.sequence,
            )
            .await
            .extend()?;
            Ok(AppendDeploymentLogPayload {
                deployment_id: input.deployment_id,
                bytes_written: append.appended.text.len() as i32,
                log_full: append.appended.full,
                sequence: append.sequence,
                duplicate: append.duplicate,
            })
        })
        .await
    }
}

/// An app placed on the calling runner, and what it should be running.
#[derive(SimpleObject)]
pub struct RunnerApp {
    /// The app's global ID.
    id: ID,
    /// The app's primary key.
    database_id: i64,
    /// The app's name.
    name: String,
    /// How the app is reached.
    access_mode: AccessMode,
    /// The public host port, for `PORT` apps.
    port: Option<i32>,
    /// `RUNNING`: its current deployment should be serving; `STOPPED`: nothing should run.
    status: AppStatus,
    /// Its latest successful deployment's primary key: the release that should serve.
    current_deployment_database_id: Option<i64>,
    /// That deployment's commit.
    current_commit_sha: Option<String>,
    /// The app's config vars with their values (to start its release again after a reboot).
    env: Vec<EnvVar>,
    /// What the health check requests (empty: no HTTP check).
    health_check_path: String,
}

#[derive(Default)]
pub struct RunnerQuery;

#[Object]
impl RunnerQuery {
    /// The apps placed on the calling runner (the first runner that ran an app keeps it), each
    /// with the deployment that should be serving: a runner reconciles what runs with this.
    /// An app missing from the list was deleted: its instance, releases and images go.
    #[graphql(guard = "Require(Capability::Run)")]
    async fn runner_apps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunnerApp>> {
        let api = api(ctx)?;
        let placed = runs::placed_apps(&api.db, &api.secrets, principal(ctx)?)
            .await
            .extend()?;
        let listed = placed
            .into_iter()
            .map(|placed| RunnerApp {
                env: env_vars(placed.config.env),
                health_check_path: placed.config.health_check_path,
                id: NodeType::App.id(placed.app.id),
                database_id: placed.app.id,
                name: placed.app.name,
                access_mode: placed.app.access_mode.into(),
                port: placed.app.current_port,
                status: placed.app.status.into(),
                current_deployment_database_id: placed.current.as_ref().map(|(d, _)| d.id),
                current_commit_sha: placed.current.and_then(|(_, sha)| sha),
            })
            .collect();
        Ok(listed)
    }
}

fn env_vars(env: Vec<(String, String)>) -> Vec<EnvVar> {
    env.into_iter()
        .map(|(name, value)| EnvVar { name, value })
        .collect()
}

/// Why a runner should compare what it runs with `runnerApps` again.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerSignalReason {
    /// The subscription started (or restarted): changes may have been missed meanwhile.
    Subscribed,
    /// One of its apps changed (stopped, rolled back, deployed elsewhere, …).
    AppChanged,
    /// One of its apps was deleted: its instance, releases and images go.
    AppDeleted,
    /// The subscription fell behind and lost events: look at everything.
    Missed,
}

/// A nudge to reconcile.
#[derive(SimpleObject)]
pub struct RunnerSignal {
    /// Why to reconcile.
    reason: RunnerSignalReason,
    /// The app concerned, when there is one.
    app_id: Option<ID>,
}

impl RunnerSignal {
    fn new(reason: RunnerSignalReason, app_id: Option<i64>) -> Self {
        Self {
            reason,
            app_id: app_id.map(|id| NodeType::App.id(id)),
        }
    }
}

#[derive(Default)]
pub struct RunnerSubscription;

#[async_graphql::Subscription]
impl RunnerSubscription {
    /// For runners: a signal whenever one of the calling runner's apps changes or is deleted,
    /// so it reconciles at once instead of at its next periodic pass. The first signal
    /// (`SUBSCRIBED`) arrives at once: reconcile after every (re)connection.
    #[graphql(guard = "Require(Capability::Run)")]
    async fn runner_signals(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl futures_util::Stream<Item = RunnerSignal> + use<>> {
        use futures_util::StreamExt;
        use tokio::sync::broadcast::error::RecvError;
        let api = api(ctx)?;
        let runner: std::sync::Arc<str> = principal(ctx)?.name.as_str().into();
        let state = (api.events.subscribe(), api.db.clone(), runner);
        let signals = futures_util::stream::unfold(state, |(mut events, db, runner)| async move {
            loop {
                let signal = match events.recv().await {
                    Ok(Event::AppUpdated(app)) => {
                        let mine = runs::placed_on(&db, app.id)
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|placed| *placed == *runner);
                        if !mine {
                            continue;
                        }
                        RunnerSignal::new(RunnerSignalReason::AppChanged, Some(app.id))
                    }
                    Ok(Event::AppDeleted {
                        app_id,
                        runner: Some(placed),
                    }) if placed == runner => {
                        RunnerSignal::new(RunnerSignalReason::AppDeleted, Some(app_id))
                    }
                    Ok(Event::Resync) | Err(RecvError::Lagged(_)) => {
                        RunnerSignal::new(RunnerSignalReason::Missed, None)
                    }
                    Ok(_) => continue,
                    Err(RecvError::Closed) => return None,
                };
                return Some((signal, (events, db, runner)));
            }
        });
        let first = RunnerSignal::new(RunnerSignalReason::Subscribed, None);
        Ok(futures_util::stream::once(async move { first }).chain(signals))
    }
}
