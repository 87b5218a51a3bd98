//! Worker flow control end to end: a worker that sends beyond its window is cut off at the
//! header, twenty worker connections flooding clients that never read leave the daemon
//! bounded and another application answering, a stray head after a finished response is
//! dropped, and `MinSendRate` cuts a client that reads nothing however much is buffered.
//!
//! The workers speak the worker wire by hand ([`WireWorker`]). Every socket is on
//! 127.0.0.1 or the daemon's control socket, every loop is bounded by a count and by the
//! wall clock, and nothing asserts that something was fast: memory and the daemon's
//! buffer gauge are printed (`--nocapture` shows them).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::*;
use bytes::{BufMut, BytesMut};
use portshare_proto::wire::{self, Frame, INITIAL_WINDOW, ResetCode, ResponseHead};
use serde_json::{Value, json};

/// Creates queue `name` on `ctl`'s session with the URL `http://+:PORT/NAME/`.
fn queue(ctl: &mut Ctl, name: &str, port: u16) {
    ctl.create_queue(json!({ "name": name }));
    let (status, body) = ctl.add_url(name, &format!("http://+:{port}/{name}/"));
    assert_eq!(status, 201, "{body}");
}

/// The daemon's gauge of worker response bytes it holds.
fn buffers(d: &Daemon) -> Value {
    d.state()["buffers"].clone()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Waits (at most `secs`) for an httperr line of the client connection `client` holding
/// `needle`.
fn errlog_line(d: &Daemon, client: &TcpStream, needle: &str, secs: u64) -> Option<String> {
    let port = client.local_addr().expect("local address").port();
    let fields = format!(" 127.0.0.1 {port} 127.0.0.1 ");
    let mut found = None;
    eventually(secs, || {
        found = d
            .errlog_text()
            .lines()
            .find(|l| l.contains(&fields) && l.contains(needle))
            .map(str::to_owned);
        found.is_some()
    });
    found
}

/// A data frame's header alone, announcing `len` bytes.
fn data_header(buf: &mut BytesMut, stream: u32, len: u32) {
    buf.put_u32_le(len);
    buf.put_u32_le(stream);
    buf.put_u8(2); // data
    buf.put_u8(0);
}

/// A data frame longer than the stream's window is refused on its header alone, before
/// any of its payload is sent: the stream is reset, the worker disconnected, the client's
/// connection ends as with a dead worker (logged), and a warning names the excess.
#[test]
fn data_beyond_the_window_disconnects_the_worker_at_its_header() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    queue(&mut ctl, "over", port);
    let mut w = WireWorker::attach(&d.control, "over", 1);
    w.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut c = connect(port);
    c.write_all(b"GET /over/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let stream = w.next_head();
    // The head, then the header of a data frame one byte longer than the whole window;
    // its payload never comes.
    w.send(|b| {
        ResponseHead::encode_parts(b, stream, false, 200, []);
        data_header(b, stream, INITIAL_WINDOW + 1);
    })
    .expect("send the head and a header");
    let mut frames = Vec::new();
    while let Some(f) = w.frame() {
        frames.push(f);
    }
    assert_eq!(
        frames,
        [Frame::Reset {
            stream,
            code: ResetCode::Protocol
        }],
        "the daemon's last words to the worker, then it closed the connection"
    );
    let got = read_until_close(&mut c, "the client of the cut worker").bytes;
    assert!(
        !got.ends_with(b"0\r\n\r\n"),
        "the response looked complete: {} bytes",
        got.len()
    );
    let line = errlog_line(&d, &c, "Connection_Abandoned_By_ReqQueue over", 10);
    assert!(line.is_some(), "no httperr line:\n{}", d.errlog_text());
    assert!(
        eventually(10, || strip_ansi(&d.log()).contains("excess=1")),
        "no warning naming the excess:\n{}",
        d.log()
    );
    // The queue goes on with the next worker.
    let mut next = WireWorker::attach(&d.control, "over", 1);
    let mut c = connect(port);
    c.write_all(b"GET /over/again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let stream = next.next_head();
    next.send(|b| {
        ResponseHead::encode_parts(b, stream, false, 200, [(&b"content-length"[..], &b"3"[..])]);
        wire::encode_data(b, stream, true, b"ok\n");
    })
    .expect("answer");
    let (status, _, body) = read_response(&mut c, &mut Vec::new(), false);
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
}

/// Data frames large enough for the daemon to read into buffers of their own arrive whole
/// and in order however the worker's writes cut them: inside a header, right after one,
/// mid-payload, and with a frame's end and the next frame's start in one write; a small
/// frame between two large ones, and two responses in a row on one connection.
#[test]
fn large_data_frames_arrive_whole_however_the_writes_cut_them() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    queue(&mut ctl, "large", port);
    let mut w = WireWorker::attach(&d.control, "large", 1);
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    for round in 0..2u32 {
        c.write_all(b"GET /large/x HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let stream = w.next_head();
        // Within one window (256 KiB): 100,000 + 5 + 150,000 bytes.
        let parts = [
            pattern(100_000, 1 + round),
            pattern(5, 2),
            pattern(150_000, 3 + round),
        ];
        let want: Vec<u8> = parts.concat();
        let length = want.len().to_string();
        let mut out = BytesMut::new();
        ResponseHead::encode_parts(
            &mut out,
            stream,
            false,
            200,
            [(&b"content-length"[..], length.as_bytes())],
        );
        let head = out.len();
        for (i, part) in parts.iter().enumerate() {
            wire::encode_data(&mut out, stream, i == parts.len() - 1, part);
        }
        let second = head + 10 + parts[0].len();
        let cuts = [
            head + 4,
            head + 10,
            head + 10 + 40_000,
            second - 3,
            second + 10 + 5 + 6,
            second + 10 + 5 + 10 + 70_000,
            out.len(),
        ];
        let mut at = 0;
        for cut in cuts {
            w.sock
                .write_all(&out[at..cut])
                .expect("a piece of the frames");
            at = cut;
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, head, body) = read_response(&mut c, &mut Vec::new(), false);
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains(&format!("Content-Length: {length}")),
            "{head}"
        );
        assert_eq!(body.len(), want.len(), "round {round}");
        assert!(body == want, "round {round}: the body changed on the way");
    }
}

/// A worker sends a finished response, then a second head and body on the same stream:
/// the client gets the first response intact and its connection stays usable; the stray
/// frames are dropped with a warning.
#[test]
fn a_second_head_after_a_finished_response_is_dropped() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    queue(&mut ctl, "stray", port);
    let mut w = WireWorker::attach(&d.control, "stray", 1);
    let mut c = connect(port);
    c.write_all(b"GET /stray/one HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let stream = w.next_head();
    // One write, so the daemon reads the stray frames before it forgets the stream.
    w.send(|b| {
        ResponseHead::encode_parts(b, stream, false, 200, [(&b"content-length"[..], &b"3"[..])]);
        wire::encode_data(b, stream, true, b"ok\n");
        ResponseHead::encode_parts(b, stream, false, 500, [(&b"content-length"[..], &b"5"[..])]);
        wire::encode_data(b, stream, true, b"stray");
    })
    .expect("answer twice");
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
    // The same connection serves the next request.
    c.write_all(b"GET /stray/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("second request");
    let stream = w.next_head();
    w.send(|b| {
        ResponseHead::encode_parts(b, stream, false, 200, [(&b"content-length"[..], &b"4"[..])]);
        wire::encode_data(b, stream, true, b"two\n");
    })
    .expect("answer");
    let (status, _, body) = read_response(&mut c, &mut buf, false);
    assert_eq!((status, &body[..]), (200, &b"two\n"[..]));
    assert!(buf.is_empty(), "bytes after the responses: {buf:?}");
    assert!(
        eventually(10, || d
            .log()
            .contains("frames after the end of a response")),
        "no warning:\n{}",
        d.log()
    );
}

/// `MinSendRate` 2048 B/s and a client that reads nothing while its application keeps
/// writing within its window: once a write has to wait, the daemon cuts the client after
/// at most 16 KiB / 2048 B/s with nothing drained (8 s), not after the time the 64 KiB
/// frames it holds would take at that rate (32 s and more).
#[test]
fn min_send_rate_cuts_a_client_that_reads_nothing_whatever_is_buffered() {
    let d = Daemon::builder()
        .tag("flow-rate")
        .config("iplisten = [\"127.0.0.1\"]\n\n[timers]\nmin_send_rate = 2048\n")
        .iplisten_from_config()
        .spawn();
    let port = free_port();
    let mut ctl = d.ctl();
    queue(&mut ctl, "rate", port);
    let mut w = WireWorker::attach(&d.control, "rate", 1);
    let mut c = connect_small(port);
    c.write_all(b"GET /rate/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let stream = w.next_head();
    // The worker keeps to its window: 64 KiB frames as long as it has credit, then waits
    // for a grant; it stops at 16 MiB, after 60 s, or when the daemon resets the stream.
    let worker = std::thread::spawn(move || {
        w.send(|b| ResponseHead::encode_parts(b, stream, false, 200, []))
            .expect("head");
        let chunk = vec![b'x'; 64 * 1024];
        let mut window = INITIAL_WINDOW as usize;
        let mut sent = 0;
        let until = Instant::now() + Duration::from_secs(60);
        while sent < 16 << 20 && Instant::now() < until {
            if window >= chunk.len() {
                if w.send(|b| wire::encode_data(b, stream, false, &chunk))
                    .is_err()
                {
                    return None;
                }
                window -= chunk.len();
                sent += chunk.len();
                continue;
            }
            match w.frame() {
                Some(Frame::Window { credit, .. }) => window += credit as usize,
                Some(Frame::Reset { code, .. }) => return Some(code),
                Some(_) => {}
                None => return None,
            }
        }
        None
    });
    let started = Instant::now();
    let line = errlog_line(&d, &c, "Timer_MinBytesPerSecond rate", 25);
    let waited = started.elapsed();
    assert!(
        line.is_some(),
        "the client was not cut within 25 s:\n{}",
        d.errlog_text()
    );
    println!(
        "min send rate: cut after {waited:?}: {}",
        line.unwrap_or_default()
    );
    assert_eq!(
        worker.join().expect("worker thread"),
        Some(ResetCode::Cancel),
        "the worker hears that the client is gone"
    );
    assert!(eventually(10, || num(&buffers(&d), "bytes") == 0));
}

/// A worker holding a response for a client that reads nothing goes away: the client's
/// connection is let go at once, with the bytes the daemon held for it, rather than when
/// `MinSendRate` (here the default 150 B/s: 109 s) would cut it.
#[test]
fn a_client_whose_worker_is_gone_is_let_go_with_what_it_held() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    queue(&mut ctl, "gone", port);
    let mut w = WireWorker::attach(&d.control, "gone", 1);
    w.sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut c = connect_small(port);
    c.write_all(b"GET /gone/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let stream = w.next_head();
    w.send(|b| ResponseHead::encode_parts(b, stream, false, 200, []))
        .expect("head");
    // Within the window, until no grant comes: the sockets between daemon and client are
    // full, and the daemon holds what it could not write.
    let chunk = vec![b'x'; 64 * 1024];
    let mut window = INITIAL_WINDOW as usize;
    let mut sent = 0;
    while sent < 64 << 20 {
        if window >= chunk.len() {
            w.send(|b| wire::encode_data(b, stream, false, &chunk))
                .expect("data");
            window -= chunk.len();
            sent += chunk.len();
        } else {
            match w.frame() {
                Some(Frame::Window { credit, .. }) => window += credit as usize,
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
    }
    let held = num(&buffers(&d), "bytes");
    assert!(held > 0, "the daemon never held bytes for the client");
    drop(w);
    assert!(
        eventually(10, || num(&buffers(&d), "bytes") == 0),
        "still held after the worker left: {}",
        buffers(&d)
    );
    let line = errlog_line(&d, &c, "Connection_Abandoned_By_ReqQueue gone", 10);
    assert!(line.is_some(), "no httperr line:\n{}", d.errlog_text());
    println!("gone: {held} bytes held, released when the worker left");
}

/// What one attacking thread did.
#[derive(Debug, Default)]
struct Attack {
    rounds: u32,
    disconnected: u32,
    sent: u64,
}

/// One attacking worker: attaches to queue `atkI` with `slots` slots, gets as many
/// requests from clients that never read, and sends each stream 64 KiB data frames in
/// turn, never waiting for a grant; when the daemon disconnects it, it attaches again with
/// new clients, keeping the old ones open (the last 40). Until `until`, at most 200 rounds.
fn attack(control: PathBuf, port: u16, i: usize, slots: u32, until: Instant) -> Attack {
    let name = format!("atk{i}");
    let mut done = Attack::default();
    let payload = vec![b'x'; 64 * 1024];
    let mut kept = std::collections::VecDeque::new();
    while Instant::now() < until && done.rounds < 200 {
        done.rounds += 1;
        let mut w = WireWorker::attach(&control, &name, slots);
        w.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let clients: Vec<TcpStream> = (0..slots)
            .map(|k| {
                let mut c = connect_small(port);
                let req = format!(
                    "GET /{name}/{}/{k} HTTP/1.1\r\nHost: x\r\n\r\n",
                    done.rounds
                );
                c.write_all(req.as_bytes()).expect("request");
                c
            })
            .collect();
        // The heads, then the same 64 KiB frame for every stream in turn, over and over.
        let mut body = BytesMut::new();
        let mut first = BytesMut::new();
        for _ in 0..slots {
            let stream = w.next_head();
            ResponseHead::encode_parts(&mut first, stream, false, 200, []);
            wire::encode_data(&mut body, stream, false, &payload);
        }
        first.extend_from_slice(&body);
        let mut round = first.freeze();
        w.sock
            .set_write_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut at = 0;
        loop {
            if Instant::now() >= until {
                break;
            }
            match w.sock.write(&round[at..]) {
                Ok(n) => {
                    at += n;
                    done.sent += n as u64;
                    if at == round.len() {
                        round = body.clone().freeze();
                        at = 0;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    done.disconnected += 1;
                    break;
                }
            }
        }
        kept.extend(clients);
        while kept.len() > 40 {
            kept.pop_front();
        }
    }
    done
}

/// The attack from twenty worker connections at once: each gets requests from
/// clients that never read (with receive buffers as small as the kernel allows) and sends
/// far beyond its windows. Half hold one slot, so each of their streams overruns its window
/// at once and the worker is disconnected and attaches again; half hold sixteen, and fill
/// the daemon up to their bounds before any stream overruns. Throughout, the daemon's gauge
/// stays under its bound, its memory grows by less than 64 MiB, and another application on
/// the same port answers every request; once the clients leave, nothing stays held.
#[test]
fn twenty_workers_flooding_clients_that_never_read_leave_the_daemon_bounded() {
    const WORKERS: usize = 20;
    const ATTACK: Duration = Duration::from_secs(10);
    let d = Daemon::start();
    let pid = d.proc.child.id();
    let (_hello, port) = hello_on_free_port(&d, "ok", &["/ok/"], &[]);
    let mut ctl = d.ctl();
    for i in 0..WORKERS {
        queue(&mut ctl, &format!("atk{i}"), port);
    }
    for _ in 0..5 {
        assert_eq!(try_get(port, "x", "/ok/warm").map(|(s, _)| s), Some(200));
    }
    let rss_before = vm_rss_kib(pid);
    let until = Instant::now() + ATTACK;
    let attackers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let control = d.control.clone();
            let slots = if i % 2 == 0 { 1 } else { 16 };
            std::thread::spawn(move || attack(control, port, i, slots, until))
        })
        .collect();
    let (mut answered, mut failed) = (0, Vec::new());
    let (mut rss_peak, mut held_peak, mut over) = (rss_before, 0, Vec::new());
    while Instant::now() < until {
        match try_get(port, "x", "/ok/during") {
            Some((200, body)) if body.starts_with("name=ok ") => answered += 1,
            other => failed.push(format!("{other:?}")),
        }
        let gauge = buffers(&d);
        held_peak = held_peak.max(num(&gauge, "bytes"));
        if num(&gauge, "bytes") > num(&gauge, "bound") {
            over.push(gauge.to_string());
        }
        rss_peak = rss_peak.max(vm_rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let done: Vec<Attack> = attackers
        .into_iter()
        .map(|t| t.join().expect("attacker thread"))
        .collect();
    let gauge = buffers(&d);
    let drained = eventually(20, || num(&buffers(&d), "bytes") == 0);
    let rss_after = vm_rss_kib(pid);
    println!(
        "flood: VmRSS {rss_before} KiB before, peak {rss_peak} KiB (+{} KiB), {rss_after} KiB \
         after; gauge {gauge}; held at most {held_peak} bytes when sampled",
        rss_peak - rss_before
    );
    let rounds: u32 = done.iter().map(|a| a.rounds).sum();
    let disconnected: u32 = done.iter().map(|a| a.disconnected).sum();
    let sent: u64 = done.iter().map(|a| a.sent).sum();
    println!(
        "flood: {rounds} worker connections, {disconnected} disconnected, {} MiB sent; \
         the other app answered {answered} requests",
        sent >> 20
    );
    assert!(over.is_empty(), "the gauge passed its bound: {over:?}");
    assert!(
        disconnected > 0,
        "no worker was disconnected for overrunning its window: {done:?}"
    );
    // At most two accounts per attacking thread at once (one going, one attached) and the
    // app's own.
    let ceiling =
        num(&gauge, "shared_bound") + num(&gauge, "worker_floor") * (2 * WORKERS as u64 + 1);
    assert!(
        num(&gauge, "peak") <= ceiling,
        "peak over {ceiling}: {gauge}"
    );
    assert!(
        failed.is_empty(),
        "the other app failed {} of {} requests: {failed:?}",
        failed.len(),
        answered + failed.len()
    );
    assert!(
        answered >= 10,
        "the other app answered only {answered} requests"
    );
    assert!(
        rss_peak - rss_before < 64 * 1024,
        "the daemon grew by {} KiB",
        rss_peak - rss_before
    );
    assert!(
        drained,
        "bytes still held after the clients left: {}",
        buffers(&d)
    );
}

/// The other direction: a worker that grants its clients' request bodies a gigabyte of
/// window each and then never reads its socket. The daemon stops forwarding bodies to it once a
/// few MiB wait for it, so the uploads stay in the clients' sockets, not in the daemon; its
/// memory grows by less than 64 MiB while 32 clients push 8 MiB each, and another
/// application on the same port answers every request meanwhile.
#[test]
fn a_worker_that_never_reads_holds_its_uploads_back_not_the_daemon() {
    const CLIENTS: u32 = 32;
    const BODY: usize = 8 << 20;
    let d = Daemon::start();
    let pid = d.proc.child.id();
    let (_hello, port) = hello_on_free_port(&d, "ok", &["/ok/"], &[]);
    let mut ctl = d.ctl();
    queue(&mut ctl, "sink", port);
    let mut w = WireWorker::attach(&d.control, "sink", CLIENTS);
    let rss_before = vm_rss_kib(pid);
    let until = Instant::now() + Duration::from_secs(8);
    let uploads: Vec<_> = (0..CLIENTS)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = connect(port);
                c.set_write_timeout(Some(Duration::from_millis(200)))
                    .expect("timeout");
                let head =
                    format!("POST /sink/{k} HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
                c.write_all(head.as_bytes()).expect("head");
                let chunk = vec![b'u'; 64 << 10];
                let mut sent = 0;
                while sent < BODY && Instant::now() < until {
                    match c.write(&chunk[..chunk.len().min(BODY - sent)]) {
                        Ok(n) => sent += n,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                (c, sent)
            })
        })
        .collect();
    // The worker reads until every request has reached it, grants each a gigabyte more,
    // and reads nothing again.
    let mut streams = Vec::new();
    while streams.len() < CLIENTS as usize {
        streams.push(w.next_head());
    }
    w.send(|out| {
        for &stream in &streams {
            wire::encode_window(out, stream, 1 << 30);
        }
    })
    .expect("grants");
    let (mut answered, mut failed, mut rss_peak) = (0, Vec::new(), rss_before);
    while Instant::now() < until {
        match try_get(port, "x", "/ok/during") {
            Some((200, body)) if body.starts_with("name=ok ") => answered += 1,
            other => failed.push(format!("{other:?}")),
        }
        rss_peak = rss_peak.max(vm_rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent: usize = uploads
        .into_iter()
        .map(|t| t.join().expect("upload thread").1)
        .sum();
    rss_peak = rss_peak.max(vm_rss_kib(pid));
    println!(
        "uploads to a worker that never reads: {} MiB sent by the clients; daemon VmRSS \
         {rss_before} KiB before, peak {rss_peak} KiB (+{} KiB); the other app answered \
         {answered}",
        sent >> 20,
        rss_peak - rss_before
    );
    assert!(
        failed.is_empty(),
        "the other app failed {} of {} requests: {failed:?}",
        failed.len(),
        answered + failed.len()
    );
    assert!(
        rss_peak - rss_before < 64 * 1024,
        "the daemon grew by {} KiB holding uploads for a worker that never reads",
        rss_peak - rss_before
    );
    drop(w);
}

/// A request asking for `100 Continue` waits for a slot while its client resets. When a
/// slot comes, writing the 100 fails and the request ends there; its stream on the worker
/// is forgotten all the same, so a worker that then asks to drain is let go as soon as
/// the request it holds is answered. (Regression: the stream stayed open, and the
/// draining worker was kept until the daemon stopped.)
#[test]
fn a_client_gone_before_its_100_continue_leaves_no_stream_on_the_worker() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    queue(&mut ctl, "expect", port);
    let mut w = WireWorker::attach(&d.control, "expect", 1);
    w.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The first request takes the one slot.
    let mut first = connect(port);
    first
        .write_all(b"GET /expect/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("first request");
    let stream = w.next_head();
    // The second waits in the queue; then its client resets.
    let mut second = connect(port);
    second
        .write_all(
            b"POST /expect/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .expect("second request");
    let depth = |d: &Daemon| {
        d.state()["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == "expect"))
            .map_or(0, |q| num(q, "depth"))
    };
    assert!(eventually(10, || depth(&d) == 1), "{}", d.state());
    let gone_port = second.local_addr().expect("address").port();
    socket2::SockRef::from(&second)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(second);
    // The first is answered: its slot goes to the second, whose 100 finds no client.
    w.send(|b| ResponseHead::encode_parts(b, stream, true, 204, []))
        .expect("answer");
    let (status, _, _) = read_response(&mut first, &mut Vec::new(), false);
    assert_eq!(status, 204);
    let fields = format!(" 127.0.0.1 {gone_port} 127.0.0.1 ");
    assert!(
        eventually(10, || d.errlog_text().lines().any(
            |l| l.contains(&fields) && l.contains("Connection_Dropped expect")
        )),
        "the 100 Continue did not fail as planned:\n{}",
        d.errlog_text()
    );
    // The worker asks to drain: with nothing left in its hands, the daemon closes it.
    w.send(wire::encode_drain).expect("drain");
    let mut chunk = [0u8; 4096];
    loop {
        match w.sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("the daemon kept the draining worker: {e}"),
        }
    }
}
