//! Upstream queues from the configuration file: forwarding to a loopback TCP or Unix-socket
//! server (the cooked path and raw query, the daemon's own forwarding headers, keep-alive,
//! bodies of every framing), an upstream that is not loopback refused at start with its key
//! named, `Expect: 100-continue` through an upstream, and an answer streaming back while the
//! request body still arrives. Then the relay against upstreams that misbehave on purpose
//! ([`Scripted`]): the query as received, interim responses, bodiless responses that lie
//! about their length, close-delimited and chunked bodies, ambiguous or endless heads (502),
//! stale pooled connections (GET retried, POST never resent), hop-by-hop fields, upgrades
//! (bytes both ways, half-close, h2c refused, closed at the daemon's stop), an upstream gone
//! mid-body, and `strip_prefix`.

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

/// A daemon forwarding `/legacy/` on a free port to `up`, with `extra` lines in its queue.
fn relay_daemon(tag: &str, up: &Scripted, extra: &str) -> (Daemon, u16) {
    let addr = up.addr.clone();
    let extra = extra.to_string();
    Daemon::builder().tag(tag).spawn_on_free_port(move |port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n[[queue]]\nname = \"legacy\"\n\
                 urls = [\"http://+:{port}/legacy/\"]\nupstream = \"{addr}\"\n{extra}"
        )
    })
}

/// Answers with `text` as it is and keeps the connection.
fn answer(x: &mut Exchange<'_>, text: &[u8]) -> bool {
    x.s.write_all(text).expect("answer");
    true
}

#[test]
fn the_query_reaches_the_upstream_as_received() {
    let up = Scripted::start(|x| answer(x, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let (_d, port) = relay_daemon("relay-raw", &up, "");
    let mut c = connect(port);
    c.write_all(b"GET /legacy/a%41\"<>?q=\"<>&r=\xff\xfe%zz#frag HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"ok"[..]), "{head}");
    let heads = up.heads.lock().expect("heads").clone();
    let line = &heads[0][..find(&heads[0], b"\r\n").expect("a line")];
    // The path as routing cooked it; the query (and what follows a `#`) byte for byte.
    assert!(
        line.starts_with(b"GET /legacy/aA")
            && line.ends_with(b"?q=\"<>&r=\xff\xfe%zz#frag HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(line)
    );
    let raw = String::from_utf8_lossy(&heads[0]).to_ascii_lowercase();
    assert!(
        raw.contains("portshare-raw-url: /legacy/a%41\"<>?q=\"<>&r="),
        "{raw}"
    );
}

#[test]
fn interim_responses_come_before_the_final_one() {
    let up = Scripted::start(|x| {
        answer(
            x,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
    });
    let (_d, port) = relay_daemon("relay-1xx", &up, "");
    let mut c = connect(port);
    c.write_all(b"GET /legacy/hints HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut buf = Vec::new();
    let hints = read_head(&mut c, &mut buf);
    assert!(hints.starts_with("HTTP/1.1 103 "), "{hints}");
    assert_eq!(header_value(&hints, "Link"), Some("</s.css>; rel=preload"));
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"ok"[..]), "{head}");
    assert!(!head.contains("100 Continue"), "{head}");
    // An HTTP/1.0 client gets the final response alone.
    let mut c = connect(port);
    c.write_all(b"GET /legacy/hints HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"ok"[..]), "{head}");
}

#[test]
fn head_204_and_304_have_no_body_whatever_the_upstream_says() {
    let up = Scripted::start(|x| {
        let text: &[u8] = if x.head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        } else if x.head.contains("/none") {
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
        } else if x.head.contains("/same") {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
        };
        answer(x, text)
    });
    let (_d, port) = relay_daemon("relay-bodiless", &up, "");
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = Vec::new();
    c.write_all(b"HEAD /legacy/h HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, head, _) = read_response(&mut c, &mut buf, true);
    assert_eq!(status, 200, "{head}");
    assert_eq!(header_value(&head, "Content-Length"), Some("10"), "{head}");
    for (target, want) in [("/legacy/none", 204), ("/legacy/same", 304)] {
        write!(c, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let (status, head, body) = read_response(&mut c, &mut buf, true);
        assert_eq!(status, want, "{head}");
        assert!(body.is_empty());
    }
    // The connections on both sides are still in step.
    c.write_all(b"GET /legacy/after HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"next"[..]), "{head}");
    assert!(buf.is_empty(), "bytes past the response: {buf:?}");
}

#[test]
fn a_close_delimited_body_is_framed_for_the_client() {
    let up = Scripted::start(|x| {
        x.s.write_all(b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nhello ")
            .expect("head");
        std::thread::sleep(Duration::from_millis(50));
        x.s.write_all(b"world").expect("rest");
        false
    });
    let (_d, port) = relay_daemon("relay-close", &up, "");
    let mut c = connect(port);
    let mut buf = Vec::new();
    for _ in 0..2 {
        // Chunked for an HTTP/1.1 client, whose connection goes on.
        c.write_all(b"GET /legacy/c HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let (status, head, body) = read_response(&mut c, &mut buf, false);
        assert_eq!((status, &body[..]), (200, &b"hello world"[..]), "{head}");
        assert_eq!(header_value(&head, "Transfer-Encoding"), Some("chunked"));
    }
    // Delimited by the close for an HTTP/1.0 one.
    let mut c = connect(port);
    c.write_all(b"GET /legacy/c HTTP/1.0\r\n\r\n")
        .expect("send");
    let all = read_until_close(&mut c, "the response");
    let text = String::from_utf8_lossy(&all.bytes);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nhello world"),
        "{text}"
    );
}

#[test]
fn chunked_bodies_stream_both_ways() {
    let up = Scripted::start(|x| {
        let body = x.body();
        let framing = if x
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            "chunked"
        } else {
            "length"
        };
        x.s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("head");
        for part in [framing.as_bytes(), b":", &body] {
            write!(x.s, "{:x}\r\n", part.len()).expect("size");
            x.s.write_all(part).expect("data");
            x.s.write_all(b"\r\n").expect("end");
        }
        answer(x, b"0\r\nX-Trailer: t\r\n\r\n")
    });
    let (_d, port) = relay_daemon("relay-chunked", &up, "");
    let mut c = connect(port);
    let mut buf = Vec::new();
    c.write_all(
        b"POST /legacy/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n",
    )
    .expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"chunked:abcdefgh");
    c.write_all(b"POST /legacy/up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz")
        .expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"length:wxyz");
    let second = &up.heads()[1].to_ascii_lowercase();
    assert_eq!(
        second.matches("content-length: 4\r\n").count(),
        1,
        "{second}"
    );
    assert!(!second.contains("transfer-encoding"), "{second}");
}

#[test]
fn differing_content_lengths_from_an_upstream_get_502() {
    let up = Scripted::start(|x| {
        if x.conn == 0 {
            x.s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!")
                .expect("answer");
            // The daemon closes the connection: nothing more comes.
            let mut b = [0u8; 64];
            assert_eq!(
                x.s.read(&mut b).unwrap_or(0),
                0,
                "the connection was reused"
            );
            return false;
        }
        answer(x, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    });
    let (d, port) = relay_daemon("relay-502", &up, "");
    let (status, head, _) = http_raw(port, b"GET /legacy/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 502, "{head}");
    assert_eq!(header_value(&head, "Connection"), Some("close"), "{head}");
    let (status, _, _) = http_raw(port, b"GET /legacy/y HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        eventually(10, || d.errlog_text().contains("502 - Bad_Gateway")),
        "no 502 line: {}",
        d.errlog_text()
    );
}

#[test]
fn a_stale_pooled_connection_is_retried_for_get_and_never_for_post() {
    // Each connection answers its first request and closes on its second without a word:
    // a pooled connection the upstream let go as the request went out.
    let count = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        usize,
        usize,
    >::new()));
    let per_conn = count.clone();
    let up = Scripted::start(move |x| {
        let n = {
            let mut m = per_conn.lock().expect("counts");
            let n = m.entry(x.conn).or_insert(0);
            *n += 1;
            *n
        };
        if n == 1 {
            answer(x, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        } else {
            false
        }
    });
    let (_d, port) = relay_daemon("relay-stale", &up, "");
    let mut c = connect(port);
    let mut buf = Vec::new();
    for target in ["/legacy/one", "/legacy/two"] {
        write!(c, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let (status, head, body) = read_response(&mut c, &mut buf, false);
        assert_eq!((status, &body[..]), (200, &b"ok"[..]), "{target}: {head}");
    }
    let heads = up.heads();
    assert_eq!(
        heads
            .iter()
            .filter(|h| h.starts_with("GET /legacy/two"))
            .count(),
        2,
        "{heads:?}"
    );
    // The connection that took the retry is pooled now, and closes on the POST.
    c.write_all(b"POST /legacy/three HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .expect("send");
    let (status, head, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 502, "{head}");
    std::thread::sleep(Duration::from_millis(200));
    let heads = up.heads();
    assert_eq!(
        heads.iter().filter(|h| h.starts_with("POST")).count(),
        1,
        "a POST was sent again: {heads:?}"
    );
}

#[test]
fn hop_by_hop_headers_are_dropped_both_ways() {
    let up = Scripted::start(|x| {
        answer(
            x,
            b"HTTP/1.1 200 OK\r\nConnection: X-Up-Private\r\nX-Up-Private: 1\r\n\
              Keep-Alive: timeout=5\r\nTrailer: X-T\r\nProxy-Connection: x\r\nUpgrade: foo\r\n\
              X-Up-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
        )
    });
    let (_d, port) = relay_daemon("relay-hop", &up, "");
    let mut c = connect(port);
    c.write_all(
        b"GET /legacy/h HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Private\r\n\
          X-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X-T\r\n\
          Proxy-Connection: x\r\nX-Kept: 1\r\n\r\n",
    )
    .expect("send");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    let got = head.to_ascii_lowercase();
    for gone in [
        "x-up-private",
        "keep-alive",
        "trailer",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(!got.contains(gone), "{gone} reached the client:\n{head}");
    }
    assert!(got.contains("x-up-kept: 1"), "{head}");
    let sent = up.heads()[0].to_ascii_lowercase();
    for gone in [
        "x-private",
        "keep-alive",
        "\r\nte:",
        "trailer",
        "proxy-connection",
        "connection",
    ] {
        assert!(!sent.contains(gone), "{gone} reached the upstream:\n{sent}");
    }
    assert!(sent.contains("x-kept: 1"), "{sent}");
}

#[test]
fn an_accepted_upgrade_passes_bytes_both_ways_until_each_side_closes() {
    let up = Scripted::start(|x| {
        let lower = x.head.to_ascii_lowercase();
        assert!(lower.contains("connection: upgrade\r\n"), "{lower}");
        assert!(lower.contains("upgrade: echo\r\n"), "{lower}");
        x.s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nHELLO")
            .expect("101");
        // Echo until the client's end, then say goodbye and close.
        let mut pending = std::mem::take(x.rest);
        let mut chunk = [0u8; 4096];
        loop {
            if !pending.is_empty() {
                x.s.write_all(&pending).expect("echo");
                pending.clear();
            }
            match x.s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
        x.s.write_all(b"BYE").expect("bye");
        false
    });
    let (_d, port) = relay_daemon("relay-upgrade", &up, "");
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(
        b"GET /legacy/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nEARLY",
    )
    .expect("send");
    let mut buf = Vec::new();
    let head = read_head(&mut c, &mut buf);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(header_value(&head, "Upgrade"), Some("echo"), "{head}");
    let want = |c: &mut std::net::TcpStream, buf: &mut Vec<u8>, text: &[u8]| {
        let mut chunk = [0u8; 4096];
        while find(buf, text).is_none() {
            let n = c.read(&mut chunk).expect("read");
            assert!(n > 0, "closed before {text:?}: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
        let at = find(buf, text).expect("found") + text.len();
        buf.drain(..at);
    };
    want(&mut c, &mut buf, b"HELLO");
    want(&mut c, &mut buf, b"EARLY");
    c.write_all(b"ping").expect("ping");
    want(&mut c, &mut buf, b"ping");
    // Half-close: the client's end reaches the upstream, which still answers.
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let rest = read_until_close(&mut c, "the goodbye");
    assert_eq!(rest.bytes, b"BYE");
    assert!(!rest.reset);
}

#[test]
fn an_h2c_upgrade_is_served_as_a_plain_request() {
    let up = Scripted::start(|x| answer(x, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let (_d, port) = relay_daemon("relay-h2c", &up, "");
    let mut c = connect(port);
    c.write_all(
        b"GET /legacy/plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .expect("send");
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"ok"[..]), "{head}");
    let sent = up.heads()[0].to_ascii_lowercase();
    for gone in ["upgrade", "h2c", "http2-settings"] {
        assert!(!sent.contains(gone), "{gone} reached the upstream:\n{sent}");
    }
}

#[test]
fn an_upstream_gone_mid_body_resets_the_client() {
    let up = Scripted::start(|x| {
        x.s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
            .expect("answer");
        false
    });
    let (_d, port) = relay_daemon("relay-cut", &up, "");
    let mut c = connect(port);
    c.write_all(b"GET /legacy/cut HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let got = read_until_close(&mut c, "the cut response");
    let text = String::from_utf8_lossy(&got.bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(got.reset, "the client was not reset: {text}");
}

#[test]
fn strip_prefix_forwards_the_target_without_the_prefix() {
    let up = Scripted::start(|x| answer(x, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let (_d, port) = relay_daemon("relay-strip", &up, "strip_prefix = true\n");
    let mut c = connect(port);
    let mut buf = Vec::new();
    for target in ["/legacy/a/b?x=1", "/legacy", "/LEGACY/?y"] {
        write!(c, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let (status, head, _) = read_response(&mut c, &mut buf, false);
        assert_eq!(status, 200, "{target}: {head}");
    }
    let heads = up.heads();
    let lines: Vec<&str> = heads
        .iter()
        .map(|h| h.lines().next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        [
            "GET /a/b?x=1 HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /?y HTTP/1.1"
        ]
    );
    for h in &heads {
        assert_eq!(
            header_value(h, "X-Forwarded-Prefix"),
            Some("/legacy"),
            "{h}"
        );
    }
}

#[test]
fn an_opaque_connection_ends_at_the_end_of_a_stop() {
    let up = Scripted::start(|x| {
        x.s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .expect("101");
        // Holds the connection open, silent, until the daemon closes it.
        let mut chunk = [0u8; 4096];
        while matches!(x.s.read(&mut chunk), Ok(n) if n > 0) {}
        false
    });
    let (mut d, port) = relay_daemon("relay-stop", &up, "\n[timers]\nshutdown = 2\n");
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c.write_all(
        b"GET /legacy/ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .expect("send");
    let mut buf = Vec::new();
    let head = read_head(&mut c, &mut buf);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Held through the stop until the shutdown timer (2 s) runs out, then closed.
    let status = d.proc.terminate().expect("the daemon stopped in time");
    assert!(status.success(), "{status:?}");
    let rest = read_until_close(&mut c, "the end of the opaque connection");
    assert!(rest.bytes.is_empty(), "{:?}", rest.bytes);
}

#[test]
fn a_response_head_that_never_ends_gets_502_at_64_kib() {
    let up = Scripted::start(|x| {
        x.s.write_all(b"HTTP/1.1 200 OK\r\nX-Long: ").expect("head");
        // More than the bound, and no end: the daemon must stop reading and answer.
        let filler = [b'a'; 8192];
        for _ in 0..16 {
            if x.s.write_all(&filler).is_err() {
                break;
            }
        }
        let mut chunk = [0u8; 64];
        while matches!(x.s.read(&mut chunk), Ok(n) if n > 0) {}
        false
    });
    let (_d, port) = relay_daemon("relay-long-head", &up, "");
    let (status, head, _) = http_raw(port, b"GET /legacy/long HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 502, "{head}");
}

#[test]
fn strip_prefix_is_for_upstream_queues_only() {
    let (d, _port) = Daemon::builder()
        .tag("relay-strip-api")
        .spawn_on_free_port(|_| "iplisten = [\"127.0.0.1\"]\n".to_string());
    let mut ctl = d.ctl();
    let (status, body) = ctl.call(
        "POST",
        "/v1/queues",
        Some(serde_json::json!({ "name": "plain", "mode": "create", "strip_prefix": true })),
    );
    assert_eq!((status, body["code"].as_u64()), (400, Some(87)), "{body}");
    let up = ctl.create_queue(serde_json::json!({
        "name": "fwd", "mode": "create", "upstream": "127.0.0.1:9", "strip_prefix": true
    }));
    assert!(up.is_object(), "{up}");
    // The configuration file is checked alike, the key named.
    let dir = TempDir::new("relay-strip-config");
    let file = dir.0.join("bad.toml");
    std::fs::write(
        &file,
        "[[queue]]\nname = \"plain\"\nurls = [\"http://+:8080/p/\"]\nstrip_prefix = true\n",
    )
    .expect("write");
    let out = Command::new(portshare_bin())
        .args(["check-config", &file.display().to_string()])
        .output()
        .expect("portshare runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("strip_prefix"), "{err}");
}

#[test]
fn an_early_answer_from_an_upstream_that_stops_reading_reaches_the_client() {
    let up = Scripted::start(|x| {
        x.s.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig",
        )
        .expect("answer");
        // Gone without reading the body: the daemon's writes fail.
        false
    });
    let (_d, port) = relay_daemon("relay-early", &up, "");
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let size = 4 << 20;
    write!(
        c,
        "POST /legacy/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
    )
    .expect("head");
    // The body, as far as the daemon takes it; the answer is read after.
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    c.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while sent < size && c.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (413, &b"big"[..]), "{head}");
}

#[test]
fn an_upgrade_the_upstream_declines_leaves_the_connection_http() {
    let up = Scripted::start(|x| answer(x, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"));
    let (_d, port) = relay_daemon("relay-declined", &up, "");
    let mut c = connect(port);
    let mut buf = Vec::new();
    c.write_all(
        b"GET /legacy/ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .expect("send");
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"no"[..]), "{head}");
    // A `#` in the path is the path's, re-encoded by routing.
    c.write_all(b"GET /legacy/a#b HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, head, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    let heads = up.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(heads[1].lines().next(), Some("GET /legacy/a%23b HTTP/1.1"));
}
