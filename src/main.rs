//! `portshare`: share one port among many HTTP applications, routed by HTTP.sys's rules.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod explain;
mod serve;
mod show;

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
    /// Run the daemon: own the ports, route requests to the applications that registered.
    Serve(serve::Args),
    /// Show what a running daemon holds.
    Show(show::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain(args) => explain::run(&args),
        Command::Serve(args) => serve::run(args),
        Command::Show(args) => show::run(args),
    }
}
