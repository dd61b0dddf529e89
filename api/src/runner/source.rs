//! Fetching a deployment's source with `git` (what every platform does), invoked so that a
//! repository or its URL cannot make git run anything: no terminal prompts, an empty global
//! and no system configuration, a private empty `HOME`, only the `https`, `ssh` and `git`
//! protocols (the ones the API accepts), `--` before the URL, a shallow single-branch clone
//! without tags or submodules, and a timeout. Repository content is never put on a command
//! line of the runner's own.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::steps::{StepContext, StepError, run_step};

/// A `git` command with the hardened environment.
fn git(home: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ALLOW_PROTOCOL", "https:ssh:git")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .args([
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.https.allow=always",
            "-c",
            "protocol.ssh.allow=always",
            "-c",
            "protocol.git.allow=always",
            "-c",
            "core.hooksPath=/dev/null",
            // Abort a transfer slower than 1 KB/s for a minute.
            "-c",
            "http.lowSpeedLimit=1000",
            "-c",
            "http.lowSpeedTime=60",
        ]);
    command
}

/// Clones `branch` of `url` into `into` (which must not exist) and returns the commit. With
/// `commit` (a rollback whose release is gone: 40 hex digits the server recorded), that
/// commit is checked out: fetched alone when the server allows it, else with the branch's
/// history.
pub async fn clone(
    url: &str,
    branch: &str,
    commit: Option<&str>,
    into: &Path,
    home: &Path,
    timeout: Duration,
    context: &mut StepContext<'_>,
) -> Result<String, StepError> {
    std::fs::create_dir_all(home).map_err(|e| StepError::Failed(e.to_string()))?;
    let mut command = git(home);
    command
        .args([
            "clone",
            "--depth",
            "1",
            "--single-branch",
            "--no-tags",
            "--no-recurse-submodules",
            "--branch",
            branch,
            "--",
            url,
        ])
        .arg(into);
    run_step(command, timeout, context).await?;
    if let Some(commit) =
        commit.filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        let in_checkout = |args: &[&str]| {
            let mut command = git(home);
            command.arg("-C").arg(into).args(args);
            command
        };
        let shallow = in_checkout(&["fetch", "--depth", "1", "--no-tags", "origin", commit]);
        if run_step(shallow, timeout, context).await.is_err() {
            context
                .log
                .line("the server does not give out single commits; fetching the branch's history")
                .await;
            let full = in_checkout(&["fetch", "--unshallow", "--no-tags", "origin", branch]);
            run_step(full, timeout, context).await?;
        }
        run_step(
            in_checkout(&["checkout", "--quiet", "--detach", commit]),
            timeout,
            context,
        )
        .await?;
    }
    let output = git(home)
        .arg("-C")
        .arg(into)
        .args(["rev-parse", "HEAD"])
        .output()
        .await
        .map_err(|e| StepError::Failed(format!("git rev-parse: {e}")))?;
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || sha.len() != 40 {
        return Err(StepError::Failed(
            "git rev-parse HEAD gave no commit".to_owned(),
        ));
    }
    Ok(sha)
}
