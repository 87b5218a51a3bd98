//! Raw HTTP/1.1 on loopback, the client's side: connections, requests as bytes, responses
//! read as they come, and how a connection ended.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Reads one HTTP/1.1 response (Content-Length or chunked or close-delimited) from a
/// stream; returns status, the head text and the body.
pub fn read_response(
    s: &mut impl Read,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (u16, String, Vec<u8>) {
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read response head");
        assert!(
            n > 0,
            "connection closed before a response head (got {:?})",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let status: u16 = head[9..12].parse().expect("status code");
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().expect("content-length"));
    let body = if head_request || status == 204 || status == 304 || status == 101 {
        Vec::new()
    } else if let Some(n) = length {
        while buf.len() < n {
            let r = s.read(&mut chunk).expect("read body");
            assert!(r > 0, "closed inside the body");
            buf.extend_from_slice(&chunk[..r]);
        }
        buf.drain(..n).collect()
    } else if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                let r = s.read(&mut chunk).expect("read chunk size");
                assert!(r > 0, "closed inside a chunked body");
                buf.extend_from_slice(&chunk[..r]);
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .expect("chunk size");
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let r = s.read(&mut chunk).expect("read chunk");
                assert!(r > 0, "closed inside a chunk");
                buf.extend_from_slice(&chunk[..r]);
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let mut rest = std::mem::take(buf);
        let _ = s.read_to_end(&mut rest);
        rest
    };
    (status, head, body)
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends raw bytes to 127.0.0.1:port and reads one response.
pub fn http_raw(port: u16, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = connect(port);
    s.write_all(request).expect("send request");
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, request.starts_with(b"HEAD "))
}

/// `GET target` with `Host: host`, connection closed after.
pub fn get(port: u16, host: &str, target: &str) -> (u16, String, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = http_raw(port, req.as_bytes());
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// What happened to a connection that should have been reset or closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A response arrived.
    Response(u16),
    /// The connection was reset (RST).
    Reset,
    /// Closed cleanly without a response.
    Closed,
}

/// Sends `request` and tells how the connection ended.
pub fn ending(port: u16, request: &[u8]) -> Ending {
    let mut s = connect(port);
    if s.write_all(request).is_err() {
        return Ending::Reset;
    }
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Ending::Closed,
        Ok(n) if n >= 12 => {
            Ending::Response(String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0))
        }
        Ok(_) => Ending::Closed,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ending::Reset,
        Err(e) => panic!("unexpected read error: {e}"),
    }
}

/// Whether 127.0.0.1:port can be bound right now (with SO_REUSEADDR, as the daemon binds).
pub fn port_free(port: u16) -> bool {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuseaddr");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .is_ok()
        && s.listen(1).is_ok()
}

/// `GET target` with `Host: host` and `Connection: close`; `None` when the connection is
/// refused or breaks, instead of panicking (for polling).
pub fn try_get(port: u16, host: &str, target: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A client connection to 127.0.0.1:port whose receive buffer is as small as the kernel
/// allows, so what it does not read stays with the daemon rather than in its socket.
pub fn connect_small(port: u16) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// How a connection ended: what came before the end, and whether the end was a reset.
#[derive(Debug)]
pub struct Closed {
    pub bytes: Vec<u8>,
    pub reset: bool,
}

impl Closed {
    /// `closed after N bytes` or `reset after N bytes`, for messages.
    pub fn describe(&self) -> String {
        let how = if self.reset { "reset" } else { "closed" };
        format!("{how} after {} bytes", self.bytes.len())
    }

    /// The bytes as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The response head (blank line included) and what came after it; all of it as the
    /// head when there is no blank line.
    pub fn head_and_rest(&self) -> (String, Vec<u8>) {
        match find(&self.bytes, b"\r\n\r\n") {
            Some(i) => (
                String::from_utf8_lossy(&self.bytes[..i + 4]).into_owned(),
                self.bytes[i + 4..].to_vec(),
            ),
            None => (self.text(), Vec::new()),
        }
    }
}

/// Reads until the peer closes or resets the connection. Any other end fails the test,
/// naming `what`: a read timeout (the stream's own: [`connect`] sets 30 s) means the
/// connection hung, and more than 256 MiB means it never ends.
pub fn read_until_close(s: &mut impl Read, what: &str) -> Closed {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                return Closed {
                    bytes,
                    reset: false,
                };
            }
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                assert!(bytes.len() <= 256 << 20, "{what}: endless bytes");
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return Closed { bytes, reset: true };
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "{what}: the connection hung (no close, no reset within the read timeout) \
                 after {} bytes: {:?}",
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
            Err(e) => panic!("{what}: reading: {e} after {} bytes", bytes.len()),
        }
    }
}

/// After a response: nothing is left in `buf`, and the daemon closes the connection (EOF or
/// reset, within 10 s) without sending anything more.
pub fn assert_closed(s: &mut TcpStream, buf: &[u8]) {
    assert!(
        buf.is_empty(),
        "bytes after the response: {:?}",
        String::from_utf8_lossy(buf)
    );
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let rest = read_until_close(s, "after the response");
    assert!(
        rest.bytes.is_empty(),
        "the connection went on: {:?}",
        rest.text()
    );
}

/// Reads from `s` into `buf` until it holds a blank line; returns the head (blank line
/// included) and leaves the rest in `buf`.
pub fn read_head(s: &mut impl Read, buf: &mut Vec<u8>) -> String {
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read a response head");
        assert!(
            n > 0,
            "closed before a head (got {:?})",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    head
}

/// Waits (at most 10 s) for the interim `100 Continue` that must come before the body is
/// sent; `why` says why it is due.
pub fn expect_continue(c: &mut TcpStream, buf: &mut Vec<u8>, why: &str) {
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut chunk = [0u8; 4096];
    while find(buf, b"\r\n\r\n").is_none() {
        match c.read(&mut chunk) {
            Ok(0) => panic!(
                "closed before `100 Continue` (got {:?})",
                String::from_utf8_lossy(buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no `HTTP/1.1 100 Continue` within 10 s of sending the head, though {why} \
                     (got {:?})",
                    String::from_utf8_lossy(buf)
                )
            }
            Err(e) => panic!("reading `100 Continue`: {e}"),
        }
    }
    let interim = read_head(c, buf);
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
}

/// The header `name`'s value in a response head (first one, case-insensitive name).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A response head must frame its body once: one Content-Length, or chunked, not both.
pub fn assert_framed_once(head: &str) {
    let lower = head.to_ascii_lowercase();
    let lengths = lower
        .lines()
        .filter(|l| l.starts_with("content-length:"))
        .count();
    let chunked = lower.contains("transfer-encoding: chunked");
    assert!(
        (lengths == 1 && !chunked) || (lengths == 0 && chunked),
        "body framed {lengths} times by Content-Length (chunked: {chunked}):\n{head}"
    );
}

/// Bytes that are not all the same, so a shifted or dropped piece shows.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}
