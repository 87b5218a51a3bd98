//! WebSockets through an upstream queue (spec §16): a real client (tokio-tungstenite)
//! through the daemon's relay to a WebSocket echo server in the test, small and 10 MB
//! messages, a thousand sockets at once, the upstream dying mid-message, the daemon
//! stopping, and the queue's `max_opaque`.
//!
//! Every socket is on 127.0.0.1; every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::websocket::{Ws, opaque, open_at, raw_upgrade, round_trip, runtime};

/// A WebSocket echo server on a free loopback port, served on a runtime of its own until
/// dropped.
struct EchoUpstream {
    addr: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EchoUpstream {
    fn start() -> EchoUpstream {
        let runtime = runtime();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("its address").to_string();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        let echo = match m {
                            Message::Text(_) | Message::Binary(_) => m,
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(echo).await.is_err() {
                            return;
                        }
                    }
                    let _ = ws.close(None).await;
                });
            }
        });
        EchoUpstream {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// A daemon with queue `up` on `http://+:PORT/up/` forwarding to `upstream`; `queue_extra`
/// goes into the queue's table, `extra` after it.
fn daemon(upstream: &str, queue_extra: &str, extra: &str) -> (Daemon, u16) {
    let upstream = upstream.to_owned();
    let (queue_extra, extra) = (queue_extra.to_owned(), extra.to_owned());
    Daemon::builder()
        .tag("ws-upstream")
        .spawn_on_free_port(move |port| {
            format!(
                "iplisten = [\"127.0.0.1\"]\n\n[[queue]]\nname = \"up\"\n\
                 urls = [\"http://+:{port}/up/\"]\nupstream = \"{upstream}\"\n{queue_extra}\n{extra}"
            )
        })
}

async fn open(port: u16) -> Ws {
    open_at(port, "/up/ws").await
}

#[test]
fn a_websocket_through_an_upstream_echoes_small_and_10_mb_messages() {
    let up = EchoUpstream::start();
    let (d, port) = daemon(&up.addr, "", "");
    let rt = runtime();
    let mut ws = rt.block_on(async {
        let mut ws = open(port).await;
        let back = round_trip(&mut ws, Message::text("hello")).await;
        assert_eq!(back, Message::text("hello"));
        ws
    });
    assert_eq!(opaque(&d, "up"), 1);
    rt.block_on(async {
        for seed in [3, 4] {
            let big = pattern(10 << 20, seed);
            let back = round_trip(&mut ws, Message::binary(big.clone())).await;
            assert!(back.into_data() == big, "the 10 MB message changed");
        }
        ws.close(None).await.expect("close");
        // The close handshake completes: the upstream's close comes back.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        }
    });
    drop(ws);
    assert!(eventually(10, || opaque(&d, "up") == 0));
}

#[test]
fn a_thousand_websockets_through_an_upstream_at_once() {
    const SOCKETS: usize = 1000;
    // The test holds both ends of a thousand sockets, the daemon two per socket: the limit
    // on open files is raised, in a process of its own.
    if !alone_in_a_process(
        module_path!(),
        "a_thousand_websockets_through_an_upstream_at_once",
    ) {
        return;
    }
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < 8192 {
        assert!(
            hard >= 8192,
            "the hard limit on open files ({hard}) is below 8192"
        );
        setrlimit(Resource::RLIMIT_NOFILE, 8192, hard).expect("setrlimit");
    }
    let up = EchoUpstream::start();
    let (d, port) = daemon(&up.addr, "connections = 2048", "");
    let rt = runtime();
    let started = std::time::Instant::now();
    let sockets = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..SOCKETS {
            tasks.spawn(async move {
                let mut ws = open(port).await;
                let text = format!("socket {i}");
                assert_eq!(
                    round_trip(&mut ws, Message::text(text.clone())).await,
                    Message::text(text)
                );
                ws
            });
        }
        let mut sockets = Vec::with_capacity(SOCKETS);
        tokio::time::timeout(Duration::from_secs(180), async {
            while let Some(ws) = tasks.join_next().await {
                sockets.push(ws.expect("a socket's task"));
            }
        })
        .await
        .expect("a thousand sockets within 3 minutes");
        sockets
    });
    // Printed, never asserted: the machine is shared.
    eprintln!(
        "{SOCKETS} sockets through the upstream opened and echoed in {:?}",
        started.elapsed()
    );
    assert_eq!(opaque(&d, "up"), SOCKETS as u64);
    drop(sockets);
    drop(rt);
    assert!(eventually(30, || opaque(&d, "up") == 0));
}

#[test]
fn the_upstream_dying_mid_message_resets_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .expect("101");
        // Part of a message arrives; then the process dies (a reset, as a kill with
        // unread bytes gives).
        let mut part = [0u8; 8];
        s.read_exact(&mut part).expect("part of the message");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
    });
    let (d, port) = daemon(&addr, "", "");
    let mut s = raw_upgrade(port, "/up/ws");
    s.write_all(&[0x82, 0x80 | 126, 0x03, 0xe8, 1, 2, 3, 4, 7, 7, 7, 7])
        .expect("a frame's start");
    server.join().expect("the upstream");
    let end = read_until_close(&mut s, "the upgraded connection of a dead upstream");
    assert!(end.reset, "reset, not closed: {end:?}");
    assert!(eventually(10, || opaque(&d, "up") == 0));
}

#[test]
fn a_graceful_stop_keeps_upstream_websockets_until_the_shutdown_timer() {
    let up = EchoUpstream::start();
    let (mut d, port) = daemon(&up.addr, "", "[timers]\nshutdown = 2\n");
    let mut s = raw_upgrade(port, "/up/ws");
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
    read_until_close(
        &mut s,
        "an upstream's opaque connection at the end of a stop",
    );
    assert!(
        eventually(15, || matches!(d.proc.child.try_wait(), Ok(Some(_)))),
        "the daemon did not exit:\n{}",
        d.proc.log_text()
    );
}

#[test]
fn upstream_upgrades_past_the_queues_max_opaque_get_503() {
    let up = EchoUpstream::start();
    let (d, port) = daemon(&up.addr, "max_opaque = 1", "");
    let rt = runtime();
    let mut first = rt.block_on(async {
        let mut first = open(port).await;
        assert_eq!(
            round_trip(&mut first, Message::text("one")).await,
            Message::text("one")
        );
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let url = format!("ws://127.0.0.1:{port}/up/ws");
        match tokio_tungstenite::client_async(url, tcp).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 503);
            }
            other => panic!("a second socket past max_opaque = 1: {other:?}"),
        }
        first
    });
    assert_eq!(opaque(&d, "up"), 1);
    // The first goes on.
    let back = rt.block_on(round_trip(&mut first, Message::text("two")));
    assert_eq!(back, Message::text("two"));
    assert!(
        eventually(10, || d.errlog_text().contains("503 - N/A up")),
        "{}",
        d.errlog_text()
    );
}
