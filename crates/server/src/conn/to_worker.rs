//! The worker exchange: a request handed to an attached worker over the worker wire, its
//! body forwarded within the stream's window, the response relayed back to the client.
//!
//! This module owns the request-head frame a worker gets and one stream's life on the
//! worker connection, from the head to its forgetting; a `101` answer hands the stream to
//! [`ws`](super::ws). It must not touch the frames' byte
//! layout (the writers of `portshare_proto::wire` are the only ones that know it), the
//! worker connection's reader and writer (`crate::worker`), or the response's framing
//! ([`encode`](super::encode)).

use std::sync::Arc;

use bytes::BytesMut;
use portshare_proto::header;
use portshare_proto::wire::{self, INITIAL_WINDOW, RequestHeadWriter, ResetCode, ResponseHead};
use portshare_router::Version;
use tokio::time::Instant;

use super::encode::{Response, fmt_u64, itoa_buf};
use super::headers::{app_headers, may_repeat, write_joined};
use super::tls_info::TlsInfo;
use super::{Conn, Facts, Next};
use crate::body::BodyIn;
use crate::head::Head;
use crate::queue::Queue;
use crate::worker::{BODY_FRAME, Event, Events, WorkerConn};

/// A stream open on a worker connection, forgotten when dropped, however the request ends.
pub(crate) struct Stream {
    worker: Arc<WorkerConn>,
    id: u32,
    events: Events,
}

impl Stream {
    /// Opens a stream on `worker`; `None` when the worker is gone.
    pub(crate) fn open(worker: &Arc<WorkerConn>) -> Option<Stream> {
        let (id, events) = worker.open()?;
        Some(Stream {
            worker: worker.clone(),
            id,
            events,
        })
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The worker connection and the stream's events, to relay them.
    pub(crate) fn parts(&mut self) -> (&Arc<WorkerConn>, &mut Events) {
        (&self.worker, &mut self.events)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.worker.forget(self.id);
    }
}

/// The connection's addresses as the metadata headers carry them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub(crate) peer: &'a str,
    pub(crate) local: &'a str,
    /// The scheme a trusted proxy says the client used (`X-Forwarded-Proto`), if any.
    pub(crate) proto: Option<&'static str>,
}

/// The request head as a worker-wire frame on `stream`, `end` when no body follows, for
/// either protocol: `head`'s headers as the application gets them ([`app_headers`], with
/// the `authority` routing used), `target` as routing cooked it, and the daemon's
/// metadata, `extra` among it. `upgrade` is what the request offers to switch to
/// ([`upgrade_offer`](super::headers::upgrade_offer)), given to the application as
/// `Connection: upgrade` and `Upgrade` (hop-by-hop headers, otherwise dropped).
#[allow(clippy::too_many_arguments)]
pub(crate) fn request_frame(
    head: &Head<'_>,
    authority: Option<&[u8]>,
    upgrade: Option<&[u8]>,
    target: &[u8],
    version: wire::Version,
    from: Origin<'_>,
    binding: &crate::shared::Destination,
    id: u64,
    stream: u32,
    end: bool,
    tls: Option<&TlsInfo>,
) -> BytesMut {
    let mut frame = BytesMut::with_capacity(256 + head.target().len() * 2);
    let mut w = RequestHeadWriter::new(&mut frame, stream, end, head.method(), target, version);
    if may_repeat(head) {
        write_joined(&mut w, app_headers(head, authority));
    } else {
        for (name, value) in app_headers(head, authority) {
            w.header(name, value);
        }
    }
    if let Some(offer) = upgrade {
        w.header(b"Connection", b"upgrade");
        w.header(b"Upgrade", offer);
    }
    let mut num = itoa_buf();
    w.header(header::RAW_URL.as_bytes(), head.target());
    w.header(header::CLIENT_ADDR.as_bytes(), from.peer.as_bytes());
    w.header(header::LOCAL_ADDR.as_bytes(), from.local.as_bytes());
    w.header(
        header::URL_PREFIX.as_bytes(),
        binding.prefix.as_str().as_bytes(),
    );
    w.header(
        header::URL_CONTEXT.as_bytes(),
        fmt_u64(&mut num, binding.context),
    );
    w.header(header::REQUEST_ID.as_bytes(), fmt_u64(&mut num, id));
    if let Some(tls) = tls {
        w.header(header::TLS.as_bytes(), &tls.header);
        if let Some(cert) = &tls.client_cert {
            w.header(header::CLIENT_CERT.as_bytes(), cert);
        }
    }
    w.finish();
    frame
}

impl Conn {
    /// The request head as a worker-wire frame on `stream`, `end` when no body follows.
    /// `authority` is that of an absolute-form target routing used (see [`app_headers`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn worker_frame(
        &self,
        head: &Head<'_>,
        authority: Option<&[u8]>,
        upgrade: Option<&[u8]>,
        binding: &crate::shared::Destination,
        id: u64,
        stream: u32,
        end: bool,
    ) -> BytesMut {
        let version = match head.version() {
            Version::Http10 => wire::Version::Http10,
            _ => wire::Version::Http11,
        };
        let from = Origin {
            peer: &self.peer_text,
            local: &self.local_text,
            proto: self.proto,
        };
        request_frame(
            head,
            authority,
            upgrade,
            &self.scratch,
            version,
            from,
            binding,
            id,
            stream,
            end,
            self.tls.as_deref(),
        )
    }

    /// Hands the request to an attached worker and relays until both directions end.
    /// `upgrade` is what the request offered to switch to, if anything: a `101` from the
    /// worker to one of those makes the connection opaque ([`ws`](super::ws)).
    pub(super) async fn exchange_worker(
        &mut self,
        frame: BytesMut,
        mut open: Stream,
        body: &mut BodyIn,
        facts: Facts,
        upgrade: Option<&[u8]>,
        queue: &Arc<Queue>,
    ) -> Next {
        let worker = &open.worker;
        let stream = open.id;
        let rx = &mut open.events;
        worker.send(|out| out.extend_from_slice(&frame));
        let mut window = u64::from(INITIAL_WINDOW);
        let mut resp = Response::new(facts);
        let mut body_until = self.timers.entity_body.fires_at(Instant::now());
        loop {
            // Forward whatever body the buffer holds, within the window, while the worker
            // reads what it is sent.
            while !body.is_done()
                && window > 0
                && !self.rd.is_empty()
                && !resp.finished
                && !worker.congested()
            {
                let max = window.min(BODY_FRAME as u64) as usize;
                match body.take(&mut self.rd, max) {
                    Ok((data, done)) => {
                        if data.is_empty() && !done {
                            break;
                        }
                        window -= data.len() as u64;
                        // A piece that fills most of its read buffer goes as the bytes
                        // read, not a copy (the next read takes a new buffer); a smaller
                        // one is copied, so that it does not keep a large buffer alive
                        // until the worker reads it.
                        if data.len() >= self.rd.capacity() {
                            worker.gather(|out| wire::gather_data(out, stream, done, data));
                        } else {
                            worker.send(|out| wire::encode_data(out, stream, done, &data));
                        }
                    }
                    Err(_) => {
                        worker.send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
                        return self.bad_body(resp.started, queue);
                    }
                }
            }
            if resp.finished {
                if !body.is_done() {
                    // Answered before the body was read: the application is done with it;
                    // the rest is drained (or the connection closed) below.
                    worker.send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
                }
                return if resp.close {
                    Next::Close
                } else {
                    Next::KeepAlive
                };
            }
            let want_body = !body.is_done() && window > 0;
            let held_back = want_body && !self.rd.is_empty() && worker.congested();
            // What the worker sent first, then room on a congested worker, then more body
            // from the client: a response is relayed before more of the request is read.
            // Each loser is dropped having taken nothing (a channel receive, a wake-up, a
            // read that did not complete), and is polled afresh on the next turn.
            tokio::select! {
                biased;
                ev = rx.recv() => {
                    // What this batch writes stays charged to the worker until the client
                    // has taken it.
                    let mut held = worker.nothing();
                    let mut next = ev;
                    loop {
                        let Some((e, charge)) = next.take() else {
                            queue.count_abandoned();
                            self.wr.clear();
                            return self.abandoned(None, queue);
                        };
                        held.merge(charge);
                        match e {
                            Event::Window(n) => window += u64::from(n),
                            Event::Head(payload, end) => {
                                let h = match ResponseHead::decode(payload) {
                                    Ok(h) => h,
                                    Err(e) => {
                                        tracing::warn!(
                                            queue = queue.name(),
                                            pid = worker.peer.pid,
                                            error = %e,
                                            "bad response head"
                                        );
                                        worker.send(|out| wire::encode_reset(out, stream, ResetCode::Protocol));
                                        self.wr.clear();
                                        return Next::Abort;
                                    }
                                };
                                // A 101 in the middle of a response is refused below,
                                // as any second head.
                                if h.status == 101 && !resp.started {
                                    drop(held);
                                    return self
                                        .upgraded(worker, stream, rx, h, upgrade, body.is_done(), end, queue)
                                        .await;
                                }
                                // A body that is already here whole becomes a Content-Length.
                                let mut exact = None;
                                if !end && let Ok(d) = rx.try_recv() {
                                    if let (Event::Data(data, true), _) = &d {
                                        exact = Some(data.len() as u64);
                                    }
                                    next = Some(d);
                                }
                                if self.shared.stopping() {
                                    resp.close = true;
                                }
                                if resp.started
                                    || !resp.head(
                                        self.wr.tail(),
                                        h.status,
                                        h.headers.iter().map(|(n, v)| (&n[..], &v[..])),
                                        end,
                                        exact,
                                    )
                                {
                                    worker.send(|out| wire::encode_reset(out, stream, ResetCode::Protocol));
                                    return Next::Abort;
                                }
                            }
                            Event::Data(data, end) => {
                                if !resp.started || !resp.data(&mut self.wr, data, end) {
                                    worker.send(|out| wire::encode_reset(out, stream, ResetCode::Protocol));
                                    return Next::Abort;
                                }
                            }
                            Event::Reset => {
                                self.wr.clear();
                                return Next::Abort;
                            }
                        }
                        // Once the response is finished, nothing after it is the client's
                        // (the worker's reader drops stray frames; this is the backstop).
                        if resp.finished {
                            break;
                        }
                        if next.is_none() {
                            match rx.try_recv() {
                                Ok(d) => next = Some(d),
                                // Gone: the next `recv` says so.
                                Err(_) => break,
                            }
                        }
                    }
                    let written = resp.take_granted();
                    // A worker gone will never finish this response: its client is let go
                    // at once, and what it holds with it, so a worker that disconnects and
                    // attaches again cannot pile up the charges (and floors) of connections
                    // gone. Written out, or the worker gone first: the write is then dropped
                    // half done, which does no harm, as the connection is reset.
                    let sent = tokio::select! {
                        biased;
                        sent = self.send(queue) => Some(sent),
                        () = worker.gone() => None,
                    };
                    match sent {
                        Some(true) => {}
                        Some(false) => {
                            worker.send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
                            return Next::Abort;
                        }
                        None => {
                            queue.count_abandoned();
                            self.wr.clear();
                            return self.abandoned(None, queue);
                        }
                    }
                    drop(held);
                    if written > 0 && !resp.finished {
                        worker.grant(stream, written);
                    }
                }
                // The worker has read enough of what waits for it: forward more body.
                () = worker.room(), if held_back => {}
                r = self.more_body(&mut body_until, queue), if want_body && self.rd.is_empty() => {
                    if let Err(next) = r {
                        worker.send(|out| wire::encode_reset(out, stream, ResetCode::Cancel));
                        return next;
                    }
                }
            }
        }
    }
}
