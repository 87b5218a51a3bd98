//! HTTP/1.1 exchanges with an application: what it is given (the daemon's metadata, never a
//! client's spoof of it; a repeated header once, its values joined), pipelined requests,
//! keep-alive and HTTP/1.0, `Expect: 100-continue`, and HTTP.sys's answers to malformed
//! requests and its error pages, byte for byte.

use std::io::Write;
use std::time::Duration;

use crate::harness::*;

#[test]
fn spoofed_metadata_and_forwarding_headers_never_reach_an_app() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello(
        "echo",
        &[&format!("http://+:{port}/e/")],
        &["--echo-headers"],
    );
    let req = b"GET /e/x?q=1 HTTP/1.1\r\nHost: h\r\nPortshare-Client-Addr: 6.6.6.6:1\r\nportshare-url-prefix: evil\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Kept: yes\r\nConnection: close\r\n\r\n";
    let (status, _, body) = http_raw(port, req);
    let body = String::from_utf8_lossy(&body).to_lowercase();
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("6.6.6.6") && !body.contains("evil"),
        "{body}"
    );
    assert!(body.contains("x-kept: yes"), "{body}");
    assert!(body.contains("portshare-client-addr: 127.0.0.1:"), "{body}");
    assert!(
        body.contains(&format!("portshare-url-prefix: http://+:{port}/e/")),
        "{body}"
    );
    assert!(body.contains("portshare-raw-url: /e/x?q=1"), "{body}");
}

#[test]
fn a_repeated_header_reaches_the_app_once_with_its_values_joined() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello(
        "echo",
        &[&format!("http://+:{port}/e/")],
        &["--echo-headers"],
    );
    let req = b"GET /e/ HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nAccept: text/html\r\nx-a: 2\r\nX-A: 3\r\nConnection: close\r\n\r\n";
    let (status, _, body) = http_raw(port, req);
    let body = String::from_utf8_lossy(&body).to_lowercase();
    assert_eq!(status, 200, "{body}");
    let lines: Vec<&str> = body.lines().filter(|l| l.starts_with("x-a:")).collect();
    assert_eq!(lines, ["x-a: 1, 2, 3"], "{body}");
    assert!(body.contains("accept: text/html"), "{body}");
}

#[test]
fn pipelined_requests_are_answered_in_order_and_bodies_stream() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello("p", &[&format!("http://+:{port}/p/")], &[]);
    let mut c = connect(port);
    c.write_all(
        b"GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p/2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /p/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .expect("write");
    let mut buf = Vec::new();
    for n in 1..=3 {
        let (status, _, body) = read_response(&mut c, &mut buf, false);
        assert_eq!(status, 200);
        let body = String::from_utf8_lossy(&body).into_owned();
        assert!(body.ends_with(&format!("path=/p/{n}\n")), "{body}");
    }
}

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
fn malformed_requests_get_http_sys_answers() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello("m", &[&format!("http://+:{port}/")], &[]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(20000)
    );
    for (request, status, heading, reason) in [
        (
            &b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"[..],
            505,
            "HTTP Version Not Supported",
            "Version_N/S",
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            400,
            "Bad Request - Invalid Hostname",
            "Hostname",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
            411,
            "Length Required",
            "LengthRequired",
        ),
        // The head passes MaxRequestBytes (16384) before its one field passes
        // MaxFieldLength.
        (
            big.as_bytes(),
            400,
            "Bad Request - Request Too Long",
            "RequestLength",
        ),
    ] {
        let (s, head, body) = http_raw(port, request);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(s, status, "{head}");
        assert!(body.contains(&format!("<h2>{heading}</h2>")), "{body}");
        assert!(head.contains("\r\nServer: portshare/"), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(
            eventually(5, || d.log().contains(&format!(" {status} - {reason} -"))),
            "no {reason} line in the error log:\n{}",
            d.log()
        );
    }
}

/// `limits.disable_server_header` is HTTP.sys's `DisableServerHeader`: 0 puts the daemon's
/// token everywhere, 1 takes it off the daemon's own pages, 2 off every response.
#[test]
fn disable_server_header_takes_the_token_off_pages_then_everything() {
    for (value, on_page, on_app) in [(0, true, true), (1, false, true), (2, false, false)] {
        let d = Daemon::builder()
            .config(format!("[limits]\ndisable_server_header = {value}\n"))
            .spawn();
        let (_app, port) = hello_on_free_port(&d, "srv", &["/app/"], &[]);
        let (status, head, _) = http_raw(
            port,
            b"GET /app/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200, "{head}");
        assert_eq!(
            header_value(&head, "Server").is_some(),
            on_app,
            "{value}: {head}"
        );
        let (status, head, _) = http_raw(port, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 404, "{head}");
        assert_eq!(
            header_value(&head, "Server").is_some(),
            on_page,
            "{value}: {head}"
        );
    }
}

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
