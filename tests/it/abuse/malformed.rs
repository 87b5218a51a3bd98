//! A flood of malformed requests, and a bad chunk size logged with the status actually sent.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::{conn_fields, connect_timeout, errlog_line, exchange, expect_end, heavy, tail};
use crate::harness::*;

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
