//! Keystone's end-to-end tests: the real `keystone` binary against real SQLite and
//! PostgreSQL databases, talked to over its command line and HTTP (see `support`).

mod support;

mod access;
mod adoption;
mod backup;
mod browser;
mod documents;
mod faults;
mod fuzz;
mod graphql;
mod hardening;
mod http_api;
mod instances;
mod lifecycle;
mod metrics;
mod migrations;
mod runner;
mod security;
mod server;
mod spec;

/// The fixtures in `tests/fixtures/` are the shared Django DDL, unchanged.
#[test]
fn fixtures_match_shared() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = root.join("../shared/fixtures");
    if !shared.exists() {
        eprintln!("note: ../shared/fixtures is not beside this clone; nothing to compare");
        return;
    }
    for name in [
        "keystone-django-0001.sqlite.sql",
        "keystone-django-0001.postgres.sql",
    ] {
        let ours = std::fs::read(root.join("tests/fixtures").join(name)).expect("our fixture");
        let theirs = std::fs::read(shared.join(name)).expect("shared fixture");
        assert!(
            ours == theirs,
            "tests/fixtures/{name} differs from ../shared/fixtures/{name}"
        );
    }
}
