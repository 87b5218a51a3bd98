//! Attached workers: the daemon's end of the [worker wire](portshare_proto::wire).
//!
//! Each worker connection has one reader task and one writer task. Client connections
//! append their frames to the connection's output buffer and wake the writer, which writes
//! everything that has gathered in one call: under load, one `write` carries many requests.
//! The reader decodes every frame a read brought in and hands each to its stream's channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use portshare_proto::wire::{self, Frame, ResetCode, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc};

use crate::queue::{Queue, Target};

/// What a stream hears from its worker.
#[derive(Debug)]
pub(crate) enum Event {
    /// The response head; `true` when no body follows.
    Head(ResponseHead, bool),
    /// Response body bytes; `true` on the last.
    Data(Bytes, bool),
    /// More credit for the request body.
    Window(u32),
    /// The worker reset the stream (with any code: the client's connection is aborted).
    Reset,
    /// The worker connection is gone.
    Gone,
}

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
    out: Mutex<BytesMut>,
    wake: Notify,
    streams: Mutex<HashMap<u32, mpsc::UnboundedSender<Event>>>,
    next_stream: AtomicU32,
    closed: AtomicBool,
    /// The worker asked for no new requests; it is closed once its last stream ends.
    draining: AtomicBool,
    stop: Notify,
}

impl WorkerConn {
    pub(crate) fn new(id: u64, peer: Peer) -> Arc<WorkerConn> {
        Arc::new(WorkerConn {
            id,
            peer,
            out: Mutex::new(BytesMut::with_capacity(16 * 1024)),
            wake: Notify::new(),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stop: Notify::new(),
        })
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u32, mpsc::UnboundedSender<Event>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a stream; its events arrive on the receiver. `None` when the worker is gone.
    pub(crate) fn open(&self) -> Option<(u32, mpsc::UnboundedReceiver<Event>)> {
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
        streams.insert(id, tx);
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

    /// Appends frames to the output and wakes the writer.
    pub(crate) fn send(&self, encode: impl FnOnce(&mut BytesMut)) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        encode(&mut out);
        drop(out);
        self.wake.notify_one();
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
                let mut spare = BytesMut::with_capacity(16 * 1024);
                loop {
                    conn.wake.notified().await;
                    {
                        let mut out = conn.out.lock().unwrap_or_else(|e| e.into_inner());
                        std::mem::swap(&mut *out, &mut spare);
                    }
                    if spare.is_empty() {
                        continue;
                    }
                    if wr.write_all(&spare).await.is_err() {
                        return;
                    }
                    spare.clear();
                }
            }
        };
        let reader = {
            let conn = self.clone();
            let queue = queue.clone();
            async move {
                let mut buf = BytesMut::with_capacity(64 * 1024);
                buf.extend_from_slice(&pre);
                loop {
                    loop {
                        match wire::decode(&mut buf) {
                            Ok(Some(frame)) => conn.deliver(frame, &queue),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(pid = conn.peer.pid, "worker {}: {e}", conn.id);
                                return;
                            }
                        }
                    }
                    if buf.capacity() - buf.len() < 16 * 1024 {
                        buf.reserve(64 * 1024);
                    }
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            }
        };
        tokio::select! {
            () = writer => {}
            () = reader => {}
            () = self.stop.notified() => {}
        }
        self.closed.store(true, Ordering::Release);
        queue.detach(self.id);
        let streams = std::mem::take(&mut *self.streams());
        for tx in streams.into_values() {
            let _ = tx.send(Event::Gone);
        }
        tracing::debug!(
            queue = queue.name(),
            pid = self.peer.pid,
            "worker {} detached",
            self.id
        );
    }

    fn deliver(&self, frame: Frame, queue: &Queue) {
        let (stream, event) = match frame {
            Frame::Head {
                stream,
                end,
                payload,
            } => match ResponseHead::decode(payload) {
                Ok(head) => (stream, Event::Head(head, end)),
                Err(e) => {
                    tracing::warn!(
                        queue = queue.name(),
                        pid = self.peer.pid,
                        "bad response head: {e}"
                    );
                    self.send(|b| wire::encode_reset(b, stream, ResetCode::Protocol));
                    (stream, Event::Reset)
                }
            },
            Frame::Data { stream, end, data } => (stream, Event::Data(data, end)),
            Frame::Window { stream, credit } => (stream, Event::Window(credit)),
            Frame::Reset { stream, .. } => (stream, Event::Reset),
            Frame::Drain => {
                queue.detach(self.id);
                let streams = self.streams();
                self.draining.store(true, Ordering::Release);
                if streams.is_empty() {
                    self.stop.notify_one();
                }
                return;
            }
        };
        if let Some(tx) = self.streams().get(&stream) {
            let _ = tx.send(event);
        }
    }
}
