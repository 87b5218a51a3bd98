//! `portshare run`: starts any server, in any language, behind the daemon's URLs.
//!
//! The order of things:
//!
//! 1. a control session creates a *held* upstream queue for the application's address and
//!    registers every URL, so that a refusal (access denied, a URL already registered, a
//!    port another program holds) ends run before anything starts;
//! 2. the application starts (through `portshare __exec`, see [`mod@exec`]) in its own
//!    process group, tied to run's main thread by its parent-death signal;
//! 3. once its address accepts connections (and `--ready-path` answers below 500), the
//!    queue is declared ready: the requests it held, and those that follow, go to it;
//! 4. signals to run go to the application's group; when the application exits, run
//!    exits with its status (or, with `--restart on-failure`, holds the queue and starts
//!    it again); when run exits, the group is ended and the session closes, which takes
//!    the queue and its URLs away.
//!
//! Everything runs in one `block_on` on the main thread (the runtime's workers only move
//! output), so the application is always started from the thread that lives as long as
//! run: its parent-death signal fires when run ends, however it ends.

mod app;
mod exec;
mod session;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::Signal;
use portshare_proto::control::{OpenMode, QueueSpec};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

pub(crate) use exec::{ExecArgs, exec};

use crate::client::ControlArg;
use app::{Address, App, Tail};
use session::{Session, Setup};

/// The first pause before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A start that ran this long resets the pause.
const GOOD_RUN: Duration = Duration::from_secs(60);
/// Between two readiness checks.
const CHECK_STEP: Duration = Duration::from_millis(50);
/// Exit code of run's own failures (the application's status otherwise).
const FAILED: u8 = 1;

/// When to start the application again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Restart {
    /// When it exits with a non-zero status or is killed by a signal run did not forward.
    OnFailure,
}

/// `portshare run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The queue's name; without one the daemon makes up a name only this run may use.
    #[arg(long, value_name = "QUEUE")]
    name: Option<String>,
    /// A URL prefix to serve, such as http://+:8080/app/ (repeat for more).
    #[arg(long = "url", value_name = "PREFIX", required = true)]
    urls: Vec<String>,
    /// The environment variable that tells the application its port (default PORT).
    #[arg(long, value_name = "VAR", conflicts_with = "unix")]
    port_env: Option<String>,
    /// Serve on a Unix socket in a private directory: its path is in $PORTSHARE_SOCKET
    /// and replaces {socket} in the arguments.
    #[arg(long)]
    unix: bool,
    /// Make the listening socket and pass it as descriptor 3 (systemd's LISTEN_FDS
    /// protocol): loopback TCP, or a Unix socket with --unix.
    #[arg(long)]
    socket_activation: bool,
    /// The application sees paths below the URL prefix, and the prefix in
    /// X-Forwarded-Prefix.
    #[arg(long)]
    strip_prefix: bool,
    /// Ready only once a GET of this path answers with a status below 500.
    #[arg(long, value_name = "PATH", value_parser = ready_path)]
    ready_path: Option<String>,
    /// Seconds the application has to get ready.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    ready_timeout: Duration,
    /// Start the application again when it fails.
    #[arg(long, value_enum, value_name = "WHEN")]
    restart: Option<Restart>,
    /// Seconds between TERM and KILL when the application is stopped.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    grace: Duration,
    /// Fail at once when no daemon runs, instead of waiting for one.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    control: ControlArg,
    /// The application's command and arguments; {port} and {socket} are replaced.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    command: Vec<OsString>,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("{s}: expected a positive number of seconds"));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}"))
}

fn ready_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{s:?}: expected a path starting with / without spaces or control characters"
        ));
    }
    Ok(s.to_owned())
}

/// At most `n` characters of `s`.
pub(crate) fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

pub(crate) fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portshare run: cannot start the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    // block_on polls on this, the main thread: the application is started from it.
    let code = runtime.block_on(Run::new(args).main());
    // Output tasks that still wait on a pipe a grandchild holds are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}

/// What one `portshare run` holds.
struct Run {
    args: Args,
    tail: Tail,
}

/// How the supervision of one start ended.
enum Ended {
    /// Exit with this code.
    Exit(u8),
    /// Start the application again.
    Restart { ran: Duration },
}

impl Run {
    fn new(args: Args) -> Run {
        Run {
            args,
            tail: Tail::default(),
        }
    }

    fn fail(&self, message: impl std::fmt::Display) -> u8 {
        eprintln!("portshare run: {message}");
        FAILED
    }

    async fn main(self) -> u8 {
        let a = &self.args;
        let address = if a.unix {
            Address::private_socket()
        } else {
            Address::free_port()
        };
        let mut address = match address {
            Ok(addr) => addr,
            Err(e) => {
                return self.fail(format_args!("cannot choose the application's address: {e}"));
            }
        };
        let listener = if a.socket_activation {
            match address.listen() {
                Ok(l) => Some(l),
                Err(e) => {
                    address.remove();
                    return self.fail(format_args!("cannot make the listening socket: {e}"));
                }
            }
        } else {
            None
        };
        let code = self.serve(&address, listener.as_ref()).await;
        drop(listener);
        address.remove();
        code
    }

    async fn serve(&self, address: &Address, listener: Option<&OwnedFd>) -> u8 {
        let a = &self.args;
        let setup = Setup {
            path: a.control.client().path().to_owned(),
            spec: QueueSpec {
                name: a.name.clone(),
                mode: OpenMode::Create,
                upstream: Some(address.upstream()),
                held: true,
                strip_prefix: a.strip_prefix,
                ..QueueSpec::default()
            },
            urls: a.urls.clone(),
            no_wait: a.no_wait,
        };
        // Signals are taken before anything starts: from here on, TERM and INT stop the
        // application rather than run alone.
        let mut signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => return self.fail(format_args!("cannot handle signals: {e}")),
        };
        let mut announced = false;
        let mut session = tokio::select! {
            s = setup.open(&mut announced) => match s {
                Ok(s) => Some(s),
                Err(f) => return self.fail(f.report()),
            },
            sig = signals.recv() => return 128 + sig as u8,
        };
        let env = self.environment(address);
        let command = self.command(address);
        let mut backoff = FIRST_BACKOFF;
        loop {
            if listener.is_none()
                && let Some(path) = address.socket()
            {
                // The application binds the path itself: a socket left by its last start
                // would be in its way.
                let _ = std::fs::remove_file(path);
            }
            // Started here, in the future block_on polls on the main thread.
            let mut app = match App::spawn(&command, &env, listener, &self.tail) {
                Ok(app) => app,
                Err(e) => return self.fail(format_args!("cannot start the application: {e}")),
            };
            match self
                .supervise(&mut app, address, &setup, &mut session, &mut signals)
                .await
            {
                Ended::Exit(code) => {
                    app.stop(self.args.grace).await;
                    return code;
                }
                Ended::Restart { ran } => {
                    if ran >= GOOD_RUN {
                        backoff = FIRST_BACKOFF;
                    }
                    // Held first: requests wait for the next start instead of meeting a
                    // closed port.
                    if let Some(s) = session.as_mut()
                        && s.set_ready(false).await.is_err()
                    {
                        session = None;
                    }
                    app.end_group(Instant::now() + self.args.grace).await;
                    drop(app);
                    eprintln!(
                        "portshare run: restarting the application in {:.1} s",
                        backoff.as_secs_f64()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        sig = signals.recv() => return 128 + sig as u8,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The application's environment: its address.
    fn environment(&self, address: &Address) -> Vec<(String, OsString)> {
        let mut env = Vec::new();
        match address.socket() {
            Some(path) => env.push(("PORTSHARE_SOCKET".to_owned(), path.as_os_str().to_owned())),
            // A socket-activated application takes its socket, not a port to bind.
            None if self.args.socket_activation => {}
            None => env.push((
                self.args
                    .port_env
                    .clone()
                    .unwrap_or_else(|| "PORT".to_owned()),
                address.port().to_string().into(),
            )),
        }
        if self.args.socket_activation {
            env.push(("LISTEN_FDS".to_owned(), "1".into()));
            env.push(("LISTEN_FDNAMES".to_owned(), "portshare".into()));
        }
        env
    }

    /// The command with `{port}` and `{socket}` replaced.
    fn command(&self, address: &Address) -> Vec<OsString> {
        let port = address.port().to_string();
        let socket = address
            .socket()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.args
            .command
            .iter()
            .map(|arg| match arg.to_str() {
                Some(s) if s.contains("{port}") || s.contains("{socket}") => s
                    .replace("{port}", &port)
                    .replace("{socket}", &socket)
                    .into(),
                _ => arg.clone(),
            })
            .collect()
    }

    /// Watches one start of the application until it exits or run is told to stop.
    async fn supervise(
        &self,
        app: &mut App,
        address: &Address,
        setup: &Setup,
        session: &mut Option<Session>,
        signals: &mut Signals,
    ) -> Ended {
        let started = Instant::now();
        let ready_by = started + self.args.ready_timeout;
        let mut ready = false;
        let mut why_not = String::from("no check has answered yet");
        // Set once TERM or INT was passed on: the application is stopping.
        let mut stopping = false;
        let mut kill_at: Option<Instant> = None;
        let mut forwarded: Option<Signal> = None;
        let mut next_check = Instant::now();
        let mut announced = true;
        loop {
            let lost = session.is_none();
            let rejoin = async {
                if lost {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return setup.open(&mut announced).await.ok();
                }
                std::future::pending().await
            };
            tokio::select! {
                status = app.wait() => {
                    let status = match status {
                        Ok(s) => s,
                        Err(e) => return Ended::Exit(self.fail(format_args!(
                            "cannot wait for the application: {e}"
                        ))),
                    };
                    let code = app::exit_code(status);
                    let ran = started.elapsed();
                    let failed = code != 0;
                    let ours = forwarded.is_some_and(|sig| {
                        std::os::unix::process::ExitStatusExt::signal(&status)
                            == Some(sig as i32)
                    });
                    if !stopping && failed && !ours && self.args.restart.is_some() {
                        eprintln!(
                            "portshare run: the application (pid {}) exited with status {code}",
                            app.pid()
                        );
                        return Ended::Restart { ran };
                    }
                    if !ready && !stopping {
                        app.drain_output(Duration::from_millis(500)).await;
                        self.print_tail(&format!(
                            "the application (pid {}) exited with status {code} before it was \
                             ready",
                            app.pid()
                        ));
                    }
                    return Ended::Exit(code);
                }
                sig = signals.recv() => {
                    app.signal(sig);
                    forwarded = Some(sig);
                    if sig != Signal::SIGHUP && !stopping {
                        stopping = true;
                        kill_at = Some(Instant::now() + self.args.grace);
                    }
                }
                () = sleep_until(kill_at) => {
                    app.signal(Signal::SIGKILL);
                    kill_at = None;
                }
                checked = async {
                    tokio::time::sleep_until(next_check).await;
                    address.check(self.args.ready_path.as_deref()).await
                }, if !ready && !stopping => {
                    next_check = Instant::now() + CHECK_STEP;
                    match checked {
                        Err(reason) => why_not = reason,
                        Ok(()) => {
                            ready = true;
                            if let Some(s) = session.as_mut() {
                                match s.set_ready(true).await {
                                    Ok(()) => {}
                                    Err(e) if e.api().is_some() => {
                                        return Ended::Exit(self.fail(format_args!(
                                            "the daemon refused to send requests to the \
                                             application: {e}"
                                        )));
                                    }
                                    Err(_) => *session = None,
                                }
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(ready_by), if !ready && !stopping => {
                    app.stop(self.args.grace).await;
                    app.drain_output(Duration::from_millis(500)).await;
                    self.print_tail(&format!(
                        "the application did not get ready within {} s ({why_not})",
                        self.args.ready_timeout.as_secs_f64()
                    ));
                    return Ended::Exit(FAILED);
                }
                () = async {
                    match session.as_mut() {
                        Some(s) => s.closed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    eprintln!(
                        "portshare run: the daemon closed the session; registering again when \
                         it is back"
                    );
                    *session = None;
                }
                rejoined = rejoin => {
                    if let Some(mut s) = rejoined {
                        if ready && s.set_ready(true).await.is_err() {
                            continue;
                        }
                        eprintln!("portshare run: registered again with the daemon");
                        *session = Some(s);
                    }
                }
            }
        }
    }

    fn print_tail(&self, what: &str) {
        let lines = self.tail.lines();
        if lines.is_empty() {
            eprintln!("portshare run: {what}; it wrote nothing");
            return;
        }
        eprintln!("portshare run: {what}; its last output:");
        for line in lines {
            eprintln!("    {line}");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// TERM, INT and HUP to run, passed on to the application's group.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal. Cancel safe.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }
}
