//! Faults and abuse end to end: slow clients (`slow`: slowloris and slow body, with
//! `slowhttptest`), ten thousand idle connections (`idle`), a worker killed at each stage of
//! a request and the daemon killed under its apps and restarted (`killed`), and a flood of
//! malformed requests (`malformed`). What they share is here.
//!
//! Every loop is bounded by a count and by the wall clock, every socket is on 127.0.0.1,
//! and every process a test starts is killed when its handle drops. Nothing here asserts
//! that something was fast: latencies and memory are printed (`--nocapture` shows them).
//!
//! The tests that load the machine (the slow-client attacks, the idle connections and the
//! flood) take turns, so their figures do not disturb each other.

mod idle;
mod killed;
mod malformed;
mod slow;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::harness::*;

/// Held by the tests that load the machine, so that they run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
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

/// Reads until the connection ends. It must end by a reset or a close within 10 s of its
/// last bytes, and bring less than 1 MiB.
fn expect_end(c: &mut TcpStream, what: &str) -> Closed {
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let end = read_until_close(c, what);
    assert!(end.bytes.len() < 1 << 20, "{what}: endless bytes");
    end
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
