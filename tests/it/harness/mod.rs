//! What the end-to-end tests share: a daemon on its own control socket and loopback
//! address, apps started from the example binaries, a control client (the SDK's, made
//! blocking), raw HTTP.
//!
//! Every process a test starts is killed when its handle drops, so a failing assertion
//! leaves nothing behind.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use portshare_proto::control::path;
use portshare_proto::wire::{self, Frame};

/// A fresh folder under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portshare-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `portshare` binary under test.
pub fn portshare_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portshare"))
}

/// An example binary, built by `cargo test` next to the test executables.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/test-xxxx → target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile folder");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds the examples",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1 (free when asked; callers retry on a race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed on drop; its stderr goes to a file kept for failure messages.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (at most 10 s) for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A daemon under test.
pub struct Daemon {
    pub proc: Proc,
    pub control: PathBuf,
    pub dir: TempDir,
}

impl Daemon {
    /// Starts `portshare serve --control DIR/control.sock --iplisten 127.0.0.1` plus `extra`.
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = TempDir::new("daemon");
        Daemon::start_in(dir, extra)
    }

    pub fn start_in(dir: TempDir, extra: &[&str]) -> Daemon {
        Daemon::start_via(dir, &[], extra)
    }

    /// [`Daemon::start_in`], with the daemon started through `wrapper` (a command that
    /// runs the rest of its command line, such as `prlimit --nofile=256:256 --`).
    pub fn start_via(dir: TempDir, wrapper: &[&str], extra: &[&str]) -> Daemon {
        let control = dir.0.join("control.sock");
        let log = dir.0.join(format!("daemon-{}.log", free_port()));
        let mut cmd = match wrapper {
            [] => Command::new(portshare_bin()),
            [program, args @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(portshare_bin());
                cmd
            }
        };
        cmd.arg("serve")
            .arg("--control")
            .arg(&control)
            .args(["--threads", "2"]);
        if !extra
            .iter()
            .any(|a| *a == "--iplisten" || a.starts_with("--config"))
        {
            cmd.args(["--iplisten", "127.0.0.1"]);
        }
        if !extra.iter().any(|a| a.starts_with("--config")) {
            // The error log goes to the test's folder, not the system's.
            let config = dir.0.join("daemon.toml");
            let folder = dir.0.join("httperr");
            std::fs::write(
                &config,
                format!(
                    "state_file = {:?}\n[errlog]\nfolder = {:?}\n",
                    dir.0.join("state.toml").display().to_string(),
                    folder.display().to_string()
                ),
            )
            .expect("write daemon.toml");
            cmd.arg("--config").arg(&config);
        }
        cmd.args(extra)
            .env("PORTSHARE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("start portshare serve");
        let proc = Proc { child, log };
        let d = Daemon { proc, control, dir };
        d.wait_ready();
        d
    }

    /// Waits until the daemon answers on its control socket, which it does only once its
    /// configuration is applied (the socket itself exists a moment earlier).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.control).is_ok() {
                let (status, body) = self.ctl().call("GET", "/v1/state", None);
                assert_eq!(status, 200, "{body}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not come up:\n{}", self.proc.log_text());
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// A new control connection (a session of its own).
    pub fn ctl(&self) -> Ctl {
        Ctl::connect(&self.control)
    }

    /// Starts the `hello` example against this daemon and waits for `ready`.
    pub fn hello(&self, name: &str, prefixes: &[&str], extra: &[&str]) -> App {
        App::start(&self.control, "hello", name, prefixes, extra)
    }

    /// The state view.
    pub fn state(&self) -> serde_json::Value {
        let (status, body) = self.ctl().call("GET", "/v1/state", None);
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// An app process started from an example binary.
pub struct App {
    pub proc: Proc,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl App {
    pub fn start(
        control: &Path,
        example: &str,
        name: &str,
        prefixes: &[&str],
        extra: &[&str],
    ) -> App {
        let app = App::spawn(control, example, name, prefixes, extra);
        app.expect_ready()
    }

    pub fn spawn(
        control: &Path,
        example: &str,
        name: &str,
        prefixes: &[&str],
        extra: &[&str],
    ) -> App {
        App::spawn_via(&[], &example_bin(example), control, name, prefixes, extra)
    }

    /// Starts `program` (an example binary) through `wrapper` (such as `setpriv ...`).
    pub fn spawn_via(
        wrapper: &[String],
        program: &Path,
        control: &Path,
        name: &str,
        prefixes: &[&str],
        extra: &[&str],
    ) -> App {
        let example = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = control
            .parent()
            .expect("control folder")
            .join(format!("{example}-{name}-{}.log", free_port()));
        let mut cmd = match wrapper {
            [] => Command::new(program),
            [first, args @ ..] => {
                let mut cmd = Command::new(first);
                cmd.args(args).arg(program);
                cmd
            }
        };
        cmd.arg("--control").arg(control);
        if !name.is_empty() {
            cmd.args(["--name", name]);
        }
        cmd.args(extra)
            .args(prefixes)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("start example");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        App {
            proc: Proc { child, log },
            stdout,
        }
    }

    /// Waits for the `ready` line; panics with the app's stderr if it exits first.
    pub fn expect_ready(mut self) -> App {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap_or(0);
        assert!(
            n > 0 && line.trim() == "ready",
            "app did not print ready (got {line:?}):\n{}",
            self.proc.log_text()
        );
        self
    }

    /// Waits for the app to exit and returns its code and stderr.
    pub fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return (status.code(), self.proc.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("app did not exit:\n{}", self.proc.log_text());
    }
}

/// A control connection (a session of its own): the SDK's [`portshare_client::Control`],
/// blocking on a runtime of its own, answering each request with its status and JSON body.
pub struct Ctl {
    control: portshare_client::Control,
    /// Declared after `control`, so the connection drops before the runtime that drives it.
    runtime: tokio::runtime::Runtime,
}

impl Ctl {
    pub fn connect(path: &Path) -> Ctl {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the control connection");
        let control = runtime
            .block_on(portshare_client::Control::connect(path))
            .expect("connect to the control socket");
        Ctl { control, runtime }
    }

    /// One request; the status and the JSON body (`null` when empty).
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let Ctl { control, runtime } = self;
        let method = http::Method::from_bytes(method.as_bytes()).expect("a method");
        let exchange = control.send(method, path, body.as_ref());
        let answer = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), exchange).await })
            .expect("an answer within 30 s")
            .expect("control request");
        let json = if answer.body().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(answer.body()).expect("JSON body")
        };
        (answer.status().as_u16(), json)
    }

    pub fn create_queue(&mut self, spec: serde_json::Value) -> serde_json::Value {
        let (status, body) = self.call("POST", path::QUEUES, Some(spec));
        assert!(status == 201 || status == 200, "{status} {body}");
        body
    }

    pub fn add_url(&mut self, queue: &str, url: &str) -> (u16, serde_json::Value) {
        self.call(
            "POST",
            &path::queue(queue, path::URLS),
            Some(serde_json::json!({ "url": url })),
        )
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked or close-delimited) from a
/// stream; returns status, the head text and the body.
pub fn read_response(
    s: &mut impl Read,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (u16, String, Vec<u8>) {
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read response head");
        assert!(
            n > 0,
            "connection closed before a response head (got {:?})",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let status: u16 = head[9..12].parse().expect("status code");
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().expect("content-length"));
    let body = if head_request || status == 204 || status == 304 || status == 101 {
        Vec::new()
    } else if let Some(n) = length {
        while buf.len() < n {
            let r = s.read(&mut chunk).expect("read body");
            assert!(r > 0, "closed inside the body");
            buf.extend_from_slice(&chunk[..r]);
        }
        buf.drain(..n).collect()
    } else if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                let r = s.read(&mut chunk).expect("read chunk size");
                assert!(r > 0, "closed inside a chunked body");
                buf.extend_from_slice(&chunk[..r]);
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .expect("chunk size");
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let r = s.read(&mut chunk).expect("read chunk");
                assert!(r > 0, "closed inside a chunk");
                buf.extend_from_slice(&chunk[..r]);
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let mut rest = std::mem::take(buf);
        let _ = s.read_to_end(&mut rest);
        rest
    };
    (status, head, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends raw bytes to 127.0.0.1:port and reads one response.
pub fn http_raw(port: u16, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = connect(port);
    s.write_all(request).expect("send request");
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, request.starts_with(b"HEAD "))
}

/// `GET target` with `Host: host`, connection closed after.
pub fn get(port: u16, host: &str, target: &str) -> (u16, String, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = http_raw(port, req.as_bytes());
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// What happened to a connection that should have been reset or closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A response arrived.
    Response(u16),
    /// The connection was reset (RST).
    Reset,
    /// Closed cleanly without a response.
    Closed,
}

/// Sends `request` and tells how the connection ended.
pub fn ending(port: u16, request: &[u8]) -> Ending {
    let mut s = connect(port);
    if s.write_all(request).is_err() {
        return Ending::Reset;
    }
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Ending::Closed,
        Ok(n) if n >= 12 => {
            Ending::Response(String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0))
        }
        Ok(_) => Ending::Closed,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ending::Reset,
        Err(e) => panic!("unexpected read error: {e}"),
    }
}

/// Polls `f` until it returns true, for at most `secs` seconds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Whether 127.0.0.1:port can be bound right now (with SO_REUSEADDR, as the daemon binds).
pub fn port_free(port: u16) -> bool {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuseaddr");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .is_ok()
        && s.listen(1).is_ok()
}

/// Kills a daemon and starts another in the same folder, so on the same control socket.
pub fn restart_daemon(d: Daemon, extra: &[&str]) -> Daemon {
    let Daemon { mut proc, dir, .. } = d;
    proc.kill();
    drop(proc);
    Daemon::start_in(dir, extra)
}

/// `GET target` with `Host: host` and `Connection: close`; `None` when the connection is
/// refused or breaks, instead of panicking (for polling).
pub fn try_get(port: u16, host: &str, target: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Starts `hello` with `paths` on a free port of 127.0.0.1, trying another port when
/// something else took the first meanwhile (ERROR_SHARING_VIOLATION).
pub fn hello_on_free_port(d: &Daemon, name: &str, paths: &[&str], extra: &[&str]) -> (App, u16) {
    for _ in 0..5 {
        let port = free_port();
        let prefixes: Vec<String> = paths
            .iter()
            .map(|p| format!("http://+:{port}{p}"))
            .collect();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let mut app = App::spawn(&d.control, "hello", name, &refs, extra);
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut app.stdout, &mut line);
        if line.trim() == "ready" {
            return (app, port);
        }
        let log = app.proc.log_text();
        assert!(
            log.contains("ERROR_SHARING_VIOLATION"),
            "hello failed:\n{log}"
        );
    }
    panic!("no free port after 5 tries");
}

/// Starts a daemon from a configuration file holding `config(port)` for a free port of
/// 127.0.0.1, with the listen list, state file and error-log folder in the daemon's own
/// folder (so `config` must not have an `[errlog]` table). Tries another port when the
/// first was taken before the daemon could bind it.
pub fn daemon_with_config(tag: &str, config: impl Fn(u16) -> String) -> (Daemon, u16) {
    for _ in 0..5 {
        let dir = TempDir::new(tag);
        let port = free_port();
        let text = format!(
            "iplisten = [\"127.0.0.1\"]\nstate_file = {:?}\n\n[errlog]\nfolder = {:?}\n\n{}",
            dir.0.join("state.toml").display().to_string(),
            dir.0.join("httperr").display().to_string(),
            config(port)
        );
        let path = dir.0.join("portshare.toml");
        std::fs::write(&path, text).expect("write the configuration");
        let path = path.to_str().expect("utf-8 path").to_owned();
        let daemon = Daemon::start_in(dir, &["--config", &path]);
        if daemon.state()["bind_failures"]
            .as_array()
            .is_none_or(|f| f.is_empty())
        {
            return (daemon, port);
        }
    }
    panic!("no free port the daemon could bind");
}

/// The command prefix that runs a program as `uid` (and gid `uid`, no supplementary
/// groups), with numeric ids so no user need exist.
pub fn as_uid(uid: u32) -> Vec<String> {
    [
        "setpriv",
        "--reuid",
        &uid.to_string(),
        "--regid",
        &uid.to_string(),
        "--clear-groups",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Whether this process may run programs as other uids through `setpriv`. Outside CI a
/// machine that cannot skips the tests that need it (false, with a note); under `CI` it
/// fails them.
pub fn can_switch_uid() -> bool {
    let ran = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "true",
        ])
        .output();
    match ran {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv failed under CI: {err}"
            );
            eprintln!("skipped: cannot switch uid here ({err})");
            false
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv missing under CI: {e}"
            );
            eprintln!("skipped: setpriv not available ({e})");
            false
        }
    }
}

/// The arguments that make this test binary, or a copy of it, run test `name` of `module`
/// alone, its output uncaptured: `module` is the caller's `module_path!()`, whose first part
/// is the binary's own name (`it::access`), which libtest's test paths leave out
/// (`access::access_probe`). A wrong path would run no test at all and pass.
pub fn only_test(module: &str, name: &str) -> Vec<String> {
    let path = match module.split_once("::") {
        Some((_, inner)) => format!("{inner}::{name}"),
        None => name.to_owned(),
    };
    ["--exact", &path, "--nocapture", "--test-threads", "1"]
        .map(str::to_owned)
        .to_vec()
}

/// Whether `prlimit` (util-linux) runs here; as [`can_switch_uid`] for CI.
pub fn have_prlimit() -> bool {
    match Command::new("prlimit").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "prlimit missing under CI: {other:?}"
            );
            eprintln!("skipped: prlimit not available ({other:?})");
            false
        }
    }
}

/// Copies `from` to `to` for other uids to run, and waits until it can be executed: a
/// test thread that forks while the copy is open for writing keeps it open in its child
/// until that child execs, and running the copy meanwhile fails with ETXTBSY.
pub fn copy_executable(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy the executable");
    for _ in 0..250 {
        match Command::new(to)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return,
        }
    }
    panic!("{} stayed busy", to.display());
}

/// One control request that may fail: the status and JSON body, or why there is none
/// (the daemon closed the connection, or did not answer within the stream's timeout).
pub fn try_call(
    stream: &mut UnixStream,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: portshare\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line: {head}"))?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let raw = &buf[end + 4..end + 4 + length];
                let json = if raw.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(raw).map_err(|e| format!("body: {e}"))?
                };
                return Ok((status, json));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// The resident memory of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// A client connection to 127.0.0.1:port whose receive buffer is as small as the kernel
/// allows, so what it does not read stays with the daemon rather than in its socket.
pub fn connect_small(port: u16) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// A worker speaking the worker wire by hand: attached to a queue over the control socket,
/// frames written and read as the test says.
pub struct WireWorker {
    pub sock: UnixStream,
    buf: BytesMut,
}

impl WireWorker {
    /// Attaches to queue `queue` with `slots` slots (the queue must exist and be this
    /// process's to attach to).
    pub fn attach(control: &Path, queue: &str, slots: u32) -> WireWorker {
        let mut sock = UnixStream::connect(control).expect("connect to the control socket");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            sock,
            "POST /v1/queues/{queue}/attach HTTP/1.1\r\nHost: portshare\r\n\
             Connection: upgrade\r\nUpgrade: {}\r\n{}: {slots}\r\nContent-Length: 0\r\n\r\n",
            wire::UPGRADE_PROTOCOL,
            wire::SLOTS_HEADER
        )
        .expect("attach");
        let mut pre = Vec::new();
        let (status, head, _) = read_response(&mut sock, &mut pre, false);
        assert_eq!(status, 101, "{head}");
        WireWorker {
            sock,
            buf: BytesMut::from(&pre[..]),
        }
    }

    /// The next frame from the daemon; `None` once it has closed the connection (or the
    /// read timed out).
    pub fn frame(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(frame) = wire::decode(&mut self.buf).expect("the daemon's frames") {
                return Some(frame);
            }
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next request head's stream, skipping other frames.
    pub fn next_head(&mut self) -> u32 {
        loop {
            match self.frame() {
                Some(Frame::Head { stream, .. }) => return stream,
                Some(_) => {}
                None => panic!("the daemon closed the worker connection before a request"),
            }
        }
    }

    /// Writes what `encode` appends, in one write.
    pub fn send(&mut self, encode: impl FnOnce(&mut BytesMut)) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode(&mut out);
        self.sock.write_all(&out)
    }
}

/// `text` without its ANSI colour sequences (the daemon's log, a tool's output).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
