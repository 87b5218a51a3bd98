//! The request body a service receives.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use portshare_proto::wire::INITIAL_WINDOW;
use tokio::sync::mpsc;

use crate::error::BodyError;
use crate::worker::{Conn, Stream};

/// Consumed bytes are granted back to the daemon in batches of at least this many, so a
/// large upload costs one window frame per batch rather than one per chunk.
const GRANT_BATCH: usize = INITIAL_WINDOW as usize / 4;

/// The body of a request, streamed from the daemon as the service reads it.
///
/// It implements [`http_body::Body`] with `Bytes` data, so it works wherever hyper, tower or
/// axum expect a body. Reading it is what lets the client send more: the daemon sends at
/// most [`wire::INITIAL_WINDOW`](portshare_proto::wire::INITIAL_WINDOW) bytes ahead of what
/// the service has read. A body dropped unread is discarded without stalling the daemon.
///
/// It ends with a [`BodyError`] when the client goes away mid-body or the worker connection
/// closes.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Bytes),
    Wire(Wire),
}

/// A body arriving on the worker wire.
struct Wire {
    chunks: mpsc::UnboundedReceiver<Bytes>,
    stream: Arc<Stream>,
    conn: Arc<Conn>,
    /// Bytes read but not yet granted back.
    unacked: usize,
    /// What `content-length` says is left, when the request had one.
    remaining: Option<u64>,
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Body {
        Body { kind: Kind::Empty }
    }

    pub(crate) fn wire(
        chunks: mpsc::UnboundedReceiver<Bytes>,
        stream: Arc<Stream>,
        conn: Arc<Conn>,
        content_length: Option<u64>,
    ) -> Body {
        Body {
            kind: Kind::Wire(Wire {
                chunks,
                stream,
                conn,
                unacked: 0,
                remaining: content_length,
            }),
        }
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

/// A body holding these bytes, for calling a service directly (in tests, say).
impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body {
            kind: Kind::Full(bytes),
        }
    }
}

/// A body holding this text.
impl From<String> for Body {
    fn from(text: String) -> Body {
        Body::from(Bytes::from(text))
    }
}

/// A body holding this text.
impl From<&'static str> for Body {
    fn from(text: &'static str) -> Body {
        Body::from(Bytes::from_static(text.as_bytes()))
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("Body(empty)"),
            Kind::Full(b) => write!(f, "Body({} bytes)", b.len()),
            Kind::Wire(w) => write!(f, "Body(stream {})", w.stream.id),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let ended_well = match &mut this.kind {
            Kind::Empty => return Poll::Ready(None),
            Kind::Full(bytes) => {
                let bytes = std::mem::take(bytes);
                this.kind = Kind::Empty;
                return Poll::Ready((!bytes.is_empty()).then(|| Ok(Frame::data(bytes))));
            }
            Kind::Wire(wire) => match ready!(wire.chunks.poll_recv(cx)) {
                Some(chunk) => {
                    wire.consumed(chunk.len());
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // The reader sets `body_ended` before it lets go of the sender.
                None => wire.stream.body_ended(),
            },
        };
        this.kind = Kind::Empty;
        Poll::Ready((!ended_well).then(|| Err(BodyError::new())))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_empty(),
            Kind::Wire(w) => w.remaining == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.len() as u64),
            Kind::Wire(Wire {
                remaining: Some(n), ..
            }) => SizeHint::with_exact(*n),
            Kind::Wire(_) => SizeHint::default(),
        }
    }
}

impl Wire {
    fn consumed(&mut self, n: usize) {
        if let Some(left) = &mut self.remaining {
            *left = left.saturating_sub(n as u64);
        }
        self.unacked += n;
        if self.unacked >= GRANT_BATCH {
            self.stream.grant(&self.conn, self.unacked);
            self.unacked = 0;
        }
    }
}

impl Drop for Wire {
    /// Gives back the credit of everything unread, so the daemon can finish sending a body
    /// nobody reads (the reader discards what arrives from now on and grants it at once).
    fn drop(&mut self) {
        self.chunks.close();
        let mut unread = self.unacked;
        while let Ok(chunk) = self.chunks.try_recv() {
            unread += chunk.len();
        }
        if unread > 0 && !self.stream.body_ended() {
            self.stream.grant(&self.conn, unread);
        }
    }
}
