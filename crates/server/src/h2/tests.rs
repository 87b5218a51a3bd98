//! HTTP/2 over an in-memory pipe: the `h2` client crate for what a client does right, a
//! raw-frame client for the floods, and a worker speaking the worker wire by hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use portshare_proto::wire::{self, Frame, RequestHead, ResponseHead};
use portshare_router::{RouteTable, UrlPrefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::config::Config;
use crate::conn::tls_info::TlsInfo;
use crate::errlog;
use crate::queue::{Props, Queue};
use crate::shared::{Destination, Settings, Shared};
use crate::worker::{Peer, WorkerConn};

const WAIT: Duration = Duration::from_secs(20);

/// A daemon's shared state with `config`, and one queue `q` registered at
/// `https://+:443/` with `props`.
fn daemon(config: &str, props: Props) -> (Arc<Shared>, Arc<Queue>) {
    let config = Config::from_toml(config).expect("test configuration");
    let errlog = Arc::new(errlog::Log::open(&crate::config::ErrLogConfig {
        enabled: false,
        ..Default::default()
    }));
    let budget = crate::budget::Budget::of(1024).expect("descriptors");
    let shared = Shared::new(Settings::new(&config, errlog), budget);
    let queue = Queue::new("q".into(), 0, props, None);
    let mut table = RouteTable::new();
    let prefix = Arc::new(UrlPrefix::parse("https://+:443/").expect("prefix"));
    table
        .add_shared(
            prefix.clone(),
            Arc::new(Destination {
                queue: queue.clone(),
                prefix,
                context: 0,
                site: Arc::default(),
            }),
        )
        .expect("route");
    shared.table.store(Arc::new(table));
    (shared, queue)
}

fn tls() -> TlsInfo {
    TlsInfo {
        header: Bytes::from_static(b"version=TLSv1.3; cipher=x; sni=example.test; alpn=h2"),
        client_cert: None,
        sni: Some("example.test".into()),
        require_sni_match: false,
    }
}

/// Serves one HTTP/2 connection over a pipe; the client's end.
fn connect(shared: &Arc<Shared>) -> DuplexStream {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let local: SocketAddr = "127.0.0.1:443".parse().expect("addr");
    tokio::spawn(super::serve(shared.clone(), server, peer, local, tls()));
    client
}

/// A worker attached to `queue` with `slots`, speaking the wire by hand: each frame it
/// gets goes to the test, and the test writes what it answers.
struct Worker {
    frames: mpsc::UnboundedReceiver<Frame>,
    out: tokio::net::unix::OwnedWriteHalf,
}

impl Worker {
    async fn attach(shared: &Arc<Shared>, queue: &Arc<Queue>, slots: u32) -> Worker {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let peer = Peer {
            pid: 1,
            uid: 0,
            identity: crate::identity::Identity {
                uid: 0,
                gid: 0,
                groups: Vec::new(),
            },
            user: "root".into(),
            command: "test".into(),
        };
        let conn = WorkerConn::new(1, peer, &shared.buffers, 2);
        tokio::spawn(conn.run(ours, Bytes::new(), queue.clone(), slots));
        let (mut rd, out) = theirs.into_split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                while let Ok(Some(f)) = wire::decode(&mut buf) {
                    if tx.send(f).is_err() {
                        return;
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
        });
        // Attached once the queue has its slots.
        for _ in 0..200 {
            if !queue.seats().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Worker { frames, out }
    }

    async fn next(&mut self) -> Frame {
        timeout(WAIT, self.frames.recv())
            .await
            .expect("a frame in time")
            .expect("the worker connection is up")
    }

    /// The next request head: its stream and the head.
    async fn head(&mut self) -> (u32, RequestHead) {
        loop {
            if let Frame::Head {
                stream, payload, ..
            } = self.next().await
            {
                return (stream, RequestHead::decode(payload).expect("request head"));
            }
        }
    }

    async fn respond(&mut self, stream: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let head = ResponseHead {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        Bytes::copy_from_slice(n.as_bytes()),
                        Bytes::copy_from_slice(v.as_bytes()),
                    )
                })
                .collect(),
        };
        let mut buf = BytesMut::new();
        head.encode(&mut buf, stream, body.is_empty());
        if !body.is_empty() {
            wire::encode_data(&mut buf, stream, true, body);
        }
        self.out.write_all(&buf).await.expect("write to the daemon");
    }
}

fn header<'h>(head: &'h RequestHead, name: &str) -> Option<&'h [u8]> {
    head.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| &v[..])
}

async fn client(io: DuplexStream) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("https://example.test{path}"))
        .body(())
        .expect("request")
}

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

#[tokio::test]
async fn a_stream_reaches_the_worker_as_an_http11_head_and_its_response_comes_back() {
    let (shared, queue) = daemon("", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    let mut h2 = client(connect(&shared)).await;
    let req = http::Request::builder()
        .uri("https://example.test/a/../b/x?q=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-one", "1")
        .header("portshare-raw-url", "/forged")
        .body(())
        .expect("request");
    let (resp, _) = h2.send_request(req, true).expect("sent");
    let (stream, head) = worker.head().await;
    assert_eq!(&head.method[..], b"GET");
    assert_eq!(&head.target[..], b"/b/x?q=1", "the cooked path");
    assert_eq!(head.version, wire::Version::Http11);
    assert_eq!(header(&head, "host"), Some(&b"example.test"[..]));
    assert_eq!(header(&head, "cookie"), Some(&b"a=1; b=2"[..]));
    assert_eq!(header(&head, "x-one"), Some(&b"1"[..]));
    assert_eq!(
        header(&head, "portshare-raw-url"),
        Some(&b"/a/../b/x?q=1"[..]),
        "the client's copy stays behind"
    );
    assert!(header(&head, "portshare-tls").is_some_and(|v| v.ends_with(b"alpn=h2")));
    assert!(header(&head, "transfer-encoding").is_none());
    worker
        .respond(
            stream,
            200,
            &[
                ("content-type", "text/plain"),
                ("connection", "close"),
                ("keep-alive", "1"),
            ],
            b"hello",
        )
        .await;
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    let (parts, body) = body_of(resp).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, b"hello");
    assert!(parts.headers.get("connection").is_none() && parts.headers.get("keep-alive").is_none());
    assert!(parts.headers.get("date").is_some());
    assert!(parts.headers.get("server").is_some());
    assert_eq!(
        parts.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    // The connection goes on: a second request on it.
    let (resp, _) = h2.send_request(get("/again"), true).expect("sent");
    let (stream, head) = worker.head().await;
    assert_eq!(&head.target[..], b"/again");
    worker.respond(stream, 204, &[], b"").await;
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn a_request_body_goes_no_faster_than_the_workers_window() {
    let (shared, queue) = daemon("", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    let mut h2 = client(connect(&shared)).await;
    let req = http::Request::builder()
        .method("POST")
        .uri("https://example.test/up")
        .body(())
        .expect("request");
    let (resp, mut send) = h2.send_request(req, false).expect("sent");
    let total = 3 * wire::INITIAL_WINDOW as usize;
    let writer = tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            let n = left.min(16 * 1024);
            send.reserve_capacity(n);
            let got = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
            let Some(Ok(cap)) = got else { return false };
            let n = cap.min(n);
            if n == 0 {
                continue;
            }
            left -= n;
            if send
                .send_data(Bytes::from(vec![b'x'; n]), left == 0)
                .is_err()
            {
                return false;
            }
        }
        true
    });
    let (stream, head) = worker.head().await;
    assert!(header(&head, "content-length").is_none());
    // The worker grants nothing: it gets one window of body, no more.
    let mut got = 0;
    loop {
        match timeout(Duration::from_millis(500), worker.frames.recv()).await {
            Ok(Some(Frame::Data { data, .. })) => got += data.len(),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(got, wire::INITIAL_WINDOW as usize);
    // Credit for the rest: all of it comes, then the end.
    let mut buf = BytesMut::new();
    wire::encode_window(&mut buf, stream, 2 * wire::INITIAL_WINDOW);
    worker.out.write_all(&buf).await.expect("write");
    let mut ended = false;
    while !ended {
        match worker.next().await {
            Frame::Data { data, end, .. } => {
                got += data.len();
                ended = end;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, total);
    assert!(writer.await.expect("writer"));
    worker.respond(stream, 200, &[], b"ok").await;
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(body_of(resp).await.1, b"ok");
}

#[tokio::test]
async fn a_header_list_over_max_request_bytes_is_400_and_the_connection_goes_on() {
    let (shared, queue) = daemon("", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    let mut h2 = client(connect(&shared)).await;
    let big = "v".repeat(6000);
    let mut req = get("/big");
    for name in ["x-a", "x-b", "x-c"] {
        req.headers_mut().insert(name, big.parse().expect("value"));
    }
    let (resp, _) = h2.send_request(req, true).expect("sent");
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    let (parts, body) = body_of(resp).await;
    assert_eq!(parts.status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("Request Too Long"),
        "{body:?}"
    );
    // Over MaxFieldLength alone.
    let mut req = get("/long");
    req.headers_mut()
        .insert("x-long", "v".repeat(17000).parse().expect("value"));
    let (resp, _) = h2.send_request(req, true).expect("sent");
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 400);
    // Nothing reached the worker, and the connection still serves.
    let (resp, _) = h2.send_request(get("/fine"), true).expect("sent");
    let (stream, head) = worker.head().await;
    assert_eq!(&head.target[..], b"/fine");
    worker.respond(stream, 200, &[], b"").await;
    assert_eq!(
        timeout(WAIT, resp)
            .await
            .expect("in time")
            .expect("response")
            .status(),
        200
    );
}

#[tokio::test]
async fn a_host_that_is_not_the_authority_is_refused() {
    let (shared, _queue) = daemon("", Props::default());
    let mut h2 = client(connect(&shared)).await;
    let mut req = get("/");
    req.headers_mut()
        .insert("host", "other.test".parse().expect("value"));
    let (resp, _) = h2.send_request(req, true).expect("sent");
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn a_full_queue_under_basic_verbosity_refuses_the_stream_not_the_connection() {
    let props = Props {
        length: 1,
        ..Props::default()
    };
    let (shared, _queue) = daemon("", props);
    let mut h2 = client(connect(&shared)).await;
    // No worker: the first waits in the queue, the second finds it full.
    let (_waiting, _) = h2.send_request(get("/1"), true).expect("sent");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (refused, _) = h2.send_request(get("/2"), true).expect("sent");
    let err = timeout(WAIT, refused)
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(err.reason(), Some(h2::Reason::REFUSED_STREAM), "{err}");
    // The connection is still up.
    let (_third, _) = h2
        .send_request(get("/3"), true)
        .expect("the connection is up");
}

#[tokio::test]
async fn graceful_stop_sends_goaway_and_lets_open_streams_finish() {
    let (shared, queue) = daemon("", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    let (send, conn) = h2::client::handshake(connect(&shared))
        .await
        .expect("handshake");
    let mut send = send;
    let conn = tokio::spawn(conn);
    let (resp, _) = send.send_request(get("/slow"), true).expect("sent");
    let (stream, _) = worker.head().await;
    shared
        .stopping
        .store(true, std::sync::atomic::Ordering::Release);
    shared.stop.notify_waiters();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new stream is taken.
    let late = send.send_request(get("/late"), true);
    if let Ok((late, _)) = late {
        let r = timeout(WAIT, late).await.expect("in time");
        assert!(r.is_err(), "a stream after GOAWAY is refused");
    }
    // The open one finishes.
    worker.respond(stream, 200, &[], b"done").await;
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(body_of(resp).await.1, b"done");
    drop(send);
    timeout(WAIT, conn)
        .await
        .expect("the connection ends")
        .expect("task")
        .expect("a clean close");
}

#[tokio::test]
async fn a_client_that_never_opens_its_window_is_cut_by_min_send_rate() {
    let (shared, queue) = daemon("[timers]\nmin_send_rate = 16384\n", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    let (mut h2, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(connect(&shared))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let (resp, _) = h2.send_request(get("/big"), true).expect("sent");
    let (stream, _) = worker.head().await;
    let body = vec![b'x'; 100_000];
    worker.respond(stream, 200, &[], &body).await;
    let resp = timeout(WAIT, resp).await.expect("in time").expect("head");
    let (_, mut body) = resp.into_parts();
    let err = timeout(WAIT, body.data())
        .await
        .expect("cut in time")
        .expect("an outcome")
        .expect_err("reset");
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    // The worker hears of it.
    loop {
        if let Frame::Reset { stream: s, .. } = worker.next().await {
            assert_eq!(s, stream);
            break;
        }
    }
}

// ---- The raw-frame client, for what a well-behaved client cannot send. ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ENHANCE_YOUR_CALM: u32 = 11;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    let len = payload.len();
    f.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal (no Huffman), its length an integer with a 7-bit prefix.
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// `GET https://example.test/` as an HPACK block: static-table pseudo-headers and the
/// authority as a literal.
fn request_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x84]; // :method GET, :scheme https, :path /
    b.push(0x01); // :authority, literal without indexing
    hpack_str(&mut b, b"example.test");
    b
}

/// A raw client: writes frames, and reads the server's until it closes.
struct Raw {
    io: DuplexStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(shared: &Arc<Shared>) -> Raw {
        let mut io = connect(shared);
        io.write_all(PREFACE).await.expect("preface");
        io.write_all(&frame(SETTINGS, 0, 0, &[]))
            .await
            .expect("settings");
        Raw {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Writes, as far as the server takes it; false once it stops taking.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            timeout(Duration::from_secs(5), self.io.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// The server's next frame: kind, flags, stream, payload; `None` at the end.
    async fn next(&mut self) -> Option<(u8, u8, u32, Bytes)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let mut h = self.buf.split_to(9);
                    let payload = self.buf.split_to(len).freeze();
                    h.advance(3);
                    let kind = h.get_u8();
                    let flags = h.get_u8();
                    let stream = h.get_u32() & 0x7fff_ffff;
                    return Some((kind, flags, stream, payload));
                }
            }
            match timeout(WAIT, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Reads until the server closes: the GOAWAY code it sent, if any, and the streams it
    /// reset with each code.
    async fn until_closed(&mut self) -> (Option<u32>, Vec<(u32, u32)>) {
        let mut goaway = None;
        let mut resets = Vec::new();
        while let Some((kind, _, stream, payload)) = self.next().await {
            match kind {
                GOAWAY if payload.len() >= 8 => {
                    goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                RST_STREAM if payload.len() == 4 => {
                    resets.push((
                        stream,
                        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
                    ));
                }
                _ => {}
            }
        }
        (goaway, resets)
    }
}

#[tokio::test]
async fn a_ping_flood_gets_goaway() {
    let (shared, _queue) = daemon("", Props::default());
    let mut raw = Raw::open(&shared).await;
    let mut flood = Vec::new();
    for i in 0..2000u64 {
        flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    let reader = tokio::spawn(async move {
        let _ = raw.send(&flood).await;
        raw.until_closed().await
    });
    let (goaway, _) = timeout(WAIT, reader)
        .await
        .expect("closed in time")
        .expect("task");
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
}

#[tokio::test]
async fn a_settings_flood_gets_goaway() {
    let (shared, _queue) = daemon("", Props::default());
    let mut raw = Raw::open(&shared).await;
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
    }
    let reader = tokio::spawn(async move {
        let _ = raw.send(&flood).await;
        raw.until_closed().await
    });
    let (goaway, _) = timeout(WAIT, reader)
        .await
        .expect("closed in time")
        .expect("task");
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
}

#[tokio::test]
async fn rapid_reset_is_bounded_gets_goaway_and_costs_the_worker_nothing_after() {
    let (shared, queue) = daemon("", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 1000).await;
    let mut raw = Raw::open(&shared).await;
    let block = request_block();
    let mut flood = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let reader = tokio::spawn(async move {
        let _ = raw.send(&flood).await;
        raw.until_closed().await
    });
    let (goaway, _) = timeout(WAIT, reader)
        .await
        .expect("closed in time")
        .expect("task");
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    // Every request that reached the worker was reset there too, and every slot is back.
    let mut open = std::collections::HashSet::new();
    let mut heads = 0;
    loop {
        match timeout(Duration::from_secs(2), worker.frames.recv()).await {
            Ok(Some(Frame::Head { stream, .. })) => {
                heads += 1;
                open.insert(stream);
            }
            Ok(Some(Frame::Reset { stream, .. })) => {
                open.remove(&stream);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert!(heads < 1000, "{heads} requests reached the worker");
    assert!(
        open.is_empty(),
        "{} streams left open at the worker",
        open.len()
    );
    let (waiting, busy, _) = queue.depth();
    assert_eq!((waiting, busy), (0, 0));
}

#[tokio::test]
async fn more_streams_than_the_limit_are_refused_not_queued() {
    let (shared, queue) = daemon("", Props::default());
    let _worker = Worker::attach(&shared, &queue, 1000).await;
    let mut raw = Raw::open(&shared).await;
    let block = request_block();
    let mut all = Vec::new();
    for i in 0..(super::MAX_STREAMS + 5) {
        all.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    assert!(raw.send(&all).await);
    let mut refused = Vec::new();
    while refused.len() < 5 {
        let Some((kind, _, stream, payload)) = raw.next().await else {
            break;
        };
        if kind == RST_STREAM && payload[..] == 7u32.to_be_bytes() {
            refused.push(stream);
        }
    }
    let first_over = 2 * super::MAX_STREAMS + 1;
    assert_eq!(
        refused,
        (0..5).map(|i| first_over + 2 * i).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_hpack_bomb_is_refused_before_it_reaches_a_worker() {
    let (shared, queue) = daemon("", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    // One 4000-byte field into the dynamic table, then named again by its index: each
    // byte sent expands to 4 KiB.
    let bomb = |repeats: usize| {
        let mut b = request_block();
        b.push(0x40); // literal with incremental indexing, new name
        hpack_str(&mut b, b"x-bomb");
        hpack_str(&mut b, &[b'b'; 4000]);
        b.extend(std::iter::repeat_n(0xbe, repeats)); // index 62: the field just added
        b
    };
    // Past MaxRequestBytes (16 KiB): 400, the connection goes on.
    let mut raw = Raw::open(&shared).await;
    assert!(
        raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &bomb(4)))
            .await
    );
    let mut status = None;
    while let Some((kind, _, stream, payload)) = raw.next().await {
        if kind == HEADERS && stream == 1 {
            status = payload.first().copied();
            break;
        }
    }
    assert_eq!(status, Some(0x8c), "an indexed :status 400");
    // Far past it: the connection is closed with GOAWAY.
    let mut raw = Raw::open(&shared).await;
    let _ = raw
        .send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &bomb(1000)))
        .await;
    let (goaway, _) = raw.until_closed().await;
    assert!(goaway.is_some());
    assert!(
        timeout(Duration::from_millis(500), worker.frames.recv())
            .await
            .is_err(),
        "nothing reached the worker"
    );
}

#[tokio::test]
async fn a_continuation_flood_is_bounded_and_a_header_block_that_never_ends_is_timed_out() {
    let (shared, queue) = daemon("[timers]\nheader_wait = 1\n", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    // Endless CONTINUATION frames, each a whole field: cut by a count and a size.
    let mut raw = Raw::open(&shared).await;
    let mut flood = frame(HEADERS, 0, 1, &request_block());
    let mut field = vec![0x00]; // literal without indexing, new name
    hpack_str(&mut field, b"x-c");
    hpack_str(&mut field, &[b'c'; 1000]);
    for _ in 0..2000 {
        flood.extend(frame(CONTINUATION, 0, 1, &field));
    }
    let reader = tokio::spawn(async move {
        let _ = raw.send(&flood).await;
        raw.until_closed().await
    });
    let (goaway, _) = timeout(WAIT, reader)
        .await
        .expect("closed in time")
        .expect("task");
    assert!(goaway.is_some());
    // A block that starts and never ends: HeaderWait closes the connection.
    let mut raw = Raw::open(&shared).await;
    assert!(raw.send(&frame(HEADERS, 0, 1, &request_block())).await);
    let closed = timeout(Duration::from_secs(15), raw.until_closed()).await;
    assert!(closed.is_ok(), "HeaderWait closed the connection");
    assert!(
        timeout(Duration::from_millis(200), worker.frames.recv())
            .await
            .is_err(),
        "nothing reached the worker"
    );
    let _ = DATA;
}

/// HTTP/2 has no upgrade (RFC 9113 §8.2.2) and the daemon offers no extended CONNECT (spec
/// §16): a worker's `101` on a stream resets that stream alone, and the connection goes on.
#[tokio::test]
async fn a_101_on_an_h2_stream_resets_it_and_extended_connect_is_not_offered() {
    let (shared, queue) = daemon("", Props::default());
    let mut worker = Worker::attach(&shared, &queue, 10).await;
    let (mut h2, conn) = h2::client::handshake(connect(&shared))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    h2 = timeout(WAIT, h2.ready())
        .await
        .expect("ready")
        .expect("ready");
    assert!(!h2.is_extended_connect_protocol_enabled());
    let (resp, _) = h2.send_request(get("/ws"), true).expect("sent");
    let (stream, head) = worker.head().await;
    assert!(header(&head, "upgrade").is_none() && header(&head, "connection").is_none());
    worker
        .respond(stream, 101, &[("upgrade", "websocket")], b"")
        .await;
    let err = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect_err("the stream is reset");
    assert!(err.is_reset(), "{err:?}");
    let (resp, _) = h2.send_request(get("/after"), true).expect("sent");
    let (stream, _) = worker.head().await;
    worker.respond(stream, 204, &[], b"").await;
    let resp = timeout(WAIT, resp)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 204);
}
