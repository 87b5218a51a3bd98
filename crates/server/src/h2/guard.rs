//! A watch on the frames a client sends, for the floods the framing layer answers without
//! limit: it reads only the 9-byte frame headers as the bytes pass to the `h2` crate, and
//! counts the frames that cost the daemon work but carry no request.
//!
//! - PING and SETTINGS (not acknowledgements): each makes the daemon answer. A client may
//!   send [`CONTROL_BURST`] at once and [`CONTROL_RATE`] a second after that.
//! - RST_STREAM: each cancels a request the daemon has begun (CVE-2023-44487, "rapid
//!   reset"). A client may cancel [`RESET_BURST`] at once and [`RESET_RATE`] a second.
//!
//! Past either budget the watch trips: it passes no more bytes, and the connection answers
//! with GOAWAY `ENHANCE_YOUR_CALM` and closes. Everything else (a header block's size, the
//! number of CONTINUATION frames, DATA frames without payload, resets of streams not yet
//! accepted, the streams open at once) is bounded by the `h2` crate's own settings, set in
//! [`super`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// PING and SETTINGS frames a client may send at once.
pub(crate) const CONTROL_BURST: f64 = 100.0;
/// PING and SETTINGS frames a second a client may send past the burst.
pub(crate) const CONTROL_RATE: f64 = 10.0;
/// RST_STREAM frames a client may send at once.
pub(crate) const RESET_BURST: f64 = 200.0;
/// RST_STREAM frames a second a client may send past the burst.
pub(crate) const RESET_RATE: f64 = 20.0;

/// The client connection preface, which comes before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;

const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const ACK: u8 = 1;

/// Why a watch tripped, and the wake-up of the connection that answers it.
#[derive(Debug, Default)]
pub(crate) struct Alarm {
    tripped: AtomicBool,
    rung: Notify,
    /// What tripped it, for the log.
    what: std::sync::Mutex<&'static str>,
}

impl Alarm {
    /// Returns once the watch has tripped, with what tripped it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn tripped(&self) -> &'static str {
        loop {
            let rung = self.rung.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            if self.tripped.load(Ordering::Acquire) {
                return *self.what.lock().unwrap_or_else(|e| e.into_inner());
            }
            rung.await;
        }
    }

    fn trip(&self, what: &'static str) {
        *self.what.lock().unwrap_or_else(|e| e.into_inner()) = what;
        self.tripped.store(true, Ordering::Release);
        self.rung.notify_waiters();
    }

    fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }
}

/// A token bucket: `burst` at once, refilled at `rate` a second.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn new(burst: f64, rate: f64) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            rate,
            at: Instant::now(),
        }
    }

    /// Takes one token; false when none is left.
    fn take(&mut self) -> bool {
        if self.tokens < 1.0 {
            let now = Instant::now();
            let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
            self.at = now;
        }
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The client's socket, watched.
#[derive(Debug)]
pub(crate) struct Guard<I> {
    io: I,
    alarm: Arc<Alarm>,
    /// Bytes still to pass before the next frame header: the preface, then each payload.
    skip: usize,
    header: [u8; FRAME_HEADER],
    have: usize,
    control: Bucket,
    resets: Bucket,
}

impl<I> Guard<I> {
    pub(crate) fn new(io: I) -> Guard<I> {
        Guard {
            io,
            alarm: Arc::default(),
            skip: PREFACE_LEN,
            header: [0; FRAME_HEADER],
            have: 0,
            control: Bucket::new(CONTROL_BURST, CONTROL_RATE),
            resets: Bucket::new(RESET_BURST, RESET_RATE),
        }
    }

    pub(crate) fn alarm(&self) -> Arc<Alarm> {
        self.alarm.clone()
    }

    /// Follows the frames through `bytes`, just read.
    fn watch(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < FRAME_HEADER {
                return;
            }
            self.have = 0;
            let h = self.header;
            self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let over = match kind {
                PING | SETTINGS if flags & ACK == 0 => {
                    (!self.control.take()).then_some("a PING or SETTINGS flood")
                }
                RST_STREAM => (!self.resets.take()).then_some("a rapid reset of streams"),
                _ => None,
            };
            if let Some(what) = over {
                self.alarm.trip(what);
                return;
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.alarm.is_tripped() {
            // Nothing more from this client: the connection is sending GOAWAY and closing.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let this = &mut *self;
            this.watch(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(FRAME_HEADER + len, 0);
        f
    }

    #[test]
    fn frames_are_followed_across_reads_and_floods_trip_it() {
        let mut g = Guard::new(());
        let mut bytes = vec![b'P'; PREFACE_LEN];
        // Data whose payload looks like PING headers is not counted.
        for _ in 0..50 {
            bytes.extend(frame(0, 0, 9 * 20));
        }
        for _ in 0..(CONTROL_BURST as usize - 1) {
            bytes.extend(frame(PING, 0, 8));
            bytes.extend(frame(PING, ACK, 8));
        }
        // A byte at a time: the headers are put together across reads.
        for b in &bytes {
            g.watch(std::slice::from_ref(b));
        }
        assert!(!g.alarm.is_tripped());
        g.watch(&frame(SETTINGS, 0, 0));
        assert!(!g.alarm.is_tripped());
        g.watch(&frame(SETTINGS, 0, 6));
        assert!(g.alarm.is_tripped());
    }

    #[test]
    fn resets_have_their_own_budget() {
        let mut g = Guard::new(());
        g.watch(&[0; PREFACE_LEN]);
        for _ in 0..RESET_BURST as usize {
            g.watch(&frame(RST_STREAM, 0, 4));
        }
        assert!(!g.alarm.is_tripped());
        g.watch(&frame(RST_STREAM, 0, 4));
        assert!(g.alarm.is_tripped());
    }
}
