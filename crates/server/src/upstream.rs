//! Upstream queues: requests forwarded to an unmodified HTTP/1.1 server on a Unix socket or
//! a TCP port, over a pool of keep-alive connections (one per queue slot). Every new
//! connection of a queue an ordinary account made is checked by [`crate::owner`] before a
//! byte is sent on it.
//!
//! All upstream connections together stay within the descriptor budget's upstream
//! [`Share`]: a request that needs a new connection when the share is spent is answered 503,
//! and once the share is three quarters used, a connection that falls idle is closed
//! instead of kept, so that idle pools do not hold descriptors other queues need. The
//! queues one ordinary account made hold at most a quarter of the share together, so no
//! account's upstreams (slow, or keeping every connection busy) can take the places the
//! other accounts' need; root's and the configuration's queues count in the share alone.

use std::collections::HashMap;
use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Where an upstream queue forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:/path`.
    Unix(PathBuf),
    /// A loopback `IP:port`.
    Tcp(SocketAddr),
}

impl Address {
    /// Parses `unix:/path` or `IP:port`.
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err("a unix: upstream needs an absolute path".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| "expected unix:/path or IP:port (such as 127.0.0.1:8080)".to_string())?;
        if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
            return Err(format!(
                "{addr} is no server's address: expected a loopback IP (or, from root, another \
                 host's) and a port"
            ));
        }
        Ok(Address::Tcp(addr))
    }

    /// Whether the daemon can tell who serves this address (its owner check): a Unix
    /// socket or a loopback port. Only these may be an ordinary account's upstream.
    pub fn provable(&self) -> bool {
        match self {
            Address::Unix(_) => true,
            Address::Tcp(a) => a.ip().is_loopback(),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// An upstream server and its idle connections.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) address: Address,
    /// The upstream gets targets without the registration's path prefix.
    pub(crate) strip_prefix: bool,
    /// The account every new connection's server must run as ([`crate::owner`]); `None`
    /// for queues root or the configuration file made, which may point anywhere.
    owner: Option<u32>,
    /// Why the last new connection was refused for its owner, until one passes again.
    refused: Mutex<Option<String>>,
    idle: Mutex<Vec<UpConn>>,
    /// Requests without a body that may wait on one connection (1: no pipelining).
    pub(crate) pipeline: usize,
    /// The pipelined connections, when `pipeline` > 1.
    pipes: Mutex<Vec<Arc<crate::pipeline::Pipe>>>,
    /// Failures are logged at most once every 10 s: the account decides how often its
    /// upstream fails.
    warn: crate::accept::Throttle,
}

impl Upstream {
    pub(crate) fn new(
        address: Address,
        strip_prefix: bool,
        owner: Option<u32>,
        pipeline: usize,
    ) -> Upstream {
        Upstream {
            address,
            strip_prefix,
            owner,
            refused: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            pipeline: pipeline.max(1),
            pipes: Mutex::new(Vec::new()),
            warn: crate::accept::Throttle::default(),
        }
    }

    /// Why new connections are refused now (see [`crate::owner`]), for the state view.
    pub(crate) fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new connection to the upstream, its server checked against the queue owner. Every
    /// new connection is checked: a port can change hands.
    async fn open(&self) -> io::Result<UpIo> {
        let stream = match &self.address {
            Address::Unix(p) => UpIo::Unix(UnixStream::connect(p).await?),
            Address::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                UpIo::Tcp(s)
            }
        };
        let Some(owner) = self.owner else {
            return Ok(stream);
        };
        let verdict = match &stream {
            UpIo::Unix(s) => crate::owner::check_unix(s, owner).await,
            UpIo::Tcp(s) => crate::owner::check_tcp(s, owner).await,
        };
        self.judged(&verdict);
        verdict.map(|()| stream)
    }

    /// Logs a failure of this upstream for a request of `queue`, unless one was logged in
    /// the last 10 s; the next line says how many were held back.
    pub(crate) fn warn_failed(&self, queue: &str, error: &dyn std::fmt::Display) {
        if let Some(held_back) = self.warn.pass() {
            tracing::warn!(queue, upstream = %self.address, error = %error, held_back, "upstream failed");
        }
    }

    /// Keeps the mark of the state view, and logs when it changes.
    fn judged(&self, verdict: &io::Result<()>) {
        let now = verdict
            .as_ref()
            .err()
            .and_then(crate::owner::not_owner)
            .map(ToString::to_string);
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if *refused == now {
            return;
        }
        match &now {
            Some(why) => {
                tracing::warn!(upstream = %self.address, why = %why, "upstream refused: not the queue owner's")
            }
            None => {
                tracing::info!(upstream = %self.address, "upstream served by its queue owner again")
            }
        }
        *refused = now;
    }

    /// An idle connection that has not been closed meanwhile, or a new one out of `share`.
    pub(crate) async fn connection(&self, share: &Arc<Share>) -> io::Result<UpConn> {
        if share.low() {
            // Idle connections the upstream has closed still hold their places: let them go.
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(UpConn::still_open);
        }
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(mut c) => {
                    if c.still_open() {
                        c.reused = true;
                        return Ok(c);
                    }
                }
                None => break,
            }
        }
        self.connect(share).await
    }

    /// A place on a pipelined connection ([`crate::pipeline`]): the first one with room
    /// for one more request, else a new one, which connects while it takes requests. When
    /// upstream connections run short, idle pipes are let go.
    pub(crate) fn pipe(self: &Arc<Self>, share: &Arc<Share>) -> Arc<crate::pipeline::Pipe> {
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        let low = share.low();
        // Ended pipes go, and idle ones too when connections run short.
        pipes.retain(|p| !(p.closed() || low && p.idle()));
        if let Some(p) = pipes.iter().find(|p| p.reserve(self.pipeline)) {
            return p.clone();
        }
        let (up, share) = (self.clone(), share.clone());
        let p = Arc::new(crate::pipeline::Pipe::start(async move {
            up.connection(&share).await
        }));
        p.reserve(self.pipeline);
        pipes.push(p.clone());
        p
    }

    /// Opens a new connection out of `share`: the one place where the daemon connects to
    /// an upstream. The stream comes back before any byte is written on it.
    pub(crate) async fn connect(&self, share: &Arc<Share>) -> io::Result<UpConn> {
        let counted = share.take(self.owner).map_err(io::Error::other)?;
        let io = self.open().await?;
        Ok(UpConn {
            io,
            rd: BytesMut::new(),
            wr: Vec::new(),
            sent: 0,
            reused: false,
            spare: Default::default(),
            broken: false,
            _counted: counted,
        })
    }

    /// Gives a connection back for the next request; closes it instead when `share` runs
    /// low.
    pub(crate) fn put_back(&self, mut c: UpConn, share: &Share) {
        if !share.low() && !c.broken {
            // Buffers a large body grew are let go: an idle connection holds little.
            const KEEP: usize = 16 * 1024;
            if c.wr.capacity() > KEEP {
                c.wr = Vec::new();
            }
            if c.rd.is_empty() && c.rd.capacity() > 2 * KEEP {
                c.rd = BytesMut::new();
            }
            c.wr.clear();
            c.sent = 0;
            c.reused = false;
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }
}

/// The byte stream to an upstream server.
#[derive(Debug)]
pub(crate) enum UpIo {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl UpIo {
    /// Waits until the stream is readable, or writable too when `write`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn ready(&self, write: bool) -> io::Result<()> {
        let interest = if write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self {
            UpIo::Tcp(s) => s.ready(interest).await.map(drop),
            UpIo::Unix(s) => s.ready(interest).await.map(drop),
        }
    }

    /// Reads what is there into `buf`'s spare room, without waiting. A read that leaves
    /// room unfilled drained the socket: the runtime is told so (as tokio's own `poll_read`
    /// does after a short read), and the next read waits for the socket to be readable
    /// instead of costing a system call that finds nothing.
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let start = buf.len();
        if buf.capacity() == start {
            buf.reserve(READ_AHEAD);
        }
        buf.resize(buf.capacity(), 0);
        let mut got = 0;
        let r = match self {
            UpIo::Tcp(s) => s.try_io(Interest::READABLE, || {
                read_short(socket2::SockRef::from(s), &mut buf[start..], &mut got)
            }),
            UpIo::Unix(s) => s.try_io(Interest::READABLE, || {
                read_short(socket2::SockRef::from(s), &mut buf[start..], &mut got)
            }),
        };
        buf.truncate(start + got);
        match r {
            Ok(()) => Ok(got),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            Err(e) => Err(e),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            UpIo::Tcp(s) => s.try_write(buf),
            UpIo::Unix(s) => s.try_write(buf),
        }
    }
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpIo::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpIo::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One read of `sock` into `buf`, its length in `got`; a read that filled part of `buf` is
/// reported as `WouldBlock`, so that [`tokio::net::TcpStream::try_io`] clears the socket's
/// readiness (the bytes are in `got`, and the caller keeps them).
fn read_short(sock: socket2::SockRef<'_>, buf: &mut [u8], got: &mut usize) -> io::Result<()> {
    let mut sock: &socket2::Socket = &sock;
    let n = sock.read(buf)?;
    *got = n;
    if n > 0 && n < buf.len() {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(())
    }
}

/// What a turn of an upstream connection's I/O came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Bytes moved, or nothing was ready after all.
    Moved,
    /// The upstream closed its side (bytes read before stay in `rd`).
    Eof,
}

/// One connection to an upstream server, with its buffers, counted in its [`Share`] until
/// dropped. The request bytes not yet written wait in `wr` (from `sent` on); what the
/// upstream sent and the relay has not taken waits in `rd`.
#[derive(Debug)]
pub(crate) struct UpConn {
    pub(crate) io: UpIo,
    pub(crate) rd: BytesMut,
    pub(crate) wr: Vec<u8>,
    pub(crate) sent: usize,
    /// Taken from the idle pool: it may turn out to have been closed meanwhile.
    pub(crate) reused: bool,
    /// Room for the next response head's field positions.
    pub(crate) spare: crate::relay::Spare,
    /// A write failed: the request did not reach the upstream whole, and the connection
    /// serves no other.
    pub(crate) broken: bool,
    _counted: Counted,
}

/// Read at most this much of an upstream's bytes ahead of the relay, for a response head.
const READ_AHEAD: usize = 16 * 1024;
/// The same while a body streams through: fewer, larger reads, each written on to the
/// client as it is (not copied).
const BODY_READ_AHEAD: usize = 64 * 1024;

impl UpConn {
    /// Request bytes still to write.
    pub(crate) fn pending(&self) -> usize {
        self.wr.len() - self.sent
    }

    /// Room to append more request bytes: what was written is let go first. (A request
    /// without a body keeps its head in `wr` until the response, for a retry.)
    pub(crate) fn room(&mut self) -> &mut Vec<u8> {
        if self.sent == self.wr.len() {
            self.wr.clear();
            self.sent = 0;
        }
        &mut self.wr
    }

    /// Writes what it can of the pending request bytes, without waiting. Once a write has
    /// failed (the upstream stopped reading: it may have answered already, a 413 say), what
    /// is pending is let go and nothing more is written; the response is still read.
    pub(crate) fn push(&mut self) {
        while self.sent < self.wr.len() && !self.broken {
            match self.io.try_write(&self.wr[self.sent..]) {
                Ok(n) if n > 0 => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                _ => self.broken = true,
            }
        }
        if self.broken {
            self.sent = self.wr.len();
        }
    }

    /// Writes what it can of the pending request bytes and reads what the upstream sent,
    /// without waiting (call after [`UpIo::ready`]). Reads only while the read buffer is
    /// under `limit`; `body`: the response's body is streaming, read in larger pieces.
    pub(crate) fn turn(&mut self, limit: usize, body: bool) -> io::Result<Turn> {
        self.push();
        if self.rd.len() >= limit {
            return Ok(Turn::Moved);
        }
        let room = self.rd.capacity() - self.rd.len();
        if body && room < BODY_READ_AHEAD / 4 {
            self.rd.reserve(BODY_READ_AHEAD);
        } else if room < 1024 {
            self.rd.reserve(READ_AHEAD);
        }
        match self.io.try_read_buf(&mut self.rd) {
            Ok(0) => Ok(Turn::Eof),
            Ok(_) => Ok(Turn::Moved),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Turn::Moved),
            Err(e) => Err(e),
        }
    }

    /// Whether an idle connection is still usable: the upstream has neither closed it nor
    /// sent anything unasked.
    fn still_open(&self) -> bool {
        let mut probe = [0u8; 1];
        let r = match &self.io {
            UpIo::Tcp(s) => s.try_read(&mut probe),
            UpIo::Unix(s) => s.try_read(&mut probe),
        };
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Upstream connections open, all queues together, against the budget's upstream share;
/// and those of each ordinary account's queues, against a quarter of it.
#[derive(Debug)]
pub(crate) struct Share {
    max: u64,
    open: AtomicU64,
    /// Connections open per account, for the queues ordinary accounts made. Taken when a
    /// connection opens or closes, never for a request on a kept one.
    accounts: Mutex<HashMap<u32, u64>>,
}

/// Why no new upstream connection may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spent {
    /// The whole share is open.
    All(u64),
    /// The account's queues hold their quarter of the share.
    Account { uid: u32, max: u64 },
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Spent::All(max) => write!(
                f,
                "all {max} upstream connections of the descriptor budget are open"
            ),
            Spent::Account { uid, max } => write!(
                f,
                "the upstream queues of uid {uid} hold {max} connections, the most one \
                 account's may (a quarter of the descriptor budget's upstream share)"
            ),
        }
    }
}

impl std::error::Error for Spent {}

impl Share {
    pub(crate) fn new(max: u64) -> Arc<Share> {
        Arc::new(Share {
            max,
            open: AtomicU64::new(0),
            accounts: Mutex::new(HashMap::new()),
        })
    }

    /// Upstream connections open now.
    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// The most connections the queues of one ordinary account may hold at once.
    pub(crate) fn per_account(&self) -> u64 {
        (self.max / 4).max(1)
    }

    /// Whether three quarters of the share are in use.
    fn low(&self) -> bool {
        self.open() * 4 >= self.max * 3
    }

    /// Counts one more connection for a queue of `owner` (`None`: root's or the
    /// configuration's), if the share and the account's part of it have room.
    fn take(self: &Arc<Share>, owner: Option<u32>) -> Result<Counted, Spent> {
        let mut accounts = owner.map(|_| self.accounts.lock().unwrap_or_else(|e| e.into_inner()));
        if let (Some(uid), Some(accounts)) = (owner, &accounts) {
            let max = self.per_account();
            if accounts.get(&uid).copied().unwrap_or(0) >= max {
                return Err(Spent::Account { uid, max });
            }
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| Spent::All(self.max))?;
        if let (Some(uid), Some(accounts)) = (owner, &mut accounts) {
            *accounts.entry(uid).or_default() += 1;
        }
        Ok(Counted {
            share: self.clone(),
            owner,
        })
    }
}

/// One upstream connection, counted in its [`Share`] (and its account's part) until
/// dropped.
#[derive(Debug)]
struct Counted {
    share: Arc<Share>,
    owner: Option<u32>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(uid) = self.owner {
            let mut accounts = self
                .share
                .accounts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = accounts.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    accounts.remove(&uid);
                }
            }
        }
        self.share.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_ip_ports_and_only_those_provable() {
        assert_eq!(
            Address::parse("unix:/run/a.sock"),
            Ok(Address::Unix("/run/a.sock".into()))
        );
        for provable in [
            "unix:/run/a.sock",
            "127.0.0.1:9000",
            "127.0.0.2:9000",
            "[::1]:9000",
        ] {
            assert!(Address::parse(provable).unwrap().provable(), "{provable}");
        }
        assert!(!Address::parse("10.0.0.1:80").unwrap().provable());
        assert!(!Address::parse("[2001:db8::1]:80").unwrap().provable());
        assert!(Address::parse("unix:relative").is_err());
        assert!(Address::parse("localhost:80").is_err());
        for nowhere in ["0.0.0.0:9000", "[::]:80", "224.0.0.1:80", "127.0.0.1:0"] {
            assert!(Address::parse(nowhere).is_err(), "{nowhere}");
        }
    }

    #[test]
    fn the_share_counts_connections_and_runs_low() {
        let share = Share::new(4);
        let a = share.take(None).unwrap();
        let b = share.take(None).unwrap();
        assert!(!share.low());
        let c = share.take(None).unwrap();
        assert!(share.low());
        let d = share.take(None).unwrap();
        assert_eq!(share.take(None).unwrap_err(), Spent::All(4));
        assert_eq!(share.open(), 4);
        drop((a, b, c, d));
        assert_eq!(share.open(), 0);
        assert!(share.take(None).is_ok());
    }

    #[test]
    fn one_account_holds_a_quarter_of_the_share_at_most() {
        let share = Share::new(16);
        let alice: Vec<_> = (0..4).map(|_| share.take(Some(1001)).unwrap()).collect();
        assert_eq!(
            share.take(Some(1001)).unwrap_err(),
            Spent::Account { uid: 1001, max: 4 }
        );
        // Another account, and root's queues, still have room.
        let bob = share.take(Some(1002)).unwrap();
        let root: Vec<_> = (0..11).map(|_| share.take(None).unwrap()).collect();
        assert_eq!(share.open(), 16);
        // The share spent: nobody gets one, and a refusal counts nothing.
        assert_eq!(share.take(Some(1003)).unwrap_err(), Spent::All(16));
        assert_eq!(share.accounts.lock().unwrap().get(&1003), None);
        drop(root);
        drop(bob);
        assert_eq!(share.accounts.lock().unwrap().get(&1002), None);
        drop(alice);
        assert!(share.accounts.lock().unwrap().is_empty());
        assert_eq!(share.open(), 0);
        assert!(share.take(Some(1001)).is_ok());
    }

    #[tokio::test]
    async fn a_short_read_waits_for_more_and_misses_none() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = UnixStream::pair().unwrap();
        let io = UpIo::Unix(a);
        let mut buf = BytesMut::with_capacity(64);
        for round in 0..3u8 {
            b.write_all(&[round; 5]).await.unwrap();
            let within = std::time::Duration::from_secs(5);
            tokio::time::timeout(within, io.ready(false))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(io.try_read_buf(&mut buf).unwrap(), 5);
            assert_eq!(&buf[..], &[round; 5]);
            buf.clear();
            // Drained: the next read finds nothing, and readiness comes back with more.
            assert_eq!(
                io.try_read_buf(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
        }
        drop(b);
        io.ready(false).await.unwrap();
        assert_eq!(io.try_read_buf(&mut buf).unwrap(), 0);
    }

    #[tokio::test]
    async fn no_connection_beyond_the_share() {
        let share = Share::new(1);
        let _held = share.take(None).unwrap();
        let up = Upstream::new(Address::parse("127.0.0.1:9").unwrap(), false, None, 1);
        let e = up.connection(&share).await.unwrap_err();
        assert!(e.to_string().contains("descriptor budget"), "{e}");
    }
}
