//! Builds that know the common stacks (process runtime), as Heroku's buildpacks and Piku do:
//! detection from the repository's files, one small unit per stack, each building the
//! release **in the directory it will run from** (nothing is moved afterwards, so a
//! virtualenv's absolute paths stay true for the release's life):
//!
//! - [`python`]: `requirements.txt`, `Pipfile.lock` or a pip-installable `pyproject.toml` → a
//!   virtualenv in the release (`.venv`), its packages from a per-app wheel cache;
//!   `.python-version` / `runtime.txt` pick the interpreter; Django's `collectstatic`.
//! - [`node`]: `package.json` → `npm ci` (with a lockfile) or `npm install`, `npm run build`;
//!   `engines.node` checked; `npm start` serves when there is no Procfile.
//! - [`static_site`]: an `index.html` (at the root, or in `public/`) and no other stack →
//!   served by Keystone's own static file server.
//!
//! Node builds before Python when both are there (a Python app with a front end built by
//! npm). Download caches live per app outside the releases (`<work>/cache/<app>`), so a
//! redeploy whose dependencies did not change downloads nothing. The Procfile's `build:`
//! runs after. `KEYSTONE_BUILDPACK=none` (a config var) turns detection off.
//!
//! What a build found is written into the release (`.keystone/build.json`, [`BuildPlan`]):
//! the environment the app's processes need (the virtualenv's `bin` on `PATH`, …) and the
//! command that serves when the Procfile names none, so that a release started again after a
//! reboot, or by a rollback, runs exactly as it was built.

pub mod node;
pub mod python;
pub mod static_site;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::runtime::INHERITED_ENV;
use super::steps::{StepContext, StepError, run_step};

/// The config var that turns detection off (`none`).
pub const SWITCH: &str = "KEYSTONE_BUILDPACK";

/// What a release's build found: recorded in the release, read whenever it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    /// The stacks detected (`python`, `node`, `static`), in build order.
    pub stacks: Vec<String>,
    /// Directories put in front of `PATH` for the app's processes.
    pub path: Vec<PathBuf>,
    /// Variables the app's processes get (config vars override them).
    pub env: Vec<(String, String)>,
    /// What serves when the Procfile has no `web:` (or there is no Procfile).
    pub web: Option<String>,
}

impl BuildPlan {
    fn file(release: &Path) -> PathBuf {
        release.join(".keystone").join("build.json")
    }

    /// The plan recorded in `release` (empty when it was built without detection).
    pub fn read(release: &Path) -> Self {
        std::fs::read(Self::file(release))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write(&self, release: &Path) -> std::io::Result<()> {
        let file = Self::file(release);
        std::fs::create_dir_all(file.parent().expect("a parent"))?;
        std::fs::write(
            file,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )
    }

    /// The environment of the app's processes: the runner's [`INHERITED_ENV`] with the
    /// plan's directories in front of `PATH`, the plan's variables, then `config` (the app's
    /// config vars, which win).
    pub fn environment(&self, config: &[(String, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = INHERITED_ENV
            .iter()
            .filter_map(|name| {
                let value = std::env::var(name).ok()?;
                Some(((*name).to_owned(), value))
            })
            .collect();
        if !self.path.is_empty() {
            let inherited = std::env::var_os("PATH").unwrap_or_default();
            let joined = std::env::join_paths(
                self.path
                    .iter()
                    .cloned()
                    .chain(std::env::split_paths(&inherited)),
            )
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
            set(&mut env, "PATH", &joined);
        }
        for (name, value) in self.env.iter().chain(config) {
            set(&mut env, name, value);
        }
        env
    }
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_owned(),
        None => env.push((name.to_owned(), value.to_owned())),
    }
}

/// Where and how one release is built.
pub struct Build<'a, 'ctx> {
    pub release: &'a Path,
    /// The app's caches (downloads, wheels), kept between its builds.
    pub cache: &'a Path,
    /// The app's config vars.
    pub config: &'a [(String, String)],
    pub timeout: Duration,
    pub steps: &'a mut StepContext<'ctx>,
}

impl Build<'_, '_> {
    /// `program args…` in the release directory, with only the runner's inherited variables,
    /// `plan`'s and the config vars, and `extra` (cache locations and the like).
    fn command(
        &self,
        program: &str,
        args: &[&str],
        plan: &BuildPlan,
        extra: &[(&str, String)],
    ) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(self.release)
            .env_clear()
            .envs(plan.environment(self.config));
        for (name, value) in extra {
            command.env(name, value);
        }
        command
    }

    async fn run(&mut self, command: Command) -> Result<(), StepError> {
        run_step(command, self.timeout, self.steps).await
    }

    async fn say(&self, line: impl Into<String>) {
        self.steps.log.line(line).await;
    }
}

/// Detects the release's stacks and builds each; returns the plan (also written into the
/// release). `Ok` with an empty plan when detection is off or nothing was recognised.
pub async fn build(build: &mut Build<'_, '_>) -> Result<BuildPlan, StepError> {
    let mut plan = BuildPlan::default();
    let off = build
        .config
        .iter()
        .any(|(name, value)| name == SWITCH && value.eq_ignore_ascii_case("none"));
    if off {
        build
            .say(format!("-----> stack detection is off ({SWITCH}=none)"))
            .await;
        return Ok(plan);
    }
    let release = build.release.to_owned();
    let node = node::detect(&release).map_err(StepError::Failed)?;
    let python = python::detect(&release).map_err(StepError::Failed)?;
    if let Some(node) = &node {
        build.say("-----> Node.js app detected").await;
        node.build(build, &mut plan).await?;
        plan.stacks.push("node".to_owned());
    }
    if let Some(python) = &python {
        build.say("-----> Python app detected").await;
        python.build(build, &mut plan).await?;
        plan.stacks.push("python".to_owned());
    }
    if node.is_none()
        && python.is_none()
        && let Some(site) = static_site::detect(&release)
    {
        build
            .say(format!(
                "-----> static site detected: serving {}",
                site.root_name()
            ))
            .await;
        site.plan(&mut plan).map_err(StepError::Failed)?;
        plan.stacks.push("static".to_owned());
    }
    if plan.stacks.is_empty() && release.join("Dockerfile").is_file() {
        build
            .say("-----> the repository has a Dockerfile: a runner with --runtime docker builds it")
            .await;
    }
    plan.write(&release)
        .map_err(|e| StepError::Failed(format!("cannot record the build: {e}")))?;
    Ok(plan)
}

/// Reads `path` as text, at most `limit` bytes (`None` when missing or unreadable).
fn read_small(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(limit).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The hex SHA-256 of `parts`, each followed by a NUL.
fn digest(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// Removes all but the `keep` most recently used entries of `dir`.
fn keep_recent(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    for (_, path) in entries.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_vars_win_over_the_plan() {
        let plan = BuildPlan {
            stacks: vec!["node".into()],
            path: vec![PathBuf::from("/app/node_modules/.bin")],
            env: vec![("NODE_ENV".into(), "production".into())],
            web: None,
        };
        let env = plan.environment(&[("NODE_ENV".into(), "staging".into())]);
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(get("NODE_ENV").as_deref(), Some("staging"));
        assert!(get("PATH").unwrap().starts_with("/app/node_modules/.bin:"));
        assert!(get("DATABASE_URL").is_none());
    }
}
