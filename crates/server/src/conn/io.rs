//! The byte stream under a client connection: plain TCP, or TLS over TCP once the `tls`
//! module has finished the handshake. The HTTP/1 loop reads and writes through [`Io`]
//! and never learns which; an http connection pays one `match` per read or write, no
//! allocation and no copy.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TLS session over a client's TCP connection.
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A client connection's byte stream.
pub(crate) enum Io {
    /// http: the socket itself.
    Tcp(TcpStream),
    /// https: boxed, so that an http connection's state stays as small as it was.
    Tls(Box<TlsStream>),
}

impl Io {
    /// The TCP socket underneath, for socket options (linger).
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Io::Tcp(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }

    /// Waits until a read would find something: bytes, the end of the stream or an error.
    /// For TLS that is decrypted bytes (or the peer's close) and not merely ciphertext:
    /// records are taken from the socket and decrypted here, without blocking, until one
    /// yields plaintext. Holds no buffer of its own while it waits.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what was taken from the socket stays in the TLS session.
    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        let tls = match self {
            Io::Tcp(s) => return s.readable().await,
            Io::Tls(s) => s,
        };
        loop {
            let (tcp, session) = tls.get_mut();
            match session.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                    return Ok(());
                }
                Ok(_) => {}
                // The read that follows reports the error.
                Err(_) => return Ok(()),
            }
            tcp.readable().await?;
            let (tcp, session) = tls.get_mut();
            match session.read_tls(&mut TryRead(tcp)) {
                // The end of the stream, or an error: the read that follows says which.
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(()),
            }
        }
    }
}

/// `std::io::Read` over a non-blocking tokio socket: `WouldBlock` when nothing is there.
struct TryRead<'a>(&'a TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A lingering close, after the response and the FIN: reads and throws away what the client
/// still sends, for at most 2 s and 1 MiB. Closing with unread bytes would make the kernel
/// answer with a reset, which can destroy a response before the client reads it. HTTP/1's
/// loop and HTTP/2's end (`tls::serve`) both close this way.
pub(crate) async fn linger<R: AsyncRead + Unpin>(stream: &mut R) {
    use tokio::io::AsyncReadExt;
    const LIMIT: usize = 1 << 20;
    // On the heap: a buffer here would make every idle connection's task this much larger.
    let mut buf = vec![0u8; 4096];
    let mut thrown = 0;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while thrown < LIMIT {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => thrown += n,
                _ => return,
            }
        }
    })
    .await;
}
