//! HTTP/2 and https end to end: the real daemon with `[[sslcert]]` bindings, SDK apps
//! (`hello`, `axum_app`), hand-driven workers and an upstream, and three clients: the `h2`
//! crate over tokio-rustls, `curl` and `h2load` (when installed; under `CI=true` their
//! absence fails the tests), and a raw frame writer for the rapid-reset defence.
//!
//! ALPN's choice, the metadata an application gets, bodies streamed both ways, many
//! streams on one connection, routing by `:authority`, refusals (404, 503, 421) with
//! their pages and error-log lines, GOAWAY on a graceful stop, the worker leaving while
//! the client's window is shut, and `Expect: 100-continue`.

use std::future::poll_fn;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use portshare_proto::wire::{self, Frame, ResponseHead};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::harness::{
    AnyListener, App, Daemon, EchoServer, Echoed, Scripted, TempDir, WireWorker, eventually,
    free_port, pattern,
};
use crate::tls::{AnyCert, Cert, cert, pair, provider};

/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(20);

/// A runtime for a test's clients.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A daemon whose configuration holds `sslcert(port)` for a free port, and that port.
/// Nothing is registered yet: the port is bound when an app registers on it.
fn https_daemon(tag: &str, sslcert: impl Fn(u16) -> String) -> (Daemon, u16) {
    let port = free_port();
    let d = Daemon::builder()
        .tag(tag)
        .config(format!("iplisten = [\"127.0.0.1\"]\n\n{}", sslcert(port)))
        .spawn();
    (d, port)
}

/// A certificate for a.example in `dir`, and the daemon serving it on a free port with
/// `params` added to its `[[sslcert]]` table.
fn a_site(tag: &str, params: &str) -> (TempDir, Cert, Daemon, u16) {
    let dir = TempDir::new(tag);
    let a = cert(&dir.0, "a", &["a.example"]);
    let (d, port) = https_daemon(tag, |port| {
        pair(
            &format!("hostnameport = \"a.example:{port}\"\n{params}"),
            &a,
        )
    });
    (dir, a, d, port)
}

/// A TLS connection to 127.0.0.1:`port` with SNI `sni`, offering `alpn`.
async fn tls_connect(port: u16, sni: &str, alpn: &[&str]) -> TlsStream<TcpStream> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("a name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("a handshake in time")
        .expect("a handshake")
}

/// The protocol ALPN chose.
fn alpn_of(s: &TlsStream<TcpStream>) -> String {
    String::from_utf8_lossy(s.get_ref().1.alpn_protocol().unwrap_or_default()).into_owned()
}

/// An HTTP/2 connection (ALPN `h2`, checked) and the task that drives it.
async fn h2_open(
    port: u16,
    sni: &str,
) -> (
    SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let io = tls_connect(port, sni, &["h2", "http/1.1"]).await;
    assert_eq!(alpn_of(&io), "h2");
    let (send, conn) = timeout(WAIT, h2::client::handshake(io))
        .await
        .expect("an h2 handshake in time")
        .expect("an h2 handshake");
    (send, tokio::spawn(conn))
}

fn get(authority: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("https://{authority}{path}"))
        .body(())
        .expect("a request")
}

/// The whole body, its window opened as it comes.
async fn body_of(resp: http::Response<h2::RecvStream>) -> (http::response::Parts, Vec<u8>) {
    let (parts, mut body) = resp.into_parts();
    let mut all = Vec::new();
    while let Some(chunk) = timeout(WAIT, body.data()).await.expect("body in time") {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    (parts, all)
}

/// One bodiless request on `send` and its whole response.
async fn fetch(
    send: &SendRequest<Bytes>,
    req: http::Request<()>,
) -> (http::response::Parts, Vec<u8>) {
    let mut send = timeout(WAIT, send.clone().ready())
        .await
        .expect("ready in time")
        .expect("the connection is up");
    let (resp, _) = send.send_request(req, true).expect("sent");
    let resp = timeout(WAIT, resp)
        .await
        .expect("a response in time")
        .expect("a response");
    body_of(resp).await
}

/// An HTTP/1.1 request over an open TLS connection, with `Connection: close`: the
/// response's bytes as they came.
async fn http1(io: &mut TlsStream<TcpStream>, host: &str, target: &str) -> String {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await.expect("send");
    let mut all = Vec::new();
    let mut buf = [0u8; 16384];
    // The end of the stream, or the end of TLS without close_notify: either ends it.
    while let Ok(Ok(n)) = timeout(WAIT, io.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// The lines of the error log that hold every one of `needles`, once one does (10 s).
fn errlog_lines(d: &Daemon, needles: &[&str]) -> Vec<String> {
    let found = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    };
    eventually(10, || !found(&d.errlog_text()).is_empty());
    found(&d.errlog_text())
}

/// `hello` on `https://a.example:PORT/app/` (the explicit-host category), echoing headers.
fn hello_a(d: &Daemon, port: u16) -> App {
    d.hello(
        "a",
        &[&format!("https://a.example:{port}/app/")],
        &["--echo-headers"],
    )
}

#[test]
fn alpn_picks_h2_when_the_client_offers_it() {
    let (_dir, _a, d, port) = a_site("h2-alpn", "");
    let _app = hello_a(&d, port);
    runtime().block_on(async {
        let io = tls_connect(port, "a.example", &["h2", "http/1.1"]).await;
        assert_eq!(alpn_of(&io), "h2");
        let (send, _conn) = h2_open(port, "a.example").await;
        let (parts, body) = fetch(&send, get("a.example", "/app/x")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.version, http::Version::HTTP_2);
        let body = String::from_utf8_lossy(&body).into_owned();
        assert!(body.contains("portshare-tls: "), "{body}");
        assert!(body.contains("; alpn=h2\n"), "{body}");
    });
}

#[test]
fn alpn_picks_http11_when_the_client_offers_only_that() {
    let (_dir, _a, d, port) = a_site("h2-alpn11", "");
    let _app = hello_a(&d, port);
    runtime().block_on(async {
        let mut io = tls_connect(port, "a.example", &["http/1.1"]).await;
        assert_eq!(alpn_of(&io), "http/1.1");
        let text = http1(&mut io, "a.example", "/app/x").await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("; alpn=http/1.1\n"), "{text}");
        // No ALPN at all: HTTP/1.1 too.
        let mut io = tls_connect(port, "a.example", &[]).await;
        assert_eq!(alpn_of(&io), "");
        let text = http1(&mut io, "a.example", "/app/x").await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    });
}

#[test]
fn a_binding_with_http2_off_serves_http11_to_a_client_that_prefers_h2() {
    let (_dir, _a, d, port) = a_site("h2-off", "http2 = false");
    let _app = hello_a(&d, port);
    runtime().block_on(async {
        let mut io = tls_connect(port, "a.example", &["h2", "http/1.1"]).await;
        assert_eq!(alpn_of(&io), "http/1.1");
        let text = http1(&mut io, "a.example", "/app/x").await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    });
}

/// The `portshare-*` lines of hello's answer, each `name: value`, without those that
/// differ from one connection to the next (the client's port, the request id) and with
/// `portshare-tls` cut before its `alpn=`.
fn metadata(answer: &str) -> Vec<String> {
    let mut lines: Vec<String> = answer
        .lines()
        .filter(|l| l.starts_with("portshare-"))
        .filter(|l| {
            !l.starts_with("portshare-client-addr") && !l.starts_with("portshare-request-id")
        })
        .map(|l| match l.find("; alpn=") {
            Some(i) => l[..i].to_owned(),
            None => l.to_owned(),
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_stream_reaches_the_app_with_the_metadata_http1_gives_and_its_answer_comes_back() {
    let (_dir, _a, d, port) = a_site("h2-meta", "");
    let _app = hello_a(&d, port);
    runtime().block_on(async {
        let mut io = tls_connect(port, "a.example", &["http/1.1"]).await;
        let over_1 = http1(&mut io, "a.example", "/app/x?q=1").await;
        let (head1, answer1) = over_1.split_once("\r\n\r\n").expect("a head");
        let (send, _conn) = h2_open(port, "a.example").await;
        let (parts, body) = fetch(&send, get("a.example", "/app/x?q=1")).await;
        let answer2 = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(parts.status, 200);
        assert_eq!(
            parts.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/plain"[..])
        );
        assert_eq!(
            parts
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some(answer2.len().to_string().as_str())
        );
        assert!(parts.headers.contains_key("date"));
        assert!(
            head1
                .to_ascii_lowercase()
                .contains("content-type: text/plain")
        );
        // The same first line and the same metadata, but for the protocol.
        assert_eq!(answer1.lines().next(), answer2.lines().next());
        assert_eq!(
            metadata(answer1),
            metadata(&answer2),
            "{answer1}\n{answer2}"
        );
        let prefix = format!("portshare-url-prefix: https://a.example:{port}/app/");
        assert!(
            answer2.lines().any(|l| l.eq_ignore_ascii_case(&prefix)),
            "{answer2}"
        );
        assert!(answer2.contains("; sni=a.example; alpn=h2\n"), "{answer2}");
        assert!(
            answer1.contains("; sni=a.example; alpn=http/1.1\n"),
            "{answer1}"
        );
        // HTTP/2's own fields are not the application's: the head is HTTP/1.1's.
        assert!(!answer2.contains(":authority"), "{answer2}");
        assert!(answer2.contains("\nhost: a.example\n"), "{answer2}");
    });
}

/// Sends `body` on `send` as the peer's window allows, in pieces of at most 64 KiB.
async fn send_body(send: &mut h2::SendStream<Bytes>, mut body: Bytes) {
    while !body.is_empty() {
        send.reserve_capacity(body.len().min(64 * 1024));
        let got = timeout(WAIT, poll_fn(|cx| send.poll_capacity(cx)))
            .await
            .expect("window in time")
            .expect("the stream is open")
            .expect("capacity");
        let n = got.min(body.len());
        let part = body.split_to(n);
        send.send_data(part, body.is_empty()).expect("send data");
    }
}

#[test]
fn a_large_request_body_streams_to_the_app_and_a_large_response_streams_back() {
    let (_dir, _a, d, port) = a_site("h2-large", "");
    let _axum = App::start(
        &d.control,
        "axum_app",
        "",
        &[&format!("https://a.example:{port}/axum/")],
        &[],
    );
    // Over 1 MiB, under axum's 2 MB default limit.
    let sent = Bytes::from(pattern(1536 * 1024, 7));
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let mut send = timeout(WAIT, send.ready())
            .await
            .expect("ready")
            .expect("up");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://a.example:{port}/axum/echo"))
            .header("content-type", "application/octet-stream")
            .body(())
            .expect("a request");
        let (resp, mut out) = send.send_request(req, false).expect("sent");
        send_body(&mut out, sent.clone()).await;
        let resp = timeout(WAIT, resp)
            .await
            .expect("a response in time")
            .expect("a response");
        let (parts, got) = body_of(resp).await;
        assert_eq!(parts.status, 200);
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the body came back changed");
    });
}

#[test]
fn fifty_concurrent_streams_on_one_connection_are_all_answered() {
    let (_dir, _a, d, port) = a_site("h2-many", "");
    let _app = hello_a(&d, port);
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let send = send.clone();
            tasks.spawn(async move {
                let (parts, body) = fetch(&send, get("a.example", &format!("/app/{i}"))).await;
                (i, parts.status, String::from_utf8_lossy(&body).into_owned())
            });
        }
        let mut answered = 0;
        while let Some(r) = timeout(WAIT, tasks.join_next()).await.expect("in time") {
            let (i, status, body) = r.expect("a task");
            assert_eq!(status, 200, "{body}");
            assert!(body.contains(&format!(" path=/app/{i}\n")), "{body}");
            answered += 1;
        }
        assert_eq!(answered, 50);
    });
}

#[test]
fn authority_routes_streams_of_one_connection_to_two_apps() {
    let dir = TempDir::new("h2-authority");
    let a = cert(&dir.0, "a", &["a.example"]);
    let b = cert(&dir.0, "b", &["b.example"]);
    let (d, port) = https_daemon("h2-authority", |port| {
        pair(&format!("hostnameport = \"a.example:{port}\""), &a)
            + &pair(&format!("hostnameport = \"b.example:{port}\""), &b)
    });
    let _a = d.hello("a", &[&format!("https://a.example:{port}/")], &[]);
    let _b = d.hello("b", &[&format!("https://b.example:{port}/")], &[]);
    runtime().block_on(async {
        for sni in ["a.example", "b.example"] {
            let (send, _conn) = h2_open(port, sni).await;
            // SNI and Host need not agree (HTTP.sys's default): `:authority` routes.
            for (authority, name) in [
                (format!("a.example:{port}"), "a"),
                (format!("B.EXAMPLE:{port}"), "b"),
                ("a.example".to_owned(), "a"),
            ] {
                let (parts, body) = fetch(&send, get(&authority, "/x")).await;
                let body = String::from_utf8_lossy(&body).into_owned();
                assert_eq!(parts.status, 200, "{body}");
                assert!(
                    body.starts_with(&format!("name={name} ")),
                    "{sni} {authority}: {body}"
                );
            }
        }
    });
}

#[test]
fn a_404_and_a_503_over_h2_carry_the_page_and_an_http2_error_log_line() {
    let (_dir, _a, d, port) = a_site("h2-refusals", "");
    let _app = hello_a(&d, port);
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({"name": "off", "verbosity": "limited", "enabled": false}));
    let (status, body) = ctl.add_url("off", &format!("https://a.example:{port}/off/"));
    assert_eq!(status, 201, "{body}");
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let (parts, body) = fetch(&send, get("a.example", "/nobody/here")).await;
        let page = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(parts.status, 404, "{page}");
        assert!(page.contains("<h2>Not Found</h2>"), "{page}");
        assert_eq!(
            parts.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/html; charset=us-ascii"[..])
        );
        // The stream ends, the connection goes on.
        let (parts, body) = fetch(&send, get("a.example", "/off/x")).await;
        let page = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(parts.status, 503, "{page}");
        assert!(page.contains("Service Unavailable"), "{page}");
        let (parts, _) = fetch(&send, get("a.example", "/app/")).await;
        assert_eq!(parts.status, 200);
    });
    let line = errlog_lines(&d, &["/nobody/here"]);
    assert_eq!(line.len(), 1, "{}", d.errlog_text());
    assert!(
        line[0].contains(" HTTP/2.0 GET /nobody/here 404 - NotFound"),
        "{}",
        line[0]
    );
    let line = errlog_lines(&d, &["/off/x"]);
    assert_eq!(line.len(), 1, "{}", d.errlog_text());
    assert!(
        line[0].contains(" HTTP/2.0 GET /off/x 503 ") && line[0].contains("Disabled"),
        "{}",
        line[0]
    );
}

#[test]
fn require_sni_match_over_h2_answers_another_authority_with_421() {
    let (_dir, _a, d, port) = a_site("h2-421", "require_sni_match = true");
    let _app = d.hello("a", &[&format!("https://+:{port}/app/")], &[]);
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let (parts, _) = fetch(&send, get(&format!("a.example:{port}"), "/app/")).await;
        assert_eq!(parts.status, 200);
        let (parts, body) = fetch(&send, get("other.example", "/app/")).await;
        let page = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(parts.status, 421, "{page}");
        assert!(page.contains("Misdirected Request"), "{page}");
        // The connection goes on.
        let (parts, _) = fetch(&send, get("a.example", "/app/")).await;
        assert_eq!(parts.status, 200);
    });
    let line = errlog_lines(&d, &["421 - Misdirected"]);
    assert!(line[0].contains(" HTTP/2.0 GET /app/ "), "{}", line[0]);
}

/// A queue `w` on `https://a.example:PORT/w/` with a worker speaking the wire by hand.
fn wire_queue(d: &Daemon, port: u16) -> (crate::harness::Ctl, WireWorker) {
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({"name": "w"}));
    let (status, body) = ctl.add_url("w", &format!("https://a.example:{port}/w/"));
    assert_eq!(status, 201, "{body}");
    let worker = WireWorker::attach(&d.control, "w", 8);
    (ctl, worker)
}

fn respond(worker: &mut WireWorker, stream: u32, status: u16, body: &[u8]) {
    let head = ResponseHead {
        status,
        headers: vec![(Bytes::from_static(b"x-from"), Bytes::from_static(b"wire"))],
    };
    worker
        .send(|o| {
            head.encode(o, stream, body.is_empty());
            if !body.is_empty() {
                wire::encode_data(o, stream, true, body);
            }
        })
        .expect("respond");
}

/// Waits (at most [`WAIT`]) until the daemon's GOAWAY (`NO_ERROR`) is in: the client
/// then opens no new stream.
async fn goaway_seen(send: &SendRequest<Bytes>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match send.clone().ready().await {
            Err(e) => {
                assert!(
                    e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR),
                    "{e:?}"
                );
                return;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "no GOAWAY within {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[test]
fn a_graceful_stop_sends_goaway_and_lets_an_open_stream_finish() {
    let (_dir, _a, mut d, port) = a_site("h2-stop", "");
    let (_ctl, mut worker) = wire_queue(&d, port);
    let rt = runtime();
    let (send, conn) = rt.block_on(h2_open(port, "a.example"));
    let mut ready = rt
        .block_on(async { timeout(WAIT, send.clone().ready()).await })
        .expect("ready")
        .expect("up");
    let (open, _) = ready
        .send_request(get("a.example", "/w/slow"), true)
        .expect("sent");
    let stream = worker.next_head();
    let pid = d.proc.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    // The worker is told to drain; the daemon waits for the open stream.
    assert!(
        std::iter::from_fn(|| worker.frame()).any(|f| f == Frame::Drain),
        "the worker was not told to drain"
    );
    rt.block_on(async {
        goaway_seen(&send).await;
    });
    respond(&mut worker, stream, 200, b"done");
    rt.block_on(async {
        let resp = timeout(WAIT, open)
            .await
            .expect("in time")
            .expect("the open stream's response");
        let (parts, body) = body_of(resp).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, b"done");
        drop(ready);
        drop(send);
        // A clean end: GOAWAY, then the close, not a broken connection.
        timeout(WAIT, conn)
            .await
            .expect("the connection ends")
            .expect("the task")
            .expect("a clean close after GOAWAY");
    });
    let deadline = Instant::now() + WAIT;
    let exited = loop {
        if let Ok(Some(status)) = d.proc.child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        exited.is_some_and(|s| s.success()),
        "{exited:?}\n{}",
        d.log()
    );
}

#[test]
fn an_upstream_queue_gets_http11_with_the_https_scheme() {
    let dir = TempDir::new("h2-upstream");
    let a = cert(&dir.0, "a", &["a.example"]);
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let _echo = EchoServer::start(AnyListener::Tcp(up));
    let (_d, port) = Daemon::builder()
        .tag("h2-upstream")
        .spawn_on_free_port(|port| {
            format!(
                "iplisten = [\"127.0.0.1\"]\n\n{}\n[[queue]]\nname = \"s\"\n\
             urls = [\"https://+:{port}/s/\"]\nupstream = \"127.0.0.1:{up_port}\"\n",
                pair(&format!("hostnameport = \"a.example:{port}\""), &a)
            )
        });
    let sent = Bytes::from(pattern(300 * 1024, 3));
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let req = http::Request::builder()
            .uri(format!("https://a.example:{port}/s/x?y=1"))
            .header("x-forwarded-proto", "http")
            .body(())
            .expect("a request");
        let (parts, body) = fetch(&send, req).await;
        assert_eq!(parts.status, 200);
        let e = Echoed::parse(&body);
        assert!(e.request_line.ends_with(" HTTP/1.1"), "{}", e.request_line);
        assert_eq!(e.one("x-forwarded-proto"), "https");
        assert!(
            e.one("forwarded").contains("proto=https"),
            "{:?}",
            e.headers
        );
        assert!(
            e.one("portshare-tls").ends_with("; alpn=h2"),
            "{:?}",
            e.headers
        );
        // A body streamed through to the upstream, and back.
        let mut ready = send.clone().ready().await.expect("up");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://a.example:{port}/s/post"))
            .body(())
            .expect("a request");
        let (resp, mut out) = ready.send_request(req, false).expect("sent");
        send_body(&mut out, sent.clone()).await;
        let resp = timeout(WAIT, resp)
            .await
            .expect("in time")
            .expect("a response");
        let (parts, body) = body_of(resp).await;
        assert_eq!(parts.status, 200);
        let e = Echoed::parse(&body);
        assert!(e.body == sent, "the body reached the upstream changed");
    });
}

/// The relay over HTTP/2: a close-delimited answer arrives whole, a HEAD answer has no
/// body, and a head with two different lengths gets 502.
#[test]
fn an_upstream_behind_h2_is_relayed_with_the_same_framing_rules() {
    let dir = TempDir::new("h2-relay");
    let a = cert(&dir.0, "a", &["a.example"]);
    let up = Scripted::start(|x| {
        let text: &[u8] = if x.head.contains("/close") {
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
        } else if x.head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"
        };
        std::io::Write::write_all(x.s, text).expect("answer");
        !x.head.contains("/close")
    });
    let up_addr = up.addr.clone();
    let (_d, port) = Daemon::builder()
        .tag("h2-relay")
        .spawn_on_free_port(|port| {
            format!(
                "iplisten = [\"127.0.0.1\"]\n\n{}\n[[queue]]\nname = \"s\"\n\
             urls = [\"https://+:{port}/s/\"]\nupstream = \"{up_addr}\"\n",
                pair(&format!("hostnameport = \"a.example:{port}\""), &a)
            )
        });
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let get = |path: &str, method: &str| {
            http::Request::builder()
                .method(method)
                .uri(format!("https://a.example:{port}/s/{path}"))
                .body(())
                .expect("a request")
        };
        let (parts, body) = fetch(&send, get("close", "GET")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, b"until the end");
        let (parts, body) = fetch(&send, get("head", "HEAD")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["content-length"], "10");
        assert!(body.is_empty());
        let (parts, _) = fetch(&send, get("two-lengths", "GET")).await;
        assert_eq!(parts.status, 502);
    });
}

/// An upstream that answers one request only when told: the request's head goes out on
/// the first channel, and the answer waits for a word on the second.
fn held_upstream() -> (
    u16,
    std::sync::mpsc::Receiver<String>,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let port = l.local_addr().expect("addr").port();
    let (head_tx, head_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(WAIT));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while crate::harness::find(&buf, b"\r\n\r\n").is_none() {
            match s.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let _ = head_tx.send(String::from_utf8_lossy(&buf).into_owned());
        if go_rx.recv_timeout(WAIT).is_ok() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
            // Held open until the daemon lets go.
            let _ = s.read(&mut chunk);
        }
    });
    (port, head_rx, go_tx, thread)
}

#[test]
fn a_graceful_stop_lets_an_open_stream_to_an_upstream_finish() {
    let dir = TempDir::new("h2-stop-up");
    let a = cert(&dir.0, "a", &["a.example"]);
    let (up_port, heads, go, upstream) = held_upstream();
    let (mut d, port) = Daemon::builder()
        .tag("h2-stop-up")
        .spawn_on_free_port(|port| {
            format!(
                "iplisten = [\"127.0.0.1\"]\n\n{}\n[[queue]]\nname = \"s\"\n\
             urls = [\"https://+:{port}/s/\"]\nupstream = \"127.0.0.1:{up_port}\"\n",
                pair(&format!("hostnameport = \"a.example:{port}\""), &a)
            )
        });
    let rt = runtime();
    let (send, conn) = rt.block_on(h2_open(port, "a.example"));
    let mut ready = rt
        .block_on(async { timeout(WAIT, send.clone().ready()).await })
        .expect("ready")
        .expect("up");
    let (open, _) = ready
        .send_request(get("a.example", "/s/slow"), true)
        .expect("sent");
    let head = heads
        .recv_timeout(WAIT)
        .expect("the request reached the upstream");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("GET /s/slow HTTP/1.1\r\n"), "{head}");
    assert!(lower.contains("\r\nx-forwarded-proto: https\r\n"), "{head}");
    let pid = d.proc.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    rt.block_on(async {
        goaway_seen(&send).await;
    });
    go.send(()).expect("the upstream waits");
    rt.block_on(async {
        let resp = timeout(WAIT, open)
            .await
            .expect("in time")
            .expect("the open stream's response");
        let (parts, body) = body_of(resp).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, b"done");
        drop(ready);
        drop(send);
        timeout(WAIT, conn)
            .await
            .expect("the connection ends")
            .expect("the task")
            .expect("a clean close after GOAWAY");
    });
    assert!(eventually(20, || matches!(
        d.proc.child.try_wait(),
        Ok(Some(_))
    )));
    let _ = upstream.join();
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ENHANCE_YOUR_CALM: u32 = 11;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET https://a.example/app/` as an HPACK block, without Huffman coding or indexing.
fn request_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    for (index, value) in [(4u8, &b"/app/"[..]), (1, b"a.example")] {
        b.push(index); // :path, :authority: literal, indexed name, not indexed
        b.push(value.len() as u8);
        b.extend_from_slice(value);
    }
    b
}

#[test]
fn rapid_reset_over_tls_gets_goaway_and_the_daemon_serves_another_client() {
    let (_dir, _a, d, port) = a_site("h2-rapid", "");
    let _app = hello_a(&d, port);
    runtime().block_on(async {
        let io = tls_connect(port, "a.example", &["h2"]).await;
        assert_eq!(alpn_of(&io), "h2");
        let (mut rd, mut wr) = tokio::io::split(io);
        // The server's frames until it closes: the GOAWAY code, if one came.
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16384];
            let mut goaway = None;
            loop {
                while buf.len() >= 9 {
                    let len = (usize::from(buf[0]) << 16)
                        | (usize::from(buf[1]) << 8)
                        | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    if buf[3] == GOAWAY && len >= 8 {
                        let p = &buf[9..17];
                        goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                    }
                    buf.drain(..9 + len);
                }
                match timeout(WAIT, rd.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return goaway,
                }
            }
        });
        let block = request_block();
        let started = Instant::now();
        let mut pairs = 0u32;
        let mut open = PREFACE.to_vec();
        open.extend(frame(SETTINGS, 0, 0, &[]));
        let mut write_ok = timeout(WAIT, wr.write_all(&open))
            .await
            .is_ok_and(|r| r.is_ok());
        // HEADERS then RST_STREAM (CANCEL), in batches of 100, at most 5,000 and 20 s.
        while write_ok && pairs < 5000 && started.elapsed() < WAIT && !reader.is_finished() {
            let mut batch = Vec::new();
            for _ in 0..100 {
                let id = 2 * pairs + 1;
                batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
                pairs += 1;
            }
            write_ok = timeout(Duration::from_secs(5), wr.write_all(&batch))
                .await
                .is_ok_and(|r| r.is_ok());
        }
        let goaway = timeout(WAIT, reader)
            .await
            .expect("closed in time")
            .expect("task");
        assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "after {pairs} resets");
        // The daemon still serves another client.
        let (send, _conn) = h2_open(port, "a.example").await;
        let (parts, _) = fetch(&send, get("a.example", "/app/")).await;
        assert_eq!(parts.status, 200);
    });
}

/// Whether `tool` runs here (`tool --version`). Under CI=true its absence fails the test;
/// elsewhere the test says so and passes.
fn tool_available(tool: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            !under_ci(),
            "{tool} is not installed and CI=true: .ci/run installs it (apt-get install {package})"
        );
        println!("skipped: {tool} is not installed (apt-get install {package})");
    }
    found
}

/// Runs `cmd` to its end, killed after `secs`: its exit success, stdout and stderr.
fn run_bounded(cmd: &mut Command, secs: u64) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_speaks_h2_and_http11_to_the_same_port() {
    if !tool_available("curl", "curl") {
        return;
    }
    let (_dir, a, d, port) = a_site("h2-curl", "");
    let _app = hello_a(&d, port);
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out, err) = run_bounded(
            Command::new("curl")
                .args(["-sS", "--max-time", "20", flag, "--resolve"])
                .arg(format!("a.example:{port}:127.0.0.1"))
                .arg("--cacert")
                .arg(&a.crt)
                .args(["-w", "\n%{http_version} %{http_code}"])
                .arg(format!("https://a.example:{port}/app/c")),
            30,
        );
        assert!(ok, "curl {flag}: {err}");
        assert!(out.starts_with("name=a prefix="), "{out}");
        assert!(out.ends_with(&format!("\n{version} 200")), "{flag}: {out}");
    }
}

#[test]
fn h2load_gets_every_answer() {
    if !tool_available("h2load", "nghttp2-client") {
        return;
    }
    let dir = TempDir::new("h2-h2load");
    let a = cert(&dir.0, "a", &["a.example"]);
    // h2load names the address, so no SNI: the address's binding serves it.
    let (d, port) = https_daemon("h2-h2load", |port| {
        pair(&format!("ipport = \"127.0.0.1:{port}\""), &a)
    });
    let _app = d.hello("a", &[&format!("https://+:{port}/app/")], &[]);
    let (ok, out, err) = run_bounded(
        Command::new("h2load")
            .args(["-n", "200", "-c", "4", "-m", "10"])
            .arg(format!("https://127.0.0.1:{port}/app/h2load")),
        60,
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed"),
        "{out}"
    );
    assert!(out.contains("status codes: 200 2xx"), "{out}");
}

#[test]
fn a_worker_leaving_while_the_client_window_is_shut_resets_the_stream_at_once() {
    let (_dir, _a, d, port) = a_site("h2-leave", "");
    let (_ctl, mut worker) = wire_queue(&d, port);
    let rt = runtime();
    let (send, _conn) = rt.block_on(h2_open(port, "a.example"));
    let mut ready = rt
        .block_on(async { timeout(WAIT, send.clone().ready()).await })
        .expect("ready")
        .expect("up");
    let (resp, _) = ready
        .send_request(get("a.example", "/w/big"), true)
        .expect("sent");
    let stream = worker.next_head();
    // More than the client's window (64 KiB), within the worker's (256 KiB).
    let head = ResponseHead {
        status: 200,
        headers: vec![(
            Bytes::from_static(b"content-length"),
            Bytes::from_static(b"1048576"),
        )],
    };
    worker
        .send(|o| {
            head.encode(o, stream, false);
            wire::encode_data(o, stream, false, &pattern(200 * 1024, 1));
        })
        .expect("respond");
    let resp = rt
        .block_on(async { timeout(WAIT, resp).await })
        .expect("in time")
        .expect("a response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The client reads what its window let through and opens it no further.
    let got = rt.block_on(async {
        let mut got = 0;
        while got < 60 * 1024 {
            match timeout(WAIT, body.data()).await.expect("data in time") {
                Some(Ok(chunk)) => got += chunk.len(),
                other => panic!("the body ended early: {other:?}"),
            }
        }
        got
    });
    // The worker leaves. Its response will never be finished: the stream is reset now,
    // not when MinSendRate would cut it (a minute and more at 150 bytes/s).
    let left = Instant::now();
    drop(worker);
    let end = rt.block_on(async {
        loop {
            match timeout(WAIT, body.data()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => break Ok(e),
                Ok(None) => break Err("the body ended cleanly".to_owned()),
                Err(_) => break Err(format!("no reset within {WAIT:?}")),
            }
        }
    });
    let e = end.unwrap_or_else(|why| panic!("{why} after {got} bytes"));
    assert!(e.is_reset(), "{e}");
    assert!(left.elapsed() < WAIT);
    let line = errlog_lines(&d, &["Connection_Abandoned_By_ReqQueue"]);
    assert!(line[0].contains(" HTTP/2.0 GET /w/big "), "{}", line[0]);
    drop(ready);
}

#[test]
fn expect_100_continue_over_h2_gets_100_once_the_app_has_the_request() {
    let (_dir, _a, d, port) = a_site("h2-continue", "");
    let _axum = App::start(
        &d.control,
        "axum_app",
        "",
        &[&format!("https://a.example:{port}/axum/")],
        &[],
    );
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let mut ready = timeout(WAIT, send.ready())
            .await
            .expect("ready")
            .expect("up");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://a.example:{port}/axum/echo"))
            .header("expect", "100-continue")
            .header("content-length", "5")
            .body(())
            .expect("a request");
        let (mut resp, mut out) = ready.send_request(req, false).expect("sent");
        // The body waits for the 100.
        let interim = timeout(WAIT, poll_fn(|cx| resp.poll_informational(cx)))
            .await
            .expect("an interim response in time")
            .expect("an interim response")
            .expect("a good one");
        assert_eq!(interim.status(), 100);
        out.send_data(Bytes::from_static(b"hello"), true)
            .expect("body");
        let resp = timeout(WAIT, resp)
            .await
            .expect("in time")
            .expect("a response");
        let (parts, body) = body_of(resp).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, b"hello");
    });
}

#[test]
fn streams_get_access_log_lines_as_http1_requests_do() {
    let dir = TempDir::new("h2-access");
    let a = cert(&dir.0, "a", &["a.example"]);
    let folder = dir.0.join("access");
    let (d, port) = https_daemon("h2-access", |port| {
        format!(
            "{}\n[access_log]\nenabled = true\nfolder = {:?}\n",
            pair(&format!("hostnameport = \"a.example:{port}\"\n"), &a),
            folder.display().to_string()
        )
    });
    let _app = hello_a(&d, port);
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({"name": "off", "verbosity": "limited", "enabled": false}));
    let (status, body) = ctl.add_url("off", &format!("https://a.example:{port}/off/"));
    assert_eq!(status, 201, "{body}");
    runtime().block_on(async {
        let (send, _conn) = h2_open(port, "a.example").await;
        let (parts, _) = fetch(&send, get("a.example", "/app/x?y=1")).await;
        assert_eq!(parts.status, 200);
        let (parts, _) = fetch(&send, get("a.example", "/off/z")).await;
        assert_eq!(parts.status, 503);
        // Not routed: no line.
        let (parts, _) = fetch(&send, get("a.example", "/nobody/")).await;
        assert_eq!(parts.status, 404);
    });
    let lines = || -> Vec<String> {
        std::fs::read_dir(&folder)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(
        eventually(10, || lines().len() >= 2),
        "{:?}\n{}",
        lines(),
        d.log()
    );
    let got = lines();
    assert_eq!(got.len(), 2, "{got:?}");
    let fields = |l: &str| l.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let served = fields(&got[0]);
    let refused = fields(&got[1]);
    let port = port.to_string();
    assert_eq!(
        [
            &served[3],
            &served[4],
            &served[5],
            &served[6],
            &served[10],
            &served[11],
            &served[13]
        ],
        ["GET", "/app/x", "y=1", port.as_str(), "200", "0", "a"],
        "{got:?}"
    );
    assert_eq!(
        [
            &refused[4],
            &refused[5],
            &refused[10],
            &refused[11],
            &refused[13]
        ],
        ["/off/z", "-", "503", "0", "off"],
        "{got:?}"
    );
}
