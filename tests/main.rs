//! Keystone's end-to-end tests: the real `keystone` binary against real SQLite and
//! PostgreSQL databases, talked to over its command line and HTTP (see `support`).
//!
//! This binary is its own harness (libtest-mimic, with libtest's options and output): the
//! tests registered with `e2e!` run each on a runtime of its own, and one that stops with
//! `support::skip` (PostgreSQL, Docker or a browser missing) is reported **ignored** with
//! its reason, never as passed.

mod support;

mod adoption;
mod audit;
mod auth;
mod backup;
mod browser;
mod client;
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
mod read_path;
mod runner;
mod server;
mod spec;
mod webhooks;

fn main() -> std::process::ExitCode {
    let arguments = libtest_mimic::Arguments::from_args();
    // A skip is not a failure: its panic is not printed.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<support::Skip>().is_none() {
            default_hook(info);
        }
    }));
    let mut trials: Vec<libtest_mimic::Trial> = inventory::iter::<support::E2e>
        .into_iter()
        .map(|test| {
            let module = test.module.strip_prefix("e2e").unwrap_or(test.module);
            let module = module.trim_start_matches("::");
            let name = if module.is_empty() {
                test.name.to_owned()
            } else {
                format!("{module}::{}", test.name)
            };
            let run = test.run;
            libtest_mimic::Trial::ignorable_test(name, move || {
                match std::panic::catch_unwind(run) {
                    Ok(()) => Ok(libtest_mimic::Completion::Completed),
                    Err(payload) => match payload.downcast::<support::Skip>() {
                        Ok(skip) => Ok(libtest_mimic::Completion::ignored_with(skip.0)),
                        Err(payload) => {
                            let message = payload
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "the test panicked".to_owned());
                            Err(message.into())
                        }
                    },
                }
            })
        })
        .collect();
    trials.sort_by(|a, b| a.name().cmp(b.name()));
    libtest_mimic::run(&arguments, trials).exit_code()
}

e2e!(sync fixtures_match_shared);
/// The fixtures in `tests/fixtures/` are the shared Django DDL, unchanged.
fn fixtures_match_shared() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = root.join("../shared/fixtures");
    if !shared.exists() {
        support::skip("../shared/fixtures is not beside this clone; nothing to compare");
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
