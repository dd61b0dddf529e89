//! Config vars: per-app environment variables that reach the app's build, release and web
//! processes. Values are write-only: they are sealed before they are stored
//! ([`super::secrets`]), the API lists only names and when they changed, and only a runner
//! receives values, in the job of a deployment it claimed. A change restarts a running app
//! with the new values (as Dokku's `config:set` does): a deployment that runs its current
//! release again, with the same health check and zero-downtime switch as a deploy, queued in
//! the change's transaction; without a restart (or when the app is not running), the change
//! reaches the app at its next deployment.

use entity::Timestamp;
use entity::app_env;
use entity::prelude::*;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};

use entity::deployment;
use sea_orm::DatabaseTransaction;

use super::apps;
use super::audit::{self, Object};
use super::events::EventBus;
use super::ports::PortRange;
use super::secrets::SecretBox;
use super::{DomainError, begin_write, check, validation};

/// What a config change restarts.
#[derive(Clone, Copy)]
pub struct Restart<'a> {
    /// Restart a running app (the default).
    pub wanted: bool,
    pub events: &'a EventBus,
    pub ports: PortRange,
}

/// Queues the restart `restart` asks for, in `txn`, once the change is written.
async fn restart_in(
    txn: &DatabaseTransaction,
    restart: Restart<'_>,
    app: entity::app::Model,
) -> Result<Option<apps::Queued>, DomainError> {
    if !restart.wanted {
        return Ok(None);
    }
    apps::queue_restart(txn, restart.ports, app).await
}

/// Sets `name` to `value` for the app; returns when it was set, and the restart queued.
pub async fn set(
    db: &sea_orm::DatabaseConnection,
    secrets: &SecretBox,
    app_id: i64,
    name: &str,
    value: &str,
    restart: Restart<'_>,
) -> Result<(Timestamp, Option<deployment::Model>), DomainError> {
    check("name", validation::env_name, name)?;
    check("value", validation::env_value, value)?;
    let sealed = secrets.seal(app_id, name, value)?;
    let now = Timestamp::now();
    let (_turn, txn) = begin_write(db).await?;
    let app = apps::find_for_update(&txn, app_id, "appId").await?;
    let existing = AppEnv::find_by_id((app_id, name.to_owned()))
        .one(&txn)
        .await?;
    match existing {
        Some(row) => {
            let mut row: app_env::ActiveModel = row.into();
            row.sealed = Set(sealed);
            row.updated_at = Set(now);
            row.update(&txn).await?;
        }
        None => {
            AppEnv::insert(app_env::ActiveModel {
                app_id: Set(app_id),
                name: Set(name.to_owned()),
                sealed: Set(sealed),
                updated_at: Set(now),
            })
            .exec_without_returning(&txn)
            .await?;
        }
    }
    let queued = restart_in(&txn, restart, app).await?;
    audit::commit(txn, Object::App(app_id)).await?;
    Ok((now, published(queued, restart.events)))
}

/// Removes `name` from the app; whether it was set, and the restart queued (only when it
/// was).
pub async fn unset(
    db: &sea_orm::DatabaseConnection,
    app_id: i64,
    name: &str,
    restart: Restart<'_>,
) -> Result<(bool, Option<deployment::Model>), DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    let app = apps::find_for_update(&txn, app_id, "appId").await?;
    let removed = AppEnv::delete_by_id((app_id, name.to_owned()))
        .exec(&txn)
        .await?
        .rows_affected
        > 0;
    let queued = if removed {
        restart_in(&txn, restart, app).await?
    } else {
        None
    };
    audit::commit(txn, Object::App(app_id)).await?;
    Ok((removed, published(queued, restart.events)))
}

/// Publishes what `queued` changed (after its transaction committed); its deployment.
fn published(queued: Option<apps::Queued>, events: &EventBus) -> Option<deployment::Model> {
    queued.map(|queued| {
        queued.publish(events);
        queued.created
    })
}

/// The app's variable names and when each was set, by name.
pub async fn names(
    db: &impl ConnectionTrait,
    app_id: i64,
) -> Result<Vec<(String, Timestamp)>, DomainError> {
    Ok(AppEnv::find()
        .filter(app_env::Column::AppId.eq(app_id))
        .order_by_asc(app_env::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(|row| (row.name, row.updated_at))
        .collect())
}

/// The app's variables with their values (for the runner that deploys it), by name.
pub async fn values(
    db: &impl ConnectionTrait,
    secrets: &SecretBox,
    app_id: i64,
) -> Result<Vec<(String, String)>, DomainError> {
    AppEnv::find()
        .filter(app_env::Column::AppId.eq(app_id))
        .order_by_asc(app_env::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(|row| {
            let value = secrets.open(app_id, &row.name, &row.sealed)?;
            Ok((row.name, value))
        })
        .collect()
}
