//! The scrape listener (`[metrics] listen`): `GET /metrics` answered with Prometheus text,
//! or OpenMetrics when the `Accept` header asks for `application/openmetrics-text`.
//!
//! It is the operator's opt-in and shows every queue, so it belongs on loopback or behind
//! a firewall. Whoever reaches it cannot grow the daemon: at most [`MAX_CONNECTIONS`]
//! connections are served at once (more are closed as soon as they are accepted), a
//! request head must come whole within [`READ_WAIT`] and [`MAX_HEAD`] bytes, the answer
//! must be taken within [`WRITE_WAIT`], and one request is served per connection.

use std::sync::Arc;
use std::time::Duration;

use portshare_proto::control::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::text::{Format, render};

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// How long a request head may take to arrive.
pub(crate) const READ_WAIT: Duration = Duration::from_secs(5);
/// How long the answer may take to be written.
pub(crate) const WRITE_WAIT: Duration = Duration::from_secs(10);
/// The most a request head may hold.
pub(crate) const MAX_HEAD: usize = 8192;

/// What takes a sample of the counters (it may block: it is run on the blocking pool).
pub(crate) type Sampler = Arc<dyn Fn() -> Metrics + Send + Sync>;

/// Accepts scrapes on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, sample: Sampler) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                // Out of descriptors, most likely: the client side frees them.
                tracing::debug!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            // Full: closed at once, so a flood costs nothing that stays.
            let _ = socket2::SockRef::from(&io).set_linger(Some(Duration::ZERO));
            drop(io);
            continue;
        };
        let sample = sample.clone();
        tokio::spawn(async move {
            if let Err(error) = scrape(io, sample).await {
                tracing::debug!(%peer, %error, "metrics: scrape failed");
            }
            drop(place);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics { format: Format, head: bool },
    Status(&'static str),
}

/// Reads a request head from the start of `buf`: `None` until it is whole.
fn ask(buf: &[u8]) -> Option<Ask> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let mut line = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (line.next().unwrap_or_default(), line.next());
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    Some(match (method, path) {
        (_, None) => Ask::Status("400 Bad Request"),
        ("GET" | "HEAD", Some("/metrics")) => Ask::Metrics {
            format: Format::from_accept(accept),
            head: method == "HEAD",
        },
        ("GET" | "HEAD", Some(_)) => Ask::Status("404 Not Found"),
        _ => Ask::Status("405 Method Not Allowed"),
    })
}

async fn scrape(mut io: TcpStream, sample: Sampler) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let asked = timeout(READ_WAIT, async {
        loop {
            if let Some(a) = ask(&buf) {
                return Ok::<Ask, std::io::Error>(a);
            }
            if buf.len() >= MAX_HEAD {
                return Ok(Ask::Status("431 Request Header Fields Too Large"));
            }
            let mut chunk = [0u8; 1024];
            let want = chunk.len().min(MAX_HEAD - buf.len());
            let n = io.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (status, content_type, body, head) = match asked {
        Ask::Metrics { format, head } => {
            let m = tokio::task::spawn_blocking(move || sample())
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", format.content_type(), render(&m, format), head)
        }
        Ask::Status(s) => (s, "text/plain; charset=utf-8", format!("{s}\n"), false),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    timeout(WRITE_WAIT, async {
        io.write_all(&out).await?;
        io.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_whole_and_its_accept_chooses_the_format() {
        assert_eq!(ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Ask::Metrics {
                format: Format::Prometheus,
                head: false
            })
        );
        assert_eq!(
            ask(b"GET /metrics?x HTTP/1.1\r\naccept: application/openmetrics-text\r\n\r\n"),
            Some(Ask::Metrics {
                format: Format::OpenMetrics,
                head: false
            })
        );
        assert_eq!(
            ask(b"GET / HTTP/1.1\r\n\r\n"),
            Some(Ask::Status("404 Not Found"))
        );
        assert_eq!(
            ask(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Ask::Status("405 Method Not Allowed"))
        );
        assert_eq!(ask(b"\xff\r\n\r\n"), Some(Ask::Status("400 Bad Request")));
    }
}
