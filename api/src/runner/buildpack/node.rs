//! Node.js apps: a repository with a `package.json`.
//!
//! - **Version**: `engines.node` (npm's ranges: `20.x`, `>=18`, `^20.1`, `18 || 20`,
//!   `16 - 20`) must include the host's `node`, else the build fails naming both; a range
//!   Keystone cannot read is reported and not enforced.
//! - **Packages**: `npm ci` when a lockfile (`package-lock.json`, `npm-shrinkwrap.json`)
//!   exists, else `npm install`, with npm's cache kept per app (`<cache>/npm`) and preferred
//!   over the registry: a redeploy whose lockfile did not change downloads nothing.
//! - `npm run build` when the package has a `build` script.
//! - Without a Procfile, `npm start` serves (npm runs `node server.js` when there is no
//!   `start` script). The app's processes get `node_modules/.bin` on `PATH` and
//!   `NODE_ENV=production` (a config var overrides it).

use std::path::Path;

use super::{Build, BuildPlan, read_small};
use crate::runner::steps::StepError;

/// A Node.js app found in a release.
#[derive(Debug)]
pub struct Node {
    locked: bool,
    build_script: bool,
    start: bool,
    engines: Option<String>,
}

/// `Some` when `release` holds a Node.js app; `Err` when its `package.json` is not JSON.
pub fn detect(release: &Path) -> Result<Option<Node>, String> {
    let Some(text) = read_small(&release.join("package.json"), 1 << 20) else {
        return Ok(None);
    };
    let package: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("package.json is not JSON: {e}"))?;
    let script = |name: &str| package["scripts"][name].is_string();
    Ok(Some(Node {
        locked: release.join("package-lock.json").is_file()
            || release.join("npm-shrinkwrap.json").is_file(),
        build_script: script("build"),
        start: script("start") || release.join("server.js").is_file(),
        engines: package["engines"]["node"].as_str().map(str::to_owned),
    }))
}

/// Whether `version` is in the npm range `range`; `None` when the range cannot be read.
fn in_range(range: &str, version: &semver::Version) -> Option<bool> {
    let mut any = false;
    for alternative in range.split("||") {
        let alternative = alternative.trim();
        if alternative.is_empty() || alternative == "*" || alternative.eq_ignore_ascii_case("x") {
            return Some(true);
        }
        let requirement = match alternative.split_once(" - ") {
            Some((low, high)) => format!(">={}, <={}", low.trim(), high.trim()),
            None => {
                // `>= 18 <21` → `>=18, <21`: operators stay with their versions.
                let mut comparators: Vec<String> = Vec::new();
                let mut pending_operator = String::new();
                for token in alternative.split_whitespace() {
                    if token
                        .chars()
                        .all(|c| matches!(c, '<' | '>' | '=' | '~' | '^'))
                    {
                        pending_operator.push_str(token);
                        continue;
                    }
                    comparators.push(format!("{}{token}", std::mem::take(&mut pending_operator)));
                }
                comparators.join(", ")
            }
        };
        let requirement = requirement
            .replace(".x", ".*")
            .replace(".X", ".*")
            .trim_start_matches('v')
            .to_owned();
        let parsed = semver::VersionReq::parse(&requirement).ok()?;
        any |= parsed.matches(version);
    }
    Some(any)
}

impl Node {
    pub async fn build(
        &self,
        build: &mut Build<'_, '_>,
        plan: &mut BuildPlan,
    ) -> Result<(), StepError> {
        let version = node_version().await.ok_or_else(|| {
            StepError::Failed("package.json found, but this host has no `node` on PATH".into())
        })?;
        build.say(format!("       Node.js {version}")).await;
        if let Some(range) = &self.engines {
            match in_range(range, &version) {
                Some(true) => {}
                Some(false) => {
                    return Err(StepError::Failed(format!(
                        "package.json's engines.node asks for {range:?}; this host has Node.js \
                         {version}. Install it on the runner's host, or change engines.node"
                    )));
                }
                None => {
                    build
                        .say(format!(
                            "       engines.node {range:?} is not a range Keystone reads; not enforced"
                        ))
                        .await;
                }
            }
        }
        let cache = build.cache.join("npm").to_string_lossy().into_owned();
        let npm_env = [
            ("npm_config_cache", cache),
            ("npm_config_update_notifier", "false".to_owned()),
            ("npm_config_fund", "false".to_owned()),
            ("npm_config_audit", "false".to_owned()),
            ("npm_config_prefer_offline", "true".to_owned()),
        ];
        let install: &[&str] = if self.locked {
            &["ci"]
        } else {
            build
                .say("       no lockfile: npm install (commit package-lock.json for repeatable builds)")
                .await;
            &["install"]
        };
        let command = build.command("npm", install, plan, &npm_env);
        build.run(command).await?;
        plan.path
            .insert(0, build.release.join("node_modules").join(".bin"));
        if self.build_script {
            build.say("       npm run build").await;
            let command = build.command("npm", &["run", "build"], plan, &npm_env);
            build.run(command).await?;
        }
        plan.env
            .push(("NODE_ENV".to_owned(), "production".to_owned()));
        if self.start && plan.web.is_none() {
            plan.web = Some("npm start".to_owned());
        }
        Ok(())
    }
}

/// The host's Node.js version (`node --version`).
async fn node_version() -> Option<semver::Version> {
    let output = tokio::process::Command::new("node")
        .arg("--version")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    semver::Version::parse(text.trim().trim_start_matches('v')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_ranges() {
        let v20 = semver::Version::new(20, 20, 2);
        for (range, expected) in [
            ("20.x", true),
            (">=18", true),
            (">= 18 <21", true),
            ("^20.1.0", true),
            ("~20.20", true),
            ("18 || 20", true),
            ("16 - 20", true),
            ("16 - 19", false),
            ("22.x", false),
            (">=22", false),
            ("*", true),
            ("v20", true),
        ] {
            assert_eq!(in_range(range, &v20), Some(expected), "{range}");
        }
        assert_eq!(in_range("latest", &v20), None);
    }

    #[test]
    fn detects_lockfiles_and_scripts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(detect(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"scripts": {"build": "vite build"}, "engines": {"node": "20.x"}}"#,
        )
        .unwrap();
        let node = detect(dir.path()).unwrap().unwrap();
        assert!(node.build_script && !node.start && !node.locked);
        assert_eq!(node.engines.as_deref(), Some("20.x"));
        std::fs::write(dir.path().join("package-lock.json"), "{}").unwrap();
        std::fs::write(dir.path().join("server.js"), "").unwrap();
        let node = detect(dir.path()).unwrap().unwrap();
        assert!(node.locked && node.start);
        std::fs::write(dir.path().join("package.json"), "{").unwrap();
        assert!(detect(dir.path()).is_err());
    }
}
