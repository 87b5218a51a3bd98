//! Upstream queues an ordinary account creates: the daemon forwards only to a server that
//! account runs, checked on every new upstream connection (`crates/server/src/owner.rs`).
//! The account and its servers are other uids through `setpriv`; the control session and
//! the servers are small Python programs, so that nothing here runs as root but the daemon
//! and the "other account's" servers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{
    Daemon, TempDir, as_uid, can_switch_uid, eventually, free_port, get, have_prlimit, have_python,
    python, try_get,
};

/// The account that creates the queues.
const APP: u32 = 1001;

/// An HTTP/1.1 server answering every GET with `served by uid N` (its own uid), on
/// `unix:PATH` or `HOST:PORT` (argv[1]). Prints `READY` once listening.
const SERVER: &str = r#"
import http.server, os, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("served by uid %d\n" % os.getuid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
addr = sys.argv[1]
if addr.startswith("unix:"):
    class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
    srv = S(addr[5:], H)
else:
    host, port = addr.rsplit(":", 1)
    class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True
    srv = S((host, int(port)), H)
print("READY", flush=True)
srv.serve_forever()
"#;

/// A control session: runs the calls of argv[2] (a JSON list of `[METHOD, PATH, BODY]`) on
/// one connection to the control socket argv[1], prints `RESULT STATUS BODY` for each, then
/// `DONE`, and holds the session (its queues and URLs) until its standard input closes.
pub(crate) const SESSION: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rb")
for method, path, body in json.loads(sys.argv[2]):
    data = b"" if body is None else json.dumps(body).encode()
    s.sendall(("%s %s HTTP/1.1\r\nHost: portshare\r\nContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n" % (method, path, len(data))).encode() + data)
    status = int(f.readline().split()[1])
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    print("RESULT", status, f.read(length).decode(errors="replace").replace("\n", " "), flush=True)
print("DONE", flush=True)
sys.stdin.read()
"#;

/// A process the test started, killed when dropped.
pub(crate) struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `python3 -c SCRIPT ARGS` as `uid` (`None`: as the test's own user) and waits for
/// its first line to be `READY` or `DONE`; the lines before it come back too.
pub(crate) fn py(uid: Option<u32>, script: &str, args: &[&str]) -> (Running, Vec<String>) {
    let mut cmd = match uid {
        Some(uid) => {
            let prefix = as_uid(uid);
            let mut c = Command::new(&prefix[0]);
            c.args(&prefix[1..]).arg(python());
            c
        }
        None => Command::new(python()),
    };
    let mut child = cmd
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().expect("piped");
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let done = line == "READY" || line == "DONE";
        lines.push(line);
        if done {
            return (running, lines);
        }
    }
    panic!("python3 {args:?} never got ready: {lines:?}");
}

/// A daemon whose configuration reserves `http://+:PORT/` for [`APP`], in a directory every
/// account may enter, with a subdirectory `app/` that [`APP`] owns for its socket.
fn site() -> (Daemon, u16, TempDir) {
    let dir = TempDir::open_to_all("upstream-owner");
    let own = dir.0.join("app");
    std::fs::create_dir(&own).expect("mkdir");
    std::os::unix::fs::chown(&own, Some(APP), Some(APP)).expect("chown");
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = free_port();
    let d = Daemon::builder()
        .config(format!(
            "[[urlacl]]\nurl = \"http://+:{port}/\"\nusers = [\"uid:{APP}\"]\n"
        ))
        .iplisten("127.0.0.1")
        .spawn();
    (d, port, dir)
}

/// The calls that create queue `name` forwarding to `upstream` and register `/name/`.
fn queue_calls(port: u16, name: &str, upstream: &str) -> serde_json::Value {
    serde_json::json!([
        ["POST", "/v1/queues", { "name": name, "mode": "create", "upstream": upstream }],
        ["POST", format!("/v1/queues/{name}/urls"), { "url": format!("http://+:{port}/{name}/") }],
    ])
}

fn state_queue(d: &Daemon, name: &str) -> serde_json::Value {
    let state = d.state();
    state["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == name).cloned())
        .unwrap_or_default()
}

#[test]
fn an_account_forwards_only_to_servers_it_runs() {
    if !can_switch_uid() || !have_python() {
        return;
    }
    let (d, port, dir) = site();
    let mine_unix = format!("unix:{}", dir.0.join("app/app.sock").display());
    let theirs_unix = format!("unix:{}", dir.0.join("root.sock").display());
    let (mine_tcp, theirs_tcp) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _servers = [
        py(Some(APP), SERVER, &[&mine_unix]).0,
        py(Some(APP), SERVER, &[&mine_tcp]).0,
        py(None, SERVER, &[&theirs_unix]).0,
        py(None, SERVER, &[&theirs_tcp]).0,
    ];
    std::fs::set_permissions(
        dir.0.join("root.sock"),
        std::fs::Permissions::from_mode(0o777),
    )
    .expect("chmod");
    let mut calls = Vec::new();
    for (name, upstream) in [
        ("mu", &mine_unix),
        ("mt", &mine_tcp),
        ("tu", &theirs_unix),
        ("tt", &theirs_tcp),
    ] {
        calls.extend(
            queue_calls(port, name, upstream)
                .as_array()
                .unwrap()
                .clone(),
        );
    }
    // Another host: never for an ordinary account (and nothing is sent there).
    calls.push(
        serde_json::json!(["POST", "/v1/queues", { "name": "far", "upstream": "10.0.0.1:80" }]),
    );
    let (session, lines) = py(
        Some(APP),
        SESSION,
        &[
            d.control.to_str().unwrap(),
            &serde_json::Value::Array(calls).to_string(),
        ],
    );
    let results: Vec<&String> = lines.iter().filter(|l| l.starts_with("RESULT")).collect();
    assert_eq!(results.len(), 9, "{lines:?}");
    for created in &results[..8] {
        assert!(created.starts_with("RESULT 20"), "{lines:?}");
    }
    assert!(
        results[8].starts_with("RESULT 403") && results[8].contains("ERROR_ACCESS_DENIED"),
        "{}",
        results[8]
    );

    for mine in ["mu", "mt"] {
        let (status, _, body) = get(port, "localhost", &format!("/{mine}/"));
        assert_eq!(
            (status, body.as_str()),
            (200, "served by uid 1001\n"),
            "{mine}"
        );
        assert_eq!(
            state_queue(&d, mine)["upstream_refused"],
            serde_json::Value::Null
        );
    }
    for theirs in ["tu", "tt"] {
        for _ in 0..3 {
            let (status, _, body) = get(port, "localhost", &format!("/{theirs}/"));
            assert_eq!(status, 502, "{theirs}: {body}");
            assert!(!body.contains("served by"), "{theirs}: {body}");
        }
        let why = state_queue(&d, theirs)["upstream_refused"].clone();
        assert!(
            why.as_str()
                .is_some_and(|w| w.contains("root owns (uid 0)")),
            "{theirs}: {why}"
        );
    }
    assert!(
        eventually(10, || d.errlog_text().matches("Upstream_Owner").count()
            >= 6),
        "{}",
        d.errlog_text()
    );
    let log = d.log();
    assert!(
        log.contains("upstream refused: not the queue owner's") && log.contains("PID "),
        "the log names who holds the port:\n{log}"
    );
    // The queues go with the session.
    drop(session);
    assert!(eventually(10, || state_queue(&d, "mu").is_null()));
}

#[test]
fn a_port_that_changes_hands_gets_502_never_the_new_holders_answers() {
    if !can_switch_uid() || !have_python() {
        return;
    }
    let (d, port, _dir) = site();
    let upstream = format!("127.0.0.1:{}", free_port());
    let app = py(Some(APP), SERVER, &[&upstream]).0;
    let calls = queue_calls(port, "app", &upstream);
    let (_session, lines) = py(
        Some(APP),
        SESSION,
        &[d.control.to_str().unwrap(), &calls.to_string()],
    );
    assert!(
        lines.iter().filter(|l| l.starts_with("RESULT 20")).count() == 2,
        "{lines:?}"
    );
    let (status, _, body) = get(port, "localhost", "/app/");
    assert_eq!((status, body.as_str()), (200, "served by uid 1001\n"));

    // The app goes; another account's server takes its port.
    drop(app);
    let taker = py(None, SERVER, &[&upstream]).0;
    for _ in 0..5 {
        if let Some((status, body)) = try_get(port, "localhost", "/app/") {
            assert!(!body.contains("served by uid 0"), "{status} {body}");
        }
    }
    let (status, _, _) = get(port, "localhost", "/app/");
    assert_eq!(status, 502);
    assert!(state_queue(&d, "app")["upstream_refused"].is_string());

    // The owner takes it back: served again, the mark gone.
    drop(taker);
    let _app = py(Some(APP), SERVER, &[&upstream]).0;
    assert!(eventually(10, || {
        try_get(port, "localhost", "/app/").is_some_and(|(s, b)| s == 200 && b.contains("1001"))
    }));
    assert!(state_queue(&d, "app")["upstream_refused"].is_null());
    let _ = std::io::stderr().flush();
}

/// A server that shuts down its sending side of each connection as soon as it accepts
/// it, reads what comes and closes, on argv[1] (`HOST:PORT`): its side of the connection
/// is never established when the daemon looks. Prints `READY` once listening.
const HALF_CLOSER: &str = r#"
import socket, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port)))
s.listen(1024)
print("READY", flush=True)
def serve(c):
    try:
        c.recv(65536)
    finally:
        c.close()
while True:
    c, _ = s.accept()
    c.shutdown(socket.SHUT_WR)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The daemon's thread count.
fn threads(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_server_that_closes_every_connection_at_once_holds_few_of_the_daemons_threads() {
    if !can_switch_uid() || !have_python() {
        return;
    }
    let (d, port, _dir) = site();
    let upstream = format!("127.0.0.1:{}", free_port());
    let _server = py(Some(APP), HALF_CLOSER, &[&upstream]).0;
    let calls = queue_calls(port, "rst", &upstream);
    let (_session, lines) = py(
        Some(APP),
        SESSION,
        &[d.control.to_str().unwrap(), &calls.to_string()],
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("RESULT 20")).count(),
        2,
        "{lines:?}"
    );
    let pid = d.state()["pid"].as_u64().expect("the daemon's pid");
    let before = threads(pid);

    // 64 clients at once, each sending requests the upstream closes, for at most 10 s.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let (done, most) = (done.clone(), most.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most.fetch_max(threads(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..64)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..8 {
                    if std::time::Instant::now() > deadline {
                        break;
                    }
                    // Abandoned (no response) when the upstream closes after the check, 502
                    // `Upstream_Owner` when the check found nothing.
                    if let Some((status, body)) = try_get(port, "localhost", "/rst/") {
                        assert_eq!(status, 502, "{body}");
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("watcher");
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    // The lookups run on two threads of their own (started by the first); the control
    // plane's pool may start a few more.
    assert!(
        most <= before + 2 + 4,
        "{before} threads before the flood, {most} during it"
    );
    // The control plane still answers, and the log holds a line per 10 s, not per failure.
    assert!(d.state()["queues"].is_array());
    let failures = d.log().matches("upstream failed").count();
    assert!((1..=2).contains(&failures), "{failures} lines");
}

/// An HTTP/1.1 server that answers each GET after 4 s, on argv[1] (`HOST:PORT`), many at
/// once. Prints `READY` once listening.
const SLOW: &str = r#"
import http.server, socketserver, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(4)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"slow\n")
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
host, port = sys.argv[1].rsplit(":", 1)
srv = S((host, int(port)), H)
print("READY", flush=True)
srv.serve_forever()
"#;

#[test]
fn one_accounts_busy_upstreams_leave_the_other_accounts_their_connections() {
    if !can_switch_uid() || !have_python() || !have_prlimit() {
        return;
    }
    const OTHER: u32 = 1002;
    // 1024 open files: an upstream share of 128 connections, 32 for one account.
    let port = free_port();
    let d = Daemon::builder()
        .dir(TempDir::open_to_all("upstream-share"))
        .config(format!(
            "[[urlacl]]\nurl = \"http://+:{port}/\"\nusers = [\"uid:{APP}\", \"uid:{OTHER}\"]\n"
        ))
        .wrapper(&["prlimit", "--nofile=1024:1024", "--"])
        .spawn();
    assert_eq!(d.state()["budget"]["upstream"]["max"], 128);
    let (slow, fast) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _servers = [
        py(Some(APP), SLOW, &[&slow]).0,
        py(Some(OTHER), SERVER, &[&fast]).0,
    ];
    let mut sessions = Vec::new();
    for (uid, name, upstream) in [(APP, "slow", &slow), (OTHER, "fast", &fast)] {
        let (session, lines) = py(
            Some(uid),
            SESSION,
            &[
                d.control.to_str().unwrap(),
                &queue_calls(port, name, upstream).to_string(),
            ],
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("RESULT 20")).count(),
            2,
            "{lines:?}"
        );
        sessions.push(session);
    }

    // 160 clients at once on the slow account's queue: more than the whole share.
    let clients: Vec<_> = (0..160)
        .map(|_| std::thread::spawn(move || try_get(port, "localhost", "/slow/").map(|r| r.0)))
        .collect();
    assert!(
        eventually(10, || d.state()["budget"]["upstream"]["open"].as_u64()
            >= Some(32)),
        "the slow queue never took its connections"
    );
    // The other account is served meanwhile, on a connection of its own.
    let (status, _, body) = get(port, "localhost", "/fast/");
    assert_eq!((status, body.as_str()), (200, "served by uid 1002\n"));
    let open = d.state()["budget"]["upstream"]["open"]
        .as_u64()
        .unwrap_or(0);
    assert!(open <= 33, "{open} upstream connections open");

    let statuses: Vec<Option<u16>> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let served = statuses.iter().filter(|s| **s == Some(200)).count();
    let refused = statuses.iter().filter(|s| **s == Some(503)).count();
    assert!(served >= 32 && refused > 0, "{statuses:?}");
    drop(sessions);
}
