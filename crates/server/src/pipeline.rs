//! Pipelined upstream connections: requests without a body, from many client connections,
//! written one after another on one upstream connection, their responses read back in
//! order (RFC 9112 §9.3.2). Many requests then cost the upstream, and the daemon, one
//! read and one write.
//!
//! Each pipe is a task that owns its [`UpConn`]: client connections hand it [`Job`]s and
//! get their response back in [`Piece`]s ([`Reply`]): the first by a oneshot, the rest, if
//! any, over a channel small enough that a slow client holds up the pipe (and only it)
//! rather than growing a buffer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::relay::{self, Delimit, ResponseHead};
use crate::upstream::{Turn, UpConn};

/// Pieces of one response in flight from a pipe to its client connection, after the first.
pub(crate) const PIECES: usize = 4;

/// A request for a pipe: its head (it has no body), whether it is HEAD, and where its
/// response goes.
pub(crate) struct Job {
    pub(crate) head: Vec<u8>,
    pub(crate) head_method: bool,
    pub(crate) reply: Reply,
}

/// Where the pieces of a request's response go. The first goes by a oneshot: one
/// allocation, and all a response whose body came with its head needs. A response with
/// more to come sends, with its first piece, the receiver of a channel made for the rest.
#[derive(Debug)]
pub(crate) struct Reply {
    first: Option<oneshot::Sender<(Piece, Option<mpsc::Receiver<Piece>>)>>,
    rest: Option<mpsc::Sender<Piece>>,
}

/// The client connection's end of a [`Reply`].
#[derive(Debug)]
pub(crate) struct Replies {
    first: Option<oneshot::Receiver<(Piece, Option<mpsc::Receiver<Piece>>)>>,
    rest: Option<mpsc::Receiver<Piece>>,
}

/// The two ends of one request's response.
pub(crate) fn reply() -> (Reply, Replies) {
    let (tx, rx) = oneshot::channel();
    (
        Reply {
            first: Some(tx),
            rest: None,
        },
        Replies {
            first: Some(rx),
            rest: None,
        },
    )
}

impl Reply {
    /// Hands `piece` over if the client connection has room for it; gives it back if it
    /// has not (it holds [`PIECES`] already). A piece for a connection that is gone is
    /// dropped.
    fn try_send(&mut self, piece: Piece) -> Option<Piece> {
        if let Some(first) = self.first.take() {
            let rest = piece.more().then(|| {
                let (tx, rx) = mpsc::channel(PIECES);
                self.rest = Some(tx);
                rx
            });
            let _ = first.send((piece, rest));
            return None;
        }
        match self.rest.as_ref()?.try_send(piece) {
            Err(mpsc::error::TrySendError::Full(piece)) => Some(piece),
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }

    /// Sends a piece [`Reply::try_send`] found no room for, once there is.
    async fn send(&self, piece: Piece) {
        if let Some(rest) = &self.rest {
            let _ = rest.send(piece).await;
        }
    }
}

impl Replies {
    /// The next piece; `None` when the pipe let the request go without a word (its task
    /// ended), which the caller takes as [`Piece::Unanswered`] before the head.
    pub(crate) async fn recv(&mut self) -> Option<Piece> {
        if let Some(first) = self.first.take() {
            let (piece, rest) = first.await.ok()?;
            self.rest = rest;
            return Some(piece);
        }
        self.rest.as_mut()?.recv().await
    }
}

/// What a pipe sends back for a request.
#[derive(Debug)]
pub(crate) enum Piece {
    /// An interim (1xx) response: its parsed head and the bytes it was parsed from.
    Interim(ResponseHead, Bytes),
    /// The final response's head, the bytes it was parsed from, and what of its body came
    /// with it (often all: a response costs its client connection one wake-up), and
    /// whether that is the whole body.
    Head(ResponseHead, Bytes, Bytes, bool),
    /// Body bytes, and whether the body is complete.
    Data(Bytes, bool),
    /// The connection ended before any byte of this response: the request may be sent
    /// again (it is idempotent and has no body).
    Unanswered,
    /// The upstream broke the exchange after the response began, or sent a head the
    /// daemon refuses.
    Failed(&'static str),
}

impl Piece {
    /// Whether pieces follow this one.
    fn more(&self) -> bool {
        matches!(
            self,
            Piece::Interim(..) | Piece::Head(.., false) | Piece::Data(_, false)
        )
    }
}

/// A pipelined upstream connection, as the pool sees it. Dropping it (the pool lets an
/// idle one go) ends its task once the requests it holds are answered.
#[derive(Debug)]
pub(crate) struct Pipe {
    tx: mpsc::UnboundedSender<Job>,
    count: Arc<Count>,
}

/// What the pool and the pipe's task both see.
#[derive(Debug, Default)]
struct Count {
    /// Requests handed to the pipe (or about to be) and not yet answered.
    in_flight: AtomicUsize,
    closed: AtomicBool,
}

impl Pipe {
    /// Starts a pipe on the connection `conn` will give (a pooled or a new one): the
    /// pipe takes requests at once, and sends them when the connection is there.
    pub(crate) fn start(
        conn: impl Future<Output = std::io::Result<UpConn>> + Send + 'static,
    ) -> Pipe {
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(Count::default());
        let task_count = count.clone();
        tokio::spawn(async move {
            let line = Line {
                waiting: VecDeque::new(),
                rx,
                count: &task_count,
                released: false,
            };
            match conn.await {
                Ok(c) => drive(c, line).await,
                // The requests go again on connections of their own, which report why.
                Err(_) => line.end(None),
            }
        });
        Pipe { tx, count }
    }

    /// Takes a place for one more request if fewer than `depth` are in flight.
    pub(crate) fn reserve(&self, depth: usize) -> bool {
        !self.closed()
            && self
                .count
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < depth).then_some(n + 1)
                })
                .is_ok()
    }

    /// The pipe's connection has ended; it takes no more requests.
    pub(crate) fn closed(&self) -> bool {
        self.count.closed.load(Ordering::Acquire)
    }

    /// Whether no request is in flight.
    pub(crate) fn idle(&self) -> bool {
        self.count.in_flight.load(Ordering::Acquire) == 0
    }

    /// Hands a request to the pipe (after [`Pipe::reserve`]); `Err` when the pipe has
    /// ended, and the request is to go elsewhere.
    pub(crate) fn send(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

/// Reads responses back at most this far ahead of the one being relayed.
const READ_LIMIT: usize = relay::MAX_RESPONSE_HEAD + 1;

/// The requests a pipe holds, in the order of their responses, and where more come from.
struct Line<'a> {
    waiting: VecDeque<(Reply, bool)>,
    rx: mpsc::UnboundedReceiver<Job>,
    count: &'a Count,
    /// The requests behind the front one have left the pipe ([`Line::release`]).
    released: bool,
}

impl Line<'_> {
    /// Takes the requests handed over so far, their heads appended to `c`'s output.
    fn take(&mut self, c: &mut UpConn) {
        while let Ok(job) = self.rx.try_recv() {
            self.add(c, job);
        }
    }

    fn add(&mut self, c: &mut UpConn, job: Job) {
        c.room().extend_from_slice(&job.head);
        self.waiting.push_back((job.reply, job.head_method));
    }

    /// Hands `piece` to the front request's client connection. One that cannot take it at
    /// once must not hold up the requests behind it: they leave the pipe first.
    async fn hand(&mut self, piece: Piece) {
        let Some((reply, _)) = self.waiting.front_mut() else {
            return;
        };
        if let Some(piece) = reply.try_send(piece) {
            self.release();
            if let Some((reply, _)) = self.waiting.front() {
                reply.send(piece).await;
            }
        }
    }

    /// The requests behind the front one go again on connections of their own (they are
    /// idempotent and have no body), and the pipe takes no more: it ends after the front
    /// request's response.
    fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.send_back(1);
        }
    }

    /// Closes the pipe to new requests, and tells every request from the `keep`th on,
    /// those handed over meanwhile included, that it was not answered and may go again.
    fn send_back(&mut self, keep: usize) {
        self.count.closed.store(true, Ordering::Release);
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            self.waiting.push_back((job.reply, job.head_method));
        }
        for (mut reply, _) in self.waiting.drain(keep.min(self.waiting.len())..) {
            let _ = reply.try_send(Piece::Unanswered);
            self.count.answered();
        }
    }

    /// Ends the pipe: the front request fails with `why`, if given; every other one it
    /// holds, or is yet to be handed, was not answered and may go again.
    fn end(mut self, why: Option<&'static str>) {
        if let Some(why) = why
            && let Some((mut reply, _)) = self.waiting.pop_front()
        {
            let _ = reply.try_send(Piece::Failed(why));
            self.count.answered();
        }
        self.send_back(0);
    }

    /// The front request is answered.
    fn answered(&mut self) {
        self.waiting.pop_front();
        self.count.answered();
    }
}

/// The pipe's task: writes requests as they come, reads responses in order.
async fn drive(mut c: UpConn, mut line: Line<'_>) {
    let mut open = true;
    let end = 'serve: loop {
        line.take(&mut c);
        c.push();
        if line.waiting.is_empty() {
            if !open || line.released {
                break 'serve None;
            }
            tokio::select! {
                job = line.rx.recv() => match job {
                    Some(job) => {
                        line.add(&mut c, job);
                        continue;
                    }
                    None => break 'serve None,
                },
                // Idle: the upstream closed the connection, or sent what no one asked.
                _ = c.io.ready(false) => break 'serve None,
            }
        }
        // The front request's response, and those after it already read.
        while let Some(&(_, head_method)) = line.waiting.front() {
            let h = match relay::parse_response(&c.rd, head_method, &mut c.spare) {
                Ok(None) => break,
                Ok(Some(h)) if h.status == 101 => {
                    break 'serve Some("101 to a request without Upgrade");
                }
                Ok(Some(h)) => h,
                Err(e) => break 'serve Some(e.0),
            };
            let bytes = c.rd.split_to(h.len).freeze();
            if h.status < 200 {
                line.hand(Piece::Interim(h, bytes)).await;
                continue;
            }
            let mut delimit = h.delimit.clone();
            let close = h.close;
            let (data, done) = match relay::take_body(&mut delimit, &mut c.rd, usize::MAX) {
                Ok(first) => first,
                Err(e) => break 'serve Some(e),
            };
            line.hand(Piece::Head(h, bytes, data, done)).await;
            if !done && let Err(last) = rest_of_body(&mut c, &mut line, &mut delimit).await {
                line.hand(last).await;
                line.answered();
                c.rd.clear();
                break 'serve None;
            }
            line.answered();
            if close || line.released {
                break 'serve None;
            }
        }
        if line.waiting.is_empty() {
            continue;
        }
        tokio::select! {
            biased;
            r = c.io.ready(c.pending() > 0) => {
                match r.and_then(|()| c.turn(READ_LIMIT, false)) {
                    Ok(Turn::Moved) => {}
                    Ok(Turn::Eof) | Err(_) => break 'serve None,
                }
            }
            job = line.rx.recv(), if open && !line.released => match job {
                Some(job) => line.add(&mut c, job),
                None => open = false,
            },
        }
    };
    // The front request failed if its response was refused or had begun.
    line.end(end.or((!c.rd.is_empty()).then_some("closed before a whole response")));
}

/// Hands the rest of the front response's body to its client connection, as it comes.
/// `Err` when the body ends with the connection, which then carries no more responses:
/// the last piece to hand (the end of a body delimited by the close, or the failure).
async fn rest_of_body(
    c: &mut UpConn,
    line: &mut Line<'_>,
    delimit: &mut Delimit,
) -> Result<(), Piece> {
    loop {
        let (data, done) =
            relay::take_body(delimit, &mut c.rd, usize::MAX).map_err(Piece::Failed)?;
        let took = !data.is_empty();
        if took || done {
            line.hand(Piece::Data(data, done)).await;
        }
        if done {
            return Ok(());
        }
        // Taken some and more is there: take again; else read.
        if took && !c.rd.is_empty() {
            continue;
        }
        let r = c.io.ready(c.pending() > 0).await;
        match r.and_then(|()| c.turn(usize::MAX, true)) {
            Ok(Turn::Moved) => {}
            Ok(Turn::Eof) if *delimit == Delimit::Close => {
                return Err(Piece::Data(Bytes::new(), true));
            }
            Ok(Turn::Eof) => return Err(Piece::Failed("upstream closed mid-body")),
            Err(_) => return Err(Piece::Failed("upstream failed mid-body")),
        }
    }
}

impl Count {
    fn answered(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
