//! Upstream queues from the configuration file: forwarding to a loopback TCP or Unix-socket
//! server (the cooked path and raw query, the daemon's own forwarding headers, keep-alive,
//! bodies of every framing), an upstream that is not loopback refused at start with its key
//! named, `Expect: 100-continue` through an upstream, and an answer streaming back while the
//! request body still arrives.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

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

#[test]
fn a_config_upstream_that_is_no_address_stops_the_daemon_with_the_key_named() {
    let dir = TempDir::new("bad-config");
    let port = free_port();
    for (bad, why) in [
        ("0.0.0.0:9000", "no server's address"),
        ("127.0.0.1:0", "no server's address"),
        ("localhost:80", "expected unix:/path or IP:port"),
        ("unix:run/a.sock", "absolute path"),
    ] {
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
            stderr.contains("upstream") && stderr.contains(bad) && stderr.contains(why),
            "{bad}: the message should name the key, the value and why:\n{stderr}"
        );
        assert!(port_free(port), "{bad}: the port was bound anyway");
    }
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
