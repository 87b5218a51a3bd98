//! HTTP/2, over TLS only (chosen by ALPN; no cleartext h2c, spec §11): one task per
//! connection, driving the `h2` crate's framing, and one task per stream.
//!
//! Each stream is a request that goes the way an HTTP/1 request goes: its head, rebuilt as
//! an HTTP/1.1 head, is held to the same limits by the same parser, routed by the same
//! table, admitted by the same queue, handed to the same worker wire or upstream (see
//! [`stream`]), and refused with the same pages and error-log lines. What differs is that a
//! refusal ends the stream, not the connection.
//!
//! This module owns the connection: the `h2` settings that bound what a client may make
//! the daemon hold ([`MAX_STREAMS`], the windows, the header list), the watch on floods
//! ([`guard`]), the idle and header timers of a connection with no request in hand, the
//! connection's count against each queue its streams go to, and GOAWAY when the daemon
//! stops. It must not take the daemon's lock, nor touch the worker wire's bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use portshare_router::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::conn::tls_info::TlsInfo;
use crate::errlog::Entry;
use crate::queue::{Counted, Queue};
use crate::shared::{Settings, Shared};

mod guard;
mod head;
mod stream;

/// Streams a client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`): more are
/// refused with `REFUSED_STREAM` by the framing layer, never queued.
pub(crate) const MAX_STREAMS: u32 = 100;

/// The window a stream's request body starts with. A body's bytes are acknowledged (the
/// window opened again) as the worker's own window lets them go on to it, so a client can
/// be ahead of its application by at most this much per stream.
pub(crate) const STREAM_WINDOW: u32 = 64 * 1024;

/// The window of the whole connection, for all its request bodies together.
pub(crate) const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Response bytes the framing layer may hold for one stream before its sender waits.
pub(crate) const SEND_BUFFER: usize = 64 * 1024;

/// Streams the daemon may reset (for a client's protocol errors) on one connection before
/// it answers with GOAWAY `ENHANCE_YOUR_CALM`.
pub(crate) const LOCAL_RESETS: usize = 128;

/// Streams reset by the client before the daemon took them, kept until taken; past this the
/// connection gets GOAWAY `ENHANCE_YOUR_CALM`.
pub(crate) const PENDING_RESETS: usize = 20;

/// How long a connection that is answered with GOAWAY for a flood is given to take it.
const PARTING: Duration = Duration::from_secs(1);

/// What every stream of a connection shares.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) peer_text: String,
    pub(crate) local_text: String,
    pub(crate) tls: TlsInfo,
    /// The queues the connection's streams went to, each counting the connection against
    /// its connection limit while the connection lives.
    sites: Mutex<Vec<Counted>>,
}

impl Link {
    /// Counts the connection against `queue`, if it is not yet: false when the queue's
    /// connection limit is reached.
    pub(crate) fn count(&self, queue: &Arc<Queue>) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        if sites.iter().any(|c| Arc::ptr_eq(c.queue(), queue)) {
            return true;
        }
        match queue.count_connection() {
            Some(counted) => {
                sites.push(counted);
                true
            }
            None => false,
        }
    }

    /// Writes an error-log line of this connection; `request` is the version, method and
    /// target of the request it is about, if any.
    pub(crate) fn log(
        &self,
        settings: &Settings,
        request: Option<(&[u8], &[u8])>,
        status: Option<u16>,
        reason: Reason,
        queue: Option<&str>,
    ) {
        Entry {
            client: self.peer,
            local: self.local,
            version: request.map(|_| "HTTP/2.0"),
            method: request.map(|r| r.0),
            uri: request.map(|r| r.1),
            status,
            reason,
            queue,
        }
        .emit(&settings.errlog);
    }
}

/// The framing layer's settings for a connection under `settings`.
fn builder(settings: &Settings) -> h2::server::Builder {
    // A header list is measured by HPACK's rule (each field 32 bytes more than its name and
    // value). Lists up to twice MaxRequestBytes by that measure reach the daemon, which holds
    // them to MaxRequestBytes as HTTP/1 heads are held (400 RequestLength); larger ones are
    // answered 431 by the framing layer, and those four times larger close the connection.
    let list = settings
        .head_limits
        .request_bytes()
        .saturating_mul(2)
        .min(u32::MAX as usize) as u32;
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(list)
        .max_send_buffer_size(SEND_BUFFER)
        .max_local_error_reset_streams(Some(LOCAL_RESETS))
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_concurrent_reset_streams(MAX_STREAMS as usize * 2);
    b
}

/// Serves an HTTP/2 connection (TLS established, ALPN `h2`) until it closes.
pub(crate) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    local: SocketAddr,
    tls: TlsInfo,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = shared.settings.load_full();
    let timers = settings.timers;
    let io = guard::Guard::new(io);
    let alarm = io.alarm();
    let link = Arc::new(Link {
        shared,
        peer,
        local,
        peer_text: peer.to_string(),
        local_text: local.to_string(),
        tls,
        sites: Mutex::new(Vec::new()),
    });
    // The preface and the first SETTINGS come within HeaderWait, as a first request head.
    let handshake = builder(&settings).handshake::<_, Bytes>(io);
    let mut conn = match timeout_at(timers.header_wait.fires_at(Instant::now()), handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "h2 handshake failed");
            return;
        }
        Err(_) => {
            link.log(&settings, None, None, Reason::TimerHeaderWait, None);
            return;
        }
    };
    let mut streams = JoinSet::new();
    // With no request in hand the connection is idle: HeaderWait until its first request,
    // IdleConnection after the last (logged as HTTP/1 logs them). A header block that never
    // ends is no request in hand: it is cut by the same timer.
    let mut idle_since = Instant::now();
    let mut first = true;
    let mut closing = false;
    // Once GOAWAY is sent, how long the connection may still take to end.
    let mut closing_until: Option<Instant> = None;
    loop {
        let idle_until = (streams.is_empty() && !closing).then(|| {
            let timer = if first {
                timers.header_wait
            } else {
                timers.idle_connection
            };
            timer.fires_at(idle_since)
        });
        let stop = link.shared.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if link.shared.stopping() && !closing {
            // GOAWAY: no new streams; those open finish within the shutdown timer.
            conn.graceful_shutdown();
            closing = true;
            closing_until = Some(Instant::now() + timers.shutdown.duration());
        }
        let wake = idle_until.or(closing_until);
        tokio::select! {
            biased;
            what = alarm.tripped() => {
                tracing::debug!(client = %peer, what, "h2 connection closed: {what}");
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                let _ = timeout(PARTING, std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
                return;
            }
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    first = false;
                    streams.spawn(stream::serve(link.clone(), req, respond));
                }
                Some(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "h2 connection failed");
                    return;
                }
                None => return,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle_since = Instant::now();
                }
            }
            () = &mut stop, if !closing => {}
            () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                if closing {
                    return;
                }
                let reason = if first {
                    Reason::TimerHeaderWait
                } else {
                    Reason::TimerConnectionIdle
                };
                link.log(&settings, None, None, reason, None);
                conn.graceful_shutdown();
                closing = true;
                closing_until = Some(Instant::now() + PARTING * 5);
            }
        }
    }
}

#[cfg(test)]
mod tests;
