//! `portshare show`: what a running daemon holds.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `portshare show`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    what: What,
    /// The daemon's control socket. Default: $PORTSHARE_CONTROL, else the per-user socket
    /// if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH", global = true)]
    control: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Listeners, prefixes, queues and attached processes.
    Servicestate {
        /// Print the daemon's JSON state view.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: Args) -> ExitCode {
    let path = args.control.unwrap_or_else(|| {
        portshare_proto::control_socket_for_client(|k| std::env::var_os(k), Path::exists)
    });
    match args.what {
        What::Servicestate { json } => match get(&path, "/v1/state") {
            Ok(body) => {
                if !json {
                    eprintln!(
                        "portshare show servicestate: only --json is available so far; printing JSON"
                    );
                }
                println!("{body}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portshare show servicestate: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A GET on the control socket; the body when the answer is 200.
fn get(path: &Path, target: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e} (is `portshare serve` running? \
             --control or PORTSHARE_CONTROL name another socket)",
            path.display()
        )
    })?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: portshare\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the daemon's answer has no head")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "the daemon answered {}: {body}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_owned())
}
