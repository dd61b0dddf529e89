//! `cargo run -p migration -- …` without `DATABASE_URL` uses the server's default SQLite
//! file (the stock sea-orm-migration CLI panics there).

use std::process::Command;

use migration::connection::DEFAULT_DATABASE_URL;

fn migration(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(args)
        .env_remove("DATABASE_URL")
        .current_dir(dir)
        .output()
        .expect("run the migration CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn defaults_to_the_servers_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, text) = migration(dir.path(), &["status"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("Database: {DEFAULT_DATABASE_URL}")),
        "{text}"
    );
    assert!(
        text.contains(" [ ] m20261126_000001_create_tables"),
        "{text}"
    );

    // No subcommand means `up`, like sea-orm-cli.
    let (ok, text) = migration(dir.path(), &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("Applied m20261126_000001_create_tables"),
        "{text}"
    );
    assert!(dir.path().join("keystone.sqlite3").exists());

    let (ok, text) = migration(dir.path(), &["status"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(" [X] m20261126_000001_create_tables"),
        "{text}"
    );
}

#[test]
fn unsupported_url_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, text) = migration(
        dir.path(),
        &["--database-url", "mysql://root@localhost/x", "status"],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("error:"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
