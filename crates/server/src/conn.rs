//! The client side: one task per TCP connection, running HTTP.sys's HTTP/1 loop.
//!
//! Requests on a connection are handled one at a time, in order: a pipelined request waits
//! in the read buffer until the response before it is complete, as HTTP.sys delivers it.
//! For each request: read and check the head, canonicalize and route it, take a slot in the
//! winning queue (or wait for one, or be refused), hand the request to the slot's worker or
//! upstream, stream the body there and the response back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use portshare_proto::control::Verbosity;
use portshare_proto::header;
use portshare_proto::wire::{self, INITIAL_WINDOW, RequestHeadWriter, ResetCode, ResponseHead};
use portshare_router::{
    Dispatch, Endpoint, Reason, Rejection, Scheme, TargetForm, Version, encode_path,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::body::{BodyIn, Chunked};
use crate::config::Timers;
use crate::errlog::Entry;
use crate::head::{Body, Head, Parsed, parse_head};
use crate::pages::{self, Detail};
use crate::queue::{Admit, Counted, Missed, Queue, Target};
use crate::shared::{Settings, Shared};
use crate::upstream::{UpBody, Upstream};
use crate::worker::{BODY_FRAME, Event, Events, WorkerConn};

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
    io: TcpStream,
    rd: BytesMut,
    wr: BytesMut,
    peer: SocketAddr,
    local: SocketAddr,
    /// `peer` and `local` as the metadata headers carry them, formatted once per connection.
    peer_text: String,
    local_text: String,
    scratch: Vec<u8>,
    /// The queue of the latest request, which counts this connection against its
    /// connection limit.
    site: Option<Counted>,
    /// The timers of the request in hand: the service's until it is routed, then its queue's.
    timers: Active,
    /// The request in hand, for the error log's version, verb and URL.
    current: Option<Current>,
}

/// What the error log says of the request in hand (slices of its head's bytes).
struct Current {
    version: Version,
    method: Bytes,
    target: Bytes,
}

/// The timers that apply to a request once routed.
#[derive(Debug, Clone, Copy)]
struct Active {
    entity_body: Duration,
    drain_entity_body: Duration,
    /// Bytes per second; `u32::MAX` for no check.
    min_send_rate: u32,
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

/// Serves a client connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, io: TcpStream, peer: SocketAddr, local: SocketAddr) {
    let _ = io.set_nodelay(true);
    let settings = shared.settings.load_full();
    // Buffers are taken when bytes arrive, start small and grow as needed; a large one is
    // given back while the connection idles. A connection that has sent nothing costs
    // little more than its socket.
    let mut conn = Conn {
        timers: Active::service(&settings),
        settings,
        shared,
        io,
        rd: BytesMut::new(),
        wr: BytesMut::new(),
        peer,
        local,
        peer_text: peer.to_string(),
        local_text: local.to_string(),
        scratch: Vec::new(),
        site: None,
        current: None,
    };
    let mut first = true;
    loop {
        match conn.request(first).await {
            Next::KeepAlive => {
                // Lets the head's bytes go before the connection idles.
                conn.current = None;
                first = false;
            }
            Next::Close => {
                if conn.flush().await.is_err() {
                    let _ = socket2::SockRef::from(&conn.io).set_linger(Some(Duration::ZERO));
                    return;
                }
                let _ = conn.io.shutdown().await;
                conn.linger().await;
                return;
            }
            Next::Abort => {
                let _ = socket2::SockRef::from(&conn.io).set_linger(Some(Duration::ZERO));
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
}

impl Active {
    fn service(settings: &Settings) -> Active {
        let t = settings.timers;
        Active {
            entity_body: t.entity_body,
            drain_entity_body: t.drain_entity_body,
            min_send_rate: t.min_send_rate,
        }
    }
}

/// When a timer of `limit` started now fires; a century away for a disabled one (65535 s
/// or more).
fn armed_until(limit: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    Instant::now() + Timers::armed(limit).unwrap_or(NEVER)
}

/// Runs `fut` for at most `limit`; `None` when the time ran out. A limit of 65535 s or more
/// never runs out.
async fn within<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    match Timers::armed(limit) {
        Some(limit) => timeout(limit, fut).await.ok(),
        None => Some(fut.await),
    }
}

impl Conn {
    fn log(
        &self,
        head: Option<&Head<'_>>,
        status: Option<u16>,
        reason: Reason,
        queue: Option<&str>,
    ) {
        let current = self.current.as_ref();
        Entry {
            client: self.peer,
            local: self.local,
            version: head.map(|h| h.version()).or(current.map(|c| c.version)),
            method: head.map(|h| h.method()).or(current.map(|c| &c.method[..])),
            uri: head.map(|h| h.target()).or(current.map(|c| &c.target[..])),
            status,
            reason,
            queue,
        }
        .emit(&self.settings.errlog);
    }

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
        let rate = self.timers.min_send_rate;
        let mut at = 0;
        // When the write began to wait, and how far it had got.
        let mut waiting: Option<(Instant, usize)> = None;
        let mut slow = false;
        let mut r = Ok(());
        while at < self.wr.len() {
            let mut write = std::pin::pin!(self.io.write(&self.wr[at..]));
            // Most writes fit the socket's buffer at once: the timer is armed only for one
            // that has to wait for the client.
            let written = match poll_once(write.as_mut()).await {
                Some(w) => w,
                None if rate == u32::MAX => write.await,
                None => {
                    let (since, from) = *waiting.get_or_insert((Instant::now(), at));
                    let drained = at - from;
                    let pending = self.wr.len() - at;
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
            };
            match written {
                Ok(0) => {
                    r = Err(std::io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => at += n,
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
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
        self.wr.clear();
        r
    }

    /// Reads more of a request body before `until`, which moves on by EntityBody each time
    /// bytes come (spec §5: a gap timer, re-armed by body data and nothing else). Otherwise
    /// the connection's fate, logged: the client left (`Client_Reset`) or the gap was too
    /// long (`Timer_EntityBody`).
    async fn more_body(&mut self, until: &mut Instant, queue: &Queue) -> Result<(), Next> {
        match timeout_at(*until, self.fill()).await {
            Ok(Ok(n)) if n > 0 => {
                *until = armed_until(self.timers.entity_body);
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

    /// After the response and the FIN, reads and throws away what the client still sends,
    /// for a moment (a lingering close): closing with unread bytes would make the kernel
    /// answer with a reset, which can destroy the response before the client reads it.
    async fn linger(&mut self) {
        const LIMIT: usize = 1 << 20;
        let mut thrown = 0;
        let _ = timeout(Duration::from_secs(2), async {
            while thrown < LIMIT {
                self.rd.clear();
                match self.fill().await {
                    Ok(n) if n > 0 => thrown += n,
                    _ => return,
                }
            }
        })
        .await;
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
            self.wr = BytesMut::new();
        }
        let stop = self.shared.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if !self.shared.stopping() {
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

    /// Reads more bytes into the read buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rd.capacity() - self.rd.len() < 1024 {
            // The first read takes a page; a body streaming through gets more at a time.
            self.rd
                .reserve(if self.rd.capacity() == 0 { 4096 } else { 16384 });
        }
        self.io.read_buf(&mut self.rd).await
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
        self.timers = Active::service(&self.settings);
        // IdleConnection until the first byte of a later request; HeaderWait from then (or
        // from the connection's start) until the head is in.
        let mut deadline = (first || !self.rd.is_empty()).then(|| armed_until(timers.header_wait));
        let len = loop {
            match parse_head(&self.rd, &limits) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Complete { len, .. }) => break len,
                Err(e) => {
                    self.log(None, Some(e.rejection().status), e.rejection().reason, None);
                    pages::error_page(&mut self.wr, e.rejection(), Detail::Standard, None);
                    return Next::Close;
                }
            }
            if self.rd.is_empty() {
                let (until, reason) = match deadline {
                    Some(d) => (d, Reason::TimerHeaderWait),
                    None => (
                        armed_until(timers.idle_connection),
                        Reason::TimerConnectionIdle,
                    ),
                };
                match self.await_bytes(until).await {
                    Wait::Ready => {}
                    Wait::Gone => return Next::Close,
                    Wait::TimedOut => {
                        self.log(None, None, reason, None);
                        return Next::Close;
                    }
                }
            }
            let until = *deadline.get_or_insert_with(|| armed_until(timers.header_wait));
            // The parser scans from the start: a client sending a byte at a time must not
            // cost a scan per byte. Only a LF or passing a limit can change its verdict.
            let mut seen = self.rd.len();
            loop {
                match timeout_at(until, self.fill()).await {
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
        // connection waiting for its next request is small.
        Box::pin(self.serve_head(head_bytes)).await
    }

    /// Serves one request whose head is in: routes it, hands it on, relays the answer.
    async fn serve_head(&mut self, head_bytes: Bytes) -> Next {
        // Room for a response head and a small body, taken once per connection.
        if self.wr.capacity() == 0 {
            self.wr.reserve(1024);
        }
        let timers = self.settings.timers;
        let limits = self.settings.head_limits;
        let Ok(Parsed::Complete { head, .. }) = parse_head(&head_bytes, &limits) else {
            return Next::Close; // the same bytes parsed a moment ago
        };
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
        let endpoint = Endpoint::new(Scheme::Http, self.local);
        // The authority of an absolute-form target, when routing used it: the application
        // gets it as its Host (spec §2.2, RFC 9112 §3.2.2).
        let mut authority = None;
        let routed = {
            let table = self.shared.table.load();
            match table.dispatch(&endpoint, &head.request_head(), &self.settings.url_opts) {
                Dispatch::Deliver(d) => {
                    let binding = d.registration().value().clone();
                    if let TargetForm::Absolute { authority: a } = d.target().form() {
                        authority = Some(a);
                    }
                    self.scratch.clear();
                    self.scratch
                        .extend_from_slice(encode_path(d.target().path()).as_bytes());
                    if let Some(q) = d.target().query() {
                        self.scratch.push(b'?');
                        self.scratch.extend_from_slice(q);
                    }
                    Ok(binding)
                }
                Dispatch::Reject(r) => Err(Some(r)),
                Dispatch::Refused => Err(None),
                _ => Err(None),
            }
        };
        let binding = match routed {
            Ok(b) => b,
            Err(Some(rejection)) => {
                self.log(Some(&head), Some(rejection.status), rejection.reason, None);
                pages::error_page(&mut self.wr, rejection, Detail::Standard, Some(1));
                return Next::Close;
            }
            Err(None) => return Next::Close,
        };
        let queue = binding.queue.clone();
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
                    let (verbosity, retry) = queue.refusal();
                    return self.unavailable(&head, &queue, Reason::ConnLimit, verbosity, retry);
                }
            }
        }

        let request = if queue.upstream().is_some() {
            Outbound::Upstream(self.upstream_request(&head, authority, &binding, request_id))
        } else {
            Outbound::Worker(self.worker_frame(
                &head,
                authority,
                &binding,
                request_id,
                body.is_done(),
            ))
        };

        // A worker can leave between giving its slot and the request reaching it; then
        // the request goes back for another slot.
        let mut tries = 0;
        let (slot, opened) = loop {
            let slot = match queue.admit() {
                Admit::Now(slot) => slot,
                Admit::Wait(ticket) => match ticket.wait().await {
                    Ok(slot) => slot,
                    Err(Missed::TimedOut) => {
                        self.log(Some(&head), None, Reason::TimerReqQueue, Some(queue.name()));
                        return Next::Close;
                    }
                    Err(Missed::Closed) if self.shared.stopping() => {
                        // The shutdown timer ran out before a worker took it.
                        return self.shutting_down(&head, &queue);
                    }
                    Err(Missed::Closed) => return self.abandoned(Some(&head), &queue),
                },
                Admit::Full(verbosity, retry) => {
                    return self.unavailable(&head, &queue, Reason::QueueFull, verbosity, retry);
                }
                Admit::Disabled(verbosity, retry) => {
                    return self.unavailable(&head, &queue, Reason::Disabled, verbosity, retry);
                }
                Admit::Closed => return self.abandoned(Some(&head), &queue),
            };
            let Target::Worker(worker) = slot.target() else {
                break (slot, None);
            };
            match worker.open() {
                Some(stream) => break (slot, Some(stream)),
                None if tries < 8 => tries += 1,
                None => {
                    queue.count_abandoned();
                    return self.abandoned(Some(&head), &queue);
                }
            }
        };

        let own = slot.timers();
        self.timers = Active {
            entity_body: own.entity_body.unwrap_or(timers.entity_body),
            drain_entity_body: own.drain_entity_body.unwrap_or(timers.drain_entity_body),
            min_send_rate: own.min_send_rate.unwrap_or(timers.min_send_rate),
        };
        // Handed to the application: now is the time for 100 Continue (spec Q12).
        if facts.expect_continue && !body.is_done() && facts.version == Version::Http11 {
            self.wr.put_slice(pages::CONTINUE);
            if !self.send(&queue).await {
                return Next::Abort;
            }
        }
        let next = match (request, slot.target().clone()) {
            (Outbound::Worker(frame), Target::Worker(worker)) => match opened {
                Some(stream) => {
                    self.exchange_worker(frame, &worker, stream, &mut body, facts, &queue)
                        .await
                }
                None => Next::Abort,
            },
            (Outbound::Upstream(req), Target::Upstream(up)) => {
                self.exchange_upstream(req, &up, &mut body, facts, &queue)
                    .await
            }
            _ => Next::Abort,
        };
        drop(slot);
        match next {
            Next::KeepAlive if !facts.keep_alive || self.shared.stopping() => Next::Close,
            Next::KeepAlive if !body.is_done() => self.drain(&mut body, &queue).await,
            other => other,
        }
    }

    /// The queue or its worker let the request go: the connection is reset, and logged.
    fn abandoned(&self, head: Option<&Head<'_>>, queue: &Queue) -> Next {
        self.log(
            head,
            None,
            Reason::ConnectionAbandonedByReqQueue,
            Some(queue.name()),
        );
        Next::Abort
    }

    /// A request body the client framed wrongly (a bad chunk size, say): 400 `BadRequest`
    /// while no response has begun, else the connection is reset.
    fn bad_body(&mut self, responding: bool, queue: &Queue) -> Next {
        if responding {
            self.wr.clear();
            self.log(None, None, Reason::BadRequest, Some(queue.name()));
            return Next::Abort;
        }
        let rejection = Rejection {
            status: 400,
            reason: Reason::BadRequest,
        };
        self.log(None, Some(400), Reason::BadRequest, Some(queue.name()));
        pages::error_page(&mut self.wr, rejection, Detail::Standard, None);
        Next::Close
    }

    /// The answer to a request still waiting when the daemon stops: 503 `AppShutdown`, so
    /// the client knows it was not served.
    fn shutting_down(&mut self, head: &Head<'_>, queue: &Queue) -> Next {
        let rejection = Rejection {
            status: 503,
            reason: Reason::AppShutdown,
        };
        self.log(
            Some(head),
            Some(503),
            Reason::AppShutdown,
            Some(queue.name()),
        );
        pages::error_page(&mut self.wr, rejection, Detail::Standard, Some(1));
        Next::Close
    }

    /// A full or disabled queue's answer, by its verbosity.
    fn unavailable(
        &mut self,
        head: &Head<'_>,
        queue: &Queue,
        reason: Reason,
        verbosity: Verbosity,
        retry: u64,
    ) -> Next {
        let sent = (verbosity != Verbosity::Basic).then_some(503);
        self.log(Some(head), sent, reason, Some(queue.name()));
        let detail = match verbosity {
            Verbosity::Basic => return Next::Abort,
            Verbosity::Limited => Detail::Standard,
            _ => Detail::Cause,
        };
        let rejection = Rejection {
            status: 503,
            reason,
        };
        pages::error_page(&mut self.wr, rejection, detail, Some(retry));
        Next::Close
    }

    /// The request head as a worker-wire frame, with stream id 0 to be filled in.
    /// `authority` is that of an absolute-form target routing used (see [`app_headers`]).
    fn worker_frame(
        &self,
        head: &Head<'_>,
        authority: Option<&[u8]>,
        binding: &crate::shared::Destination,
        id: u64,
        end: bool,
    ) -> BytesMut {
        let mut frame = BytesMut::with_capacity(256 + head.target().len() * 2);
        let version = match head.version() {
            Version::Http10 => wire::Version::Http10,
            _ => wire::Version::Http11,
        };
        let mut w =
            RequestHeadWriter::new(&mut frame, 0, end, head.method(), &self.scratch, version);
        if may_repeat(head) {
            write_joined(&mut w, app_headers(head, authority));
        } else {
            for (name, value) in app_headers(head, authority) {
                w.header(name, value);
            }
        }
        let mut num = itoa_buf();
        w.header(header::RAW_URL.as_bytes(), head.target());
        w.header(header::CLIENT_ADDR.as_bytes(), self.peer_text.as_bytes());
        w.header(header::LOCAL_ADDR.as_bytes(), self.local_text.as_bytes());
        w.header(header::URL_PREFIX.as_bytes(), binding.prefix.as_bytes());
        w.header(
            header::URL_CONTEXT.as_bytes(),
            fmt_u64(&mut num, binding.context),
        );
        w.header(header::REQUEST_ID.as_bytes(), fmt_u64(&mut num, id));
        w.finish();
        frame
    }

    /// The request for an upstream, with the daemon's forwarding headers. `authority` is
    /// that of an absolute-form target routing used (see [`app_headers`]).
    fn upstream_request(
        &self,
        head: &Head<'_>,
        authority: Option<&[u8]>,
        binding: &crate::shared::Destination,
        id: u64,
    ) -> http::request::Builder {
        let mut req = http::Request::builder()
            .method(head.method())
            .uri(&self.scratch[..])
            .version(http::Version::HTTP_11);
        for (name, value) in app_headers(head, authority) {
            req = req.header(name, value);
        }
        let client = self.peer.ip();
        let host = routed_host(head, authority).map(String::from_utf8_lossy);
        let mut forwarded = match client {
            std::net::IpAddr::V4(a) => format!("for={a};proto=http"),
            std::net::IpAddr::V6(a) => format!("for=\"[{a}]\";proto=http"),
        };
        if let Some(h) = &host {
            forwarded.push_str(";host=\"");
            forwarded.extend(h.chars().filter(|c| *c != '"' && *c != '\\'));
            forwarded.push('"');
            req = req.header("x-forwarded-host", h.as_ref());
        }
        req.header("forwarded", forwarded)
            .header("x-forwarded-for", client.to_string())
            .header("x-forwarded-proto", "http")
            .header(header::RAW_URL, head.target())
            .header(header::CLIENT_ADDR, &self.peer_text)
            .header(header::LOCAL_ADDR, &self.local_text)
            .header(header::URL_PREFIX, &binding.prefix)
            .header(header::URL_CONTEXT, binding.context)
            .header(header::REQUEST_ID, id)
    }

    /// Hands the request to an attached worker and relays until both directions end.
    async fn exchange_worker(
        &mut self,
        mut frame: BytesMut,
        worker: &Arc<WorkerConn>,
        (stream, mut rx): (u32, Events),
        body: &mut BodyIn,
        facts: Facts,
        queue: &Queue,
    ) -> Next {
        frame[4..8].copy_from_slice(&stream.to_le_bytes());
        worker.send(|out| out.extend_from_slice(&frame));
        let _forget = Forget(worker, stream);
        let mut window = u64::from(INITIAL_WINDOW);
        let mut resp = Response::new(facts);
        let mut body_until = armed_until(self.timers.entity_body);
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
                        worker.send(|out| wire::encode_data(out, stream, done, &data));
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
                                        &mut self.wr,
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
                                if !resp.started || !resp.data(&mut self.wr, &data, end) {
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
                    // gone.
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

    /// Forwards the request to an upstream server and relays its response.
    async fn exchange_upstream(
        &mut self,
        req: http::request::Builder,
        up: &Upstream,
        body: &mut BodyIn,
        facts: Facts,
        queue: &Queue,
    ) -> Next {
        let mut sender = match up.connection(&self.shared.upstreams).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(queue = queue.name(), "upstream {}: {e}", up.address);
                let r = Rejection {
                    status: 503,
                    reason: Reason::NotAvailable,
                };
                self.log(None, Some(503), Reason::NotAvailable, Some(queue.name()));
                pages::error_page(&mut self.wr, r, Detail::Standard, Some(1));
                return Next::Close;
            }
        };
        let (tx, up_body): (Option<mpsc::Sender<Bytes>>, UpBody) = if body.is_done() {
            (
                None,
                http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
            )
        } else {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            (Some(tx), ChannelBody(rx).boxed())
        };
        let Ok(req) = req.body(up_body) else {
            self.log(None, Some(400), Reason::BadRequest, Some(queue.name()));
            pages::error_page(
                &mut self.wr,
                Rejection {
                    status: 400,
                    reason: Reason::BadRequest,
                },
                Detail::Standard,
                None,
            );
            return Next::Close;
        };
        let mut tx = tx;
        let mut body_until = armed_until(self.timers.entity_body);
        let response = sender.send_request(req);
        tokio::pin!(response);
        let resp = loop {
            // Pump the body while waiting for the response head.
            match self.feed(body, &mut tx).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(()) => return self.bad_body(false, queue),
            }
            tokio::select! {
                r = &mut response => break r,
                r = self.more_body(&mut body_until, queue), if tx.is_some() => {
                    if let Err(next) = r {
                        return next;
                    }
                }
            }
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(queue = queue.name(), "upstream {}: {e}", up.address);
                return self.abandoned(None, queue);
            }
        };
        let (parts, mut incoming) = resp.into_parts();
        let mut out = Response::new(facts);
        out.close |= self.shared.stopping();
        let end = http_body::Body::is_end_stream(&incoming);
        let hint = http_body::Body::size_hint(&incoming).exact();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        if !out.head(&mut self.wr, parts.status.as_u16(), headers, end, hint) {
            return Next::Abort;
        }
        while !out.finished {
            // Keep feeding the request body while the response streams.
            match self.feed(body, &mut tx).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(()) => return self.bad_body(true, queue),
            }
            // Write out only when the next frame is not already here: a small response
            // leaves in one write, head and body together.
            let next = {
                let mut frame = std::pin::pin!(incoming.frame());
                match poll_once(frame.as_mut()).await {
                    Some(f) => f,
                    None => {
                        if !self.send(queue).await {
                            return Next::Abort;
                        }
                        if tx.is_none() {
                            frame.await
                        } else {
                            // The upstream may want more body before it says more.
                            tokio::select! {
                                f = frame => f,
                                r = self.more_body(&mut body_until, queue) => match r {
                                    Ok(()) => continue,
                                    Err(next) => return next,
                                },
                            }
                        }
                    }
                }
            };
            match next {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        let end = http_body::Body::is_end_stream(&incoming);
                        if !out.data(&mut self.wr, &data, end) {
                            return Next::Abort;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(queue = queue.name(), "upstream {}: {e}", up.address);
                    return self.abandoned(None, queue);
                }
                None => {
                    if !out.data(&mut self.wr, &[], true) {
                        return Next::Abort;
                    }
                }
            }
        }
        drop(tx);
        if !self.send(queue).await {
            return Next::Abort;
        }
        if body.is_done() {
            up.put_back(sender, &self.shared.upstreams);
        }
        if out.close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Moves body bytes already read from the client on to an upstream request. `Ok(true)`
    /// when it moved some (or finished the body), `Err` when the client framed it wrongly.
    async fn feed(
        &mut self,
        body: &mut BodyIn,
        tx: &mut Option<mpsc::Sender<Bytes>>,
    ) -> Result<bool, ()> {
        let Some(sink) = tx else {
            return Ok(false);
        };
        if self.rd.is_empty() {
            return Ok(false);
        }
        let (data, done) = body.take(&mut self.rd, 64 * 1024).map_err(|_| ())?;
        if (!data.is_empty() && sink.send(data).await.is_err()) || done {
            *tx = None;
        }
        Ok(true)
    }

    /// Reads and discards the rest of a body the application did not read, so the next
    /// request can be read: all of it within `DrainEntityBody`, else the connection closes,
    /// logged `Timer_EntityBody`.
    async fn drain(&mut self, body: &mut BodyIn, queue: &Queue) -> Next {
        let limit = self.timers.drain_entity_body;
        let drained = within(limit, async {
            loop {
                match body.take(&mut self.rd, usize::MAX) {
                    Ok((_, true)) => return Next::KeepAlive,
                    Ok((data, false)) if !data.is_empty() => continue,
                    Ok(_) => {}
                    Err(_) => return Next::Close,
                }
                match self.fill().await {
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

enum Outbound {
    Worker(BytesMut),
    Upstream(http::request::Builder),
}

/// Forgets a worker stream when the request is over, however it ends.
struct Forget<'a>(&'a WorkerConn, u32);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// The request headers an application gets, in order: those that [`passes`], with the
/// host routing used as the Host header. For an absolute-form target that is its
/// `authority`, which replaces the client's Host value where it stood, or comes first when
/// the client sent none (RFC 9112 §3.2.2: the Host header is ignored then; spec §2.2).
/// Otherwise the client's headers go as they are.
fn app_headers<'h>(
    head: &Head<'h>,
    authority: Option<&'h [u8]>,
) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + use<'h> {
    let added = authority
        .filter(|_| head.host().is_none())
        .map(|a| (&b"Host"[..], a));
    let replaced = head
        .headers()
        .filter(|(n, _)| passes(n))
        .map(move |(n, v)| match authority {
            Some(a) if n.eq_ignore_ascii_case(b"host") => (n, a),
            _ => (n, v),
        });
    added.into_iter().chain(replaced)
}

/// The host routing used, as the client wrote it (with its port, if any), for
/// `X-Forwarded-Host` and `Forwarded: host=`: the authority of an absolute-form target,
/// else the Host header; `None` for HTTP/1.0 without a Host (or with an empty one).
fn routed_host<'h>(head: &Head<'h>, authority: Option<&'h [u8]>) -> Option<&'h [u8]> {
    authority.or(head.host().filter(|h| !h.is_empty()))
}

/// Writes `fields`, a repeated one once, its values joined with ", ", where it first
/// stood (spec §3.4). Sorting groups the names, so a head of thousands of headers costs
/// n log n, not n².
fn write_joined<'h>(
    w: &mut RequestHeadWriter<'_>,
    fields: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) {
    let fields: Vec<(&[u8], &[u8])> = fields.collect();
    let folded = |i: usize| fields[i].0.iter().map(u8::to_ascii_lowercase);
    let mut order: Vec<usize> = (0..fields.len()).collect();
    order.sort_by(|&a, &b| folded(a).cmp(folded(b)).then(a.cmp(&b)));
    // The next field of the same name, in order; and whether a field is its name's first.
    let mut next = vec![None; fields.len()];
    let mut first = vec![true; fields.len()];
    for pair in order.windows(2) {
        if fields[pair[0]].0.eq_ignore_ascii_case(fields[pair[1]].0) {
            next[pair[0]] = Some(pair[1]);
            first[pair[1]] = false;
        }
    }
    let mut joined = Vec::new();
    for (i, &(name, value)) in fields.iter().enumerate() {
        if !first[i] {
            continue;
        }
        if next[i].is_none() {
            w.header(name, value);
            continue;
        }
        joined.clear();
        joined.extend_from_slice(value);
        let mut at = next[i];
        while let Some(j) = at {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(fields[j].1);
            at = next[j];
        }
        w.header(name, &joined);
    }
}

/// Whether two header names of `head` may be the same: exact for up to 32 headers (names
/// compared in place, mostly by length alone), and assumed beyond.
fn may_repeat(head: &Head<'_>) -> bool {
    let mut names: [&[u8]; 32] = [&[]; 32];
    for (i, (name, _)) in head.headers().enumerate() {
        let Some(slot) = names.get_mut(i) else {
            return true;
        };
        *slot = name;
        if names[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return true;
        }
    }
    false
}

/// Whether an inbound request header goes on to the application: not the reserved
/// `portshare-*` space, no forwarding headers a client could forge, no hop-by-hop headers.
fn passes(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"proxy-connection",
        b"expect",
        b"forwarded",
    ];
    if name.len() >= header::PREFIX.len()
        && name[..header::PREFIX.len()].eq_ignore_ascii_case(header::PREFIX.as_bytes())
    {
        return false;
    }
    if name.len() >= 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") {
        return false;
    }
    !HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

fn fmt_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Polls a future once: its output if ready, else `None` (the future stays usable).
async fn poll_once<F: std::future::Future>(mut fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// A request body fed from a channel, for upstream requests.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// How a response body is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body may follow (HEAD, 204, 304).
    None,
    /// Exactly this many more bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, length unknown).
    Close,
}

/// The response as it is written to the client.
struct Response {
    facts: Facts,
    framing: Framing,
    started: bool,
    finished: bool,
    close: bool,
    /// Body bytes written since the last window grant.
    granted: u32,
}

impl Response {
    fn new(facts: Facts) -> Response {
        Response {
            facts,
            framing: Framing::None,
            started: false,
            finished: false,
            close: !facts.keep_alive,
            granted: 0,
        }
    }

    /// Writes the response head. `exact` is the body's length when it is known in
    /// advance (the whole body already arrived), used when the application gave none.
    fn head<'h>(
        &mut self,
        wr: &mut BytesMut,
        status: u16,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
        end: bool,
        exact: Option<u64>,
    ) -> bool {
        if !(200..=999).contains(&status) {
            return false; // interim and upgrade responses are not relayed
        }
        self.started = true;
        let mut length = None;
        let mut has_server = false;
        wr.put_slice(b"HTTP/1.1 ");
        let mut num = itoa_buf();
        wr.put_slice(fmt_u64(&mut num, u64::from(status)));
        wr.put_u8(b' ');
        wr.put_slice(
            http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        wr.put_slice(b"\r\n");
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(b"content-length") {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                // Written once below, with the framing.
                match (parsed, length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => return false,
                }
                continue;
            } else if name.eq_ignore_ascii_case(b"date")
                || name.eq_ignore_ascii_case(b"connection")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"keep-alive")
                || name.eq_ignore_ascii_case(b"proxy-connection")
                || name.eq_ignore_ascii_case(b"upgrade")
            {
                continue;
            } else if name.eq_ignore_ascii_case(b"server") {
                has_server = true;
            }
            // Nothing an application sends may split or forge a header line.
            let bad_name =
                name.is_empty() || name.iter().any(|&b| b <= b' ' || b == b':' || b >= 0x7f);
            if bad_name || value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
                return false;
            }
            wr.put_slice(name);
            wr.put_slice(b": ");
            wr.put_slice(value);
            wr.put_slice(b"\r\n");
        }
        let bodiless = self.facts.head_method || status == 204 || status == 304;
        self.framing = if bodiless {
            if let Some(n) = length {
                put_length(wr, n);
            }
            Framing::None
        } else if let Some(n) = length {
            put_length(wr, n);
            Framing::Length(n)
        } else if end {
            put_length(wr, 0);
            Framing::Length(0)
        } else if let Some(n) = exact {
            put_length(wr, n);
            Framing::Length(n)
        } else if self.facts.version == Version::Http11 {
            wr.put_slice(b"Transfer-Encoding: chunked\r\n");
            Framing::Chunked
        } else {
            self.close = true;
            Framing::Close
        };
        if !has_server {
            wr.put_slice(b"Server: ");
            wr.put_slice(pages::SERVER.as_bytes());
            wr.put_slice(b"\r\n");
        }
        wr.put_slice(b"Date: ");
        pages::put_date(wr);
        wr.put_slice(b"\r\n");
        if self.close {
            wr.put_slice(b"Connection: close\r\n");
        } else if self.facts.version == Version::Http10 {
            wr.put_slice(b"Connection: keep-alive\r\n");
        }
        wr.put_slice(b"\r\n");
        if end {
            self.finished = true;
            // A response that promised a body and ended without one cannot keep the
            // connection in step.
            if let Framing::Length(n) = self.framing
                && n > 0
            {
                return false;
            }
        }
        true
    }

    /// Writes body bytes; false when the application broke its own framing.
    fn data(&mut self, wr: &mut BytesMut, data: &[u8], end: bool) -> bool {
        if self.finished {
            return data.is_empty();
        }
        self.granted = self.granted.saturating_add(data.len() as u32);
        match &mut self.framing {
            Framing::None => {}
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    return false;
                }
                *left -= data.len() as u64;
                wr.put_slice(data);
                if end && *left != 0 {
                    return false;
                }
            }
            Framing::Chunked => {
                if !data.is_empty() {
                    put_hex(wr, data.len());
                    wr.put_slice(b"\r\n");
                    wr.put_slice(data);
                    wr.put_slice(b"\r\n");
                }
                if end {
                    wr.put_slice(b"0\r\n\r\n");
                }
            }
            Framing::Close => wr.put_slice(data),
        }
        if end {
            self.finished = true;
        }
        true
    }

    /// Body bytes written since the last call, to grant back to the worker once they
    /// add up to half a window.
    fn take_granted(&mut self) -> u32 {
        if self.granted >= INITIAL_WINDOW / 2 {
            std::mem::take(&mut self.granted)
        } else {
            0
        }
    }
}

/// Appends `n` in lower-case hex, as a chunk size.
fn put_hex(wr: &mut BytesMut, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        wr.put_u8(b"0123456789abcdef"[(n >> (i * 4)) & 15]);
    }
}

fn put_length(wr: &mut BytesMut, n: u64) {
    let mut num = itoa_buf();
    wr.put_slice(b"Content-Length: ");
    wr.put_slice(fmt_u64(&mut num, n));
    wr.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_are_found_case_insensitively() {
        let check = |text: String| {
            let limits = crate::HeadLimits::default();
            let Ok(Parsed::Complete { head, .. }) = parse_head(text.as_bytes(), &limits) else {
                panic!("head: {text}");
            };
            may_repeat(&head)
        };
        let head = |fields: &str| format!("GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
        assert!(!check(head(
            "Accept: a\r\nAccept-Language: b\r\nX-Ab: c\r\nX-Ba: d\r\n"
        )));
        assert!(check(head("Accept: a\r\nX: b\r\naccept: c\r\n")));
        assert!(check(head(
            "X-Long-Name: a\r\nY: b\r\nZ: c\r\nx-long-NAME: d\r\n"
        )));
        // Past 32 headers it is assumed, distinct or not.
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(check(head(&many)));
    }

    fn facts(version: Version, keep_alive: bool, head_method: bool) -> Facts {
        Facts {
            version,
            keep_alive,
            head_method,
            expect_continue: false,
        }
    }

    fn write(
        f: Facts,
        status: u16,
        headers: &[(&'static str, &'static str)],
        end: bool,
        exact: Option<u64>,
        body: &[&[u8]],
    ) -> Option<String> {
        let mut r = Response::new(f);
        let mut wr = BytesMut::new();
        let headers = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        if !r.head(&mut wr, status, headers, end, exact) {
            return None;
        }
        for (i, chunk) in body.iter().enumerate() {
            if !r.data(&mut wr, chunk, i + 1 == body.len()) {
                return None;
            }
        }
        let text = String::from_utf8(wr.to_vec()).ok()?;
        // The Date changes; keep the rest.
        Some(
            text.lines()
                .filter(|l| !l.starts_with("Date: "))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    #[test]
    fn framing_is_the_daemons() {
        let f11 = facts(Version::Http11, true, false);
        // The app's length is kept, once.
        let out = write(
            f11,
            200,
            &[("content-length", "2"), ("x", "y")],
            false,
            None,
            &[b"hi"],
        )
        .unwrap();
        assert_eq!(out.matches("Content-Length: 2").count(), 1, "{out}");
        assert!(!out.contains("content-length"), "{out}");
        // A body that arrived whole gets a length; a stream gets chunked.
        let out = write(f11, 200, &[], false, Some(5), &[b"hello"]).unwrap();
        assert!(out.contains("Content-Length: 5"), "{out}");
        let out = write(f11, 200, &[], false, None, &[b"ab", b"c"]).unwrap();
        assert!(
            out.contains("Transfer-Encoding: chunked") && out.ends_with("2\nab\n1\nc\n0\n"),
            "{out:?}"
        );
        // HTTP/1.0 with an unknown length: delimited by close.
        let f10 = facts(Version::Http10, true, false);
        let out = write(f10, 200, &[], false, None, &[b"x"]).unwrap();
        assert!(out.contains("Connection: close"), "{out}");
        // No body on HEAD, 204, 304; an empty response gets Content-Length: 0.
        let head = facts(Version::Http11, true, true);
        let out = write(head, 200, &[("content-length", "9")], true, None, &[]).unwrap();
        assert!(out.contains("Content-Length: 9"), "{out}");
        let out = write(f11, 204, &[], true, None, &[]).unwrap();
        assert!(!out.contains("Content-Length"), "{out}");
        let out = write(f11, 200, &[], true, None, &[]).unwrap();
        assert!(out.contains("Content-Length: 0"), "{out}");
    }

    #[test]
    fn hop_by_hop_and_date_are_replaced() {
        let f = facts(Version::Http11, false, false);
        let out = write(
            f,
            200,
            &[
                ("connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("date", "x"),
                ("server", "app"),
            ],
            true,
            None,
            &[],
        )
        .unwrap();
        assert!(
            out.contains("Connection: close") && !out.contains("keep-alive"),
            "{out}"
        );
        assert!(
            !out.contains("transfer-encoding") && !out.contains("date: x"),
            "{out}"
        );
        assert!(
            out.contains("server: app") && !out.contains("Server: portshare"),
            "{out}"
        );
    }

    #[test]
    fn what_an_application_gets_wrong_is_refused() {
        let f = facts(Version::Http11, true, false);
        for bad in [
            &[("x", "a\r\nInjected: 1")][..],
            &[("bad name", "v")],
            &[("x:y", "v")],
            &[("", "v")],
            &[("content-length", "1"), ("content-length", "2")],
            &[("content-length", "nope")],
        ] {
            assert_eq!(write(f, 200, bad, true, None, &[]), None, "{bad:?}");
        }
        // A body longer or shorter than promised.
        assert_eq!(
            write(f, 200, &[("content-length", "1")], false, None, &[b"ab"]),
            None
        );
        assert_eq!(
            write(f, 200, &[("content-length", "3")], false, None, &[b"ab"]),
            None
        );
        assert_eq!(
            write(f, 200, &[("content-length", "3")], true, None, &[]),
            None
        );
        // Interim and upgrade responses are not relayed.
        assert_eq!(write(f, 101, &[], true, None, &[]), None);
        assert_eq!(write(f, 100, &[], true, None, &[]), None);
    }

    #[test]
    fn forged_and_hop_by_hop_request_headers_stay_behind() {
        for name in [
            &b"Portshare-Raw-Url"[..],
            b"portshare-anything",
            b"X-Forwarded-For",
            b"x-forwarded-proto",
            b"Forwarded",
            b"Connection",
            b"Transfer-Encoding",
            b"Expect",
        ] {
            assert!(!passes(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"Host"[..],
            b"Content-Length",
            b"X-Forwarded",
            b"portshare",
            b"Accept",
        ] {
            assert!(passes(name), "{}", String::from_utf8_lossy(name));
        }
    }

    /// The headers [`app_headers`] gives for `fields` in an HTTP/1.x head, and the host
    /// [`routed_host`] forwards, with the absolute-form `authority` routing used, if any.
    fn for_app(
        version: &str,
        fields: &str,
        authority: Option<&'static [u8]>,
    ) -> (Vec<String>, Option<String>) {
        let text = format!("GET http://a.example:81/x {version}\r\n{fields}\r\n");
        let limits = crate::HeadLimits::default();
        let Ok(Parsed::Complete { head, .. }) = parse_head(text.as_bytes(), &limits) else {
            panic!("head: {text}");
        };
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers = app_headers(&head, authority)
            .map(|(n, v)| format!("{}: {}", lossy(n), lossy(v)))
            .collect();
        (headers, routed_host(&head, authority).map(lossy))
    }

    #[test]
    fn the_app_gets_the_host_routing_used() {
        let authority = Some(&b"a.example:81"[..]);
        // Regression: the client's own Host went on beside an absolute-form target.
        let (headers, host) = for_app(
            "HTTP/1.1",
            "X-A: 1\r\nHost: evil.example\r\nX-B: 2\r\n",
            authority,
        );
        assert_eq!(headers, ["X-A: 1", "Host: a.example:81", "X-B: 2"]);
        assert_eq!(host.as_deref(), Some("a.example:81"));
        // The client's spelling of the name is kept.
        let (headers, _) = for_app("HTTP/1.1", "hOST: evil.example\r\n", authority);
        assert_eq!(headers, ["hOST: a.example:81"]);
        // No Host at all: the authority comes first.
        let (headers, host) = for_app("HTTP/1.0", "X-A: 1\r\n", authority);
        assert_eq!(headers, ["Host: a.example:81", "X-A: 1"]);
        assert_eq!(host.as_deref(), Some("a.example:81"));
        // Routed by the Host header: it goes as sent.
        let (headers, host) = for_app("HTTP/1.1", "Host: h:8080\r\nX-A: 1\r\n", None);
        assert_eq!(headers, ["Host: h:8080", "X-A: 1"]);
        assert_eq!(host.as_deref(), Some("h:8080"));
        // HTTP/1.0 without a host: none is made up, and none forwarded.
        let (headers, host) = for_app("HTTP/1.0", "X-A: 1\r\n", None);
        assert_eq!(headers, ["X-A: 1"]);
        assert_eq!(host, None);
        let (headers, host) = for_app("HTTP/1.0", "Host:\r\n", None);
        assert_eq!(headers, ["Host: "]);
        assert_eq!(host, None);
    }

    #[test]
    fn numbers() {
        for (n, hex) in [(0, "0"), (1, "1"), (15, "f"), (16, "10"), (0xabc, "abc")] {
            let mut wr = BytesMut::new();
            put_hex(&mut wr, n);
            assert_eq!(&wr[..], hex.as_bytes());
        }
        let mut wr = BytesMut::new();
        put_hex(&mut wr, usize::MAX);
        assert_eq!(wr.len(), usize::BITS as usize / 4);
        let mut buf = itoa_buf();
        assert_eq!(fmt_u64(&mut buf, 0), b"0");
        assert_eq!(fmt_u64(&mut buf, u64::MAX), b"18446744073709551615");
    }
}
#[cfg(test)]
mod joined {
    use bytes::BytesMut;
    use portshare_proto::wire::{self, Frame, RequestHead, RequestHeadWriter};

    use crate::head::{HeadLimits, Parsed, parse_head};

    /// The headers the application gets for `fields`, through the worker wire.
    fn delivered(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for (n, v) in fields {
            raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut limits = HeadLimits::default();
        limits.max_request_bytes(1 << 20);
        let Ok(Parsed::Complete { head, .. }) = parse_head(&raw, &limits) else {
            panic!("head does not parse");
        };
        let mut frame = BytesMut::new();
        let mut w =
            RequestHeadWriter::new(&mut frame, 1, true, b"GET", b"/", wire::Version::Http11);
        super::write_joined(&mut w, super::app_headers(&head, None));
        w.finish();
        let Ok(Some(Frame::Head { payload, .. })) = wire::decode(&mut frame) else {
            panic!("no head frame");
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        RequestHead::decode(payload)
            .expect("request head")
            .headers
            .iter()
            .map(|(n, v)| (text(n), text(v)))
            .collect()
    }

    #[test]
    fn repeated_headers_are_joined_where_they_first_stood() {
        let got = delivered(&[
            ("Host", "h"),
            ("Accept", "a"),
            ("X-One", "1"),
            ("accept", "b"),
            ("Connection", "close"),
            ("ACCEPT", "c"),
        ]);
        let want = [("Host", "h"), ("Accept", "a, b, c"), ("X-One", "1")];
        assert_eq!(
            got,
            want.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec()
        );
    }

    #[test]
    fn a_repeated_header_beside_an_absolute_form_host() {
        let raw = b"GET http://a.example/ HTTP/1.1\r\nX: 1\r\nHost: evil\r\nx: 2\r\n\r\n";
        let Ok(Parsed::Complete { head, .. }) = parse_head(raw, &HeadLimits::default()) else {
            panic!("head does not parse");
        };
        let mut frame = BytesMut::new();
        let mut w =
            RequestHeadWriter::new(&mut frame, 1, true, b"GET", b"/", wire::Version::Http11);
        super::write_joined(&mut w, super::app_headers(&head, Some(b"a.example")));
        w.finish();
        let Ok(Some(Frame::Head { payload, .. })) = wire::decode(&mut frame) else {
            panic!("no head frame");
        };
        let got: Vec<(Vec<u8>, Vec<u8>)> = RequestHead::decode(payload)
            .expect("request head")
            .headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [("X", "1, 2"), ("Host", "a.example")]
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn thousands_of_headers_keep_their_order() {
        let names: Vec<String> = (0..3000).map(|i| format!("x-{}", i % 1000)).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let got = delivered(&fields);
        assert_eq!(got.len(), 1000);
        for (i, (n, v)) in got.iter().enumerate() {
            assert_eq!(
                (n.as_str(), v.as_str()),
                (format!("x-{i}").as_str(), "v, v, v")
            );
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
