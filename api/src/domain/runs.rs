//! The deployment state machine and the runner protocol.
//!
//! ```text
//!             claim                 report SUCCESS / FAILED / CANCELLED
//!   queued ─────────▶ running ─────────────────────────────────────────▶ success | failed | cancelled
//!     │  ▲               │
//!     │  └───────────────┘ lease expired (attempts left): requeued
//!     │                  └──────────────▶ failed (lease expired, no attempts left)
//!     └──────────────────────────────────▶ cancelled (cancelDeployment, or superseded)
//! ```
//!
//! Terminal states are final. `started_at` is set when a runner claims, `ended_at` on every
//! terminal state. A runner claims the oldest queued deployment (exactly one runner gets
//! it: `FOR UPDATE SKIP LOCKED` on PostgreSQL, the single writer on SQLite), holds a lease
//! it renews by heartbeating, appends log chunks to a file the server chose, and reports
//! the outcome. Every change is one transaction; a refused transition is a `CONFLICT`
//! naming the current state and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use entity::Timestamp;
use entity::app::{self, AppStatus};
use entity::app_placement;
use entity::deployment::{self, DeploymentStatus};
use entity::deployment_run::{self, Stage};
use entity::prelude::*;
use entity::repository;
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Set,
};

use super::access::Principal;
use super::audit::{self, Actor, Audit, Object};
use super::env::{RunConfig, run_configs};
use super::events::{Event, EventBus};
use super::logs::LogStore;
use super::ports::PortRange;
use super::secrets::SecretBox;
use super::{DomainError, begin_write};

/// How runners are managed (from the server's configuration).
#[derive(Clone, Debug)]
pub struct RunnerPolicy {
    /// How long a claim or heartbeat keeps a deployment held.
    pub lease: Duration,
    /// Claims a deployment gets before a lapsed lease fails it.
    pub max_attempts: i32,
    /// Where deployment logs are written, and their cap.
    pub logs: LogStore,
    /// The host ports `PORT` apps get (a push that waited is queued when a deployment ends).
    pub ports: PortRange,
}

/// The most bytes one `appendDeploymentLog` call may carry.
pub const MAX_LOG_CHUNK: usize = 64 * 1024;
/// The most lines `Deployment.logs(tail:)` returns.
pub const MAX_TAIL: usize = 10_000;
/// The longest `errorSummary` a runner may report, in characters.
pub const MAX_ERROR_SUMMARY: usize = 4_000;

/// What a runner needs to run a claimed deployment.
pub struct Claim {
    pub deployment: deployment::Model,
    pub app: app::Model,
    pub repository: repository::Model,
    pub attempt: i32,
    pub lease_expires_at: Timestamp,
    /// For a rollback: the deployment whose release to reuse, with its commit.
    pub source: Option<Source>,
    /// The last log chunk applied (a re-claimed deployment continues after it).
    pub log_sequence: i64,
    /// The app's variables and health check, as they were when it was claimed.
    pub config: RunConfig,
    /// The commit to build (a push's, or one `deployApp` named); `None`: the branch's head.
    pub commit: Option<String>,
    /// The branch to build when not the repository's default.
    pub branch: Option<String>,
}

/// An earlier deployment a rollback reuses.
#[derive(Clone, Debug)]
pub struct Source {
    pub deployment_id: i64,
    pub commit_sha: Option<String>,
    pub image_tag: String,
}

/// What a runner reports with a heartbeat besides being alive.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub stage: Option<Stage>,
    pub commit_sha: Option<String>,
}

/// An app placed on a runner, as the runner should keep it: its latest successful
/// deployment running while the app is `running`, nothing otherwise.
#[derive(Clone, Debug)]
pub struct PlacedApp {
    pub app: app::Model,
    pub current: Option<(deployment::Model, Option<String>)>,
    pub config: RunConfig,
}

/// The outcome a runner reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
    Cancelled,
}

fn lease_end(policy: &RunnerPolicy) -> Timestamp {
    let lease = chrono::Duration::from_std(policy.lease).unwrap_or(chrono::Duration::seconds(30));
    Timestamp::new(chrono::Utc::now() + lease)
}

fn conflict(field: &'static str, message: String) -> DomainError {
    DomainError::Conflict {
        field: Some(field),
        message,
    }
}

/// The deployment's state as stored (`queued`, `running`, …), for messages.
fn state(deployment: &deployment::Model) -> String {
    deployment.status.to_value()
}

/// The deployment `id` locked for this transaction, with its run row (made if missing:
/// deployments queued before the lifecycle migration have none).
async fn locked(
    txn: &DatabaseTransaction,
    id: i64,
    field: &'static str,
) -> Result<(deployment::Model, deployment_run::Model), DomainError> {
    let mut query = Deployment::find_by_id(id);
    if txn.get_database_backend() == DbBackend::Postgres {
        query = query.lock_exclusive();
    }
    let deployment = query.one(txn).await?.ok_or(DomainError::NotFound {
        entity: "deployment",
        field,
        id,
    })?;
    let run = match DeploymentRun::find_by_id(id).one(txn).await? {
        Some(run) => run,
        None => {
            deployment_run::ActiveModel {
                deployment_id: Set(id),
                attempts: Set(0),
                runner_name: Set(None),
                lease_expires_at: Set(None),
                heartbeat_at: Set(None),
                cancel_requested: Set(false),
                previous_app_status: Set(AppStatus::Draft),
                commit_sha: Set(None),
                pinned_commit: Set(None),
                branch: Set(None),
                stage: Set(None),
                source_deployment_id: Set(None),
                log_sequence: Set(0),
                log_lines: Set(0),
            }
            .insert(txn)
            .await?
        }
    };
    Ok((deployment, run))
}

/// The running deployment `id`, held by `runner`, locked for this transaction; anything
/// else is a `CONFLICT` naming why.
async fn held_by(
    txn: &DatabaseTransaction,
    runner: &str,
    id: i64,
) -> Result<(deployment::Model, deployment_run::Model), DomainError> {
    let (deployment, run) = locked(txn, id, "deploymentId").await?;
    check_holder(&deployment, run.runner_name.as_deref(), runner)?;
    Ok((deployment, run))
}

/// `Ok` when `deployment` is running and held by `runner` (`holder` is its runner's name).
fn check_holder(
    deployment: &deployment::Model,
    holder: Option<&str>,
    runner: &str,
) -> Result<(), DomainError> {
    let id = deployment.id;
    if deployment.status != DeploymentStatus::Running {
        return Err(conflict(
            "deploymentId",
            format!("deployment {id} is {}, not running", state(deployment)),
        ));
    }
    if holder != Some(runner) {
        return Err(conflict(
            "deploymentId",
            format!(
                "deployment {id} is held by runner {:?}, not {:?}",
                holder.unwrap_or("-"),
                runner
            ),
        ));
    }
    Ok(())
}

/// Sets the app's status (inside the transaction) and returns the updated app.
async fn set_app_status(
    txn: &DatabaseTransaction,
    app_id: i64,
    status: AppStatus,
) -> Result<app::Model, DomainError> {
    let app = App::find_by_id(app_id)
        .one(txn)
        .await?
        .ok_or(DomainError::NotFound {
            entity: "app",
            field: "deploymentId",
            id: app_id,
        })?;
    if app.status == status {
        return Ok(app);
    }
    let mut active: app::ActiveModel = app.into();
    active.status = Set(status);
    Ok(active.update(txn).await?)
}

/// Hands the oldest queued deployment to the runner acting in `audit` (`None` when nothing
/// is queued).
pub async fn claim(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &EventBus,
    policy: &RunnerPolicy,
    secrets: &SecretBox,
    public_host: Option<&str>,
) -> Result<Option<Claim>, DomainError> {
    let runner = audit.actor().name();
    if let Some(host) = public_host {
        super::check("publicHost", super::validation::public_host, host)?;
    }
    let (_turn, txn) = begin_write(db).await?;
    // Apps placed on another runner are not this runner's to deploy.
    let elsewhere = AppPlacement::find()
        .select_only()
        .column(app_placement::Column::AppId)
        .filter(app_placement::Column::RunnerName.ne(runner))
        .into_query();
    let mut oldest = Deployment::find()
        .filter(deployment::Column::Status.eq(DeploymentStatus::Queued))
        .filter(deployment::Column::AppId.not_in_subquery(elsewhere))
        .order_by_asc(deployment::Column::CreatedAt)
        .order_by_asc(deployment::Column::Id)
        .limit(1);
    if db.get_database_backend() == DbBackend::Postgres {
        // Each claimer skips rows another is claiming: exactly one gets each deployment.
        oldest = oldest.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let Some(queued) = oldest.one(&txn).await? else {
        return Ok(None);
    };
    let (_, run) = locked(&txn, queued.id, "deploymentId").await?;
    let (app, repository) = match App::find_by_id(queued.app_id)
        .find_also_related(Repository)
        .one(&txn)
        .await?
    {
        Some((app, Some(repository))) => (app, repository),
        _ => {
            return Err(DomainError::Internal(format!(
                "deployment {} has no app or repository",
                queued.id
            )));
        }
    };
    let now = Timestamp::now();
    let lease_expires_at = lease_end(policy);
    // A requeued deployment keeps its log; any other path (none yet, or one Keystone did
    // not name) gets a fresh file.
    let logs_path = if policy.logs.owns(&queued.logs_path) {
        queued.logs_path.clone()
    } else {
        policy.logs.new_path(queued.id)?.display().to_string()
    };
    let mut active: deployment::ActiveModel = queued.into();
    active.status = Set(DeploymentStatus::Running);
    active.started_at = Set(Some(now));
    active.logs_path = Set(logs_path);
    let deployment = active.update(&txn).await?;
    let attempt = run.attempts + 1;
    let source_id = run.source_deployment_id;
    let log_sequence = run.log_sequence;
    let commit = run.pinned_commit.clone();
    let branch = run.branch.clone();
    let mut run: deployment_run::ActiveModel = run.into();
    run.attempts = Set(attempt);
    run.runner_name = Set(Some(runner.to_owned()));
    run.lease_expires_at = Set(Some(lease_expires_at));
    run.heartbeat_at = Set(Some(now));
    run.stage = Set(None);
    run.update(&txn).await?;
    // The first runner to run an app keeps it; it may advertise a new public host.
    match AppPlacement::find_by_id(app.id).one(&txn).await? {
        None => {
            AppPlacement::insert(app_placement::ActiveModel {
                app_id: Set(app.id),
                runner_name: Set(runner.to_owned()),
                public_host: Set(public_host.map(str::to_owned)),
                placed_at: Set(now),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        Some(placed) if public_host.is_some() && placed.public_host.as_deref() != public_host => {
            let mut placed: app_placement::ActiveModel = placed.into();
            placed.public_host = Set(public_host.map(str::to_owned));
            placed.update(&txn).await?;
        }
        Some(_) => {}
    }
    let source = match source_id {
        None => None,
        Some(id) => Deployment::find_by_id(id)
            .find_also_related(DeploymentRun)
            .one(&txn)
            .await?
            .map(|(d, run)| Source {
                deployment_id: d.id,
                commit_sha: run.and_then(|r| r.commit_sha),
                image_tag: d.image_tag,
            }),
    };
    let config = run_configs(&txn, secrets, &[app.id])
        .await?
        .remove(&app.id)
        .unwrap_or_default();
    audit::commit(txn, audit, Object::Deployment(deployment.id)).await?;
    events.publish(Event::DeploymentUpdated(Arc::new(deployment.clone())));
    Ok(Some(Claim {
        deployment,
        app,
        repository,
        attempt,
        lease_expires_at,
        source,
        log_sequence,
        config,
        commit,
        branch,
    }))
}

/// What a heartbeat tells the runner.
pub struct Heartbeat {
    pub deployment: deployment::Model,
    pub lease_expires_at: Timestamp,
    /// An admin asked to cancel: stop, then report `CANCELLED`.
    pub cancel_requested: bool,
}

/// Renews `runner`'s lease on a deployment it holds, recording its progress.
pub async fn heartbeat(
    db: &DatabaseConnection,
    policy: &RunnerPolicy,
    runner: &Principal,
    id: i64,
    progress: Progress,
) -> Result<Heartbeat, DomainError> {
    if let Some(sha) = &progress.commit_sha {
        super::check("commitSha", super::validation::commit_sha, sha)?;
    }
    let (_turn, txn) = begin_write(db).await?;
    let (deployment, run) = held_by(&txn, &runner.name, id).await?;
    let cancel_requested = run.cancel_requested;
    let lease_expires_at = lease_end(policy);
    let mut run: deployment_run::ActiveModel = run.into();
    run.lease_expires_at = Set(Some(lease_expires_at));
    run.heartbeat_at = Set(Some(Timestamp::now()));
    if let Some(stage) = progress.stage {
        run.stage = Set(Some(stage));
    }
    if let Some(sha) = progress.commit_sha {
        run.commit_sha = Set(Some(sha));
    }
    run.update(&txn).await?;
    txn.commit().await?;
    crate::telemetry::metrics().heartbeat(&runner.name, id, progress.stage);
    Ok(Heartbeat {
        deployment,
        lease_expires_at,
        cancel_requested,
    })
}

/// What a runner reports at the end of a deployment.
pub struct Report {
    pub outcome: Outcome,
    pub image_tag: Option<String>,
    pub error_summary: Option<String>,
    pub commit_sha: Option<String>,
}

/// Ends a deployment the runner acting in `audit` holds with its report's outcome; the app follows: `running` on
/// success, `failed` on failure, its status before the deploy when cancelled.
pub async fn report(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &EventBus,
    policy: &RunnerPolicy,
    id: i64,
    report: Report,
) -> Result<(deployment::Model, app::Model), DomainError> {
    let Report {
        outcome,
        image_tag,
        error_summary,
        commit_sha,
    } = report;
    if let Some(sha) = &commit_sha {
        super::check("commitSha", super::validation::commit_sha, sha)?;
    }
    if let Some(tag) = &image_tag {
        super::check("imageTag", super::validation::image_reference, tag)?;
    }
    let error_summary = error_summary
        .map(|summary| {
            super::check("errorSummary", super::validation::error_summary, &summary)?;
            Ok::<_, DomainError>(super::logs::escape_controls(&summary).into_owned())
        })
        .transpose()?;
    let (_turn, txn) = begin_write(db).await?;
    let (deployment, mut run) = held_by(&txn, audit.actor().name(), id).await?;
    if commit_sha.is_some() {
        run.commit_sha = commit_sha;
    }
    let (status, app_status) = match outcome {
        Outcome::Success => (DeploymentStatus::Success, AppStatus::Running),
        Outcome::Failed => (DeploymentStatus::Failed, AppStatus::Failed),
        Outcome::Cancelled => (DeploymentStatus::Cancelled, run.previous_app_status),
    };
    let (deployment, app) = finish(
        &txn,
        deployment,
        run,
        status,
        app_status,
        image_tag,
        error_summary,
    )
    .await?;
    let waiting = super::webhooks::deploy_waiting_push(&txn, policy.ports, app.id).await?;
    audit::commit(txn, audit, Object::Deployment(deployment.id)).await?;
    events.publish(Event::DeploymentUpdated(Arc::new(deployment.clone())));
    let app = match waiting {
        Some(queued) => {
            queued.publish(events);
            queued.app
        }
        None => {
            events.publish(Event::AppUpdated(Arc::new(app.clone())));
            app
        }
    };
    Ok((deployment, app))
}

/// Moves a deployment to a terminal `status` and its app to `app_status`; the lease ends.
async fn finish(
    txn: &DatabaseTransaction,
    deployment: deployment::Model,
    run: deployment_run::Model,
    status: DeploymentStatus,
    app_status: AppStatus,
    image_tag: Option<String>,
    error_summary: Option<String>,
) -> Result<(deployment::Model, app::Model), DomainError> {
    let app_id = deployment.app_id;
    crate::telemetry::metrics().deployment_ended(deployment.id);
    let mut active: deployment::ActiveModel = deployment.into();
    active.status = Set(status);
    active.ended_at = Set(Some(Timestamp::now()));
    if let Some(tag) = image_tag {
        active.image_tag = Set(tag);
    }
    if let Some(summary) = error_summary {
        active.error_summary = Set(summary);
    }
    let deployment = active.update(txn).await?;
    let commit_sha = run.commit_sha.clone();
    let mut run: deployment_run::ActiveModel = run.into();
    run.lease_expires_at = Set(None);
    run.commit_sha = Set(commit_sha);
    run.update(txn).await?;
    // Only the app's latest deployment decides its status.
    let latest = Deployment::find()
        .filter(deployment::Column::AppId.eq(app_id))
        .order_by_desc(deployment::Column::CreatedAt)
        .order_by_desc(deployment::Column::Id)
        .one(txn)
        .await?;
    let app = if latest.is_some_and(|l| l.id == deployment.id) {
        set_app_status(txn, app_id, app_status).await?
    } else {
        App::find_by_id(app_id)
            .one(txn)
            .await?
            .ok_or(DomainError::Internal(format!("app {app_id} vanished")))?
    };
    Ok((deployment, app))
}

/// Cancels a deployment: a queued one at once (the app returns to its status before the
/// deploy); a running one is flagged, and its runner learns it from its next heartbeat.
/// Returns the deployment and whether it is already cancelled.
pub async fn cancel(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &EventBus,
    id: i64,
) -> Result<(deployment::Model, bool), DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    let (deployment, run) = locked(&txn, id, "id").await?;
    match deployment.status {
        DeploymentStatus::Queued => {
            let previous = run.previous_app_status;
            let summary = format!("cancelled by {}", audit.actor().name());
            let (deployment, app) = finish(
                &txn,
                deployment,
                run,
                DeploymentStatus::Cancelled,
                previous,
                None,
                Some(summary),
            )
            .await?;
            audit::commit(txn, audit, Object::Deployment(id)).await?;
            events.publish(Event::DeploymentUpdated(Arc::new(deployment.clone())));
            events.publish(Event::AppUpdated(Arc::new(app)));
            Ok((deployment, true))
        }
        DeploymentStatus::Running => {
            if !run.cancel_requested {
                let mut run: deployment_run::ActiveModel = run.into();
                run.cancel_requested = Set(true);
                run.update(&txn).await?;
            }
            audit::commit(txn, audit, Object::Deployment(id)).await?;
            Ok((deployment, false))
        }
        _ => Err(conflict(
            "id",
            format!(
                "deployment {id} is {} (final); only queued or running deployments can be cancelled",
                state(&deployment)
            ),
        )),
    }
}

/// The actor that expires leases, as the audit trail names it.
pub const SWEEPER: &str = "lease sweeper";

/// Requeues running deployments whose runner stopped heartbeating, or fails those that
/// used up their attempts (each change audited, by [`SWEEPER`]). Safe to run from several
/// servers at once.
pub async fn expire_leases(
    db: &DatabaseConnection,
    events: &EventBus,
    policy: &RunnerPolicy,
) -> Result<usize, DomainError> {
    let now = Timestamp::now();
    let expired: Vec<i64> = DeploymentRun::find()
        .select_only()
        .column(deployment_run::Column::DeploymentId)
        .filter(deployment_run::Column::LeaseExpiresAt.lt(now))
        .into_tuple()
        .all(db)
        .await?;
    let mut changed = 0;
    for id in expired {
        let (_turn, txn) = begin_write(db).await?;
        let (deployment, run) = locked(&txn, id, "id").await?;
        // Re-checked under the lock: a heartbeat or another server may have got here first.
        let lapsed = deployment.status == DeploymentStatus::Running
            && run.lease_expires_at.is_some_and(|at| at < now);
        if !lapsed {
            continue;
        }
        let runner = run.runner_name.clone().unwrap_or_default();
        let gave_up = run.attempts >= policy.max_attempts;
        let audit = Audit::new(
            Actor::System(SWEEPER),
            "expireLease",
            serde_json::json!({
                "deploymentDatabaseId": id,
                "runner": runner,
                "attempts": run.attempts,
                "then": if gave_up { "failed" } else { "requeued" },
            }),
        );
        if gave_up {
            let summary = format!(
                "runner {runner:?} stopped heartbeating; gave up after {} attempts (lease {} s)",
                run.attempts,
                policy.lease.as_secs()
            );
            let (deployment, app) = finish(
                &txn,
                deployment,
                run,
                DeploymentStatus::Failed,
                AppStatus::Failed,
                None,
                Some(summary),
            )
            .await?;
            let waiting = super::webhooks::deploy_waiting_push(&txn, policy.ports, app.id).await?;
            audit::commit(txn, &audit, Object::Deployment(id)).await?;
            crate::telemetry::metrics().lease_lapsed("failed");
            events.publish(Event::DeploymentUpdated(Arc::new(deployment)));
            match waiting {
                Some(queued) => queued.publish(events),
                None => events.publish(Event::AppUpdated(Arc::new(app))),
            }
        } else {
            let mut active: deployment::ActiveModel = deployment.into();
            active.status = Set(DeploymentStatus::Queued);
            active.started_at = Set(None);
            let deployment = active.update(&txn).await?;
            let mut run: deployment_run::ActiveModel = run.into();
            run.runner_name = Set(None);
            run.lease_expires_at = Set(None);
            run.update(&txn).await?;
            audit::commit(txn, &audit, Object::Deployment(id)).await?;
            tracing::warn!(deployment = id, %runner, "lease expired: deployment requeued");
            crate::telemetry::metrics().lease_lapsed("requeued");
            events.publish(Event::DeploymentUpdated(Arc::new(deployment)));
        }
        changed += 1;
    }
    Ok(changed)
}

/// The runner app `app_id` is placed on, if any.
pub async fn placed_on(
    db: &DatabaseConnection,
    app_id: i64,
) -> Result<Option<String>, DomainError> {
    Ok(AppPlacement::find_by_id(app_id)
        .one(db)
        .await?
        .map(|placed| placed.runner_name))
}

/// The apps placed on `runner`, with the deployment each should be running (its latest
/// successful one), that deployment's commit, and the app's configuration: what a runner
/// reconciles against. Four statements, however many apps.
pub async fn placed_apps(
    db: &DatabaseConnection,
    secrets: &SecretBox,
    runner: &Principal,
) -> Result<Vec<PlacedApp>, DomainError> {
    let apps: Vec<app::Model> = App::find()
        .inner_join(AppPlacement)
        .filter(app_placement::Column::RunnerName.eq(runner.name.as_str()))
        .order_by_asc(app::Column::Id)
        .all(db)
        .await?;
    let ids: Vec<i64> = apps.iter().map(|a| a.id).collect();
    let mut configs = run_configs(db, secrets, &ids).await?;
    // Newest first: the first success seen per app is its current one.
    let successes = Deployment::find()
        .find_also_related(DeploymentRun)
        .filter(deployment::Column::AppId.is_in(ids))
        .filter(deployment::Column::Status.eq(DeploymentStatus::Success))
        .order_by_desc(deployment::Column::CreatedAt)
        .order_by_desc(deployment::Column::Id)
        .all(db)
        .await?;
    let mut current: std::collections::HashMap<i64, (deployment::Model, Option<String>)> =
        std::collections::HashMap::new();
    for (deployment, run) in successes {
        current
            .entry(deployment.app_id)
            .or_insert_with(|| (deployment, run.and_then(|r| r.commit_sha)));
    }
    Ok(apps
        .into_iter()
        .map(|app| PlacedApp {
            current: current.remove(&app.id),
            config: configs.remove(&app.id).unwrap_or_default(),
            app,
        })
        .collect())
}

/// What an append did.
pub struct LogAppend {
    pub appended: super::logs::Appended,
    /// The sequence number of the last chunk applied (0 when chunks carry none).
    pub sequence: i64,
    /// The chunk's sequence number was applied before: nothing was written.
    pub duplicate: bool,
}

/// Appends `chunk` to the log of a deployment `runner` holds, up to the log's cap; returns
/// what was written (published to `deploymentLog` subscribers).
///
/// With a `sequence` (1, 2, …, per deployment) a chunk is applied exactly once: a retry of
/// an applied chunk is acknowledged as a duplicate and writes nothing, and a chunk that would
/// leave a gap is a `CONFLICT` naming the number expected. The number is claimed and the file
/// written in one transaction, so a concurrent retry waits and then sees the duplicate; only a
/// server crash between the write and the commit can apply a chunk twice.
pub async fn append_log(
    db: &DatabaseConnection,
    events: &EventBus,
    policy: &RunnerPolicy,
    runner: &Principal,
    id: i64,
    chunk: &str,
    sequence: Option<i64>,
) -> Result<LogAppend, DomainError> {
    if chunk.len() > MAX_LOG_CHUNK {
        return Err(DomainError::Invalid {
            field: "chunk",
            reason: format!(
                "must be at most {MAX_LOG_CHUNK} bytes (got {}); send several",
                chunk.len()
            ),
        });
    }
    if sequence.is_some_and(|n| n < 1) {
        return Err(DomainError::Invalid {
            field: "sequence",
            reason: "must be 1 or more".into(),
        });
    }
    let (appended, last, duplicate, first_line) = match sequence {
        None => {
            // A read, not a write transaction: the holder check only has to be true when
            // the chunk arrives.
            let Some((deployment, run)) = Deployment::find_by_id(id)
                .find_also_related(DeploymentRun)
                .one(db)
                .await?
            else {
                return Err(DomainError::NotFound {
                    entity: "deployment",
                    field: "deploymentId",
                    id,
                });
            };
            check_holder(
                &deployment,
                run.as_ref().and_then(|r| r.runner_name.as_deref()),
                &runner.name,
            )?;
            let appended = policy.logs.append(&deployment.logs_path, chunk).await?;
            (appended, run.map_or(0, |r| r.log_sequence), false, None)
        }
        Some(sequence) => {
            let (_turn, txn) = begin_write(db).await?;
            let (deployment, run) = held_by(&txn, &runner.name, id).await?;
            let last = run.log_sequence;
            if sequence <= last {
                let nothing = super::logs::Appended {
                    text: String::new(),
                    full: false,
                };
                (nothing, last, true, None)
            } else if sequence > last + 1 {
                return Err(conflict(
                    "sequence",
                    format!(
                        "chunk {sequence} of deployment {id} would leave a gap: the next is {}",
                        last + 1
                    ),
                ));
            } else {
                let first_line = run.log_lines + 1;
                let appended = policy.logs.append(&deployment.logs_path, chunk).await?;
                let lines = appended.text.matches('\n').count() as i64;
                let mut run: deployment_run::ActiveModel = run.into();
                run.log_sequence = Set(sequence);
                run.log_lines = Set(first_line - 1 + lines);
                run.update(&txn).await?;
                txn.commit().await?;
                (appended, sequence, false, Some(first_line))
            }
        }
    };
    if !appended.text.is_empty() {
        events.publish(Event::DeploymentLog {
            deployment_id: id,
            chunk: Arc::from(appended.text.as_str()),
            first_line,
        });
    }
    Ok(LogAppend {
        appended,
        sequence: last,
        duplicate,
    })
}
