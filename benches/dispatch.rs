//! The daemon's hot path in one process: a keep-alive client on loopback TCP → accept and
//! HTTP/1 parse → canonicalize and route → queue → an SDK worker over the Unix socket →
//! the response back.
//!
//! - `dispatch/one`: one request at a time, the round trip of a single request;
//! - `dispatch/pipelined_32`: 32 pipelined requests per write on one connection, reported
//!   per request. The daemon still serves them one after another, as HTTP.sys does; this
//!   is the per-request cost without the client's round trip between requests;
//! - `dispatch/miss_404`: a new connection whose request no registration wins: accept,
//!   parse, route, the 404 page, close;
//! - `dispatch/body_4mib`: a 4 MiB response body, reported in bytes: the worker wire's
//!   windows and the daemon's copy of each frame out of its read buffer.
//!
//! - `copy/64kib`, `copy/1mib`: one memory copy of a body of that size into a buffer
//!   already allocated, the yardstick for the daemon's CPU per large response. The two
//!   buffers sit at different offsets within a 4 KiB page: on some CPUs a copy between
//!   addresses at the same offset runs an order of magnitude slower.
//!
//! The daemon runs on its own single-threaded runtime, the app on another, the client on
//! the bench thread, as `portshare serve --threads 1` and `hello` would.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use portshare_client::{Body, Queue, service_fn};
use portshare_server::{Config, ErrLogConfig, ServeOptions};

/// The size of the `/app/big` response.
const BIG: usize = 4 << 20;

struct Setup {
    port: u16,
    _dir: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("portshare-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let control = dir.join("control.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (app_stop_tx, app_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ServeOptions::new(
        control.clone(),
        Config {
            iplisten: vec!["127.0.0.1".parse().expect("ip")],
            errlog: ErrLogConfig {
                folder: dir.join("httperr"),
                ..ErrLogConfig::default()
            },
            state_file: Some(dir.join("state.toml")),
            ..Config::default()
        },
    );
    let daemon = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let _ = portshare_server::serve_until(opts, async {
                let _ = stop_rx.await;
                let _ = app_stop_tx.send(());
            })
            .await;
        });
    });
    while std::os::unix::net::UnixStream::connect(&control).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let app = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let big = Bytes::from(vec![b'x'; BIG]);
            let service = service_fn(move |req: Request<Body>| {
                let body = if req.uri().path() == "/app/big" {
                    big.clone()
                } else {
                    Bytes::from_static(b"hello, world\n")
                };
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let running = Queue::builder("bench")
                .url(format!("http://+:{port}/app/"))
                .control(&control)
                .serve(service)
                .await
                .expect("register the bench app");
            let _ = ready_tx.send(());
            let _ = app_stop_rx.await;
            drop(running);
        });
    });
    ready_rx.recv().expect("app ready");
    Setup {
        port,
        _dir: TempDir(dir),
        stop: Some(stop_tx),
        threads: vec![app, daemon],
    }
}

/// Reads `n` responses off a keep-alive connection (they all carry Content-Length).
fn read_responses(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    let mut got = 0;
    let mut chunk = [0u8; 65536];
    let mut at = 0;
    while got < n {
        if let Some(end) = find(&buf[at..], b"\r\n\r\n") {
            let head = &buf[at..at + end];
            let len = content_length(head);
            if buf.len() >= at + end + 4 + len {
                at += end + 4 + len;
                got += 1;
                continue;
            }
        }
        let r = s.read(&mut chunk).expect("read");
        assert!(r > 0, "connection closed");
        buf.extend_from_slice(&chunk[..r]);
    }
    buf.drain(..at);
}

fn content_length(head: &[u8]) -> usize {
    let text = std::str::from_utf8(head).expect("ASCII head");
    text.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    let mut s = TcpStream::connect(("127.0.0.1", setup.port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::new();
    let one = b"GET /app/hello HTTP/1.1\r\nHost: bench\r\n\r\n";
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one", |b| {
        b.iter(|| {
            s.write_all(one).expect("write");
            read_responses(&mut s, &mut buf, 1);
        })
    });
    let batch: Vec<u8> = one.repeat(32);
    group.throughput(Throughput::Elements(32));
    group.bench_function("pipelined_32", |b| {
        b.iter(|| {
            s.write_all(&batch).expect("write");
            read_responses(&mut s, &mut buf, 32);
        })
    });
    group.throughput(Throughput::Elements(1));
    let miss = b"GET /elsewhere HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    group.bench_function("miss_404", |b| {
        b.iter(|| {
            let mut m = TcpStream::connect(("127.0.0.1", setup.port)).expect("connect");
            m.write_all(miss).expect("write");
            let mut out = Vec::new();
            m.read_to_end(&mut out).expect("read");
            assert!(out.starts_with(b"HTTP/1.1 404"));
        })
    });
    let big = b"GET /app/big HTTP/1.1\r\nHost: bench\r\n\r\n";
    group.throughput(Throughput::Bytes(BIG as u64));
    group.bench_function("body_4mib", |b| {
        b.iter(|| {
            s.write_all(big).expect("write");
            read_responses(&mut s, &mut buf, 1);
        })
    });
    group.finish();
    drop(s);
    copies(c);
}

/// One memory copy of a body, the floor under the CPU a relay spends per body byte.
fn copies(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy");
    for (name, size) in [("64kib", 64 << 10), ("1mib", 1 << 20)] {
        let from = vec![b'x'; size];
        let mut to = vec![0u8; size + 64];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                to[64..].copy_from_slice(std::hint::black_box(&from));
                std::hint::black_box(&mut to);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
