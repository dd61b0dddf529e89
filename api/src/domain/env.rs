//! Config vars: per-app environment variables that reach the app's build, release and web
//! processes. Values are write-only: they are sealed before they are stored
//! ([`super::secrets`]), the API lists only names and when they changed, and only a runner
//! receives values, in the job of a deployment it claimed. A change restarts a running app
//! with the new values (as Dokku's `config:set` does): a deployment that runs its current
//! release again, with the same health check and zero-downtime switch as a deploy, queued in
//! the change's transaction; without a restart (or when the app is not running), the change
//! reaches the app at its next deployment.

use std::collections::HashMap;

use entity::Timestamp;
use entity::prelude::*;
use entity::{app_env, app_settings};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};

use entity::deployment;
use sea_orm::DatabaseTransaction;

use super::apps;
use super::audit::{self, Audit, Object};
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

/// The most variables one change may name.
pub const MAX_CHANGED: usize = 100;

/// What one change to an app's config vars did.
pub struct Changed {
    /// When the variables set were set.
    pub at: Timestamp,
    /// The names unset that were set.
    pub removed: Vec<String>,
    /// The restart queued (when the app runs, a restart was wanted, and something changed).
    pub restart: Option<deployment::Model>,
}

/// Sets the `set` variables and removes the `unset` ones, in one transaction: all of them or
/// none, and at most one restart, with every new value.
pub async fn change(
    db: &sea_orm::DatabaseConnection,
    audit: &Audit,
    secrets: &SecretBox,
    app_id: i64,
    set: &[(String, String)],
    unset: &[String],
    restart: Restart<'_>,
) -> Result<Changed, DomainError> {
    if set.len() + unset.len() > MAX_CHANGED {
        return Err(DomainError::Invalid {
            field: "set",
            reason: format!("at most {MAX_CHANGED} variables per change"),
        });
    }
    let mut named = std::collections::HashSet::new();
    let mut sealed = Vec::with_capacity(set.len());
    for (name, value) in set {
        check("name", validation::env_name, name)?;
        validation::env_value(value).map_err(|reason| DomainError::Invalid {
            field: "value",
            reason: format!("{name}: {reason}"),
        })?;
        sealed.push((name, secrets.seal(app_id, name, value)?));
        named.insert(name.as_str());
    }
    for name in unset {
        if !named.insert(name.as_str()) {
            return Err(DomainError::Invalid {
                field: "unset",
                reason: format!("{name} is named twice"),
            });
        }
    }
    if named.len() < set.len() {
        return Err(DomainError::Invalid {
            field: "set",
            reason: "a variable is named twice".to_owned(),
        });
    }
    let at = Timestamp::now();
    let (_turn, txn) = begin_write(db).await?;
    let app = apps::find_for_update(&txn, app_id, "appId").await?;
    for (name, sealed) in sealed {
        let existing = AppEnv::find_by_id((app_id, name.clone())).one(&txn).await?;
        match existing {
            Some(row) => {
                let mut row: app_env::ActiveModel = row.into();
                row.sealed = Set(sealed);
                row.updated_at = Set(at);
                row.update(&txn).await?;
            }
            None => {
                AppEnv::insert(app_env::ActiveModel {
                    app_id: Set(app_id),
                    name: Set(name.clone()),
                    sealed: Set(sealed),
                    updated_at: Set(at),
                })
                .exec_without_returning(&txn)
                .await?;
            }
        }
    }
    let mut removed = Vec::new();
    for name in unset {
        let gone = AppEnv::delete_by_id((app_id, name.clone()))
            .exec(&txn)
            .await?
            .rows_affected
            > 0;
        if gone {
            removed.push(name.clone());
        }
    }
    let queued = if set.is_empty() && removed.is_empty() {
        None
    } else {
        restart_in(&txn, restart, app).await?
    };
    audit::commit(txn, audit, Object::App(app_id)).await?;
    Ok(Changed {
        at,
        removed,
        restart: published(queued, restart.events),
    })
}

/// Sets `name` to `value` for the app; returns when it was set, and the restart queued.
pub async fn set(
    db: &sea_orm::DatabaseConnection,
    audit: &Audit,
    secrets: &SecretBox,
    app_id: i64,
    name: &str,
    value: &str,
    restart: Restart<'_>,
) -> Result<(Timestamp, Option<deployment::Model>), DomainError> {
    let set = [(name.to_owned(), value.to_owned())];
    let changed = change(db, audit, secrets, app_id, &set, &[], restart).await?;
    Ok((changed.at, changed.restart))
}

/// Removes `name` from the app; whether it was set, and the restart queued (only when it
/// was).
pub async fn unset(
    db: &sea_orm::DatabaseConnection,
    audit: &Audit,
    secrets: &SecretBox,
    app_id: i64,
    name: &str,
    restart: Restart<'_>,
) -> Result<(bool, Option<deployment::Model>), DomainError> {
    let unset = [name.to_owned()];
    let changed = change(db, audit, secrets, app_id, &[], &unset, restart).await?;
    Ok((!changed.removed.is_empty(), changed.restart))
}

/// Publishes what `queued` changed (after its transaction committed); its deployment.
fn published(queued: Option<apps::Queued>, events: &EventBus) -> Option<deployment::Model> {
    queued.map(|queued| {
        queued.publish(events);
        queued.created
    })
}

/// What a runner needs of an app's configuration to run it.
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    /// Its variables with their values, by name.
    pub env: Vec<(String, String)>,
    /// What its health check requests.
    pub health_check_path: String,
}

/// The run configuration of each of `app_ids`, in two statements however many apps (inside
/// the caller's transaction when it has one). Every app asked for is in the map.
pub async fn run_configs(
    db: &impl ConnectionTrait,
    secrets: &SecretBox,
    app_ids: &[i64],
) -> Result<HashMap<i64, RunConfig>, DomainError> {
    let mut configs: HashMap<i64, RunConfig> = app_ids
        .iter()
        .map(|&id| {
            let config = RunConfig {
                env: Vec::new(),
                health_check_path: apps::DEFAULT_HEALTH_CHECK_PATH.to_owned(),
            };
            (id, config)
        })
        .collect();
    let rows = AppEnv::find()
        .filter(app_env::Column::AppId.is_in(app_ids.iter().copied()))
        .order_by_asc(app_env::Column::AppId)
        .order_by_asc(app_env::Column::Name)
        .all(db)
        .await?;
    for row in rows {
        let value = secrets.open(row.app_id, &row.name, &row.sealed)?;
        if let Some(config) = configs.get_mut(&row.app_id) {
            config.env.push((row.name, value));
        }
    }
    let settings = AppSettings::find()
        .filter(app_settings::Column::AppId.is_in(app_ids.iter().copied()))
        .all(db)
        .await?;
    for settings in settings {
        if let (Some(config), Some(path)) = (
            configs.get_mut(&settings.app_id),
            settings.health_check_path,
        ) {
            config.health_check_path = path;
        }
    }
    Ok(configs)
}
