//! Slow clients: slowloris and slow bodies from `slowhttptest` while a normal client is
//! served, and bodies the application left unread that stop arriving or trickle in.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    conn_fields, connect_timeout, daemon_connections, errlog_line, exchange, expect_end, heavy,
    tail, under_ci,
};
use crate::harness::*;

/// Starts a daemon (folder `tag`) whose configuration holds the listen list and `extra`
/// (tables such as `[timers]`).
fn daemon_with(tag: &str, extra: &str) -> Daemon {
    Daemon::builder()
        .tag(tag)
        .config(format!("iplisten = [\"127.0.0.1\"]\n\n{extra}"))
        .spawn()
}

/// The `q`-th quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
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

/// Slowloris: 1000 connections each sending one more header line every second and never
/// ending the head. HeaderWait (4 s here) bounds the whole head, not the gaps, so each is
/// cut 4 s after it opened, with a Timer_HeaderWait line; meanwhile a normal client is
/// answered every time.
#[test]
fn slowloris_does_not_starve_a_normal_client() {
    if !slowhttptest_available() {
        return;
    }
    let _turn = heavy();
    let mut r = slow_attack("-H", "[timers]\nheader_wait = 4\n", 1, 8, "/app/", false);
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
/// `/axum/echo`), each announcing 4096 bytes and sending a few every 3 s. EntityBody (2 s
/// here) is a gap timer: each body in the app's hands is cut at its first 3 s gap, with a
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
        "[timers]\nentity_body = 2\n",
        3,
        8,
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

/// Uploads that stall mid-body hold no read buffer in the daemon while it waits for them:
/// 300 connections each send a head announcing 1 MB and the first 20,000 bytes to an app
/// that reads bodies, then nothing more. The daemon grows by less than 48 KiB per
/// connection, not by the 64 KiB a body read takes on top of the connection's own, and a
/// normal client is served meanwhile.
#[test]
fn stalled_uploads_hold_no_read_buffer() {
    const N: usize = 300;
    let _turn = heavy();
    let d = Daemon::start();
    let pid = d.proc.child.id();
    let (_app, port) = hello_on_free_port(
        &d,
        "stall",
        &["/stall/"],
        &["--read-body", "--slots", "400"],
    );
    // Buffers of every size the uploads use are made once before the measure.
    let whole = vec![b'w'; 200_000];
    for i in 0..20 {
        let mut c = connect(port);
        c.write_all(
            format!("POST /stall/warm{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", whole.len())
                .as_bytes(),
        )
        .expect("warm-up head");
        c.write_all(&whole).expect("warm-up body");
        assert_eq!(read_response(&mut c, &mut Vec::new(), false).0, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = vm_rss_kib(pid);
    let chunk = vec![b'u'; 20_000];
    let mut stalled = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = connect(port);
        c.write_all(
            format!("POST /stall/u{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
                .as_bytes(),
        )
        .expect("head");
        c.write_all(&chunk).expect("the body's start");
        stalled.push(c);
    }
    // Every upload reaches the app, which holds them all (400 slots) waiting for the rest.
    let mut in_flight = 0;
    let all_in = eventually(20, || {
        in_flight = d.state()["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == "stall"))
            .and_then(|q| q["in_flight"].as_u64())
            .unwrap_or(0);
        in_flight >= N as u64
    });
    assert!(all_in, "only {in_flight} of {N} uploads reached the app");
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_rss_kib(pid);
    let per_conn = (after.saturating_sub(before) * 1024) / N as u64;
    println!(
        "stalled uploads: daemon VmRSS {before} KiB before, {after} KiB with {N} stalled: \
         {per_conn} bytes per connection"
    );
    // About 26 KiB each here (the connection, its request head and its stream); a body
    // read buffer kept while the client sends nothing would add 64 KiB.
    assert!(
        per_conn < 48 * 1024,
        "each stalled upload holds {per_conn} bytes of the daemon: a body read buffer is kept \
         while the client sends nothing"
    );
    let (status, _, body) = get(port, "x", "/stall/normal");
    assert_eq!(status, 200, "{body}");
    drop(stalled);
}
