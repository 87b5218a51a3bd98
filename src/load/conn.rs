//! One connection of the generator: a task that opens its TCP connection on its first
//! request, then serves one request at a time over HTTP/1.1 keep-alive. Back from each
//! response it takes the next request whose time has come itself, from its thread's
//! [`Lane`]; when there is none it parks there until the dispatcher hands it one at its
//! time. It ends when the server closes the connection, something fails, or the plan is
//! over.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::parse::{self, Framing};
use super::plan::Lane;
use super::record::{Outcome, Recorder};

/// One request for a connection: when it was meant to leave, and the second it counts in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job {
    pub(crate) intended: Instant,
    pub(crate) second: usize,
}

impl Job {
    /// The request meant to leave `at` after `start`.
    pub(crate) fn new(start: Instant, at: Duration) -> Job {
        Job {
            intended: start + at,
            second: at.as_secs() as usize,
        }
    }
}

/// A parked connection's handle: `Some(job)` to serve, `None` to end.
pub(crate) type Handle = mpsc::UnboundedSender<Option<Job>>;

/// What a thread's connections and its dispatcher share.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The request, written as is for every request.
    pub(crate) request: Vec<u8>,
    pub(crate) timeout: Duration,
    pub(crate) recorder: Arc<Recorder>,
    /// Where the intended times count from.
    pub(crate) start: Instant,
    pub(crate) lane: Mutex<Lane<Handle>>,
    /// Told each time a connection closes, for the end of the run.
    pub(crate) closed: Notify,
}

impl Target {
    /// The lane, locked (never across an await: one thread, and short sections).
    pub(crate) fn lane(&self) -> MutexGuard<'_, Lane<Handle>> {
        self.lane.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lane().closed();
        self.closed.notify_one();
    }
}

/// Why an exchange failed.
enum Failed {
    Reset,
    Error,
}

/// Runs one connection, starting with `first`.
pub(crate) async fn run(target: Arc<Target>, first: Job) {
    let mut stream: Option<TcpStream> = None;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // One channel for the connection's life, for when it is parked.
    let (tx, mut rx) = mpsc::unbounded_channel();
    // One timer for the connection's life, for every exchange's timeout. Re-arming a
    // timer per exchange costs more than the exchange's own work at high rates; each
    // exchange's deadline is later than the last one's, so the timer is left where it is
    // and, should it fire before the current deadline, moved on then.
    let timer = tokio::time::sleep(target.timeout);
    tokio::pin!(timer);
    let mut job = first;
    loop {
        let deadline = Instant::now() + target.timeout;
        let exchange = exchange(&target, &mut stream, &mut buf);
        tokio::pin!(exchange);
        let ended = loop {
            tokio::select! {
                biased;
                r = &mut exchange => break Some(r),
                () = &mut timer => {
                    if timer.deadline() >= deadline {
                        break None;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        };
        let (outcome, keep) = match ended {
            Some(Ok((status, retry_after, close))) => {
                (Outcome::Status(status, retry_after), !close)
            }
            Some(Err(Failed::Reset)) => (Outcome::Reset, false),
            Some(Err(Failed::Error)) => (Outcome::Error, false),
            None => (Outcome::Timeout, false),
        };
        let now = Instant::now();
        target.recorder.ended(
            job.second,
            outcome,
            now.saturating_duration_since(job.intended),
        );
        if !keep {
            target.close();
            return;
        }
        let next = {
            let mut lane = target.lane();
            match lane.claim(now.saturating_duration_since(target.start)) {
                Some(at) => Ok(Job::new(target.start, at)),
                None if lane.over() => Err(true),
                None => {
                    lane.park(tx.clone());
                    Err(false)
                }
            }
        };
        job = match next {
            Ok(job) => job,
            Err(true) => {
                target.close();
                return;
            }
            // Parked, counted among the pool's idle ones until handed a job or told to
            // end (then counted closed by whoever told it).
            Err(false) => match rx.recv().await {
                Some(Some(job)) => job,
                Some(None) | None => return,
            },
        };
    }
}

/// One request and its response: the status, whether `Retry-After` came with it, and
/// whether the connection closes after it.
async fn exchange(
    target: &Target,
    stream: &mut Option<TcpStream>,
    buf: &mut BytesMut,
) -> Result<(u16, bool, bool), Failed> {
    let s = match stream {
        Some(s) => s,
        None => {
            let s = TcpStream::connect(target.addr)
                .await
                .map_err(|_| Failed::Error)?;
            let _ = s.set_nodelay(true);
            stream.insert(s)
        }
    };
    buf.clear();
    s.write_all(&target.request)
        .await
        .map_err(|_| Failed::Reset)?;
    let head = loop {
        match parse::head(buf) {
            // An interim response (100 Continue) is followed by the real one.
            Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                buf.advance(h.len);
                continue;
            }
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(_) => return Err(Failed::Error),
        }
        read_more(s, buf).await?;
    };
    buf.advance(head.len);
    match head.framing {
        Framing::Empty => {}
        Framing::Length(mut left) => loop {
            let take = left.min(buf.len() as u64);
            buf.advance(take as usize);
            left -= take;
            if left == 0 {
                break;
            }
            read_more(s, buf).await?;
        },
        Framing::Chunked => {
            let mut chunked = parse::Chunked::default();
            while !chunked.advance(buf).map_err(|_| Failed::Error)? {
                read_more(s, buf).await?;
            }
        }
        Framing::UntilClose => loop {
            buf.clear();
            match s.read_buf(buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return Err(Failed::Reset),
            }
        },
    }
    // Bytes past the response, when nothing was asked for, are not HTTP/1.1.
    if !head.close && !buf.is_empty() {
        return Err(Failed::Error);
    }
    Ok((head.status, head.retry_after, head.close))
}

/// Reads more of the response; a close or reset before it is whole is a reset.
async fn read_more(s: &mut TcpStream, buf: &mut BytesMut) -> Result<(), Failed> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    match s.read_buf(buf).await {
        Ok(0) | Err(_) => Err(Failed::Reset),
        Ok(_) => Ok(()),
    }
}
