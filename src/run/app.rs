//! The application `portshare run` supervises: its address, its process group, its output.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Lines of the application's output kept for the message of a failed start.
const TAIL_LINES: usize = 20;
/// Characters kept of one line.
const TAIL_LINE_CHARS: usize = 500;

/// Where the application serves.
#[derive(Debug)]
pub(super) enum Address {
    /// A loopback TCP port.
    Tcp(SocketAddr),
    /// A Unix socket in a private directory of run's, removed at exit.
    Unix { dir: PathBuf, path: PathBuf },
}

impl Address {
    /// The daemon's name for it, as `QueueSpec::upstream` takes it.
    pub(super) fn upstream(&self) -> String {
        match self {
            Address::Tcp(a) => a.to_string(),
            Address::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }

    /// A free loopback port: bound, read and let go.
    pub(super) fn free_port() -> io::Result<Address> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        Ok(Address::Tcp(l.local_addr()?))
    }

    /// A socket path in a new directory only this user may enter (0700), under
    /// `$XDG_RUNTIME_DIR` when set and writable, else the temporary directory.
    pub(super) fn private_socket() -> io::Result<Address> {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir());
        let mut failed = None;
        for base in runtime.into_iter().chain([std::env::temp_dir()]) {
            match private_dir(&base) {
                Ok(dir) => {
                    let path = dir.join("app.sock");
                    return Ok(Address::Unix { dir, path });
                }
                Err(e) => failed = Some(e),
            }
        }
        Err(failed.unwrap_or_else(|| io::Error::other("no folder for the socket")))
    }

    /// For socket activation: the listening socket run makes and hands to each start of
    /// the application. A TCP address is replaced by the port actually bound.
    pub(super) fn listen(&mut self) -> io::Result<OwnedFd> {
        match self {
            Address::Tcp(addr) => {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                *addr = l.local_addr()?;
                Ok(OwnedFd::from(l))
            }
            Address::Unix { path, .. } => Ok(OwnedFd::from(UnixListener::bind(path)?)),
        }
    }

    /// The TCP port, or 0.
    pub(super) fn port(&self) -> u16 {
        match self {
            Address::Tcp(a) => a.port(),
            Address::Unix { .. } => 0,
        }
    }

    /// The socket path, for a Unix address.
    pub(super) fn socket(&self) -> Option<&Path> {
        match self {
            Address::Tcp(_) => None,
            Address::Unix { path, .. } => Some(path),
        }
    }

    /// Removes the private directory, if any.
    pub(super) fn remove(&self) {
        if let Address::Unix { dir, .. } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// One readiness check: the address accepts a connection and, with `path`, answers a
    /// GET of it with a status below 500. `Err` says what failed, for the message of an
    /// application that never gets ready.
    pub(super) async fn check(&self, path: Option<&str>) -> Result<(), String> {
        const CONNECT: Duration = Duration::from_secs(1);
        const ANSWER: Duration = Duration::from_secs(2);
        let mut stream: Box<dyn Stream> = match self {
            Address::Tcp(a) => {
                match tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(a)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => return Err(format!("connecting to {a}: {e}")),
                    Err(_) => return Err(format!("connecting to {a}: no answer within 1 s")),
                }
            }
            Address::Unix { path: p, .. } => {
                match tokio::time::timeout(CONNECT, tokio::net::UnixStream::connect(p)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => return Err(format!("connecting to {}: {e}", p.display())),
                    Err(_) => {
                        return Err(format!(
                            "connecting to {}: no answer within 1 s",
                            p.display()
                        ));
                    }
                }
            }
        };
        let Some(path) = path else {
            return Ok(());
        };
        let host = match self {
            Address::Tcp(a) => a.to_string(),
            Address::Unix { .. } => "localhost".to_owned(),
        };
        let exchange = async {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            stream.write_all(req.as_bytes()).await?;
            let mut head = Vec::with_capacity(64);
            let mut buf = [0u8; 256];
            while !head.contains(&b'\n') && head.len() < 1024 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, io::Error>(head)
        };
        let head = match tokio::time::timeout(ANSWER, exchange).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(format!("GET {path}: {e}")),
            Err(_) => return Err(format!("GET {path}: no answer within 2 s")),
        };
        let line = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or(&[]))
            .trim()
            .to_owned();
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(s) if s < 500 => Ok(()),
            Some(s) => Err(format!("GET {path} answered {s}")),
            None => Err(format!(
                "GET {path}: the answer is not HTTP/1.x: {:?}",
                crate::run::clip(&line, 80)
            )),
        }
    }
}

/// A new directory in `base`, mode 0700.
fn private_dir(base: &Path) -> io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for n in 0..100u32 {
        let dir = base.join(format!(
            "portshare-run-{}-{:08x}",
            std::process::id(),
            nanos.wrapping_add(n.wrapping_mul(0x9E37_79B9))
        ));
        // mkdir makes a new directory or fails: never one somebody else prepared.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", base.display()))),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no new directory could be made in {}", base.display()),
    ))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The last lines the application wrote, stdout and stderr together.
#[derive(Debug, Clone, Default)]
pub(super) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &[u8]) {
        let mut text: String = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .chars()
            .take(TAIL_LINE_CHARS)
            .collect();
        text = portshare_proto::text::printable(&text).into_owned();
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(text);
    }

    pub(super) fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// One start of the application.
#[derive(Debug)]
pub(super) struct App {
    child: Child,
    /// Its pid, which is also its process group's id once `__exec` ran.
    pid: Pid,
    pumps: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl App {
    /// Starts `command` through `portshare __exec` with `env` set, its output passed
    /// through and kept in `tail`. With `listener`, the socket becomes its descriptor 3.
    ///
    /// Call it from the thread that lives as long as run (the main thread): the
    /// application's parent-death signal fires when the thread that started it ends.
    pub(super) fn spawn(
        command: &[OsString],
        env: &[(String, OsString)],
        listener: Option<&OwnedFd>,
        tail: &Tail,
    ) -> io::Result<App> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("__exec")
            .arg("--parent")
            .arg(std::process::id().to_string());
        if listener.is_some() {
            cmd.arg("--activation");
        }
        cmd.arg("--").args(command);
        for (k, v) in env {
            cmd.env(k, v);
        }
        match listener {
            Some(l) => cmd.stdin(Stdio::from(l.try_clone()?)),
            None => cmd.stdin(Stdio::inherit()),
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| io::Error::other("the application's pid is unknown"))?;
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(out, tokio::io::stdout(), tail.clone())));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, tokio::io::stderr(), tail.clone())));
        }
        Ok(App {
            child,
            pid,
            pumps,
            status: None,
        })
    }

    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the application to exit. Cancel safe.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().await?;
        self.status = Some(s);
        Ok(s)
    }

    /// Sends `sig` to the application's process group (to the process alone if it has
    /// not made its group yet).
    pub(super) fn signal(&self, sig: Signal) {
        signal_group(self.pid, sig);
    }

    /// Ends the application and everything in its group: TERM, then KILL to what is left
    /// after `grace`.
    pub(super) async fn stop(&mut self, grace: Duration) {
        if self.status.is_none() {
            self.signal(Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, self.wait())
            .await
            .is_err()
        {
            self.signal(Signal::SIGKILL);
            let _ = self.wait().await;
        }
        self.end_group(deadline).await;
    }

    /// What is left of the application's process group once it exited (processes it
    /// started): TERM, then KILL at `deadline`.
    pub(super) async fn end_group(&self, deadline: tokio::time::Instant) {
        if signal::killpg(self.pid, Signal::SIGTERM).is_err() {
            return;
        }
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if signal::killpg(self.pid, None) == Err(Errno::ESRCH) {
                return;
            }
        }
        let _ = signal::killpg(self.pid, Signal::SIGKILL);
    }

    /// Lets the output already written through, for at most `within`.
    pub(super) async fn drain_output(&mut self, within: Duration) {
        let pumps = std::mem::take(&mut self.pumps);
        let _ = tokio::time::timeout(within, async {
            for p in pumps {
                let _ = p.await;
            }
        })
        .await;
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Whatever way run leaves, the application does not outlive it. Once it was
        // reaped its group is `end_group`'s: its id may go to another process when empty.
        if self.status.is_none() {
            signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

fn signal_group(pid: Pid, sig: Signal) {
    if signal::killpg(pid, sig) == Err(Errno::ESRCH) {
        let _ = signal::kill(pid, sig);
    }
}

/// Passes one of the application's output streams through, keeping its last lines.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, tail: Tail) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut writing = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if writing && (to.write_all(chunk).await.is_err() || to.flush().await.is_err()) {
            // run's own output is gone (a closed pipe): keep reading, so that the
            // application never blocks on a full pipe.
            writing = false;
        }
        for part in chunk.split_inclusive(|&b| b == b'\n') {
            if line.len() < TAIL_LINE_CHARS * 4 {
                line.extend_from_slice(part);
            }
            if part.ends_with(b"\n") {
                line.pop();
                tail.push(&line);
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        tail.push(&line);
    }
}

/// The exit code run ends with for an application's `status`: its code, or 128 + the
/// signal that killed it.
pub(super) fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + (s & 0x7f)).unwrap_or(255),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let tail = Tail::default();
        for i in 0..30 {
            tail.push(format!("line {i}\r").as_bytes());
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 10");
        assert_eq!(lines[19], "line 29");
    }

    #[test]
    fn a_private_socket_lives_in_a_0700_directory() {
        use std::os::unix::fs::PermissionsExt;
        let a = Address::private_socket().expect("a directory");
        let Address::Unix { dir, path } = &a else {
            panic!("not unix")
        };
        let mode = std::fs::metadata(dir).expect("made").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(path.starts_with(dir));
        assert!(a.upstream().starts_with("unix:/"));
        a.remove();
        assert!(!dir.exists());
    }

    #[test]
    fn a_free_port_is_loopback() {
        let a = Address::free_port().expect("a port");
        assert!(a.port() > 0);
        assert!(a.upstream().starts_with("127.0.0.1:"));
    }
}
