//! More of `portshare serve` end to end: daemon restarts, upstream queues from the
//! configuration file, `Expect: 100-continue`, large bodies, HTTP/1.0, the
//! machine-dependent routing vectors, `portshare show`, draining, and error pages.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::{Value, json};

/// HTTP.sys's error page body (spec §4.1).
fn http_sys_page(title: &str, heading: &str, status: u16, text: &str) -> String {
    format!(
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n\
         <HTML><HEAD><TITLE>{title}</TITLE>\r\n\
         <META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n\
         <BODY><h2>{heading}</h2>\r\n\
         <hr><p>HTTP Error {status}. {text}</p>\r\n\
         </BODY></HTML>\r\n"
    )
}

/// The checks shared by the TCP and Unix upstream tests.
fn check_upstream_forwarding(d: &Daemon, port: u16, upstream: &str) {
    let state = d.state();
    let q = &state["queues"][0];
    assert_eq!(q["name"], "legacy", "{state}");
    assert_eq!(q["upstream"], upstream, "{state}");

    let mut c = connect(port);
    let mut buf = Vec::new();

    // 1. The cooked path and the raw query; forwarding headers are the daemon's own.
    let target = "/legacy/sub/../a%41b%20c?q=%41&r";
    write!(
        c,
        "GET {target} HTTP/1.1\r\nHost: h.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6;proto=https\r\n\
         Portshare-Client-Addr: 6.6.6.6:1\r\nportshare-url-prefix: evil\r\nX-Kept: yes\r\n\r\n"
    )
    .expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}{}", String::from_utf8_lossy(&body));
    assert_eq!(header_value(&head, "X-Echo"), Some("yes"), "{head}");
    assert_framed_once(&head);
    let e = Echoed::parse(&body);
    assert_eq!(e.request_line, "GET /legacy/aAb%20c?q=%41&r HTTP/1.1");
    assert_eq!(e.one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(e.one("x-forwarded-proto"), "http");
    let forwarded = e.one("forwarded");
    assert!(
        forwarded.contains("for=127.0.0.1"),
        "Forwarded: {forwarded}"
    );
    let all = String::from_utf8_lossy(&body).to_ascii_lowercase();
    assert!(
        !all.contains("6.6.6.6") && !all.contains("evil") && !all.contains("https"),
        "a spoofed value reached the upstream:\n{all}"
    );
    assert_eq!(e.one("x-kept"), "yes");
    assert_eq!(e.one("portshare-raw-url"), target);
    assert!(e.one("portshare-client-addr").starts_with("127.0.0.1:"));
    assert_eq!(
        e.one("portshare-url-prefix").to_ascii_lowercase(),
        format!("http://+:{port}/legacy/")
    );
    assert!(e.body.is_empty());

    // 2. Same connection: a POST with a Content-Length body.
    c.write_all(
        b"POST /legacy/post HTTP/1.1\r\nHost: h.example\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    assert_eq!(e.request_line, "POST /legacy/post HTTP/1.1");
    assert_eq!(e.body, b"hello world");
    assert_eq!(e.one("content-length"), "11");

    // 3. Same connection: a chunked POST, arriving in pieces.
    c.write_all(b"POST /legacy/chunked HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .expect("send");
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"5;ext=1\r\ndefgh\r\n0\r\n\r\n").expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    assert_eq!(e.request_line, "POST /legacy/chunked HTTP/1.1");
    assert_eq!(e.body, b"abcdefgh");

    // 4. Same connection: 300 KB each way.
    let big = pattern(300 * 1024, 7);
    let mut w = c.try_clone().expect("clone");
    let sent = big.clone();
    let writer = std::thread::spawn(move || {
        write!(
            w,
            "POST /legacy/big HTTP/1.1\r\nHost: h.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sent.len()
        )
        .expect("send head");
        w.write_all(&sent).expect("send body");
    });
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    writer.join().expect("writer");
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    assert!(e.body == big, "the 300 KB body changed on the way");
    assert!(
        header_value(&head, "Connection").is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "{head}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. Daemon restart
// ---------------------------------------------------------------------------------------

#[test]
fn an_app_reregisters_by_itself_when_the_daemon_restarts() {
    let mut d = Daemon::start();
    let (mut app, port) = hello_on_free_port(&d, "phoenix", &["/p/"], &[]);
    let (status, _, body) = get(port, "x", "/p/1");
    assert_eq!(status, 200);
    assert!(body.starts_with("name=phoenix "), "{body}");

    d.proc.kill();
    assert!(
        eventually(5, || try_get(port, "x", "/p/2").is_none()),
        "the port still answers with the daemon gone"
    );
    let control = d.control.clone();
    let d = d.restart();
    assert_eq!(d.control, control);

    let mut last = None;
    let back = eventually(15, || {
        last = try_get(port, "x", "/p/3");
        matches!(&last, Some((200, _)))
    });
    assert!(
        back,
        "hello did not come back on the new daemon (last answer {last:?})\napp log:\n{}\ndaemon log:\n{}",
        app.proc.log_text(),
        d.log()
    );
    let (_, body) = last.expect("an answer");
    assert_eq!(
        body,
        format!("name=phoenix prefix=http://+:{port}/p/ path=/p/3\n")
    );
    assert!(
        matches!(app.proc.child.try_wait(), Ok(None)),
        "the app exited"
    );
    let state = d.state();
    assert_eq!(state["queues"][0]["name"], "phoenix", "{state}");
    assert_eq!(
        state["queues"][0]["processes"][0]["pid"],
        app.proc.child.id(),
        "{state}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Upstream queues from the configuration file
// ---------------------------------------------------------------------------------------

#[test]
fn a_config_upstream_queue_forwards_to_a_loopback_tcp_server() {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let up_addr = upstream.local_addr().expect("addr").to_string();
    let _server = EchoServer::start(AnyListener::Tcp(upstream));
    let port = free_port();
    let d = daemon_with_upstream(TempDir::new("up-tcp"), port, &up_addr);
    check_upstream_forwarding(&d, port, &up_addr);
}

#[test]
fn a_config_upstream_queue_forwards_to_a_unix_socket_server() {
    let dir = TempDir::new("up-unix");
    let sock = dir.0.join("legacy.sock");
    let upstream = UnixListener::bind(&sock).expect("bind the unix upstream");
    let _server = EchoServer::start(AnyListener::Unix(upstream));
    let address = format!("unix:{}", sock.display());
    let port = free_port();
    let d = daemon_with_upstream(dir, port, &address);
    check_upstream_forwarding(&d, port, &address);
}

// ---------------------------------------------------------------------------------------
// 3. A non-loopback upstream in the configuration file
// ---------------------------------------------------------------------------------------

#[test]
fn a_config_upstream_that_is_not_loopback_stops_the_daemon_with_the_key_named() {
    let dir = TempDir::new("bad-config");
    let port = free_port();
    for bad in ["10.1.2.3:80", "[2001:db8::1]:8080", "0.0.0.0:9000"] {
        let config = dir.0.join("bad.toml");
        std::fs::write(
            &config,
            format!(
                "[[queue]]\nname = \"legacy\"\nurls = [\"http://+:{port}/legacy/\"]\nupstream = \"{bad}\"\n"
            ),
        )
        .expect("write the configuration");
        let mut cmd = Command::new(portshare_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--control")
            .arg(dir.0.join("control.sock"))
            .args(["--iplisten", "127.0.0.1"]);
        let (code, _, stderr) = run_to_exit(cmd, &dir.0, 20);
        assert!(
            code.is_some_and(|c| c != 0),
            "{bad}: exit {code:?}\n{stderr}"
        );
        assert!(
            stderr.contains("upstream") && stderr.contains(bad) && stderr.contains("loopback"),
            "{bad}: the message should name the key, the value and why:\n{stderr}"
        );
        assert!(port_free(port), "{bad}: the port was bound anyway");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Expect: 100-continue
// ---------------------------------------------------------------------------------------

#[test]
fn expect_100_continue_is_answered_when_the_request_reaches_the_app() {
    let d = Daemon::start();
    let (_app, port) = hello_on_free_port(&d, "cont", &["/c/"], &[]);
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(
        b"POST /c/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .expect("send the head");
    let mut buf = Vec::new();
    expect_continue(&mut c, &mut buf, "the request was handed to hello");
    c.write_all(b"hello").expect("send the body");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("name=cont prefix=http://+:{port}/c/ path=/c/x\n")
    );
    // The body was taken off the connection: the next request is read as a request.
    c.write_all(b"GET /c/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert!(
        String::from_utf8_lossy(&body).ends_with("path=/c/next\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn expect_100_continue_reaches_an_app_that_reads_the_body_first() {
    let d = Daemon::start();
    let port = free_port();
    let _app = App::start(
        &d.control,
        "axum_app",
        "",
        &[&format!("http://+:{port}/axum/")],
        &[],
    );
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(
        b"POST /axum/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .expect("send the head");
    let mut buf = Vec::new();
    expect_continue(
        &mut c,
        &mut buf,
        "the request was handed to axum_app, which waits for the body",
    );
    c.write_all(b"hello").expect("send the body");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"hello");
}

#[test]
fn expect_100_continue_reaches_an_upstream_that_reads_the_body_first() {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let up_addr = upstream.local_addr().expect("addr").to_string();
    let _server = EchoServer::start(AnyListener::Tcp(upstream));
    let port = free_port();
    let _d = daemon_with_upstream(TempDir::new("up-continue"), port, &up_addr);
    let mut c = connect(port);
    c.write_all(
        b"POST /legacy/c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .expect("send the head");
    let mut buf = Vec::new();
    expect_continue(
        &mut c,
        &mut buf,
        "the request went to the upstream, which waits for the body",
    );
    c.write_all(b"hello").expect("send the body");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    assert_eq!(e.body, b"hello");
    assert!(e.all("expect").is_empty(), "{:?}", e.headers);
}

// ---------------------------------------------------------------------------------------
// 5. Large bodies both ways
// ---------------------------------------------------------------------------------------

/// Sends `head` and `body` from another thread while the response is read here.
fn exchange(port: u16, head: String, body: Vec<u8>) -> (u16, String, Vec<u8>) {
    let mut c = connect(port);
    let mut w = c.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        w.write_all(head.as_bytes()).expect("send the head");
        w.write_all(&body).expect("send the body");
    });
    let mut buf = Vec::new();
    let r = read_response(&mut c, &mut buf, false);
    writer.join().expect("writer");
    r
}

/// `body` in chunked coding, cut into uneven pieces.
fn chunked(body: &[u8]) -> Vec<u8> {
    let sizes = [1usize, 7, 4096, 65535, 100_000, 3, 16384, 65536, 12345, 999];
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let n = sizes[i % sizes.len()].min(body.len() - at);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn large_bodies_stream_both_ways_through_an_app() {
    // The 3 MB direction goes through an upstream below: axum's `Bytes` extractor, which
    // the example's POST /echo uses, refuses bodies over 2 MiB (DefaultBodyLimit) with 413.
    let d = Daemon::start();
    let port = free_port();
    let app = App::start(
        &d.control,
        "axum_app",
        "",
        &[&format!("http://+:{port}/axum/")],
        &[],
    );

    let big = pattern(2 * 1024 * 1024 - 1000, 1);
    let (status, head, body) = exchange(
        port,
        format!(
            "POST /axum/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        ),
        big.clone(),
    );
    assert_eq!(
        status,
        200,
        "{head}{}\n{}",
        String::from_utf8_lossy(&body),
        app.proc.log_text()
    );
    assert_framed_once(&head);
    assert_eq!(body.len(), big.len(), "{head}");
    assert!(body == big, "the 2 MB body changed on the way");

    let upload = pattern(1024 * 1024 + 17, 2);
    let (status, head, body) = exchange(
        port,
        "POST /axum/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_owned(),
        chunked(&upload),
    );
    assert_eq!(status, 200, "{head}{}", String::from_utf8_lossy(&body));
    assert_eq!(body.len(), upload.len(), "{head}");
    assert!(body == upload, "the chunked body changed on the way");
}

#[test]
fn a_3mb_upload_past_the_apps_limit_gets_its_answer_and_the_connection_stays_usable() {
    // axum answers 413 after 2 MiB without reading the rest; the daemon drains the
    // remaining megabyte and reads the next request from the same connection.
    let d = Daemon::start();
    let port = free_port();
    let _app = App::start(
        &d.control,
        "axum_app",
        "",
        &[&format!("http://+:{port}/axum/")],
        &[],
    );
    let big = pattern(3 * 1024 * 1024, 6);
    let mut c = connect(port);
    let mut w = c.try_clone().expect("clone");
    let len = big.len();
    let writer = std::thread::spawn(move || {
        write!(
            w,
            "POST /axum/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
        )
        .expect("send the head");
        w.write_all(&big).expect("send the body");
        w.write_all(b"GET /axum/hello/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send the next request");
    });
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 413, "{head}{}", String::from_utf8_lossy(&body));
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    writer.join().expect("writer");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"hello, after\n");
}

#[test]
fn large_bodies_stream_both_ways_through_an_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let up_addr = upstream.local_addr().expect("addr").to_string();
    let _server = EchoServer::start(AnyListener::Tcp(upstream));
    let port = free_port();
    let d = daemon_with_upstream(TempDir::new("up-big"), port, &up_addr);
    let _ = &d;

    let big = pattern(3 * 1024 * 1024, 4);
    let (status, head, body) = exchange(
        port,
        format!(
            "POST /legacy/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        ),
        big.clone(),
    );
    assert_eq!(status, 200, "{head}");
    assert_framed_once(&head);
    let e = Echoed::parse(&body);
    assert_eq!(e.body.len(), big.len());
    assert!(e.body == big, "the 3 MB body changed on the way");

    let upload = pattern(1024 * 1024 + 17, 5);
    let (status, head, body) = exchange(
        port,
        "POST /legacy/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_owned(),
        chunked(&upload),
    );
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    assert_eq!(e.body.len(), upload.len());
    assert!(e.body == upload, "the chunked body changed on the way");
}

// ---------------------------------------------------------------------------------------
// 6. HTTP/1.0
// ---------------------------------------------------------------------------------------

#[test]
fn http_1_0_without_host_is_routed_and_keep_alive_is_honoured() {
    let d = Daemon::start();
    let (_app, port) = hello_on_free_port(&d, "old", &["/"], &[]);

    // No Host, no keep-alive: answered, then closed.
    let mut c = connect(port);
    c.write_all(b"GET /one HTTP/1.0\r\n\r\n").expect("send");
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("name=old prefix=http://+:{port}/ path=/one\n")
    );
    assert!(
        !head.to_ascii_lowercase().contains("connection: keep-alive"),
        "{head}"
    );
    assert_closed(&mut c, &buf);

    // Keep-alive asked for, length known: kept.
    let mut c = connect(port);
    let mut buf = Vec::new();
    for path in ["/two", "/three"] {
        write!(c, "GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").expect("send");
        let (status, head, body) = read_response(&mut c, &mut buf, false);
        assert_eq!(status, 200, "{head}");
        assert!(
            header_value(&head, "Connection").is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "{head}"
        );
        assert!(header_value(&head, "Content-Length").is_some(), "{head}");
        assert_framed_once(&head);
        assert!(
            String::from_utf8_lossy(&body).ends_with(&format!("path={path}\n")),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    // The default again on the same connection: answered, then closed.
    c.write_all(b"GET /four HTTP/1.0\r\n\r\n").expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert!(String::from_utf8_lossy(&body).ends_with("path=/four\n"));
    assert_closed(&mut c, &buf);
}

// ---------------------------------------------------------------------------------------
// 7. The machine-dependent routing vectors
// ---------------------------------------------------------------------------------------

fn vectors(name: &str) -> Option<Vec<Value>> {
    let dir = match std::env::var_os("PORTSHARE_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/spec"),
    };
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("vector file is JSON")),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{}: {e}; CI must run the vectors", path.display())
        }
        Err(e) => {
            eprintln!("skipping {name}: {}: {e}", path.display());
            None
        }
    }
}

/// The port of a URL or authority (`http://h:8080/x`, `[::1]:80`), where the digits are.
fn port_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host_end = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.rfind(':')?
    };
    let rest = &authority[host_end..];
    let digits = rest.strip_prefix(':')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (start + host_end + 1, end))
}

/// `url` with its port replaced when the map has it.
fn remap(url: &str, ports: &[(u16, u16)]) -> String {
    let Some((a, b)) = port_span(url) else {
        return url.to_owned();
    };
    let Ok(port) = url[a..b].parse::<u16>() else {
        return url.to_owned();
    };
    match ports.iter().find(|(from, _)| *from == port) {
        Some((_, to)) => format!("{}{to}{}", &url[..a], &url[b..]),
        None => url.to_owned(),
    }
}

/// A foreign (non-portshare) server: answers every connection with `foreign`.
struct Foreign {
    port: u16,
    server: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Foreign {
    fn start(ip: IpAddr) -> Foreign {
        let listener = TcpListener::bind((ip, 0)).expect("bind the foreign listener");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let server = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while find(&buf, b"\r\n\r\n").is_none() {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nforeign",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Foreign {
            port,
            server: Some(server),
            stop,
        }
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn target_bytes(raw: &str, encoding: Option<&str>) -> Vec<u8> {
    match encoding {
        Some("latin1") => raw
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin1 target"))
            .collect(),
        Some(other) => panic!("unknown raw_target_encoding {other:?}"),
        None => raw.as_bytes().to_vec(),
    }
}

/// Runs one vector that needs the machine; a description of each failure.
fn run_environment_vector(v: &Value) -> Vec<String> {
    let id = v["id"].as_str().expect("id");
    let req = &v["request"];
    let local_ip: IpAddr = req["local_ip"]
        .as_str()
        .expect("local_ip")
        .parse()
        .expect("local_ip is an IP");
    assert!(
        local_ip.is_loopback(),
        "{id}: local_ip {local_ip} is not loopback"
    );

    // The environment first: every key must be one this harness knows how to set up.
    let mut ports: Vec<(u16, u16)> = Vec::new();
    let mut foreign: Option<Foreign> = None;
    for (key, value) in v["environment"].as_object().expect("environment object") {
        match key.as_str() {
            "foreign_listener_on_port" => {
                let literal =
                    u16::try_from(value.as_u64().expect("a port number")).expect("a port number");
                let f = Foreign::start(local_ip);
                ports.push((literal, f.port));
                foreign = Some(f);
            }
            other => panic!(
                "{id}: unknown environment key {other:?} ({value}): this harness cannot set it up"
            ),
        }
    }
    // Every other literal port gets a free one of its own, consistently.
    let registrations: Vec<&str> = v["registrations"]
        .as_array()
        .expect("registrations")
        .iter()
        .map(|r| r.as_str().expect("registration"))
        .collect();
    let literal_local = u16::try_from(req["local_port"].as_u64().expect("local_port"))
        .expect("local_port is a port");
    let mut literal_ports: Vec<u16> = registrations
        .iter()
        .filter_map(|r| port_span(r).and_then(|(a, b)| r[a..b].parse().ok()))
        .collect();
    literal_ports.push(literal_local);
    for p in literal_ports {
        if !ports.iter().any(|(from, _)| *from == p) {
            ports.push((p, free_port()));
        }
    }
    assert!(
        v.get("reservations")
            .and_then(Value::as_array)
            .is_none_or(|r| r.is_empty()),
        "{id}: reservations in an environment vector are not supported by this harness"
    );

    let iplisten = local_ip.to_string();
    let d = Daemon::builder().iplisten(&iplisten).spawn();
    let mut ctl = d.ctl();
    let mut failures = Vec::new();
    let want = v.get("expect_registration_error");
    let want_index = want.map(|e| e["index"].as_u64().expect("index") as usize);
    let mut registered: Vec<Option<String>> = Vec::new();
    for (i, r) in registrations.iter().enumerate() {
        let url = remap(r, &ports);
        ctl.create_queue(json!({ "name": format!("v{i}"), "queue_timer_ms": 60000 }));
        let (status, body) = ctl.add_url(&format!("v{i}"), &url);
        if Some(i) == want_index {
            let e = want.expect("expected error");
            let code = e["win32"].as_u64().expect("win32");
            let name = e["code"].as_str().expect("code");
            if status < 400 || body["code"].as_u64() != Some(code) || body["name"] != name {
                failures.push(format!(
                    "{id}: registration {i} ({url}): want {code} {name}, got {status} {body}"
                ));
            }
            if foreign.is_some() && name == "ERROR_SHARING_VIOLATION" {
                let msg = body["message"].as_str().unwrap_or_default();
                let pid = format!("PID {}", std::process::id());
                if !msg.contains(&pid) {
                    failures.push(format!(
                        "{id}: the message should name the holder ({pid}): {msg:?}"
                    ));
                }
            }
            registered.push(None);
        } else {
            if status != 201 {
                failures.push(format!(
                    "{id}: registration {i} ({url}) should succeed: {status} {body}"
                ));
            }
            registered.push(Some(url));
        }
    }

    // The request, with its ports remapped the same way.
    let port = ports
        .iter()
        .find(|(from, _)| *from == literal_local)
        .map(|(_, to)| *to)
        .expect("local port mapped");
    let host = req["host_header"].as_str().map(|h| remap(h, &ports));
    let raw = req["raw_target"].as_str().expect("raw_target");
    let raw = if raw.contains("://") {
        remap(raw, &ports)
    } else {
        raw.to_owned()
    };
    let target = target_bytes(&raw, req["raw_target_encoding"].as_str());
    let method = req["method"].as_str().unwrap_or("GET");
    let version = req["http_version"].as_str().unwrap_or("1.1");
    let mut request = Vec::new();
    request.extend_from_slice(format!("{method} ").as_bytes());
    request.extend_from_slice(&target);
    request.extend_from_slice(format!(" HTTP/{version}\r\n").as_bytes());
    if let Some(h) = &host {
        request.extend_from_slice(format!("Host: {h}\r\n").as_bytes());
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");

    let expect = &v["expect"];
    let addr = SocketAddr::new(local_ip, port);
    match expect.get("connection").and_then(Value::as_str) {
        Some("foreign_listener") => match TcpStream::connect(addr) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                s.write_all(&request).expect("send");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                if !out.ends_with(b"\r\n\r\nforeign") {
                    failures.push(format!(
                        "{id}: the foreign listener should answer, got {:?}",
                        String::from_utf8_lossy(&out)
                    ));
                }
            }
            Err(e) => failures.push(format!("{id}: cannot reach the foreign listener: {e}")),
        },
        Some("refused") => {
            if TcpStream::connect(addr).is_ok() {
                failures.push(format!("{id}: {addr} should refuse connections"));
            }
        }
        Some(other) => panic!("{id}: unknown expect.connection {other:?}"),
        None => {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(&request).expect("send");
            if let Some(status) = expect["status"].as_u64() {
                let mut buf = Vec::new();
                let (got, head, _) = read_response(&mut s, &mut buf, method == "HEAD");
                if u64::from(got) != status {
                    failures.push(format!("{id}: status {got}, want {status}: {head}"));
                }
            } else if let Some(winner) = expect["winner"].as_str() {
                // No worker is attached: the request waits in the winner's queue.
                let index = registrations
                    .iter()
                    .position(|r| *r == winner)
                    .expect("the winner is one of the registrations");
                let queue = format!("v{index}");
                let waiting = eventually(5, || {
                    d.state()["queues"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|q| q["name"] == queue.as_str() && q["depth"] == 1)
                });
                if !waiting {
                    failures.push(format!(
                        "{id}: the request did not reach {winner} ({queue}): {}",
                        d.state()
                    ));
                }
            }
        }
    }
    drop(foreign);
    failures
}

#[test]
fn machine_dependent_routing_vectors() {
    let Some(vectors) = vectors("routing-vectors.json") else {
        return;
    };
    let mut ran = 0;
    let mut failures = Vec::new();
    for v in vectors.iter().filter(|v| v.get("environment").is_some()) {
        ran += 1;
        failures.extend(run_environment_vector(v));
    }
    assert!(
        failures.is_empty(),
        "{} failures in {ran} vectors:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if ran == 0 {
        eprintln!("note: no routing vector with an environment key");
    }
}

#[test]
fn the_vector_harness_remaps_ports_consistently() {
    let ports = [(8080, 40001), (80, 40002)];
    assert_eq!(
        remap("http://localhost:8080/a/", &ports),
        "http://localhost:40001/a/"
    );
    assert_eq!(remap("http://[::1]:80/", &ports), "http://[::1]:40002/");
    assert_eq!(remap("http://+:8081/", &ports), "http://+:8081/");
    assert_eq!(remap("localhost:8080", &ports), "localhost:40001");
    assert_eq!(remap("localhost", &ports), "localhost");
    assert_eq!(remap("http://h:8080", &ports), "http://h:40001");
}

// ---------------------------------------------------------------------------------------
// 8. portshare show servicestate
// ---------------------------------------------------------------------------------------

#[test]
fn show_servicestate_json_lists_the_listener_prefix_queue_and_process() {
    let d = Daemon::start();
    let (app, port) = hello_on_free_port(&d, "shown", &["/s/"], &[]);
    let mut cmd = Command::new(portshare_bin());
    cmd.args(["show", "servicestate", "--json", "--control"])
        .arg(&d.control);
    let (code, stdout, stderr) = run_to_exit(cmd, &d.dir.0, 20);
    assert_eq!(code, Some(0), "{stderr}");
    let state: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    let address = format!("127.0.0.1:{port}");
    assert!(
        state["listeners"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["address"] == address.as_str())),
        "{state}"
    );
    let prefix = format!("http://+:{port}/s/");
    assert!(
        state["prefixes"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| {
                p["url"]
                    .as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(&prefix))
                    && p["queue"] == "shown"
            })),
        "{state}"
    );
    let queue = state["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "shown"))
        .unwrap_or_else(|| panic!("no queue `shown`: {state}"));
    assert_eq!(queue["processes"][0]["pid"], app.proc.child.id(), "{state}");
    assert!(
        queue["processes"][0]["command"]
            .as_str()
            .is_some_and(|c| c.contains("hello")),
        "{state}"
    );
    assert!(
        queue["urls"].as_array().is_some_and(|u| u
            .iter()
            .any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(&prefix)))),
        "{state}"
    );
}

// ---------------------------------------------------------------------------------------
// 9. Draining
// ---------------------------------------------------------------------------------------

#[test]
fn a_worker_drains_on_sigterm_and_its_registration_goes() {
    let d = Daemon::start();
    let (mut app, port) = hello_on_free_port(&d, "drained", &["/d/"], &[]);
    assert_eq!(get(port, "x", "/d/1").0, 200);
    let status = app.proc.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "hello did not exit 0 on SIGTERM: {status:?}\n{}",
        app.proc.log_text()
    );
    assert!(
        eventually(5, || d.state()["prefixes"]
            .as_array()
            .is_some_and(|p| p.is_empty())),
        "registration still there: {}",
        d.state()
    );
    assert!(d.state()["queues"].as_array().is_some_and(|q| q.is_empty()));
    assert!(eventually(5, || port_free(port)), "port not released");
}

#[test]
fn a_draining_worker_finishes_the_request_in_hand() {
    let d = Daemon::start();
    let port = free_port();
    let mut slow = App::start(
        &d.control,
        "slow_worker",
        "slowdrain",
        &[&format!("http://+:{port}/s/")],
        &["--delay-ms", "5000"],
    );
    let client = std::thread::spawn(move || get(port, "x", "/s/held"));
    assert!(
        eventually(10, || d.state()["queues"][0]["in_flight"] == 1),
        "{}",
        d.state()
    );
    // Still in hand when the worker is told to drain.
    assert!(!client.is_finished());
    let status = slow.proc.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "slow_worker did not exit 0: {status:?}\n{}",
        slow.proc.log_text()
    );
    let (code, _, body) = client.join().expect("client");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "name=slowdrain path=/s/held\n");
    assert!(
        eventually(5, || d.state()["prefixes"]
            .as_array()
            .is_some_and(|p| p.is_empty())),
        "{}",
        d.state()
    );
}

// ---------------------------------------------------------------------------------------
// 10. Error pages
// ---------------------------------------------------------------------------------------

/// Sends `request` on a new connection and checks what every page HTTP.sys writes has:
/// the status line, the content type, `Connection: close`, and the close itself. Returns
/// the head and the body.
fn refused(port: u16, request: &[u8], status_line: &str) -> (String, String) {
    let mut c = connect(port);
    c.write_all(request).expect("send");
    let mut buf = Vec::new();
    let (_, head, body) = read_response(&mut c, &mut buf, false);
    assert!(head.starts_with(&format!("{status_line}\r\n")), "{head}");
    assert_eq!(
        header_value(&head, "Content-Type"),
        Some("text/html; charset=us-ascii"),
        "{head}"
    );
    assert_eq!(header_value(&head, "Connection"), Some("close"), "{head}");
    assert!(header_value(&head, "Date").is_some(), "{head}");
    assert!(header_value(&head, "Server").is_some(), "{head}");
    assert_closed(&mut c, &buf);
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn error_pages_are_http_sys_pages_and_close_the_connection() {
    let d = Daemon::start();
    let (_app, port) = hello_on_free_port(&d, "pages", &["/app/"], &[]);

    // A target over MaxFieldLength (16384): 414.
    let long = format!("GET /app/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(16400));
    refused(port, long.as_bytes(), "HTTP/1.1 414 Request URL Too Long");

    // A bad Host: 400 Invalid Hostname, byte for byte.
    let (head, body) = refused(
        port,
        b"GET /app/x HTTP/1.1\r\nHost: [bad\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    let want = http_sys_page(
        "Bad Request",
        "Bad Request - Invalid Hostname",
        400,
        "The request hostname is invalid.",
    );
    assert_eq!(want.len(), 334);
    assert_eq!(body, want);
    assert_eq!(header_value(&head, "Content-Length"), Some("334"), "{head}");

    // A path nobody registered on a port that is: 404, byte for byte.
    let (head, body) = refused(
        port,
        b"GET /nothing/here HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/1.1 404 Not Found",
    );
    let want = http_sys_page(
        "Not Found",
        "Not Found",
        404,
        "The requested resource is not found.",
    );
    assert_eq!(want.len(), 315);
    assert_eq!(body, want);
    assert_eq!(header_value(&head, "Content-Length"), Some("315"), "{head}");
}

/// Sessions have no idle timeout: an app that registers and then says nothing on its
/// control connection for longer than any HTTP server default (hyper's header timeout is
/// 30 s) keeps its registrations.
#[test]
fn a_quiet_control_session_keeps_its_registrations() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({ "name": "quiet" }));
    let port = free_port();
    assert_eq!(ctl.add_url("quiet", &format!("http://+:{port}/")).0, 201);
    std::thread::sleep(Duration::from_secs(35));
    let state = d.state();
    assert_eq!(
        state["prefixes"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    let (status, body) = ctl.call("GET", "/v1/state", None);
    assert_eq!(status, 200, "{body}");
}

/// A worker gets no more requests than the slots it declared: the rest wait in the queue,
/// and go to the worker as its slots free.
#[test]
fn a_worker_never_holds_more_than_its_slots() {
    let d = Daemon::start();
    let port = free_port();
    let prefix = format!("http://+:{port}/s/");
    let _slow = App::start(
        &d.control,
        "slow_worker",
        "slots",
        &[&prefix],
        &["--delay-ms", "1500", "--workers", "2"],
    );
    let clients: Vec<_> = (0..5)
        .map(|i| std::thread::spawn(move || get(port, "x", &format!("/s/{i}"))))
        .collect();
    assert!(
        eventually(5, || {
            let q = &d.state()["queues"][0];
            q["in_flight"] == 2 && q["depth"] == 3
        }),
        "{}",
        d.state()
    );
    // Never more than two at once, until every request is answered.
    while !clients.iter().all(JoinHandle::is_finished) {
        let q = &d.state()["queues"][0];
        assert!(q["in_flight"].as_u64().unwrap_or(0) <= 2, "{q}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in clients {
        let (status, _, body) = c.join().expect("client");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(d.state()["queues"][0]["counters"]["delivered"], 5);
}

/// An upstream that answers at once and then echoes the body as it arrives: the daemon must
/// keep reading the client's body while the response streams, or both sides wait forever.
#[test]
fn an_upstream_streaming_its_answer_while_the_body_arrives() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let up_port = up.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = Vec::new();
        let _head = read_head(&mut s, &mut buf);
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("head");
        // Echo each chunk of the (chunked) request body as a chunk of the response.
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(end) = find(&buf, b"\r\n") {
                let size = usize::from_str_radix(
                    std::str::from_utf8(&buf[..end]).expect("ascii").trim(),
                    16,
                )
                .expect("chunk size");
                if buf.len() < end + 2 + size + 2 {
                    break;
                }
                let data = buf[end + 2..end + 2 + size].to_vec();
                buf.drain(..end + 2 + size + 2);
                s.write_all(format!("{size:x}\r\n").as_bytes())
                    .expect("echo");
                s.write_all(&data).expect("echo");
                s.write_all(b"\r\n").expect("echo");
                if size == 0 {
                    return;
                }
            }
            let n = s.read(&mut chunk).expect("read body");
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    });
    let dir = TempDir::new("stream-up");
    let port = free_port();
    let _d = daemon_with_upstream(dir, port, &format!("127.0.0.1:{up_port}"));
    let mut c = connect(port);
    c.write_all(b"POST /legacy/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    let mut buf = Vec::new();
    let head = read_head(&mut c, &mut buf);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // One piece at a time: each comes back before the next is sent.
    for piece in ["first", "second", "third"] {
        c.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .expect("piece");
        let want = format!("{:x}\r\n{piece}\r\n", piece.len());
        let deadline = Instant::now() + Duration::from_secs(10);
        while find(&buf, want.as_bytes()).is_none() {
            assert!(Instant::now() < deadline, "no echo of {piece}: {buf:?}");
            let mut chunk = [0u8; 4096];
            let n = c.read(&mut chunk).expect("read echo");
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        let at = find(&buf, want.as_bytes()).expect("found") + want.len();
        buf.drain(..at);
    }
    c.write_all(b"0\r\n\r\n").expect("end");
    server.join().expect("upstream");
}
