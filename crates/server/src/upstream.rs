//! Upstream queues: requests forwarded to an unmodified HTTP/1.1 server on a Unix socket or
//! a TCP port, over a pool of keep-alive connections (one per queue slot). Every new
//! connection of a queue an ordinary account made is checked by [`crate::owner`] before a
//! byte is sent on it.
//!
//! All upstream connections together stay within the descriptor budget's upstream
//! [`Share`]: a request that needs a new connection when the share is spent is answered 503,
//! and once the share is three quarters used, a connection that falls idle is closed
//! instead of kept, so that idle pools do not hold descriptors other queues need.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// The body type the daemon sends upstream.
pub(crate) type UpBody = BoxBody<Bytes, std::io::Error>;

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

    /// Whether the daemon can tell who serves this address ([`crate::owner`]): a Unix
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
    /// The account every new connection's server must run as ([`crate::owner`]); `None`
    /// for queues root or the configuration file made, which may point anywhere.
    owner: Option<u32>,
    /// Why the last new connection was refused for its owner, until one passes again.
    refused: Mutex<Option<String>>,
    idle: Mutex<Vec<SendRequest<UpBody>>>,
}

impl Upstream {
    pub(crate) fn new(address: Address, owner: Option<u32>) -> Upstream {
        Upstream {
            address,
            owner,
            refused: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
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
    pub(crate) async fn connect(&self) -> std::io::Result<Stream> {
        let stream = match &self.address {
            Address::Unix(p) => Stream::Unix(tokio::net::UnixStream::connect(p).await?),
            Address::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        let Some(owner) = self.owner else {
            return Ok(stream);
        };
        let verdict = match &stream {
            Stream::Unix(s) => crate::owner::check_unix(s, owner).await,
            Stream::Tcp(s) => crate::owner::check_tcp(s, owner).await,
        };
        self.judged(&verdict);
        verdict.map(|()| stream)
    }

    /// Keeps the mark of the state view, and logs when it changes.
    fn judged(&self, verdict: &std::io::Result<()>) {
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

    /// An idle connection, or a new one out of `share`.
    pub(crate) async fn connection(
        &self,
        share: &Arc<Share>,
    ) -> std::io::Result<SendRequest<UpBody>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(mut c) if !c.is_closed() => {
                    if c.ready().await.is_ok() {
                        return Ok(c);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let Some(counted) = share.take() else {
            return Err(std::io::Error::other(format!(
                "all {} upstream connections of the descriptor budget are open",
                share.max
            )));
        };
        match self.connect().await? {
            Stream::Unix(s) => handshake(s, counted).await,
            Stream::Tcp(s) => handshake(s, counted).await,
        }
    }

    /// Gives a connection back for the next request; closes it instead when `share` runs
    /// low.
    pub(crate) fn put_back(&self, c: SendRequest<UpBody>, share: &Share) {
        if !c.is_closed() && !share.low() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }
}

/// A connection to an upstream.
#[derive(Debug)]
pub(crate) enum Stream {
    /// To `unix:PATH`.
    Unix(tokio::net::UnixStream),
    /// To an `IP:port`.
    Tcp(tokio::net::TcpStream),
}

/// Upstream connections open, all queues together, against the budget's upstream share.
#[derive(Debug)]
pub(crate) struct Share {
    max: u64,
    open: AtomicU64,
}

impl Share {
    pub(crate) fn new(max: u64) -> Arc<Share> {
        Arc::new(Share {
            max,
            open: AtomicU64::new(0),
        })
    }

    /// Upstream connections open now.
    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Whether three quarters of the share are in use.
    fn low(&self) -> bool {
        self.open() * 4 >= self.max * 3
    }

    /// Counts one more connection, if the share has room.
    fn take(self: &Arc<Share>) -> Option<Counted> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Counted(self.clone()))
    }
}

/// One upstream connection, counted in its [`Share`] until dropped.
#[derive(Debug)]
struct Counted(Arc<Share>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An HTTP/1 client connection on `io`, driven by a task of its own, which holds the
/// connection's place in the share until the connection closes.
async fn handshake<I>(io: I, counted: Counted) -> std::io::Result<SendRequest<UpBody>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
        drop(counted);
    });
    Ok(send)
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
        let a = share.take().unwrap();
        let b = share.take().unwrap();
        assert!(!share.low());
        let c = share.take().unwrap();
        assert!(share.low());
        let d = share.take().unwrap();
        assert!(share.take().is_none());
        assert_eq!(share.open(), 4);
        drop((a, b, c, d));
        assert_eq!(share.open(), 0);
        assert!(share.take().is_some());
    }

    #[tokio::test]
    async fn no_connection_beyond_the_share() {
        let share = Share::new(1);
        let _held = share.take().unwrap();
        let up = Upstream::new(Address::parse("127.0.0.1:9").unwrap(), None);
        let e = up.connection(&share).await.unwrap_err();
        assert!(e.to_string().contains("descriptor budget"), "{e}");
    }
}
