//! Which server the command line talks to, and with which token: `keystone login` stores
//! both in `$XDG_CONFIG_HOME/keystone/login.json` (else `~/.config/keystone/login.json`),
//! private to the user (0600, in a 0700 directory); `KEYSTONE_URL` and `KEYSTONE_TOKEN`
//! override it (CI), and `KEYSTONE_CA_FILE` names extra certificate authorities to trust.
//!
//! The path is worked out here rather than with a crate (`dirs`): Keystone runs on Linux
//! only, where the XDG rule is these two lines.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::runner::client::{Client, tls_config};

#[derive(Serialize, Deserialize)]
pub struct Session {
    pub url: String,
    token: String,
}

fn config_dir() -> anyhow::Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("keystone"));
    }
    let home = non_empty("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config").join("keystone"))
}

fn login_file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("login.json"))
}

fn client_of(url: &str, token: &str) -> anyhow::Result<Client> {
    let ca = std::env::var_os("KEYSTONE_CA_FILE").map(PathBuf::from);
    let tls = tls_config(ca.as_deref())?;
    Ok(Client::new(url, token, tls)?)
}

impl Session {
    /// The stored login, with the environment's overrides.
    pub fn load() -> anyhow::Result<Session> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let stored = || -> anyhow::Result<Option<Session>> {
            let path = login_file()?;
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not a Keystone login", path.display())
                })?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        };
        let (url, token) = match (env("KEYSTONE_URL"), env("KEYSTONE_TOKEN")) {
            (Some(url), Some(token)) => (url, token),
            (url, token) => match stored()? {
                Some(session) => (url.unwrap_or(session.url), token.unwrap_or(session.token)),
                None => bail!(
                    "not logged in: run `keystone login URL` (or set KEYSTONE_URL and KEYSTONE_TOKEN)"
                ),
            },
        };
        Ok(Session { url, token })
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        client_of(&self.url, &self.token)
    }
}

/// The token to log in with: from `token_file`, else `KEYSTONE_TOKEN`, else a line of stdin.
fn read_token(token_file: Option<&Path>) -> anyhow::Result<String> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        None => match std::env::var("KEYSTONE_TOKEN") {
            Ok(token) => token,
            Err(_) => {
                if std::io::stdin().is_terminal() {
                    eprint!("Token (made with `keystone token create` or createApiToken): ");
                }
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line
            }
        },
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("no token given (--token-file, KEYSTONE_TOKEN or a line on stdin)");
    }
    Ok(token)
}

/// `keystone login`: checks the token against the server, then stores both.
pub async fn login(url: &str, token_file: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("{url:?} is not an http:// or https:// URL");
    }
    let url = url.trim_end_matches('/').to_owned();
    let token = read_token(token_file)?;
    let viewer: serde_json::Value = client_of(&url, &token)?
        .call(super::operations::VIEWER, json!({}))
        .await
        .context("the server refused the token")?;
    let path = login_file()?;
    let dir = path.parent().context("the login file has a directory")?;
    crate::files::create_private_dir(dir)
        .with_context(|| format!("cannot make {}", dir.display()))?;
    let session = Session { url, token };
    crate::files::write_owner_only(&path, &serde_json::to_vec_pretty(&session)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let viewer = &viewer["viewer"];
    if json {
        println!("{viewer:#}");
    } else {
        println!(
            "Logged in to {} as {} ({}); stored in {}",
            session.url,
            viewer["name"].as_str().unwrap_or_default(),
            viewer["role"].as_str().unwrap_or_default().to_lowercase(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
