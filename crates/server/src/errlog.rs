//! The error log: one line for each request or connection the daemon refused, abandoned or
//! timed out, in HTTP.sys's httperr format (spec §7.2). Every line goes to the `httperr`
//! tracing target and, unless `[errlog] enabled = false`, to `httperrN.log` files in the
//! configured folder (spec §7.1).
//!
//! # Reasons
//!
//! The daemon writes the reasons of spec §7.3 that have a cause here: the parser's
//! (`BadRequest`, `Verb`, `Version_N/S`, `URL`, `URL_Length`, `FieldLength`,
//! `RequestLength`, `Header`, `Invalid_CR/LF`, `Number`, `N/I`, `LengthRequired`,
//! `Hostname`), routing's (`NotFound`, `N/A`), the queues' (`QueueFull`, `Disabled`,
//! `ConnLimit`, `AppShutdown` for a request still waiting when the daemon stops), the
//! timers' (`Timer_HeaderWait`, `Timer_ConnectionIdle`, `Timer_EntityBody` for both body
//! timers, `Timer_ReqQueue`, `Timer_MinBytesPerSecond`) and the early ends (`Client_Reset`,
//! `Connection_Dropped`, `Connection_Abandoned_By_ReqQueue`), and `Connections_Refused` for
//! a connection the accept loop closed because the daemon was out of descriptors (HTTP.sys
//! writes it when short of non-paged pool). The rest never occur: IIS 6 application pools
//! (`AppPoolTimer`, `Timer_AppPool`, `Connection_Abandoned_By_AppPool`), IIS rapid-fail
//! (`AppOffline`), TLS (`Timer_SslRenegotiation`), a body-size limit HTTP.sys does not have
//! (`EntityTooLarge`), and codes nothing in HTTP.sys's parser sends (`Forbidden`,
//! `Precondition`, `Internal`, `Timer_Response`, `Connection_Dropped_List_Full`).
//!
//! # Files
//!
//! - Each file begins with the W3C directives Windows writes (`#Software`, `#Version`,
//!   `#Date` in UTC when the file was opened, `#Fields`), then one line per entry, ended by
//!   LF alone. Windows ends them with CRLF; here a CR would stick to the last field
//!   (`s-queuename`) for `awk`, `cut` and the like.
//! - A line that would take a file past the truncate size goes to the next number instead
//!   (`httperr1.log`, `httperr2.log`, ...), so no file exceeds it (a file always takes its
//!   first line, whatever its size).
//! - On start the daemon opens the number after the highest `httperrN.log` in the folder,
//!   never appending to an old file. Each file then holds exactly one directive block, at its
//!   top, with a `#Date` that says when its lines begin: parsers that take the directives
//!   from the top of a file see the right ones, and a last line cut short by a crash is
//!   never joined to a new entry. The file is created with its first
//!   entry, so starts and stops without refusals leave no empty files.
//! - The folder is created if missing. If it cannot be created or read, or a file cannot
//!   be opened or written, one warning names the folder and the OS error, and from then on
//!   the lines go to the tracing target only: a daemon without a writable folder (an
//!   unprivileged user and the default `/var/log/portshare/httperr`) still serves.
//!
//! # Handoff and buffering
//!
//! `Entry::emit` runs on the request path, inside connection tasks, and must not wait for
//! a disk. It hands the line to one writer thread ([`crate::handoff`]) over a bounded
//! channel with `try_send`: a send is a push of the line's `String` and never blocks; when
//! the backlog is full (a stalled disk under a flood of refusals) further lines go to the
//! tracing target only and the thread reports how many it missed, so memory stays bounded.
//! A `Mutex<BufWriter>` would be as cheap most of the time, but whichever connection found
//! the buffer full, or a file to rotate, would do the `write`/`open` itself, holding up a
//! runtime thread and every connection waiting on the lock. The thread buffers, like
//! HTTP.sys, and writes out when idle, at least every second, when the daemon shuts down
//! (`Log::flush`, awaited by `serve_until`) and when the `Log` is dropped (which waits for
//! the thread).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use portshare_router::Reason;

use crate::config::ErrLogConfig;
use crate::handoff::{Handoff, Sink};

/// The buffer in front of each file.
const BUFFER: usize = 64 * 1024;

/// The `#Software` directive. It names HTTP.sys, not Portshare, on purpose: the files are
/// meant for the tools that read Windows' httperr logs, and those match this text.
const SOFTWARE: &str = "Microsoft HTTP API 2.0";
/// The `#Fields` directive: the columns of `Entry::line`.
const FIELDS: &str = "date time c-ip c-port s-ip s-port cs-version cs-method cs-uri sc-status \
                      s-siteid s-reason s-queuename";

/// One httperr entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The protocol version as `cs-version` writes it (`HTTP/1.1`, `HTTP/2.0`).
    pub(crate) version: Option<&'static str>,
    pub(crate) method: Option<&'a [u8]>,
    pub(crate) uri: Option<&'a [u8]>,
    pub(crate) status: Option<u16>,
    pub(crate) reason: Reason,
    pub(crate) queue: Option<&'a str>,
}

impl Entry<'_> {
    /// The line, without its line end.
    pub(crate) fn line(&self, now: SystemTime) -> String {
        let mut s = String::with_capacity(128);
        crate::pages::stamp(&mut s, now);
        let _ = write!(
            s,
            " {} {} {} {} ",
            self.client.ip(),
            self.client.port(),
            self.local.ip(),
            self.local.port(),
        );
        s.push_str(self.version.unwrap_or("-"));
        s.push(' ');
        field(&mut s, self.method, 255);
        s.push(' ');
        field(&mut s, self.uri, 4096);
        match self.status {
            Some(code) => {
                let _ = write!(s, " {code} - ");
            }
            None => s.push_str(" - - "),
        }
        s.push_str(self.reason.as_str());
        s.push(' ');
        field(&mut s, self.queue.map(str::as_bytes), 4096);
        s
    }

    /// Writes the entry to the `httperr` tracing target and hands it to `log`'s files.
    /// Never blocks.
    pub(crate) fn emit(&self, log: &Log) {
        crate::metrics::logged(self.reason);
        let line = self.line(SystemTime::now());
        tracing::info!(target: "httperr", "{line}");
        log.write(line);
    }
}

/// The error log files: a handle on the writer thread, owned by the daemon's `Shared` for
/// as long as the daemon runs. Dropping it writes out what is buffered and waits for the
/// thread.
#[derive(Debug)]
pub(crate) struct Log(Handoff<String>);

impl Log {
    /// Starts the writer thread for `config`'s folder, creating the folder if needed. When
    /// the files are disabled or the folder cannot be used (one warning says why), the log
    /// goes to the tracing target only.
    pub(crate) fn open(config: &ErrLogConfig) -> Log {
        if !config.enabled {
            return Log(Handoff::off());
        }
        let folder = &config.folder;
        let next = match next_number(folder) {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(
                    folder = %folder.display(),
                    %error,
                    "cannot use the error log folder; httperr lines go to the log only"
                );
                return Log(Handoff::off());
            }
        };
        let files = Files::new(folder.clone(), config.truncate_size, next);
        match Handoff::start("portshare-httperr", files, Default::default()) {
            Ok(handoff) => Log(handoff),
            Err(error) => {
                tracing::warn!(
                    folder = %folder.display(),
                    %error,
                    "cannot start the error log writer; httperr lines go to the log only"
                );
                Log(Handoff::off())
            }
        }
    }

    /// Hands a line to the writer thread, or counts it missed when the backlog is full.
    fn write(&self, line: String) {
        self.0.send(line);
    }

    /// Writes out every line handed over so far, waiting at most 5 seconds.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a flush asked for still happens, nothing waits for it.
    pub(crate) async fn flush(&self) {
        self.0.flush().await;
    }
}

impl Sink for Files {
    type Line = String;

    fn append(&mut self, line: String) {
        Files::append(self, &line, SystemTime::now());
    }

    fn flush(&mut self) {
        Files::flush(self);
    }

    /// Reports the lines that found the backlog full since the last report.
    fn written_out(&mut self, missed: &AtomicU64) {
        let n = missed.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(
                lines = n,
                "the error log writer fell behind; lines missing from the files"
            );
        }
    }
}

/// The numbered files of one folder.
#[derive(Debug)]
struct Files {
    folder: PathBuf,
    limit: u64,
    /// The number of the next file to open.
    next: u64,
    current: Option<Current>,
    /// Set after an I/O error: no more files.
    broken: bool,
}

#[derive(Debug)]
struct Current {
    out: BufWriter<File>,
    /// Bytes in the file, buffered ones included.
    size: u64,
    /// Only the directives so far.
    empty: bool,
}

impl Files {
    fn new(folder: PathBuf, limit: u64, next: u64) -> Files {
        Files {
            folder,
            limit,
            next,
            current: None,
            broken: false,
        }
    }

    /// Appends a line (and its LF), opening a file first when needed.
    fn append(&mut self, line: &str, now: SystemTime) {
        if !self.broken
            && let Err(e) = self.try_append(line, now)
        {
            self.fail(&e);
        }
    }

    /// Writes out what is buffered.
    fn flush(&mut self) {
        if let Some(c) = &mut self.current
            && let Err(e) = c.out.flush()
        {
            self.fail(&e);
        }
    }

    fn try_append(&mut self, line: &str, now: SystemTime) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if let Some(c) = &mut self.current
            && !c.empty
            && c.size + len > self.limit
        {
            // Flushed here, not by the drop, which would swallow an error.
            c.out.flush()?;
            self.current = None;
        }
        let c = match self.current.take() {
            Some(c) => c,
            None => self.open(now)?,
        };
        let c = self.current.insert(c);
        c.out.write_all(line.as_bytes())?;
        c.out.write_all(b"\n")?;
        c.size += len;
        c.empty = false;
        Ok(())
    }

    /// Creates the next `httperrN.log` (never an existing one) and writes its directives.
    fn open(&mut self, now: SystemTime) -> io::Result<Current> {
        // Again here, in case someone removed the folder while the daemon ran.
        std::fs::create_dir_all(&self.folder)?;
        loop {
            let path = self.folder.join(format!("httperr{}.log", self.next));
            self.next = self.next.saturating_add(1);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    tracing::debug!(path = %path.display(), "new error log file");
                    // Straight to the file: even a daemon killed before its first flush
                    // leaves a file that says what it is.
                    let head = directives(now);
                    file.write_all(head.as_bytes())?;
                    return Ok(Current {
                        out: BufWriter::with_capacity(BUFFER, file),
                        size: head.len() as u64,
                        empty: true,
                    });
                }
                // Created since the folder was read: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.next < u64::MAX => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn fail(&mut self, error: &io::Error) {
        tracing::warn!(
            folder = %self.folder.display(),
            %error,
            "cannot write the error log files; httperr lines go to the log only"
        );
        self.broken = true;
        self.current = None;
    }
}

/// Creates `folder` if missing and returns the number after the highest `httperrN.log` in
/// it (1 when there is none).
fn next_number(folder: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(folder)?;
    let mut highest = 0;
    for entry in std::fs::read_dir(folder)? {
        if let Some(n) = entry?.file_name().to_str().and_then(file_number) {
            highest = highest.max(n);
        }
    }
    Ok(highest.saturating_add(1))
}

/// `N` of a file named `httperrN.log`.
fn file_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("httperr")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The W3C directives a file begins with.
fn directives(now: SystemTime) -> String {
    let mut s = format!("#Software: {SOFTWARE}\n#Version: 1.0\n#Date: ");
    crate::pages::stamp(&mut s, now);
    let _ = write!(s, "\n#Fields: {FIELDS}\n");
    s
}

/// Appends a field: `-` when missing or empty, spaces and controls as `+`, truncated.
fn field(s: &mut String, value: Option<&[u8]>, max: usize) {
    match value {
        None | Some([]) => s.push('-'),
        Some(v) => {
            for &b in v.iter().take(max) {
                s.push(if b <= b' ' || b == 0x7f || b >= 0x80 {
                    '+'
                } else {
                    b as char
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{T, TempDir, at};

    fn entry() -> Entry<'static> {
        Entry {
            client: "192.0.2.10:51234".parse().unwrap(),
            local: "192.0.2.1:80".parse().unwrap(),
            version: Some("HTTP/1.1"),
            method: Some(b"GET"),
            uri: Some(b"/x y"),
            status: Some(400),
            reason: Reason::Hostname,
            queue: None,
        }
    }

    fn config(dir: &TempDir) -> ErrLogConfig {
        ErrLogConfig {
            enabled: true,
            folder: dir.0.clone(),
            truncate_size: 1_048_576,
        }
    }

    #[test]
    fn line_format() {
        let e = entry();
        assert_eq!(
            e.line(at(T)),
            "2024-05-01 12:00:01 192.0.2.10 51234 192.0.2.1 80 HTTP/1.1 GET /x+y 400 - Hostname -"
        );
        let e = Entry {
            version: None,
            method: None,
            uri: None,
            status: None,
            reason: Reason::TimerConnectionIdle,
            queue: Some("app"),
            ..e
        };
        assert!(
            e.line(at(T))
                .ends_with(" 80 - - - - - Timer_ConnectionIdle app")
        );
    }

    #[test]
    fn escaping() {
        for (uri, logged) in [
            (&b"/a\tb"[..], "/a+b"),
            (b"/a\x01\x7fb", "/a++b"),
            (b"/caf\xc3\xa9", "/caf++"),
            (b"", "-"),
        ] {
            let e = Entry {
                uri: Some(uri),
                queue: Some("my queue"),
                ..entry()
            };
            assert!(
                e.line(at(T))
                    .ends_with(&format!(" GET {logged} 400 - Hostname my+queue")),
                "{uri:?}"
            );
        }
        let long = vec![b'a'; 300];
        let e = Entry {
            method: Some(&long),
            ..entry()
        };
        assert!(
            e.line(at(T))
                .contains(&format!(" {} /x+y ", "a".repeat(255)))
        );
    }

    #[test]
    fn file_begins_with_the_directives() {
        let dir = TempDir::new("directives");
        let mut files = Files::new(dir.0.clone(), 1_048_576, next_number(&dir.0).unwrap());
        files.append(&entry().line(at(T + 5)), at(T));
        // The directives are on disk before the first flush, the line is not.
        assert!(dir.read("httperr1.log").ends_with(" s-queuename\n"));
        files.flush();
        assert_eq!(
            dir.read("httperr1.log"),
            "#Software: Microsoft HTTP API 2.0\n\
             #Version: 1.0\n\
             #Date: 2024-05-01 12:00:01\n\
             #Fields: date time c-ip c-port s-ip s-port cs-version cs-method cs-uri sc-status \
             s-siteid s-reason s-queuename\n\
             2024-05-01 12:00:06 192.0.2.10 51234 192.0.2.1 80 HTTP/1.1 GET /x+y 400 - Hostname -\n"
        );
        assert!(!files.broken);
    }

    #[test]
    fn rotates_before_a_file_would_exceed_the_limit() {
        let dir = TempDir::new("rotate");
        let line = entry().line(at(T));
        let head = directives(at(T)).len() as u64;
        let per = line.len() as u64 + 1;
        // Room for exactly three lines per file.
        let limit = head + 3 * per;
        let mut files = Files::new(dir.0.clone(), limit, next_number(&dir.0).unwrap());
        for _ in 0..7 {
            files.append(&line, at(T));
        }
        files.flush();
        assert_eq!(
            dir.names(),
            ["httperr1.log", "httperr2.log", "httperr3.log"]
        );
        for (name, lines) in [
            ("httperr1.log", 3),
            ("httperr2.log", 3),
            ("httperr3.log", 1),
        ] {
            let text = dir.read(name);
            assert!(text.starts_with("#Software: "), "{name}");
            assert_eq!(text.matches(&line).count(), lines, "{name}");
            assert!(text.len() as u64 <= limit, "{name}");
        }
        assert_eq!(dir.read("httperr1.log").len() as u64, limit);
        // A limit below one line still writes every line, one per file.
        let dir = TempDir::new("tiny");
        let mut files = Files::new(dir.0.clone(), 10, 1);
        files.append(&line, at(T));
        files.append(&line, at(T));
        files.flush();
        assert_eq!(dir.names(), ["httperr1.log", "httperr2.log"]);
    }

    #[test]
    fn rotates_at_the_default_size() {
        let dir = TempDir::new("default");
        let line = entry().line(at(T));
        let mut files = Files::new(dir.0.clone(), 1_048_576, 1);
        let per_file = (1_048_576 - directives(at(T)).len()) / (line.len() + 1);
        for _ in 0..=per_file {
            files.append(&line, at(T));
        }
        files.flush();
        assert_eq!(dir.names(), ["httperr1.log", "httperr2.log"]);
        assert!(std::fs::metadata(dir.0.join("httperr1.log")).unwrap().len() <= 1_048_576);
        assert_eq!(dir.read("httperr2.log").matches(&line).count(), 1);
    }

    #[test]
    fn numbering_continues_after_existing_files() {
        let dir = TempDir::new("numbers");
        assert_eq!(next_number(&dir.0).unwrap(), 1, "creates the folder");
        for name in [
            "httperr2.log",
            "httperr10.log",
            "httperr11.log.gz",
            "httperr.log",
        ] {
            std::fs::write(dir.0.join(name), "old\n").unwrap();
        }
        assert_eq!(next_number(&dir.0).unwrap(), 11);
        // A file that appears after the scan is skipped, not appended to.
        std::fs::write(dir.0.join("httperr11.log"), "other\n").unwrap();
        let mut files = Files::new(dir.0.clone(), 1_048_576, 11);
        files.append("x", at(T));
        files.flush();
        assert_eq!(dir.read("httperr10.log"), "old\n");
        assert_eq!(dir.read("httperr11.log"), "other\n");
        assert!(dir.read("httperr12.log").ends_with("\nx\n"));
    }

    #[test]
    fn file_number_parses_only_httperr_n_log() {
        for (name, n) in [
            ("httperr1.log", Some(1)),
            ("httperr0042.log", Some(42)),
            ("httperr.log", None),
            ("httperr+1.log", None),
            ("httperr1.log.1", None),
            ("HTTPERR1.LOG", None),
            ("httperr99999999999999999999999.log", None),
        ] {
            assert_eq!(file_number(name), n, "{name}");
        }
    }

    #[tokio::test]
    async fn log_writes_through_its_thread_and_flushes() {
        let dir = TempDir::new("log");
        let log = Log::open(&config(&dir));
        entry().emit(&log);
        log.flush().await;
        assert_eq!(
            dir.read("httperr1.log")
                .matches(" 400 - Hostname -\n")
                .count(),
            1
        );
        // Dropping the handle writes out what is still buffered.
        Entry {
            status: Some(404),
            reason: Reason::NotFound,
            ..entry()
        }
        .emit(&log);
        drop(log);
        assert!(dir.read("httperr1.log").ends_with(" 404 - NotFound -\n"));
        // The next start takes the next number.
        let log = Log::open(&config(&dir));
        entry().emit(&log);
        drop(log);
        assert_eq!(dir.names(), ["httperr1.log", "httperr2.log"]);
    }

    #[test]
    fn no_files_when_disabled_or_the_folder_is_unusable() {
        let dir = TempDir::new("off");
        let log = Log::open(&ErrLogConfig {
            enabled: false,
            ..config(&dir)
        });
        assert!(!log.0.is_on());
        entry().emit(&log);
        drop(log);
        assert!(!dir.0.exists());
        // A folder under a regular file cannot be created, even by root.
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("file"), "").unwrap();
        let log = Log::open(&ErrLogConfig {
            folder: dir.0.join("file").join("httperr"),
            ..config(&dir)
        });
        assert!(!log.0.is_on());
        entry().emit(&log);
    }
}
