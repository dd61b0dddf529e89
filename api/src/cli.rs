//! The `keystone` command line: `serve` (the default), `migrate …`, `verify`.

use std::process::ExitCode;

use clap::{Args, FromArgMatches, Parser, Subcommand};
use migration::cli::MigrateCommand;
use migration::connection::redact;

use async_graphql::ErrorExtensions;
use entity::api_token::Role;
use migration::connection;
use sea_orm::{ActiveEnum, DatabaseConnection};

use crate::config::{Config, DatabaseArgs, ServeArgs};
use crate::domain::DomainError;
use crate::domain::access::{self, NewToken};
use crate::domain::audit::{Actor, Audit, Object};
use crate::graphql::error::Code;

#[derive(Parser)]
#[command(
    name = "keystone",
    version,
    about = "Keystone: register Git repositories, define apps, deploy them.",
    long_about = None
)]
pub struct Cli {
    /// Default: `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve the API until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Inspect and change the database schema.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Execute deployments: claim, clone, build, run and switch traffic (a client of the
    /// API, with a `runner` token).
    Runner(crate::runner::RunnerArgs),
    /// Serve the apps' public ports and host names, routing to their instances (started by
    /// the runner when none runs; outlives it).
    Proxy(crate::proxy::ProxyArgs),
    #[command(flatten)]
    Remote(crate::remote::RemoteCommand),
    /// Serve a directory of files on `$PORT` (how the runner serves static sites).
    Static(crate::static_site::StaticArgs),
    /// Measure throughput against the database floor (run a release build; needs `wrk`).
    #[cfg(feature = "tools")]
    Bench(crate::bench::BenchArgs),
    /// Measure a deployment: time per stage, and the longest gap clients see during a switch
    /// against restarting in place (needs git and python3).
    #[cfg(feature = "tools")]
    BenchDeploy(crate::bench::deploy::DeployBenchArgs),
    /// Print the GraphQL schema (SDL); `schema.graphql` is this output.
    Schema {
        #[cfg(feature = "tools")]
        #[command(subcommand)]
        command: Option<SchemaCommand>,
    },
    /// Create, list and revoke API tokens (works on the database directly).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Store, list and remove trusted documents (persisted queries), by SHA-256 (works on
    /// the database directly).
    Documents {
        #[command(subcommand)]
        command: DocumentsCommand,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Write a consistent copy of a SQLite database to FILE, also while the server runs
    /// (PostgreSQL: use `pg_dump`, see the README).
    Backup {
        /// Where to write the copy (must not exist).
        file: std::path::PathBuf,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Check that migrations apply, match the entities, and round-trip.
    Verify {
        /// Check the configured database itself instead of a scratch one (only the checks
        /// that cannot change it).
        #[arg(long)]
        in_place: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[cfg(feature = "tools")]
#[derive(Subcommand)]
pub enum SchemaCommand {
    /// List every change from OLD to NEW (default: this binary's schema) as breaking,
    /// dangerous or safe; exit 1 on a breaking change not listed in `--allow`.
    Diff {
        /// The SDL clients were built against.
        old: std::path::PathBuf,
        /// The SDL to compare with it (default: the schema this binary serves).
        new: Option<std::path::PathBuf>,
        /// Intended breaking changes, one `path: what` line each (as printed).
        #[arg(long)]
        allow: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create {
        /// Unique name (letters, digits, spaces, `.`, `_`, `-`).
        #[arg(long)]
        name: String,
        /// admin, viewer or runner.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Days until it stops working (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token at once (servers notice within their token cache time).
    Revoke {
        /// The token's name or database id.
        name_or_id: String,
    },
}

#[derive(Subcommand)]
pub enum DocumentsCommand {
    /// Store each FILE (one GraphQL document, byte for byte) after checking it against the
    /// schema; prints its hash. Storing a document twice changes nothing.
    Add {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// List the stored documents: hash, operations, when stored.
    List,
    /// Remove documents by hash (running servers notice within a second).
    Remove {
        #[arg(required = true)]
        hashes: Vec<String>,
    },
}

fn parse_role(value: &str) -> Result<Role, String> {
    match value.to_ascii_lowercase().as_str() {
        "admin" => Ok(Role::Admin),
        "viewer" => Ok(Role::Viewer),
        "runner" => Ok(Role::Runner),
        _ => Err("expected admin, viewer or runner".into()),
    }
}

/// `serve`'s settings when no subcommand was given: its defaults and environment.
fn default_serve_args() -> ServeArgs {
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let matches = command.get_matches_from(["serve"]);
    ServeArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(default_serve_args()));
    match command {
        Command::Serve(serve) => {
            crate::serve(Config::new(&serve)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { command, database } => {
            println!("Database: {}", redact(&database.database_url));
            migration::cli::run(&database.database_url, &command, &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Runner(args) => {
            crate::runner::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Proxy(args) => {
            crate::proxy::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Remote(command) => crate::remote::run(command).await,
        Command::Static(args) => {
            crate::static_site::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "tools")]
        Command::BenchDeploy(args) => {
            crate::bench::deploy::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "tools")]
        Command::Bench(args) => {
            crate::bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command, database } => token(&database.database_url, command).await,
        Command::Documents { command, database } => {
            documents(&database.database_url, command).await
        }
        #[cfg(feature = "tools")]
        Command::Schema {
            command: Some(SchemaCommand::Diff { old, new, allow }),
        } => crate::schema_diff::run(&old, new.as_deref(), allow.as_deref()),
        Command::Schema { .. } => {
            print!("{}", crate::graphql::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { file, database } => {
            let db = connection::connect_for_migrations(&database.database_url).await?;
            let written = crate::backup::write(&db, &file).await;
            db.close().await?;
            let bytes = written?;
            println!(
                "Wrote a consistent copy of the database to {} ({bytes} bytes).",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { in_place, database } => {
            let target = if in_place {
                ""
            } else {
                "a scratch database like "
            };
            println!("Verifying on {target}{}", redact(&database.database_url));
            let passed =
                crate::verify::verify(&database.database_url, in_place, &mut std::io::stdout())
                    .await?;
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The database at `url`, refused unless its migrations are all applied.
async fn migrated_database(url: &str) -> anyhow::Result<sea_orm::DatabaseConnection> {
    let db = connection::connect_for_migrations(url).await?;
    let history = migration::history::read(&db).await?;
    history.ensure_known()?;
    if history.pending().next().is_some() {
        anyhow::bail!(
            "the database at {} has pending migrations; run `keystone migrate up` (or start the server) first",
            redact(url)
        );
    }
    Ok(db)
}

/// Runs an operator's write (`keystone token …`, `keystone documents …`), audited: recorded
/// with its change, or on its own with its error (the code the API would answer).
async fn as_operator<T>(
    db: &DatabaseConnection,
    audit: Audit,
    write: impl AsyncFnOnce(&Audit) -> Result<T, DomainError>,
) -> anyhow::Result<T> {
    let result = write(&audit).await;
    let error = result.as_ref().err().map(|error| {
        let code = Code::of(error.extend().extensions.as_ref()).unwrap_or(Code::Internal);
        (code.as_str().to_owned(), error.to_string())
    });
    let recorded = audit.finish(db, error).await;
    let written = result?;
    recorded?;
    Ok(written)
}

/// The audit of `keystone <command>`, run by the operator.
fn operator(command: &str, arguments: serde_json::Value) -> Audit {
    Audit::new(Actor::operator(), format!("keystone {command}"), arguments)
}

/// `keystone documents …`.
async fn documents(url: &str, command: DocumentsCommand) -> anyhow::Result<ExitCode> {
    use crate::domain::documents;
    let db = migrated_database(url).await?;
    let result = async {
        match command {
            DocumentsCommand::Add { files } => {
                let mut new = Vec::with_capacity(files.len());
                for file in &files {
                    let text = std::fs::read_to_string(file).map_err(|error| {
                        anyhow::anyhow!("cannot read {}: {error}", file.display())
                    })?;
                    let operation_names = crate::graphql::documents::validate(&text)
                        .await
                        .map_err(|error| {
                            anyhow::anyhow!("{} is not a valid document: {error}", file.display())
                        })?;
                    new.push(documents::NewDocument {
                        text,
                        operation_names,
                    });
                }
                let names: Vec<String> = new.iter().map(|d| d.operation_names.join(",")).collect();
                let arguments = serde_json::json!({ "files": files, "operationNames": names });
                let added = as_operator(&db, operator("documents add", arguments), async |audit| {
                    documents::add(&db, audit, new).await
                })
                .await?;
                for ((file, (hash, is_new)), names) in files.iter().zip(added).zip(names) {
                    let state = if is_new { "added" } else { "already stored" };
                    println!("{hash}  {names}  {} ({state})", file.display());
                }
            }
            DocumentsCommand::List => {
                let stored = documents::list(&db).await?;
                if stored.is_empty() {
                    eprintln!("No documents stored yet: `keystone documents add FILE…`.");
                }
                for document in stored {
                    println!(
                        "{}  {}  {}",
                        document.hash,
                        document.operation_names,
                        document.created_at.as_utc().format("%Y-%m-%d %H:%M")
                    );
                }
            }
            DocumentsCommand::Remove { hashes } => {
                let mut normalized = Vec::with_capacity(hashes.len());
                for hash in &hashes {
                    let bare = hash.strip_prefix("sha256:").unwrap_or(hash);
                    normalized.push(documents::normalize_hash(bare).ok_or_else(|| {
                        anyhow::anyhow!("{hash:?} is not a SHA-256 (64 hex digits)")
                    })?);
                }
                let arguments = serde_json::json!({ "hashes": normalized });
                let removed = as_operator(
                    &db,
                    operator("documents remove", arguments),
                    async |audit| documents::remove(&db, audit, &normalized).await,
                )
                .await?;
                println!("Removed {removed} of {} document(s).", normalized.len());
                if removed < normalized.len() as u64 {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    }
    .await;
    db.close().await?;
    result
}

/// `keystone token …`: straight on the database, so an operator can always recover access.
async fn token(url: &str, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let db = migrated_database(url).await?;
    let result = async {
        match command {
            TokenCommand::Create {
                name,
                role,
                expires_in_days,
            } => {
                let expires_at = expires_in_days.map(|days| {
                    entity::Timestamp::new(chrono::Utc::now() + chrono::Duration::days(days.into()))
                });
                let arguments = serde_json::json!({
                    "name": name,
                    "role": role.to_value(),
                    "expiresInDays": expires_in_days,
                });
                let new = NewToken {
                    name,
                    role,
                    expires_at,
                    created_by: "keystone token create".to_owned(),
                };
                let (token, secret) =
                    as_operator(&db, operator("token create", arguments), async |audit| {
                        access::create_token(&db, audit, new).await
                    })
                    .await?;
                eprintln!(
                    "Created token {:?} (role {}, id {}). Its secret, shown once:",
                    token.name,
                    token.role.to_value(),
                    token.id
                );
                println!("{}", secret.0);
            }
            TokenCommand::List => {
                println!(
                    "{:<6} {:<24} {:<7} {:<13} {:<20} {:<20} STATUS",
                    "ID", "NAME", "ROLE", "PREFIX", "CREATED", "LAST USED"
                );
                let now = entity::Timestamp::now();
                let day = |t: Option<entity::Timestamp>| {
                    t.map_or_else(
                        || "-".to_owned(),
                        |t| t.as_utc().format("%Y-%m-%d %H:%M").to_string(),
                    )
                };
                for token in access::list_tokens(&db).await? {
                    let status = match (token.revoked_at, token.expires_at) {
                        (Some(at), _) => format!("revoked {}", day(Some(at))),
                        (None, Some(at)) if at <= now => format!("expired {}", day(Some(at))),
                        (None, Some(at)) => format!("active until {}", day(Some(at))),
                        (None, None) => "active".to_owned(),
                    };
                    println!(
                        "{:<6} {:<24} {:<7} {:<13} {:<20} {:<20} {status}",
                        token.id,
                        token.name,
                        token.role.to_value(),
                        format!("{}…", token.secret_prefix),
                        day(Some(token.created_at)),
                        day(token.last_used_at),
                    );
                }
            }
            TokenCommand::Revoke { name_or_id } => {
                let Some(token) = access::find_token(&db, &name_or_id).await? else {
                    anyhow::bail!("no token named {name_or_id:?} or with that id");
                };
                let arguments = serde_json::json!({ "nameOrId": name_or_id });
                let audit = operator("token revoke", arguments).about(Object::ApiToken(token.id));
                let revoked = as_operator(&db, audit, async |audit| {
                    access::revoke_token(&db, audit, token.id).await
                })
                .await?;
                println!("Revoked token {:?} (id {}).", revoked.name, revoked.id);
            }
        }
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    }
    .await;
    db.close().await?;
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `--help`: the commands that use a database list its options, under their own heading
    /// after the command's own; the others (`runner`, `proxy`, `static`, `schema`) do not.
    #[test]
    fn only_commands_that_use_a_database_take_its_options() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        for command in cli.get_subcommands() {
            let name = command.get_name();
            let arguments: Vec<_> = command.get_arguments().collect();
            let database = arguments
                .iter()
                .position(|a| a.get_long() == Some("database-url"));
            let uses = matches!(
                name,
                "serve" | "migrate" | "token" | "documents" | "backup" | "verify"
            );
            assert_eq!(database.is_some(), uses, "{name}");
            if let Some(at) = database {
                assert!(
                    arguments[at..]
                        .iter()
                        .filter(|a| !a.is_positional() && a.get_long() != Some("help"))
                        .all(|a| a.get_help_heading() == Some("Database")),
                    "{name}: the database options come last, under their heading"
                );
            }
        }
    }
}
