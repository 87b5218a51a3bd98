//! Large bodies both ways, streamed through an application and through an upstream without
//! a byte changed (Content-Length and chunked), and an upload past an application's limit
//! answered, with the connection still usable after it.

use std::io::Write;
use std::net::TcpListener;

use crate::harness::*;

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
