//! Opaque connections (spec §16): an HTTP/1 client connection whose request asked to
//! upgrade (`Connection: upgrade`, `Upgrade: websocket`, say) and whose worker accepted
//! with `101 Switching Protocols`. From then on the daemon parses nothing more on it: the
//! client's bytes go to the worker as data frames on the request's stream, the worker's
//! data frames go to the client unchanged, until both sides have ended their direction
//! (`END`; a TCP half-close on the client's side) or either resets.
//!
//! This module owns the checks a `101` must pass, the `101` head the client gets, and the
//! two pumps. It must not touch the worker connection's reader or writer
//! (`crate::worker`), nor the frames' byte layout (`portshare_proto::wire`).
//!
//! Flow is the wire's: each direction of the stream has its window, starting afresh at
//! [`INITIAL_WINDOW`] with the `101`; the client's bytes are read only while the worker has
//! granted room for them (and its connection is not congested), and the worker is granted
//! more only once its bytes are written to the client. A client that reads nothing stalls
//! its own stream, and no other. The connection keeps its slot in the queue, and counts
//! against the queue's `max_opaque`, as long as it lives; no request timer applies to it,
//! nor `IdleConnection`. It is reset when its worker connection goes, and closed when the
//! daemon, stopping, closes its queues at the end of the shutdown timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use portshare_proto::wire::{self, INITIAL_WINDOW, ResetCode, ResponseHead};
use portshare_router::{Reason, Rejection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::encode::{Field, field};
use super::{Conn, Next};
use crate::pages::Detail;
use crate::queue::Queue;
use crate::worker::{BODY_FRAME, Event, Events, WorkerConn};

/// The room a read of a client's opaque bytes offers at first, and at most.
const MIN_READ: usize = 2 * 1024;
const MAX_READ: usize = 64 * 1024;

/// Why a worker's `101` is not taken: the stream is reset (`Protocol`) and the client's
/// connection aborted.
fn refusal(
    worker: &WorkerConn,
    head: &ResponseHead,
    offered: Option<&[u8]>,
    body_done: bool,
    end: bool,
) -> Option<&'static str> {
    if worker.version < 2 {
        return Some("a 101 on version 1 of the worker wire, which has no opaque streams");
    }
    let Some(offered) = offered else {
        return Some("a 101 to a request that did not ask to upgrade");
    };
    if !body_done {
        return Some("a 101 before the request's body was sent whole");
    }
    if end {
        return Some("a 101 marked END");
    }
    let mut chosen = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"upgrade"));
    let Some((_, protocol)) = chosen.next() else {
        return Some("a 101 without an Upgrade header");
    };
    let switched: Vec<&[u8]> = tokens(protocol).collect();
    if chosen.next().is_some() || switched.is_empty() {
        return Some("a 101 without exactly one Upgrade header");
    }
    // HTTP.sys does not speak h2c, and a client offered it never reaches a worker: an
    // application cannot switch a connection to it behind the daemon's back.
    if switched.iter().any(|t| t.eq_ignore_ascii_case(b"h2c")) {
        return Some("a 101 to h2c");
    }
    // A server switches only to what the client offered (RFC 9110 §7.8).
    let was_offered = |t: &&[u8]| tokens(offered).any(|o| o.eq_ignore_ascii_case(t));
    if !switched.iter().all(was_offered) {
        return Some("a 101 to a protocol the client did not offer");
    }
    let forged = protocol.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
    if forged || head.headers.iter().any(|(n, v)| field(n, v) == Field::Bad) {
        return Some("a 101 with a header that cannot be sent");
    }
    None
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The `101` head the client gets: the status line, the application's headers but those
/// the daemon owns (framing, `Connection`, `Date`), then `Connection: upgrade` and the
/// `Upgrade` it chose.
fn switching_head(wr: &mut BytesMut, head: &ResponseHead) {
    wr.put_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    let mut protocol: &[u8] = b"";
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case(b"upgrade") {
            protocol = value;
        }
        if let Field::Keep | Field::Server = field(name, value) {
            wr.put_slice(name);
            wr.put_slice(b": ");
            wr.put_slice(value);
            wr.put_slice(b"\r\n");
        }
    }
    wr.put_slice(b"Connection: upgrade\r\nUpgrade: ");
    wr.put_slice(protocol.trim_ascii());
    wr.put_slice(b"\r\n\r\n");
}

impl Conn {
    /// The worker answered the request in hand with `101`: checks it, writes it to the
    /// client and pumps both ways until the opaque connection ends. `offered` is what the
    /// request offered to switch to, if anything; `body_done` when its body was sent whole;
    /// `end` when the head came marked `END`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn upgraded(
        &mut self,
        worker: &Arc<WorkerConn>,
        stream: u32,
        rx: &mut Events,
        head: ResponseHead,
        offered: Option<&[u8]>,
        body_done: bool,
        end: bool,
        queue: &Arc<Queue>,
    ) -> Next {
        if let Some(why) = refusal(worker, &head, offered, body_done, end) {
            tracing::warn!(
                queue = queue.name(),
                pid = worker.peer.pid,
                worker = worker.id,
                stream,
                "worker sent {why}: the request is reset"
            );
            worker.send(|out| wire::encode_reset(out, stream, ResetCode::Protocol));
            self.wr.clear();
            return Next::Abort;
        }
        let Some(_counted) = queue.count_opaque() else {
            // Beyond the queue's `max_opaque`: the worker is told to let the stream go,
            // the client gets 503 and the connection closes.
            worker.send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
            tracing::warn!(
                queue = queue.name(),
                max_opaque = queue.props().max_opaque,
                "an upgrade beyond the queue's opaque connections refused"
            );
            self.log(None, Some(503), Reason::NotAvailable, Some(queue.name()));
            let server = self.settings.server_header.own();
            let rejection = Rejection {
                status: 503,
                reason: Reason::NotAvailable,
            };
            crate::pages::error_page(self.wr.tail(), rejection, Detail::Standard, Some(1), server);
            return Next::Close;
        };
        switching_head(self.wr.tail(), &head);
        if !self.send(queue).await {
            worker.send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
            return Next::Abort;
        }
        tracing::debug!(queue = queue.name(), stream, "connection upgraded");
        self.pump(worker, stream, rx).await
    }

    /// Moves bytes both ways until both directions have ended (then the connection
    /// closes) or one side fails or resets (then it is reset).
    async fn pump(&mut self, worker: &Arc<WorkerConn>, stream: u32, rx: &mut Events) -> Next {
        // Bytes the client sent past the request's head are the first opaque bytes.
        let pre = std::mem::take(&mut self.rd);
        let shared = self.shared.clone();
        let (mut rd, mut wr) = tokio::io::split(&mut self.io);
        // The client → worker window, and its growth; whether the client's direction ended.
        let credit = AtomicU64::new(u64::from(INITIAL_WINDOW));
        let credit_added = Notify::new();
        let client_ended = AtomicBool::new(false);
        let client_ended_now = Notify::new();

        let up = async {
            let mut buf = pre;
            let mut room = MIN_READ;
            loop {
                while !buf.is_empty() {
                    while credit.load(Ordering::Acquire) == 0 {
                        credit_added.notified().await;
                    }
                    worker.room().await;
                    let n = (credit.load(Ordering::Acquire) as usize)
                        .min(BODY_FRAME)
                        .min(buf.len());
                    let chunk = buf.split_to(n);
                    credit.fetch_sub(n as u64, Ordering::AcqRel);
                    worker.send(|out| wire::encode_data(out, stream, false, &chunk));
                }
                // Read only once all is sent: the daemon holds at most one read per
                // opaque connection of what the client sends. The room offered starts
                // small, as most opaque connections idle, and grows while reads fill it.
                buf.reserve(room);
                match rd.read_buf(&mut buf).await {
                    Ok(n) if n > 0 && n >= room => room = (room * 2).min(MAX_READ),
                    Ok(0) => {
                        worker.send(|out| wire::encode_data(out, stream, true, &[]));
                        client_ended.store(true, Ordering::Release);
                        client_ended_now.notify_one();
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(_) => {
                        worker.send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
                        return Err(Next::Abort);
                    }
                }
            }
        };

        let down = async {
            // Bytes written to the client since the last grant; whether the worker ended.
            let mut written = 0u32;
            let mut ended = false;
            loop {
                if ended && client_ended.load(Ordering::Acquire) {
                    return Ok(());
                }
                let ev = tokio::select! {
                    biased;
                    ev = rx.recv() => ev,
                    () = client_ended_now.notified(), if ended => continue,
                };
                let Some((ev, charge)) = ev else {
                    // The worker connection is gone: its process died or it was closed. At
                    // the end of a graceful stop, the connection closes; otherwise it resets.
                    return Err(if shared.stopping() {
                        Next::Close
                    } else {
                        Next::Abort
                    });
                };
                match ev {
                    Event::Window(n) => {
                        credit.fetch_add(u64::from(n), Ordering::AcqRel);
                        credit_added.notify_one();
                    }
                    Event::Data(data, end) if !ended => {
                        if !data.is_empty() {
                            let sent = tokio::select! {
                                biased;
                                r = wr.write_all(&data) => r.is_ok(),
                                () = worker.gone() => false,
                            };
                            if !sent {
                                worker
                                    .send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
                                return Err(Next::Abort);
                            }
                        }
                        drop(charge);
                        written = written.saturating_add(data.len() as u32);
                        if end {
                            ended = true;
                            let _ = wr.shutdown().await;
                        } else if written >= INITIAL_WINDOW / 2 {
                            worker.grant(stream, std::mem::take(&mut written));
                        }
                    }
                    Event::Reset => return Err(Next::Abort),
                    Event::Head(..) | Event::Data(..) => {
                        tracing::warn!(
                            pid = worker.peer.pid,
                            worker = worker.id,
                            stream,
                            "worker sent a head or data after the end of an opaque stream"
                        );
                        worker.send(|out| wire::encode_reset(out, stream, ResetCode::Protocol));
                        return Err(Next::Abort);
                    }
                }
            }
        };

        match tokio::try_join!(up, down) {
            Ok(((), ())) => Next::Close,
            Err(next) => next,
        }
    }
}
