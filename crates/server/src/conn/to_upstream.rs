//! The upstream exchange: a request forwarded to an upstream server over HTTP/1.1 with the
//! daemon's forwarding headers, its body streamed from the client, the response relayed
//! back; and an accepted upgrade, after which the bytes pass both ways untouched
//! ([`opaque`](super::opaque)).
//!
//! This module owns the request head an upstream gets (for both protocols) and the HTTP/1
//! side of the exchange. It must not keep the upstream's connections (`crate::upstream`
//! does), decide the framing rules (`crate::relay`), or frame the response for the client
//! ([`encode`](super::encode)).

use std::io::Write as _;
use std::sync::Arc;

use portshare_proto::header;
use portshare_router::{Reason, Rejection, Version};
use tokio::time::Instant;

use super::encode::{Response, fmt_u64, itoa_buf};
use super::headers::{app_headers, routed_host};
use super::tls_info::TlsInfo;
use super::to_worker::Origin;
use super::{Conn, Facts, Next};
use crate::body::BodyIn;
use crate::head::{Body, Head};
use crate::pages::{self, Detail};
use crate::pipeline::Piece;
use crate::queue::Queue;
use crate::relay::{self, Delimit, ReqFraming, ResponseHead, put_field, tokens};
use crate::upstream::{Turn, UpConn, Upstream};

/// Request body bytes held for the upstream before the client is read again.
const BODY_AHEAD: usize = 64 * 1024;

/// How a request body goes to the upstream: one Content-Length, or chunked.
pub(crate) fn req_framing(head: &Head<'_>, has_body: bool) -> ReqFraming {
    match head.body() {
        Body::Length(n) if n > 0 => ReqFraming::Length(n),
        Body::Length(_) | Body::None if !has_body => ReqFraming::None,
        Body::Chunked => ReqFraming::Chunked,
        _ => ReqFraming::Chunked,
    }
}

/// The path of a registration's prefix (`http://+:80/py/` -> `/py/`).
fn prefix_path(prefix: &str) -> &str {
    let rest = prefix.split_once("://").map_or(prefix, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// `target` without the prefix path `path` (which ends in `/`): `/py/a?x` -> `/a?x`,
/// `/py` and `/py/` -> `/`. A target that does not begin with it goes as it is.
pub(crate) fn strip(target: &[u8], path: &str) -> (usize, bool) {
    let path = path.as_bytes();
    let bare = &path[..path.len() - 1];
    if target.len() >= path.len() && target[..path.len()].eq_ignore_ascii_case(path) {
        return (path.len(), true);
    }
    if target.len() >= bare.len()
        && target[..bare.len()].eq_ignore_ascii_case(bare)
        && matches!(target.get(bare.len()), None | Some(b'?'))
    {
        return (bare.len(), true);
    }
    (0, false)
}

/// The request head an upstream gets, for either protocol, appended to `out`: the method,
/// `target` as routing cooked it (the canonical path, the query as received; without the
/// prefix's path when `strip_prefix`), `head`'s headers as the application gets them
/// ([`app_headers`], with the `authority` routing used) less the hop-by-hop ones and those
/// the client's `Connection` names, the forwarding headers for a client at `peer`, the
/// daemon's metadata, the body's `framing` and the `upgrade` asked for.
#[allow(clippy::too_many_arguments)]
pub(crate) fn upstream_head(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    authority: Option<&[u8]>,
    target: &[u8],
    peer: std::net::SocketAddr,
    from: Origin<'_>,
    tls: Option<&TlsInfo>,
    binding: &crate::shared::Destination,
    id: u64,
    strip_prefix: bool,
    framing: ReqFraming,
    upgrade: Option<&[u8]>,
) {
    let proto = from
        .proto
        .unwrap_or(if tls.is_some() { "https" } else { "http" });
    out.extend_from_slice(head.method());
    out.push(b' ');
    let path = prefix_path(binding.prefix.as_str());
    let stripped = if strip_prefix && path.len() > 1 {
        match strip(target, path) {
            (n, true) => {
                let rest = &target[n..];
                if !rest.starts_with(b"/") {
                    out.push(b'/');
                }
                out.extend_from_slice(rest);
                true
            }
            _ => false,
        }
    } else {
        false
    };
    if !stripped {
        out.extend_from_slice(target);
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Fields the client's Connection names do not cross (RFC 9110 §7.6.1); Host stays.
    let named = |n: &[u8]| {
        !n.eq_ignore_ascii_case(b"host")
            && head
                .headers()
                .filter(|(c, _)| c.eq_ignore_ascii_case(b"connection"))
                .any(|(_, v)| tokens(v).any(|t| t.eq_ignore_ascii_case(n)))
    };
    for (name, value) in app_headers(head, authority) {
        if name.eq_ignore_ascii_case(b"content-length") || relay::hop_by_hop(name) || named(name) {
            continue;
        }
        put_field(out, name, value);
    }
    let client = peer.ip();
    let host = routed_host(head, authority);
    out.extend_from_slice(b"Forwarded: ");
    match client {
        std::net::IpAddr::V4(a) => {
            let _ = write!(out, "for={a}");
        }
        std::net::IpAddr::V6(a) => {
            let _ = write!(out, "for=\"[{a}]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
    if let Some(h) = host {
        out.extend_from_slice(b";host=\"");
        out.extend(h.iter().filter(|&&c| c != b'"' && c != b'\\'));
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    if let Some(h) = host {
        put_field(out, b"X-Forwarded-Host", h);
    }
    let _ = write!(out, "X-Forwarded-For: {client}\r\n");
    put_field(out, b"X-Forwarded-Proto", proto.as_bytes());
    if stripped {
        put_field(
            out,
            b"X-Forwarded-Prefix",
            &path.as_bytes()[..path.len() - 1],
        );
    }
    if let Some(tls) = tls {
        put_field(out, header::TLS.as_bytes(), &tls.header);
        if let Some(cert) = &tls.client_cert {
            put_field(out, header::CLIENT_CERT.as_bytes(), cert);
        }
    }
    put_field(out, header::RAW_URL.as_bytes(), head.target());
    put_field(out, header::CLIENT_ADDR.as_bytes(), from.peer.as_bytes());
    put_field(out, header::LOCAL_ADDR.as_bytes(), from.local.as_bytes());
    put_field(
        out,
        header::URL_PREFIX.as_bytes(),
        binding.prefix.as_str().as_bytes(),
    );
    let mut num = itoa_buf();
    put_field(
        out,
        header::URL_CONTEXT.as_bytes(),
        fmt_u64(&mut num, binding.context),
    );
    put_field(out, header::REQUEST_ID.as_bytes(), fmt_u64(&mut num, id));
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => put_field(out, b"Content-Length", fmt_u64(&mut num, n)),
        ReqFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if let Some(u) = upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        put_field(out, b"Upgrade", u);
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head's fields as the client gets them: the end-to-end ones, and one
/// Content-Length, normalized (none on a 204), its digits written in `num`.
pub(crate) fn client_fields<'b>(
    resp: &'b ResponseHead,
    buf: &'b [u8],
    num: &'b mut [u8; 20],
) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + 'b {
    let length = resp
        .length
        .filter(|_| resp.status != 204)
        .map(|n| (&b"Content-Length"[..], fmt_u64(num, n)));
    resp.fields(buf).chain(length)
}

impl Conn {
    /// [`upstream_head`] for this connection's client, appended to `out`.
    #[allow(clippy::too_many_arguments)]
    fn head_for_upstream(
        &self,
        out: &mut Vec<u8>,
        head: &Head<'_>,
        authority: Option<&[u8]>,
        binding: &crate::shared::Destination,
        id: u64,
        up: &Upstream,
        framing: ReqFraming,
        upgrade: Option<&[u8]>,
    ) {
        let from = Origin {
            peer: &self.peer_text,
            local: &self.local_text,
            proto: self.proto,
        };
        upstream_head(
            out,
            head,
            authority,
            &self.scratch,
            self.peer,
            from,
            self.tls.as_deref(),
            binding,
            id,
            up.strip_prefix,
            framing,
            upgrade,
        );
    }
    /// Forwards the request to an upstream server and relays its response; an upgrade
    /// the upstream accepts turns the connection opaque.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange_upstream(
        &mut self,
        head: &Head<'_>,
        authority: Option<&[u8]>,
        binding: &crate::shared::Destination,
        id: u64,
        up: &Upstream,
        body: &mut BodyIn,
        facts: Facts,
        queue: &Arc<Queue>,
    ) -> Next {
        let share = self.shared.upstreams.clone();
        let mut c = match up.connection(&share).await {
            Ok(c) => c,
            Err(e) => {
                up.warn_failed(queue.name(), &e);
                return self.unreachable(queue, &e);
            }
        };
        let framing = req_framing(head, !body.is_done());
        let upgrade = super::headers::upgrade_offer(head);
        c.wr.clear();
        c.sent = 0;
        self.head_for_upstream(
            &mut c.wr,
            head,
            authority,
            binding,
            id,
            up,
            framing,
            upgrade.as_deref(),
        );
        // A request without a body may go again on a new connection if the pooled one
        // turns out closed before any byte of the response (RFC 9112 §9.3.1).
        let mut retry = c.reused && body.is_done() && relay::idempotent(head.method());
        // Body bytes already read leave with the head, in one write.
        if self.feed_up(&mut c, body, framing).is_err() {
            return self.bad_body(false, queue);
        }
        let mut body_until = self.timers.entity_body.fires_at(Instant::now());
        let mut out = Response::new(facts);
        out.close |= self.shared.stopping();
        // The head goes out at once; a failure shows at the first turn.
        c.push();
        // The response head, after any interim ones.
        let resp = loop {
            match relay::parse_response(&c.rd, facts.head_method, &mut c.spare) {
                Ok(None) => {}
                Ok(Some(h)) if h.status == 101 => {
                    if upgrade.is_none() {
                        return self.bad_gateway(queue, up, "101 to a request without Upgrade");
                    }
                    return self.upgraded_upstream(c, h, queue).await;
                }
                Ok(Some(h)) if h.status < 200 => {
                    // 100 Continue was the daemon's to send (spec Q12); 103 and others
                    // go to an HTTP/1.1 client as they are.
                    if h.status != 100 && facts.version == Version::Http11 {
                        self.interim(&c.rd, &h);
                        if !self.send(queue).await {
                            return Next::Abort;
                        }
                    }
                    let _ = c.rd.split_to(h.len);
                    h.recycle(&mut c.spare);
                    retry = false;
                    continue;
                }
                Ok(Some(h)) => break h,
                Err(e) => return self.bad_gateway(queue, up, e.0),
            }
            tokio::select! {
                r = c.io.ready(c.pending() > 0) => {
                    let turned = r.and_then(|()| c.turn(relay::MAX_RESPONSE_HEAD + 1, false));
                    match turned {
                        Ok(Turn::Moved) => {}
                        Ok(Turn::Eof) | Err(_) if retry && c.rd.is_empty() => {
                            // A stale pooled connection: once more on a new one.
                            retry = false;
                            let mut fresh = match up.connect(&share).await {
                                Ok(f) => f,
                                Err(e) => {
                                    up.warn_failed(queue.name(), &e);
                                    return self.unreachable(queue, &e);
                                }
                            };
                            std::mem::swap(&mut fresh.wr, &mut c.wr);
                            c = fresh;
                        }
                        // Closed with the request in hand on a new connection, as a worker
                        // may leave; on a kept one, the request may not be sent again: 502.
                        Ok(Turn::Eof) | Err(_) if c.rd.is_empty() && !c.reused => {
                            up.warn_failed(queue.name(), &"closed before a response");
                            return self.abandoned(None, queue);
                        }
                        Ok(Turn::Eof) => return self.bad_gateway(queue, up, "closed before a response"),
                        Err(e) => return self.bad_gateway(queue, up, &e.to_string()),
                    }
                }
                r = self.more_body(&mut body_until, queue), if !body.is_done() && c.pending() < BODY_AHEAD => {
                    if let Err(next) = r {
                        return next;
                    }
                    if self.feed_up(&mut c, body, framing).is_err() {
                        return self.bad_body(false, queue);
                    }
                }
            }
        };
        let status = resp.status;
        let end = matches!(resp.delimit, Delimit::None | Delimit::Framed(BodyIn::Done));
        // One Content-Length, for the encoder to write with its framing.
        let mut num = itoa_buf();
        let headers = client_fields(&resp, &c.rd[..resp.len], &mut num);
        let mut delimit = resp.delimit.clone();
        if !out.head(self.wr.tail(), status, headers, end, None) {
            return self.bad_gateway(queue, up, "a response the client cannot be given");
        }
        let upstream_close = resp.close;
        let _ = c.rd.split_to(resp.len);
        resp.recycle(&mut c.spare);
        let mut upstream_ended = false;
        while !out.finished {
            // What the upstream sent of the body so far goes out framed for the client.
            loop {
                match relay::take_body(&mut delimit, &mut c.rd, usize::MAX) {
                    Ok((data, done)) => {
                        let empty = data.is_empty();
                        if !out.data(&mut self.wr, data, done) {
                            tracing::debug!(queue = queue.name(), upstream = %up.address, "upstream broke its framing");
                            return self.abandoned(None, queue);
                        }
                        if done || empty {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(queue = queue.name(), upstream = %up.address, error = e, "upstream body failed");
                        return self.abandoned(None, queue);
                    }
                }
            }
            if out.finished {
                break;
            }
            if upstream_ended {
                if delimit == Delimit::Close && out.data(&mut self.wr, bytes::Bytes::new(), true) {
                    break;
                }
                tracing::debug!(queue = queue.name(), upstream = %up.address, "upstream closed mid-body");
                return self.abandoned(None, queue);
            }
            if !self.wr.is_empty() && !self.send(queue).await {
                return Next::Abort;
            }
            tokio::select! {
                r = c.io.ready(c.pending() > 0) => match r.and_then(|()| c.turn(usize::MAX, true)) {
                    Ok(Turn::Moved) => {}
                    Ok(Turn::Eof) => upstream_ended = true,
                    Err(e) => {
                        tracing::debug!(queue = queue.name(), upstream = %up.address, error = %e, "upstream body failed");
                        return self.abandoned(None, queue);
                    }
                },
                r = self.more_body(&mut body_until, queue), if !body.is_done() && c.pending() < BODY_AHEAD => {
                    if let Err(next) = r {
                        return next;
                    }
                    if self.feed_up(&mut c, body, framing).is_err() {
                        return self.bad_body(true, queue);
                    }
                }
            }
        }
        if !self.send(queue).await {
            return Next::Abort;
        }
        if body.is_done()
            && c.pending() == 0
            && c.rd.is_empty()
            && !upstream_close
            && !upstream_ended
            && !self.shared.stopping()
        {
            up.put_back(c, &share);
        }
        if out.close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Whether a request may wait on a pipelined connection: one without a body, safe to
    /// send again (GET or HEAD), not offering to upgrade.
    pub(super) fn pipelinable(head: &Head<'_>, body: &BodyIn, up: &Upstream) -> bool {
        up.pipeline > 1
            && body.is_done()
            && matches!(head.method(), b"GET" | b"HEAD")
            && super::headers::upgrade_offer(head).is_none()
    }

    /// [`Conn::exchange_upstream`] for a request that waits its turn on a pipelined
    /// connection ([`crate::pipeline`]). A request the pipe could not answer goes again on
    /// a connection of its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange_pipelined(
        &mut self,
        head: &Head<'_>,
        authority: Option<&[u8]>,
        binding: &crate::shared::Destination,
        id: u64,
        up: &Arc<Upstream>,
        body: &mut BodyIn,
        facts: Facts,
        queue: &Arc<Queue>,
    ) -> Next {
        let pipe = up.pipe(&self.shared.upstreams);
        let mut wr = Vec::with_capacity(1024);
        self.head_for_upstream(
            &mut wr,
            head,
            authority,
            binding,
            id,
            up,
            ReqFraming::None,
            None,
        );
        let (tx, mut rx) = crate::pipeline::reply();
        let job = crate::pipeline::Job {
            head: wr,
            head_method: facts.head_method,
            reply: tx,
        };
        if pipe.send(job).is_err() {
            return self
                .exchange_upstream(head, authority, binding, id, up, body, facts, queue)
                .await;
        }
        let mut out = Response::new(facts);
        out.close |= self.shared.stopping();
        let (resp, bytes, first, done) = loop {
            match rx.recv().await {
                Some(Piece::Interim(h, b)) => {
                    if h.status != 100 && facts.version == Version::Http11 {
                        self.interim(&b, &h);
                        if !self.send(queue).await {
                            return Next::Abort;
                        }
                    }
                }
                Some(Piece::Head(h, b, data, done)) => break (h, b, data, done),
                Some(Piece::Unanswered) | None => {
                    return self
                        .exchange_upstream(head, authority, binding, id, up, body, facts, queue)
                        .await;
                }
                Some(Piece::Failed(why)) => return self.bad_gateway(queue, up, why),
                Some(Piece::Data(..)) => return self.bad_gateway(queue, up, "body before head"),
            }
        };
        let status = resp.status;
        let end = matches!(resp.delimit, Delimit::None | Delimit::Framed(BodyIn::Done));
        let mut num = itoa_buf();
        let headers = client_fields(&resp, &bytes, &mut num);
        if !out.head(self.wr.tail(), status, headers, end, None) {
            return self.bad_gateway(queue, up, "a response the client cannot be given");
        }
        if !out.finished && !out.data(&mut self.wr, first, done) {
            tracing::debug!(queue = queue.name(), upstream = %up.address, "upstream broke its framing");
            return self.abandoned(None, queue);
        }
        while !out.finished {
            if !self.wr.is_empty() && !self.send(queue).await {
                return Next::Abort;
            }
            match rx.recv().await {
                Some(Piece::Data(data, done)) => {
                    if !out.data(&mut self.wr, data, done) {
                        tracing::debug!(queue = queue.name(), upstream = %up.address, "upstream broke its framing");
                        return self.abandoned(None, queue);
                    }
                }
                other => {
                    let error = match other {
                        Some(Piece::Failed(why)) => why,
                        _ => "the pipe sent no more of it",
                    };
                    tracing::debug!(queue = queue.name(), upstream = %up.address, error, "upstream body failed");
                    return self.abandoned(None, queue);
                }
            }
        }
        if !self.send(queue).await {
            return Next::Abort;
        }
        if out.close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Moves body bytes already read from the client on to the upstream's write buffer,
    /// framed; `Err` when the client framed them wrongly.
    fn feed_up(
        &mut self,
        c: &mut UpConn,
        body: &mut BodyIn,
        framing: ReqFraming,
    ) -> Result<(), ()> {
        while !body.is_done() && !self.rd.is_empty() && c.pending() < BODY_AHEAD {
            let (data, done) = body.take(&mut self.rd, BODY_AHEAD).map_err(|_| ())?;
            relay::frame_body(c.room(), framing, &data, done);
            if data.is_empty() && !done {
                break;
            }
        }
        Ok(())
    }

    /// Writes an interim (1xx) response head for the client.
    fn interim(&mut self, rd: &[u8], h: &ResponseHead) {
        self.wr
            .put_slice(format!("HTTP/1.1 {} ", h.status).as_bytes());
        self.wr.put_slice(
            http::StatusCode::from_u16(h.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Informational")
                .as_bytes(),
        );
        self.wr.put_slice(b"\r\n");
        for (n, v) in h.fields(&rd[..h.len]) {
            if matches!(super::encode::field(n, v), super::encode::Field::Keep) {
                self.wr.put_slice(n);
                self.wr.put_slice(b": ");
                self.wr.put_slice(v);
                self.wr.put_slice(b"\r\n");
            }
        }
        self.wr.put_slice(b"\r\n");
    }

    /// The upstream failed before its response began, or sent a head the daemon refuses:
    /// 502, logged, and the connection to it closed (dropped by the caller).
    fn bad_gateway(&mut self, queue: &Queue, up: &Upstream, why: &str) -> Next {
        up.warn_failed(queue.name(), &why);
        self.wr.clear();
        let rejection = Rejection {
            status: 502,
            reason: Reason::BadGateway,
        };
        self.log(None, Some(502), Reason::BadGateway, Some(queue.name()));
        let server = self.settings.server_header.own();
        pages::error_page(self.wr.tail(), rejection, Detail::Standard, None, server);
        Next::Close
    }

    /// The upstream accepted an upgrade: its 101 goes to the client, then the bytes pass
    /// both ways until either side is done; neither connection serves another request.
    /// Beyond the queue's `max_opaque`, the client gets 503 and the upstream connection is
    /// closed instead.
    async fn upgraded_upstream(
        &mut self,
        mut c: UpConn,
        h: ResponseHead,
        queue: &Arc<Queue>,
    ) -> Next {
        let Some(_counted) = queue.count_opaque() else {
            tracing::warn!(
                queue = queue.name(),
                max_opaque = queue.props().max_opaque,
                "an upgrade beyond the queue's opaque connections refused"
            );
            let rejection = Rejection {
                status: 503,
                reason: Reason::NotAvailable,
            };
            self.log(None, Some(503), Reason::NotAvailable, Some(queue.name()));
            let server = self.settings.server_header.own();
            pages::error_page(self.wr.tail(), rejection, Detail::Standard, Some(1), server);
            return Next::Close;
        };
        self.wr.put_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (n, v) in h.fields(&c.rd[..h.len]) {
            if matches!(
                super::encode::field(n, v),
                super::encode::Field::Keep | super::encode::Field::Server
            ) {
                self.wr.put_slice(n);
                self.wr.put_slice(b": ");
                self.wr.put_slice(v);
                self.wr.put_slice(b"\r\n");
            }
        }
        self.wr.put_slice(b"Connection: upgrade\r\n");
        if let Some(u) = &h.upgrade {
            let u = &c.rd[u.clone()];
            self.wr.put_slice(b"Upgrade: ");
            self.wr.put_slice(u);
            self.wr.put_slice(b"\r\n");
        }
        self.wr.put_slice(b"\r\n");
        let _ = c.rd.split_to(h.len);
        // What the upstream sent after its head follows the 101 at once.
        self.wr.put_slice(&c.rd);
        c.rd.clear();
        // Request bytes not yet written go first, then what the client sent after its head.
        let mut to_upstream = c.wr.split_off(c.sent);
        to_upstream.extend_from_slice(&self.rd);
        self.rd.clear();
        if !self.send(queue).await {
            return Next::Abort;
        }
        let r = super::opaque::pump(&mut self.io, &mut c.io, &to_upstream, &[]).await;
        match r {
            Ok(()) => Next::Close,
            Err(e) => {
                // A side reset or failed: the other is reset too, as when a worker dies.
                tracing::debug!(queue = queue.name(), error = %e, "opaque connection failed");
                Next::Abort
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_path_is_stripped_from_targets_it_begins() {
        assert_eq!(prefix_path("http://+:80/py/"), "/py/");
        assert_eq!(prefix_path("https://a.example:443/"), "/");
        let path = "/py/";
        assert_eq!(strip(b"/py/a/b?x", path), (4, true));
        assert_eq!(strip(b"/PY/a", path), (4, true));
        assert_eq!(strip(b"/py", path), (3, true));
        assert_eq!(strip(b"/py?x", path), (3, true));
        assert_eq!(strip(b"/pyx", path), (0, false));
        assert_eq!(strip(b"/other", path), (0, false));
    }
}
