//! Creating, changing and deleting repositories.

use entity::deployment::DeploymentStatus;
use entity::prelude::*;
use entity::{app, deployment, repository};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QuerySelect, QueryTrait, Set,
};

use super::audit::{self, Audit, Object};
use super::logs::LogStore;
use super::validation::GitHosts;
use super::{DomainError, begin_write, check, validation};

pub struct NewRepository {
    pub name: String,
    pub git_url: String,
    /// `main` when not given.
    pub default_branch: Option<String>,
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Default)]
pub struct RepositoryChanges {
    pub name: Option<String>,
    pub git_url: Option<String>,
    pub default_branch: Option<String>,
}

pub async fn create(
    db: &DatabaseConnection,
    audit: &Audit,
    new: NewRepository,
    hosts: GitHosts,
) -> Result<repository::Model, DomainError> {
    check("name", validation::repository_name, &new.name)?;
    check(
        "gitUrl",
        |url| validation::git_url(url, hosts),
        &new.git_url,
    )?;
    let branch = new.default_branch.unwrap_or_else(|| "main".to_owned());
    check("defaultBranch", validation::branch_name, &branch)?;
    let (_turn, txn) = begin_write(db).await?;
    let created = repository::ActiveModel {
        name: Set(new.name),
        git_url: Set(new.git_url),
        default_branch: Set(branch),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    audit::commit(txn, audit, Object::Repository(created.id)).await?;
    Ok(created)
}

pub async fn update(
    db: &DatabaseConnection,
    audit: &Audit,
    id: i64,
    changes: RepositoryChanges,
    hosts: GitHosts,
) -> Result<repository::Model, DomainError> {
    if let Some(name) = &changes.name {
        check("name", validation::repository_name, name)?;
    }
    if let Some(url) = &changes.git_url {
        check("gitUrl", |url| validation::git_url(url, hosts), url)?;
    }
    if let Some(branch) = &changes.default_branch {
        check("defaultBranch", validation::branch_name, branch)?;
    }
    let (_turn, txn) = begin_write(db).await?;
    let mut active: repository::ActiveModel = find(&txn, id, "id").await?.into();
    if let Some(name) = changes.name {
        active.name = Set(name);
    }
    if let Some(url) = changes.git_url {
        active.git_url = Set(url);
    }
    if let Some(branch) = changes.default_branch {
        active.default_branch = Set(branch);
    }
    let updated = active.update(&txn).await?;
    audit::commit(txn, audit, Object::Repository(updated.id)).await?;
    Ok(updated)
}

/// What a delete removed.
pub struct DeletedRepository {
    pub id: i64,
    pub apps: u64,
    pub deployments: u64,
}

/// Deletes a repository with its apps and their deployments (the database cascades),
/// refused while any of those deployments is running.
pub async fn delete(
    db: &DatabaseConnection,
    audit: &Audit,
    events: &super::events::EventBus,
    logs: &LogStore,
    id: i64,
) -> Result<DeletedRepository, DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    find(&txn, id, "id").await?;
    let app_ids = App::find()
        .select_only()
        .column(app::Column::Id)
        .filter(app::Column::RepoId.eq(id));
    let deployments_of_repo = || {
        Deployment::find()
            .filter(deployment::Column::AppId.in_subquery(app_ids.clone().into_query()))
    };
    let running = deployments_of_repo()
        .filter(deployment::Column::Status.eq(DeploymentStatus::Running))
        .count(&txn)
        .await?;
    if running > 0 {
        return Err(DomainError::Conflict {
            field: Some("id"),
            message: format!(
                "repository {id} has {running} running deployment(s); wait for them to finish or cancel them first"
            ),
        });
    }
    let deployments = deployments_of_repo().count(&txn).await?;
    let apps = App::find()
        .filter(app::Column::RepoId.eq(id))
        .count(&txn)
        .await?;
    let log_files = super::apps::log_paths(&txn, deployments_of_repo()).await?;
    let app_ids: Vec<i64> = app_ids.into_tuple().all(&txn).await?;
    let placed = super::apps::placements(&txn, app_ids).await?;
    Repository::delete_by_id(id).exec(&txn).await?;
    audit::commit(txn, audit, Object::Repository(id)).await?;
    super::apps::publish_deleted(events, placed);
    logs.remove(log_files).await;
    Ok(DeletedRepository {
        id,
        apps,
        deployments,
    })
}

/// The repository `id`, or `NotFound` on the input `field` that named it.
pub(crate) async fn find(
    db: &impl ConnectionTrait,
    id: i64,
    field: &'static str,
) -> Result<repository::Model, DomainError> {
    Repository::find_by_id(id)
        .one(db)
        .await?
        .ok_or(DomainError::NotFound {
            entity: "repository",
            field,
            id,
        })
}
