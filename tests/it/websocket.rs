//! WebSockets and other upgrades (spec §16): an axum app using `WebSocketUpgrade`
//! unchanged, through the SDK, echoing small and 10 MB messages and a thousand sockets at
//! once; the app killed mid-message and the daemon stopping; and, with workers speaking
//! the wire by hand, what the daemon refuses: a `101` from a version 1 worker, to a request
//! that did not ask, or to h2c, and upgrades past the queue's `max_opaque`.
//!
//! Every socket is on 127.0.0.1 or the daemon's control socket; every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;
use futures_util::{SinkExt, StreamExt};
use portshare_proto::wire::{self, Frame, RequestHead, ResetCode, ResponseHead};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The ws_echo example on `http://+:PORT/ws_echo/`.
fn echo_app(d: &Daemon, port: u16) -> App {
    App::start(
        &d.control,
        "ws_echo",
        "",
        &[&format!("http://+:{port}/ws_echo/")],
        &[],
    )
}

/// A WebSocket client connected to the echo through the daemon.
async fn open(port: u16) -> Ws {
    open_at(port, "/ws_echo/ws").await
}

/// A WebSocket client connected to `target` through the daemon on `port`.
pub(crate) async fn open_at(port: u16, target: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let url = format!("ws://127.0.0.1:{port}{target}");
    let (ws, response) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("the WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// Sends `message` and returns the next data message that comes back.
pub(crate) async fn round_trip(ws: &mut Ws, message: Message) -> Message {
    ws.send(message).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => return m,
            Ok(Some(Ok(_))) => {}
            other => panic!("no echo: {other:?}"),
        }
    }
}

/// The queue `name`'s entry in the state view.
fn queue_state(d: &Daemon, name: &str) -> serde_json::Value {
    d.state()["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no queue {name} in the state view"))
}

/// The queue `name`'s opaque connections; 0 once the queue is gone (its app's session
/// closed).
pub(crate) fn opaque(d: &Daemon, name: &str) -> u64 {
    d.state()["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == name))
        .map_or(0, |q| q["opaque"].as_u64().expect("opaque"))
}

/// A WebSocket handshake by hand, for tests that need the raw socket after it.
pub(crate) fn raw_upgrade(port: u16, target: &str) -> TcpStream {
    let mut s = connect(port);
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("write");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut s, &mut buf, false);
    assert_eq!(status, 101, "{head}");
    assert!(
        header_value(&head, "sec-websocket-accept") == Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert!(buf.is_empty());
    s
}

#[test]
fn an_axum_websocket_echoes_through_the_daemon() {
    let d = Daemon::start();
    let port = free_port();
    let _app = echo_app(&d, port);
    // The page at `/` is plain HTTP, through the same app.
    let (status, _, body) = get(port, "x", "/ws_echo/");
    assert_eq!(status, 200);
    assert!(body.contains("WebSocket"), "{body}");

    let rt = runtime();
    let mut ws = rt.block_on(open(port));
    let back = rt.block_on(round_trip(&mut ws, Message::text("hello")));
    assert_eq!(back, Message::text("hello"));
    let back = rt.block_on(round_trip(&mut ws, Message::binary(vec![0u8, 1, 2, 255])));
    assert_eq!(back, Message::binary(vec![0u8, 1, 2, 255]));
    // The socket holds its slot and counts as opaque until it closes, in the state view
    // and in `show servicestate`.
    assert_eq!(opaque(&d, "ws_echo"), 1);
    assert_eq!(queue_state(&d, "ws_echo")["in_flight"], 1);
    let shown = std::process::Command::new(portshare_bin())
        .args(["show", "servicestate", "--control"])
        .arg(&d.control)
        .env_remove("PORTSHARE_CONTROL")
        .output()
        .expect("portshare runs");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("        Opaque connections: 1\n")
            && text.contains("        Max opaque connections: 10000\n"),
        "{text}"
    );
    rt.block_on(async {
        ws.close(None).await.expect("close");
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
    });
    // The app closed its side after the close handshake; the client closes its own.
    drop(ws);
    assert!(eventually(10, || opaque(&d, "ws_echo") == 0));
    assert!(eventually(10, || queue_state(&d, "ws_echo")["in_flight"] == 0));
}

#[test]
fn ten_megabyte_messages_go_both_ways() {
    let d = Daemon::start();
    let port = free_port();
    let _app = echo_app(&d, port);
    let rt = runtime();
    rt.block_on(async {
        let mut ws = open(port).await;
        for seed in [1, 2] {
            let big = pattern(10 << 20, seed);
            let started = std::time::Instant::now();
            let back = round_trip(&mut ws, Message::binary(big.clone())).await;
            // Printed, never asserted: the machine is shared.
            eprintln!("10 MB there and back in {:?}", started.elapsed());
            assert!(
                back.into_data() == big,
                "the 10 MB message changed on the way"
            );
        }
        ws.close(None).await.expect("close");
    });
}

#[test]
fn a_thousand_sockets_at_once() {
    const SOCKETS: usize = 1000;
    // The test holds a thousand sockets, and so does the daemon: it raises its process's
    // limit on open files (which the daemons of the tests beside it would inherit), in a
    // process of its own.
    if !alone_in_a_process(module_path!(), "a_thousand_sockets_at_once") {
        return;
    }
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < 4096 {
        assert!(
            hard >= 4096,
            "the hard limit on open files ({hard}) is below 4096"
        );
        setrlimit(Resource::RLIMIT_NOFILE, 4096, hard).expect("setrlimit");
    }
    let d = Daemon::start();
    let port = free_port();
    let _app = echo_app(&d, port);
    let rt = runtime();
    let rss_before = vm_rss_kib(d.proc.child.id());
    let started = std::time::Instant::now();
    let sockets = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..SOCKETS {
            tasks.spawn(async move {
                let mut ws = open(port).await;
                let text = format!("socket {i}");
                let back = round_trip(&mut ws, Message::text(text.clone())).await;
                assert_eq!(back, Message::text(text));
                ws
            });
        }
        let mut sockets = Vec::with_capacity(SOCKETS);
        let all = tokio::time::timeout(Duration::from_secs(180), async {
            while let Some(ws) = tasks.join_next().await {
                sockets.push(ws.expect("a socket's task"));
            }
        });
        all.await.expect("a thousand sockets within 3 minutes");
        sockets
    });
    assert_eq!(sockets.len(), SOCKETS);
    eprintln!(
        "{SOCKETS} sockets opened and echoed once in {:?}; the daemon's RSS grew by {} KiB",
        started.elapsed(),
        vm_rss_kib(d.proc.child.id()).saturating_sub(rss_before)
    );
    assert_eq!(opaque(&d, "ws_echo"), SOCKETS as u64);
    drop(sockets);
    drop(rt);
    assert!(eventually(30, || opaque(&d, "ws_echo") == 0));
}

#[test]
fn the_app_killed_mid_message_ends_the_client_connection() {
    let d = Daemon::start();
    let port = free_port();
    let mut app = echo_app(&d, port);
    let mut s = raw_upgrade(port, "/ws_echo/ws");
    // A masked binary frame announcing 1000 bytes, of which 10 are sent.
    s.write_all(&[0x82, 0x80 | 126, 0x03, 0xe8, 1, 2, 3, 4])
        .expect("frame header");
    s.write_all(&[7; 10]).expect("part of the payload");
    assert!(eventually(10, || opaque(&d, "ws_echo") == 1));
    app.proc.kill();
    let end = read_until_close(&mut s, "the upgraded connection of a killed app");
    assert!(end.reset, "the connection is reset, not closed: {end:?}");
    assert!(end.bytes.is_empty(), "{end:?}");
    assert!(eventually(10, || opaque(&d, "ws_echo") == 0));
    // The daemon goes on: a new app serves the same URL.
    let _again = echo_app(&d, port);
    let rt = runtime();
    let mut ws = rt.block_on(open(port));
    let back = rt.block_on(round_trip(&mut ws, Message::text("still here")));
    assert_eq!(back, Message::text("still here"));
}

#[test]
fn a_graceful_stop_closes_opaque_connections_at_the_shutdown_timer() {
    let mut d = Daemon::builder()
        .tag("ws-stop")
        .config("iplisten = [\"127.0.0.1\"]\n\n[timers]\nshutdown = 2\n")
        .iplisten_from_config()
        .spawn();
    let port = free_port();
    let _app = echo_app(&d, port);
    let mut s = raw_upgrade(port, "/ws_echo/ws");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &d.proc.child.id().to_string()])
        .status();
    // Still open while the shutdown timer runs: a masked text frame "hi" echoes.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .expect("a frame while stopping");
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).expect("the echo while stopping");
    assert_eq!(echo, [0x81, 2, b'h', b'i']);
    // Closed once the timer has run out, and the daemon exits.
    let end = read_until_close(&mut s, "an opaque connection at the end of a stop");
    assert!(!end.reset, "closed, not reset: {end:?}");
    assert!(
        eventually(15, || matches!(d.proc.child.try_wait(), Ok(Some(_)))),
        "the daemon did not exit:\n{}",
        d.proc.log_text()
    );
}

/// A queue `name` on `ctl`'s session with `http://+:PORT/NAME/`, `props` among its
/// properties.
fn queue(ctl: &mut Ctl, name: &str, port: u16, props: serde_json::Value) {
    let mut spec = json!({ "name": name });
    if let (Some(spec), Some(props)) = (spec.as_object_mut(), props.as_object()) {
        spec.extend(props.clone());
    }
    ctl.create_queue(spec);
    let (status, body) = ctl.add_url(name, &format!("http://+:{port}/{name}/"));
    assert_eq!(status, 201, "{body}");
}

/// A daemon's queue `name` on `http://+:PORT/NAME/` with `props`, and a worker speaking
/// version 2 of the wire by hand attached to it. The control connection holds the queue.
fn v2_queue(d: &Daemon, name: &str, port: u16, props: serde_json::Value) -> (Ctl, WireWorker) {
    let mut ctl = d.ctl();
    queue(&mut ctl, name, port, props);
    let w = WireWorker::attach_offering(&d.control, name, 10, &wire::offer()).expect("attach v2");
    (ctl, w)
}

/// A client whose upgrade request (`extra` sent after its head) the worker accepts with
/// `101` to `test/1`: the client, past the `101` head it got, and its stream.
fn upgraded(w: &mut WireWorker, port: u16, name: &str, extra: &str) -> (TcpStream, u32) {
    let mut c = connect(port);
    write!(c, "GET /{name}/ {UPGRADE_REQUEST}{extra}").expect("write");
    let (stream, _) = next_request(w);
    switching(w, stream, "test/1");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 101, "{head}");
    assert_eq!(header_value(&head, "upgrade"), Some("test/1"), "{head}");
    assert_eq!(header_value(&head, "connection"), Some("upgrade"), "{head}");
    assert!(buf.is_empty());
    (c, stream)
}

/// The next request head, decoded.
fn next_request(w: &mut WireWorker) -> (u32, RequestHead) {
    loop {
        match w.frame() {
            Some(Frame::Head {
                stream, payload, ..
            }) => {
                return (
                    stream,
                    RequestHead::decode(payload).expect("a request head"),
                );
            }
            Some(_) => {}
            None => panic!("the daemon closed the worker connection before a request"),
        }
    }
}

/// The reset the daemon sends on `stream`, skipping other frames.
fn reset_of(w: &mut WireWorker, stream: u32) -> ResetCode {
    loop {
        match w.frame() {
            Some(Frame::Reset { stream: s, code }) if s == stream => return code,
            Some(_) => {}
            None => panic!("no reset of stream {stream}"),
        }
    }
}

/// The next `len` bytes of data frames on `stream`, skipping other frames.
fn data_of(w: &mut WireWorker, stream: u32, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match w.frame() {
            Some(Frame::Data {
                stream: s, data, ..
            }) if s == stream => got.extend_from_slice(&data),
            Some(_) => {}
            None => panic!("no data on stream {stream} (got {got:?})"),
        }
    }
    got
}

fn switching(w: &mut WireWorker, stream: u32, upgrade: &str) {
    let head = ResponseHead {
        status: 101,
        headers: vec![("Upgrade".into(), upgrade.to_owned().into())],
    };
    w.send(|b| head.encode(b, stream, false)).expect("send 101");
}

fn header<'h>(head: &'h RequestHead, name: &str) -> Option<&'h [u8]> {
    head.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| &v[..])
}

/// Sends `request` from a new client; the worker, seeing `offered` as the request's
/// `Upgrade`, answers 101 to `answer`: the daemon resets the stream (`Protocol`) and the
/// client's connection, which gets nothing.
fn refused_101(w: &mut WireWorker, port: u16, request: &[u8], offered: Option<&str>, answer: &str) {
    let mut c = connect(port);
    c.write_all(request).expect("write");
    let (stream, head) = next_request(w);
    assert_eq!(header(&head, "upgrade"), offered.map(str::as_bytes));
    switching(w, stream, answer);
    assert_eq!(reset_of(w, stream), ResetCode::Protocol);
    let end = read_until_close(&mut c, "a client whose request got a refused 101");
    assert!(end.reset && end.bytes.is_empty(), "{end:?}");
}

const UPGRADE_REQUEST: &str =
    "HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n";

#[test]
fn attach_negotiates_the_wire_version() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    queue(&mut ctl, "neg", free_port(), json!({}));
    let (status, head) = WireWorker::attach_offering(&d.control, "neg", 1, "portshare-worker/7")
        .err()
        .expect("no version in common is refused");
    assert_eq!(status, 400, "{head}");
    assert_eq!(
        header_value(&head, "upgrade"),
        Some("portshare-worker/2, portshare-worker/1"),
        "{head}"
    );
    for offer in [
        "portshare-worker/9, portshare-worker/2",
        "portshare-worker/1",
    ] {
        assert!(
            WireWorker::attach_offering(&d.control, "neg", 1, offer).is_ok(),
            "{offer}"
        );
    }
}

#[test]
fn a_101_from_a_version_1_worker_resets_the_request() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    queue(&mut ctl, "v1", port, json!({}));
    let mut w = WireWorker::attach(&d.control, "v1", 4);
    let request = format!("GET /v1/ {UPGRADE_REQUEST}");
    refused_101(&mut w, port, request.as_bytes(), Some("test/1"), "test/1");
}

#[test]
fn a_101_to_a_request_that_did_not_ask_is_refused() {
    let d = Daemon::start();
    let port = free_port();
    let (_ctl, mut w) = v2_queue(&d, "plain", port, json!({}));
    let request = b"GET /plain/ HTTP/1.1\r\nHost: x\r\n\r\n";
    refused_101(&mut w, port, request, None, "test/1");
}

#[test]
fn h2c_is_never_offered_and_a_101_to_it_is_refused() {
    let d = Daemon::start();
    let port = free_port();
    let (_ctl, mut w) = v2_queue(&d, "h2c", port, json!({}));
    // h2c alone: the application sees no offer, and its 101 is refused.
    let request = b"GET /h2c/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    refused_101(&mut w, port, request, None, "h2c");
    // h2c among others: the others are offered, and a 101 to h2c is still refused.
    let request =
        b"GET /h2c/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c, test/1\r\n\r\n";
    refused_101(&mut w, port, request, Some("test/1"), "h2c");
}

/// An application switches only to a protocol the client offered (RFC 9110 §7.8): a `101`
/// to another, or to one offered beside one that was not, is refused.
#[test]
fn a_101_to_a_protocol_the_client_did_not_offer_is_refused() {
    let d = Daemon::start();
    let port = free_port();
    let (_ctl, mut w) = v2_queue(&d, "other", port, json!({}));
    let request = format!("GET /other/ {UPGRADE_REQUEST}");
    refused_101(
        &mut w,
        port,
        request.as_bytes(),
        Some("test/1"),
        "websocket",
    );
    refused_101(
        &mut w,
        port,
        request.as_bytes(),
        Some("test/1"),
        "test/1, other",
    );
    // The one offered, in another case, is taken.
    let mut c = connect(port);
    c.write_all(request.as_bytes()).expect("write");
    let (stream, _) = next_request(&mut w);
    switching(&mut w, stream, "TEST/1");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 101, "{head}");
}

/// A client opening more upgraded connections than the queue's `max_opaque` gets 503 for
/// the one past it; those within it carry bytes both ways as data frames, and half-close.
#[test]
fn upgrades_past_the_queues_max_opaque_get_503() {
    let d = Daemon::start();
    let port = free_port();
    let (_ctl, mut w) = v2_queue(&d, "cap", port, json!({ "max_opaque": 2 }));
    assert_eq!(queue_state(&d, "cap")["limits"]["max_opaque"], 2);
    let mut open = Vec::new();
    for _ in 0..2 {
        // Bytes after the head are the first opaque bytes.
        let (c, stream) = upgraded(&mut w, port, "cap", "early");
        assert_eq!(data_of(&mut w, stream, 5), b"early");
        open.push((c, stream));
    }
    assert_eq!(opaque(&d, "cap"), 2);
    let mut third = connect(port);
    write!(third, "GET /cap/ {UPGRADE_REQUEST}").expect("write");
    let (stream, _) = next_request(&mut w);
    switching(&mut w, stream, "test/1");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut third, &mut buf, false);
    assert_eq!(status, 503, "{head}");
    // The worker is told to let that stream go; the first two are untouched.
    assert_eq!(reset_of(&mut w, stream), ResetCode::Cancel);
    // Bytes both ways on the first socket, then a half-close each way.
    let (c, stream) = &mut open[0];
    let stream = *stream;
    c.write_all(b" ping").expect("write");
    assert_eq!(data_of(&mut w, stream, 5), b" ping");
    w.send(|b| {
        wire::encode_data(b, stream, false, b"pong");
        wire::encode_data(b, stream, true, b"");
    })
    .expect("send");
    let end = read_until_close(c, "the worker's half of an opaque connection");
    assert_eq!(end.bytes, b"pong", "{end:?}");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    loop {
        match w.frame() {
            Some(Frame::Data {
                stream: s,
                end: true,
                data,
            }) if s == stream => {
                assert!(data.is_empty());
                break;
            }
            Some(_) => {}
            None => panic!("no END from the client's half-close"),
        }
    }
    assert!(eventually(10, || opaque(&d, "cap") == 1));
}

/// A worker that grants nothing is sent at most one window of what its client uploads; the
/// rest waits in the client's socket, and flows once the worker grants more.
#[test]
fn an_opaque_stream_is_held_to_its_window() {
    let d = Daemon::start();
    let port = free_port();
    let (_ctl, mut w) = v2_queue(&d, "credit", port, json!({}));
    let (c, stream) = upgraded(&mut w, port, "credit", "");
    // 4 MiB from the client, in a thread: the writes block once the sockets fill up.
    let upload = pattern(4 << 20, 3);
    let mut writer = c.try_clone().expect("clone");
    let sent = upload.clone();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&sent);
    });
    // What reaches the worker stops at the window (the read times out after a pause).
    w.sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let window = wire::INITIAL_WINDOW as usize;
    let mut got = Vec::new();
    while let Some(frame) = w.frame() {
        if let Frame::Data { data, .. } = frame {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(got.len(), window, "the first window, and no more");
    // Granted the rest, the worker gets all of it, unchanged.
    w.sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    w.send(|b| wire::encode_window(b, stream, (upload.len() - window) as u32))
        .expect("grant");
    let rest = data_of(&mut w, stream, upload.len() - window);
    got.extend_from_slice(&rest);
    assert!(got == upload, "the upload changed on the way");
    sender.join().expect("the writer");
}

/// The connection's idle and header timers stop applying once it is opaque: a socket idle
/// for longer than both still echoes.
#[test]
fn an_opaque_connection_outlives_the_idle_timer() {
    let d = Daemon::builder()
        .tag("ws-idle")
        .config("iplisten = [\"127.0.0.1\"]\n\n[timers]\nidle_connection = 1\nheader_wait = 1\n")
        .iplisten_from_config()
        .spawn();
    let port = free_port();
    let _app = echo_app(&d, port);
    let mut s = raw_upgrade(port, "/ws_echo/ws");
    std::thread::sleep(Duration::from_millis(2500));
    s.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .expect("a frame after the idle time");
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)
        .expect("the echo after the idle time");
    assert_eq!(echo, [0x81, 2, b'h', b'i']);
}

/// Over https the same: the upgraded connection's bytes go through the TLS session both
/// ways, and a close handshake ends it cleanly.
#[test]
fn a_websocket_over_https_echoes_and_closes() {
    let dir = TempDir::new("ws-tls");
    let c = crate::tls::cert(&dir.0, "ws", &["ws.example"]);
    let (d, port) = Daemon::builder().spawn_on_free_port(|port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n{}",
            crate::tls::pair(&format!("ipport = \"127.0.0.1:{port}\""), &c)
        )
    });
    let app = App::start(
        &d.control,
        "ws_echo",
        "",
        &[&format!("https://+:{port}/ws_echo/")],
        &[],
    );
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut s = crate::tls::tls_over(tcp, Some("ws.example"), None).expect("handshake");
    s.write_all(
        b"GET /ws_echo/ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .expect("write");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut s, &mut buf, false);
    assert_eq!(status, 101, "{head}");
    s.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .expect("a text frame");
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).expect("the echo");
    assert_eq!(echo, [0x81, 2, b'h', b'i']);
    assert_eq!(opaque(&d, "ws_echo"), 1);
    // A close frame (no payload, masked): the app answers with its own and closes.
    s.write_all(&[0x88, 0x80, 9, 9, 9, 9]).expect("close");
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(
        rest.starts_with(&[0x88]),
        "{rest:?} {r:?}\n{}\n{}",
        d.proc.log_text(),
        app.proc.log_text()
    );
    drop(s);
    assert!(eventually(10, || opaque(&d, "ws_echo") == 0));
}

/// A `101` after a response has begun is a second head: the stream is reset and the
/// client is cut off; it never sees a `101`.
#[test]
fn a_101_after_a_response_began_is_refused() {
    let d = Daemon::start();
    let port = free_port();
    let (_ctl, mut w) = v2_queue(&d, "late", port, json!({}));
    let mut c = connect(port);
    write!(c, "GET /late/ {UPGRADE_REQUEST}").expect("write");
    let (stream, _) = next_request(&mut w);
    let ok = ResponseHead {
        status: 200,
        headers: Vec::new(),
    };
    w.send(|b| {
        ok.encode(b, stream, false);
        wire::encode_data(b, stream, false, b"partial");
    })
    .expect("send");
    switching(&mut w, stream, "test/1");
    assert_eq!(reset_of(&mut w, stream), ResetCode::Protocol);
    let end = read_until_close(&mut c, "a 101 after a 200 began");
    let text = String::from_utf8_lossy(&end.bytes);
    // What of the 200 was written before the 101 arrived depends on timing; a 101 never is.
    assert!(end.reset, "{end:?}");
    assert!(!text.contains(" 101 "), "{text}");
}
