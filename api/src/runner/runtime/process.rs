//! The process runtime: the stack's build ([`crate::runner::buildpack`]) and the
//! `Procfile`'s `build:` in the release directory; `web:` (or the stack's default) as a
//! process group of its own on a free loopback port, its output appended to a file. The group
//! outlives a runner restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::{Handle, Release, Runtime, free_private_port};
use crate::runner::buildpack::{self, Build, BuildPlan};
use crate::runner::steps::{
    StepContext, StepError, group_alive, last_lines, run_step, spawn_web, stop_group,
};

pub struct Process;

/// `command` run by `sh -c` in `release`'s directory, with the environment its build
/// recorded ([`BuildPlan::environment`]) and its config vars.
fn shell(command: &str, release: Release<'_>) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .current_dir(release.dir)
        .env_clear()
        .envs(BuildPlan::read(release.dir).environment(release.env));
    shell
}

#[async_trait::async_trait]
impl Runtime for Process {
    async fn build(
        &self,
        release: Release<'_>,
        _commit: &str,
        build: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<Option<String>, StepError> {
        buildpack::build(&mut Build {
            release: release.dir,
            cache: release.cache,
            config: release.env,
            timeout,
            steps: context,
        })
        .await?;
        if let Some(build) = build {
            context.log.line("-----> Procfile build:").await;
            run_step(shell(build, release), timeout, context).await?;
        }
        Ok(None)
    }

    async fn release(
        &self,
        command: &str,
        release: Release<'_>,
        _image: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<(), StepError> {
        run_step(shell(command, release), timeout, context).await
    }

    fn default_web(&self, release: &Path) -> Option<String> {
        BuildPlan::read(release).web
    }

    fn serves_without_web(&self) -> bool {
        false
    }

    async fn start(
        &self,
        release: Release<'_>,
        web: Option<&str>,
        _image: Option<&str>,
    ) -> Result<(Handle, SocketAddr), String> {
        let web = web.ok_or(
            "nothing serves this release: the repository has no Procfile with a `web:` \
             process, and no stack Keystone builds gives one",
        )?;
        let port = free_private_port().map_err(|e| format!("no free port: {e}"))?;
        if let Some(parent) = release.output.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let group =
            spawn_web(shell(web, release), port, release.output).map_err(|e| e.to_string())?;
        Ok((
            Handle::Process { group },
            SocketAddr::from(([127, 0, 0, 1], port)),
        ))
    }

    async fn alive(&self, handle: &Handle) -> bool {
        match handle {
            Handle::Process { group } => group_alive(*group),
            Handle::Container { .. } => false,
        }
    }

    async fn stop(&self, handle: &Handle, grace: Duration) {
        if let Handle::Process { group } = handle {
            stop_group(*group, grace).await;
        }
    }

    async fn last_output(&self, _handle: &Handle, output: &Path, lines: usize) -> Vec<String> {
        last_lines(output, lines)
    }

    async fn has_image(&self, _image: &str) -> bool {
        false
    }

    async fn prune_images(&self, _app: &str, _keep: &[i64]) {}

    async fn remove_app(&self, _app: &str) {}
}
