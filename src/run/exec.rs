//! `portshare __exec`: the first moments of an application `portshare run` starts, in the
//! new process and before the application's own program replaces it.
//!
//! The workspace forbids `unsafe`, so nothing can run between `fork` and `exec` in `run`
//! itself; instead `run` starts its own binary again with this hidden subcommand, which
//! does, in order:
//!
//! 1. `setpgid(0, 0)`: the application and whatever it starts form their own process
//!    group, which `run` signals as a whole;
//! 2. `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills the process when the thread
//!    that started it ends (`run` starts it from its main thread, which lives as long as
//!    `run`), so even `SIGKILL` to `run` takes the application down;
//! 3. checks that its parent is still `run` (else `run` died before step 2 and this
//!    process stops at once);
//! 4. for socket activation, moves the listening socket `run` handed over as standard
//!    input to descriptor 3, sets standard input to `/dev/null`, and sets `LISTEN_PID` to
//!    its own pid (systemd's protocol);
//! 5. `execvp`s the application: pid and process group are kept across it.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use nix::sys::signal::Signal;
use nix::unistd::{self, Pid};

/// The descriptor systemd's protocol passes the first socket on (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// `portshare __exec` (hidden: only `portshare run` calls it).
#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// The pid of `portshare run`: this process stops if its parent is another.
    #[arg(long)]
    parent: u32,
    /// Standard input is a listening socket to pass as descriptor 3.
    #[arg(long)]
    activation: bool,
    /// The application's command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<OsString>,
}

/// What makes an application's exit status when it cannot be started: 127 for a command not
/// found, 126 for any other failure (as shells answer).
fn failed(what: &str, error: impl std::fmt::Display, status: u8) -> ExitCode {
    eprintln!("portshare run: {what}: {error}");
    ExitCode::from(status)
}

pub(crate) fn exec(args: ExecArgs) -> ExitCode {
    if let Err(e) = unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        return failed("cannot make a process group for the application", e, 126);
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return failed("cannot tie the application to portshare run", e, 126);
    }
    if u32::try_from(unistd::getppid().as_raw()).ok() != Some(args.parent) {
        // run is gone already: its application must not start.
        return ExitCode::from(126);
    }
    let mut listen_pid = None;
    if args.activation {
        // The lowest free descriptor: 3, unless a descriptor without close-on-exec came
        // down from run's own parent.
        let socket = match unistd::dup(std::io::stdin().as_fd()) {
            Ok(fd) => fd,
            Err(e) => return failed("cannot pass the listening socket", e, 126),
        };
        if socket.as_raw_fd() != LISTEN_FDS_START {
            return failed(
                "cannot pass the listening socket as descriptor 3",
                "descriptor 3 is open already, inherited from the program that started \
                 portshare run; start it without that descriptor",
                126,
            );
        }
        let null = match File::open("/dev/null") {
            Ok(f) => f,
            Err(e) => return failed("cannot open /dev/null", e, 126),
        };
        if let Err(e) = unistd::dup2_stdin(&null) {
            return failed("cannot set standard input to /dev/null", e, 126);
        }
        // Kept open, without close-on-exec, for the application.
        let _ = socket.into_raw_fd();
        listen_pid = Some(std::process::id());
    }
    let Some(argv) = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()).ok())
        .collect::<Option<Vec<CString>>>()
    else {
        return failed(
            "cannot start the application",
            "an argument holds a NUL byte",
            126,
        );
    };
    let program = &argv[0];
    let error = match listen_pid {
        None => unistd::execvp(program, &argv),
        Some(pid) => {
            let mut env: Vec<CString> = std::env::vars_os()
                .filter(|(k, _)| k != "LISTEN_PID")
                .filter_map(|(k, v)| {
                    let mut kv = k.as_bytes().to_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    CString::new(kv).ok()
                })
                .collect();
            if let Ok(kv) = CString::new(format!("LISTEN_PID={pid}")) {
                env.push(kv);
            }
            unistd::execvpe(program, &argv, &env)
        }
    };
    let Err(error) = error;
    let status = if error == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    };
    failed(
        &format!("cannot start {}", args.command[0].to_string_lossy()),
        error,
        status,
    )
}
