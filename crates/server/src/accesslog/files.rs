//! The access log's folder and files: whose the folder must be, files opened without
//! following a link, file sets per queue with encoded names, rollover, and the writer
//! thread's side of the hand-off.

use super::*;

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
pub(super) fn own_folder(folder: &Path, uid: u32, create: bool) -> io::Result<()> {
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
pub(super) fn open_file(path: &Path, uid: u32) -> io::Result<File> {
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
pub(super) struct Writer {
    pub(super) root: PathBuf,
    pub(super) format: AccessLogFormat,
    pub(super) rollover: AccessLogRollover,
    pub(super) max_size: u64,
    pub(super) uid: u32,
    /// By queue name with `per_queue`, else the one set under `None`.
    pub(super) sets: HashMap<Option<String>, Set>,
    pub(super) dropped: Arc<AtomicU64>,
    /// Dropped lines already warned of.
    pub(super) reported: u64,
}

/// One file set.
pub(super) struct Set {
    pub(super) dir: PathBuf,
    pub(super) current: Option<Current>,
    /// The number of the next `u_extendN` file to open (`rollover = "size"`), once known.
    pub(super) seq: Option<u64>,
    pub(super) last_used: Instant,
    /// After a failure: no file before then.
    pub(super) retry_at: Option<Instant>,
    /// The file this set last wrote directives into: closed for a while (idle, or to
    /// keep open files under the cap) and opened again, it needs none.
    pub(super) headed: Option<PathBuf>,
}

pub(super) struct Current {
    pub(super) out: BufWriter<File>,
    /// Bytes in the file, buffered ones included.
    pub(super) size: u64,
    /// No line since the daemon opened it.
    pub(super) empty: bool,
    /// The day or hour (since the epoch) of its name; 0 with `size`.
    pub(super) period: u64,
}

impl Writer {
    pub(super) fn ext(&self) -> &'static str {
        match self.format {
            AccessLogFormat::W3c => "log",
            AccessLogFormat::Json => "jsonl",
        }
    }

    pub(super) fn period(&self, at: SystemTime) -> u64 {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match self.rollover {
            AccessLogRollover::Daily => secs / 86400,
            AccessLogRollover::Hourly => secs / 3600,
            AccessLogRollover::Size => 0,
        }
    }

    /// The file name for `period` (or sequence number `seq` with `size`).
    pub(super) fn name(&self, period: u64, seq: u64) -> String {
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
    pub(super) fn append(&mut self, set: Option<String>, at: SystemTime, text: &str) {
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

    pub(super) fn try_append(
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
    pub(super) fn open(
        &self,
        s: &mut Set,
        per_queue: bool,
        period: u64,
        len: u64,
    ) -> io::Result<Current> {
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
            crate::pages::stamp(&mut head, SystemTime::now());
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
    pub(super) fn last_seq(&self, dir: &Path) -> io::Result<u64> {
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
    pub(super) fn flush(&mut self) {
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
    pub(super) fn limit_open(&mut self) {
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
