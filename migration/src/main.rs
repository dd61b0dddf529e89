//! `cargo run -p migration -- <command>`: Keystone's migrations for CI pipelines and
//! operators, against `DATABASE_URL` or, when it is unset, the server's default SQLite file.

use std::process::ExitCode;

use clap::Parser;
use migration::cli::{MigrateCommand, run};
use migration::connection::{DEFAULT_DATABASE_URL, redact};

#[derive(Parser)]
#[command(
    name = "migration",
    about = "Apply, roll back and inspect Keystone's database migrations"
)]
struct Args {
    /// `sqlite://…` or `postgres://…`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Default: `up`.
    #[command(subcommand)]
    command: Option<MigrateCommand>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let command = args.command.unwrap_or(MigrateCommand::Up { steps: None });
    println!("Database: {}", redact(&args.database_url));
    match run(&args.database_url, &command, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
