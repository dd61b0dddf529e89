//! Where instances run, behind one interface: **process** (Piku/Heroku conventions: the
//! `Procfile`'s `web:` in its own process group, for hosts without Docker) or **docker** (the
//! Docker CLI, or anything that speaks it such as Podman: `docker build` of the repository's
//! `Dockerfile`, then `docker run`). The deployment flow in [`super`] is the same for both;
//! this module holds what differs: building, starting, checking, stopping, reading output,
//! and removing what belongs to an app.
//!
//! Docker objects are labelled `keystone.managed=true`, `keystone.app=<app>` and
//! `keystone.deployment=<id>`; the runner removes only objects that carry its labels.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::process::{
    StepContext, StepError, group_alive, last_lines, run_step, spawn_web, stop_group,
};

#[derive(Clone, Debug)]
pub enum Runtime {
    Process,
    Docker(Docker),
}

#[derive(Clone, Debug)]
pub struct Docker {
    /// The CLI (`docker`, or `podman`).
    pub binary: String,
    /// Run containers on the host's network (`--network host`) instead of publishing the
    /// private port on 127.0.0.1.
    pub host_network: bool,
}

/// A running instance, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Handle {
    /// A process group (its leader's pid).
    Process { group: i32 },
    /// A container, by name.
    Container { name: String },
}

/// A deployment's release: its app, its deployment, its directory, and the app's config vars.
#[derive(Clone, Copy)]
pub struct Release<'a> {
    pub app: &'a str,
    pub deployment: i64,
    pub dir: &'a Path,
    pub env: &'a [(String, String)],
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

impl Runtime {
    /// Builds the release at `release` (the `build:` entry, or `docker build`); returns the
    /// image built, if any.
    pub async fn build(
        &self,
        release: Release<'_>,
        commit: &str,
        build: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<Option<String>, StepError> {
        let Release {
            app,
            deployment,
            dir: release,
            env,
        } = release;
        match self {
            Runtime::Process => {
                if let Some(build) = build {
                    let mut command = shell(build, release);
                    command.envs(env.iter().map(|(n, v)| (n, v)));
                    run_step(command, timeout, context).await?;
                }
                Ok(None)
            }
            Runtime::Docker(docker) => {
                if !release.join("Dockerfile").is_file() {
                    return Err(StepError::Failed(
                        "the repository has no Dockerfile (the docker runtime builds one)".into(),
                    ));
                }
                let tag = image_tag(app, deployment, commit);
                let mut command = docker.command();
                command
                    .args(["build", "--tag", &tag])
                    .args(labels(app, deployment))
                    .arg(release);
                run_step(command, timeout, context).await?;
                Ok(Some(tag))
            }
        }
    }

    /// Runs the release phase: in the release directory, or in a one-off container.
    pub async fn release(
        &self,
        command: &str,
        release: Release<'_>,
        image: Option<&str>,
        timeout: Duration,
        context: &mut StepContext<'_>,
    ) -> Result<(), StepError> {
        match (self, image) {
            (Runtime::Docker(docker), Some(image)) => {
                let mut run = docker.command();
                run.args(["run", "--rm", "--init", "--label", "keystone.managed=true"]);
                if docker.host_network {
                    run.args(["--network", "host"]);
                }
                env_args(&mut run, release.env);
                run.args([image, "sh", "-c", command]);
                run_step(run, timeout, context).await
            }
            _ => {
                let mut run = shell(command, release.dir);
                run.envs(release.env.iter().map(|(n, v)| (n, v)));
                run_step(run, timeout, context).await
            }
        }
    }

    /// Starts an instance on private `port`: `web` in the release directory (output to
    /// `output`), or the image's container.
    pub async fn start(
        &self,
        release: Release<'_>,
        web: Option<&str>,
        image: Option<&str>,
        port: u16,
        output: &Path,
    ) -> Result<Handle, String> {
        let Release {
            app,
            deployment,
            dir: release,
            env,
        } = release;
        match self {
            Runtime::Process => {
                let web = web.ok_or("the Procfile has no `web:` process")?;
                std::fs::create_dir_all(output.parent().expect("parent"))
                    .map_err(|e| e.to_string())?;
                let mut command = shell(web, release);
                command.envs(env.iter().map(|(n, v)| (n, v)));
                let group = spawn_web(command, port, output).map_err(|e| e.to_string())?;
                Ok(Handle::Process { group })
            }
            Runtime::Docker(docker) => {
                let image = image.ok_or("no image was built")?;
                let name = format!("keystone-{app}-{deployment}");
                let _ = docker.output(&["rm", "--force", &name]).await;
                let mut run = docker.command();
                run.args(["run", "--detach", "--name", &name, "--init"])
                    .args(["--restart", "unless-stopped"])
                    .args(["--log-opt", "max-size=10m", "--log-opt", "max-file=3"])
                    .args(labels(app, deployment))
                    .args(["--env", &format!("PORT={port}")])
                    .args(docker.network_args(port));
                env_args(&mut run, env);
                run.arg(image);
                let result = run.output().await.map_err(|e| e.to_string())?;
                if !result.status.success() {
                    return Err(format!(
                        "docker run failed: {}",
                        String::from_utf8_lossy(&result.stderr).trim()
                    ));
                }
                Ok(Handle::Container { name })
            }
        }
    }

    pub async fn alive(&self, handle: &Handle) -> bool {
        match (self, handle) {
            (_, Handle::Process { group }) => group_alive(*group),
            (Runtime::Docker(docker), Handle::Container { name }) => docker
                .output(&["inspect", "--format", "{{.State.Running}}", name])
                .await
                .is_some_and(|running| running == "true"),
            (Runtime::Process, Handle::Container { .. }) => false,
        }
    }

    /// Stops an instance: SIGTERM, SIGKILL after `grace`; a container is removed too.
    pub async fn stop(&self, handle: &Handle, grace: Duration) {
        match (self, handle) {
            (_, Handle::Process { group }) => stop_group(*group, grace).await,
            (Runtime::Docker(docker), Handle::Container { name }) => {
                let seconds = grace.as_secs().max(1).to_string();
                let _ = docker.output(&["stop", "--time", &seconds, name]).await;
                let _ = docker.output(&["rm", "--force", name]).await;
            }
            (Runtime::Process, Handle::Container { .. }) => {}
        }
    }

    /// The instance's last `lines` lines of output.
    pub async fn last_output(&self, handle: &Handle, output: &Path, lines: usize) -> Vec<String> {
        match (self, handle) {
            (Runtime::Docker(docker), Handle::Container { name }) => {
                let Ok(result) = docker
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
            _ => last_lines(output, lines),
        }
    }

    /// Whether the image of an earlier deployment is still here (for a rollback).
    pub async fn has_image(&self, image: &str) -> bool {
        match self {
            Runtime::Docker(docker) if !image.is_empty() => {
                docker.output(&["image", "inspect", image]).await.is_some()
            }
            _ => false,
        }
    }

    /// Removes the app's images except those of the deployments in `keep`.
    pub async fn prune_images(&self, app: &str, keep: &[i64]) {
        let Runtime::Docker(docker) = self else {
            return;
        };
        let filter = format!("label=keystone.app={app}");
        let Some(listing) = docker
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
                let _ = docker.output(&["rmi", image]).await;
            }
        }
    }

    /// Removes every container and image of `app` (when the app is deleted).
    pub async fn remove_app(&self, app: &str) {
        let Runtime::Docker(docker) = self else {
            return;
        };
        let filter = format!("label=keystone.app={app}");
        if let Some(containers) = docker
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
                let _ = docker.output(&["rm", "--force", container]).await;
            }
        }
        self.prune_images(app, &[]).await;
    }
}

/// What an app's processes (build, release, web) inherit from the runner's environment;
/// everything else they get is their config vars and `PORT`. The runner's own settings
/// (`DATABASE_URL`, tokens, cloud credentials) never reach an app.
pub const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// `command` run by `sh -c` in `dir`, with only [`INHERITED_ENV`] of the runner's
/// environment.
fn shell(command: &str, dir: &Path) -> Command {
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(command).current_dir(dir).env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            shell.env(name, value);
        }
    }
    shell
}
