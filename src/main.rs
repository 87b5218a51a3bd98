//! `portshare`: share one port among many HTTP applications, routed by HTTP.sys's rules.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod client;
mod counters;
mod explain;
mod load;
mod run;
mod serve;
mod show;
mod sslcert;
mod top;

#[derive(Debug, Parser)]
#[command(name = "portshare", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a configuration file as the daemon would, and say whether it is valid
    /// (offline: no daemon needed).
    CheckConfig(admin::CheckConfigArgs),
    /// Show where a request would go, and why every other candidate lost (offline, or
    /// against a running daemon's table with --live).
    Explain(explain::Args),
    /// Add or delete addresses of the IP listen list (`netsh http add|delete iplisten`).
    Iplisten(admin::IplistenArgs),
    /// Load a URL at a constant or stepped arrival rate (open loop), and record what the
    /// client and the target queue saw, second by second (the queue lab).
    Load(load::Args),
    /// Enable or disable a request queue.
    Queue(admin::QueueArgs),
    /// Have the daemon read its configuration file again and apply it (as SIGHUP does).
    Reload(admin::ReloadArgs),
    /// Start a server, in any language, behind URLs of the daemon: it serves on a port (or
    /// Unix socket) of its own, and its requests are forwarded to it once it accepts them.
    Run(run::Args),
    /// Run the daemon: own the ports, route requests to the applications that registered.
    Serve(serve::Args),
    /// Show what a running daemon holds.
    Show(show::Args),
    /// Add, delete or show certificate bindings for https (`netsh http add|delete|show
    /// sslcert`).
    Sslcert(sslcert::Args),
    /// Watch the queues of a running daemon live: arrivals, services and refusals per
    /// second, depth, waiting time, workers and free slots (plain lines when not on a
    /// terminal).
    Top(top::Args),
    /// Add or delete URL reservations (`netsh http add|delete urlacl`).
    Urlacl(admin::UrlaclArgs),
    /// The first steps of an application `portshare run` starts (not for direct use).
    #[command(name = "__exec", hide = true)]
    Exec(run::ExecArgs),
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(hint) = admin::netsh_hint(&argv) {
        eprintln!("{hint}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::CheckConfig(args) => admin::check_config(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Iplisten(args) => admin::iplisten(args),
        Command::Load(args) => load::run(args),
        Command::Queue(args) => admin::queue(args),
        Command::Reload(args) => admin::reload(args),
        Command::Run(args) => run::run(args),
        Command::Exec(args) => run::exec(args),
        Command::Serve(args) => serve::run(args),
        Command::Show(args) => show::run(args),
        Command::Sslcert(args) => sslcert::run(args),
        Command::Top(args) => top::run(args),
        Command::Urlacl(args) => admin::urlacl(args),
    }
}

/// Writes `text` to stdout; a closed stdout (a pipe to `head`) is not worth a panic.
fn print(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn control_is_accepted_before_and_after_the_verb() {
        for args in [
            &["portshare", "show", "--control", "/s", "urlacl"][..],
            &["portshare", "show", "urlacl", "--control", "/s"],
            &["portshare", "iplisten", "add", "::1", "--control", "/s"],
            &["portshare", "queue", "--control", "/s", "disable", "q"],
            &["portshare", "reload", "--control", "/s"],
            &[
                "portshare",
                "sslcert",
                "delete",
                "ccs=443",
                "--control",
                "/s",
            ],
            &["portshare", "show", "sslcert", "--json", "--control", "/s"],
            &["portshare", "explain", "--live", "--control", "/s", "/"],
            &[
                "portshare",
                "run",
                "--control",
                "/s",
                "--url",
                "http://+:80/",
                "--",
                "a",
            ],
            &[
                "portshare",
                "run",
                "--url",
                "http://+:80/a/",
                "--url",
                "http://+:80/b/",
                "--socket-activation",
                "--unix",
                "--restart",
                "on-failure",
                "--ready-path",
                "/health",
                "--grace",
                "0.5",
                "--",
                "app",
                "--flag",
                "{port}",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["portshare", "iplisten", "add", "10.0.0.1:80"][..],
            &["portshare", "queue", "pause", "q"],
            &[
                "portshare",
                "explain",
                "--live",
                "--register",
                "http://+:80/",
                "/",
            ],
            &[
                "portshare",
                "explain",
                "--live",
                "--reserve",
                "http://+:80/",
                "/",
            ],
            &["portshare", "explain", "--control", "/s", "/"],
            &["portshare", "run", "--", "app"],
            &["portshare", "run", "--url", "http://+:80/"],
            &[
                "portshare",
                "run",
                "--url",
                "http://+:80/",
                "--unix",
                "--port-env",
                "P",
                "--",
                "a",
            ],
            &[
                "portshare",
                "run",
                "--url",
                "http://+:80/",
                "--ready-timeout",
                "0",
                "--",
                "a",
            ],
            &[
                "portshare",
                "run",
                "--url",
                "http://+:80/",
                "--ready-path",
                "x",
                "--",
                "a",
            ],
            &[
                "portshare",
                "run",
                "--url",
                "http://+:80/",
                "--restart",
                "always",
                "--",
                "a",
            ],
        ] {
            let err = Cli::try_parse_from(args).expect_err("a usage error");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
