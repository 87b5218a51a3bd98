//! `portshare serve`: the daemon.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use portshare_server::{Config, ServeOptions};

/// Arguments of `portshare serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The control socket. Default: the configuration's `[control] socket`, else
    /// $PORTSHARE_CONTROL, else /run/portshare/control.sock as root, else
    /// $XDG_RUNTIME_DIR/portshare/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// An address to listen on (repeatable); replaces the listen list (the configuration's
    /// and the state file's) while the daemon runs. Without any, the list; with an empty
    /// list, every address: 0.0.0.0 and ::.
    #[arg(long = "iplisten", value_name = "ADDR")]
    iplisten: Vec<IpAddr>,
    /// A TOML configuration file, read again on SIGHUP and `portshare reload`. Default:
    /// /etc/portshare/portshare.toml if it exists, else the embedded defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Worker threads. Default: the number of CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTSHARE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR"),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    // Without --config, the system's file if there is one, else the embedded defaults.
    let config_path = args.config.clone().or_else(|| {
        let system = PathBuf::from(portshare_server::DEFAULT_CONFIG_FILE);
        system.exists().then_some(system)
    });
    let config = match &config_path {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("portshare serve: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let is_root = nix::unistd::geteuid().is_root();
    let explicit = args.control.as_deref().or(config.control.socket.as_deref());
    let control =
        portshare_proto::control_socket_for_daemon(explicit, is_root, |k| std::env::var_os(k));
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    match portshare_server::run(ServeOptions {
        control,
        config,
        config_path,
        iplisten_override: args.iplisten.clone(),
        threads,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portshare serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the log is coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org). A file, a pipe or the journal gets plain
/// text.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("".into())));
    }
}
