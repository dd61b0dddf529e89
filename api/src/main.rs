//! The `keystone` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Resolving a GraphQL response allocates many small, short-lived objects; mimalloc does
/// that markedly faster than glibc's allocator (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3 returns memory freed on a thread other than the one that allocated it to the
/// system only a second after (its `purge_delay` option, 1,000 ms). Each pooled SQLite
/// connection is a thread of its own whose rows are freed on the runtime's threads, so
/// under load that second of garbage added about 20 MB to the resident size on the
/// benchmark (docs/benchmarks.md). Keystone asks for 10 ms, mimalloc 2's default, unless
/// `MIMALLOC_PURGE_DELAY` is set (mimalloc reads that itself).
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// `mi_option_purge_delay`'s place in mimalloc 3's `mi_option_e` (`mimalloc.h`):
/// libmimalloc-sys names only the options it considers stable, and documents passing the
/// others by number. `tests::purge_delay_is_the_option_mimalloc_sets_to_a_second` fails
/// if an upgrade moves it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn return_freed_memory_sooner() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: stores a value in mimalloc's option table, at an index it has (see
        // above); called before any other thread exists, as mimalloc requires.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

fn main() -> ExitCode {
    return_freed_memory_sooner();
    api::install_tls_provider();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // Default: one worker per core.
    if let Some(threads) = std::env::var("KEYSTONE_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        runtime.worker_threads(threads);
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm_migration=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for log files, journald and Docker
        // (and never with NO_COLOR set).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    match api::cli::run(api::cli::Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_the_option_mimalloc_sets_to_a_second() {
        // SAFETY: reads mimalloc's option table at an index it has.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            default, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not mimalloc 3's purge_delay (default 1000 ms), \
             or MIMALLOC_PURGE_DELAY is set in this environment"
        );
    }
}
