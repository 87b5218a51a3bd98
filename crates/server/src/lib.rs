//! The Portshare daemon: listeners per bound address, HTTP.sys's HTTP/1 loop on each client
//! connection, request queues, workers attached over Unix sockets, upstream queues, and the
//! control socket that applications register through. [`run`] starts it; the `portshare
//! serve` command is a thin wrapper around it. What keeps it from starting comes back as an
//! [`Error`], which says whether the configuration ([`Error::is_config`]) or the control
//! socket ([`Error::is_bind`]) is at fault; a configuration file's text that is refused
//! comes back as a [`ConfigError`] naming the line and the key.
//!
//! The request-head parser is public for its own sake: it answers malformed requests
//! exactly as HTTP.sys does.
//!
//! ```
//! use portshare_server::{Body, HeadLimits, Parsed, parse_head};
//!
//! let limits = HeadLimits::default();
//! let buf = b"POST /app/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello";
//!
//! assert_eq!(parse_head(&buf[..20], &limits)?, Parsed::Partial);
//! let Parsed::Complete { head, len } = parse_head(buf, &limits)? else {
//!     return Err("incomplete".into());
//! };
//! assert_eq!(head.method(), b"POST");
//! assert_eq!(head.host(), Some(&b"example.com"[..]));
//! assert_eq!(head.body(), Body::Length(5));
//! assert!(head.keep_alive());
//! assert_eq!(&buf[len..], b"hello");
//!
//! let err = parse_head(b"GET / HTTP/2.0\r\n\r\n", &limits).map_err(|e| e.rejection().status);
//! assert_eq!(err, Err(505));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Request heads
//!
//! [`parse_head`] reads the request line and headers at the start of a buffer and returns
//! [`Parsed::Partial`] until the blank line is in. Call it again as bytes arrive: an answer
//! once given never changes. A refused head comes back as a [`HeadError`] holding the
//! [`Rejection`](portshare_router::Rejection) (status and httperr reason) to answer with
//! before closing the connection. The rules, HTTP.sys's:
//!
//! - **Request line**: `method SP target SP version`. Lines may end in LF alone, and spaces or
//!   tabs may follow the version. Any token is a method (`get`, `xyzzy` are unknown verbs,
//!   kept as sent); anything else is 400 `Verb`. `HTTP/1.0` and `HTTP/1.1`…`HTTP/1.9` are
//!   served, `HTTP/2.0` and above are 505 `Version_N/S`, the rest 400. Empty lines before
//!   the request line are skipped.
//! - **Target**: kept raw, canonicalized later by routing. A space or tab inside it breaks the
//!   line (400 `BadRequest`), other control bytes are 400 `URL`, bytes of 0x80 and above
//!   pass. Longer than `MaxFieldLength`: 414 `URL_Length`, decided as soon as the bytes are in.
//! - **Sizes**: request line and headers above `MaxRequestBytes`: 400 `RequestLength`, also
//!   while the head is still coming; a header field (name and value) above `MaxFieldLength`:
//!   400 `FieldLength`. There is no limit on the number of headers.
//! - **Headers**: a line without `:`, an empty name or one that is not a token (space before
//!   the colon included), a control character other than tab in a value, and continuation
//!   lines (obs-fold) are 400 `Header`. A CR not followed by LF is 400 `Invalid_CR/LF`. A
//!   second Host is 400 `Hostname`. Repeated headers are kept; [`Head::joined`] gives them
//!   joined with `", "`, as HTTP.sys delivers them.
//! - **Body**: a Content-Length that is not a number is 400 `Number`, two different ones
//!   (repeated or in a list) 400 `Header`. Transfer-Encoding must be exactly one `chunked`,
//!   else 501 `N/I`; both headers together are 400 `Header`. POST and PUT over HTTP/1.1
//!   with neither are 411 `LengthRequired`. See [`Body`].
//! - **Connection and Expect**: see [`Head::keep_alive`] and [`Head::expect_continue`].

mod accept;
mod access;
mod accesslog;
mod bind;
mod body;
mod budget;
mod challenge;
mod config;
mod conn;
mod control;
mod daemon;
mod errlog;
mod error;
mod flow;
mod h2;
mod handoff;
mod head;
mod identity;
mod metrics;
mod owner;
mod pages;
mod pipeline;
#[cfg(target_os = "linux")]
mod procfs;
mod proxy;
mod queue;
mod quota;
mod relay;
mod shared;
#[cfg(target_os = "linux")]
mod sockdiag;
#[cfg(test)]
mod testutil;
mod timers;
mod tls;
mod trust;
mod upstream;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use config::{
    AccessLogConfig, AccessLogFormat, AccessLogRollover, AcmeConfig, Config, ConfigError,
    ControlConfig, DEFAULT_CONFIG_FILE, ErrLogConfig, Limits, ListenerConfig, MetricsConfig,
    QueueAccessConfig, QueueConfig, SslCertConfig, Timers, TrustedProxyConfig, UrlAclConfig,
    default_state_file,
};
pub use error::Error;
pub use head::{Body, Head, HeadError, HeadLimits, Headers, Parsed, parse_head};
pub use timers::Timer;
pub use upstream::Address;

/// The counters' recording path alone, for `benches/metrics.rs`: not an API.
#[doc(hidden)]
pub mod bench {
    use std::sync::Arc;
    use std::time::Instant;

    use crate::metrics::{QueueCounters, Service, SiteCounters};

    /// What one served request records: its queue's arrival, slot and its release, its
    /// site's request and bytes.
    #[derive(Debug)]
    pub struct Recorder {
        queue: Arc<QueueCounters>,
        site: Arc<SiteCounters>,
    }

    impl Default for Recorder {
        fn default() -> Recorder {
            let service = Service::default();
            Recorder {
                queue: service.queue("bench", 0),
                site: service.site(portshare_router::Scheme::Http, "+", 80),
            }
        }
    }

    impl Recorder {
        /// Records one request as the daemon does, the clock read as often.
        pub fn request(&self) {
            let arrived = Instant::now();
            self.queue.arrival();
            self.site.request(b"GET");
            self.site.read(80);
            self.queue.taken(arrived, arrived);
            self.site.written(120);
            self.queue.done(arrived, arrived);
        }
    }
}

/// The route table's change path, for `benches/changes.rs`: not an API.
#[doc(hidden)]
pub mod bench_changes {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use portshare_router::{RouteTable, TableError, UrlPrefix};

    use crate::daemon::routes::Routes;

    /// The daemon's two copies and what connections read, changed and published as a
    /// control request does.
    pub struct Changes {
        routes: Routes<u32>,
        shared: ArcSwap<RouteTable<u32>>,
    }

    impl Default for Changes {
        fn default() -> Changes {
            Changes {
                routes: Routes::new(),
                shared: ArcSwap::from_pointee(RouteTable::new()),
            }
        }
    }

    impl std::fmt::Debug for Changes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.routes.fmt(f)
        }
    }

    impl Changes {
        /// Registers `prefix`; published with the next [`publish`](Changes::publish).
        pub fn add(&mut self, prefix: UrlPrefix, value: u32) -> Result<(), TableError> {
            self.routes.add(prefix, value)
        }

        /// Removes `prefix`.
        pub fn remove(&mut self, prefix: &UrlPrefix) -> Result<(), TableError> {
            self.routes.remove(prefix).map(drop)
        }

        /// Publishes the changes so far.
        pub fn publish(&mut self) {
            self.routes.publish(&self.shared);
        }

        /// What a connection routes on.
        pub fn published(&self) -> Arc<RouteTable<u32>> {
            self.shared.load_full()
        }
    }
}

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The control socket's path.
    pub control: PathBuf,
    /// The configuration.
    pub config: Config,
    /// The file `config` came from: read again on reload (SIGHUP, `POST /v1/reload`).
    pub config_path: Option<PathBuf>,
    /// Addresses that replace the configuration's listen list while the daemon runs
    /// (`--iplisten`); empty to use the list.
    pub iplisten_override: Vec<std::net::IpAddr>,
    /// Worker threads; 1 runs everything on the calling thread.
    pub threads: usize,
}

impl ServeOptions {
    /// Options for `config` alone, with its control socket at `control`.
    pub fn new(control: PathBuf, config: Config) -> ServeOptions {
        ServeOptions {
            control,
            config,
            config_path: None,
            iplisten_override: Vec::new(),
            threads: 1,
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
///
/// # Errors
///
/// The daemon could not start, and why, for the operator: [`Error::is_config`] when the
/// state file cannot be read or the configuration's queues cannot be created,
/// [`Error::is_bind`] when the control socket cannot be bound, neither when the process
/// cannot run at all (no runtime, too low an open-file limit).
pub fn run(opts: ServeOptions) -> Result<(), Error> {
    raise_open_files();
    let runtime = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| Error::start("cannot start the runtime").with(e))?;
    runtime.block_on(async {
        serve_until(opts, async {
            let stop = shutdown_signal().await;
            tracing::info!(signal = stop, "shutting down");
        })
        .await
    })
}

/// Runs the daemon on the current tokio runtime until `stop` completes, for embedding it
/// (benchmarks, tests of other crates). `opts.threads` is not used: the runtime is the
/// caller's.
///
/// # Errors
///
/// As [`run`].
pub async fn serve_until(
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    // The effective ids decide what the daemon may do, on every Unix.
    let own_uid = nix::unistd::geteuid().as_raw();
    let own_gid = nix::unistd::getegid().as_raw();
    let state_file = opts
        .config
        .state_file
        .clone()
        .unwrap_or_else(|| config::default_state_file(own_uid == 0, |k| std::env::var_os(k)));
    let mode = opts.config.control.mode_bits();
    let budget = budget::Budget::current().map_err(Error::start)?;
    tracing::info!(
        open_files = budget.limit,
        clients = budget.clients,
        control = budget.control,
        control_admin = budget.control_admin,
        upstream = budget.upstream,
        reserve = budget.reserve,
        listeners = budget.listeners,
        "descriptor budget"
    );
    let daemon = daemon::Daemon::new(daemon::Start {
        budget,
        config: opts.config,
        config_path: opts.config_path,
        iplisten_flags: opts.iplisten_override,
        own_uid,
        own_gid,
        state_file,
    });
    let listener = control::bind(&opts.control, mode)?;
    if let Err(e) = daemon.load() {
        let _ = std::fs::remove_file(&opts.control);
        return Err(e);
    }
    let scrapes = match start_scrapes(&daemon).await {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&opts.control);
            return Err(e);
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        control = %opts.control.display(),
        "portshare ready"
    );
    let control = tokio::spawn(control::serve(Arc::clone(&daemon), listener));
    let reloads = tokio::spawn(reload_on_sighup(Arc::clone(&daemon)));
    stop.await;
    control.abort();
    reloads.abort();
    if let Some(s) = scrapes {
        s.abort();
    }
    // Stop accepting, let every request in progress or waiting in a queue finish within
    // the shutdown timer, then close what is left: each request cut short is logged.
    let (grace, accepting) = daemon.begin_stop();
    for task in accepting {
        // Aborted: each ends at its next poll, giving back the place it held.
        let _ = task.await;
    }
    let open = daemon.open_connections();
    if open > 0 {
        tracing::info!(
            connections = open,
            grace_secs = grace.as_secs(),
            "stopping: waiting for the requests of open connections"
        );
    }
    // A second signal cuts the wait short.
    let drained = tokio::select! {
        drained = wait_for_connections(&daemon, grace) => drained,
        stop = shutdown_signal() => {
            tracing::warn!(signal = stop, "stop asked again: closing now");
            false
        }
    };
    if !drained {
        tracing::warn!(
            connections = daemon.open_connections(),
            grace_secs = grace.as_secs(),
            "stopping: connections still busy at the shutdown timer: closing them"
        );
    }
    daemon.close_all();
    if !drained {
        // Requests cut short log their lines as their connections end.
        wait_for_connections(&daemon, Duration::from_secs(1)).await;
    }
    // No httperr line lost when the process exits next.
    let settings = daemon.shared.settings.load_full();
    settings.errlog.flush().await;
    settings.access.flush().await;
    let _ = std::fs::remove_file(&opts.control);
    Ok(())
}

/// Opens the scrape listener of `[metrics] listen`, if the configuration asks for one.
async fn start_scrapes(
    daemon: &Arc<daemon::Daemon>,
) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
    let Some(addr) = daemon.metrics_listen() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::start(format!(
            "cannot listen for metrics scrapes on {addr} ([metrics] listen)"
        ))
        .with(e)
    })?;
    tracing::info!(%addr, "metrics: answering scrapes at /metrics");
    let d = Arc::clone(daemon);
    let sample: metrics::listen::Sampler = Arc::new(move || d.metrics_all());
    Ok(Some(tokio::spawn(metrics::listen::serve(listener, sample))))
}

/// Raises the soft limit on open files to the hard one: each client connection is a
/// descriptor, and the usual soft limit of 1024 is far below what a port shared by many
/// applications holds. The descriptor budget is then cut from the raised limit.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(soft, error = %e, "cannot raise the open-file limit"),
        }
    }
}

/// Waits until no client connection is open, at most `limit`; true when none is.
async fn wait_for_connections(daemon: &daemon::Daemon, limit: Duration) -> bool {
    let until = tokio::time::Instant::now() + limit;
    while daemon.open_connections() > 0 {
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Reloads the configuration file on each SIGHUP.
async fn reload_on_sighup(daemon: Arc<daemon::Daemon>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot catch SIGHUP: reload with `portshare reload` instead");
        return;
    };
    while hup.recv().await.is_some() {
        let d = daemon.clone();
        match tokio::task::spawn_blocking(move || d.reload()).await {
            Ok(Ok(report)) => {
                for change in &report.changes {
                    tracing::info!(%change, "changed by the reload");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "reload refused"),
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    }
}
