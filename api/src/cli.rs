//! The `keystone` command line: `serve` (the default), `migrate …`, `verify`.

use std::process::ExitCode;

use clap::{Args, FromArgMatches, Parser, Subcommand};
use migration::cli::MigrateCommand;
use migration::connection::redact;

use crate::config::{Config, DatabaseArgs, ServeArgs};

#[derive(Parser)]
#[command(
    name = "keystone",
    version,
    about = "Keystone: register Git repositories, define apps, deploy them.",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,
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
    },
    /// Measure throughput against the database floor (run a release build; needs `wrk`).
    Bench(crate::bench::BenchArgs),
    /// Print the GraphQL schema (SDL); `schema.graphql` is this output.
    Schema,
    /// Check that migrations apply, match the entities, and round-trip.
    Verify {
        /// Check the configured database itself instead of a scratch one (only the checks
        /// that cannot change it).
        #[arg(long)]
        in_place: bool,
    },
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
            crate::serve(Config::new(&cli.database, &serve)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { command } => {
            println!("Database: {}", redact(&cli.database.database_url));
            migration::cli::run(&cli.database.database_url, &command, &mut std::io::stdout())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            crate::bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            print!("{}", crate::graphql::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { in_place } => {
            let target = if in_place {
                ""
            } else {
                "a scratch database like "
            };
            println!(
                "Verifying on {target}{}",
                redact(&cli.database.database_url)
            );
            let passed =
                crate::verify::verify(&cli.database.database_url, in_place, &mut std::io::stdout())
                    .await?;
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
