//! The client side: one task per TCP connection, running HTTP.sys's HTTP/1 loop.
//!
//! Requests on a connection are handled one at a time, in order: a pipelined request waits
//! in the read buffer until the response before it is complete, as HTTP.sys delivers it.
//! For each request: read and check the head, canonicalize and route it, take a slot in the
//! winning queue (or wait for one, or be refused), hand the request to the slot's worker or
//! upstream, stream the body there and the response back.
//!
//! This module owns the connection: its socket and buffers, the loop over requests, reading
//! a head under `HeaderWait` and `IdleConnection`, routing and admission, writing out under
//! `MinSendRate`, and the body helpers the exchanges share (reading more under
//! `EntityBody`, draining under `DrainEntityBody`). The parts of a request's life are in
//! its children, as hyper splits its HTTP/1 connection:
//!
//! - [`to_worker`]: the exchange with an attached worker, and the request-head frame;
//! - [`to_upstream`]: the exchange with an upstream server, and the request it gets;
//! - [`ws`]: a connection a worker upgraded with `101` (WebSocket), opaque from then on;
//!   [`opaque`]: the bytes both ways once an upgrade is accepted;
//! - [`headers`]: what an application receives of the client's headers;
//! - [`encode`]: the response as the client gets it: head, framing, numbers;
//! - [`refuse`]: the answers of a request that is not served, and their error-log lines;
//! - [`io`]: the byte stream, plain TCP or TLS ([`Io`]), and [`tls_info`]: what an https
//!   connection's requests carry of its handshake.
//!
//! It must not touch the worker wire's byte layout (that is `portshare_proto::wire`'s), the
//! queue's accounting (a [`Slot`](crate::queue::Slot) held and dropped is all it does), or
//! the route table (it reads a snapshot).

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use portshare_proto::gather::Gather;
use portshare_router::{Endpoint, Reason, Scheme, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::Instrument;

use crate::accesslog::{self, End};
use crate::body::{BodyIn, Chunked};
use crate::head::{Body, Parsed, parse_head};
use crate::pages;
use crate::queue::{Counted, Queue};
use crate::shared::{Settings, Shared};
use crate::timers::RequestTimers;
use admit::{Refused, Routed, Taken};

pub(crate) use io::{Io, TlsStream, linger};
pub(crate) use tls_info::TlsInfo;

pub(crate) mod admit;
pub(crate) mod encode;
pub(crate) mod headers;
mod io;
pub(crate) mod opaque;
mod refuse;
pub(crate) mod tls_info;
pub(crate) mod to_upstream;
pub(crate) mod to_worker;
mod ws;

/// How a request left the connection.
enum Next {
    /// Ready for the next request.
    KeepAlive,
    /// Close after flushing what was written.
    Close,
    /// Reset: no more bytes, RST to the client.
    Abort,
}

/// One client connection.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    /// Limits, timers and the error log, as of this request (a reload applies from the
    /// next one).
    settings: Arc<Settings>,
    io: Io,
    /// The handshake's facts, on an https connection.
    tls: Option<Box<TlsInfo>>,
    rd: BytesMut,
    /// What goes to the client next: the daemon's own bytes, and body payloads kept by
    /// reference.
    wr: Gather,
    /// The connection's client: the socket's peer, or a PROXY header's source.
    origin: SocketAddr,
    /// The request's client: `origin`, or the one a trusted proxy forwards for (its port
    /// 0: forwarding headers seldom tell it).
    peer: SocketAddr,
    local: SocketAddr,
    /// The scheme a trusted proxy says the request's client used, for what upstreams are
    /// told; routing never reads it.
    proto: Option<&'static str>,
    /// `peer` and `local` as the metadata headers carry them, formatted once per connection.
    peer_text: String,
    local_text: String,
    /// The target the application gets (the cooked path re-encoded, then the raw query),
    /// written for each request into room kept from the last.
    scratch: Vec<u8>,
    /// The queue of the latest request, which counts this connection against its
    /// connection limit.
    site: Option<Counted>,
    /// The timers of the request in hand: the service's until it is routed, then its queue's.
    timers: RequestTimers,
    /// The request in hand, for the error log's version, verb and URL.
    current: Option<Current>,
    /// The access log's line of the request in hand, once it is routed.
    access: Option<Arc<crate::accesslog::Request>>,
    /// The site of the latest request, which the connection's bytes count for.
    bytes_site: Option<Arc<crate::metrics::SiteCounters>>,
}

/// What the error log says of the request in hand (slices of its head's bytes).
struct Current {
    version: Version,
    method: Bytes,
    target: Bytes,
}

/// How a wait for the client's next bytes ended.
enum Wait {
    /// Bytes (or the end of the stream) are there to read.
    Ready,
    /// The timer fired.
    TimedOut,
    /// The daemon is stopping and the client had sent nothing; or the socket failed.
    Gone,
}

/// Serves an http client connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, io: TcpStream, peer: SocketAddr, local: SocketAddr) {
    let _ = io.set_nodelay(true);
    serve_io(shared, Io::Tcp(io), peer, local, None).await;
}

/// Serves a client connection over `io` until it closes; `tls` for an https one, whose
/// handshake is done.
pub(crate) async fn serve_io(
    shared: Arc<Shared>,
    io: Io,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Box<TlsInfo>>,
) {
    let settings = shared.settings.load_full();
    // Buffers are taken when bytes arrive, start small and grow as needed; a large one is
    // given back while the connection idles. A connection that has sent nothing costs
    // little more than its socket.
    let mut conn = Conn {
        timers: RequestTimers::service(&settings.timers),
        settings,
        shared,
        io,
        tls,
        rd: BytesMut::new(),
        wr: Gather::default(),
        origin: peer,
        peer,
        local,
        proto: None,
        peer_text: peer.to_string(),
        local_text: local.to_string(),
        scratch: Vec::new(),
        site: None,
        current: None,
        access: None,
        bytes_site: None,
    };
    let mut first = true;
    loop {
        match conn.request(first).await {
            Next::KeepAlive => {
                accesslog::end(conn.access.take(), End::Written);
                // Lets the head's bytes go before the connection idles.
                conn.current = None;
                first = false;
            }
            Next::Close => {
                let flushed = conn.flush().await;
                let how = if flushed.is_ok() {
                    End::Written
                } else {
                    End::Gone
                };
                accesslog::end(conn.access.take(), how);
                if flushed.is_err() {
                    let _ = socket2::SockRef::from(conn.io.tcp()).set_linger(Some(Duration::ZERO));
                    return;
                }
                let _ = conn.io.shutdown().await;
                io::linger(&mut conn.io).await;
                return;
            }
            Next::Abort => {
                accesslog::end(conn.access.take(), End::Reset);
                let _ = socket2::SockRef::from(conn.io.tcp()).set_linger(Some(Duration::ZERO));
                return;
            }
        }
    }
}

/// The parts of a request kept after its head has been handed on.
#[derive(Clone, Copy)]
struct Facts {
    version: Version,
    keep_alive: bool,
    head_method: bool,
    expect_continue: bool,
    /// The `Server` value an application's response without one gets (`DisableServerHeader`).
    server: Option<&'static str>,
}

impl Conn {
    /// Writes out the write buffer, as fast as `MinSendRate` asks of the client: a client
    /// taking it more slowly is logged `Timer_MinBytesPerSecond`, and the write fails.
    ///
    /// The allowance is judged on what the client drains, not on what is buffered: from
    /// the moment the write has to wait, it is cut once the time spent exceeds
    /// `max(1 s, (drained + min(pending, 16 KiB)) / rate)`, recomputed as bytes drain. A
    /// client reading at the rate or faster is never cut; one reading nothing is cut after
    /// `16 KiB / rate` (about 109 s at the default 150 B/s) however much is buffered; a slow
    /// one after a bounded time.
    async fn flush(&mut self) -> std::io::Result<()> {
        /// What a waiting write is allowed beyond the bytes the client has taken.
        const AHEAD: usize = 16 * 1024;
        let rate = self.timers.min_send_rate();
        let mut at = 0;
        // When the write began to wait, and how far it had got.
        let mut waiting: Option<(Instant, usize)> = None;
        let mut slow = false;
        if let Some(a) = &self.access {
            a.writing(self.wr.chunk());
        }
        let mut r = Ok(());
        let total = self.wr.len();
        while at < total {
            let written = {
                let mut slices = [IoSlice::new(&[]); 16];
                let n = self.wr.chunks_vectored(&mut slices);
                let mut write = std::pin::pin!(self.io.write_vectored(&slices[..n]));
                // Most writes fit the socket's buffer at once: the timer is armed only for one
                // that has to wait for the client.
                match (poll_once(write.as_mut()).await, rate) {
                    (Some(w), _) => w,
                    (None, None) => write.await,
                    (None, Some(rate)) => {
                        let (since, from) = *waiting.get_or_insert((Instant::now(), at));
                        let drained = at - from;
                        let pending = total - at;
                        let owed = (drained + pending.min(AHEAD)) as f64 / f64::from(rate.max(1));
                        let deadline = since + Duration::from_secs_f64(owed.max(1.0));
                        match timeout_at(deadline, write).await {
                            Ok(w) => w,
                            Err(_) => {
                                slow = true;
                                Err(std::io::ErrorKind::TimedOut.into())
                            }
                        }
                    }
                }
            };
            match written {
                Ok(0) => {
                    r = Err(std::io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => {
                    at += n;
                    self.wr.advance(n);
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        // TLS takes what is written into its session and may hold records back until they
        // can be sent: they are pushed out under the same allowance.
        if r.is_ok() && matches!(self.io, Io::Tls(_)) {
            let allowance = rate.map_or(Duration::MAX, |rate| {
                Duration::from_secs_f64((AHEAD as f64 / f64::from(rate.max(1))).max(1.0))
            });
            r = match timeout(allowance, self.io.flush()).await {
                Ok(r) => r,
                Err(_) => {
                    slow = true;
                    Err(std::io::ErrorKind::TimedOut.into())
                }
            };
        }
        if slow {
            let queue = self.site.as_ref().map(|c| c.queue().clone());
            self.log(
                None,
                None,
                Reason::TimerMinBytesPerSecond,
                queue.as_deref().map(Queue::name),
            );
        }
        if let Some(site) = &self.bytes_site {
            site.written(at);
        }
        self.wr.clear();
        r
    }

    /// Reads more of a request body before `until`, which moves on by EntityBody each time
    /// bytes come (spec §5: a gap timer, re-armed by body data and nothing else). Otherwise
    /// the connection's fate, logged: the client left (`Client_Reset`) or the gap was too
    /// long (`Timer_EntityBody`).
    async fn more_body(&mut self, until: &mut Instant, queue: &Queue) -> Result<(), Next> {
        match timeout_at(*until, self.fill(true)).await {
            Ok(Ok(n)) if n > 0 => {
                *until = self.timers.entity_body.fires_at(Instant::now());
                Ok(())
            }
            Ok(_) => {
                self.log(None, None, Reason::ClientReset, Some(queue.name()));
                Err(Next::Abort)
            }
            Err(_) => {
                self.log(None, None, Reason::TimerEntityBody, Some(queue.name()));
                Err(Next::Close)
            }
        }
    }

    /// Writes out part of a response; false when the client is gone, logged
    /// `Connection_Dropped` (or too slow, logged by [`Conn::flush`]).
    async fn send(&mut self, queue: &Queue) -> bool {
        match self.flush().await {
            Ok(()) => true,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::TimedOut {
                    self.log(None, None, Reason::ConnectionDropped, Some(queue.name()));
                }
                false
            }
        }
    }

    /// Waits for the client's next bytes until `until`, holding no buffers meanwhile. When
    /// the daemon begins to stop, a client that sent nothing is let go.
    async fn await_bytes(&mut self, until: Instant) -> Wait {
        // Small buffers stay for the next request; large ones (a body streamed through,
        // a large response) go.
        const KEEP: usize = 8192;
        if self.rd.is_empty() && self.rd.capacity() > KEEP {
            self.rd = BytesMut::new();
        }
        if self.wr.is_empty() && self.wr.capacity() > KEEP {
            self.wr = Gather::default();
        }
        let stop = self.shared.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if !self.shared.stopping() {
            // Bytes (or the end, or an error), the daemon stopping, or the timer, in that
            // order when several are ready. The losers are dropped whole: `readable` reads
            // nothing, and `stop` is a broadcast behind the `stopping` flag checked below.
            tokio::select! {
                biased;
                r = self.io.readable() => return if r.is_ok() { Wait::Ready } else { Wait::Gone },
                () = &mut stop => {}
                () = sleep_until(until) => return Wait::TimedOut,
            }
        }
        // Stopping: bytes already here are a request to serve; otherwise the connection goes.
        let readable = std::pin::pin!(self.io.readable());
        match poll_once(readable).await {
            Some(Ok(())) => Wait::Ready,
            _ => Wait::Gone,
        }
    }

    /// Reads more bytes into the read buffer; `Ok(0)` at end of stream. `body`: a request
    /// body is streaming through, read up to [`BODY_READ`] at a time.
    async fn fill(&mut self, body: bool) -> std::io::Result<usize> {
        /// A body streaming through is read this much at a time, at most.
        const BODY_READ: usize = 64 * 1024;
        if body {
            // A client slow to send holds no buffer while the daemon waits for it.
            if self.rd.is_empty() && self.rd.capacity() > 0 {
                self.rd = BytesMut::new();
            }
            self.io.readable().await?;
        }
        let room = self.rd.capacity() - self.rd.len();
        if body && room < BODY_READ / 4 {
            self.rd.reserve(BODY_READ);
        } else if room < 1024 {
            // The first read takes a page, later ones more.
            self.rd
                .reserve(if self.rd.capacity() == 0 { 4096 } else { 16384 });
        }
        let n = self.io.read_buf(&mut self.rd).await?;
        if let Some(site) = &self.bytes_site {
            site.read(n);
        }
        Ok(n)
    }

    /// One request, from its first byte to the end of its response.
    async fn request(&mut self, first: bool) -> Next {
        if !first {
            let current = self.shared.settings.load();
            if !Arc::ptr_eq(&current, &self.settings) {
                self.settings = arc_swap::Guard::into_inner(current);
            }
        }
        let timers = self.settings.timers;
        let limits = self.settings.head_limits;
        self.timers = RequestTimers::service(&timers);
        // IdleConnection until the first byte of a later request; HeaderWait from then (or
        // from the connection's start) until the head is in.
        // When the head's first byte came, for the access log's time-taken.
        let mut began = Instant::now();
        let mut deadline =
            (first || !self.rd.is_empty()).then(|| timers.header_wait.fires_at(began));
        let len = loop {
            match parse_head(&self.rd, &limits) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Complete { len, .. }) => break len,
                Err(e) => return self.rejected(None, e.rejection(), None),
            }
            if self.rd.is_empty() {
                let (until, reason) = match deadline {
                    Some(d) => (d, Reason::TimerHeaderWait),
                    None => (
                        timers.idle_connection.fires_at(Instant::now()),
                        Reason::TimerConnectionIdle,
                    ),
                };
                match self.await_bytes(until).await {
                    Wait::Ready => began = Instant::now(),
                    Wait::Gone => return Next::Close,
                    Wait::TimedOut => {
                        self.log(None, None, reason, None);
                        return Next::Close;
                    }
                }
            }
            // From the first byte (`began` is when it came, or the request's start).
            let until = *deadline.get_or_insert_with(|| timers.header_wait.fires_at(began));
            // The parser scans from the start: a client sending a byte at a time must not
            // cost a scan per byte. Only a LF or passing a limit can change its verdict.
            let mut seen = self.rd.len();
            loop {
                match timeout_at(until, self.fill(false)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Next::Close,
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        self.log(None, None, Reason::TimerHeaderWait, None);
                        return Next::Close;
                    }
                }
                let limit = limits.request_bytes().min(limits.field_length());
                if self.rd[seen..].contains(&b'\n') || self.rd.len() > limit {
                    break;
                }
                seen = self.rd.len();
            }
        };
        let head_bytes = self.rd.split_to(len).freeze();
        // Boxed: the state of a request being served exists only while it is, so a
        // connection waiting for its next request is small. The request's span (debug:
        // free when that level is off) gets its fields once routing knows them.
        let span = tracing::debug_span!(
            "request",
            method = tracing::field::Empty,
            host = tracing::field::Empty,
            prefix = tracing::field::Empty,
            queue = tracing::field::Empty,
        );
        Box::pin(self.serve_head(head_bytes, began).instrument(span)).await
    }

    /// Serves one request whose head is in (its first byte came at `began`): routes it,
    /// hands it on, relays the answer.
    async fn serve_head(&mut self, head_bytes: Bytes, began: Instant) -> Next {
        // Room for a response head and a small body, taken once per connection.
        if self.wr.capacity() == 0 {
            self.wr.tail().reserve(1024);
        }
        let timers = self.settings.timers;
        let limits = self.settings.head_limits;
        let Ok(Parsed::Complete { head, .. }) = parse_head(&head_bytes, &limits) else {
            return Next::Close; // the same bytes parsed a moment ago
        };
        // Behind a trusted proxy, the client it forwards for (a fresh choice per request).
        let client = crate::trust::client(&self.settings.trusted, &head, self.origin.ip());
        let peer = if client == self.origin.ip().to_canonical() {
            self.origin
        } else {
            SocketAddr::new(client, 0)
        };
        if peer != self.peer {
            self.peer = peer;
            self.peer_text = peer.to_string();
        }
        self.proto = crate::trust::proto(&self.settings.trusted, &head, self.origin.ip());
        self.current = Some(Current {
            version: head.version(),
            method: head_bytes.slice_ref(head.method()),
            target: head_bytes.slice_ref(head.target()),
        });
        let facts = Facts {
            version: head.version(),
            keep_alive: head.keep_alive(),
            head_method: head.method() == b"HEAD",
            expect_continue: head.expect_continue(),
            server: self.settings.server_header.apps(),
        };
        let mut body = match head.body() {
            Body::None => BodyIn::Done,
            Body::Length(0) => BodyIn::Done,
            Body::Length(n) => BodyIn::Length(n),
            Body::Chunked => BodyIn::Chunked(Chunked::new()),
        };

        // Route, and write down what the application will get, while the table snapshot
        // is in hand.
        let request_id = self.shared.request_ids.fetch_add(1, Ordering::Relaxed);
        let scheme = if self.tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };
        // A pending ACME challenge is answered before routing (see `crate::challenge`).
        if self.tls.is_none() {
            let challenges = self.shared.challenges.load();
            if let Some(answer) =
                challenges.answer(self.local.port(), head.method(), head.target(), head.host())
            {
                let answer = answer.clone();
                drop(challenges);
                tracing::info!(peer = %self.peer, "acme: challenge answered");
                let server = self.settings.server_header.own();
                crate::pages::acme_answer(self.wr.tail(), &answer, server, facts.head_method);
                return Next::Close; // written out as the connection closes
            }
        }
        let endpoint = Endpoint::new(scheme, self.local);
        let routed = admit::route(
            &self.shared,
            &self.settings,
            &endpoint,
            &head,
            &mut self.scratch,
        );
        let Routed { binding, authority } = match routed {
            Ok(r) => r,
            Err(Some(rejection)) => return self.rejected(Some(&head), rejection, Some(1)),
            Err(None) => return Next::Close,
        };
        crate::metrics::routed(&mut self.bytes_site, &binding.site, &head_bytes, &head);
        if let Some(tls) = &self.tls
            && tls.require_sni_match
            && !sni_matches(tls.sni.as_deref(), headers::routed_host(&head, authority))
        {
            let misdirected = portshare_router::Rejection {
                status: 421,
                reason: Reason::Misdirected,
            };
            return self.rejected(Some(&head), misdirected, None);
        }
        self.access = crate::accesslog::Request::begin(
            &self.settings.access,
            &binding.queue,
            self.peer.ip(),
            self.local,
            &head,
            &self.scratch,
            began.into_std(),
        );
        if let Some(port) = binding.queue.https_redirect()
            && self.tls.is_none()
        {
            let location = https_location(
                headers::routed_host(&head, authority),
                self.local,
                head.target(),
                port,
            );
            let server = self.settings.server_header.own();
            // An unread body is not drained for a redirect: the connection closes after it.
            let close = head.version() != Version::Http11
                || !head.keep_alive()
                || !body.is_done()
                || self.shared.stopping();
            pages::redirect(self.wr.tail(), &location, server, close);
            if close {
                return Next::Close; // written out as the connection closes
            }
            return if self.send(&binding.queue).await {
                Next::KeepAlive
            } else {
                Next::Abort
            };
        }
        let queue = binding.queue.clone();
        // The request span is debug: with that level off, this costs one static check.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let span = tracing::Span::current();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            span.record("method", text(head.method()))
                .record("host", head.host().map(text).unwrap_or_default())
                .record("prefix", binding.prefix.as_str())
                .record("queue", queue.name());
        }
        // The connection counts against the queue its requests go to (the URL group's
        // MaxConnections).
        if !self
            .site
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c.queue(), &queue))
        {
            self.site = None;
            match queue.count_connection() {
                Some(counted) => self.site = Some(counted),
                None => {
                    let (verbosity, retry) = queue.refusal(&timers);
                    let refused = Refused::Unavailable(Reason::ConnLimit, verbosity, retry);
                    return self.refused(&head, &queue, refused);
                }
            }
        }

        let (slot, taken) = match admit::admit(&self.shared, &queue, &timers).await {
            Ok(admitted) => admitted,
            Err(refused) => return self.refused(&head, &queue, refused),
        };

        self.timers = slot.timers().resolve(&timers);
        // Handed to the application: now is the time for 100 Continue (spec Q12).
        if facts.expect_continue && !body.is_done() && facts.version == Version::Http11 {
            self.wr.put_slice(pages::CONTINUE);
            if !self.send(&queue).await {
                return Next::Abort;
            }
        }
        // The request is built for the target it goes to, now that it is known.
        let next = match taken {
            Taken::Worker(stream) => {
                let upgrade = headers::upgrade_offer(&head);
                let frame = self.worker_frame(
                    &head,
                    authority,
                    upgrade.as_deref(),
                    &binding,
                    request_id,
                    stream.id(),
                    body.is_done(),
                );
                self.exchange_worker(frame, stream, &mut body, facts, upgrade.as_deref(), &queue)
                    .await
            }
            Taken::Upstream(up) if Self::pipelinable(&head, &body, &up) => {
                self.exchange_pipelined(
                    &head, authority, &binding, request_id, &up, &mut body, facts, &queue,
                )
                .await
            }
            Taken::Upstream(up) => {
                self.exchange_upstream(
                    &head, authority, &binding, request_id, &up, &mut body, facts, &queue,
                )
                .await
            }
        };
        drop(slot);
        match next {
            Next::KeepAlive if !facts.keep_alive || self.shared.stopping() => Next::Close,
            Next::KeepAlive if !body.is_done() => self.drain(&mut body, &queue).await,
            other => other,
        }
    }

    /// Reads and discards the rest of a body the application did not read, so the next
    /// request can be read: all of it within `DrainEntityBody`, else the connection closes,
    /// logged `Timer_EntityBody`.
    async fn drain(&mut self, body: &mut BodyIn, queue: &Queue) -> Next {
        let drained = self
            .timers
            .drain_entity_body
            .within(async {
                loop {
                    match body.take(&mut self.rd, usize::MAX) {
                        Ok((_, true)) => return Next::KeepAlive,
                        Ok((data, false)) if !data.is_empty() => continue,
                        Ok(_) => {}
                        Err(_) => return Next::Close,
                    }
                    match self.fill(true).await {
                        Ok(n) if n > 0 => {}
                        _ => return Next::Close,
                    }
                }
            })
            .await;
        match drained {
            Some(next) => next,
            None => {
                self.log(None, None, Reason::TimerEntityBody, Some(queue.name()));
                Next::Close
            }
        }
    }
}

/// Whether the host a request was routed by (`host[:port]`) is the SNI name: compared
/// without the port, case-insensitively, a trailing dot ignored. No SNI matches nothing.
pub(crate) fn sni_matches(sni: Option<&str>, host: Option<&[u8]>) -> bool {
    let (Some(sni), Some(host)) = (sni, host) else {
        return false;
    };
    // An IP-literal host (`[::1]:443`, `127.0.0.1`) can never be an SNI name.
    let name = match host.iter().rposition(|&b| b == b':') {
        Some(i) if !host.starts_with(b"[") => &host[..i],
        _ => host,
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    name.eq_ignore_ascii_case(sni.as_bytes())
}

/// Where a redirect to https sends a request: `https://HOST[:PORT]TARGET`, HOST as the
/// request was routed by (without its port; the local address when it named none), the
/// port left out when it is 443, the target as the client sent it (its path and query,
/// for an absolute-form target; `/` for `*`).
fn https_location(host: Option<&[u8]>, local: SocketAddr, target: &[u8], port: u16) -> Vec<u8> {
    let mut out = b"https://".to_vec();
    match host {
        Some(h) if !h.is_empty() => {
            let name = if h.starts_with(b"[") {
                h.iter().position(|&b| b == b']').map_or(h, |i| &h[..=i])
            } else {
                h.iter().rposition(|&b| b == b':').map_or(h, |i| &h[..i])
            };
            out.extend_from_slice(name);
        }
        _ => match local.ip() {
            std::net::IpAddr::V4(a) => out.extend_from_slice(a.to_string().as_bytes()),
            std::net::IpAddr::V6(a) => out.extend_from_slice(format!("[{a}]").as_bytes()),
        },
    }
    if port != 443 {
        out.extend_from_slice(format!(":{port}").as_bytes());
    }
    let path = if target.starts_with(b"/") {
        target
    } else if let Some(i) = target.windows(3).position(|w| w == b"://") {
        let rest = &target[i + 3..];
        rest.iter()
            .position(|&b| b == b'/')
            .map_or(&b"/"[..], |j| &rest[j..])
    } else {
        b"/"
    };
    out.extend_from_slice(path);
    out
}

/// Polls a future once: its output if ready, else `None` (the future stays usable).
async fn poll_once<F: std::future::Future>(mut fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[cfg(test)]
mod location {
    use std::net::SocketAddr;

    #[test]
    fn a_redirect_keeps_host_and_target_and_names_a_port_other_than_443() {
        let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        for (host, local, target, port, want) in [
            (
                Some(&b"www.example.com"[..]),
                local,
                &b"/a/b?c=d"[..],
                443,
                "https://www.example.com/a/b?c=d",
            ),
            (
                Some(b"www.example.com:80"),
                local,
                b"/",
                8443,
                "https://www.example.com:8443/",
            ),
            (Some(b"[::1]:8080"), local, b"/x", 443, "https://[::1]/x"),
            (None, local, b"/x", 443, "https://10.0.0.1/x"),
            (Some(b""), v6, b"/x", 443, "https://[2001:db8::1]/x"),
            (Some(b"h"), local, b"http://h:80/p?q", 443, "https://h/p?q"),
            (Some(b"h"), local, b"http://h", 443, "https://h/"),
            (Some(b"h"), local, b"*", 443, "https://h/"),
        ] {
            let got = super::https_location(host, local, target, port);
            assert_eq!(String::from_utf8_lossy(&got), want);
        }
    }
}

#[cfg(test)]
mod footprint {
    /// What a connection's task holds while it waits for a request: the request being
    /// served lives in a box of its own, so 10,000 idle connections stay cheap.
    #[tokio::test]
    async fn an_idle_connection_task_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let c = tokio::net::TcpStream::connect(a).await.unwrap();
        let fut = super::serve(crate::shared::test_shared(), c, a, a);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2048, "the connection future takes {size} bytes");
    }
}
