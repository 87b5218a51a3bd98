//! The access log: one line for each request routed to a queue, as HTTP.sys logs the
//! requests of a URL group, in the W3C extended log format with HTTP.sys's fields or as
//! JSON lines, into files of a folder the daemon owns (`[access_log]`, off by default).
//!
//! # Which requests
//!
//! Every request that routing gave to a queue gets a line when it ends, however it ends:
//! served, answered by the daemon for its queue (503 `QueueFull`, a redirect to https, a
//! 502 from an upstream), or cut short (its client gone, a timer, the queue letting it
//! go). A request refused before routing (a head that does not parse, no prefix matching,
//! 421) is in the error log only (`crate::errlog`).
//!
//! # Fields
//!
//! `date time s-ip cs-method cs-uri-stem cs-uri-query s-port c-ip cs(User-Agent)
//! cs(Referer) sc-status sc-win32-status time-taken s-queuename`:
//!
//! - `date`, `time`: UTC, when the line is written, that is, as the request ends.
//! - `c-ip`: the request's client (the one a trusted proxy forwards for, if any).
//! - `cs-uri-stem`, `cs-uri-query`: the path routing used (canonicalized and re-encoded,
//!   as the application gets it) and the raw query.
//! - `sc-status`: the status of the response the client was sent (the daemon's page or the
//!   application's head), `-` (JSON `null`) when no response began.
//! - `sc-win32-status`: 0 when the response was written whole; 64
//!   (`ERROR_NETNAME_DELETED`) when the client went away first; 121 (`ERROR_SEM_TIMEOUT`)
//!   when a timer ended the request; 1236 (`ERROR_CONNECTION_ABORTED`) when the daemon
//!   reset it (its queue or worker let it go, an application broke its framing, a refusal
//!   under `basic` verbosity).
//! - `time-taken`: milliseconds from the first byte of the request head (HTTP/1; for
//!   HTTP/2, from the stream's decoded header list) to the last byte of the response
//!   handed to the socket (HTTP/1) or to the HTTP/2 framing layer.
//! - `s-queuename`: the queue, by the name httperr gives the field.
//!
//! In W3C lines a missing or empty value is `-`, a space is `+` (as IIS writes them), and
//! every other byte outside printable ASCII, CR and LF included, is `%XX`: a client cannot
//! end a line or forge one. JSON values are JSON strings (invalid UTF-8 replaced) or
//! numbers. A value is cut at 8192 bytes.
//!
//! # Files
//!
//! One file set for the service in the folder, or with `per_queue` one per queue in
//! `FOLDER/NAME/`, NAME the queue's name with every byte outside `[A-Za-z0-9._-]` as
//! `%XX` (so no `/`, no `..`, no control bytes), cut to 200 bytes and then followed by
//! `~` and a hash of the whole name. Files are named as HTTP.sys names them:
//! `u_exYYMMDD.log` (daily), `u_exYYMMDDHH.log` (hourly), `u_extendN.log` (size), with
//! `.jsonl` for JSON. A W3C file gets the directives (`#Software`, `#Version`, `#Date`,
//! `#Fields`) at its top, and again where a daemon starts appending to it (after a
//! restart or a reload), as IIS does.
//!
//! The folder is checked when the daemon starts and on reload: created 0750 if missing,
//! refused (a configuration error) when it is a symbolic link, not a folder, owned by an
//! account other than the daemon's and root, or writable by its group or others. Files are
//! opened `O_APPEND | O_NOFOLLOW | O_CLOEXEC` (and `O_NONBLOCK`, so a FIFO cannot hold the
//! writer), created 0640, and used only when they are regular files with one link, the
//! daemon's own. A file that cannot be opened or written costs a warning, and the set's
//! lines are dropped (and counted) for 10 seconds before it is tried again.
//!
//! # Handoff
//!
//! As `errlog`: the line is formatted on the request path and handed to one writer thread
//! over a bounded channel with `try_send` ([`crate::handoff`]). A full channel (a slow or stalled disk) drops
//! the line and counts it; the request never waits. The count of lines dropped since the
//! log was opened is in the service state (`access_log_dropped`), and the writer thread
//! warns with the number each time lines were dropped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portshare_router::Reason;

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogRollover};
use crate::handoff::{Handoff, Sink};
use crate::head::Head;
use crate::queue::Queue;

/// The buffer in front of each file.
const BUFFER: usize = 64 * 1024;
/// A file set that failed is tried again after this long.
const RETRY: Duration = Duration::from_secs(10);
/// A per-queue file without lines for this long is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// Most files open at once; the least recently used is closed first.
const MAX_OPEN: usize = 64;
/// Longest value written; the rest is cut.
const MAX_VALUE: usize = 8192;
/// Longest encoded queue name in a folder name, before its hash.
const MAX_NAME: usize = 200;

/// The `#Software` directive, as the error log's.
const SOFTWARE: &str = "Microsoft HTTP API 2.0";
/// The columns of a line.
const FIELDS: [&str; 14] = [
    "date",
    "time",
    "s-ip",
    "cs-method",
    "cs-uri-stem",
    "cs-uri-query",
    "s-port",
    "c-ip",
    "cs(User-Agent)",
    "cs(Referer)",
    "sc-status",
    "sc-win32-status",
    "time-taken",
    "s-queuename",
];

/// `sc-win32-status` of a response written whole.
const WIN32_OK: u32 = 0;
/// `ERROR_NETNAME_DELETED`: the client went away.
const WIN32_GONE: u32 = 64;
/// `ERROR_SEM_TIMEOUT`: a timer ended the request.
const WIN32_TIMEOUT: u32 = 121;
/// `ERROR_CONNECTION_ABORTED`: the daemon reset the request.
const WIN32_ABORTED: u32 = 1236;
/// No `sc-win32-status` noted yet.
const UNSET: u32 = u32::MAX;

/// The access log files: a handle on the writer thread, in the daemon's settings for as
/// long as they are in force. Dropping it writes out what is buffered and waits for the
/// thread.
#[derive(Debug)]
pub(crate) struct Log {
    /// To the writer thread, which counts the lines dropped since the log was opened (the
    /// channel full, or a file unusable).
    lines: Handoff<Written>,
    format: AccessLogFormat,
    per_queue: bool,
    /// Only these queues' requests; empty: all.
    queues: Vec<String>,
}

/// A line for the writer thread.
#[derive(Debug)]
struct Written {
    /// The queue whose file set takes it, with `per_queue`.
    set: Option<String>,
    at: SystemTime,
    text: String,
}

impl Log {
    /// No access log.
    pub(crate) fn off() -> Log {
        Log {
            lines: Handoff::off(),
            format: AccessLogFormat::W3c,
            per_queue: false,
            queues: Vec::new(),
        }
    }

    /// Checks (and if need be creates) the folder of `config` for a daemon running as
    /// `uid`, and starts the writer thread. Blocking: the file system.
    ///
    /// # Errors
    ///
    /// What is wrong with the folder, naming it.
    pub(crate) fn open(config: &AccessLogConfig, uid: u32) -> Result<Log, String> {
        if !config.enabled {
            return Ok(Log::off());
        }
        let folder = config.folder(uid == 0, |k| std::env::var_os(k));
        own_folder(&folder, uid, true)
            .map_err(|e| format!("access_log.folder {}: {e}", folder.display()))?;
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            root: folder.clone(),
            format: config.format,
            rollover: config.rollover,
            max_size: config.max_size,
            uid,
            sets: HashMap::new(),
            dropped: Arc::clone(&dropped),
            reported: 0,
        };
        let lines = Handoff::start("portshare-access", writer, dropped)
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        tracing::info!(folder = %folder.display(), "access log");
        Ok(Log {
            lines,
            format: config.format,
            per_queue: config.per_queue,
            queues: config.queues.clone(),
        })
    }

    /// Lines dropped since the log was opened.
    pub(crate) fn dropped(&self) -> u64 {
        self.lines.dropped().load(Ordering::Relaxed)
    }

    /// Whether `queue`'s requests are logged.
    fn wants(&self, queue: &str) -> bool {
        self.lines.is_on() && (self.queues.is_empty() || self.queues.iter().any(|q| q == queue))
    }

    /// Hands a line to the writer thread, or counts it dropped when the backlog is full.
    fn write(&self, set: Option<String>, at: SystemTime, text: String) {
        self.lines.send(Written { set, at, text });
    }

    /// Writes out every line handed over so far, waiting at most 5 seconds.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a flush asked for still happens, nothing waits for it.
    pub(crate) async fn flush(&self) {
        self.lines.flush().await;
    }
}

/// One request's line in the making: begun when the request is routed, written when it is
/// dropped, that is, when the request ends however it ends. What the exchange learns on
/// the way (the status sent, why it ended) is noted through `&self`, from wherever it
/// learns it (an HTTP/2 stream's parts share it).
#[derive(Debug)]
pub(crate) struct Request {
    log: Arc<Log>,
    queue: Arc<Queue>,
    began: Instant,
    client: IpAddr,
    local: SocketAddr,
    /// The method, the stem, the query, the User-Agent and the Referer, one after the
    /// other; each ends at its `ends`.
    raw: Vec<u8>,
    ends: [usize; 5],
    /// The status sent; 0 for none yet.
    status: AtomicU32,
    /// `sc-win32-status`; `UNSET` for none yet.
    win32: AtomicU32,
    /// The response was written whole.
    done: AtomicBool,
}

impl Request {
    /// A line for `head`, routed to `queue` with `target` (the path as the application
    /// gets it, then `?` and the raw query), whose first byte came at `began`; `None` when
    /// `log` takes no line for `queue`.
    pub(crate) fn begin(
        log: &Arc<Log>,
        queue: &Arc<Queue>,
        client: IpAddr,
        local: SocketAddr,
        head: &Head<'_>,
        target: &[u8],
        began: Instant,
    ) -> Option<Arc<Request>> {
        if !log.wants(queue.name()) {
            return None;
        }
        let (stem, query) = match target.iter().position(|&b| b == b'?') {
            Some(i) => (&target[..i], &target[i + 1..]),
            None => (target, &[][..]),
        };
        let mut raw = Vec::with_capacity(128);
        let mut ends = [0; 5];
        for (i, v) in [
            head.method(),
            stem,
            query,
            head.header(b"user-agent").unwrap_or_default(),
            head.header(b"referer").unwrap_or_default(),
        ]
        .into_iter()
        .enumerate()
        {
            raw.extend_from_slice(&v[..v.len().min(MAX_VALUE)]);
            ends[i] = raw.len();
        }
        Some(Arc::new(Request {
            log: log.clone(),
            queue: queue.clone(),
            began,
            client: client.to_canonical(),
            local,
            raw,
            ends,
            status: AtomicU32::new(0),
            win32: AtomicU32::new(UNSET),
            done: AtomicBool::new(false),
        }))
    }

    /// The response's status, if none was noted before (an interim `1xx` is not one;
    /// `101`, which ends the exchange as HTTP, is).
    pub(crate) fn status(&self, status: u16) {
        if !(100..200).contains(&status) || status == 101 {
            let _ = self.status.compare_exchange(
                0,
                u32::from(status),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// HTTP/1: bytes about to be written to the client. The first response head among
    /// them gives the status.
    pub(crate) fn writing(&self, bytes: &[u8]) {
        if self.status.load(Ordering::Relaxed) == 0
            && let Some(code) = bytes.strip_prefix(b"HTTP/1.")
            && let Some(&[_, b' ', a, b, c]) = code.get(..5)
            && [a, b, c].iter().all(u8::is_ascii_digit)
        {
            self.status(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'));
        }
    }

    /// The response was written whole.
    pub(crate) fn done(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// The error log's line for the request: its status, if it has one, is that of the
    /// daemon's page the client is answered with; its reason says how the request ended,
    /// if it did not end well.
    pub(crate) fn ended(&self, status: Option<u16>, reason: Reason) {
        if let Some(s) = status {
            self.status(s);
            self.done();
        }
        let code = match reason {
            Reason::ClientReset | Reason::ConnectionDropped => WIN32_GONE,
            Reason::TimerEntityBody
            | Reason::TimerReqQueue
            | Reason::TimerMinBytesPerSecond
            | Reason::TimerHeaderWait
            | Reason::TimerConnectionIdle => WIN32_TIMEOUT,
            _ if status.is_some() => return,
            _ => WIN32_ABORTED,
        };
        self.note(code);
    }

    /// The client went away before the response was written whole.
    pub(crate) fn gone(&self) {
        self.note(WIN32_GONE);
    }

    /// The daemon reset the request, for a reason not noted before.
    pub(crate) fn aborted(&self) {
        self.note(WIN32_ABORTED);
    }

    fn note(&self, code: u32) {
        let _ = self
            .win32
            .compare_exchange(UNSET, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn value(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.raw[start..self.ends[i]]
    }

    /// The line, without its line end, written at `now`.
    fn line(&self, format: AccessLogFormat, now: SystemTime, taken: Duration) -> String {
        let status = match self.status.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        };
        let win32 = match self.win32.load(Ordering::Relaxed) {
            UNSET if self.done.load(Ordering::Relaxed) => WIN32_OK,
            UNSET => WIN32_GONE,
            code => code,
        };
        let line = Line {
            now,
            local: self.local,
            client: self.client,
            method: self.value(0),
            stem: self.value(1),
            query: self.value(2),
            agent: self.value(3),
            referer: self.value(4),
            status,
            win32,
            taken_ms: taken.as_millis().min(u128::from(u64::MAX)) as u64,
            queue: self.queue.name().as_bytes(),
        };
        match format {
            AccessLogFormat::W3c => line.w3c(),
            AccessLogFormat::Json => line.json(),
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let now = SystemTime::now();
        let text = self.line(self.log.format, now, self.began.elapsed());
        let set = self.log.per_queue.then(|| self.queue.name().to_owned());
        self.log.write(set, now, text);
    }
}

/// How an HTTP/1 request left its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Its response written whole.
    Written,
    /// The last write failed: the client went away.
    Gone,
    /// The connection was reset.
    Reset,
}

/// Ends an HTTP/1 request's line (if it has one): notes `how` and writes it.
pub(crate) fn end(request: Option<Arc<Request>>, how: End) {
    if let Some(r) = request {
        match how {
            End::Written => r.done(),
            End::Gone => r.gone(),
            End::Reset => r.aborted(),
        }
    }
}

mod files;
mod line;
#[cfg(test)]
mod tests;

pub(crate) use files::check_folder;
use files::*;
use line::*;
