//! `portshare`: share one port among many HTTP applications, routed by HTTP.sys's rules.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod explain;

#[derive(Debug, Parser)]
#[command(name = "portshare", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show where a request would go, and why every other candidate lost (offline: no
    /// daemon needed).
    Explain(explain::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain(args) => explain::run(&args),
    }
}
