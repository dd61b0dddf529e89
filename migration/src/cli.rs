//! The migration commands, shared by `keystone migrate …` and `cargo run -p migration -- …`
//! so both behave the same, including adoption of Django databases and the refusal to touch
//! a database migrated by a newer Keystone.

use std::io::Write;

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::DatabaseConnection;

use crate::{MigrateError, Migrator, connection, history, upgrade};

#[derive(Clone, Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// List every migration: [X] applied, [ ] pending (like Django's showmigrations).
    Status {
        /// Exit non-zero when a migration is pending or the database has one this binary
        /// does not know (a gate for CI and deploy scripts).
        #[arg(long)]
        check: bool,
    },
    /// Apply pending migrations (all, or the next N). A database created by the Django
    /// version of Keystone is checked and adopted first.
    Up {
        /// How many pending migrations to apply (default: all).
        steps: Option<u32>,
    },
    /// Roll back the last N applied migrations (default 1). Rolling back the initial
    /// migration drops Keystone's tables and their data.
    Down {
        #[arg(default_value_t = 1)]
        steps: u32,
    },
    /// Drop every table in the database (not only Keystone's), then apply all migrations.
    Fresh,
    /// Roll back all applied migrations, then apply them again.
    Refresh,
    /// Roll back all applied migrations.
    Reset,
}

/// Runs `command` against the database at `url`, writing a report to `out`.
pub async fn run(
    url: &str,
    command: &MigrateCommand,
    out: &mut impl Write,
) -> Result<(), MigrateError> {
    let db = connection::connect_for_migrations(url).await?;
    let result = run_on(&db, url, command, out).await;
    db.close().await?;
    result
}

async fn run_on(
    db: &DatabaseConnection,
    url: &str,
    command: &MigrateCommand,
    out: &mut impl Write,
) -> Result<(), MigrateError> {
    let before = history::read(db).await?;
    if !matches!(command, MigrateCommand::Status { .. }) {
        before.ensure_known()?;
    }
    match command {
        MigrateCommand::Status { check } => {
            print_status(&before, out);
            if !before.unknown.is_empty() {
                let _ = writeln!(
                    out,
                    "The database is newer than this binary: upgrade Keystone before serving it."
                );
            }
            if *check {
                before.ensure_known()?;
                let pending: Vec<String> = before.pending().map(str::to_owned).collect();
                if !pending.is_empty() {
                    return Err(MigrateError::Pending(pending));
                }
            }
        }
        MigrateCommand::Up { steps } => {
            let upgrade = upgrade(db, url, *steps).await?;
            if let Some(adoption) = &upgrade.adopted {
                let rows: Vec<String> = adoption
                    .rows
                    .iter()
                    .map(|(table, n)| format!("{table}: {n} rows"))
                    .collect();
                let _ = writeln!(
                    out,
                    "Adopted the Django-created database ({}); recorded {} as applied.",
                    rows.join(", "),
                    crate::INITIAL_MIGRATION
                );
            }
            report(out, "Applied", &upgrade.applied);
        }
        MigrateCommand::Down { steps } => {
            Migrator::down(db, Some(*steps)).await?;
            report(
                out,
                "Rolled back",
                &changed(&before, &history::read(db).await?),
            );
        }
        MigrateCommand::Fresh => {
            Migrator::fresh(db).await?;
            let _ = writeln!(out, "Dropped all tables.");
            report(out, "Applied", &applied_names(&history::read(db).await?));
        }
        MigrateCommand::Refresh => {
            Migrator::refresh(db).await?;
            report(out, "Re-applied", &applied_names(&history::read(db).await?));
        }
        MigrateCommand::Reset => {
            Migrator::reset(db).await?;
            report(out, "Rolled back", &applied_names(&before));
        }
    }
    Ok(())
}

/// Django's `showmigrations` format: one line per migration, `[X]` when applied.
pub fn print_status(history: &history::History, out: &mut impl Write) {
    for migration in &history.known {
        let mark = if migration.applied { "X" } else { " " };
        let _ = writeln!(out, " [{mark}] {}", migration.name);
    }
    for name in &history.unknown {
        let _ = writeln!(
            out,
            " [X] {name}  (unknown to this binary: applied by a newer Keystone)"
        );
    }
}

fn applied_names(history: &history::History) -> Vec<String> {
    history
        .known
        .iter()
        .filter(|m| m.applied)
        .map(|m| m.name.clone())
        .collect()
}

/// Migrations applied in `before` but not in `after`, newest first.
fn changed(before: &history::History, after: &history::History) -> Vec<String> {
    let after = applied_names(after);
    let mut names: Vec<String> = applied_names(before)
        .into_iter()
        .filter(|name| !after.contains(name))
        .collect();
    names.reverse();
    names
}

fn report(out: &mut impl Write, verb: &str, names: &[String]) {
    if names.is_empty() {
        let _ = writeln!(out, "Nothing to do: no migration {}.", verb.to_lowercase());
    }
    for name in names {
        let _ = writeln!(out, "{verb} {name}");
    }
}
