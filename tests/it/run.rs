//! `portshare run` and held queues end to end: a Python server served through the daemon
//! (on a port, a Unix socket, or socket activation), its process tied to run's (a killed
//! child takes the registration; SIGKILL to run takes the child), signals passed on,
//! refusals before anything starts, an application that never gets ready, waiting for the
//! daemon; and a held queue's requests waiting for ready, under its timer and length, with
//! ready its owner's alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::json;

/// A small HTTP server answering every GET with `echo <path> prefix=<X-Forwarded-Prefix>`,
/// on $PORT, or on the Unix socket $PORTSHARE_SOCKET.
const ECHO_PY: &str = r#"
import http.server, os, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("echo %s prefix=%s\n" % (self.path, self.headers.get("X-Forwarded-Prefix", "-"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
if "PORTSHARE_SOCKET" in os.environ:
    class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
    S(os.environ["PORTSHARE_SOCKET"], H).serve_forever()
else:
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// `portshare run` with `args`, its output in files of `dir`.
struct Runner {
    proc: Proc,
    out: PathBuf,
}

impl Runner {
    fn spawn(wrapper: &[String], control: &Path, dir: &Path, args: &[&str]) -> Runner {
        Runner::spawn_from(&portshare_bin(), wrapper, control, dir, args)
    }

    /// [`Runner::spawn`] of the binary `program` (a copy another uid may run).
    fn spawn_from(
        program: &Path,
        wrapper: &[String],
        control: &Path,
        dir: &Path,
        args: &[&str],
    ) -> Runner {
        let out = dir.join(format!("run-out-{}.log", free_port()));
        let err = dir.join(format!("run-err-{}.log", free_port()));
        let mut cmd = match wrapper {
            [] => Command::new(program),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
        };
        cmd.arg("run")
            .arg("--control")
            .arg(control)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("out file"))
            .stderr(std::fs::File::create(&err).expect("err file"));
        let child = cmd.spawn().expect("start portshare run");
        Runner {
            proc: Proc { child, log: err },
            out,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Its stderr and stdout so far.
    fn text(&self) -> String {
        format!(
            "stderr:\n{}\nstdout:\n{}",
            self.proc.log_text(),
            std::fs::read_to_string(&self.out).unwrap_or_default()
        )
    }

    /// Waits (at most `secs`) for run to exit; its exit code.
    fn exit_code(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "portshare run did not exit within {secs} s:\n{}",
            self.text()
        );
    }

    /// The one child of run (the application), once it exists.
    fn child(&self) -> u32 {
        let mut found = None;
        assert!(
            eventually(10, || {
                found = children_of(self.pid()).first().copied();
                found.is_some()
            }),
            "run has no child:\n{}",
            self.text()
        );
        found.expect("a child")
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) && fields[0] != "Z" {
            out.push(child);
        }
    }
    out
}

/// True while `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, a)| a.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn prefixes(d: &Daemon) -> Vec<String> {
    d.state()["prefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["url"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for a 200 from `target` on `port` of the daemon; its body.
fn served(port: u16, target: &str, runner: &Runner) -> String {
    let mut body = String::new();
    assert!(
        eventually(30, || match try_get(port, "127.0.0.1", target) {
            Some((200, b)) => {
                body = b;
                true
            }
            _ => false,
        }),
        "GET {target} was not served:\n{}",
        runner.text()
    );
    body
}

/// A folder with `py/hello.txt`, for `python3 -m http.server`.
fn site() -> TempDir {
    let dir = TempDir::open_to_all("run-site");
    std::fs::create_dir_all(dir.0.join("py")).expect("mkdir");
    std::fs::write(dir.0.join("py/hello.txt"), "hello from python\n").expect("write");
    dir
}

fn http_server_args<'a>(url: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "--url",
        url,
        "--",
        python(),
        "-m",
        "http.server",
        "{port}",
        "--bind",
        "127.0.0.1",
        "--directory",
        dir,
    ]
}

#[test]
fn a_python_server_serves_through_the_daemon_until_its_child_dies() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let site = site();
    let port = free_port();
    let url = format!("http://+:{port}/py/");
    let root = site.0.to_string_lossy().into_owned();
    let mut run = Runner::spawn(&[], &d.control, &d.dir.0, &http_server_args(&url, &root));
    assert_eq!(served(port, "/py/hello.txt", &run), "hello from python\n");
    let state = d.state();
    let q = &state["queues"][0];
    assert_eq!(q["held"], false, "{state}");
    assert!(
        q["upstream"]
            .as_str()
            .is_some_and(|u| u.starts_with("127.0.0.1:")),
        "{state}"
    );
    let child = run.child();
    signal(child, "KILL");
    assert_eq!(run.exit_code(20), Some(137), "{}", run.text());
    assert!(
        eventually(10, || prefixes(&d).is_empty()),
        "the registration stayed: {}",
        d.state()
    );
}

#[test]
fn sigkill_to_run_takes_the_child_and_the_registration() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let site = site();
    let port = free_port();
    let url = format!("http://+:{port}/py/");
    let root = site.0.to_string_lossy().into_owned();
    let mut run = Runner::spawn(&[], &d.control, &d.dir.0, &http_server_args(&url, &root));
    served(port, "/py/hello.txt", &run);
    let child = run.child();
    run.proc.kill();
    assert!(
        eventually(10, || !alive(child)),
        "the child {child} outlived run"
    );
    assert!(
        eventually(10, || prefixes(&d).is_empty()
            && d.state()["queues"].as_array().is_some_and(|q| q.is_empty())),
        "the queue stayed: {}",
        d.state()
    );
}

#[test]
fn term_to_run_reaches_the_child_and_run_exits_with_its_status() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/sig/");
    let marker = d.dir.0.join("got-term");
    let script = format!(
        "import os, signal, sys, time, http.server\n\
         def term(*a):\n    open({marker:?}, 'w').write('term')\n    sys.exit(7)\n\
         signal.signal(signal.SIGTERM, term)\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), \
         http.server.SimpleHTTPRequestHandler).serve_forever()\n",
        marker = marker.to_string_lossy()
    );
    let mut run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &["--url", &url, "--", python(), "-c", &script],
    );
    assert!(
        eventually(30, || try_get(port, "127.0.0.1", "/sig/")
            .is_some_and(|(s, _)| s != 503)),
        "{}",
        run.text()
    );
    signal(run.pid(), "TERM");
    assert_eq!(run.exit_code(20), Some(7), "{}", run.text());
    assert!(marker.exists(), "the child did not get TERM");
}

#[test]
fn an_app_on_a_unix_socket() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/u/");
    let mut run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &["--url", &url, "--unix", "--", python(), "-c", ECHO_PY],
    );
    assert_eq!(served(port, "/u/x", &run), "echo /u/x prefix=-\n");
    let state = d.state();
    let up = state["queues"][0]["upstream"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(up.starts_with("unix:/"), "{state}");
    let dir = PathBuf::from(&up["unix:".len()..])
        .parent()
        .expect("the socket's folder")
        .to_owned();
    signal(run.pid(), "TERM");
    assert_eq!(run.exit_code(20), Some(143), "{}", run.text());
    assert!(
        eventually(10, || !dir.exists()),
        "{} was not removed",
        dir.display()
    );
}

#[test]
fn a_socket_activated_app() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/act/");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/activated.py");
    let script = script.to_string_lossy();
    for unix in [false, true] {
        let mut args = vec!["--url", &url, "--socket-activation"];
        if unix {
            args.push("--unix");
        }
        args.extend(["--", python(), &script]);
        let mut run = Runner::spawn(&[], &d.control, &d.dir.0, &args);
        assert_eq!(
            served(port, "/act/one", &run),
            "activated: /act/one\n",
            "unix: {unix}"
        );
        signal(run.pid(), "TERM");
        assert_eq!(run.exit_code(20), Some(143), "{}", run.text());
        assert!(eventually(10, || prefixes(&d).is_empty()));
    }
}

/// Needs the upstream relay's `strip_prefix` in the daemon.
#[test]
fn strip_prefix_gives_the_app_paths_below_the_prefix() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/app/");
    let run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &[
            "--url",
            &url,
            "--strip-prefix",
            "--",
            python(),
            "-c",
            ECHO_PY,
        ],
    );
    assert_eq!(
        served(port, "/app/x/y?z=1", &run),
        "echo /x/y?z=1 prefix=/app\n"
    );
}

/// A daemon (folder `tag`, open to every account) where another session's queue `first`
/// holds `http://+:PORT/taken/` (as long as the session returned lives); with the port,
/// that URL, and the path a child started by `run` would create (`touch`) if it ran.
fn with_a_taken_url(tag: &str) -> (Daemon, Ctl, u16, String, PathBuf) {
    let d = Daemon::builder().dir(TempDir::open_to_all(tag)).spawn();
    let port = free_port();
    let mut other = d.ctl();
    other.create_queue(json!({ "name": "first" }));
    let taken = format!("http://+:{port}/taken/");
    assert_eq!(other.add_url("first", &taken).0, 201);
    let marker = d.dir.0.join("started");
    (d, other, port, taken, marker)
}

#[test]
fn refusals_come_before_the_child_starts() {
    let (d, _other, port, taken, marker) = with_a_taken_url("run-refused");
    let touch = marker.to_string_lossy().into_owned();
    // 183: another queue holds the URL.
    let mut run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &["--url", &taken, "--", "touch", &touch],
    );
    assert_eq!(run.exit_code(20), Some(1), "{}", run.text());
    let text = run.text();
    assert!(text.contains("183") && text.contains("hint:"), "{text}");
    assert!(!marker.exists(), "the command ran");
    // 5: another uid, without a reservation.
    if !can_switch_uid() {
        return;
    }
    let exe = d.dir.0.join("portshare-copy");
    copy_executable(&portshare_bin(), &exe);
    let free = format!("http://+:{port}/free/");
    let mut cmd = Command::new("setpriv");
    cmd.args(as_uid(1001).into_iter().skip(1))
        .arg(&exe)
        .args(["run", "--control"])
        .arg(&d.control)
        .args(["--url", &free, "--", "touch", &touch])
        .current_dir(&d.dir.0);
    let (code, _, stderr) = run_to_exit(cmd, &d.dir.0, 20);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ERROR_ACCESS_DENIED"), "{stderr}");
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn run_registers_its_urls_together_or_not_at_all() {
    let (d, _other, port, taken, marker) = with_a_taken_url("run-batch");
    let free = format!("http://+:{port}/free/");
    let touch = marker.to_string_lossy().into_owned();
    let mut run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &["--url", &free, "--url", &taken, "--", "touch", &touch],
    );
    assert_eq!(run.exit_code(20), Some(1), "{}", run.text());
    let text = run.text();
    // The URL refused is named, the other one is not left registered.
    assert!(text.contains(&format!("cannot register {taken}")), "{text}");
    assert!(text.contains("183"), "{text}");
    assert_eq!(prefixes(&d), [taken]);
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn an_app_that_never_gets_ready_is_stopped_with_its_last_lines() {
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/slow/");
    let start = Instant::now();
    let mut run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &[
            "--url",
            &url,
            "--ready-timeout",
            "1",
            "--grace",
            "1",
            "--",
            "sh",
            "-c",
            "echo starting up; echo cannot open the database >&2; exec sleep 60",
        ],
    );
    assert_eq!(run.exit_code(30), Some(1), "{}", run.text());
    let text = run.text();
    assert!(text.contains("did not get ready within 1 s"), "{text}");
    assert!(text.contains("    cannot open the database"), "{text}");
    assert!(text.contains("    starting up"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(eventually(10, || prefixes(&d).is_empty()));
}

#[test]
fn no_wait_fails_at_once_and_run_waits_for_a_daemon_otherwise() {
    if !have_python() {
        return;
    }
    let dir = TempDir::open_to_all("run-wait");
    let control = dir.0.join("control.sock");
    let port = free_port();
    let url = format!("http://+:{port}/w/");
    let mut run = Runner::spawn(
        &[],
        &control,
        &dir.0,
        &["--url", &url, "--no-wait", "--", python(), "-c", ECHO_PY],
    );
    assert_eq!(run.exit_code(20), Some(1), "{}", run.text());
    assert!(run.text().contains("portshare serve"), "{}", run.text());
    let run = Runner::spawn(
        &[],
        &control,
        &dir.0,
        &["--url", &url, "--", python(), "-c", ECHO_PY],
    );
    assert!(
        eventually(10, || run
            .text()
            .contains("waiting for the portshare daemon at")),
        "{}",
        run.text()
    );
    assert!(children_of(run.pid()).is_empty(), "the app started first");
    let _d = Daemon::builder().dir(dir).spawn();
    assert_eq!(served(port, "/w/a", &run), "echo /w/a prefix=-\n");
}

/// A held upstream queue of `ctl`'s, forwarding to an echo server, on a free port.
fn held_queue(ctl: &mut Ctl, extra: serde_json::Value) -> (EchoServer, u16) {
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = up.local_addr().expect("addr").to_string();
    let server = EchoServer::start(AnyListener::Tcp(up));
    let mut spec = json!({ "name": "held", "upstream": addr, "held": true });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let info = ctl.create_queue(spec);
    assert_eq!(info["held"], true, "{info}");
    let port = free_port();
    assert_eq!(ctl.add_url("held", &format!("http://+:{port}/h/")).0, 201);
    (server, port)
}

#[test]
fn a_request_before_ready_waits_and_is_served_after() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    let (_server, port) = held_queue(&mut ctl, json!({}));
    let waiting = std::thread::spawn(move || get(port, "127.0.0.1", "/h/early"));
    assert!(
        eventually(10, || d.state()["queues"][0]["depth"] == 1),
        "{}",
        d.state()
    );
    let state = d.state();
    assert_eq!(state["queues"][0]["held"], true, "{state}");
    let (status, body) = ctl.call(
        "POST",
        "/v1/queues/held/ready",
        Some(json!({ "ready": true })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["held"], false, "{body}");
    let (status, _, text) = waiting.join().expect("the waiting request");
    assert_eq!(status, 200);
    assert!(text.starts_with("GET /h/early HTTP/1.1"), "{text}");
    // Held again: requests wait again.
    let (status, _) = ctl.call(
        "POST",
        "/v1/queues/held/ready",
        Some(json!({ "ready": false })),
    );
    assert_eq!(status, 200);
    let waiting = std::thread::spawn(move || get(port, "127.0.0.1", "/h/again"));
    assert!(eventually(10, || d.state()["queues"][0]["depth"] == 1));
    ctl.call(
        "POST",
        "/v1/queues/held/ready",
        Some(json!({ "ready": true })),
    );
    assert_eq!(waiting.join().expect("the waiting request").0, 200);
}

#[test]
fn a_held_queue_is_bounded_by_its_timer_and_length() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    let (_server, port) = held_queue(
        &mut ctl,
        json!({ "queue_timer_ms": 500, "length": 1, "verbosity": "limited" }),
    );
    // The timer: the connection closes without an answer (Timer_ReqQueue).
    assert_eq!(
        ending(port, b"GET /h/late HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ending::Closed
    );
    assert_eq!(d.state()["queues"][0]["counters"]["timed_out"], 1);
    // The length: one waits, the next is answered 503.
    let mut first = connect(port);
    first
        .write_all(b"GET /h/first HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(eventually(5, || d.state()["queues"][0]["depth"] == 1));
    let (status, _, _) = http_raw(port, b"GET /h/second HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 503);
}

#[test]
fn ready_is_the_owners_alone() {
    let d = Daemon::builder()
        .dir(TempDir::open_to_all("run-ready"))
        .spawn();
    let mut ctl = d.ctl();
    let (_server, _port) = held_queue(&mut ctl, json!({}));
    // A queue without an upstream has nothing to make ready.
    ctl.create_queue(json!({ "name": "plain" }));
    let (status, body) = ctl.call(
        "POST",
        "/v1/queues/plain/ready",
        Some(json!({ "ready": true })),
    );
    assert_eq!((status, body["code"].as_u64()), (400, Some(87)), "{body}");
    if !can_switch_uid() || !have_python() {
        return;
    }
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = b'{"ready": true}'
s.sendall(b"POST /v1/queues/held/ready HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
out = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    out += b
print(out.decode())
"#;
    let mut cmd = Command::new("setpriv");
    cmd.args(as_uid(1001).into_iter().skip(1))
        .args([python(), "-c", script])
        .arg(&d.control);
    let (code, stdout, stderr) = run_to_exit(cmd, &d.dir.0, 20);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("HTTP/1.1 403"), "{stdout}");
    assert!(stdout.contains("ERROR_ACCESS_DENIED"), "{stdout}");
    assert_eq!(d.state()["queues"][0]["held"], true);
}

#[test]
fn restart_on_failure_starts_the_app_again_and_serves() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/again/");
    let marker = d.dir.0.join("failed-once");
    let script = format!(
        "import os, sys\n\
         if not os.path.exists({marker:?}):\n    open({marker:?}, 'w').write('x')\n    \
         print('first start fails', flush=True)\n    sys.exit(3)\n{ECHO_PY}",
        marker = marker.to_string_lossy()
    );
    let mut run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &[
            "--url",
            &url,
            "--restart",
            "on-failure",
            "--",
            python(),
            "-c",
            &script,
        ],
    );
    assert_eq!(served(port, "/again/x", &run), "echo /again/x prefix=-\n");
    let text = run.text();
    assert!(text.contains("exited with status 3"), "{text}");
    assert!(
        text.contains("restarting the application in 0.5 s"),
        "{text}"
    );
    assert!(text.contains("first start fails"), "{text}");
    // A signal passed on by run is no failure: run ends with the app, whatever --restart says.
    signal(run.pid(), "TERM");
    assert_eq!(run.exit_code(20), Some(143), "{}", run.text());
}

#[test]
fn run_registers_again_after_the_daemon_restarts() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/back/");
    let run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &["--url", &url, "--", python(), "-c", ECHO_PY],
    );
    served(port, "/back/1", &run);
    let child = run.child();
    let d = d.restart();
    assert_eq!(served(port, "/back/2", &run), "echo /back/2 prefix=-\n");
    assert_eq!(run.child(), child, "the app was started again");
    let state = d.state();
    assert_eq!(state["queues"][0]["held"], false, "{state}");
    assert!(run.text().contains("registered again"), "{}", run.text());
}

#[test]
fn another_account_with_a_reservation_serves_through_run() {
    if !can_switch_uid() || !have_python() {
        return;
    }
    let port = free_port();
    let d = Daemon::builder()
        .dir(TempDir::open_to_all("run-uid"))
        .config(format!(
            "[[urlacl]]\nurl = \"http://+:{port}/py/\"\nusers = [\"uid:1001\"]\n\n\
             [[urlacl]]\nurl = \"http://+:{port}/u/\"\nusers = [\"uid:1001\"]\n"
        ))
        .spawn();
    let exe = d.dir.0.join("portshare-copy");
    copy_executable(&portshare_bin(), &exe);
    let site = site();
    let url = format!("http://+:{port}/py/");
    let root = site.0.to_string_lossy().into_owned();
    let mut run = Runner::spawn_from(
        &exe,
        &as_uid(1001),
        &d.control,
        &site.0,
        &http_server_args(&url, &root),
    );
    assert_eq!(served(port, "/py/hello.txt", &run), "hello from python\n");
    let state = d.state();
    assert_eq!(state["queues"][0]["owner_uid"], 1001, "{state}");
    // A Unix socket the account's server binds in run's private folder.
    let unix_url = format!("http://+:{port}/u/");
    let mut unix = Runner::spawn_from(
        &exe,
        &as_uid(1001),
        &d.control,
        &site.0,
        &["--url", &unix_url, "--unix", "--", python(), "-c", ECHO_PY],
    );
    assert_eq!(served(port, "/u/x", &unix), "echo /u/x prefix=-\n");
    signal(unix.pid(), "TERM");
    assert_eq!(unix.exit_code(20), Some(143), "{}", unix.text());
    let child = run.child();
    signal(child, "KILL");
    assert_eq!(run.exit_code(20), Some(137), "{}", run.text());
    assert!(
        eventually(10, || prefixes(&d).is_empty()),
        "the registration stayed: {}",
        d.state()
    );
}

#[test]
fn ready_refuses_an_address_another_account_serves_naming_it() {
    if !can_switch_uid() || !have_python() {
        return;
    }
    let d = Daemon::builder()
        .dir(TempDir::open_to_all("run-squat"))
        .spawn();
    // Root's server holds the address an account's queue names.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = squatter.local_addr().expect("addr").to_string();
    let _server = EchoServer::start(AnyListener::Tcp(squatter));
    let script = r#"
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
c = C("localhost")
def call(method, path, body):
    c.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    print(r.status, r.read().decode(), flush=True)
call("POST", "/v1/queues", {"name": "mine", "upstream": sys.argv[2], "held": True})
call("POST", "/v1/queues/mine/ready", {"ready": True})
"#;
    let mut cmd = Command::new("setpriv");
    cmd.args(as_uid(1001).into_iter().skip(1))
        .args([python(), "-c", script])
        .arg(&d.control)
        .arg(&addr);
    let (code, stdout, stderr) = run_to_exit(cmd, &d.dir.0, 30);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("201 "), "{stdout}");
    assert!(lines[1].starts_with("403 "), "{stdout}");
    assert!(lines[1].contains("ERROR_ACCESS_DENIED"), "{stdout}");
    assert!(
        lines[1].contains("served by a socket root owns"),
        "{stdout}"
    );
    assert!(
        lines[1].contains(&format!("PID {}", std::process::id())),
        "the holder is not named: {stdout}"
    );
}

#[test]
fn ready_path_must_answer_below_500() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/rp/");
    let script = "import http.server, os\n\
        class H(http.server.BaseHTTPRequestHandler):\n    \
        def do_GET(self):\n        self.send_response(500 if self.path == '/health' else 200)\n        \
        self.send_header('Content-Length', '0')\n        self.end_headers()\n\
        http.server.HTTPServer(('127.0.0.1', int(os.environ['APP_PORT'])), H).serve_forever()\n";
    let mut run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &[
            "--url",
            &url,
            "--port-env",
            "APP_PORT",
            "--ready-path",
            "/health",
            "--ready-timeout",
            "2",
            "--grace",
            "1",
            "--",
            python(),
            "-c",
            script,
        ],
    );
    assert_eq!(run.exit_code(30), Some(1), "{}", run.text());
    let text = run.text();
    assert!(text.contains("GET /health answered 500"), "{text}");
    assert!(eventually(10, || prefixes(&d).is_empty()));
}

#[test]
fn requests_wait_while_a_failed_app_restarts() {
    if !have_python() {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/r/");
    let marker = d.dir.0.join("started-once");
    let script = format!(
        "import http.server, os\n\
         second = os.path.exists({marker:?})\n\
         open({marker:?}, 'w').write('x')\n\
         class H(http.server.BaseHTTPRequestHandler):\n    \
         def do_GET(self):\n        \
         if self.path == '/r/crash':\n            os._exit(1)\n        \
         body = ('second' if second else 'first').encode()\n        \
         self.send_response(200)\n        \
         self.send_header('Content-Length', str(len(body)))\n        \
         self.end_headers()\n        self.wfile.write(body)\n\
         http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
        marker = marker.to_string_lossy()
    );
    let run = Runner::spawn(
        &[],
        &d.control,
        &d.dir.0,
        &[
            "--url",
            &url,
            "--restart",
            "on-failure",
            "--",
            python(),
            "-c",
            &script,
        ],
    );
    assert_eq!(served(port, "/r/a", &run), "first");
    let _ = try_get(port, "127.0.0.1", "/r/crash");
    assert!(
        eventually(10, || d.state()["queues"][0]["held"] == true),
        "the queue was not held while the app restarts: {}\n{}",
        d.state(),
        run.text()
    );
    // Sent while held: it waits for the second start instead of failing.
    let (status, _, body) = get(port, "127.0.0.1", "/r/b");
    assert_eq!((status, body.as_str()), (200, "second"), "{}", run.text());
}
