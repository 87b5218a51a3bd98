//! Faults and abuse end to end: slow clients (slowloris and slow body, with
//! `slowhttptest`), ten thousand idle connections, a worker killed at each stage of a
//! request, the daemon killed under its apps and restarted, and a flood of malformed
//! requests.
//!
//! Every loop is bounded by a count and by the wall clock, every socket is on 127.0.0.1,
//! and every process a test starts is killed when its handle drops. Nothing here asserts
//! that something was fast: latencies and memory are printed (`--nocapture` shows them).
//!
//! The tests that load the machine (the slow-client attacks, the idle connections and the
//! flood) take turns, so their figures do not disturb each other.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::harness::*;
use bytes::BytesMut;
use portshare_proto::wire::{self, Frame, RequestHead, ResponseHead};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Held by the tests that load the machine, so that they run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Starts a daemon (folder `tag`) whose configuration holds the listen list and `extra`
/// (tables such as `[timers]`).
fn daemon_with(tag: &str, extra: &str) -> Daemon {
    Daemon::builder()
        .tag(tag)
        .config(format!("iplisten = [\"127.0.0.1\"]\n\n{extra}"))
        .spawn()
}

/// Waits (at most 10 s) for an httperr line holding every needle, and returns it.
fn errlog_line(d: &Daemon, needles: &[&str]) -> String {
    let mut found = None;
    let ok = eventually(10, || {
        found = d
            .errlog_text()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned);
        found.is_some()
    });
    assert!(
        ok,
        "no httperr line with {needles:?}:\n{}\ndaemon log:\n{}",
        d.errlog_text(),
        d.log()
    );
    found.unwrap_or_default()
}

/// The part of an httperr line that names one client connection to `port`.
fn conn_fields(client: &TcpStream, port: u16) -> String {
    let cport = client.local_addr().expect("local address").port();
    format!(" 127.0.0.1 {cport} 127.0.0.1 {port} ")
}

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

/// Client connections the daemon holds, over all its listeners.
fn daemon_connections(d: &Daemon) -> u64 {
    d.state()["listeners"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["connections"].as_u64()).sum())
        .unwrap_or(0)
}

/// One GET on `s` without panicking: the status, or what went wrong. Reads exactly one
/// response framed by Content-Length (what `hello` sends).
fn exchange(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    target: &str,
    close: bool,
) -> Result<u16, String> {
    let connection = if close { "close" } else { "keep-alive" };
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "closed before a response head ({} bytes)",
                    buf.len()
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read head: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a status line: {head:?}"))?;
    let length: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no Content-Length: {head:?}"))?;
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed inside the body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read body: {e}")),
        }
    }
    buf.drain(..head_end + length);
    Ok(status)
}

fn connect_timeout(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// The `q`-th quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Reads until the connection ends. It must end by a reset or a close within 10 s of its
/// last bytes, and bring less than 1 MiB.
fn expect_end(c: &mut TcpStream, what: &str) -> Closed {
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let end = read_until_close(c, what);
    assert!(end.bytes.len() < 1 << 20, "{what}: endless bytes");
    end
}

/// Whether `slowhttptest` can run here. Under CI=true its absence fails the test;
/// elsewhere the test says so and passes.
fn slowhttptest_available() -> bool {
    let found = Command::new("slowhttptest")
        .arg("-h")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            !under_ci(),
            "slowhttptest is not installed and CI=true: .ci/run installs it \
             (apt-get install slowhttptest)"
        );
        println!("skipped: slowhttptest is not installed (apt-get install slowhttptest)");
    }
    found
}

/// Makes sure process `pid` may open `want` descriptors: raises its soft limit to its hard
/// one with `prlimit` (and the hard one too when allowed). False, with a note, when it
/// cannot be done outside CI; under CI=true it fails the test.
fn ensure_nofile(pid: u32, want: u64) -> bool {
    let limits = || -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut words = line["Max open files".len()..].split_whitespace();
        let num = |w: Option<&str>| match w? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        };
        Some((num(words.next())?, num(words.next())?))
    };
    let Some((soft, hard)) = limits() else {
        panic!("cannot read /proc/{pid}/limits");
    };
    if soft >= want {
        return true;
    }
    let target = if hard >= want {
        format!("{hard}:{hard}")
    } else {
        format!("{want}:{want}")
    };
    let ran = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={target}")])
        .status();
    let now = limits().map_or(0, |(s, _)| s);
    if now >= want {
        return true;
    }
    let why = format!(
        "process {pid} may open {now} descriptors, {want} are needed (prlimit: {ran:?}, hard limit {hard})"
    );
    assert!(!under_ci(), "{why}");
    println!("skipped: {why}");
    false
}

// ---------------------------------------------------------------------------------------
// 1. Slow clients
// ---------------------------------------------------------------------------------------

/// What one slow-client attack measured.
struct AttackReport {
    daemon: Daemon,
    /// The app the normal client talks to, and its port.
    app: App,
    port: u16,
    /// The app reading bodies, when there is one.
    _reader: Option<App>,
    /// Requests of the normal client.
    sent: usize,
    /// Those answered 200.
    ok: usize,
    failures: Vec<String>,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Most client connections the daemon held at once, sampled every second.
    peak_connections: u64,
    /// The end of slowhttptest's report.
    summary: String,
}

/// Runs `slowhttptest MODE` (1000 connections, 200 per second, for `length` seconds,
/// follow-up data every `interval` seconds) against `target` on the port of `hello`'s
/// `/app/`, while a normal client sends GETs to `/app/`, every other one on a fresh
/// connection and the rest on a keep-alive one. With `body_reader`, `axum_app` serves
/// `/axum/` on the same port: its `/axum/echo` reads the whole request body.
fn slow_attack(
    mode: &str,
    timers: &str,
    interval: u32,
    length: u32,
    target: &str,
    body_reader: bool,
) -> AttackReport {
    let d = daemon_with("abuse-slow", timers);
    let (app, port) = hello_on_free_port(&d, "normal", &["/app/"], &[]);
    assert_eq!(get(port, "x", "/app/first").0, 200);
    let reader = body_reader.then(|| {
        App::start(
            &d.control,
            "axum_app",
            "",
            &[&format!("http://+:{port}/axum/")],
            &[],
        )
    });

    let out = d.dir.0.join("slowhttptest.out");
    let file = std::fs::File::create(&out).expect("slowhttptest output file");
    let child = Command::new("slowhttptest")
        .args([mode, "-c", "1000", "-r", "200", "-p", "3"])
        .args(["-i", &interval.to_string(), "-l", &length.to_string()])
        .args(["-u", &format!("http://127.0.0.1:{port}{target}")])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("start slowhttptest");
    let mut attacker = Proc { child, log: out };

    const MAX_REQUESTS: usize = 3000;
    let wall = Instant::now() + Duration::from_secs(u64::from(length) + 15);
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut ok = 0;
    let mut keep: Option<(TcpStream, Vec<u8>, u32)> = None;
    let mut peak = 0;
    let mut sampled = Instant::now() - Duration::from_secs(1);
    let mut i = 0;
    while i < MAX_REQUESTS && Instant::now() < wall {
        if matches!(attacker.child.try_wait(), Ok(Some(_))) {
            break;
        }
        if sampled.elapsed() >= Duration::from_secs(1) {
            peak = peak.max(daemon_connections(&d));
            sampled = Instant::now();
        }
        let target = format!("/app/n{i}");
        let started = Instant::now();
        let result = if i % 2 == 0 {
            connect_timeout(port)
                .map_err(|e| format!("connect: {e}"))
                .and_then(|mut s| exchange(&mut s, &mut Vec::new(), &target, true))
        } else {
            if keep.as_ref().is_none_or(|(_, _, uses)| *uses >= 20) {
                keep = match connect_timeout(port) {
                    Ok(s) => Some((s, Vec::new(), 0)),
                    Err(e) => {
                        failures.push(format!("request {i} (keep-alive): connect: {e}"));
                        None
                    }
                };
            }
            match keep.as_mut() {
                Some((s, buf, uses)) => {
                    *uses += 1;
                    exchange(s, buf, &target, false)
                }
                None => Err("no connection".into()),
            }
        };
        latencies.push(started.elapsed());
        match result {
            Ok(200) => ok += 1,
            other => {
                let kind = if i % 2 == 0 {
                    "new connection"
                } else {
                    "keep-alive"
                };
                failures.push(format!("request {i} ({kind}): {other:?}"));
                if i % 2 == 1 {
                    keep = None;
                }
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let slowhttptest finish its own report (it has at most `length` seconds).
    let _ = eventually(u64::from(length) + 10, || {
        matches!(attacker.child.try_wait(), Ok(Some(_)))
    });
    attacker.kill();
    let text = attacker.log_text();
    let plain = strip_ansi(&text);
    let summary = plain
        .lines()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    latencies.sort();
    AttackReport {
        _reader: reader,
        app,
        port,
        sent: latencies.len(),
        ok,
        failures,
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        peak_connections: peak,
        summary,
        daemon: d,
    }
}

fn print_attack(name: &str, r: &AttackReport) {
    println!(
        "{name}: normal client {}/{} answered 200 ({:.2} %), latency p50 {:?}, p99 {:?}, max {:?}; \
         the daemon held at most {} client connections",
        r.ok,
        r.sent,
        100.0 * r.ok as f64 / r.sent.max(1) as f64,
        r.p50,
        r.p99,
        r.max,
        r.peak_connections
    );
    println!("{name}: slowhttptest's last report:\n{}", r.summary);
}

fn assert_normal_client_served(name: &str, r: &mut AttackReport) {
    assert!(r.sent > 0, "{name}: the normal client sent nothing");
    assert!(
        r.failures.is_empty(),
        "{name}: {} of {} normal requests were not answered 200; first ones:\n{}\ndaemon log tail:\n{}",
        r.failures.len(),
        r.sent,
        r.failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        tail(&r.daemon.log(), 20)
    );
    assert!(
        r.peak_connections >= 100,
        "{name}: the attack did not take hold (the daemon held at most {} connections):\n{}",
        r.peak_connections,
        r.summary
    );
    assert!(
        matches!(r.daemon.proc.child.try_wait(), Ok(None)),
        "{name}: the daemon exited:\n{}",
        r.daemon.log()
    );
    assert!(
        matches!(r.app.proc.child.try_wait(), Ok(None)),
        "{name}: the app exited:\n{}",
        r.app.proc.log_text()
    );
    let (status, _, body) = get(r.port, "x", "/app/after");
    assert_eq!(status, 200, "{name}: after the attack: {body}");
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Slowloris: 1000 connections each sending one more header line every 2 s and never
/// ending the head. HeaderWait (10 s here) bounds the whole head, not the gaps, so each is
/// cut 10 s after it opened, with a Timer_HeaderWait line; meanwhile a normal client is
/// answered every time.
#[test]
fn slowloris_does_not_starve_a_normal_client() {
    if !slowhttptest_available() {
        return;
    }
    let _turn = heavy();
    let mut r = slow_attack("-H", "[timers]\nheader_wait = 10\n", 2, 15, "/app/", false);
    print_attack("slowloris", &r);
    let errlog = r.daemon.errlog_text();
    let cut = errlog.matches(" Timer_HeaderWait ").count();
    println!("slowloris: {cut} connections cut by HeaderWait (Timer_HeaderWait lines)");
    assert_normal_client_served("slowloris", &mut r);
    assert!(
        cut > 0,
        "no Timer_HeaderWait line although slow heads outlived header_wait:\n{}",
        tail(&errlog, 20)
    );
}

/// Slow body (R-U-Dead-Yet): 1000 POSTs to an app that reads bodies (`axum_app`'s
/// `/axum/echo`), each announcing 4096 bytes and sending a few every 5 s. EntityBody (3 s
/// here) is a gap timer: each body in the app's hands is cut at its first 5 s gap, with a
/// Timer_EntityBody line, and the next waiting one takes the slot. The 128 slots of the
/// victim are its own business (slowhttptest's probe, which asks the victim, may well find
/// it unavailable); the daemon must keep answering a normal client of another app on the
/// same port every time.
#[test]
fn a_slow_body_attack_does_not_starve_a_normal_client() {
    if !slowhttptest_available() {
        return;
    }
    let _turn = heavy();
    let mut r = slow_attack(
        "-B",
        "[timers]\nentity_body = 3\n",
        5,
        15,
        "/axum/echo",
        true,
    );
    print_attack("slow body", &r);
    let errlog = r.daemon.errlog_text();
    let cut = errlog.matches(" Timer_EntityBody ").count();
    println!("slow body: {cut} bodies cut by EntityBody (Timer_EntityBody lines)");
    assert_normal_client_served("slow body", &mut r);
    assert!(
        cut > 0,
        "no Timer_EntityBody line although bodies paused longer than entity_body:\n{}",
        tail(&errlog, 20)
    );
}

/// A body the application answered without reading is drained; when it stops arriving,
/// DrainEntityBody closes the connection and, as every timer expiry, writes an httperr
/// line with status `-` (spec §5: reason Timer_EntityBody).
#[test]
fn an_unread_body_that_stops_arriving_is_cut_and_logged_as_timer_entity_body() {
    let d = daemon_with("abuse-drain", "[timers]\ndrain_entity_body = 2\n");
    let (_app, port) = hello_on_free_port(&d, "drain", &["/d/"], &[]);
    let mut c = connect(port);
    let fields = conn_fields(&c, port);
    c.write_all(b"POST /d/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .expect("write");
    let mut buf = Vec::new();
    let (status, _, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200);
    // Nothing more is sent: the drain times out and the connection closes.
    let end = expect_end(&mut c, "a drained connection whose body stopped");
    println!("drain: the connection was {}", end.describe());
    assert!(
        eventually(5, || d
            .errlog_text()
            .lines()
            .any(|l| l.contains(&fields) && l.contains(" Timer_EntityBody"))),
        "the connection was closed by the DrainEntityBody timer, but no Timer_EntityBody line \
         names it ({fields:?}); httperr:\n{}",
        d.errlog_text()
    );
}

/// DrainEntityBody bounds the whole drain of a body the application did not read (spec
/// §5: "time to read and discard the rest of a body"); a client trickling one byte every
/// 500 ms never leaves a 2 s gap, yet must be cut once the drain has taken 2 s.
#[test]
fn an_unread_body_trickling_in_is_cut_after_entity_body_in_all() {
    let d = daemon_with("abuse-trickle", "[timers]\ndrain_entity_body = 2\n");
    let (_app, port) = hello_on_free_port(&d, "drain", &["/d/"], &[]);
    let mut c = connect(port);
    let fields = conn_fields(&c, port);
    c.write_all(b"POST /d/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
        .expect("write");
    let mut buf = Vec::new();
    let (status, _, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200);
    let started = Instant::now();
    let mut ended = None;
    // 20 bytes over 10 s: five times the timer.
    for sent in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        if c.write_all(b"x").is_err() {
            ended = Some((sent, "write failed"));
            break;
        }
        c.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 64];
        let state = match c.read(&mut byte) {
            Ok(0) => Some("closed"),
            Ok(_) => Some("unexpected bytes"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(_) => Some("reset"),
        };
        c.set_nonblocking(false).expect("blocking");
        if let Some(state) = state {
            ended = Some((sent, state));
            break;
        }
    }
    println!(
        "trickle: after {:?} of draining the connection {}",
        started.elapsed(),
        match ended {
            Some((n, how)) => format!("ended ({how}) after {n} trickled bytes"),
            None => "was still open".to_owned(),
        }
    );
    assert!(
        ended.is_some(),
        "a body trickling in one byte per 500 ms was still being drained after {:?}, with \
         drain_entity_body = 2 s: the drain timer is re-armed at every read instead of bounding \
         the whole drain",
        started.elapsed()
    );
    errlog_line(&d, &[&fields, " Timer_EntityBody"]);
}

// ---------------------------------------------------------------------------------------
// 2. Ten thousand idle connections
// ---------------------------------------------------------------------------------------

#[test]
fn ten_thousand_idle_connections_are_held_cheaply() {
    const N: usize = 10_000;
    const BATCH: usize = 500;
    let _turn = heavy();
    // This test raises its process's limit on open files (which the daemons of the tests
    // beside it would inherit) and holds ten thousand sockets: in a process of its own.
    if !alone_in_a_process(
        module_path!(),
        "ten_thousand_idle_connections_are_held_cheaply",
    ) {
        return;
    }
    let want = N as u64 + 256;
    if !ensure_nofile(std::process::id(), want) {
        return;
    }
    let mut d = Daemon::start();
    let pid = d.proc.child.id();
    if !ensure_nofile(pid, want) {
        return;
    }
    let (_app, port) = hello_on_free_port(&d, "idle", &["/idle/"], &[]);
    for i in 0..50 {
        assert_eq!(get(port, "x", &format!("/idle/warm{i}")).0, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = vm_rss_kib(pid);
    let started = Instant::now();
    let wall = started + Duration::from_secs(30);

    // Half send nothing at all.
    let mut silent = Vec::with_capacity(N / 2);
    while silent.len() < N / 2 {
        assert!(
            Instant::now() < wall,
            "only {} silent connections opened in 30 s",
            silent.len()
        );
        match connect_timeout(port) {
            Ok(s) => silent.push(s),
            Err(e) => panic!(
                "connection {} refused or failed: {e}\n{}",
                silent.len(),
                tail(&d.log(), 10)
            ),
        }
    }
    // The other half send one request each and stay, idle, on keep-alive (in batches the
    // queue can hold).
    let mut idle = Vec::with_capacity(N / 2);
    while idle.len() < N / 2 {
        assert!(
            Instant::now() < wall,
            "only {} keep-alive connections ready in 30 s",
            idle.len()
        );
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let k = idle.len() + batch.len();
            let mut s = connect_timeout(port)
                .unwrap_or_else(|e| panic!("keep-alive connection {k} refused or failed: {e}"));
            s.write_all(format!("GET /idle/k{k} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("write");
            batch.push(s);
        }
        for mut s in batch {
            let mut buf = Vec::new();
            let (status, head, _) = read_response(&mut s, &mut buf, false);
            assert_eq!(status, 200, "{head}");
            assert!(!head.contains("Connection: close"), "{head}");
            idle.push(s);
        }
    }
    let opened = started.elapsed();
    let mut held = 0;
    let counted = eventually(15, || {
        held = daemon_connections(&d);
        held >= N as u64
    });
    assert!(
        counted,
        "the daemon counts {held} connections, {N} are open"
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_rss_kib(pid);

    // None was refused or closed: every read would block.
    let mut ended = Vec::new();
    for (i, s) in silent.iter_mut().chain(idle.iter_mut()).enumerate() {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => ended.push(format!("connection {i}: {other:?}")),
        }
    }
    assert!(
        ended.is_empty(),
        "{} of {N} connections did not stay open: {:?}",
        ended.len(),
        &ended[..ended.len().min(10)]
    );
    // A normal client is still served while they are held.
    let (status, _, body) = get(port, "x", "/idle/normal");
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(d.proc.child.try_wait(), Ok(None)),
        "the daemon exited"
    );

    let per_conn = (after.saturating_sub(before) * 1024) / N as u64;
    println!(
        "idle connections: {N} opened and answered in {opened:?}; daemon VmRSS {before} KiB before, \
         {after} KiB after: {per_conn} bytes per connection"
    );
    drop(silent);
    drop(idle);
    let mut left = 0;
    assert!(
        eventually(10, || {
            left = daemon_connections(&d);
            left == 0
        }),
        "the daemon still counts {left} connections after they closed"
    );
    println!(
        "idle connections: {left} still counted by the daemon after closing; VmRSS now {} KiB; the test took {:?}",
        vm_rss_kib(pid),
        started.elapsed()
    );
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} bytes of daemon memory per idle connection, more than 16 KiB \
         (VmRSS {before} KiB before, {after} KiB with {N} connections)"
    );
}

// ---------------------------------------------------------------------------------------
// 3. A worker killed at each stage of a request
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 4. The daemon killed with SIGKILL and restarted
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 5. A flood of malformed requests
// ---------------------------------------------------------------------------------------

/// How the client ends its side after sending a malformed request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Half-close (shutdown write), then read to the end.
    HalfClose,
    /// Reset the connection at once (SO_LINGER 0) without reading.
    Reset,
}

/// xorshift64*: deterministic noise.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

const MALFORMED_KINDS: u64 = 30;

/// The `kind`-th sort of malformed request.
fn malformed(kind: u64, rng: &mut u64) -> (Vec<u8>, After) {
    let simple = |s: &str| (s.as_bytes().to_vec(), After::HalfClose);
    match kind {
        0 => {
            let len = 1 + (next_rand(rng) % 2048) as usize;
            let bytes = (0..len).map(|_| next_rand(rng) as u8).collect();
            (bytes, After::HalfClose)
        }
        1 => simple("GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
        2 => simple("GET / HTTP/1.1.1\r\nHost: x\r\n\r\n"),
        3 => simple("GET / FOO/1.1\r\nHost: x\r\n\r\n"),
        4 => simple("GET / HTTP/01.10\r\nHost: x\r\n\r\n"),
        5 => {
            let big = "a".repeat(70_000);
            simple(&format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
            ))
        }
        6 => {
            let many: String = (0..3000).map(|i| format!("X-{i}: v\r\n")).collect();
            simple(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"))
        }
        7 => simple(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        8 => simple(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\nabc\r\n",
        ),
        9 => simple(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n0\r\n\r\n",
        ),
        10 => simple(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        11 => simple("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        12 => simple(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        13 => simple("GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n"),
        14 => simple("GET / HTTP/1.1\r\nHost: x\r\nX-\0: a\0b\r\n\r\n"),
        15 => simple("GET / HTTP/1.1\r\nHost: x\r\n"),
        16 => simple("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"),
        17 => simple("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        18 => {
            simple("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n")
        }
        19 => simple("GET / HTTP/1.1\nHost: x\n\n"),
        20 => simple("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n"),
        21 => simple("GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"),
        22 => simple("GET /%zz/..%2f..%2f%c0%af%ff%00 HTTP/1.1\r\nHost: x\r\n\r\n"),
        23 => simple(&format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "seg/".repeat(10_000)
        )),
        24 => simple("G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        25 => simple("\r\n\r\n\r\n\r\n"),
        26 => {
            let mut bytes = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nab".to_vec();
            bytes.extend((0..8).map(|_| next_rand(rng) as u8));
            (bytes, After::Reset)
        }
        27 => simple("GET / HTTP/1.1\r\nHost: x\r\n\r\nBLAH\r\n\r\n"),
        28 => simple("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"),
        _ => simple(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;\0\r\nhello\r\n0\r\nX\0: y\r\n\r\n",
        ),
    }
}

/// What one malformed exchange came to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// A response with this status (the first, when several came).
    Status(u16),
    /// Bytes that are not an HTTP/1.1 response.
    Odd(String),
    /// Closed with no bytes.
    Closed,
    /// Reset.
    Reset,
    /// The client reset it itself.
    ClientReset,
    /// No end within the read timeout.
    Hung,
    /// The connection could not be made.
    ConnectFailed(String),
}

fn send_malformed(port: u16, kind: u64, rng: &mut u64) -> Outcome {
    let (bytes, after) = malformed(kind, rng);
    let mut s = match connect_timeout(port) {
        Ok(s) => s,
        Err(e) => return Outcome::ConnectFailed(e.to_string()),
    };
    // The daemon may answer and close before it has read everything: a failed write is
    // part of the game.
    let _ = s.write_all(&bytes);
    if after == After::Reset {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        return Outcome::ClientReset;
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        match s.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => {
                got.extend_from_slice(&chunk[..n]);
                if got.len() > 1 << 20 {
                    break None;
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break Some(Outcome::Reset),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Some(Outcome::Hung);
            }
            Err(e) => break Some(Outcome::Odd(format!("read error {e}"))),
        }
    };
    if end == Some(Outcome::Hung) {
        return Outcome::Hung;
    }
    if got.is_empty() {
        return end.unwrap_or(Outcome::Closed);
    }
    match got
        .get(..12)
        .map(|h| String::from_utf8_lossy(h).into_owned())
    {
        Some(h) if h.starts_with("HTTP/1.1 ") => h[9..12]
            .parse()
            .map(Outcome::Status)
            .unwrap_or_else(|_| Outcome::Odd(h)),
        _ => Outcome::Odd(String::from_utf8_lossy(&got[..got.len().min(40)]).into_owned()),
    }
}

#[test]
fn a_flood_of_malformed_requests_leaves_the_daemon_serving() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 1250;
    let _turn = heavy();
    let mut d = Daemon::start();
    let pid = d.proc.child.id();
    let (_app, port) = hello_on_free_port(&d, "flood", &["/"], &[]);
    assert_eq!(get(port, "x", "/before").0, 200);
    let rss_before = vm_rss_kib(pid);
    let started = Instant::now();
    let wall = started + Duration::from_secs(20);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                let mut seen: BTreeMap<(u64, Outcome), u64> = BTreeMap::new();
                for i in 0..PER_THREAD {
                    if Instant::now() >= wall {
                        break;
                    }
                    let kind = (t * PER_THREAD + i) % MALFORMED_KINDS;
                    let outcome = send_malformed(port, kind, &mut rng);
                    *seen.entry((kind, outcome)).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut seen: BTreeMap<(u64, Outcome), u64> = BTreeMap::new();
    for w in workers {
        for (k, n) in w.join().expect("flood thread") {
            *seen.entry(k).or_default() += n;
        }
    }
    let took = started.elapsed();
    let total: u64 = seen.values().sum();
    let mut by_outcome: BTreeMap<&Outcome, u64> = BTreeMap::new();
    for ((_, o), n) in &seen {
        *by_outcome.entry(o).or_default() += n;
    }
    println!("flood: {total} malformed requests in {took:?}: {by_outcome:?}");
    let mut by_kind: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for ((k, o), n) in &seen {
        by_kind.entry(*k).or_default().push(format!("{o:?} x{n}"));
    }
    for (k, outcomes) in &by_kind {
        println!("flood: kind {k}: {}", outcomes.join(", "));
    }

    let bad: Vec<String> = seen
        .iter()
        .filter(|((_, o), _)| {
            matches!(
                o,
                Outcome::Hung | Outcome::ConnectFailed(_) | Outcome::Odd(_) | Outcome::Status(500)
            )
        })
        .map(|((k, o), n)| format!("kind {k}: {o:?} x{n}"))
        .collect();
    assert!(
        bad.is_empty(),
        "malformed requests that hung, were refused, got no HTTP answer or a 500:\n{}",
        bad.join("\n")
    );
    assert!(
        matches!(d.proc.child.try_wait(), Ok(None)),
        "the daemon exited:\n{}",
        tail(&d.log(), 30)
    );
    // Normal requests, on fresh and keep-alive connections.
    for i in 0..10 {
        let (status, _, body) = get(port, "x", &format!("/after{i}"));
        assert_eq!(status, 200, "{body}");
    }
    let mut c = connect(port);
    let mut buf = Vec::new();
    for i in 0..10 {
        assert_eq!(
            exchange(&mut c, &mut buf, &format!("/ka{i}"), false),
            Ok(200)
        );
    }
    println!(
        "flood: daemon VmRSS {rss_before} KiB before, {} KiB after",
        vm_rss_kib(pid)
    );
}

/// A request body whose chunk-size line does not parse. The httperr line's status is the
/// status sent (spec §7.2: "status sent, or `-`"): a line saying 400 goes with the
/// standard 400 page, and a connection reset without an answer is logged with `-`.
#[test]
fn a_bad_chunk_size_is_logged_with_the_status_actually_sent() {
    let d = Daemon::start();
    let (_app, port) = hello_on_free_port(&d, "chunks", &["/c/"], &[]);
    let mut c = connect(port);
    let fields = conn_fields(&c, port);
    c.write_all(
        b"POST /c/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .expect("write");
    let end = expect_end(&mut c, "a body with a bad chunk size");
    let text = String::from_utf8_lossy(&end.bytes).into_owned();
    let line = errlog_line(&d, &[&fields, " BadRequest "]);
    println!(
        "bad chunk: the connection was {} ({:?}); httperr: {line}",
        end.describe(),
        text.lines().next().unwrap_or_default()
    );
    let logged = line.split(' ').nth(9).unwrap_or_default();
    let sent = match text.get(..12) {
        Some(h) if h.starts_with("HTTP/1.1 ") => &h[9..12],
        _ => "-",
    };
    assert_eq!(
        logged,
        sent,
        "the httperr line says status {logged} was sent, the client got {sent} (the \
         connection was {}): {line}",
        end.describe()
    );
}
