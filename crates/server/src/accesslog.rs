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

/// A line's values.
struct Line<'a> {
    now: SystemTime,
    local: SocketAddr,
    client: IpAddr,
    method: &'a [u8],
    stem: &'a [u8],
    query: &'a [u8],
    agent: &'a [u8],
    referer: &'a [u8],
    status: Option<u32>,
    win32: u32,
    taken_ms: u64,
    queue: &'a [u8],
}

impl Line<'_> {
    fn w3c(&self) -> String {
        let mut s = String::with_capacity(160 + self.agent.len());
        stamp(&mut s, self.now, ' ');
        let _ = write!(s, " {} ", self.local.ip().to_canonical());
        for v in [self.method, self.stem, self.query] {
            w3c_value(&mut s, v);
            s.push(' ');
        }
        let _ = write!(s, "{} {} ", self.local.port(), self.client);
        for v in [self.agent, self.referer] {
            w3c_value(&mut s, v);
            s.push(' ');
        }
        match self.status {
            Some(code) => {
                let _ = write!(s, "{code}");
            }
            None => s.push('-'),
        }
        let _ = write!(s, " {} {} ", self.win32, self.taken_ms);
        w3c_value(&mut s, self.queue);
        s
    }

    fn json(&self) -> String {
        let mut date = String::with_capacity(20);
        stamp(&mut date, self.now, ' ');
        let (day, time) = date.split_at(10);
        let text = |v: &[u8]| match v {
            [] => serde_json::Value::Null,
            v => serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
        };
        let mut o = serde_json::Map::new();
        let [
            d,
            t,
            sip,
            method,
            stem,
            query,
            sport,
            cip,
            agent,
            referer,
            status,
            win32,
            taken,
            queue,
        ] = FIELDS;
        o.insert(d.into(), day.into());
        o.insert(t.into(), time.trim_start().into());
        o.insert(
            sip.into(),
            self.local.ip().to_canonical().to_string().into(),
        );
        o.insert(method.into(), text(self.method));
        o.insert(stem.into(), text(self.stem));
        o.insert(query.into(), text(self.query));
        o.insert(sport.into(), self.local.port().into());
        o.insert(cip.into(), self.client.to_string().into());
        o.insert(agent.into(), text(self.agent));
        o.insert(referer.into(), text(self.referer));
        o.insert(status.into(), self.status.into());
        o.insert(win32.into(), self.win32.into());
        o.insert(taken.into(), self.taken_ms.into());
        o.insert(queue.into(), text(self.queue));
        // A map of strings and numbers always serializes.
        serde_json::to_string(&o).unwrap_or_default()
    }
}

/// Appends a W3C value: `-` when empty, a space as `+`, bytes outside printable ASCII as
/// `%XX`.
fn w3c_value(s: &mut String, v: &[u8]) {
    if v.is_empty() {
        s.push('-');
        return;
    }
    for &b in v {
        match b {
            b' ' => s.push('+'),
            0x21..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "%{b:02X}");
            }
        }
    }
}

/// Appends `YYYY-MM-DD hh:mm:ss` in UTC, `sep` between date and time.
fn stamp(s: &mut String, now: SystemTime, sep: char) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d) = crate::pages::civil(secs / 86400);
    let t = secs % 86400;
    let _ = write!(
        s,
        "{y:04}-{mo:02}-{d:02}{sep}{:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    );
}

/// The folder name of a queue's file set: every byte outside `[A-Za-z0-9._-]` as `%XX`,
/// and the dots of a name that is only `.` or `..`; longer than `MAX_NAME` bytes, cut
/// there and followed by `~` and a hash of the whole name.
pub(crate) fn folder_name(queue: &str) -> String {
    let mut s = String::with_capacity(queue.len());
    for &b in queue.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    if s == "." || s == ".." {
        s = s.replace('.', "%2E");
    }
    if s.len() > MAX_NAME {
        // FNV-1a: stable across versions, so a queue keeps its folder.
        let hash = queue.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut cut = MAX_NAME;
        // Not in the middle of a `%XX`.
        while s.as_bytes()[cut - 1] == b'%' || s.as_bytes()[cut - 2] == b'%' {
            cut -= 1;
        }
        s.truncate(cut);
        let _ = write!(s, "~{hash:016x}");
    }
    s
}

/// For `check-config`: whether the folder of `config` would do for a daemon running as
/// `uid`, without creating it (a folder still missing is made at start).
///
/// # Errors
///
/// What is wrong with the folder, naming it.
pub(crate) fn check_folder(config: &AccessLogConfig, uid: u32) -> Result<(), String> {
    if !config.enabled {
        return Ok(());
    }
    let folder = config.folder(uid == 0, |k| std::env::var_os(k));
    if std::fs::symlink_metadata(&folder).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        return Ok(());
    }
    own_folder(&folder, uid, false)
        .map_err(|e| format!("access_log.folder {}: {e}", folder.display()))
}

/// Checks that `folder` is the daemon's own (creating it 0750 when `create` and missing):
/// a folder, not a symbolic link, owned by `uid` or root, not writable by group or others.
fn own_folder(folder: &Path, uid: u32, create: bool) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(folder) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut b = std::fs::DirBuilder::new();
            b.mode(0o750).recursive(create);
            match b.create(folder) {
                // Whatever the umask.
                Ok(()) => std::fs::set_permissions(folder, PermissionsExt::from_mode(0o750))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            std::fs::symlink_metadata(folder)?
        }
        r => r?,
    };
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link: name the folder itself".into());
    }
    if !meta.is_dir() {
        return refuse("is not a folder".into());
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return refuse(format!(
            "is owned by uid {}: the folder must be the daemon's own (uid {uid}) or root's",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "its group or others may write to it (mode {:o}): it must be the daemon's alone",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Opens `path` to append, without following a symbolic link or waiting on a FIFO, and
/// checks it is a regular file with one link, owned by `uid`.
fn open_file(path: &Path, uid: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            why.to_owned(),
        ))
    };
    if !meta.is_file() {
        return refuse("not a regular file");
    }
    if meta.nlink() != 1 {
        return refuse("a file with other links");
    }
    if meta.uid() != uid {
        return refuse("a file another account owns");
    }
    if meta.mode() & 0o7777 != 0o640 {
        // Whatever the umask (or an old file's mode).
        file.set_permissions(PermissionsExt::from_mode(0o640))?;
    }
    Ok(file)
}

/// The writer thread's state: the file sets.
struct Writer {
    root: PathBuf,
    format: AccessLogFormat,
    rollover: AccessLogRollover,
    max_size: u64,
    uid: u32,
    /// By queue name with `per_queue`, else the one set under `None`.
    sets: HashMap<Option<String>, Set>,
    dropped: Arc<AtomicU64>,
    /// Dropped lines already warned of.
    reported: u64,
}

/// One file set.
struct Set {
    dir: PathBuf,
    current: Option<Current>,
    /// The number of the next `u_extendN` file to open (`rollover = "size"`), once known.
    seq: Option<u64>,
    last_used: Instant,
    /// After a failure: no file before then.
    retry_at: Option<Instant>,
    /// The file this set last wrote directives into: closed for a while (idle, or to
    /// keep open files under the cap) and opened again, it needs none.
    headed: Option<PathBuf>,
}

struct Current {
    out: BufWriter<File>,
    /// Bytes in the file, buffered ones included.
    size: u64,
    /// No line since the daemon opened it.
    empty: bool,
    /// The day or hour (since the epoch) of its name; 0 with `size`.
    period: u64,
}

impl Writer {
    fn ext(&self) -> &'static str {
        match self.format {
            AccessLogFormat::W3c => "log",
            AccessLogFormat::Json => "jsonl",
        }
    }

    fn period(&self, at: SystemTime) -> u64 {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match self.rollover {
            AccessLogRollover::Daily => secs / 86400,
            AccessLogRollover::Hourly => secs / 3600,
            AccessLogRollover::Size => 0,
        }
    }

    /// The file name for `period` (or sequence number `seq` with `size`).
    fn name(&self, period: u64, seq: u64) -> String {
        let ext = self.ext();
        let day = |days: u64| {
            let (y, m, d) = crate::pages::civil(days);
            format!("{:02}{m:02}{d:02}", y.rem_euclid(100))
        };
        match self.rollover {
            AccessLogRollover::Daily => format!("u_ex{}.{ext}", day(period)),
            AccessLogRollover::Hourly => {
                format!("u_ex{}{:02}.{ext}", day(period / 24), period % 24)
            }
            AccessLogRollover::Size => format!("u_extend{seq}.{ext}"),
        }
    }

    /// Appends a line to its set's file, or counts it dropped.
    fn append(&mut self, set: Option<String>, at: SystemTime, text: &str) {
        let now = Instant::now();
        if !self.sets.contains_key(&set) {
            let dir = match &set {
                Some(q) => self.root.join(folder_name(q)),
                None => self.root.clone(),
            };
            self.sets.insert(
                set.clone(),
                Set {
                    dir,
                    current: None,
                    seq: None,
                    last_used: now,
                    retry_at: None,
                    headed: None,
                },
            );
        }
        let Some(mut s) = self.sets.remove(&set) else {
            return;
        };
        s.last_used = now;
        if s.retry_at.is_some_and(|t| now < t) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else if let Err(error) = self.try_append(&mut s, set.is_some(), at, text) {
            tracing::warn!(
                folder = %s.dir.display(),
                %error,
                "cannot write the access log; lines are dropped for 10 seconds"
            );
            s.current = None;
            s.retry_at = Some(now + RETRY);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            s.retry_at = None;
        }
        self.sets.insert(set, s);
        self.limit_open();
    }

    fn try_append(
        &self,
        s: &mut Set,
        per_queue: bool,
        at: SystemTime,
        text: &str,
    ) -> io::Result<()> {
        let len = text.len() as u64 + 1;
        let period = self.period(at);
        if let Some(c) = &mut s.current {
            let full = self.rollover == AccessLogRollover::Size
                && !c.empty
                && c.size + len > self.max_size;
            if full || c.period != period {
                // Flushed here, not by the drop, which would swallow an error.
                c.out.flush()?;
                s.current = None;
                if full {
                    s.seq = s.seq.map(|n| n.saturating_add(1));
                }
            }
        }
        let c = match s.current.take() {
            Some(c) => c,
            None => self.open(s, per_queue, period, len)?,
        };
        let c = s.current.insert(c);
        c.out.write_all(text.as_bytes())?;
        c.out.write_all(b"\n")?;
        c.size += len;
        c.empty = false;
        Ok(())
    }

    /// Opens the set's file for `period` (for `size`: the last one while a line of `len`
    /// bytes fits in it, else the next), and writes the directives.
    fn open(&self, s: &mut Set, per_queue: bool, period: u64, len: u64) -> io::Result<Current> {
        // Again each time, in case someone removed or replaced it while the daemon ran.
        if per_queue {
            own_folder(&self.root, self.uid, true)?;
        }
        own_folder(&s.dir, self.uid, !per_queue)?;
        let seq = match s.seq {
            Some(n) => n,
            None => {
                let n = self.last_seq(&s.dir)?;
                let last = s.dir.join(self.name(period, n));
                let size = std::fs::symlink_metadata(&last).map_or(0, |m| m.len());
                let full = size > 0 && size + len > self.max_size;
                let n = if self.rollover == AccessLogRollover::Size && full {
                    n + 1
                } else {
                    n
                };
                *s.seq.insert(n)
            }
        };
        let path = s.dir.join(self.name(period, seq));
        let mut file = open_file(&path, self.uid)?;
        let mut size = file.metadata()?.len();
        if self.format == AccessLogFormat::W3c && (size == 0 || s.headed.as_ref() != Some(&path)) {
            // Straight to the file: even a daemon killed before its first flush leaves a
            // file that says what it holds.
            let mut head = format!("#Software: {SOFTWARE}\n#Version: 1.0\n#Date: ");
            stamp(&mut head, SystemTime::now(), ' ');
            let _ = writeln!(head, "\n#Fields: {}", FIELDS.join(" "));
            file.write_all(head.as_bytes())?;
            size += head.len() as u64;
        }
        tracing::debug!(path = %path.display(), "access log file");
        s.headed = Some(path);
        Ok(Current {
            out: BufWriter::with_capacity(BUFFER, file),
            size,
            empty: true,
            period,
        })
    }

    /// The highest `N` of the `u_extendN` files in `dir` (1 when there is none).
    fn last_seq(&self, dir: &Path) -> io::Result<u64> {
        if self.rollover != AccessLogRollover::Size {
            return Ok(0);
        }
        let suffix = format!(".{}", self.ext());
        let mut highest = 1;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("u_extend")?.strip_suffix(suffix.as_str()))
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
            {
                highest = highest.max(n);
            }
        }
        Ok(highest)
    }

    /// Writes out what is buffered; closes files left idle.
    fn flush(&mut self) {
        let now = Instant::now();
        for (key, s) in &mut self.sets {
            if let Some(c) = &mut s.current
                && let Err(error) = c.out.flush()
            {
                tracing::warn!(folder = %s.dir.display(), %error, "cannot write the access log");
                s.current = None;
                s.retry_at = Some(now + RETRY);
            }
            if key.is_some() && now.duration_since(s.last_used) > IDLE_CLOSE {
                s.current = None;
            }
        }
        self.sets
            .retain(|k, s| k.is_none() || now.duration_since(s.last_used) <= IDLE_CLOSE);
    }

    /// Closes the least recently used files beyond `MAX_OPEN`.
    fn limit_open(&mut self) {
        if self.sets.len() <= MAX_OPEN {
            return;
        }
        while self.sets.values().filter(|s| s.current.is_some()).count() > MAX_OPEN {
            let oldest = self
                .sets
                .iter()
                .filter(|(_, s)| s.current.is_some())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(s) = oldest.and_then(|k| self.sets.get_mut(&k))
                && let Some(mut c) = s.current.take()
            {
                let _ = c.out.flush();
            }
        }
    }
}

impl Sink for Writer {
    type Line = Written;

    fn append(&mut self, line: Written) {
        Writer::append(self, line.set, line.at, &line.text);
    }

    fn flush(&mut self) {
        Writer::flush(self);
    }

    /// Warns with the lines dropped since the last warning.
    fn written_out(&mut self, dropped: &AtomicU64) {
        let total = dropped.load(Ordering::Relaxed);
        if total > self.reported {
            tracing::warn!(
                lines = total - self.reported,
                total,
                "access log lines dropped (the disk is slow or full, or a file is unusable)"
            );
            self.reported = total;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;

    use super::*;
    use crate::handoff::Msg;
    use crate::head::{HeadLimits, Parsed, parse_head};
    use crate::queue::Props;

    /// A fresh folder under the system's temp dir (0700), removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "portshare-access-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .expect("temp dir");
            TempDir(dir)
        }

        fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .map(|rd| {
                    rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const T: u64 = 1_714_564_801; // 2024-05-01 12:00:01 UTC

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn line<'a>(agent: &'a [u8], query: &'a [u8]) -> Line<'a> {
        Line {
            now: at(T),
            local: "192.0.2.1:8080".parse().expect("addr"),
            client: "192.0.2.10".parse().expect("addr"),
            method: b"GET",
            stem: b"/app/x",
            query,
            agent,
            referer: b"",
            status: Some(200),
            win32: 0,
            taken_ms: 12,
            queue: b"my queue",
        }
    }

    #[test]
    fn w3c_line_and_escaping() {
        assert_eq!(
            line(b"curl/8.0", b"a=1&b=2").w3c(),
            "2024-05-01 12:00:01 192.0.2.1 GET /app/x a=1&b=2 8080 192.0.2.10 curl/8.0 - 200 0 12 \
             my+queue"
        );
        // A client's CR and LF cannot end the line or start a forged one.
        let hostile = b"Mozilla/5.0 (X)\r\n2024-05-01 12:00:00 10.0.0.1 GET /admin - 80 1.2.3.4";
        let text = Line {
            status: None,
            win32: WIN32_ABORTED,
            ..line(hostile, b"")
        }
        .w3c();
        assert!(!text.contains(['\r', '\n']), "{text}");
        assert!(
            text.contains(" Mozilla/5.0+(X)%0D%0A2024-05-01+12:00:00+10.0.0.1+GET+/admin+-+80+1.2.3.4 - - 1236 12 "),
            "{text}"
        );
        // One field per column, whatever the values hold.
        assert_eq!(text.split(' ').count(), FIELDS.len(), "{text}");
        let mut s = String::new();
        w3c_value(&mut s, b"\x00\x1f\x7f\xc3\xa9 %+");
        assert_eq!(s, "%00%1F%7F%C3%A9+%+");
    }

    #[test]
    fn json_line_and_escaping() {
        let hostile = b"a \"b\"\r\n\\ \x01 caf\xc3\xa9 \xff";
        let text = line(hostile, b"").json();
        assert!(!text.contains(['\r', '\n']), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
        assert_eq!(v["cs(User-Agent)"], "a \"b\"\r\n\\ \u{1} café \u{fffd}");
        assert_eq!(v["date"], "2024-05-01");
        assert_eq!(v["time"], "12:00:01");
        assert_eq!(v["s-ip"], "192.0.2.1");
        assert_eq!(v["s-port"], 8080);
        assert_eq!(v["c-ip"], "192.0.2.10");
        assert_eq!(v["cs-uri-query"], serde_json::Value::Null);
        assert_eq!(v["sc-status"], 200);
        assert_eq!(v["sc-win32-status"], 0);
        assert_eq!(v["time-taken"], 12);
        assert_eq!(v["s-queuename"], "my queue");
        assert_eq!(v.as_object().map(|o| o.len()), Some(FIELDS.len()));
    }

    #[test]
    fn queue_folder_names_stay_in_the_folder() {
        for (name, want) in [
            ("app", "app"),
            ("my.app-1_x", "my.app-1_x"),
            ("../../etc", "..%2F..%2Fetc"),
            ("a/b", "a%2Fb"),
            ("..", "%2E%2E"),
            (".", "%2E"),
            ("line\nbreak", "line%0Abreak"),
            ("~unnamed 7", "%7Eunnamed%207"),
            ("café", "caf%C3%A9"),
        ] {
            assert_eq!(folder_name(name), want, "{name:?}");
        }
        let long = "é".repeat(260);
        let a = folder_name(&long);
        let b = folder_name(&format!("{}x", "é".repeat(259)));
        assert!(a.len() <= MAX_NAME + 17 && a.len() <= 255, "{a}");
        assert_ne!(a, b, "distinct names keep distinct folders");
        // Not cut inside a `%XX`.
        let cut = a.split('~').next().unwrap_or_default();
        assert!(cut.ends_with("%A9"), "{a}");
    }

    fn writer(dir: &TempDir, format: AccessLogFormat, rollover: AccessLogRollover) -> Writer {
        Writer {
            root: dir.0.clone(),
            format,
            rollover,
            max_size: 10_485_760,
            uid: me(),
            sets: HashMap::new(),
            dropped: Arc::default(),
            reported: 0,
        }
    }

    #[test]
    fn rolls_over_by_day_and_by_hour() {
        let dir = TempDir::new("period");
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
        w.append(None, at(T), "one");
        w.append(None, at(T + 3600), "two");
        w.append(None, at(T + 86400), "three");
        w.flush();
        assert_eq!(dir.names(), ["u_ex240501.log", "u_ex240502.log"]);
        let first = dir.read("u_ex240501.log");
        assert!(first.starts_with("#Software: Microsoft HTTP API 2.0\n#Version: 1.0\n#Date: "));
        assert!(
            first.contains(
                "\n#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port c-ip \
                 cs(User-Agent) cs(Referer) sc-status sc-win32-status time-taken s-queuename\n"
            ),
            "{first}"
        );
        assert!(first.ends_with("\none\ntwo\n"), "{first}");
        assert!(dir.read("u_ex240502.log").ends_with("\nthree\n"));

        let dir = TempDir::new("hourly");
        let mut w = writer(&dir, AccessLogFormat::Json, AccessLogRollover::Hourly);
        w.append(None, at(T), "{}");
        w.append(None, at(T + 3600), "{}");
        w.flush();
        assert_eq!(dir.names(), ["u_ex24050112.jsonl", "u_ex24050113.jsonl"]);
        assert_eq!(
            dir.read("u_ex24050112.jsonl"),
            "{}\n",
            "JSON files have no directives"
        );
        for name in dir.names() {
            let mode = std::fs::metadata(dir.0.join(&name)).map(|m| m.mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o640), "{name}");
        }
    }

    #[test]
    fn rolls_over_by_size_and_continues_after_a_restart() {
        let dir = TempDir::new("size");
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Size);
        let text = "x".repeat(99);
        w.max_size = 1000;
        for _ in 0..20 {
            w.append(None, at(T), &text);
        }
        w.flush();
        let names = dir.names();
        assert!(names.len() >= 3, "{names:?}");
        for name in &names {
            let len = std::fs::metadata(dir.0.join(name))
                .map(|m| m.len())
                .unwrap_or(0);
            assert!(len <= 1000, "{name}: {len}");
            assert!(dir.read(name).starts_with("#Software: "), "{name}");
        }
        let total: usize = names
            .iter()
            .map(|n| dir.read(n).matches(&text).count())
            .sum();
        assert_eq!(total, 20);
        assert_eq!(names[0], "u_extend1.log");
        // A new writer (a restart) appends to the last file while a line fits, else the
        // next number.
        let last = names.last().cloned().unwrap_or_default();
        drop(w);
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Size);
        w.max_size = 1000;
        w.append(None, at(T), "after");
        w.flush();
        let now = dir.names();
        let holder = now
            .iter()
            .find(|n| dir.read(n).contains("\nafter\n"))
            .cloned()
            .unwrap_or_default();
        assert!(holder == last || now.len() == names.len() + 1, "{now:?}");
        assert_eq!(w.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn per_queue_sets_live_in_encoded_folders() {
        let dir = TempDir::new("perqueue");
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
        w.append(Some("../evil".into()), at(T), "a");
        w.append(Some("ok".into()), at(T), "b");
        w.flush();
        assert_eq!(dir.names(), ["..%2Fevil", "ok"]);
        let sub = dir.0.join("..%2Fevil");
        let mode = std::fs::metadata(&sub).map(|m| m.mode() & 0o777).ok();
        assert_eq!(mode, Some(0o750));
        assert!(
            std::fs::read_to_string(sub.join("u_ex240501.log")).is_ok_and(|t| t.ends_with("\na\n"))
        );
    }

    #[test]
    fn open_files_stay_under_the_cap() {
        let dir = TempDir::new("cap");
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
        for i in 0..MAX_OPEN + 6 {
            w.append(Some(format!("q{i}")), at(T), "x");
        }
        let open = w.sets.values().filter(|s| s.current.is_some()).count();
        assert_eq!(open, MAX_OPEN);
        // The first queue's file was closed, not lost: its line is there.
        assert!(dir.read("q0/u_ex240501.log").ends_with("\nx\n"));
        w.append(Some("q0".into()), at(T), "y");
        w.flush();
        assert!(dir.read("q0/u_ex240501.log").ends_with("\nx\ny\n"));
        assert_eq!(w.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = TempDir::new("symlink");
        let outside = TempDir::new("symlink-target");
        let target = outside.0.join("victim");
        std::fs::write(&target, "precious\n").expect("victim");
        std::os::unix::fs::symlink(&target, dir.0.join("u_ex240501.log")).expect("symlink");
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
        w.append(None, at(T), "line");
        w.flush();
        assert_eq!(
            std::fs::read_to_string(&target).ok().as_deref(),
            Some("precious\n")
        );
        assert_eq!(w.dropped.load(Ordering::Relaxed), 1);
        // A FIFO does not hold the writer, and is not written either.
        let dir = TempDir::new("fifo");
        nix::unistd::mkfifo(&dir.0.join("u_ex240501.log"), nix::sys::stat::Mode::S_IRWXU)
            .expect("mkfifo");
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
        w.append(None, at(T), "line");
        assert_eq!(w.dropped.load(Ordering::Relaxed), 1);
        // A hard link to another file is refused.
        let dir = TempDir::new("hardlink");
        let other = dir.0.join("other");
        std::fs::write(&other, "other\n").expect("other");
        std::fs::hard_link(&other, dir.0.join("u_ex240501.log")).expect("link");
        let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
        w.append(None, at(T), "line");
        assert_eq!(
            std::fs::read_to_string(&other).ok().as_deref(),
            Some("other\n")
        );
    }

    #[test]
    fn the_folder_must_be_the_daemons_own() {
        let dir = TempDir::new("folder");
        let uid = me();
        let made = dir.0.join("a").join("b");
        own_folder(&made, uid, true).expect("created");
        let mode = std::fs::metadata(&made).map(|m| m.mode() & 0o777).ok();
        assert_eq!(mode, Some(0o750));
        let open = dir.0.join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        let e = own_folder(&open, uid, true).expect_err("world-writable");
        assert!(e.to_string().contains("others may write"), "{e}");
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&made, &link).expect("symlink");
        let e = own_folder(&link, uid, true).expect_err("a symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let file = dir.0.join("file");
        std::fs::write(&file, "").expect("file");
        assert!(own_folder(&file, uid, true).is_err());
        if uid == 0 {
            let theirs = dir.0.join("theirs");
            std::fs::create_dir(&theirs).expect("dir");
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None)
                .expect("chown");
            let e = own_folder(&theirs, uid, true).expect_err("another account's");
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }

    impl Log {
        /// A log whose lines stay in the returned channel (`capacity` of them), with no
        /// writer thread.
        fn stalled(
            capacity: usize,
            format: AccessLogFormat,
            queues: Vec<String>,
        ) -> (Log, Receiver<Msg<Written>>) {
            let (lines, rx) = Handoff::stalled(capacity);
            let log = Log {
                lines,
                format,
                per_queue: false,
                queues,
            };
            (log, rx)
        }
    }

    fn request(log: &Arc<Log>, raw: &[u8]) -> Option<Arc<Request>> {
        let queue = Queue::new("q".into(), 0, Props::default(), None);
        let Ok(Parsed::Complete { head, .. }) = parse_head(raw, &HeadLimits::default()) else {
            panic!("a head");
        };
        Request::begin(
            log,
            &queue,
            "127.0.0.1".parse().expect("ip"),
            "127.0.0.1:80".parse().expect("addr"),
            &head,
            b"/a/b?c=d",
            Instant::now(),
        )
    }

    #[test]
    fn dropped_lines_are_counted_and_never_wait() {
        // A log whose writer never reads: the backlog fills, and further lines are
        // dropped and counted without waiting.
        let (log, rx) = Log::stalled(4, AccessLogFormat::W3c, Vec::new());
        let log = Arc::new(log);
        let raw = b"GET /a/b?c=d HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n";
        for _ in 0..10 {
            let r = request(&log, raw).expect("logged");
            r.writing(b"HTTP/1.1 200 OK\r\n");
            end(Some(r), End::Written);
        }
        assert_eq!(log.dropped(), 6);
        let Ok(Msg::Line(Written { set, text, .. })) = rx.try_recv() else {
            panic!("a line");
        };
        assert_eq!(set, None);
        assert!(
            text.contains(" GET /a/b c=d 80 127.0.0.1 t - 200 0 "),
            "{text}"
        );
        assert!(text.ends_with(" q"), "{text}");
    }

    #[test]
    fn status_and_win32_as_the_request_ends() {
        let (log, rx) = Log::stalled(16, AccessLogFormat::Json, Vec::new());
        let log = Arc::new(log);
        let raw = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n";
        let next = || match rx.try_recv() {
            Ok(Msg::Line(Written { text, .. })) => {
                serde_json::from_str::<serde_json::Value>(&text).expect("json")
            }
            _ => panic!("a line"),
        };
        // 100 Continue and 103 Early Hints are not the status; the final head is.
        let r = request(&log, raw).expect("logged");
        r.writing(b"HTTP/1.1 100 Continue\r\n\r\n");
        r.writing(b"HTTP/1.1 103 Early Hints\r\n\r\n");
        r.writing(b"HTTP/1.1 404 Not Found\r\n");
        r.writing(b"HTTP/1.1 500 Later\r\n");
        end(Some(r), End::Written);
        let v = next();
        assert_eq!(
            (v["sc-status"].clone(), v["sc-win32-status"].clone()),
            (404.into(), 0.into())
        );
        // A 503 page.
        let r = request(&log, raw).expect("logged");
        r.ended(Some(503), Reason::QueueFull);
        end(Some(r), End::Written);
        assert_eq!(next()["sc-status"], 503);
        // Refused without an answer (basic verbosity), timed out, client gone.
        for (reason, win32) in [
            (Reason::QueueFull, 1236),
            (Reason::TimerReqQueue, 121),
            (Reason::ClientReset, 64),
        ] {
            let r = request(&log, raw).expect("logged");
            r.ended(None, reason);
            end(Some(r), End::Reset);
            let v = next();
            assert_eq!(v["sc-status"], serde_json::Value::Null);
            assert_eq!(v["sc-win32-status"], win32, "{reason:?}");
        }
        // The last write failed.
        let r = request(&log, raw).expect("logged");
        r.writing(b"HTTP/1.1 200 OK\r\n");
        end(Some(r), End::Gone);
        assert_eq!(next()["sc-win32-status"], 64);
        // An HTTP/2 stream dropped before its response ended: its client went away.
        let r = request(&log, raw).expect("logged");
        r.status(200);
        drop(r);
        assert_eq!(next()["sc-win32-status"], 64);
    }

    #[test]
    fn only_the_queues_asked_for() {
        let (log, _rx) = Log::stalled(16, AccessLogFormat::W3c, vec!["other".into()]);
        let log = Arc::new(log);
        assert!(request(&log, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
        let off = Arc::new(Log::off());
        assert!(request(&off, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
    }
}
