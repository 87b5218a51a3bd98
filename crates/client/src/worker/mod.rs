//! One worker connection: the application's end of the [worker wire](portshare_proto::wire).
//!
//! A connection runs a reader and a writer in one task. The reader decodes every frame a
//! read brought in: request heads become tasks calling the service, body bytes go to their
//! request's [`Body`], window frames give a response more credit, resets cancel a task.
//! Tasks and bodies append their frames to the connection's output buffer and wake the
//! writer, which writes everything that has gathered with one call: under load, one `write`
//! carries many responses.
//!
//! Entries for finished streams are not removed one by one, which would cost every request
//! a message to the reader; the reader sweeps them out whenever the map has grown to twice
//! what the last sweep left.

mod respond;
mod upgrade;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use portshare_proto::gather::Gather;
use portshare_proto::wire::{self, Frame, RequestHead, ResetCode, ResponseHead};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::AbortHandle;

use crate::Body;
use crate::error::{BoxError, Error};
use crate::service::{AppBody, AppService};

/// The read buffer's size; a read never offers less than [`MIN_READ`] bytes of room.
const READ_BUF: usize = 64 * 1024;
const MIN_READ: usize = 8 * 1024;

/// The smallest stream map that is swept for finished entries.
const SWEEP_MIN: usize = 64;

/// What a worker connection shares with its request tasks and bodies.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Encoded frames waiting for the writer; large body payloads kept by reference.
    out: Mutex<Gather>,
    wake_writer: Notify,
    /// Set when the reader is done: the writer returns once the output is written.
    closing: AtomicBool,
    /// Request tasks running.
    in_flight: AtomicUsize,
    /// Where a task reports that the service failed for good.
    fatal: mpsc::UnboundedSender<BoxError>,
}

impl Conn {
    fn new(fatal: mpsc::UnboundedSender<BoxError>) -> Conn {
        Conn {
            out: Mutex::new(Gather::with_capacity(16 * 1024)),
            wake_writer: Notify::new(),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            fatal,
        }
    }

    /// Appends frames to the output and wakes the writer.
    pub(crate) fn send(&self, encode: impl FnOnce(&mut BytesMut)) {
        self.gather(|out| encode(out.tail()));
    }

    /// Appends frames to the output, payloads by reference, and wakes the writer.
    pub(crate) fn gather(&self, encode: impl FnOnce(&mut Gather)) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        encode(&mut out);
        drop(out);
        self.wake_writer.notify_one();
    }

    /// A request task ended.
    fn task_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request on the wire, shared by the reader, its task and its body.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) id: u32,
    /// Response body bytes the daemon will still take.
    credit: AtomicU64,
    credit_added: Notify,
    /// The daemon reset the stream: nothing more may be sent on it.
    reset: AtomicBool,
    /// The daemon sent the request body's end.
    body_ended: AtomicBool,
    /// The task ended (or never started).
    done: AtomicBool,
}

impl Stream {
    fn new(id: u32, body_ended: bool) -> Stream {
        Stream {
            id,
            credit: AtomicU64::new(u64::from(wire::INITIAL_WINDOW)),
            credit_added: Notify::new(),
            reset: AtomicBool::new(false),
            body_ended: AtomicBool::new(body_ended),
            done: AtomicBool::new(false),
        }
    }

    /// Appends frames for this stream, unless the daemon has reset it.
    pub(crate) fn send(&self, conn: &Conn, encode: impl FnOnce(&mut BytesMut)) {
        self.gather(conn, |out| encode(out.tail()));
    }

    /// Appends frames for this stream, payloads by reference, unless the daemon has reset
    /// it.
    pub(crate) fn gather(&self, conn: &Conn, encode: impl FnOnce(&mut Gather)) {
        if !self.reset.load(Ordering::Acquire) {
            conn.gather(encode);
        }
    }

    /// Grants the daemon `n` more request body bytes.
    pub(crate) fn grant(&self, conn: &Conn, mut n: usize) {
        self.send(conn, |buf| {
            while n > 0 {
                let credit = u32::try_from(n).unwrap_or(u32::MAX);
                wire::encode_window(buf, self.id, credit);
                n -= credit as usize;
            }
        });
    }

    pub(crate) fn body_ended(&self) -> bool {
        self.body_ended.load(Ordering::Acquire)
    }

    /// Takes up to `want` bytes of response credit without waiting; 0 when there is none.
    fn take_credit(&self, want: usize) -> usize {
        // Only the stream's task takes credit, so nothing can shrink it between the load
        // and the subtraction.
        let have = self.credit.load(Ordering::Acquire);
        let n = have.min(want as u64);
        if n > 0 {
            self.credit.fetch_sub(n, Ordering::AcqRel);
        }
        n as usize
    }

    /// Takes between 1 and `want` bytes of response credit, waiting for a window frame when
    /// there is none.
    async fn credit(&self, want: usize) -> usize {
        loop {
            let n = self.take_credit(want);
            if n > 0 {
                return n;
            }
            // A window frame that lands between the check and here leaves a permit behind,
            // so this cannot sleep through it.
            self.credit_added.notified().await;
        }
    }

    fn add_credit(&self, credit: u32) {
        self.credit.fetch_add(u64::from(credit), Ordering::AcqRel);
        self.credit_added.notify_one();
    }
}

/// Runs a worker connection until the daemon closes it or, after a drain, until it holds
/// no more requests. `pre` holds bytes that arrived with the upgrade answer; `version` is
/// the wire's, as agreed then (opaque streams from 2 on).
///
/// Returns `Ok` after a completed drain; an error when the connection was lost.
pub(crate) async fn run<S, B>(
    mut io: UnixStream,
    pre: Bytes,
    version: u32,
    service: S,
    drain: watch::Receiver<bool>,
    fatal: mpsc::UnboundedSender<BoxError>,
) -> Result<(), Error>
where
    S: AppService<B>,
    B: AppBody,
{
    let conn = Arc::new(Conn::new(fatal));
    let (mut rd, mut wr) = io.split();
    let mut reader = Reader {
        service,
        conn: conn.clone(),
        streams: HashMap::default(),
        sweep_at: SWEEP_MIN,
        version,
    };
    let reading = reader.run(&mut rd, pre, drain);
    let writing = write_loop(&mut wr, &conn);
    tokio::pin!(reading, writing);
    tokio::select! {
        r = &mut reading => r?,
        r = &mut writing => return r.map_err(Error::Io),
    }
    // Drained: let the writer finish what the last responses left in the output.
    conn.closing.store(true, Ordering::Release);
    conn.wake_writer.notify_one();
    writing.await.map_err(Error::Io)
}

/// Writes whatever has gathered in the output, one gathered write per batch.
async fn write_loop<W: AsyncWrite + Unpin>(wr: &mut W, conn: &Conn) -> std::io::Result<()> {
    let mut batch = Gather::with_capacity(16 * 1024);
    loop {
        conn.wake_writer.notified().await;
        // Let the tasks woken by the same read append their responses first.
        tokio::task::yield_now().await;
        {
            let mut out = conn.out.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *out, &mut batch);
        }
        if !batch.is_empty() {
            wr.write_all_buf(&mut batch).await?;
        }
        if conn.closing.load(Ordering::Acquire)
            && conn
                .out
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            return Ok(());
        }
    }
}

/// The reader's view of one stream.
#[derive(Debug)]
struct Entry {
    stream: Arc<Stream>,
    /// Where body bytes go until the request's end arrives.
    body: Option<mpsc::UnboundedSender<Bytes>>,
    /// Where the daemon's bytes go once a request that offered to upgrade has its body
    /// in: those of the opaque stream, after a `101`.
    opaque: Option<mpsc::UnboundedSender<(Bytes, bool)>>,
    task: Option<AbortHandle>,
}

impl Entry {
    /// Nothing more can happen on the stream: the body is in and the task is over.
    fn finished(&self) -> bool {
        self.body.is_none() && self.stream.done.load(Ordering::Acquire)
    }

    /// Where the daemon's data frames for this stream go: the body while it lasts, then
    /// the opaque stream's bytes.
    fn sink(&mut self) -> Option<Sink<'_>> {
        match (&self.body, &self.opaque) {
            (Some(tx), _) => Some(Sink::Body(tx)),
            (None, Some(tx)) => Some(Sink::Opaque(tx)),
            (None, None) => None,
        }
    }
}

/// Where a data frame goes.
enum Sink<'a> {
    Body(&'a mpsc::UnboundedSender<Bytes>),
    Opaque(&'a mpsc::UnboundedSender<(Bytes, bool)>),
}

impl Drop for Entry {
    /// A stream forgotten while its task runs (reset, or the connection closed) stops it.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

struct Reader<S> {
    service: S,
    conn: Arc<Conn>,
    streams: HashMap<u32, Entry, foldhash::fast::RandomState>,
    sweep_at: usize,
    /// The wire's version.
    version: u32,
}

impl<S> Reader<S> {
    async fn run<B: AppBody, R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        pre: Bytes,
        mut drain: watch::Receiver<bool>,
    ) -> Result<(), Error>
    where
        S: AppService<B>,
    {
        let mut buf = BytesMut::with_capacity(READ_BUF.max(pre.len()));
        buf.extend_from_slice(&pre);
        let mut drain_asked = *drain.borrow_and_update();
        // Once the drain frame is out, the daemon sends no new request and closes the
        // connection when the last one it sent (those already on their way included) has
        // ended: that close, not a guess at its latency, ends the drain. The supervisor
        // bounds the wait by the shutdown timeout.
        let mut draining = false;
        loop {
            while let Some(frame) =
                wire::decode(&mut buf).map_err(|e| Error::Protocol(e.to_string()))?
            {
                self.frame(frame);
            }
            if drain_asked && !draining {
                draining = true;
                self.conn.send(wire::encode_drain);
                tracing::debug!("worker draining");
            }
            // Room for the whole of a frame whose header is in (the daemon's frames are
            // trusted up to the wire's largest), so a large one is read in one buffer.
            if let Ok(Some(next)) = wire::peek(&buf)
                && buf.capacity() < next.frame_len()
            {
                buf.reserve(next.frame_len() - buf.len());
            }
            if buf.capacity() - buf.len() < MIN_READ {
                buf.reserve(READ_BUF);
            }
            tokio::select! {
                biased;
                n = rd.read_buf(&mut buf) => {
                    if n? == 0 {
                        return if draining {
                            Ok(())
                        } else {
                            Err(Error::Protocol("the daemon closed the worker connection".into()))
                        };
                    }
                }
                // An error means the supervisor is gone: stop taking requests all the same.
                r = drain.changed(), if !drain_asked => {
                    drain_asked = r.is_err() || *drain.borrow_and_update();
                }
            }
        }
    }

    fn frame<B: AppBody>(&mut self, frame: Frame)
    where
        S: AppService<B>,
    {
        match frame {
            Frame::Head {
                stream,
                end,
                payload,
            } => self.open(stream, end, payload),
            Frame::Data { stream, end, data } => self.data(stream, end, data),
            Frame::Window { stream, credit } => {
                if let Some(entry) = self.streams.get(&stream) {
                    entry.stream.add_credit(credit);
                }
            }
            Frame::Reset { stream, code } => {
                if let Some(entry) = self.streams.remove(&stream) {
                    tracing::debug!(stream, ?code, "daemon reset the stream");
                    entry.stream.reset.store(true, Ordering::Release);
                    // Dropping the entry aborts the task and ends the body with an error.
                }
            }
            // The daemon is stopping: answer what it sends until it closes the connection;
            // the queue attaches again once the daemon is back.
            Frame::Drain => tracing::info!("the daemon is stopping"),
        }
    }

    fn open<B: AppBody>(&mut self, id: u32, end: bool, payload: Bytes)
    where
        S: AppService<B>,
    {
        if let Some(old) = self.streams.remove(&id)
            && !old.finished()
        {
            // The daemon reuses an id only once the stream is over, but the task may still
            // be on its way out after its last frame. Silence it either way.
            tracing::debug!(stream = id, "stream reopened before its task ended");
            old.stream.reset.store(true, Ordering::Release);
        }
        let head = match RequestHead::decode(payload) {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(stream = id, error = %e, "undecodable request head");
                self.conn
                    .send(|buf| wire::encode_reset(buf, id, ResetCode::Protocol));
                return;
            }
        };
        let stream = Arc::new(Stream::new(id, end));
        let (body, sender) = if end {
            (Body::empty(), None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            let length = content_length(&head.headers);
            let body = Body::wire(rx, stream.clone(), self.conn.clone(), length);
            (body, Some(tx))
        };
        // A request that offers to upgrade, with no body, is served through hyper so the
        // service may accept it (see `upgrade`).
        let upgrading = self.version >= 2 && end && upgrade::offered(&head.headers);
        let mut opaque = None;
        let task = match request(head, body) {
            Ok(req) if upgrading => {
                self.conn.in_flight.fetch_add(1, Ordering::SeqCst);
                let (tx, rx) = mpsc::unbounded_channel();
                opaque = Some(tx);
                let call = upgrade::respond(
                    self.service.clone(),
                    req,
                    stream.clone(),
                    self.conn.clone(),
                    rx,
                );
                Some(tokio::spawn(call).abort_handle())
            }
            Ok(req) => {
                self.conn.in_flight.fetch_add(1, Ordering::SeqCst);
                let call =
                    respond::respond(self.service.clone(), req, stream.clone(), self.conn.clone());
                Some(tokio::spawn(call).abort_handle())
            }
            Err(what) => {
                tracing::warn!(
                    stream = id,
                    "answering 400: the request's {what} is not valid for http"
                );
                stream.send(&self.conn, |buf| {
                    ResponseHead::encode_parts(buf, id, true, 400, [])
                });
                stream.done.store(true, Ordering::Release);
                None
            }
        };
        self.streams.insert(
            id,
            Entry {
                stream,
                body: sender,
                opaque,
                task,
            },
        );
        if self.streams.len() >= self.sweep_at {
            self.streams.retain(|_, e| !e.finished());
            self.sweep_at = (self.streams.len() * 2).max(SWEEP_MIN);
        }
    }

    fn data(&mut self, id: u32, end: bool, data: Bytes) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        let len = data.len();
        if let Some(Sink::Opaque(tx)) = entry.sink() {
            // The task grants these back as it writes them.
            if tx.send((data, end)).is_err() && !end && len > 0 {
                entry.stream.grant(&self.conn, len);
            }
            if end {
                entry.opaque = None;
            }
            return;
        }
        if len > 0 {
            let taken = matches!(entry.sink(), Some(Sink::Body(tx)) if tx.send(data).is_ok());
            if !taken && !end {
                // Nobody will read these bytes: give their credit straight back so the
                // daemon can finish the body and free the slot.
                entry.stream.grant(&self.conn, len);
            }
        }
        if end {
            // Before the sender goes: the body tells a clean end from a cut by this flag.
            entry.stream.body_ended.store(true, Ordering::Release);
            entry.body = None;
            if entry.finished() {
                self.streams.remove(&id);
            }
        }
    }
}

/// The request's `content-length`, when it has exactly one valid one.
fn content_length(headers: &[(Bytes, Bytes)]) -> Option<u64> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()));
    let (_, value) = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Builds the `http::Request` a service sees. Headers `http` cannot hold are skipped;
/// `Err` names the part that made the request impossible to build.
fn request(head: RequestHead, body: Body) -> Result<Request<Body>, &'static str> {
    let method = Method::from_bytes(&head.method).map_err(|_| "method")?;
    let uri = target_uri(head.target).ok_or("target")?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (name, value) in head.headers {
        match (
            HeaderName::from_bytes(&name),
            HeaderValue::from_maybe_shared(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::warn!(
                header = %String::from_utf8_lossy(&name),
                "skipped a request header http cannot represent"
            ),
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = match head.version {
        wire::Version::Http10 => http::Version::HTTP_10,
        wire::Version::Http11 => http::Version::HTTP_11,
    };
    *req.headers_mut() = headers;
    Ok(req)
}

/// The target as a `Uri`. The daemon re-encodes the path but passes the query as the client
/// sent it, which may hold bytes `http` refuses (such as `|` or raw UTF-8): those are
/// percent-encoded. The target as received stays in `portshare-raw-url`.
fn target_uri(target: Bytes) -> Option<Uri> {
    if let Ok(uri) = Uri::from_maybe_shared(target.clone()) {
        return Some(uri);
    }
    let mut escaped = Vec::with_capacity(target.len() + 16);
    for &b in target.iter() {
        if b.is_ascii_graphic() && !br##""#<>\^`{|}"##.contains(&b) {
            escaped.push(b);
        } else {
            escaped.extend_from_slice(&crate::percent(b));
        }
    }
    Uri::from_maybe_shared(Bytes::from(escaped)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_http_refuses_are_escaped() {
        let uri =
            |t: &'static str| target_uri(Bytes::from_static(t.as_bytes())).map(|u| u.to_string());
        assert_eq!(uri("/app/x?a=1").as_deref(), Some("/app/x?a=1"));
        assert_eq!(uri("/app/x?a=\"b\"").as_deref(), Some("/app/x?a=%22b%22"));
        assert_eq!(uri("/app/x?a=<b>").as_deref(), Some("/app/x?a=%3Cb%3E"));
        assert_eq!(uri("*").as_deref(), Some("*"));
    }

    #[test]
    fn content_length_only_when_unambiguous() {
        let h = |v: &[(&'static str, &'static str)]| -> Vec<(Bytes, Bytes)> {
            v.iter()
                .map(|(n, v)| {
                    (
                        Bytes::from_static(n.as_bytes()),
                        Bytes::from_static(v.as_bytes()),
                    )
                })
                .collect()
        };
        assert_eq!(content_length(&h(&[("Content-Length", "12")])), Some(12));
        assert_eq!(content_length(&h(&[("host", "a")])), None);
        assert_eq!(
            content_length(&h(&[("content-length", "1"), ("content-length", "1")])),
            None
        );
        assert_eq!(content_length(&h(&[("content-length", "x")])), None);
    }

    /// Records each write call.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.get_mut().0.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_writer_sends_what_gathered_in_one_write() {
        let (fatal, _rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn::new(fatal));
        for stream in 1..=100 {
            conn.send(|buf| ResponseHead::encode_parts(buf, stream, true, 204, []));
        }
        conn.closing.store(true, Ordering::Release);
        let mut writes = Writes::default();
        write_loop(&mut writes, &conn).await.unwrap();
        assert_eq!(writes.0.len(), 1, "one write for the batch");
        let mut got = BytesMut::from(&writes.0[0][..]);
        let mut streams = Vec::new();
        while let Some(frame) = wire::decode(&mut got).unwrap() {
            let Frame::Head {
                stream, end: true, ..
            } = frame
            else {
                panic!("{frame:?}");
            };
            streams.push(stream);
        }
        assert_eq!(streams, (1..=100).collect::<Vec<_>>());
    }
}
