//! HTTP/1 framing end to end: the host an application and an upstream are given for an
//! absolute-form target (RFC 9112 §3.2.2), an HTTP/1.0 request with a chunked body (served,
//! then closed: RFC 9112 §6.1), and the chunked framing the daemon refuses (RFC 9112 §7.1).
//!
//! Each test starts one daemon whose configuration holds an upstream queue on
//! `http://+:PORT/up/`, forwarding to a small server in this process that reads each whole
//! request body before answering with the request head it received; and `hello
//! --echo-headers` registered on `http://localhost:PORT/f/`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

/// The daemon, the app, and what the upstream saw.
struct Lab {
    _daemon: Daemon,
    _app: App,
    port: u16,
    upstream: Seen,
}

/// Request lines the upstream server saw: `started` on each head, `complete` once the whole
/// body was in (with the body, as `LINE body=BODY`).
#[derive(Clone, Default)]
struct Seen {
    started: Arc<Mutex<Vec<String>>>,
    complete: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn started(&self, line: &str) -> bool {
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        started.iter().any(|l| l == line)
    }

    fn completed(&self, line: &str) -> bool {
        let complete = self.complete.lock().unwrap_or_else(|e| e.into_inner());
        complete
            .iter()
            .any(|l| l.starts_with(&format!("{line} body=")))
    }
}

fn lab(tag: &str) -> Lab {
    let (up, upstream) = upstream();
    let (daemon, port) = Daemon::builder()
        .tag(tag)
        .iplisten_from_config()
        .spawn_on_free_port(|port| {
            format!(
                "iplisten = [\"127.0.0.1\"]\n\n[[queue]]\nname = \"up\"\n\
                 urls = [\"http://+:{port}/up/\"]\nupstream = \"127.0.0.1:{up}\"\n\
                 verbosity = \"limited\"\n"
            )
        });
    let app = daemon.hello(
        "f",
        &[&format!("http://localhost:{port}/f/")],
        &["--echo-headers"],
    );
    Lab {
        _daemon: daemon,
        _app: app,
        port,
        upstream,
    }
}

/// The upstream server: one thread per connection, keep-alive. Each request is answered,
/// once its body is read whole, with `200` and a body of the head as received, `--body--`,
/// and the body.
fn upstream() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let port = listener.local_addr().expect("address").port();
    let seen = Seen::default();
    let shared = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let seen = shared.clone();
            std::thread::spawn(move || serve_upstream(conn, &seen));
        }
    });
    (port, seen)
}

fn serve_upstream(mut c: TcpStream, seen: &Seen) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let Some(end) = fill_until(&mut c, &mut buf, b"\r\n\r\n") else {
            return;
        };
        let head: Vec<u8> = buf.drain(..end + 4).collect();
        let text = String::from_utf8_lossy(&head).into_owned();
        let line = text.lines().next().unwrap_or_default().to_owned();
        seen.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.clone());
        let lower = text.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let body = if let Some(n) = length {
            while buf.len() < n {
                if !more(&mut c, &mut buf) {
                    return;
                }
            }
            buf.drain(..n).collect()
        } else if lower.contains("transfer-encoding: chunked") {
            match dechunk(&mut c, &mut buf) {
                Some(body) => body,
                None => return,
            }
        } else {
            Vec::new()
        };
        seen.complete
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{line} body={}", String::from_utf8_lossy(&body)));
        let mut out = head;
        out.extend_from_slice(b"--body--");
        out.extend_from_slice(&body);
        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", out.len());
        if c.write_all(reply.as_bytes()).is_err() || c.write_all(&out).is_err() {
            return;
        }
    }
}

/// Reads a chunked body to its end; `None` when the connection ends first.
fn dechunk(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = fill_until(c, buf, b"\r\n")?;
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..end + 2);
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                let end = fill_until(c, buf, b"\r\n")?;
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        while buf.len() < size + 2 {
            if !more(c, buf) {
                return None;
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// Reads until `buf` holds `needle`; its position, or `None` when the connection ends.
fn fill_until(c: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(i);
        }
        if !more(c, buf) {
            return None;
        }
    }
}

fn more(c: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match c.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// The lines of a body, the header ones with their names lower-cased.
fn lines(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| match l.split_once(':') {
            Some((n, v)) => format!("{}:{v}", n.to_ascii_lowercase()),
            None => l.to_owned(),
        })
        .collect()
}

/// The values of header `name` (lower case) among `lines`.
fn values<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
        .collect()
}

// ---- the host an application sees (RFC 9112 §3.2.2, spec §2.2) ----

#[test]
fn an_absolute_form_target_reaches_the_app_with_the_host_routing_used() {
    let lab = lab("framing-app-host");
    let port = lab.port;
    let routed = format!("localhost:{port}");
    for (what, request) in [
        (
            "a differing Host",
            format!(
                "GET http://localhost:{port}/f/x HTTP/1.1\r\nX-A: 1\r\nHost: evil.example\r\n\
                 Connection: close\r\n\r\n"
            ),
        ),
        (
            "a Host that is no host name",
            format!(
                "GET http://localhost:{port}/f/x HTTP/1.1\r\nHost: evil example/\r\n\
                 Connection: close\r\n\r\n"
            ),
        ),
        (
            "no Host, HTTP/1.0",
            format!("GET http://localhost:{port}/f/x HTTP/1.0\r\n\r\n"),
        ),
        (
            "no Host, HTTP/1.1",
            format!("GET http://localhost:{port}/f/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ),
        (
            "origin-form (routed by the Host header)",
            format!("GET /f/x HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
        ),
    ] {
        let (status, head, body) = http_raw(port, request.as_bytes());
        let got = lines(&body);
        assert_eq!(status, 200, "{what}: {head}{got:?}");
        assert!(got[0].starts_with("name=f "), "{what}: {got:?}");
        assert_eq!(values(&got, "host"), [routed.as_str()], "{what}: {got:?}");
        assert!(
            !got.iter().any(|l| l.contains("evil")),
            "{what}: the client's Host reached the app: {got:?}"
        );
        assert_eq!(
            values(&got, "portshare-raw-url"),
            [request.split(' ').nth(1).unwrap_or_default()],
            "{what}: the raw URL is the target as sent"
        );
    }
}

#[test]
fn an_absolute_form_target_reaches_an_upstream_with_the_host_routing_used() {
    let lab = lab("framing-up-host");
    let port = lab.port;
    let routed = format!("up.example:{port}");
    for (what, request, host) in [
        (
            "a differing Host",
            format!(
                "GET http://up.example:{port}/up/x HTTP/1.1\r\nHost: evil.example\r\n\
                 X-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n"
            ),
            routed.as_str(),
        ),
        (
            "no Host, HTTP/1.0",
            format!("GET http://up.example:{port}/up/x HTTP/1.0\r\n\r\n"),
            routed.as_str(),
        ),
        (
            "origin-form (routed by the Host header)",
            "GET /up/x HTTP/1.1\r\nHost: h.example:1\r\nConnection: close\r\n\r\n".to_owned(),
            "h.example:1",
        ),
    ] {
        let (status, head, body) = http_raw(port, request.as_bytes());
        let got = lines(&body);
        assert_eq!(status, 200, "{what}: {head}{got:?}");
        assert_eq!(got[0], "GET /up/x HTTP/1.1", "{what}: {got:?}");
        assert_eq!(values(&got, "host"), [host], "{what}: {got:?}");
        assert_eq!(values(&got, "x-forwarded-host"), [host], "{what}: {got:?}");
        let forwarded = values(&got, "forwarded");
        assert_eq!(forwarded.len(), 1, "{what}: {got:?}");
        assert!(
            forwarded[0].contains(&format!(";host=\"{host}\"")),
            "{what}: {got:?}"
        );
        assert!(
            !got.iter().any(|l| l.contains("evil")),
            "{what}: the client's Host reached the upstream: {got:?}"
        );
    }
    // HTTP/1.0 without any host: none is made up.
    let (status, _, body) = http_raw(port, b"GET /up/x HTTP/1.0\r\n\r\n");
    let got = lines(&body);
    assert_eq!(status, 200, "{got:?}");
    assert!(values(&got, "host").is_empty(), "{got:?}");
    assert!(values(&got, "x-forwarded-host").is_empty(), "{got:?}");
    assert!(!values(&got, "forwarded")[0].contains("host="), "{got:?}");
}

// ---- HTTP/1.0 with Transfer-Encoding (RFC 9112 §6.1) ----

#[test]
fn http10_with_a_chunked_body_is_served_then_the_connection_closes() {
    let lab = lab("framing-http10");
    let port = lab.port;
    for path in ["/f/", "/up/"] {
        let mut c = connect(port);
        write!(
            c,
            "POST {path}a HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
             GET {path}b HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
        )
        .expect("send");
        let mut buf = Vec::new();
        let (status, head, body) = read_response(&mut c, &mut buf, false);
        let got = lines(&body);
        assert_eq!(status, 200, "{path}: {head}{got:?}");
        assert!(
            head.contains("\r\nConnection: close\r\n"),
            "{path}: not closing: {head}"
        );
        if path == "/up/" {
            assert!(
                lab.upstream.completed("POST /up/a HTTP/1.1"),
                "the body did not reach the upstream whole"
            );
        }
        assert_closed(&mut c, &buf);
    }
    assert!(!lab.upstream.started("GET /up/b HTTP/1.1"));

    // The same with a Content-Length body keeps the connection: both are answered.
    let mut c = connect(port);
    c.write_all(
        b"POST /f/a HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\
          Content-Length: 5\r\n\r\nhello\
          GET /f/b HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
    )
    .expect("send");
    let mut buf = Vec::new();
    for path in ["/f/a", "/f/b"] {
        let (status, head, body) = read_response(&mut c, &mut buf, false);
        assert_eq!(status, 200, "{head}");
        assert!(
            String::from_utf8_lossy(&body).contains(&format!("path={path}\n")),
            "{head}"
        );
    }
}

// ---- chunked framing (RFC 9112 §7.1) ----

#[test]
fn chunked_framing_errors_are_answered_400_and_never_reach_the_upstream_whole() {
    let lab = lab("framing-chunked");
    let port = lab.port;
    let send = |path: &str, body: &str| {
        let request = format!(
            "POST /up/{path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let mut c = connect(port);
        // The daemon may answer and close before it has read everything.
        let _ = c.write_all(request.as_bytes());
        let mut buf = Vec::new();
        let (status, head, _) = read_response(&mut c, &mut buf, false);
        (status, head, c, buf)
    };
    // Well framed, with trailers and an extension: served.
    let (status, head, ..) = send("good", "5;x=1\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(lab.upstream.completed("POST /up/good HTTP/1.1"));

    let bad = [
        ("lf-size", "5\nhello\r\n0\r\n\r\n"),
        ("lf-extension", "5;x=1\nhello\r\n0\r\n\r\n"),
        ("lf-data", "5\r\nhello\n0\r\n\r\n"),
        ("lf-last", "5\r\nhello\r\n0\n\r\n"),
        ("lf-trailer", "5\r\nhello\r\n0\r\nX-Sum: 5\n\r\n"),
        ("no-colon", "5\r\nhello\r\n0\r\nnot a field\r\n\r\n"),
        ("bad-size", "5\r\nhello\r\nzz\r\n\r\n"),
    ];
    // Every case is tried before any assertion, so a failure lists them all.
    let mut wrong = Vec::new();
    for (path, body) in bad {
        let (status, head, mut c, buf) = send(path, body);
        if status != 400 || !head.contains("\r\nConnection: close\r\n") {
            wrong.push(format!(
                "{path}: {}",
                head.lines().next().unwrap_or_default()
            ));
            continue;
        }
        assert_closed(&mut c, &buf);
    }
    assert!(
        wrong.is_empty(),
        "not refused with 400 and a close: {wrong:?}"
    );
    // The upstream saw those begin, and never end: it was cut off, not handed a shorter
    // body as if whole.
    std::thread::sleep(Duration::from_millis(500));
    for (path, _) in bad {
        let line = format!("POST /up/{path} HTTP/1.1");
        assert!(
            !lab.upstream.completed(&line),
            "{path}: the upstream got a whole request"
        );
    }
}

#[test]
fn a_client_that_leaves_mid_body_never_hands_an_upstream_a_whole_request() {
    let lab = lab("framing-cut");
    let mut c = connect(lab.port);
    c.write_all(
        b"POST /up/cut HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .expect("send");
    assert!(
        eventually(10, || lab.upstream.started("POST /up/cut HTTP/1.1")),
        "the request did not reach the upstream"
    );
    c.shutdown(Shutdown::Both).expect("shutdown");
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !lab.upstream.completed("POST /up/cut HTTP/1.1"),
        "the upstream got a whole request from a client that left mid-body"
    );
}
