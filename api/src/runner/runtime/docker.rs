//! The Docker runtime (the Docker CLI, or anything that speaks it such as Podman): `docker
//! build` of the repository's `Dockerfile`, then a container that publishes its port on
//! 127.0.0.1 only (or uses the host's network). The `Procfile` is optional; its `release:`
//! runs in a one-off container.
//!
//! Docker objects are labelled `keystone.managed=true`, `keystone.app=<app>` and
//! `keystone.deployment=<id>`; the runner removes only objects that carry its labels.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::{Handle, Release, Runtime, free_private_port};
use crate::runner::steps::{StepContext, StepError, run_step};

#[derive(Clone, Debug)]
pub struct Docker {
    /// The CLI (`docker`, or `podman`).
    pub binary: String,
    /// Run containers on the host's network (`--network host`) instead of publishing the
    /// private port on 127.0.0.1.
    pub host_network: bool,
}

/// `--env NAME` for each variable: Docker takes the values from its CLI's environment, so no
/// value appears on a command line.
fn env_args(command: &mut Command, env: &[(String, String)]) {
    for (name, value) in env {
        command.arg("--env").arg(name).env(name, value);
    }
}

/// The labels that mark Docker objects as Keystone's.
fn labels(app: &str, deployment: i64) -> Vec<String> {
    vec![
        "--label".into(),
        "keystone.managed=true".into(),
        "--label".into(),
        format!("keystone.app={app}"),
        "--label".into(),
        format!("keystone.deployment={deployment}"),
    ]
}

/// The image of a deployment: `keystone/<app>:<deployment>-<sha7>`.
pub fn image_tag(app: &str, deployment: i64, commit: &str) -> String {
    let short: String = commit.chars().take(7).collect();
    format!("keystone/{app}:{deployment}-{short}")
}

impl Docker {
    fn command(&self) -> Command {
        Command::new(&self.binary)
    }

    async fn output(&self, args: &[&str]) -> Option<String> {
        let output = self.command().args(args).output().await.ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn network_args(&self, port: u16) -> Vec<String> {
        if self.host_network {
            vec!["--network".into(), "host".into()]
        } else {
            vec!["--publish".into(), format!("127.0.0.1:{port}:{port}")]
        }
    }
}

#[async_trait::async_trait]
impl Runtime for Docker {
    async fn build(
        &self,
        release: Release<'_>,
        commit: &str,
        _build: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<Option<String>, StepError> {
        if !release.dir.join("Dockerfile").is_file() {
            return Err(StepError::Failed(
                "the repository has no Dockerfile (the docker runtime builds one)".into(),
            ));
        }
        let tag = image_tag(release.app, release.deployment, commit);
        let mut command = self.command();
        command
            .args(["build", "--tag", &tag])
            .args(labels(release.app, release.deployment))
            .arg(release.dir);
        run_step(command, timeout, context).await?;
        Ok(Some(tag))
    }

    async fn release(
        &self,
        command: &str,
        release: Release<'_>,
        image: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<(), StepError> {
        let image = image.ok_or_else(|| StepError::Failed("no image was built".into()))?;
        let mut run = self.command();
        run.args(["run", "--rm", "--init", "--label", "keystone.managed=true"]);
        if self.host_network {
            run.args(["--network", "host"]);
        }
        env_args(&mut run, release.env);
        run.args([image, "sh", "-c", command]);
        run_step(run, timeout, context).await
    }

    fn default_web(&self, _release: &Path) -> Option<String> {
        None
    }

    fn serves_without_web(&self) -> bool {
        true
    }

    async fn start(
        &self,
        release: Release<'_>,
        _web: Option<&str>,
        image: Option<&str>,
    ) -> Result<(Handle, SocketAddr), String> {
        let image = image.ok_or("no image was built")?;
        let port = free_private_port().map_err(|e| format!("no free port: {e}"))?;
        let name = format!("keystone-{}-{}", release.app, release.deployment);
        let _ = self.output(&["rm", "--force", &name]).await;
        let mut run = self.command();
        run.args(["run", "--detach", "--name", &name, "--init"])
            .args(["--restart", "unless-stopped"])
            .args(["--log-opt", "max-size=10m", "--log-opt", "max-file=3"])
            .args(labels(release.app, release.deployment))
            .args(["--env", &format!("PORT={port}")])
            .args(self.network_args(port));
        env_args(&mut run, release.env);
        run.arg(image);
        let result = run.output().await.map_err(|e| e.to_string())?;
        if !result.status.success() {
            return Err(format!(
                "docker run failed: {}",
                String::from_utf8_lossy(&result.stderr).trim()
            ));
        }
        Ok((
            Handle::Container { name },
            SocketAddr::from(([127, 0, 0, 1], port)),
        ))
    }

    async fn alive(&self, handle: &Handle) -> bool {
        match handle {
            Handle::Container { name } => self
                .output(&["inspect", "--format", "{{.State.Running}}", name])
                .await
                .is_some_and(|running| running == "true"),
            Handle::Process { group } => crate::runner::steps::group_alive(*group),
        }
    }

    async fn stop(&self, handle: &Handle, grace: Duration) {
        match handle {
            Handle::Container { name } => {
                let seconds = grace.as_secs().max(1).to_string();
                let _ = self.output(&["stop", "--time", &seconds, name]).await;
                let _ = self.output(&["rm", "--force", name]).await;
            }
            Handle::Process { group } => crate::runner::steps::stop_group(*group, grace).await,
        }
    }

    async fn last_output(&self, handle: &Handle, _output: &Path, lines: usize) -> Vec<String> {
        let Handle::Container { name } = handle else {
            return Vec::new();
        };
        let Ok(result) = self
            .command()
            .args(["logs", "--tail", &lines.to_string(), name])
            .output()
            .await
        else {
            return Vec::new();
        };
        let mut text = String::from_utf8_lossy(&result.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&result.stderr));
        text.lines().map(str::to_owned).collect()
    }

    async fn has_image(&self, image: &str) -> bool {
        !image.is_empty() && self.output(&["image", "inspect", image]).await.is_some()
    }

    async fn prune_images(&self, app: &str, keep: &[i64]) {
        let filter = format!("label=keystone.app={app}");
        let Some(listing) = self
            .output(&[
                "images",
                "--filter",
                "label=keystone.managed=true",
                "--filter",
                &filter,
                "--format",
                "{{.Repository}}:{{.Tag}}",
            ])
            .await
        else {
            return;
        };
        // Tags are `<deployment>-<sha7>` (see `image_tag`); the label filter says they are ours.
        for image in listing.lines() {
            let deployment = image
                .rsplit_once(':')
                .and_then(|(_, tag)| tag.split_once('-'))
                .and_then(|(deployment, _)| deployment.parse::<i64>().ok());
            if !deployment.is_some_and(|d| keep.contains(&d)) {
                let _ = self.output(&["rmi", image]).await;
            }
        }
    }

    async fn remove_app(&self, app: &str) {
        let filter = format!("label=keystone.app={app}");
        if let Some(containers) = self
            .output(&[
                "ps",
                "--all",
                "--quiet",
                "--filter",
                "label=keystone.managed=true",
                "--filter",
                &filter,
            ])
            .await
        {
            for container in containers.lines() {
                let _ = self.output(&["rm", "--force", container]).await;
            }
        }
        self.prune_images(app, &[]).await;
    }
}
