//! Attached workers: the daemon's end of the [worker wire](portshare_proto::wire).
//!
//! Each worker connection has one reader task and one writer task. Client connections
//! append their frames to the connection's output buffer and wake the writer, which writes
//! everything that has gathered in one call: under load, one `write` carries many requests.
//!
//! The reader judges each frame by its header as soon as that is in: a data frame longer
//! than its stream's remaining window, or a response head over the wire's cap, disconnects
//! the worker before its payload is read. A whole frame is then copied out of the read
//! buffer and handed to its stream's channel with a [`Charge`] for its bytes, released once
//! the client connection has written them (see [`flow`](crate::flow)); when the charge does
//! not fit, the reader stops reading this socket until it does. After a response's `END`,
//! the reader drops the stream's stray head and data frames, so the client gets the finished
//! response intact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use portshare_proto::gather::Gather;
use portshare_proto::wire::{
    self, FrameHeader, HEADER_LEN, INITIAL_WINDOW, Kind, MAX_RESPONSE_HEAD, ResetCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc};

use crate::flow::{Account, Buffers, Charge};
use crate::queue::{Queue, Target};

/// The read buffer's usual size; a read never offers less than [`MIN_READ`] bytes of room.
const READ_BUF: usize = 64 * 1024;

/// Request bytes (heads, bodies, window and reset frames) that may wait to be written to one
/// worker connection before client connections stop forwarding request bodies to it: a
/// worker that grants windows and never reads holds its clients back, not the daemon's
/// memory. Each client connection adds at most one data frame of [`BODY_FRAME`] past it.
pub(crate) const MAX_QUEUED: usize = 4 << 20;

/// The largest data frame of a request body sent to a worker.
pub(crate) const BODY_FRAME: usize = 256 << 10;
const MIN_READ: usize = 16 * 1024;

/// A data frame with at least this many payload bytes is read into a buffer of its own,
/// exactly its size, and handed on without a copy: its allocation holds nothing else.
const OWN_FRAME: usize = 32 * 1024;

/// How long a worker disconnected for breaking the protocol is given to take the frames
/// still addressed to it (the reset of the stream it broke).
const PARTING: Duration = Duration::from_secs(1);

/// What a stream hears from its worker.
#[derive(Debug)]
pub(crate) enum Event {
    /// The response head, encoded ([`wire::ResponseHead::decode`]); `true` when no body
    /// follows.
    Head(Bytes, bool),
    /// Response body bytes; `true` on the last.
    Data(Bytes, bool),
    /// More credit for the request body.
    Window(u32),
    /// The worker reset the stream (with any code: the client's connection is aborted).
    Reset,
}

/// A stream's events, each with the charge for what it holds. The channel closes when the
/// worker connection is gone.
pub(crate) type Events = mpsc::UnboundedReceiver<(Event, Charge)>;

/// Who is on the other end.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    /// Primary gid and supplementary groups.
    pub(crate) identity: crate::identity::Identity,
    /// The user's name, or `uid:N`.
    pub(crate) user: String,
    pub(crate) command: String,
}

/// One attached worker connection.
#[derive(Debug)]
pub(crate) struct WorkerConn {
    pub(crate) id: u64,
    pub(crate) peer: Peer,
    /// The version of the wire agreed at the upgrade ([`wire::VERSIONS`]): opaque streams
    /// from 2 on.
    pub(crate) version: u32,
    /// Frames waiting for the writer; large request body payloads kept by reference.
    out: Mutex<Gather>,
    wake: Notify,
    /// Bytes appended to `out` and not yet written to the worker's socket.
    queued: AtomicUsize,
    /// Woken each time the writer has written what it took.
    drained: Notify,
    /// Set when the connection is closing: the writer returns once the output is written.
    closing: AtomicBool,
    streams: Mutex<HashMap<u32, Stream>>,
    next_stream: AtomicU32,
    closed: AtomicBool,
    /// Woken once `closed` is set.
    gone: Notify,
    /// The worker asked for no new requests; it is closed once its last stream ends.
    draining: AtomicBool,
    stop: Notify,
    /// What the daemon holds of this worker's responses.
    account: Arc<Account>,
    /// Requests handed to this worker (streams opened), for the state view.
    served: AtomicU64,
}

/// The reader's view of an open stream.
#[derive(Debug)]
struct Stream {
    tx: mpsc::UnboundedSender<(Event, Charge)>,
    /// Response body bytes the worker may still send: [`INITIAL_WINDOW`], plus what the
    /// daemon granted, less what arrived.
    window: u32,
    /// Nothing more goes to the client: the response ended, or the worker reset it.
    done: bool,
    /// A stray frame after the end was already reported.
    warned: bool,
}

/// Why the reader stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    /// The socket closed or failed.
    Closed,
    /// The worker broke the protocol; it has been told (a reset frame, when a stream was
    /// at fault) and is disconnected.
    Broke,
}

/// What the reader did with the front of its buffer.
enum Step {
    /// Took a frame (handed on, or dropped).
    Took,
    /// The buffer must hold this many bytes before the next frame can be taken.
    Need(usize),
    /// The next frame's charge of this many payload bytes does not fit yet.
    Full(usize),
}

impl WorkerConn {
    pub(crate) fn new(id: u64, peer: Peer, budget: &Arc<Buffers>, version: u32) -> Arc<WorkerConn> {
        Arc::new(WorkerConn {
            id,
            peer,
            version,
            out: Mutex::new(Gather::with_capacity(16 * 1024)),
            wake: Notify::new(),
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
            closing: AtomicBool::new(false),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            gone: Notify::new(),
            draining: AtomicBool::new(false),
            stop: Notify::new(),
            account: budget.account(),
            served: AtomicU64::new(0),
        })
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A charge of nothing to this worker, to gather a batch's charges in.
    pub(crate) fn nothing(&self) -> Charge {
        self.account.nothing()
    }

    /// Bytes of this worker's responses the daemon holds now.
    pub(crate) fn buffered(&self) -> usize {
        self.account.held()
    }

    /// Requests handed to this worker so far.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Opens a stream; its events arrive on the receiver. `None` when the worker is gone.
    pub(crate) fn open(&self) -> Option<(u32, Events)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut streams = self.streams();
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        // Stream ids wrap after 2^32 requests; skip 0 (the connection's own) and any id
        // still open.
        let mut id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        while id == 0 || streams.contains_key(&id) {
            id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        }
        streams.insert(
            id,
            Stream {
                tx,
                window: INITIAL_WINDOW,
                done: false,
                warned: false,
            },
        );
        self.served.fetch_add(1, Ordering::Relaxed);
        Some((id, rx))
    }

    /// Forgets a stream; frames still coming for it are dropped.
    pub(crate) fn forget(&self, id: u32) {
        let mut streams = self.streams();
        streams.remove(&id);
        if streams.is_empty() && self.draining.load(Ordering::Acquire) {
            self.stop.notify_one();
        }
    }

    /// Grants the worker `credit` more response bytes on `stream`.
    pub(crate) fn grant(&self, stream: u32, credit: u32) {
        // Counted before the frame leaves, so the reader never sees bytes sent against
        // a grant it does not know of.
        if let Some(s) = self.streams().get_mut(&stream) {
            s.window = s.window.saturating_add(credit);
        }
        self.send(|b| wire::encode_window(b, stream, credit));
    }

    /// Appends frames to the output and wakes the writer.
    pub(crate) fn send(&self, encode: impl FnOnce(&mut BytesMut)) {
        self.gather(|out| encode(out.tail()));
    }

    /// Appends frames to the output, payloads by reference, and wakes the writer.
    pub(crate) fn gather(&self, encode: impl FnOnce(&mut Gather)) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let before = out.len();
        encode(&mut out);
        self.queued
            .fetch_add(out.len().saturating_sub(before), Ordering::AcqRel);
        drop(out);
        self.wake.notify_one();
    }

    /// True while the worker has [`MAX_QUEUED`] bytes or more waiting to be written to it:
    /// client connections then stop forwarding request bodies until it reads.
    pub(crate) fn congested(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= MAX_QUEUED
    }

    /// Returns once the worker is no longer [congested](WorkerConn::congested), or gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.congested() || self.closed.load(Ordering::Acquire) {
                return;
            }
            drained.await;
        }
    }

    /// Returns once the connection is gone: a client connection still writing a response
    /// the worker can no longer finish gives up at once, and lets go of what it holds.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn gone(&self) {
        let gone = self.gone.notified();
        tokio::pin!(gone);
        gone.as_mut().enable();
        if !self.closed.load(Ordering::Acquire) {
            gone.await;
        }
    }

    /// Asks the connection to close (its queue closed).
    pub(crate) fn shutdown(&self) {
        self.stop.notify_one();
    }

    /// Runs the connection until either side closes it. `pre` holds bytes that arrived
    /// with the upgrade.
    pub(crate) async fn run(
        self: Arc<Self>,
        io: UnixStream,
        pre: Bytes,
        queue: Arc<Queue>,
        slots: u32,
    ) {
        let (mut rd, mut wr) = io.into_split();
        if !queue.attach(self.id, Target::Worker(self.clone()), slots) {
            return;
        }
        let writer = {
            let conn = self.clone();
            async move {
                let mut spare = Gather::with_capacity(16 * 1024);
                loop {
                    conn.wake.notified().await;
                    {
                        let mut out = conn.out.lock().unwrap_or_else(|e| e.into_inner());
                        std::mem::swap(&mut *out, &mut spare);
                    }
                    if !spare.is_empty() {
                        let took = spare.len();
                        if wr.write_all_buf(&mut spare).await.is_err() {
                            return;
                        }
                        conn.queued.fetch_sub(took, Ordering::AcqRel);
                        conn.drained.notify_waiters();
                    }
                    if conn.closing.load(Ordering::Acquire)
                        && conn
                            .out
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .is_empty()
                    {
                        return;
                    }
                }
            }
        };
        tokio::pin!(writer);
        let reader = self.read(&mut rd, pre, &queue);
        let stopped = tokio::select! {
            () = &mut writer => Stopped::Closed,
            s = reader => s,
            () = self.stop.notified() => Stopped::Closed,
        };
        self.closed.store(true, Ordering::Release);
        self.gone.notify_waiters();
        self.drained.notify_waiters();
        queue.detach(self.id);
        // Dropping the senders tells each stream's client connection the worker is gone.
        let streams = std::mem::take(&mut *self.streams());
        drop(streams);
        if stopped == Stopped::Broke {
            self.closing.store(true, Ordering::Release);
            self.wake.notify_one();
            let _ = tokio::time::timeout(PARTING, writer).await;
        }
        // At the level and with the fields of "worker attached", so an operator sees both.
        tracing::info!(
            queue = queue.name(),
            pid = self.peer.pid,
            slots,
            version = self.version,
            worker = self.id,
            "worker detached"
        );
    }

    /// Reads frames and hands them on until the socket closes or the worker breaks the
    /// protocol.
    async fn read(
        &self,
        rd: &mut tokio::net::unix::OwnedReadHalf,
        pre: Bytes,
        queue: &Queue,
    ) -> Stopped {
        let mut buf = BytesMut::with_capacity(READ_BUF.max(pre.len()));
        buf.extend_from_slice(&pre);
        loop {
            let need = loop {
                match self.step(&mut buf, queue, false) {
                    Ok(Step::Took) => {}
                    Ok(Step::Need(n)) => break n,
                    Ok(Step::Full(payload)) => {
                        self.account.room(payload).await;
                    }
                    Err(stopped) => return stopped,
                }
            };
            // `need` is at most a frame the reader accepted: a window's data or a head.
            if need >= HEADER_LEN + OWN_FRAME
                && let Ok(Some(header)) = wire::peek(&buf)
                && header.kind == Kind::Data
            {
                // Its start is all the buffer holds: the frame before it was taken whole.
                let mut own = BytesMut::with_capacity(need);
                own.extend_from_slice(&buf);
                buf.clear();
                while own.len() < need {
                    let room = need - own.len();
                    match rd.read_buf(&mut (&mut own).limit(room)).await {
                        Ok(0) | Err(_) => return Stopped::Closed,
                        Ok(_) => {}
                    }
                }
                loop {
                    match self.step(&mut own, queue, true) {
                        Ok(Step::Full(payload)) => self.account.room(payload).await,
                        Ok(_) => break,
                        Err(stopped) => return stopped,
                    }
                }
                continue;
            }
            if buf.capacity() < need {
                buf.reserve(need - buf.len());
            }
            if buf.capacity() - buf.len() < MIN_READ {
                buf.reserve(READ_BUF);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Stopped::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Judges the frame at the front of `buf` by its header and, once it is whole, takes it;
    /// `own` when `buf` is the frame's own allocation, exactly its size.
    fn step(&self, buf: &mut BytesMut, queue: &Queue, own: bool) -> Result<Step, Stopped> {
        let header = match wire::peek(buf) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Step::Need(HEADER_LEN)),
            Err(e) => {
                tracing::warn!(
                    queue = queue.name(),
                    pid = self.peer.pid,
                    error = %e,
                    worker = self.id,
                    "worker disconnected"
                );
                return Err(Stopped::Broke);
            }
        };
        self.judge(&header, queue)?;
        if buf.len() < header.frame_len() {
            return Ok(Step::Need(header.frame_len()));
        }
        Ok(self.take(header, buf, queue, own))
    }

    /// Refuses a frame whose header alone breaks the wire's limits: a head over
    /// [`MAX_RESPONSE_HEAD`], data beyond the stream's window.
    fn judge(&self, header: &FrameHeader, queue: &Queue) -> Result<(), Stopped> {
        let (limit, what) = match header.kind {
            Kind::Head => (
                MAX_RESPONSE_HEAD,
                "a response head larger than the wire allows",
            ),
            Kind::Data => {
                // A stream already forgotten may still see data the worker sent before it
                // heard of the reset: at most a window, then discarded.
                let window = self
                    .streams()
                    .get(&header.stream)
                    .map_or(INITIAL_WINDOW, |s| s.window);
                (window as usize, "data beyond the stream's window")
            }
            _ => return Ok(()),
        };
        if header.len <= limit {
            return Ok(());
        }
        tracing::warn!(
            queue = queue.name(),
            pid = self.peer.pid,
            stream = header.stream,
            len = header.len,
            limit,
            excess = header.len - limit,
            "worker {} sent {what}: disconnected",
            self.id
        );
        if self.streams().contains_key(&header.stream) {
            self.send(|b| wire::encode_reset(b, header.stream, ResetCode::Protocol));
        }
        Err(Stopped::Broke)
    }

    /// Takes the whole frame at the front of `buf`: hands it to its stream with its charge,
    /// or drops it. Leaves it there when its charge does not fit. `own`: `buf` is the
    /// frame's own allocation, handed on as it is.
    fn take(&self, header: FrameHeader, buf: &mut BytesMut, queue: &Queue, own: bool) -> Step {
        let payload = &buf[HEADER_LEN..header.frame_len()];
        if header.kind == Kind::Drain {
            buf.advance(header.frame_len());
            self.drain(queue);
            return Step::Took;
        }
        let mut streams = self.streams();
        let Some(stream) = streams.get_mut(&header.stream) else {
            // Forgotten: the client is gone or the daemon reset the stream.
            buf.advance(header.frame_len());
            return Step::Took;
        };
        let stray = matches!(header.kind, Kind::Head | Kind::Data) && stream.done;
        let silent = matches!(header.kind, Kind::Reset) && stream.done;
        if stray || silent {
            if header.kind == Kind::Data {
                stream.window = stream.window.saturating_sub(header.len as u32);
            }
            if stray && !stream.warned {
                stream.warned = true;
                tracing::warn!(
                    queue = queue.name(),
                    pid = self.peer.pid,
                    stream = header.stream,
                    worker = self.id,
                    "worker sent frames after the end of a response: dropped"
                );
            }
            buf.advance(header.frame_len());
            return Step::Took;
        }
        let Some(charge) = self.account.try_charge(header.len) else {
            return Step::Full(header.len);
        };
        // A payload held for a slow client must not keep the rest of the read buffer's
        // allocation alive: it is a copy of its own, unless it was read into one.
        let payload = if own {
            buf.split_to(header.frame_len())
                .freeze()
                .slice(HEADER_LEN..)
        } else {
            let payload = Bytes::copy_from_slice(payload);
            buf.advance(header.frame_len());
            payload
        };
        let event = match header.with_payload(payload) {
            Ok(wire::Frame::Head { end, payload, .. }) => {
                stream.done = end;
                Event::Head(payload, end)
            }
            Ok(wire::Frame::Data { end, data, .. }) => {
                // Within the window: `judge` saw this header, and the window has only
                // grown since.
                stream.window = stream.window.saturating_sub(data.len() as u32);
                stream.done = end;
                Event::Data(data, end)
            }
            Ok(wire::Frame::Window { credit, .. }) => Event::Window(credit),
            Ok(wire::Frame::Reset { .. }) => {
                stream.done = true;
                stream.warned = true;
                Event::Reset
            }
            // Drain was taken above, and `peek` checked the payload's length.
            Ok(wire::Frame::Drain) | Err(_) => return Step::Took,
        };
        let _ = stream.tx.send((event, charge));
        Step::Took
    }

    /// The worker asked for no new requests.
    fn drain(&self, queue: &Queue) {
        queue.detach(self.id);
        let streams = self.streams();
        self.draining.store(true, Ordering::Release);
        if streams.is_empty() {
            self.stop.notify_one();
        }
    }
}
