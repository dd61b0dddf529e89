//! The command line for people: `keystone login`, `repos`, `apps`, `deploy`, `logs`,
//! `rollback`, `stop`, `ps`, `config`. A GraphQL client of a running server, with the
//! user's own token (like the runner, it never opens the database), so every action is
//! authorised and audited as the API's are. Apps and repositories are named by name; output
//! is a table, or the API's JSON with `--json`; errors print the API's code and message and
//! exit non-zero.
//!
//! The documents it sends are the `.graphql` files in `operations/`, compiled in and trusted
//! by every server (they work under `--trusted-documents-only`); a unit test validates them
//! against the schema.

mod follow;
pub mod operations;
mod session;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::runner::client::Client;
use session::Session;

/// What every client command takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Print the API's JSON instead of a table (for scripts).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Store a server's URL and your token (in your config directory, private to you);
    /// KEYSTONE_URL and KEYSTONE_TOKEN override it.
    Login {
        /// The server's URL, e.g. `https://keystone.example.com`.
        url: String,
        /// A file holding the token (default: KEYSTONE_TOKEN, else a line read from stdin).
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// The token you are logged in with: its name and role.
    Whoami {
        #[command(flatten)]
        common: Common,
    },
    /// Register and list Git repositories.
    Repos {
        #[command(subcommand)]
        command: ReposCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Create, list, inspect and delete apps; show or rotate their push webhook.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Deploy an app: its branch's head, or a branch or commit you name.
    Deploy {
        /// The app's name.
        app: String,
        /// Deploy this branch instead of the repository's default.
        #[arg(long)]
        branch: Option<String>,
        /// Deploy exactly this commit (40 hex digits).
        #[arg(long)]
        commit: Option<String>,
        /// Follow the log until the deployment ends; exit 0 on SUCCESS, 1 otherwise.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Print an app's deployment log (its newest deployment unless `--deployment`).
    Logs {
        /// The app's name.
        app: String,
        /// Keep printing lines as they come until the deployment ends (resumes after a
        /// dropped connection without gaps or duplicates).
        #[arg(short, long)]
        follow: bool,
        /// The deployment's number (`databaseId`, as `keystone apps info` shows).
        #[arg(long)]
        deployment: Option<i64>,
        /// How many of the last lines to print first.
        #[arg(short = 'n', long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(0..=10000))]
        lines: u16,
        #[command(flatten)]
        common: Common,
    },
    /// Serve an earlier successful deployment again (default: the one before the newest
    /// successful deployment).
    Rollback {
        /// The app's name.
        app: String,
        /// The deployment's number to go back to.
        #[arg(long)]
        to: Option<i64>,
        /// Follow the log until the rollback ends; exit 0 on SUCCESS, 1 otherwise.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Stop an app (its instances stop; `keystone deploy` starts it again).
    Stop {
        /// The app's name.
        app: String,
        #[command(flatten)]
        common: Common,
    },
    /// Every app: status, URL, newest deployment, runner.
    Ps {
        #[command(flatten)]
        common: Common,
    },
    /// An app's config vars (names only: values are never shown), or change them.
    #[command(args_conflicts_with_subcommands = true)]
    Config {
        /// The app whose config vars to list.
        app: Option<String>,
        #[command(subcommand)]
        command: Option<ConfigCommand>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
pub enum ReposCommand {
    /// Register a repository.
    Create {
        /// Its name (how apps name it).
        name: String,
        /// Where to clone it from (`https://`, `ssh://`, `git://` or `user@host:path`).
        git_url: String,
        /// The branch apps deploy.
        #[arg(long, default_value = "main")]
        branch: String,
    },
    /// Every repository.
    List,
}

#[derive(Subcommand)]
pub enum AppsCommand {
    /// Define an app built from a registered repository.
    Create {
        /// Its name: a DNS label (lowercase letters, digits, hyphens).
        name: String,
        /// The repository's name.
        #[arg(long)]
        repo: String,
        /// Serve it behind the host name `<name>.<apps domain>` instead of on a port of its
        /// own (Keystone allocates ports; see `--port-range`).
        #[arg(long)]
        host: bool,
        /// What the health check requests before traffic moves (`/` by default; empty: a
        /// TCP check only).
        #[arg(long)]
        health_path: Option<String>,
    },
    /// Every app.
    List,
    /// One app: where it runs, its config var names, its recent deployments.
    Info {
        /// The app's name.
        app: String,
    },
    /// Delete an app (stopping it); asks you to type its name unless `--yes`.
    Delete {
        /// The app's name.
        app: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Show the app's push webhook, or make it (or a new secret) with `--rotate`: the
    /// secret is shown then, once.
    Webhook {
        /// The app's name.
        app: String,
        /// Make the webhook, or replace its secret (the old one stops working at once).
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Set config vars (`NAME=value` …), all at once or none; the app restarts once with all
    /// of them when it runs, unless `--no-restart`.
    Set {
        /// The app's name.
        app: String,
        /// `NAME=value` pairs.
        #[arg(required = true, value_parser = parse_pair)]
        pairs: Vec<(String, String)>,
        /// Do not restart: the values reach the app at its next deployment.
        #[arg(long)]
        no_restart: bool,
    },
    /// Remove config vars by name; the app restarts once without them unless `--no-restart`.
    Unset {
        /// The app's name.
        app: String,
        /// The names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Do not restart.
        #[arg(long)]
        no_restart: bool,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=value")),
    }
}

/// Runs a client command.
pub async fn run(command: RemoteCommand) -> anyhow::Result<ExitCode> {
    if let RemoteCommand::Login {
        url,
        token_file,
        common,
    } = command
    {
        return session::login(&url, token_file.as_deref(), common.json).await;
    }
    let session = Session::load()?;
    let client = session.client()?;
    let out = Out {
        json: match &command {
            RemoteCommand::Login { common, .. }
            | RemoteCommand::Whoami { common }
            | RemoteCommand::Repos { common, .. }
            | RemoteCommand::Apps { common, .. }
            | RemoteCommand::Deploy { common, .. }
            | RemoteCommand::Logs { common, .. }
            | RemoteCommand::Rollback { common, .. }
            | RemoteCommand::Stop { common, .. }
            | RemoteCommand::Ps { common }
            | RemoteCommand::Config { common, .. } => common.json,
        },
    };
    let remote = Remote { client, out };
    match command {
        RemoteCommand::Login { .. } => unreachable!("handled above"),
        RemoteCommand::Whoami { .. } => remote.whoami(&session).await,
        RemoteCommand::Repos { command, .. } => match command {
            ReposCommand::Create {
                name,
                git_url,
                branch,
            } => remote.create_repository(&name, &git_url, &branch).await,
            ReposCommand::List => remote.repositories().await,
        },
        RemoteCommand::Apps { command, .. } => match command {
            AppsCommand::Create {
                name,
                repo,
                host,
                health_path,
            } => {
                remote
                    .create_app(&name, &repo, host, health_path.as_deref())
                    .await
            }
            AppsCommand::List => remote.ps().await,
            AppsCommand::Info { app } => remote.info(&app).await,
            AppsCommand::Delete { app, yes } => remote.delete(&app, yes).await,
            AppsCommand::Webhook { app, rotate } => remote.webhook(&app, rotate).await,
        },
        RemoteCommand::Deploy {
            app,
            branch,
            commit,
            wait,
            ..
        } => remote.deploy(&app, branch, commit, wait).await,
        RemoteCommand::Logs {
            app,
            follow,
            deployment,
            lines,
            ..
        } => remote.logs(&app, deployment, lines, follow).await,
        RemoteCommand::Rollback { app, to, wait, .. } => remote.rollback(&app, to, wait).await,
        RemoteCommand::Stop { app, .. } => remote.stop(&app).await,
        RemoteCommand::Ps { .. } => remote.ps().await,
        RemoteCommand::Config {
            app: Some(app),
            command: None,
            ..
        } => remote.config(&app).await,
        RemoteCommand::Config {
            command:
                Some(ConfigCommand::Set {
                    app,
                    pairs,
                    no_restart,
                }),
            ..
        } => remote.config_set(&app, &pairs, !no_restart).await,
        RemoteCommand::Config {
            command:
                Some(ConfigCommand::Unset {
                    app,
                    names,
                    no_restart,
                }),
            ..
        } => remote.config_unset(&app, &names, !no_restart).await,
        RemoteCommand::Config { .. } => {
            bail!("name an app (`keystone config APP`), or `keystone config set|unset APP …`")
        }
    }
}

/// How results are printed.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    /// Prints `value` as JSON, or `table` for people.
    fn print(self, value: &Value, table: impl FnOnce() -> String) {
        if self.json {
            println!("{value:#}");
        } else {
            print!("{}", table());
        }
    }
}

/// `rows` as aligned columns under `headers`.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        text.push_str(&line(row.clone()));
    }
    text
}

/// A JSON value as a table cell (`-` for null).
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) if text.is_empty() => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A commit as people read it: its first 8 digits.
fn short(commit: &Value) -> String {
    commit
        .as_str()
        .map_or_else(|| "-".to_owned(), |sha| sha.chars().take(8).collect())
}

struct Remote {
    client: Client,
    out: Out,
}

impl Remote {
    /// Whether the token is an admin's (who reads what runs where; viewers may not).
    async fn is_admin(&self) -> anyhow::Result<bool> {
        let data = self.call(operations::VIEWER, json!({})).await?;
        Ok(data["viewer"]["role"] == "ADMIN")
    }

    async fn call(&self, document: &str, variables: Value) -> anyhow::Result<Value> {
        Ok(self.client.call::<Value>(document, variables).await?)
    }

    async fn whoami(&self, session: &Session) -> anyhow::Result<ExitCode> {
        let data = self.call(operations::VIEWER, json!({})).await?;
        let viewer = &data["viewer"];
        self.out.print(viewer, || {
            format!(
                "{} ({}) on {}\n",
                cell(&viewer["name"]),
                cell(&viewer["role"]).to_lowercase(),
                session.url
            )
        });
        Ok(ExitCode::SUCCESS)
    }

    /// Every node of a connection field, page by page.
    async fn all(
        &self,
        document: &str,
        field: &str,
        mut variables: Value,
    ) -> anyhow::Result<Vec<Value>> {
        let mut nodes = Vec::new();
        loop {
            let data = self.call(document, variables.clone()).await?;
            let page = &data[field];
            nodes.extend(page["nodes"].as_array().cloned().unwrap_or_default());
            if page["pageInfo"]["hasNextPage"] != true {
                return Ok(nodes);
            }
            variables["after"] = page["pageInfo"]["endCursor"].clone();
        }
    }

    async fn repository_id(&self, name: &str) -> anyhow::Result<String> {
        let found = self
            .all(
                operations::REPOSITORIES,
                "repositories",
                json!({ "name": name }),
            )
            .await?;
        found
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["id"].as_str())
            .map(str::to_owned)
            .with_context(|| {
                format!("NOT_FOUND: no repository is named {name:?} (see `keystone repos list`)")
            })
    }

    /// The app named `name` (as `app.graphql` reads it).
    async fn app(&self, name: &str) -> anyhow::Result<Value> {
        let admin = self.is_admin().await?;
        let data = self
            .call(operations::APP, json!({ "name": name, "admin": admin }))
            .await?;
        match &data["app"] {
            Value::Null => bail!("NOT_FOUND: no app is named {name:?} (see `keystone ps`)"),
            app => Ok(app.clone()),
        }
    }

    async fn app_id(&self, name: &str) -> anyhow::Result<String> {
        Ok(cell(&self.app(name).await?["id"]))
    }

    async fn create_repository(
        &self,
        name: &str,
        git_url: &str,
        branch: &str,
    ) -> anyhow::Result<ExitCode> {
        let data = self
            .call(
                operations::CREATE_REPOSITORY,
                json!({ "name": name, "gitUrl": git_url, "branch": branch }),
            )
            .await?;
        let repository = &data["createRepository"]["repository"];
        self.out.print(repository, || {
            format!(
                "Registered {} ({}, branch {})\n",
                cell(&repository["name"]),
                cell(&repository["gitUrl"]),
                cell(&repository["defaultBranch"])
            )
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn repositories(&self) -> anyhow::Result<ExitCode> {
        let all = self
            .all(operations::REPOSITORIES, "repositories", json!({}))
            .await?;
        self.out.print(&Value::Array(all.clone()), || {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|r| {
                    vec![
                        cell(&r["name"]),
                        cell(&r["defaultBranch"]),
                        cell(&r["gitUrl"]),
                    ]
                })
                .collect();
            table(&["NAME", "BRANCH", "GIT URL"], &rows)
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn create_app(
        &self,
        name: &str,
        repository: &str,
        host: bool,
        health_path: Option<&str>,
    ) -> anyhow::Result<ExitCode> {
        let repository_id = self.repository_id(repository).await?;
        let data = self
            .call(
                operations::CREATE_APP,
                json!({
                    "name": name,
                    "repositoryId": repository_id,
                    "accessMode": if host { "HOST" } else { "PORT" },
                    "healthCheckPath": health_path,
                }),
            )
            .await?;
        let app = &data["createApp"]["app"];
        self.out.print(app, || {
            format!(
                "Created {} from {repository}; deploy it with `keystone deploy {}`\n",
                cell(&app["name"]),
                cell(&app["name"])
            )
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn ps(&self) -> anyhow::Result<ExitCode> {
        let admin = self.is_admin().await?;
        let all = self
            .all(operations::APPS, "apps", json!({ "admin": admin }))
            .await?;
        self.out.print(&Value::Array(all.clone()), || {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|a| {
                    let latest = &a["latestDeployment"];
                    let deployment = if latest.is_null() {
                        "-".to_owned()
                    } else {
                        format!(
                            "#{} {} {}",
                            cell(&latest["databaseId"]),
                            cell(&latest["status"]),
                            short(&latest["commitSha"])
                        )
                    };
                    vec![
                        cell(&a["name"]),
                        cell(&a["status"]),
                        cell(&a["url"]),
                        deployment,
                        cell(&a["repository"]["name"]),
                        cell(&a["runner"]),
                    ]
                })
                .collect();
            table(
                &[
                    "APP",
                    "STATUS",
                    "URL",
                    "NEWEST DEPLOYMENT",
                    "REPOSITORY",
                    "RUNNER",
                ],
                &rows,
            )
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn info(&self, name: &str) -> anyhow::Result<ExitCode> {
        let app = self.app(name).await?;
        self.out.print(&app, || {
            let mut text = format!(
                "{}: {} ({}){}\nrepository: {} ({}, branch {})\nhealth check: {}\nrunner: {}\nconfig vars: {}\n\n",
                cell(&app["name"]),
                cell(&app["status"]),
                cell(&app["accessMode"]).to_lowercase(),
                app["url"]
                    .as_str()
                    .map(|url| format!(" at {url}"))
                    .unwrap_or_default(),
                cell(&app["repository"]["name"]),
                cell(&app["repository"]["gitUrl"]),
                cell(&app["repository"]["defaultBranch"]),
                cell(&app["healthCheckPath"]),
                cell(&app["runner"]),
                app["env"]
                    .as_array()
                    .map(|vars| {
                        let names: Vec<String> = vars.iter().map(|v| cell(&v["name"])).collect();
                        if names.is_empty() { "-".to_owned() } else { names.join(", ") }
                    })
                    .unwrap_or_default(),
            );
            let rows: Vec<Vec<String>> = app["deployments"]["nodes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    vec![
                        cell(&d["databaseId"]),
                        cell(&d["status"]),
                        cell(&d["stage"]),
                        short(&d["commitSha"]),
                        cell(&d["createdAt"]),
                        cell(&d["errorSummary"]),
                    ]
                })
                .collect();
            text.push_str(&table(
                &["DEPLOYMENT", "STATUS", "STAGE", "COMMIT", "CREATED", "ERROR"],
                &rows,
            ));
            text
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn delete(&self, name: &str, yes: bool) -> anyhow::Result<ExitCode> {
        let id = self.app_id(name).await?;
        if !yes {
            if !std::io::stdin().is_terminal() {
                bail!("deleting {name} needs confirmation: pass --yes");
            }
            eprint!(
                "Deleting {name} stops it and removes its deployments. Type its name to confirm: "
            );
            let mut typed = String::new();
            std::io::stdin().read_line(&mut typed)?;
            if typed.trim() != name {
                bail!("not confirmed; nothing deleted");
            }
        }
        let data = self
            .call(operations::DELETE_APP, json!({ "id": id }))
            .await?;
        self.out
            .print(&data["deleteApp"], || format!("Deleted {name}\n"));
        Ok(ExitCode::SUCCESS)
    }

    async fn webhook(&self, name: &str, rotate: bool) -> anyhow::Result<ExitCode> {
        if rotate {
            let id = self.app_id(name).await?;
            let data = self
                .call(operations::ROTATE_WEBHOOK, json!({ "appId": id }))
                .await?;
            let hook = &data["rotateAppWebhook"];
            let url = format!("{}{}", self.client.server_url(), cell(&hook["path"]));
            self.out.print(&json!({ "url": url, "secret": hook["secret"] }), || {
                format!(
                    "Webhook URL: {url}\nSecret:      {}\n(shown this once; the Git host signs push events with it: GitHub and Gitea \
                     use it as the webhook secret, GitLab as the secret token; content type application/json)\n",
                    cell(&hook["secret"])
                )
            });
            return Ok(ExitCode::SUCCESS);
        }
        let data = self
            .call(operations::APP_WEBHOOK, json!({ "name": name }))
            .await?;
        if data["app"].is_null() {
            bail!("NOT_FOUND: no app is named {name:?} (see `keystone ps`)");
        }
        let hook = &data["app"]["webhook"];
        if hook.is_null() {
            bail!(
                "{name} has no webhook yet: make one with `keystone apps webhook {name} --rotate`"
            );
        }
        let url = format!("{}{}", self.client.server_url(), cell(&hook["path"]));
        self.out.print(hook, || {
            format!(
                "Webhook URL: {url}\nsince {}{}\n",
                cell(&hook["createdAt"]),
                hook["pendingCommit"]
                    .as_str()
                    .map(|c| format!("; commit {c} waits for the running deployment"))
                    .unwrap_or_default()
            )
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn deploy(
        &self,
        name: &str,
        branch: Option<String>,
        commit: Option<String>,
        wait: bool,
    ) -> anyhow::Result<ExitCode> {
        let id = self.app_id(name).await?;
        let data = self
            .call(
                operations::DEPLOY_APP,
                json!({ "appId": id, "branch": branch, "commitSha": commit }),
            )
            .await?;
        self.queued(&id, &data["deployApp"]["deployment"], wait)
            .await
    }

    /// Prints a queued deployment, and follows it with `wait`.
    async fn queued(
        &self,
        app_id: &str,
        deployment: &Value,
        wait: bool,
    ) -> anyhow::Result<ExitCode> {
        let number = cell(&deployment["databaseId"]);
        if !wait {
            self.out.print(deployment, || {
                format!("Deployment {number} queued; follow it with `keystone logs -f` (or deploy with --wait)\n")
            });
            return Ok(ExitCode::SUCCESS);
        }
        if !self.out.json {
            eprintln!("Deployment {number} queued");
        }
        let id = cell(&deployment["id"]);
        let lines = if self.out.json {
            follow::Lines::Quiet
        } else {
            follow::Lines::Plain
        };
        let ended = follow::follow(&self.client, app_id, &id, 0, lines).await?;
        self.out.print(&ended, || {
            let mut text = format!("Deployment {number}: {}", cell(&ended["status"]));
            if let Some(commit) = ended["commitSha"].as_str() {
                text.push_str(&format!(" (commit {})", &commit[..commit.len().min(8)]));
            }
            if let Some(error) = ended["errorSummary"].as_str().filter(|e| !e.is_empty()) {
                text.push_str(&format!(": {error}"));
            }
            text + "\n"
        });
        Ok(if ended["status"] == "SUCCESS" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    async fn logs(
        &self,
        name: &str,
        deployment: Option<i64>,
        lines: u16,
        follow: bool,
    ) -> anyhow::Result<ExitCode> {
        let app = self.app(name).await?;
        let id = match deployment {
            Some(number) => crate::graphql::ids::NodeType::Deployment
                .id(number)
                .to_string(),
            None => app["deployments"]["nodes"][0]["id"]
                .as_str()
                .with_context(|| format!("{name} has no deployment yet"))?
                .to_owned(),
        };
        let data = self
            .call(
                operations::DEPLOYMENT,
                json!({ "id": id, "after": null, "tail": lines }),
            )
            .await?;
        let deployment = &data["deployment"];
        if deployment.is_null() {
            bail!(
                "NOT_FOUND: {name} has no deployment {}",
                deployment_number(&id)
            );
        }
        let shown = deployment["logs"].as_array().cloned().unwrap_or_default();
        if !follow {
            self.out.print(&json!(shown), || {
                shown
                    .iter()
                    .map(|line| line.as_str().unwrap_or_default().to_owned() + "\n")
                    .collect()
            });
            return Ok(ExitCode::SUCCESS);
        }
        // The last `lines` lines, then the rest as it comes: follow from line `total - lines`.
        let total = self.line_count(&id).await?;
        let lines_out = if self.out.json {
            follow::Lines::Json
        } else {
            follow::Lines::Plain
        };
        let start = (total - i64::from(lines)).max(0);
        let ended = follow::follow(&self.client, &cell(&app["id"]), &id, start, lines_out).await?;
        Ok(if ended["status"] == "SUCCESS" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    /// How many lines deployment `id`'s log has now.
    async fn line_count(&self, id: &str) -> anyhow::Result<i64> {
        let mut after = 0i64;
        loop {
            let data = self
                .call(
                    operations::DEPLOYMENT,
                    json!({ "id": id, "after": after, "tail": 10000 }),
                )
                .await?;
            let read = data["deployment"]["logs"].as_array().map_or(0, Vec::len) as i64;
            if read == 0 {
                return Ok(after);
            }
            after += read;
        }
    }

    async fn rollback(&self, name: &str, to: Option<i64>, wait: bool) -> anyhow::Result<ExitCode> {
        let app = self.app(name).await?;
        let target = match to {
            Some(number) => crate::graphql::ids::NodeType::Deployment
                .id(number)
                .to_string(),
            None => {
                let successes: Vec<&Value> = app["deployments"]["nodes"]
                    .as_array()
                    .map(|all| all.iter().filter(|d| d["status"] == "SUCCESS").collect())
                    .unwrap_or_default();
                match successes.get(1) {
                    Some(earlier) => cell(&earlier["id"]),
                    None => bail!(
                        "{name} has no earlier successful deployment among its last ten; name one with --to"
                    ),
                }
            }
        };
        let id = cell(&app["id"]);
        let data = self
            .call(
                operations::ROLLBACK_APP,
                json!({ "appId": id, "to": target }),
            )
            .await?;
        self.queued(&id, &data["rollbackApp"]["deployment"], wait)
            .await
    }

    async fn stop(&self, name: &str) -> anyhow::Result<ExitCode> {
        let id = self.app_id(name).await?;
        let data = self.call(operations::STOP_APP, json!({ "id": id })).await?;
        let app = &data["stopApp"]["app"];
        self.out
            .print(app, || format!("{name} is {}\n", cell(&app["status"])));
        Ok(ExitCode::SUCCESS)
    }

    async fn config(&self, name: &str) -> anyhow::Result<ExitCode> {
        let app = self.app(name).await?;
        let vars = app["env"].as_array().cloned().unwrap_or_default();
        self.out.print(&Value::Array(vars.clone()), || {
            let rows: Vec<Vec<String>> = vars
                .iter()
                .map(|v| vec![cell(&v["name"]), cell(&v["updatedAt"])])
                .collect();
            table(&["NAME", "SET AT"], &rows)
        });
        Ok(ExitCode::SUCCESS)
    }

    /// Sets every pair in one change: all or none, and one restart.
    async fn config_set(
        &self,
        name: &str,
        pairs: &[(String, String)],
        restart: bool,
    ) -> anyhow::Result<ExitCode> {
        let set: Vec<Value> = pairs
            .iter()
            .map(|(var, value)| json!({ "name": var, "value": value }))
            .collect();
        let changed = self.change_env(name, set, &[], restart).await?;
        let names: Vec<String> = changed["set"]
            .as_array()
            .map(|vars| vars.iter().map(|v| cell(&v["name"])).collect())
            .unwrap_or_default();
        self.out.print(&changed, || {
            let restarted = match changed["restart"]["databaseId"].as_i64() {
                Some(n) => format!("; restarting it (deployment {n})"),
                None => String::new(),
            };
            format!("Set {} on {name}{restarted}\n", names.join(", "))
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn config_unset(
        &self,
        name: &str,
        names: &[String],
        restart: bool,
    ) -> anyhow::Result<ExitCode> {
        let changed = self.change_env(name, Vec::new(), names, restart).await?;
        let removed: Vec<String> = changed["removed"]
            .as_array()
            .map(|vars| vars.iter().map(cell).collect())
            .unwrap_or_default();
        self.out.print(&changed, || {
            if removed.is_empty() {
                format!("{name} had none of them\n")
            } else {
                format!("Removed {} from {name}\n", removed.join(", "))
            }
        });
        Ok(ExitCode::SUCCESS)
    }

    async fn change_env(
        &self,
        name: &str,
        set: Vec<Value>,
        unset: &[String],
        restart: bool,
    ) -> anyhow::Result<Value> {
        let id = self.app_id(name).await?;
        let data = self
            .call(
                operations::CHANGE_ENV,
                json!({ "appId": id, "set": set, "unset": unset, "restart": restart }),
            )
            .await?;
        Ok(data["changeAppEnv"].clone())
    }
}

/// The number in a deployment's global ID, for messages.
fn deployment_number(id: &str) -> String {
    crate::graphql::ids::decode(&async_graphql::ID::from(id), "deployment")
        .map_or_else(|_| id.to_owned(), |(_, number)| number.to_string())
}
