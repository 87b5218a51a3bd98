//! One connection of the generator: a task that opens its TCP connection on its first
//! request, then serves one request at a time over HTTP/1.1 keep-alive, handed to it by the
//! dispatcher, and hands itself back after each response, until the server closes the
//! connection, something fails, or the dispatcher says the run is over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::parse::{self, Framing};
use super::record::{Outcome, Recorder};

/// One request for a connection: when it was meant to leave, and the second it counts in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job {
    pub(crate) intended: Instant,
    pub(crate) second: usize,
}

/// A connection's handle: `Some(job)` to serve, `None` to end.
pub(crate) type Handle = mpsc::UnboundedSender<Option<Job>>;

/// What a connection tells the dispatcher after a request.
#[derive(Debug)]
pub(crate) enum Back {
    /// Ready for another request.
    Idle(Handle),
    /// Gone.
    Closed,
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The request, written as is for every request.
    pub(crate) request: Vec<u8>,
    pub(crate) timeout: Duration,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) back: mpsc::UnboundedSender<Back>,
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
    // One channel for the connection's life; the dispatcher ends it with `None`.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut job = first;
    loop {
        let exchange = exchange(&target, &mut stream, &mut buf);
        let (outcome, keep) = match tokio::time::timeout(target.timeout, exchange).await {
            Ok(Ok((status, retry_after, close))) => (Outcome::Status(status, retry_after), !close),
            Ok(Err(Failed::Reset)) => (Outcome::Reset, false),
            Ok(Err(Failed::Error)) => (Outcome::Error, false),
            Err(_) => (Outcome::Timeout, false),
        };
        target
            .recorder
            .ended(job.second, outcome, job.intended.elapsed());
        if !keep {
            let _ = target.back.send(Back::Closed);
            return;
        }
        if target.back.send(Back::Idle(tx.clone())).is_err() {
            return;
        }
        job = match rx.recv().await {
            Some(Some(job)) => job,
            Some(None) | None => return,
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
