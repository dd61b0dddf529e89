//! Config vars: per-app environment variables that reach the app's build, release and web
//! processes. Values are write-only: they are sealed before they are stored
//! ([`super::secrets`]), the API lists only names and when they changed, and only a runner
//! receives values, in the job of a deployment it claimed. A change takes effect at the
//! app's next deployment.

use entity::Timestamp;
use entity::app_env;
use entity::prelude::*;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};

use super::audit::{self, Object};
use super::secrets::SecretBox;
use super::{DomainError, begin_write, check, validation};

async fn app_exists(db: &impl ConnectionTrait, app_id: i64) -> Result<(), DomainError> {
    App::find_by_id(app_id)
        .one(db)
        .await?
        .map(|_| ())
        .ok_or(DomainError::NotFound {
            entity: "app",
            field: "appId",
            id: app_id,
        })
}

/// Sets `name` to `value` for the app; returns when it was set.
pub async fn set(
    db: &sea_orm::DatabaseConnection,
    secrets: &SecretBox,
    app_id: i64,
    name: &str,
    value: &str,
) -> Result<Timestamp, DomainError> {
    check("name", validation::env_name, name)?;
    check("value", validation::env_value, value)?;
    let sealed = secrets.seal(app_id, name, value)?;
    let now = Timestamp::now();
    let (_turn, txn) = begin_write(db).await?;
    app_exists(&txn, app_id).await?;
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
    audit::commit(txn, Object::App(app_id)).await?;
    Ok(now)
}

/// Removes `name` from the app; whether it was set.
pub async fn unset(
    db: &sea_orm::DatabaseConnection,
    app_id: i64,
    name: &str,
) -> Result<bool, DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    app_exists(&txn, app_id).await?;
    let removed = AppEnv::delete_by_id((app_id, name.to_owned()))
        .exec(&txn)
        .await?
        .rows_affected
        > 0;
    audit::commit(txn, Object::App(app_id)).await?;
    Ok(removed)
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
