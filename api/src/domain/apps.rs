//! Creating, changing, deleting, deploying and stopping apps; the app side of the
//! lifecycle (`draft → deploying → running | failed`, `running → stopped`).

use std::sync::Arc;

use entity::Timestamp;
use entity::app::{AccessMode, AppStatus};
use entity::deployment::DeploymentStatus;
use entity::prelude::*;
use entity::{app, app_placement, app_settings, deployment, deployment_run};
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::audit::{self, Audit, Object};
use super::events::{Event, EventBus};
use super::logs::LogStore;
use super::ports::{self, PortRange};
use super::{DomainError, begin_write, check, repositories, validation};

pub struct NewApp {
    pub name: String,
    pub repo_id: i64,
    /// `PORT` when not given.
    pub access_mode: Option<AccessMode>,
    /// What the runner's health check requests (`""`: no HTTP check); its default when not
    /// given.
    pub health_check_path: Option<String>,
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Default)]
pub struct AppChanges {
    pub name: Option<String>,
    pub repo_id: Option<i64>,
    pub access_mode: Option<AccessMode>,
    pub health_check_path: Option<String>,
}

/// The name of app `id`.
pub async fn name_of(db: &impl ConnectionTrait, id: i64) -> Result<String, DomainError> {
    App::find_by_id(id)
        .one(db)
        .await?
        .map(|app| app.name)
        .ok_or(DomainError::NotFound {
            entity: "app",
            field: "appId",
            id,
        })
}

/// What a health check requests unless the app says otherwise.
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/";

/// Records the app's health-check path (inside the caller's transaction).
async fn set_health_check_path(
    txn: &impl ConnectionTrait,
    app_id: i64,
    path: String,
) -> Result<(), DomainError> {
    let row = app_settings::ActiveModel {
        app_id: Set(app_id),
        health_check_path: Set(Some(path)),
    };
    if AppSettings::find_by_id(app_id).one(txn).await?.is_some() {
        row.update(txn).await?;
    } else {
        AppSettings::insert(row).exec_without_returning(txn).await?;
    }
    Ok(())
}

pub async fn create(
    db: &DatabaseConnection,
    audit: &Audit,
    new: NewApp,
) -> Result<app::Model, DomainError> {
    check("name", validation::app_name, &new.name)?;
    if let Some(path) = &new.health_check_path {
        check("healthCheckPath", validation::health_check_path, path)?;
    }
    let (_turn, txn) = begin_write(db).await?;
    repositories::find(&txn, new.repo_id, "repositoryId").await?;
    let created = app::ActiveModel {
        name: Set(new.name),
        repo_id: Set(new.repo_id),
        access_mode: Set(new.access_mode.unwrap_or(AccessMode::Port)),
        status: Set(AppStatus::Draft),
        current_port: Set(None),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    if let Some(path) = new.health_check_path {
        set_health_check_path(&txn, created.id, path).await?;
    }
    audit::commit(txn, audit, Object::App(created.id)).await?;
    Ok(created)
}

/// Applies `changes`. Switching an app to `HOST` access releases its port. Subscribers of
/// `appUpdated` hear of it.
pub async fn update(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &EventBus,
    id: i64,
    changes: AppChanges,
) -> Result<app::Model, DomainError> {
    if let Some(name) = &changes.name {
        check("name", validation::app_name, name)?;
    }
    if let Some(path) = &changes.health_check_path {
        check("healthCheckPath", validation::health_check_path, path)?;
    }
    let (_turn, txn) = begin_write(db).await?;
    let mut active: app::ActiveModel = find_for_update(&txn, id, "id").await?.into();
    if let Some(name) = changes.name {
        active.name = Set(name);
    }
    if let Some(repo_id) = changes.repo_id {
        repositories::find(&txn, repo_id, "repositoryId").await?;
        active.repo_id = Set(repo_id);
    }
    if let Some(mode) = changes.access_mode {
        active.access_mode = Set(mode);
        if mode == AccessMode::Host {
            active.current_port = Set(None);
        }
    }
    let updated = active.update(&txn).await?;
    if let Some(path) = changes.health_check_path {
        set_health_check_path(&txn, id, path).await?;
    }
    audit::commit(txn, audit, Object::App(id)).await?;
    events.publish(Event::AppUpdated(Arc::new(updated.clone())));
    Ok(updated)
}

/// Deletes an app and its deployments, refused while one of them is running.
pub async fn delete(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &EventBus,
    logs: &LogStore,
    id: i64,
) -> Result<i64, DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    find_for_update(&txn, id, "id").await?;
    let running = Deployment::find()
        .filter(deployment::Column::AppId.eq(id))
        .filter(deployment::Column::Status.eq(DeploymentStatus::Running))
        .count(&txn)
        .await?;
    if running > 0 {
        return Err(DomainError::Conflict {
            field: Some("id"),
            message: format!(
                "app {id} has a running deployment; wait for it to finish or cancel it first"
            ),
        });
    }
    let log_files = log_paths(
        &txn,
        Deployment::find().filter(deployment::Column::AppId.eq(id)),
    )
    .await?;
    let placed = placements(&txn, vec![id]).await?;
    App::delete_by_id(id).exec(&txn).await?;
    audit::commit(txn, audit, Object::App(id)).await?;
    publish_deleted(events, placed);
    logs.remove(log_files).await;
    Ok(id)
}

/// Queues a deployment of the app and marks the app `deploying` (the old
/// `POST /apps/{id}/deploy`). A `PORT` app without a port gets the lowest free one of
/// `ports`, kept from then on; the deployment records it.
///
/// Policy for a deploy while another is pending: a **queued** deployment is superseded
/// (cancelled, with `error_summary` naming the new one), since no runner has started it
/// and the newest request is what the user wants; a **running** one makes this a
/// `CONFLICT` naming it (cancel it first, or wait). Subscribers hear of every change once
/// it is committed.
///
/// `target` says what to build: the head of the repository's branch (the default), a given
/// commit or branch, or, for a rollback, an earlier successful deployment of the same app,
/// whose release (or image) the runner reuses, or whose recorded commit it rebuilds.
pub async fn deploy(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &EventBus,
    ports: PortRange,
    app_id: i64,
    target: Target,
) -> Result<(deployment::Model, app::Model), DomainError> {
    if let Some(commit) = &target.commit {
        check("commitSha", validation::commit_sha, commit)?;
    }
    if let Some(branch) = &target.branch {
        check("branch", validation::branch_name, branch)?;
    }
    let (_turn, txn) = begin_write(db).await?;
    let app = find_for_update(&txn, app_id, "appId").await?;
    let queued = queue(&txn, ports, app, target).await?;
    audit::commit(txn, audit, Object::App(app_id)).await?;
    queued.publish(events);
    Ok((queued.created, queued.app))
}

/// A deployment queued in a transaction: what to publish once it commits.
pub(crate) struct Queued {
    pub created: deployment::Model,
    pub app: app::Model,
    superseded: Vec<deployment::Model>,
    app_changed: bool,
}

impl Queued {
    pub(crate) fn publish(&self, events: &EventBus) {
        for deployment in &self.superseded {
            events.publish(Event::DeploymentUpdated(Arc::new(deployment.clone())));
        }
        events.publish(Event::DeploymentUpdated(Arc::new(self.created.clone())));
        if self.app_changed {
            events.publish(Event::AppUpdated(Arc::new(self.app.clone())));
        }
    }
}

/// What a new deployment builds (see [`deploy`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// A rollback: the earlier successful deployment whose release it reuses.
    pub rollback_of: Option<i64>,
    /// The commit to build (40 hex digits), instead of the branch's head.
    pub commit: Option<String>,
    /// The branch to build, instead of the repository's default.
    pub branch: Option<String>,
}

impl Target {
    /// The given commit of the repository's branch (a push).
    pub fn commit(sha: String) -> Self {
        Self {
            commit: Some(sha),
            ..Self::default()
        }
    }

    /// An earlier deployment's release.
    pub fn rollback(deployment_id: i64) -> Self {
        Self {
            rollback_of: Some(deployment_id),
            ..Self::default()
        }
    }
}

/// [`deploy`]'s work inside `txn`, for `app` (read for update).
pub(crate) async fn queue(
    txn: &DatabaseTransaction,
    ports: PortRange,
    app: app::Model,
    target: Target,
) -> Result<Queued, DomainError> {
    let app_id = app.id;
    let source = target.rollback_of;
    if let Some(source) = source {
        let earlier = Deployment::find_by_id(source).one(txn).await?;
        match earlier {
            Some(d) if d.app_id == app_id && d.status == DeploymentStatus::Success => {}
            Some(d) if d.app_id == app_id => {
                return Err(DomainError::Conflict {
                    field: Some("toDeploymentId"),
                    message: format!(
                        "deployment {source} is {}; only a successful deployment can be rolled back to",
                        d.status.to_value()
                    ),
                });
            }
            _ => {
                return Err(DomainError::NotFound {
                    entity: "deployment of this app",
                    field: "toDeploymentId",
                    id: source,
                });
            }
        }
    }
    let mut pending = Deployment::find()
        .filter(deployment::Column::AppId.eq(app.id))
        .filter(
            deployment::Column::Status.is_in([DeploymentStatus::Queued, DeploymentStatus::Running]),
        );
    if txn.get_database_backend() == DbBackend::Postgres {
        // A runner claiming one of them right now finishes first; we then see it running.
        pending = pending.lock_exclusive();
    }
    let pending = pending.all(txn).await?;
    if let Some(running) = pending
        .iter()
        .find(|d| d.status == DeploymentStatus::Running)
    {
        return Err(DomainError::Conflict {
            field: Some("appId"),
            message: format!(
                "app {} is deploying: deployment {} is running; cancel it or wait for it to end",
                app.name, running.id
            ),
        });
    }
    // The status to restore if this deployment is cancelled: what the app was before the
    // oldest of the deployments this one supersedes was queued.
    let queued_ids: Vec<i64> = pending.iter().map(|d| d.id).collect();
    let oldest_run = if queued_ids.is_empty() {
        None
    } else {
        DeploymentRun::find()
            .filter(deployment_run::Column::DeploymentId.is_in(queued_ids.clone()))
            .order_by_asc(deployment_run::Column::DeploymentId)
            .one(txn)
            .await?
    };
    let previous_status = match oldest_run.map_or(app.status, |run| run.previous_app_status) {
        AppStatus::Deploying => AppStatus::Draft,
        status => status,
    };
    let allocated = match (app.access_mode, app.current_port) {
        (AccessMode::Port, None) => Some(ports::allocate(txn, ports).await?),
        _ => None,
    };
    let port = match app.access_mode {
        AccessMode::Port => allocated.or(app.current_port),
        AccessMode::Host => None,
    };
    let now = Timestamp::now();
    let created = deployment::ActiveModel {
        app_id: Set(app_id),
        status: Set(DeploymentStatus::Queued),
        image_tag: Set(String::new()),
        assigned_port: Set(port),
        created_at: Set(now),
        started_at: Set(None),
        ended_at: Set(None),
        error_summary: Set(String::new()),
        logs_path: Set(String::new()),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    DeploymentRun::insert(deployment_run::ActiveModel {
        deployment_id: Set(created.id),
        attempts: Set(0),
        runner_name: Set(None),
        lease_expires_at: Set(None),
        heartbeat_at: Set(None),
        cancel_requested: Set(false),
        previous_app_status: Set(previous_status),
        commit_sha: Set(target.commit.clone()),
        pinned_commit: Set(target.commit),
        branch: Set(target.branch),
        stage: Set(None),
        source_deployment_id: Set(source),
        log_sequence: Set(0),
        log_lines: Set(0),
    })
    .exec_without_returning(txn)
    .await?;
    // Every superseded deployment in one statement (they are locked; their new state is
    // known without reading them back).
    let summary = format!("superseded by deployment {}", created.id);
    if !queued_ids.is_empty() {
        Deployment::update_many()
            .set(deployment::ActiveModel {
                status: Set(DeploymentStatus::Cancelled),
                ended_at: Set(Some(now)),
                error_summary: Set(summary.clone()),
                ..Default::default()
            })
            .filter(deployment::Column::Id.is_in(queued_ids))
            .exec(txn)
            .await?;
    }
    let superseded = pending
        .into_iter()
        .map(|mut queued| {
            queued.status = DeploymentStatus::Cancelled;
            queued.ended_at = Some(now);
            queued.error_summary = summary.clone();
            queued
        })
        .collect();
    // A redeploy over a queued deployment leaves the app as it is (still deploying).
    let app_changed = app.status != AppStatus::Deploying || allocated.is_some();
    let app = if app_changed {
        let mut active: app::ActiveModel = app.into();
        active.status = Set(AppStatus::Deploying);
        if allocated.is_some() {
            active.current_port = Set(allocated);
        }
        active.update(txn).await?
    } else {
        app
    };
    Ok(Queued {
        created,
        app,
        superseded,
        app_changed,
    })
}

/// For a config change on `app` (read for update in `txn`): queues a restart — a deployment
/// that runs the current release again, with the new config, through the same health check
/// and switch as a deploy — when the app is running. `None` otherwise: the change reaches
/// the app at its next deployment.
pub(crate) async fn queue_restart(
    txn: &DatabaseTransaction,
    ports: PortRange,
    app: app::Model,
) -> Result<Option<Queued>, DomainError> {
    if app.status != AppStatus::Running {
        return Ok(None);
    }
    let current = Deployment::find()
        .filter(deployment::Column::AppId.eq(app.id))
        .filter(deployment::Column::Status.eq(DeploymentStatus::Success))
        .order_by_desc(deployment::Column::CreatedAt)
        .order_by_desc(deployment::Column::Id)
        .one(txn)
        .await?;
    match current {
        Some(current) => Ok(Some(
            queue(txn, ports, app, Target::rollback(current.id)).await?,
        )),
        None => Ok(None),
    }
}

/// Stops a running app (`running → stopped`); any other state is a `CONFLICT` naming it.
/// The app keeps its port.
pub async fn stop(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &EventBus,
    app_id: i64,
) -> Result<app::Model, DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    let app = find_for_update(&txn, app_id, "id").await?;
    if app.status != AppStatus::Running {
        return Err(DomainError::Conflict {
            field: Some("id"),
            message: format!(
                "app {} is {}; only a running app can be stopped",
                app.name,
                app.status.to_value()
            ),
        });
    }
    let mut active: app::ActiveModel = app.into();
    active.status = Set(AppStatus::Stopped);
    let app = active.update(&txn).await?;
    audit::commit(txn, audit, Object::App(app.id)).await?;
    events.publish(Event::AppUpdated(Arc::new(app.clone())));
    Ok(app)
}

/// The app `id`, locked against concurrent changes until the transaction ends
/// (PostgreSQL `FOR UPDATE`; SQLite serializes writers anyway).
pub(crate) async fn find_for_update(
    txn: &impl ConnectionTrait,
    id: i64,
    field: &'static str,
) -> Result<app::Model, DomainError> {
    let mut query = App::find_by_id(id);
    if txn.get_database_backend() == DbBackend::Postgres {
        query = query.lock_exclusive();
    }
    query.one(txn).await?.ok_or(DomainError::NotFound {
        entity: "app",
        field,
        id,
    })
}

/// The log files of the deployments `query` selects (deleted with them, after the commit).
pub(crate) async fn log_paths(
    txn: &impl sea_orm::ConnectionTrait,
    query: sea_orm::Select<Deployment>,
) -> Result<Vec<String>, DomainError> {
    Ok(query
        .select_only()
        .column(deployment::Column::LogsPath)
        .into_tuple()
        .all(txn)
        .await?)
}

/// The runners `apps` are placed on (read before they are deleted, for the event).
pub(crate) async fn placements(
    txn: &impl ConnectionTrait,
    apps: Vec<i64>,
) -> Result<Vec<(i64, Option<String>)>, DomainError> {
    let placed: std::collections::HashMap<i64, String> = AppPlacement::find()
        .filter(app_placement::Column::AppId.is_in(apps.clone()))
        .all(txn)
        .await?
        .into_iter()
        .map(|p| (p.app_id, p.runner_name))
        .collect();
    Ok(apps
        .into_iter()
        .map(|id| (id, placed.get(&id).cloned()))
        .collect())
}

/// Tells subscribers (runners among them) that these apps are gone.
pub(crate) fn publish_deleted(events: &EventBus, apps: Vec<(i64, Option<String>)>) {
    for (app_id, runner) in apps {
        events.publish(Event::AppDeleted {
            app_id,
            runner: runner.map(Arc::from),
        });
    }
}
