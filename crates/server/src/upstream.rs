//! Upstream queues: requests forwarded to an unmodified HTTP/1.1 server on a Unix socket or
//! a loopback TCP port, over a pool of keep-alive connections (one per queue slot).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

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
    /// Parses `unix:/path` or a loopback `IP:port`; the daemon connects nowhere else.
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err("a unix: upstream needs an absolute path".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| "expected unix:/path or IP:port".to_string())?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address: upstreams are unix:/path or 127.0.0.0/8 or [::1]"
            ));
        }
        Ok(Address::Tcp(addr))
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
    idle: Mutex<Vec<SendRequest<UpBody>>>,
}

impl Upstream {
    pub(crate) fn new(address: Address) -> Upstream {
        Upstream {
            address,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection, or a new one.
    pub(crate) async fn connection(&self) -> std::io::Result<SendRequest<UpBody>> {
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
        match &self.address {
            Address::Unix(p) => handshake(tokio::net::UnixStream::connect(p).await?).await,
            Address::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                handshake(s).await
            }
        }
    }

    /// Gives a connection back for the next request.
    pub(crate) fn put_back(&self, c: SendRequest<UpBody>) {
        if !c.is_closed() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }
}

/// An HTTP/1 client connection on `io`, driven by a task of its own.
async fn handshake<I>(io: I) -> std::io::Result<SendRequest<UpBody>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_unix() {
        assert_eq!(
            Address::parse("unix:/run/a.sock"),
            Ok(Address::Unix("/run/a.sock".into()))
        );
        assert!(Address::parse("127.0.0.1:9000").is_ok());
        assert!(Address::parse("[::1]:9000").is_ok());
        assert!(Address::parse("10.0.0.1:80").is_err());
        assert!(Address::parse("unix:relative").is_err());
        assert!(Address::parse("localhost:80").is_err());
    }
}
