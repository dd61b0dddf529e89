//! `keystone verify`: the successor of Django Keystone's `verify_migrations.py`. Each check
//! prints one line; any failure makes the command exit non-zero and says what differs.
//!
//! By default it works on a scratch database of the configured backend (an in-memory SQLite
//! database, or a temporary PostgreSQL schema), so every check can run, including the
//! destructive round trip. With `--in-place` it checks the configured database itself and
//! only runs what cannot change it (row checks run in a transaction that is rolled back; on
//! PostgreSQL that still advances each table's id sequence by one, as sequences are not
//! transactional).

use std::collections::HashMap;
use std::io::Write;

use entity::prelude::*;
use entity::{app, deployment, repository};
use migration::introspect::{
    self, ColumnShape, Compare, FkAction, ForeignKeyShape, SchemaShape, SqlType, TableShape,
};
use migration::{Migrator, MigratorTrait, connection, history};

use crate::store;
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    IdenStatic, Iterable, ModelTrait, PaginatorTrait, PrimaryKeyToColumn, QueryFilter,
    RelationTrait, RelationType, Set, TransactionTrait,
};

/// The result of one check: `Ok(detail)` or `Err(what is wrong)`.
type Outcome = Result<String, String>;

/// Runs every check against a scratch database like `url` (or `url` itself when
/// `in_place`), printing one line per check. Returns whether all passed.
pub async fn verify(url: &str, in_place: bool, out: &mut impl Write) -> Result<bool, DbErr> {
    let scratch = if in_place {
        None
    } else {
        Some(connection::Scratch::new(url).await?)
    };
    let target = scratch.as_ref().map_or(url, |s| s.url.as_str());
    let db = connection::connect_for_migrations(target).await?;
    let passed = run_checks(&db, target, in_place, out).await;
    db.close().await?;
    if let Some(scratch) = scratch {
        scratch.remove().await?;
    }
    Ok(passed)
}

async fn run_checks(
    db: &DatabaseConnection,
    url: &str,
    in_place: bool,
    out: &mut impl Write,
) -> bool {
    let mut report = |name: &str, outcome: &Outcome| {
        let _ = match outcome {
            Ok(detail) => writeln!(out, "[ok]   {name}: {detail}"),
            Err(problem) => writeln!(out, "[FAIL] {name}: {problem}"),
        };
        outcome.is_ok()
    };

    let migrated = if in_place {
        report("migrations are all applied", &all_applied(db).await)
    } else {
        report(
            "migrations exist and apply from an empty database",
            &apply_from_empty(db, url).await,
        )
    };
    if !migrated {
        return false;
    }
    let mut passed = report("entities match the migrated schema", &no_drift(db).await);
    passed &= report(
        "rows: defaults, relations both ways, cascading delete",
        &rows_and_relations(db).await,
    );
    passed &= report(
        "deployment counts agree with the deployments",
        &counts_agree(db).await,
    );
    if in_place {
        let _ = writeln!(
            out,
            "[skip] every migration rolls back and re-applies: destructive, runs only on a scratch database (omit --in-place)"
        );
    } else {
        passed &= report(
            "every migration rolls back and re-applies",
            &round_trip(db).await,
        );
    }
    passed
}

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

async fn all_applied(db: &DatabaseConnection) -> Outcome {
    let history = history::read(db).await.map_err(failed)?;
    history.ensure_known().map_err(failed)?;
    let pending: Vec<&str> = history.pending().collect();
    if pending.is_empty() {
        Ok(format!("{} applied", history.known.len()))
    } else {
        Err(format!(
            "pending: {} (run `keystone migrate up`)",
            pending.join(", ")
        ))
    }
}

async fn apply_from_empty(db: &DatabaseConnection, url: &str) -> Outcome {
    let known = Migrator::migrations().len();
    if known == 0 {
        return Err("there are no migrations".into());
    }
    let upgrade = migration::upgrade(db, url, None).await.map_err(failed)?;
    if upgrade.applied.len() != known {
        return Err(format!(
            "applied {} of {known} migrations",
            upgrade.applied.len()
        ));
    }
    Ok(format!("applied {known}: {}", upgrade.applied.join(", ")))
}

async fn no_drift(db: &DatabaseConnection) -> Outcome {
    let migrated = introspect::discover(db).await.map_err(failed)?;
    let described = entity_shape(db.get_database_backend());
    // Entities do not declare indexes; those are checked by the adoption comparison.
    let compare = Compare {
        indexes: false,
        ..Compare::EVERYTHING
    };
    let differences = introspect::differences(
        &described,
        &migrated,
        "entities",
        "migrated schema",
        compare,
    );
    if differences.is_empty() {
        Ok(format!(
            "{} tables agree ({})",
            described.tables.len(),
            described
                .tables
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        Err(format!("\n  - {}", differences.join("\n  - ")))
    }
}

/// The schema the entities describe, as `backend` would store it.
pub fn entity_shape(backend: DbBackend) -> SchemaShape {
    SchemaShape {
        backend,
        tables: [
            table_shape(Repository, backend),
            table_shape(App, backend),
            table_shape(Deployment, backend),
            table_shape(ApiToken, backend),
            table_shape(AuditEvent, backend),
            table_shape(DeploymentRun, backend),
            table_shape(AppPlacement, backend),
            table_shape(AppEnv, backend),
            table_shape(AppSettings, backend),
            table_shape(AppWebhook, backend),
            table_shape(WebhookDelivery, backend),
            table_shape(TrustedDocument, backend),
            table_shape(DeploymentStatusCount, backend),
        ]
        .into_iter()
        .collect(),
    }
}

fn table_shape<E: EntityTrait>(entity: E, backend: DbBackend) -> (String, TableShape) {
    let mut shape = TableShape::default();
    for column in E::Column::iter() {
        let def = column.def();
        shape.columns.insert(
            column.as_str().to_owned(),
            ColumnShape {
                ty: SqlType::from_column_type(def.get_column_type(), backend),
                nullable: def.is_null(),
                has_default: def.get_column_default().is_some(),
            },
        );
        if def.is_unique() {
            shape.uniques.insert(vec![column.as_str().to_owned()]);
        }
    }
    shape.primary_key = E::PrimaryKey::iter()
        .map(|key| key.into_column().as_str().to_owned())
        .collect();
    for relation in E::Relation::iter() {
        let def = relation.def();
        // `belongs_to` is a `HasOne` built from the side that holds the foreign key, which
        // SeaORM marks `is_owner: false`.
        if def.rel_type != RelationType::HasOne || def.is_owner || def.skip_fk {
            continue;
        }
        let names = |identity: &sea_orm::Identity| identity.iter().map(|c| c.to_string()).collect();
        let ref_table = match &def.to_tbl {
            sea_orm::sea_query::TableRef::Table(name, _) => name.1.to_string(),
            other => format!("{other:?}"),
        };
        shape.foreign_keys.insert(ForeignKeyShape {
            columns: names(&def.from_col),
            ref_table,
            ref_columns: names(&def.to_col),
            on_delete: FkAction::from_declared(def.on_delete),
        });
    }
    (entity.table_name().to_owned(), shape)
}

/// The per-status counts the triggers keep (`api_deployment_status_count`, migration 10),
/// which `totalCount` reads, against the deployments themselves. They differ only when
/// something bypassed the triggers: PostgreSQL's `TRUNCATE`, or triggers dropped by hand.
async fn counts_agree(db: &DatabaseConnection) -> Outcome {
    let kept: HashMap<DeploymentStatus, i64> = store::kept_deployment_counts(db, None)
        .await
        .map_err(failed)?
        .into_iter()
        .filter(|&(_, n)| n != 0)
        .collect();
    let counted: HashMap<DeploymentStatus, i64> = store::deployments_by_status(db)
        .await
        .map_err(failed)?
        .into_iter()
        .collect();
    if kept == counted {
        return Ok(format!(
            "{} deployments in {} statuses",
            counted.values().sum::<i64>(),
            counted.len()
        ));
    }
    let differences = DeploymentStatus::iter()
        .filter_map(|status| {
            let (k, c) = (
                kept.get(&status).copied().unwrap_or(0),
                counted.get(&status).copied().unwrap_or(0),
            );
            (k != c).then(|| format!("{}: counted {k}, there are {c}", status.to_value()))
        })
        .collect::<Vec<_>>();
    Err(format!(
        "{}; `totalCount` filtered by status is wrong until they are rebuilt \
         (README, \"keystone verify\")",
        differences.join(", ")
    ))
}

/// Creates a repository, an app and a deployment leaving every defaulted column to the
/// database, follows each relation both ways, deletes the repository and expects its apps
/// and deployments gone. All in one transaction that is rolled back.
async fn rows_and_relations(db: &DatabaseConnection) -> Outcome {
    let txn = db.begin().await.map_err(failed)?;
    let result = async {
        let repo = repository::ActiveModel {
            name: Set("verify".into()),
            git_url: Set("https://example.invalid/verify.git".into()),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        let app = app::ActiveModel {
            name: Set("keystone-verify".into()),
            repo_id: Set(repo.id),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        let deployment = deployment::ActiveModel {
            app_id: Set(app.id),
            ..Default::default()
        }
        .insert(&txn)
        .await?;

        let mut problems = Vec::new();
        if repo.default_branch != "main" {
            problems.push(format!("default_branch defaulted to {:?}", repo.default_branch));
        }
        if app.access_mode != AccessMode::Port || app.status != AppStatus::Draft {
            problems.push(format!(
                "app defaulted to {:?}/{:?}, expected Port/Draft",
                app.access_mode, app.status
            ));
        }
        if deployment.status != DeploymentStatus::Queued
            || !deployment.image_tag.is_empty()
            || !deployment.error_summary.is_empty()
            || !deployment.logs_path.is_empty()
        {
            problems.push(format!("deployment defaults wrong: {deployment:?}"));
        }
        let apps = repo.find_related(App).all(&txn).await?;
        if apps != [app.clone()] {
            problems.push(format!("repository's apps: {apps:?}"));
        }
        let deployments = app.find_related(Deployment).all(&txn).await?;
        if deployments != [deployment.clone()] {
            problems.push(format!("app's deployments: {deployments:?}"));
        }
        if app.find_related(Repository).one(&txn).await?.as_ref() != Some(&repo) {
            problems.push("app's repository not found".into());
        }
        if deployment.find_related(App).one(&txn).await?.as_ref() != Some(&app) {
            problems.push("deployment's app not found".into());
        }
        Repository::delete_by_id(repo.id).exec(&txn).await?;
        let left_apps = App::find()
            .filter(app::Column::Id.eq(app.id))
            .count(&txn)
            .await?;
        let left_deployments = Deployment::find()
            .filter(deployment::Column::Id.eq(deployment.id))
            .count(&txn)
            .await?;
        if left_apps + left_deployments != 0 {
            problems.push(format!(
                "deleting the repository left {left_apps} app(s) and {left_deployments} deployment(s)"
            ));
        }
        Ok::<_, DbErr>(problems)
    }
    .await;
    let _ = txn.rollback().await;
    match result {
        Ok(problems) if problems.is_empty() => Ok("created, related and cascade-deleted".into()),
        Ok(problems) => Err(problems.join("; ")),
        Err(error) => Err(failed(error)),
    }
}

/// For k = 1..=n: roll back the newest k migrations, re-apply, and expect the schema to be
/// exactly what it was.
async fn round_trip(db: &DatabaseConnection) -> Outcome {
    let original = introspect::discover(db).await.map_err(failed)?;
    let count = Migrator::migrations().len() as u32;
    for steps in 1..=count {
        Migrator::down(db, Some(steps))
            .await
            .map_err(|e| format!("rolling back {steps}: {e}"))?;
        let applied = history::read(db).await.map_err(failed)?.applied_count();
        if applied != (count - steps) as usize {
            return Err(format!(
                "after rolling back {steps}, {applied} remain applied"
            ));
        }
        Migrator::up(db, None)
            .await
            .map_err(|e| format!("re-applying after rolling back {steps}: {e}"))?;
        let again = introspect::discover(db).await.map_err(failed)?;
        let differences =
            introspect::differences(&original, &again, "before", "after", Compare::EVERYTHING);
        if !differences.is_empty() {
            return Err(format!(
                "schema changed after rolling back {steps} and re-applying:\n  - {}",
                differences.join("\n  - ")
            ));
        }
    }
    Ok(format!(
        "{count} migration(s) rolled back and re-applied; schema identical"
    ))
}
