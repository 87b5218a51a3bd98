//! One HTTP/2 stream: a request from its decoded header list to the end of its response.
//!
//! The header list is rebuilt as an HTTP/1.1 head (`:path` the target, `:authority` the
//! Host, cookies joined with `; ` as RFC 9113 §8.2.3 asks) and parsed by the HTTP/1 parser,
//! so MaxRequestBytes, MaxFieldLength and every check of the head are the same for both
//! protocols; routing, admission, the request the application gets and the refusals are
//! [`crate::conn::admit`]'s, [`request_frame`]'s and [`upstream_request`]'s.
//!
//! This module owns what is HTTP/2's own in a request's life: the request body's window,
//! opened as the worker's window lets the body go on; the response as HEADERS and DATA,
//! written as the client's window allows and cut by `MinSendRate`; and a client's reset,
//! which lets go of the request at once (a reset to the worker, the slot back to the queue).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, RETRY_AFTER, SERVER};
use http::{HeaderName, HeaderValue};
use portshare_proto::wire::{self, INITIAL_WINDOW, ResetCode, ResponseHead};
use portshare_router::{Endpoint, Reason, Rejection, Scheme};
use tokio::time::{Instant, timeout_at};

use super::Link;
use super::head::rebuild;
use crate::body::BodyIn;
use crate::conn::admit::{self, Refused, Routed, Taken};
use crate::conn::encode::{Field, field, itoa_buf};
use crate::conn::to_upstream::{client_fields, req_framing, upstream_head};
use crate::conn::to_worker::{Origin, Stream, request_frame};
use crate::head::{Parsed, parse_head};
use crate::pages::{self, Detail};
use crate::queue::Queue;
use crate::relay::{self, Delimit, ReqFraming};
use crate::shared::Settings;
use crate::timers::RequestTimers;
use crate::upstream::{Turn, UpConn, Upstream};
use crate::worker::{BODY_FRAME, Event};

mod upstream;

/// What a waiting write may be allowed beyond the bytes the client has taken, as HTTP/1's
/// `MinSendRate` allows.
const AHEAD: usize = 16 * 1024;

/// The response side of a stream.
struct Out {
    respond: SendResponse<Bytes>,
    /// The body's sender, once the head is sent with more to come.
    send: Option<SendStream<Bytes>>,
    /// The access log's line, once the request is routed.
    access: Option<Arc<crate::accesslog::Request>>,
}

impl Out {
    /// Resets the stream.
    fn reset(&mut self, reason: h2::Reason) {
        if let Some(a) = &self.access {
            a.aborted();
        }
        match &mut self.send {
            Some(s) => s.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
    }

    /// Returns once the client has reset the stream (or the connection is gone).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    async fn client_reset(&mut self) {
        let _ = poll_fn(|cx| match &mut self.send {
            Some(s) => s.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        })
        .await;
    }

    /// Answers with the daemon's page for `rejection`, as HTTP/1 does but for the
    /// connection's closing: the page ends the stream, and the other streams go on.
    fn page(
        &mut self,
        settings: &Settings,
        rejection: Rejection,
        detail: Detail,
        retry: Option<u64>,
    ) {
        if let Some(a) = &self.access {
            a.ended(Some(rejection.status), rejection.reason);
        }
        let (body, _) = pages::page_body(rejection, detail);
        let mut resp = http::Response::builder()
            .status(rejection.status)
            .header(CONTENT_TYPE, "text/html; charset=us-ascii")
            .header(CONTENT_LENGTH, body.len())
            .header(DATE, date());
        if let Some(server) = settings.server_header.own() {
            resp = resp.header(SERVER, server);
        }
        if let Some(secs) = retry.filter(|_| rejection.status == 503) {
            resp = resp.header(RETRY_AFTER, secs);
        }
        let Ok(resp) = resp.body(()) else {
            self.respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        };
        if let Ok(mut send) = self.respond.send_response(resp, false) {
            let _ = send.send_data(Bytes::from(body), true);
        }
    }
}

/// The `Date` header's value, now.
fn date() -> HeaderValue {
    let mut b = BytesMut::with_capacity(32);
    pages::put_date(&mut b);
    HeaderValue::from_maybe_shared(b.freeze())
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// A stream's request, as the error log names it.
struct Named {
    method: Bytes,
    target: Bytes,
}

/// Serves one stream.
pub(super) async fn serve(
    link: Arc<Link>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let began = std::time::Instant::now();
    let settings = link.shared.settings.load_full();
    let (parts, body) = req.into_parts();
    let has_body = !body.is_end_stream();
    let named = Named {
        method: Bytes::copy_from_slice(parts.method.as_str().as_bytes()),
        target: parts
            .uri
            .path_and_query()
            .map(|p| Bytes::copy_from_slice(p.as_str().as_bytes()))
            .unwrap_or_default(),
    };
    let mut out = Out {
        respond,
        send: None,
        access: None,
    };
    let log = |status, reason, queue: Option<&str>| {
        let request = Some((&named.method[..], &named.target[..]));
        link.log(&settings, request, status, reason, queue);
    };
    let raw = match rebuild(&parts, has_body) {
        Ok(raw) => raw,
        Err(rejection) => {
            log(Some(rejection.status), rejection.reason, None);
            out.page(&settings, rejection, Detail::Standard, None);
            return;
        }
    };
    drop(parts);
    let head = match parse_head(&raw, &settings.head_limits) {
        Ok(Parsed::Complete { head, .. }) => head,
        Ok(Parsed::Partial) => {
            log(Some(400), Reason::BadRequest, None);
            let rejection = Rejection {
                status: 400,
                reason: Reason::BadRequest,
            };
            out.page(&settings, rejection, Detail::Standard, None);
            return;
        }
        Err(e) => {
            let rejection = e.rejection();
            log(Some(rejection.status), rejection.reason, None);
            out.page(&settings, rejection, Detail::Standard, None);
            return;
        }
    };
    // As on HTTP/1: a binding that requires it answers a Host other than the SNI name
    // with 421 (the page and the line HTTP/1 gives).
    if link.tls.require_sni_match && !crate::conn::sni_matches(link.tls.sni.as_deref(), head.host())
    {
        let misdirected = Rejection {
            status: 421,
            reason: Reason::Misdirected,
        };
        log(Some(421), Reason::Misdirected, None);
        out.page(&settings, misdirected, Detail::Standard, None);
        return;
    }

    let request_id = link
        .shared
        .request_ids
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let endpoint = Endpoint::new(Scheme::Https, link.local);
    let mut target = Vec::new();
    let Routed { binding, authority } =
        match admit::route(&link.shared, &settings, &endpoint, &head, &mut target) {
            Ok(r) => r,
            Err(Some(rejection)) => {
                log(Some(rejection.status), rejection.reason, None);
                out.page(&settings, rejection, Detail::Standard, Some(1));
                return;
            }
            Err(None) => {
                out.reset(h2::Reason::REFUSED_STREAM);
                return;
            }
        };
    binding.site.request(head.method());
    let queue = binding.queue.clone();
    // Behind a trusted proxy, the client it forwards for (port 0: seldom told).
    let client = crate::trust::client(&settings.trusted, &head, link.peer.ip());
    out.access = crate::accesslog::Request::begin(
        &settings.access,
        &queue,
        client,
        link.local,
        &head,
        &target,
        began,
    );
    let timers = settings.timers;
    let admitted = if link.count(&queue) {
        // A client that resets the stream while it waits leaves the queue at once.
        tokio::select! {
            r = admit::admit(&link.shared, &queue, &timers) => r,
            () = out.client_reset() => return,
        }
    } else {
        let (verbosity, retry) = queue.refusal(&timers);
        Err(Refused::Unavailable(Reason::ConnLimit, verbosity, retry))
    };
    let (slot, taken) = match admitted {
        Ok(a) => a,
        Err(refused) => {
            let (status, reason) = refused.logged();
            log(status, reason, Some(queue.name()));
            if let Some(a) = &out.access {
                a.ended(status, reason);
            }
            match refused.page() {
                Some((rejection, detail, retry)) => out.page(&settings, rejection, detail, retry),
                // HTTP/1 resets the connection; here only the stream is refused, and a
                // client may send it again.
                None if matches!(refused, Refused::Unavailable(..)) => {
                    out.reset(h2::Reason::REFUSED_STREAM)
                }
                None => out.reset(h2::Reason::CANCEL),
            }
            return;
        }
    };
    let request_timers = slot.timers().resolve(&timers);
    // Handed to the application: now is the time for 100 Continue, as on HTTP/1 (spec
    // Q12); an interim HEADERS frame (RFC 9113 §8.1).
    if has_body
        && head.expect_continue()
        && let Ok(interim) = http::Response::builder().status(100).body(())
    {
        let _ = out.respond.send_informational(interim);
    }
    let (peer, peer_text) = if client == link.peer.ip().to_canonical() {
        (
            link.peer,
            std::borrow::Cow::Borrowed(link.peer_text.as_str()),
        )
    } else {
        let p = std::net::SocketAddr::new(client, 0);
        (p, std::borrow::Cow::Owned(p.to_string()))
    };
    let from = Origin {
        peer: &peer_text,
        local: &link.local_text,
        proto: crate::trust::proto(&settings.trusted, &head, link.peer.ip()),
    };
    let ctx = Ctx {
        link: &link,
        settings: &settings,
        queue: &queue,
        timers: request_timers,
        head_method: head.method() == b"HEAD",
        named: &named,
        access: out.access.clone(),
    };
    match taken {
        Taken::Worker(mut stream) => {
            // No upgrade over HTTP/2 (RFC 9113 §8.2.2): a worker's `101` resets the stream.
            let frame = request_frame(
                &head,
                authority,
                None,
                &target,
                wire::Version::Http11,
                from,
                &binding,
                request_id,
                stream.id(),
                !has_body,
                Some(&link.tls),
            );
            ctx.to_worker(&mut out, &mut stream, frame, body, has_body)
                .await;
        }
        Taken::Upstream(up) => {
            let framing = req_framing(&head, has_body);
            let mut req = Vec::with_capacity(512 + target.len());
            upstream_head(
                &mut req,
                &head,
                authority,
                &target,
                peer,
                from,
                Some(&link.tls),
                &binding,
                request_id,
                up.strip_prefix,
                framing,
                None,
            );
            let idempotent = relay::idempotent(head.method());
            ctx.to_upstream(&mut out, &up, req, framing, body, has_body, idempotent)
                .await;
        }
    }
    drop(slot);
}

/// What an exchange needs of its stream.
struct Ctx<'a> {
    link: &'a Link,
    settings: &'a Settings,
    queue: &'a Queue,
    timers: RequestTimers,
    head_method: bool,
    named: &'a Named,
    /// The access log's line (the stream's `Out` holds it too).
    access: Option<Arc<crate::accesslog::Request>>,
}

/// How a write of response bytes failed.
enum Failed {
    /// The client reset the stream or the connection is gone.
    Gone,
    /// The client took the bytes more slowly than `MinSendRate`.
    Slow,
}

/// The response as it is relayed: its framing, checked as HTTP/1's encoder checks it.
#[derive(Default)]
struct Relay {
    started: bool,
    finished: bool,
    /// No body goes to the client (HEAD, 204, 304): what comes is dropped.
    bodiless: bool,
    /// Body bytes still promised by a Content-Length.
    left: Option<u64>,
    /// Body bytes written since the last window grant to the worker.
    granted: u32,
}

impl Ctx<'_> {
    fn log(&self, status: Option<u16>, reason: Reason) {
        if let Some(a) = &self.access {
            a.ended(status, reason);
        }
        let request = Some((&self.named.method[..], &self.named.target[..]));
        self.link.log(
            self.settings,
            request,
            status,
            reason,
            Some(self.queue.name()),
        );
    }

    /// The response head for the client from an application's status and headers, or
    /// `None` for one the daemon does not relay (a bad field, an interim status, lengths
    /// that disagree). `exact` is the body's length when it is known in advance.
    fn response_head<'h>(
        &self,
        relay: &mut Relay,
        status: u16,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
        end: bool,
        exact: Option<u64>,
    ) -> Option<http::Response<()>> {
        if !(200..=999).contains(&status) {
            return None;
        }
        let mut resp = http::Response::builder().status(status);
        let mut length = None;
        let mut has_server = false;
        for (name, value) in headers {
            match field(name, value) {
                Field::Length(Some(n)) if length.is_none_or(|m| m == n) => length = Some(n),
                Field::Length(_) | Field::Bad => return None,
                Field::Owned => {}
                Field::Server | Field::Keep => {
                    has_server |= name.eq_ignore_ascii_case(b"server");
                    let name = HeaderName::from_bytes(name).ok()?;
                    let value = HeaderValue::from_bytes(value).ok()?;
                    resp = resp.header(name, value);
                }
            }
        }
        relay.bodiless = self.head_method || status == 204 || status == 304;
        let length = length.or(if end { Some(0) } else { exact });
        if let Some(n) = length {
            resp = resp.header(CONTENT_LENGTH, n);
            if !relay.bodiless {
                relay.left = Some(n);
            }
        }
        if end && relay.left.is_some_and(|n| n > 0) {
            return None;
        }
        if let Some(server) = self.settings.server_header.apps().filter(|_| !has_server) {
            resp = resp.header(SERVER, server);
        }
        resp.header(DATE, date()).body(()).ok()
    }

    /// Sends the response head; false when the stream is gone.
    fn send_head(
        &self,
        out: &mut Out,
        relay: &mut Relay,
        resp: http::Response<()>,
        end: bool,
    ) -> bool {
        relay.started = true;
        let end_now = end || relay.bodiless;
        if let Some(a) = &self.access {
            a.status(resp.status().as_u16());
            if end_now {
                a.done();
            }
        }
        match out.respond.send_response(resp, end_now) {
            Ok(send) => {
                if !end_now {
                    out.send = Some(send);
                }
                relay.finished = end;
                true
            }
            Err(_) => false,
        }
    }

    /// Relays body bytes; `Err(None)` when the application broke its framing.
    async fn send_body(
        &self,
        out: &mut Out,
        relay: &mut Relay,
        data: Bytes,
        end: bool,
    ) -> Result<(), Option<Failed>> {
        if relay.finished {
            return if data.is_empty() { Ok(()) } else { Err(None) };
        }
        if end {
            relay.finished = true;
        }
        if relay.bodiless {
            return Ok(());
        }
        if let Some(left) = &mut relay.left {
            if data.len() as u64 > *left || (end && data.len() as u64 != *left) {
                return Err(None);
            }
            *left -= data.len() as u64;
        }
        relay.granted = relay.granted.saturating_add(data.len() as u32);
        let Some(send) = &mut out.send else {
            return Err(None);
        };
        push(send, data, end, self.timers.min_send_rate())
            .await
            .map_err(Some)?;
        if end && let Some(a) = &self.access {
            a.done();
        }
        Ok(())
    }

    /// Logs a failed write as HTTP/1 does.
    fn failed(&self, f: Failed) {
        match f {
            Failed::Slow => self.log(None, Reason::TimerMinBytesPerSecond),
            Failed::Gone => self.log(None, Reason::ConnectionDropped),
        }
    }

    /// Hands the request to an attached worker and relays until both directions end.
    async fn to_worker(
        &self,
        out: &mut Out,
        stream: &mut Stream,
        frame: BytesMut,
        mut body: RecvStream,
        has_body: bool,
    ) {
        let id = stream.id();
        let (worker, rx) = stream.parts();
        worker.send(|o| o.extend_from_slice(&frame));
        let mut window = u64::from(INITIAL_WINDOW);
        let mut pending: Option<Bytes> = None;
        let mut body_done = !has_body;
        let mut end_sent = !has_body;
        let mut body_until = self.timers.entity_body.fires_at(Instant::now());
        let mut relay = Relay::default();
        loop {
            // Forward what is in hand within the worker's window; the client's window
            // opens by what went on.
            while window > 0 && !worker.congested() && !relay.finished {
                let Some(mut chunk) = pending.take() else {
                    break;
                };
                let n = chunk.len().min(window as usize).min(BODY_FRAME);
                let part = chunk.split_to(n);
                let _ = body.flow_control().release_capacity(n);
                window -= n as u64;
                let last = chunk.is_empty() && body_done;
                worker.send(|o| wire::encode_data(o, id, last, &part));
                end_sent |= last;
                if !chunk.is_empty() {
                    pending = Some(chunk);
                }
            }
            if body_done && pending.is_none() && !end_sent && !relay.finished {
                worker.send(|o| wire::encode_data(o, id, true, &[]));
                end_sent = true;
            }
            if relay.finished {
                if !end_sent {
                    // Answered before the body was read: the application is done with it.
                    worker.send(|o| wire::encode_reset(o, id, ResetCode::Cancel));
                }
                return;
            }
            let want_body = !body_done && pending.is_none();
            let held_back = pending.is_some() && window > 0 && worker.congested();
            tokio::select! {
                biased;
                ev = rx.recv() => {
                    let mut held = worker.nothing();
                    let mut next = ev;
                    loop {
                        let Some((e, charge)) = next.take() else {
                            self.queue.count_abandoned();
                            self.log(None, Reason::ConnectionAbandonedByReqQueue);
                            out.reset(h2::Reason::INTERNAL_ERROR);
                            return;
                        };
                        held.merge(charge);
                        let ok = match e {
                            Event::Window(n) => {
                                window += u64::from(n);
                                true
                            }
                            Event::Head(payload, end) => match ResponseHead::decode(payload) {
                                Ok(h) => {
                                    let mut exact = None;
                                    if !end && let Ok(d) = rx.try_recv() {
                                        if let (Event::Data(data, true), _) = &d {
                                            exact = Some(data.len() as u64);
                                        }
                                        next = Some(d);
                                    }
                                    let headers = h.headers.iter().map(|(n, v)| (&n[..], &v[..]));
                                    match self.response_head(&mut relay, h.status, headers, end, exact) {
                                        Some(resp) if !relay.started => {
                                            if !self.send_head(out, &mut relay, resp, end) {
                                                worker.send(|o| wire::encode_reset(o, id, ResetCode::Cancel));
                                                return;
                                            }
                                            true
                                        }
                                        _ => false,
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(queue = self.queue.name(), pid = worker.peer.pid, error = %e, "bad response head");
                                    false
                                }
                            },
                            Event::Data(data, end) => {
                                if !relay.started {
                                    false
                                } else {
                                    // The client's window may hold this write back. A worker
                                    // that leaves meanwhile will never finish the response:
                                    // the stream is let go at once, and what it holds with it,
                                    // as HTTP/1 lets its connection go. The last bytes are
                                    // the whole rest of the response and are written out.
                                    let sent = tokio::select! {
                                        biased;
                                        r = self.send_body(out, &mut relay, data, end) => Some(r),
                                        () = worker.gone(), if !end => None,
                                    };
                                    let Some(sent) = sent else {
                                        self.queue.count_abandoned();
                                        self.log(None, Reason::ConnectionAbandonedByReqQueue);
                                        out.reset(h2::Reason::INTERNAL_ERROR);
                                        return;
                                    };
                                    match sent {
                                        Ok(()) => true,
                                        Err(None) => false,
                                        Err(Some(f)) => {
                                            self.failed(f);
                                            out.reset(h2::Reason::CANCEL);
                                            worker.send(|o| wire::encode_reset(o, id, ResetCode::Cancel));
                                            return;
                                        }
                                    }
                                }
                            }
                            Event::Reset => {
                                out.reset(h2::Reason::INTERNAL_ERROR);
                                return;
                            }
                        };
                        if !ok {
                            worker.send(|o| wire::encode_reset(o, id, ResetCode::Protocol));
                            out.reset(h2::Reason::INTERNAL_ERROR);
                            return;
                        }
                        if relay.finished {
                            break;
                        }
                        if next.is_none() {
                            match rx.try_recv() {
                                Ok(d) => next = Some(d),
                                Err(_) => break,
                            }
                        }
                    }
                    drop(held);
                    if relay.granted >= INITIAL_WINDOW / 2 && !relay.finished {
                        worker.grant(id, std::mem::take(&mut relay.granted));
                    }
                }
                () = worker.room(), if held_back => {}
                d = timeout_at(body_until, body.data()), if want_body => match d {
                    Err(_) => {
                        self.log(None, Reason::TimerEntityBody);
                        out.reset(h2::Reason::CANCEL);
                        worker.send(|o| wire::encode_reset(o, id, ResetCode::Cancel));
                        return;
                    }
                    Ok(None) => body_done = true,
                    Ok(Some(Ok(chunk))) => {
                        body_until = self.timers.entity_body.fires_at(Instant::now());
                        body_done = body.is_end_stream();
                        if !chunk.is_empty() {
                            pending = Some(chunk);
                        }
                    }
                    Ok(Some(Err(_))) => {
                        // The client reset the stream, or the connection is gone.
                        worker.send(|o| wire::encode_reset(o, id, ResetCode::Cancel));
                        return;
                    }
                },
                () = out.client_reset() => {
                    worker.send(|o| wire::encode_reset(o, id, ResetCode::Cancel));
                    return;
                }
            }
        }
    }
}

/// Writes `data` as the client's window and the framing layer's buffer allow, as fast as
/// `rate` (MinSendRate) asks: from the moment a write has to wait, it is cut once the time
/// spent exceeds `max(1 s, (written + min(left, 16 KiB)) / rate)`, as HTTP/1's is.
async fn push(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    rate: Option<u32>,
) -> Result<(), Failed> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(|_| Failed::Gone);
    }
    let mut waiting: Option<(Instant, usize)> = None;
    let mut written = 0;
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        if send.capacity() == 0 {
            let wait = poll_fn(|cx| send.poll_capacity(cx));
            let got = match rate {
                None => wait.await,
                Some(rate) => {
                    let (since, from) = *waiting.get_or_insert((Instant::now(), written));
                    let owed =
                        (written - from + data.len().min(AHEAD)) as f64 / f64::from(rate.max(1));
                    let deadline = since + Duration::from_secs_f64(owed.max(1.0));
                    timeout_at(deadline, wait).await.map_err(|_| Failed::Slow)?
                }
            };
            match got {
                Some(Ok(_)) => {}
                _ => return Err(Failed::Gone),
            }
            if send.capacity() == 0 {
                continue;
            }
        }
        let n = send.capacity().min(data.len());
        let part = data.split_to(n);
        written += n;
        send.send_data(part, end && data.is_empty())
            .map_err(|_| Failed::Gone)?;
    }
    Ok(())
}
