//! The Keystone server crate: configuration, the HTTP server (started by [`startup`]), the
//! runner, the proxy, and the `keystone` subcommands that are more than a call into another
//! crate (`verify`, `bench`). `main.rs` only sets up the runtime and logging and calls in
//! here.

pub mod backup;
#[cfg(feature = "tools")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod files;
pub mod graphql;
pub mod http;
pub mod logging;
pub mod proxy;
pub mod remote;
pub mod runner;
#[cfg(feature = "tools")]
pub mod schema_diff;
pub mod startup;
pub mod static_site;
pub mod store;
pub mod telemetry;
pub mod verify;

/// Makes ring's primitives the process's TLS provider (rustls is built without a default
/// one, so that only ring is compiled); idempotent.
///
/// rustls 0.23.48 deprecates its ring provider because it has no post-quantum key exchange;
/// the alternative, aws-lc-rs, needs CMake and a large C build on every machine that builds
/// Keystone. ring's classical X25519 is what the runner's connection to its own server needs
/// today; revisit when rustls drops ring.
#[allow(deprecated)]
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) use startup::shutdown_signal;
pub use startup::{Application, ServeError, serve};
