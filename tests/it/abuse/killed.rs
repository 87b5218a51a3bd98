//! A worker killed at each stage of a request (a worker speaking the wire by hand, so the
//! test knows where the request stands), and the daemon killed under its apps and restarted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use portshare_proto::wire::{self, Frame, RequestHead, ResponseHead};
use serde_json::{Value, json};

use super::{conn_fields, errlog_line, expect_end};
use crate::harness::*;

/// A queue of the daemon's state view, by name (`null` when absent).
fn queue_state(d: &Daemon, name: &str) -> Value {
    d.state()["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Whether some registered prefix contains `part`.
fn has_prefix(d: &Daemon, part: &str) -> bool {
    d.state()["prefixes"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["url"].as_str().is_some_and(|u| u.contains(part)))
    })
}

/// The environment variables that turn this test binary into a raw worker process (see
/// `raw_worker`).
const WORKER_CONTROL: &str = "PORTSHARE_ABUSE_WORKER_CONTROL";

const WORKER_QUEUE: &str = "PORTSHARE_ABUSE_WORKER_QUEUE";

const WORKER_PREFIX: &str = "PORTSHARE_ABUSE_WORKER_PREFIX";

const WORKER_SLOTS: &str = "PORTSHARE_ABUSE_WORKER_SLOTS";

/// A worker speaking the worker wire itself, so that a test knows exactly where a request
/// stands when it kills the process. It creates queue `$QUEUE`, registers `$PREFIX`,
/// attaches with `$SLOTS` slots and prints `EVENT ...` lines on stdout:
///
/// - `ready` once attached;
/// - `head STREAM TARGET end=BOOL` for each request head;
/// - `data STREAM TOTAL end=BOOL` for each body frame, TOTAL counting the stream's bytes.
///
/// A target containing `/ok` is answered `ok` at once (`answered STREAM`); one containing
/// `/partial` gets a response head and the first body bytes, `partial-`, and nothing more
/// (`partial-sent STREAM`); every other request is held. Does nothing in a normal run.
#[test]
fn raw_worker() {
    let Some(control) = std::env::var_os(WORKER_CONTROL) else {
        return;
    };
    let queue = std::env::var(WORKER_QUEUE).expect("queue name");
    let prefix = std::env::var(WORKER_PREFIX).expect("prefix");
    let slots: u32 = std::env::var(WORKER_SLOTS)
        .expect("slots")
        .parse()
        .expect("a number of slots");
    let control = Path::new(&control);
    // The session that holds the queue and its URL: open as long as the process lives.
    let mut ctl = Ctl::connect(control);
    ctl.create_queue(json!({ "name": queue }));
    let (status, body) = ctl.add_url(&queue, &prefix);
    assert_eq!(status, 201, "{body}");
    let mut sock = UnixStream::connect(control).expect("connect to the control socket");
    write!(
        sock,
        "POST /v1/queues/{queue}/attach HTTP/1.1\r\nHost: portshare\r\nConnection: upgrade\r\n\
         Upgrade: {}\r\n{}: {slots}\r\nContent-Length: 0\r\n\r\n",
        wire::UPGRADE_PROTOCOL,
        wire::SLOTS_HEADER
    )
    .expect("attach");
    let mut pre = Vec::new();
    let (status, head, _) = read_response(&mut sock, &mut pre, false);
    assert_eq!(status, 101, "{head}");
    let event = |what: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "EVENT {what}");
        let _ = out.flush();
    };
    event("ready".into());
    let mut input = BytesMut::from(&pre[..]);
    let mut totals: BTreeMap<u32, usize> = BTreeMap::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(frame) = wire::decode(&mut input).expect("worker wire") {
            match frame {
                Frame::Head {
                    stream,
                    end,
                    payload,
                } => {
                    let req = RequestHead::decode(payload).expect("request head");
                    let target = String::from_utf8_lossy(&req.target).into_owned();
                    event(format!("head {stream} {target} end={end}"));
                    let mut out = BytesMut::new();
                    if target.contains("/ok") {
                        ResponseHead::encode_parts(
                            &mut out,
                            stream,
                            false,
                            200,
                            [(&b"content-length"[..], &b"3"[..])],
                        );
                        wire::encode_data(&mut out, stream, true, b"ok\n");
                        sock.write_all(&out).expect("answer");
                        event(format!("answered {stream}"));
                    } else if target.contains("/partial") {
                        ResponseHead::encode_parts(
                            &mut out,
                            stream,
                            false,
                            200,
                            [(&b"content-type"[..], &b"text/plain"[..])],
                        );
                        wire::encode_data(&mut out, stream, false, b"partial-");
                        sock.write_all(&out).expect("answer");
                        event(format!("partial-sent {stream}"));
                    }
                }
                Frame::Data { stream, end, data } => {
                    let total = totals.entry(stream).or_default();
                    *total += data.len();
                    event(format!("data {stream} {total} end={end}"));
                }
                _ => {}
            }
        }
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
        }
    }
    drop(ctl);
}

/// A `raw_worker` process and the events it prints.
struct RawWorker {
    proc: Proc,
    events: mpsc::Receiver<String>,
}

impl RawWorker {
    /// Starts a worker for queue `q` on `prefix` and waits until it is attached.
    fn start(d: &Daemon, prefix: &str, slots: u32) -> RawWorker {
        let log = d.dir.0.join(format!("raw-worker-{}.log", free_port()));
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(only_test(module_path!(), "raw_worker"))
            .env(WORKER_CONTROL, &d.control)
            .env(WORKER_QUEUE, "q")
            .env(WORKER_PREFIX, prefix)
            .env(WORKER_SLOTS, slots.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the raw worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("EVENT ")
                    && tx.send(line[at + 6..].to_owned()).is_err()
                {
                    break;
                }
            }
        });
        let w = RawWorker {
            proc: Proc { child, log },
            events,
        };
        w.wait_for("ready", |e| e == "ready");
        w
    }

    /// Waits (at most 10 s) for an event `pred` accepts, skipping others.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!(
                    "the raw worker never reported {what} ({e}):\n{}",
                    self.proc.log_text()
                ),
            }
        }
    }

    /// SIGKILL.
    fn kill(&mut self) {
        self.proc.kill();
    }
}

/// A daemon and a raw worker on `http://+:PORT/q/`.
fn worker_setup(tag: &str, slots: u32) -> (Daemon, u16, RawWorker) {
    let d = Daemon::start();
    let port = free_port();
    let w = RawWorker::start(&d, &format!("http://+:{port}/q/"), slots);
    println!("{tag}: raw worker pid {}", w.proc.child.id());
    (d, port, w)
}

/// After a worker died: its registration goes, and a new app on the same prefix is served.
fn serves_again(d: &Daemon, port: u16) {
    assert!(
        eventually(10, || !has_prefix(d, "/q/")),
        "the dead worker's prefix is still registered: {}",
        d.state()
    );
    let _app = d.hello("after", &[&format!("http://+:{port}/q/")], &[]);
    let (status, _, body) = get(port, "x", "/q/again");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("name=after "), "{body}");
}

/// The abandoned-request line of one client connection (`conn_fields`).
fn abandoned_line(d: &Daemon, fields: &str) -> String {
    errlog_line(d, &[fields, " Connection_Abandoned_By_ReqQueue q"])
}

/// (a) A request still waiting in the queue when the process that would receive it dies.
#[test]
fn a_worker_killed_while_a_request_waits_in_its_queue() {
    let (d, port, mut w) = worker_setup("queued", 1);
    // The one slot is taken by a request the worker holds...
    let mut held = connect(port);
    let held_fields = conn_fields(&held, port);
    held.write_all(b"GET /q/hold-a HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    w.wait_for("the first head", |e| {
        e.starts_with("head ") && e.contains("/q/hold-a")
    });
    // ...so the second waits in the queue, not yet delivered.
    let mut queued = connect(port);
    let queued_fields = conn_fields(&queued, port);
    queued
        .write_all(b"GET /q/hold-b HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(
        eventually(5, || queue_state(&d, "q")["depth"] == 1),
        "{}",
        d.state()
    );
    w.kill();
    let end = expect_end(&mut queued, "the queued request");
    assert!(end.bytes.is_empty(), "a response came: {end:?}");
    let end_held = expect_end(&mut held, "the delivered request");
    assert!(end_held.bytes.is_empty(), "a response came: {end_held:?}");
    println!(
        "queued: the queued request was {}; the delivered one {}",
        end.describe(),
        end_held.describe()
    );
    let line = abandoned_line(&d, &queued_fields);
    println!("queued: {line}");
    assert!(line.contains(" HTTP/1.1 GET /q/hold-b - - "), "{line}");
    println!(
        "queued (delivered one): {}",
        abandoned_line(&d, &held_fields)
    );
    serves_again(&d, port);
}

/// (b) The head was delivered; the body the client is still sending was not read yet.
#[test]
fn a_worker_killed_after_the_head_before_the_body() {
    let (d, port, mut w) = worker_setup("head", 4);
    let mut c = connect(port);
    let fields = conn_fields(&c, port);
    c.write_all(b"POST /q/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .expect("write");
    let head = w.wait_for("the head", |e| {
        e.starts_with("head ") && e.contains("/q/upload")
    });
    assert!(head.ends_with("end=false"), "{head}");
    w.kill();
    // The client goes on sending its body; the daemon must not wait for it.
    let _ = c.write_all(&[b'b'; 1000]);
    let end = expect_end(&mut c, "the request whose head was delivered");
    assert!(end.bytes.is_empty(), "a response came: {end:?}");
    println!("head: the connection was {}", end.describe());
    println!("head: {}", abandoned_line(&d, &fields));
    serves_again(&d, port);
}

/// (c) The worker was reading the request body.
#[test]
fn a_worker_killed_in_the_middle_of_the_request_body() {
    let (d, port, mut w) = worker_setup("body", 4);
    let mut c = connect(port);
    let fields = conn_fields(&c, port);
    c.write_all(b"POST /q/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .expect("write");
    c.write_all(&vec![b'a'; 40_000])
        .expect("write the first part");
    w.wait_for("40000 body bytes", |e| {
        e.starts_with("data ")
            && e.split(' ')
                .nth(2)
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= 40_000)
    });
    w.kill();
    let _ = c.write_all(&[b'a'; 1000]);
    let end = expect_end(&mut c, "the request in the middle of its body");
    assert!(end.bytes.is_empty(), "a response came: {end:?}");
    println!("body: the connection was {}", end.describe());
    println!("body: {}", abandoned_line(&d, &fields));
    serves_again(&d, port);
}

/// (d) The response head and part of the body were sent.
#[test]
fn a_worker_killed_in_the_middle_of_the_response_body() {
    let (d, port, mut w) = worker_setup("response", 4);
    let mut c = connect(port);
    let fields = conn_fields(&c, port);
    c.write_all(b"GET /q/partial HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    w.wait_for("the partial answer", |e| e.starts_with("partial-sent "));
    // The client has the head and the first bytes before the worker dies.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&got, b"partial-").is_none() {
        let n = c.read(&mut chunk).expect("read the start of the response");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
    w.kill();
    let end = expect_end(&mut c, "the response in the middle of its body");
    got.extend_from_slice(&end.bytes);
    assert!(
        find(&got, b"\r\n0\r\n\r\n").is_none(),
        "the truncated response was completed as if whole: {:?}",
        String::from_utf8_lossy(&got)
    );
    println!(
        "response: after the first body bytes the connection was {}",
        end.describe()
    );
    println!("response: {}", abandoned_line(&d, &fields));
    serves_again(&d, port);
}

/// (e) Between two requests on a keep-alive connection: nothing is in progress, so nothing
/// is abandoned; the connection stays and its next request is routed afresh.
#[test]
fn a_worker_killed_between_two_requests_of_a_keep_alive_connection() {
    let (d, port, mut w) = worker_setup("between", 4);
    // Another app keeps the port bound whatever happens to the worker.
    let _keeper = d.hello("keeper", &[&format!("http://+:{port}/keep/")], &[]);
    let mut c = connect(port);
    let fields = conn_fields(&c, port);
    c.write_all(b"GET /q/ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]), "{head}");
    w.kill();
    assert!(
        eventually(10, || !has_prefix(&d, "/q/")),
        "the dead worker's prefix is still registered: {}",
        d.state()
    );
    // A 404 from another connection marks a point in the error log after the death.
    let (status, _, _) = get(port, "x", "/nothing");
    assert_eq!(status, 404);
    errlog_line(&d, &[" GET /nothing 404 - NotFound -"]);
    let errlog = d.errlog_text();
    assert!(
        !errlog.lines().any(|l| l.contains(&fields)),
        "an idle keep-alive connection was logged: {errlog}"
    );
    // The connection is still there, and a new app answers its next request.
    c.set_nonblocking(true).expect("nonblocking");
    let mut probe = [0u8; 16];
    let open = matches!(c.read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock);
    c.set_nonblocking(false).expect("blocking");
    assert!(
        open,
        "the idle keep-alive connection was closed with the worker"
    );
    let _app = d.hello("after", &[&format!("http://+:{port}/q/")], &[]);
    c.write_all(b"GET /q/next HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{head}");
    assert!(body.starts_with("name=after "), "{body}");
}

#[test]
fn apps_come_back_by_themselves_after_the_daemon_is_killed() {
    const ROUNDS: usize = 2;
    let mut d = Daemon::start();
    let (alpha, port) = hello_on_free_port(&d, "alpha", &["/alpha/"], &["--workers", "2"]);
    let beta = d.hello("beta", &[&format!("http://+:{port}/beta/")], &[]);
    let gamma = App::start(
        &d.control,
        "slow_worker",
        "gamma",
        &[&format!("http://+:{port}/gamma/")],
        &["--delay-ms", "1500", "--workers", "4"],
    );
    let pids = [
        alpha.proc.child.id(),
        beta.proc.child.id(),
        gamma.proc.child.id(),
    ];
    let targets = ["/alpha/x", "/beta/x", "/gamma/x"];
    for t in targets {
        assert_eq!(get(port, "x", t).0, 200, "{t}");
    }
    for round in 1..=ROUNDS {
        // A request in a worker's hands when the daemon dies.
        let in_flight = std::thread::spawn(move || try_get(port, "x", "/gamma/in-flight"));
        assert!(
            eventually(5, || queue_state(&d, "gamma")["in_flight"] == 1),
            "{}",
            d.state()
        );
        d.proc.kill();
        let cut = in_flight.join().expect("client thread");
        assert!(
            cut.is_none(),
            "round {round}: a request in flight got an answer from a killed daemon: {cut:?}"
        );
        assert!(
            d.control.exists(),
            "round {round}: SIGKILL should leave the control socket file behind"
        );
        assert!(
            eventually(5, || try_get(port, "x", "/alpha/y").is_none()),
            "round {round}: the port still answers with the daemon gone"
        );
        let control = d.control.clone();
        let down = Instant::now();
        d = d.restart();
        assert_eq!(d.control, control);
        let up = down.elapsed();
        for t in targets {
            let mut last = None;
            let back = eventually(20, || {
                last = try_get(port, "x", t);
                matches!(&last, Some((200, _)))
            });
            assert!(
                back,
                "round {round}: {t} did not come back on the new daemon (last answer {last:?})\n\
                 daemon log:\n{}",
                d.log()
            );
        }
        println!(
            "restart round {round}: daemon up again after {up:?}, all three apps answering after {:?}",
            down.elapsed()
        );
        for (app, pid) in [&alpha, &beta, &gamma].iter().zip(pids) {
            assert_eq!(app.proc.child.id(), pid);
        }
        let state = d.state();
        for (name, pid) in ["alpha", "beta", "gamma"].iter().zip(pids) {
            let q = queue_state(&d, name);
            assert_eq!(q["processes"][0]["pid"], pid, "{name}: {state}");
        }
    }
    let mut apps = [alpha, beta, gamma];
    for app in &mut apps {
        assert!(
            matches!(app.proc.child.try_wait(), Ok(None)),
            "an app exited:\n{}",
            app.proc.log_text()
        );
    }
}
