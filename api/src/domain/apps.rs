//! Creating, changing, deleting and deploying apps.

use std::sync::Arc;

use entity::Timestamp;
use entity::app::{AccessMode, AppStatus};
use entity::deployment::DeploymentStatus;
use entity::prelude::*;
use entity::{app, deployment};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QuerySelect, Set,
};

use super::events::{Event, EventBus};
use super::{DomainError, begin_write, check, repositories, validation};

pub struct NewApp {
    pub name: String,
    pub repo_id: i64,
    /// `PORT` when not given.
    pub access_mode: Option<AccessMode>,
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Default)]
pub struct AppChanges {
    pub name: Option<String>,
    pub repo_id: Option<i64>,
    pub access_mode: Option<AccessMode>,
}

pub async fn create(db: &DatabaseConnection, new: NewApp) -> Result<app::Model, DomainError> {
    check("name", validation::app_name, &new.name)?;
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
    txn.commit().await?;
    Ok(created)
}

/// Applies `changes`. Switching an app to `HOST` access releases its port.
pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    changes: AppChanges,
) -> Result<app::Model, DomainError> {
    if let Some(name) = &changes.name {
        check("name", validation::app_name, name)?;
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
    txn.commit().await?;
    Ok(updated)
}

/// Deletes an app and its deployments, refused while one of them is running.
pub async fn delete(db: &DatabaseConnection, id: i64) -> Result<i64, DomainError> {
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
    App::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(id)
}

/// Queues a deployment of the app and marks the app `deploying` (the old
/// `POST /apps/{id}/deploy`). The deployment takes the app's current port, if any.
/// Subscribers hear of the new deployment once it is committed.
pub async fn deploy(
    db: &DatabaseConnection,
    events: &EventBus,
    app_id: i64,
) -> Result<(deployment::Model, app::Model), DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    let app = find_for_update(&txn, app_id, "appId").await?;
    let deployment = deployment::ActiveModel {
        app_id: Set(app.id),
        status: Set(DeploymentStatus::Queued),
        image_tag: Set(String::new()),
        assigned_port: Set(app.current_port),
        created_at: Set(Timestamp::now()),
        started_at: Set(None),
        ended_at: Set(None),
        error_summary: Set(String::new()),
        logs_path: Set(String::new()),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let mut active: app::ActiveModel = app.into();
    active.status = Set(AppStatus::Deploying);
    let app = active.update(&txn).await?;
    txn.commit().await?;
    events.publish(Event::DeploymentUpdated(Arc::new(deployment.clone())));
    Ok((deployment, app))
}

/// The app `id`, locked against concurrent changes until the transaction ends
/// (PostgreSQL `FOR UPDATE`; SQLite serializes writers anyway).
async fn find_for_update(
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
