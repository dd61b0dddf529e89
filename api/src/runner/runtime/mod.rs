//! Where instances run, behind one interface ([`Runtime`]): **process** ([`process`]: Piku
//! and Heroku conventions, the stack's build and the `Procfile`'s `web:` in its own process
//! group, for hosts without Docker) or **docker** ([`docker`]: the Docker CLI, or anything
//! that speaks it such as Podman). The deployment flow is the same for every runtime; a
//! runtime builds, starts an instance and says at which address it serves (the proxy sends
//! the app's traffic there), checks, stops and cleans up. Another runtime (systemd units,
//! Kubernetes) is one more file implementing the trait.

pub mod docker;
pub mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::steps::{StepContext, StepError};

/// A running instance, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Handle {
    /// A process group (its leader's pid).
    Process { group: i32 },
    /// A container, by name.
    Container { name: String },
}

/// A deployment's release: its app, its deployment, its directory, the app's config vars,
/// where the app's caches are, and where an instance's output goes.
#[derive(Clone, Copy)]
pub struct Release<'a> {
    pub app: &'a str,
    pub deployment: i64,
    pub dir: &'a Path,
    pub env: &'a [(String, String)],
    /// The app's build caches, kept between builds (outside every release).
    pub cache: &'a Path,
    /// The instance's output file (process runtime).
    pub output: &'a Path,
}

/// What the runner's environment passes on to an app's processes; everything else they get
/// is their config vars, `PORT` and what their build needs. The runner's own settings
/// (`DATABASE_URL`, tokens, cloud credentials) never reach an app.
pub const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Builds the release; returns the image built, if the runtime builds images. `build` is
    /// the Procfile's `build:` (it runs after the runtime's own build).
    async fn build(
        &self,
        release: Release<'_>,
        commit: &str,
        build: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<Option<String>, StepError>;

    /// Runs the release phase (`release:`) before traffic moves.
    async fn release(
        &self,
        command: &str,
        release: Release<'_>,
        image: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<(), StepError>;

    /// The command that serves when the Procfile names none (or there is none).
    fn default_web(&self, release: &Path) -> Option<String>;

    /// Whether an instance can run without a `web:` command (an image has its own).
    fn serves_without_web(&self) -> bool;

    /// Starts an instance of `release` (`web`, or the image); returns it and the address it
    /// serves on once healthy.
    async fn start(
        &self,
        release: Release<'_>,
        web: Option<&str>,
        image: Option<&str>,
    ) -> Result<(Handle, SocketAddr), String>;

    async fn alive(&self, handle: &Handle) -> bool;

    /// Stops an instance: SIGTERM, SIGKILL after `grace`.
    async fn stop(&self, handle: &Handle, grace: Duration);

    /// The instance's last `lines` lines of output.
    async fn last_output(&self, handle: &Handle, output: &Path, lines: usize) -> Vec<String>;

    /// Whether an earlier deployment's image is still here (for a rollback).
    async fn has_image(&self, image: &str) -> bool;

    /// Removes the app's images except those of the deployments in `keep`.
    async fn prune_images(&self, app: &str, keep: &[i64]);

    /// Removes everything of `app` the runtime holds (when the app is deleted).
    async fn remove_app(&self, app: &str);
}

/// A free port on the loopback interface for a new instance.
pub fn free_private_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
