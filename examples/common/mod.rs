//! What every example does the same way: logs, the control socket flag, the `ready` line
//! and the signals that stop it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use portshare_client::{Error, QueueBuilder, Running};
use tokio::signal::unix::{SignalKind, signal};

/// Logs go to stderr; `RUST_LOG` picks what (default `info`). Coloured only on a terminal,
/// and never with `NO_COLOR` set, as the daemon's.
pub(crate) fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}

/// `--control PATH` when given; else the SDK looks the socket up (`PORTSHARE_CONTROL`, the
/// per-user socket, the system one).
#[allow(
    dead_code,
    reason = "shared_port names the socket of the daemon it starts"
)]
pub(crate) fn with_control(builder: QueueBuilder, control: Option<PathBuf>) -> QueueBuilder {
    match control {
        Some(path) => builder.control(path),
        None => builder,
    }
}

/// Prints the daemon's warnings on stderr, then `ready` on stdout.
pub(crate) fn announce(running: &[&Running]) {
    for warning in running.iter().flat_map(|r| r.warnings()) {
        eprintln!("warning: {warning}");
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout only means nobody waits for the line.
    let _ = writeln!(out, "ready");
    let _ = out.flush();
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn stop_signal() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// What a one-queue example does once `serve` has answered: print the error and fail, or
/// announce `ready`, run until SIGTERM or SIGINT, and drain.
#[allow(
    dead_code,
    reason = "shared_port serves two queues and stops them itself"
)]
pub(crate) async fn run_until_stopped(served: Result<Running, Error>) -> ExitCode {
    let running = match served {
        Ok(running) => running,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    announce(&[&running]);
    if let Err(e) = stop_signal().await {
        eprintln!("error: cannot wait for signals: {e}");
    }
    match running.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The path part of a prefix (`/axum/` for `http://+:8080/axum/`), ending in `/`: where an
/// application's routes sit, as it sees the whole path routing cooked.
#[allow(dead_code, reason = "only the axum examples route by path")]
pub(crate) fn prefix_path(prefix: &str) -> String {
    let after_scheme = prefix.split_once("://").map_or(prefix, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    }
}
