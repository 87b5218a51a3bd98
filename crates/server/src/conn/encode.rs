//! The response encoder: an application's response as the client gets it. The daemon
//! writes the status line, keeps the application's headers but those it owns (framing,
//! `Connection`, `Date`), frames the body itself (a length, chunks, or the close), and
//! refuses what would split or forge a header line or break its own framing.
//!
//! This module owns the bytes of a relayed response and the number writers they use. It
//! must not write to the socket, nor know where a response comes from: the exchanges feed
//! it heads and body bytes.

use bytes::{BufMut, Bytes, BytesMut};
use portshare_proto::gather::Gather;
use portshare_proto::wire::INITIAL_WINDOW;
use portshare_router::Version;

use super::Facts;
use crate::pages;

/// How a response body is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body may follow (HEAD, 204, 304).
    None,
    /// Exactly this many more bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, length unknown).
    Close,
}

/// The response as it is written to the client.
pub(super) struct Response {
    facts: Facts,
    framing: Framing,
    /// The head is written.
    pub(super) started: bool,
    /// The whole response is written (or refused).
    pub(super) finished: bool,
    /// The connection closes after it.
    pub(super) close: bool,
    /// Body bytes written since the last window grant.
    granted: u32,
}

impl Response {
    pub(super) fn new(facts: Facts) -> Response {
        Response {
            facts,
            framing: Framing::None,
            started: false,
            finished: false,
            close: !facts.keep_alive,
            granted: 0,
        }
    }

    /// Writes the response head. `exact` is the body's length when it is known in
    /// advance (the whole body already arrived), used when the application gave none.
    pub(super) fn head<'h>(
        &mut self,
        wr: &mut BytesMut,
        status: u16,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
        end: bool,
        exact: Option<u64>,
    ) -> bool {
        if !(200..=999).contains(&status) {
            return false; // interim and upgrade responses are not relayed
        }
        self.started = true;
        let mut length = None;
        let mut has_server = false;
        wr.put_slice(b"HTTP/1.1 ");
        let mut num = itoa_buf();
        wr.put_slice(fmt_u64(&mut num, u64::from(status)));
        wr.put_u8(b' ');
        wr.put_slice(
            http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        wr.put_slice(b"\r\n");
        for (name, value) in headers {
            match field(name, value) {
                Field::Length(parsed) => {
                    // Written once below, with the framing.
                    match (parsed, length) {
                        (Some(n), None) => length = Some(n),
                        (Some(n), Some(m)) if n == m => {}
                        _ => return false,
                    }
                    continue;
                }
                Field::Owned => continue,
                Field::Bad => return false,
                Field::Server => has_server = true,
                Field::Keep => {}
            }
            wr.put_slice(name);
            wr.put_slice(b": ");
            wr.put_slice(value);
            wr.put_slice(b"\r\n");
        }
        let bodiless = self.facts.head_method || status == 204 || status == 304;
        self.framing = if bodiless {
            if let Some(n) = length {
                put_length(wr, n);
            }
            Framing::None
        } else if let Some(n) = length {
            put_length(wr, n);
            Framing::Length(n)
        } else if end {
            put_length(wr, 0);
            Framing::Length(0)
        } else if let Some(n) = exact {
            put_length(wr, n);
            Framing::Length(n)
        } else if self.facts.version == Version::Http11 {
            wr.put_slice(b"Transfer-Encoding: chunked\r\n");
            Framing::Chunked
        } else {
            self.close = true;
            Framing::Close
        };
        if let Some(server) = self.facts.server.filter(|_| !has_server) {
            wr.put_slice(b"Server: ");
            wr.put_slice(server.as_bytes());
            wr.put_slice(b"\r\n");
        }
        wr.put_slice(b"Date: ");
        pages::put_date(wr);
        wr.put_slice(b"\r\n");
        if self.close {
            wr.put_slice(b"Connection: close\r\n");
        } else if self.facts.version == Version::Http10 {
            wr.put_slice(b"Connection: keep-alive\r\n");
        }
        wr.put_slice(b"\r\n");
        if end {
            self.finished = true;
            // A response that promised a body and ended without one cannot keep the
            // connection in step.
            if let Framing::Length(n) = self.framing
                && n > 0
            {
                return false;
            }
        }
        true
    }

    /// Writes body bytes; false when the application broke its own framing.
    pub(super) fn data(&mut self, wr: &mut Gather, data: Bytes, end: bool) -> bool {
        if self.finished {
            return data.is_empty();
        }
        self.granted = self.granted.saturating_add(data.len() as u32);
        match &mut self.framing {
            Framing::None => {}
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    return false;
                }
                *left -= data.len() as u64;
                wr.put_bytes(data);
                if end && *left != 0 {
                    return false;
                }
            }
            Framing::Chunked => {
                if !data.is_empty() {
                    put_hex(wr.tail(), data.len());
                    wr.put_slice(b"\r\n");
                    wr.put_bytes(data);
                    wr.put_slice(b"\r\n");
                }
                if end {
                    wr.put_slice(b"0\r\n\r\n");
                }
            }
            Framing::Close => wr.put_bytes(data),
        }
        if end {
            self.finished = true;
        }
        true
    }

    /// Body bytes written since the last call, to grant back to the worker once they
    /// add up to half a window.
    pub(super) fn take_granted(&mut self) -> u32 {
        if self.granted >= INITIAL_WINDOW / 2 {
            std::mem::take(&mut self.granted)
        } else {
            0
        }
    }
}

/// What the daemon does with a response header an application sent, for either protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `Content-Length`, with its value if it is a number: the daemon frames the body.
    Length(Option<u64>),
    /// A header the daemon owns (`Date`) or that does not cross a hop (`Connection`,
    /// `Transfer-Encoding`, `Keep-Alive`, `Proxy-Connection`, `Upgrade`): dropped.
    Owned,
    /// The application's own `Server`: kept, and none added.
    Server,
    /// Kept as it is.
    Keep,
    /// A name or value that would split or forge a header line: the response is refused.
    Bad,
}

/// Judges one response header an application sent.
pub(crate) fn field(name: &[u8], value: &[u8]) -> Field {
    if name.eq_ignore_ascii_case(b"content-length") {
        let parsed = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        return Field::Length(parsed);
    } else if name.eq_ignore_ascii_case(b"date")
        || name.eq_ignore_ascii_case(b"connection")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"keep-alive")
        || name.eq_ignore_ascii_case(b"proxy-connection")
        || name.eq_ignore_ascii_case(b"upgrade")
    {
        return Field::Owned;
    }
    // Nothing an application sends may split or forge a header line.
    let bad_name = name.is_empty() || name.iter().any(|&b| b <= b' ' || b == b':' || b >= 0x7f);
    if bad_name || value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Field::Bad;
    }
    if name.eq_ignore_ascii_case(b"server") {
        Field::Server
    } else {
        Field::Keep
    }
}

/// Appends `n` in lower-case hex, as a chunk size.
fn put_hex(wr: &mut BytesMut, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        wr.put_u8(b"0123456789abcdef"[(n >> (i * 4)) & 15]);
    }
}

fn put_length(wr: &mut BytesMut, n: u64) {
    let mut num = itoa_buf();
    wr.put_slice(b"Content-Length: ");
    wr.put_slice(fmt_u64(&mut num, n));
    wr.put_slice(b"\r\n");
}

pub(crate) fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

pub(crate) fn fmt_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn facts(version: Version, keep_alive: bool, head_method: bool) -> Facts {
        Facts {
            version,
            keep_alive,
            head_method,
            expect_continue: false,
            server: pages::ServerHeader::Everywhere.apps(),
        }
    }

    fn write(
        f: Facts,
        status: u16,
        headers: &[(&str, &str)],
        end: bool,
        exact: Option<u64>,
        body: &[&[u8]],
    ) -> Option<String> {
        let mut r = Response::new(f);
        let mut wr = Gather::default();
        let headers = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        if !r.head(wr.tail(), status, headers, end, exact) {
            return None;
        }
        for (i, chunk) in body.iter().enumerate() {
            if !r.data(&mut wr, Bytes::copy_from_slice(chunk), i + 1 == body.len()) {
                return None;
            }
        }
        let mut all = Vec::new();
        while wr.has_remaining() {
            all.extend_from_slice(wr.chunk());
            wr.advance(wr.chunk().len());
        }
        let text = String::from_utf8(all).ok()?;
        // The Date changes; keep the rest.
        Some(
            text.lines()
                .filter(|l| !l.starts_with("Date: "))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    #[test]
    fn large_payloads_are_framed_around_the_bytes_kept() {
        let big = "x".repeat(portshare_proto::gather::KEEP_FROM);
        let f11 = facts(Version::Http11, true, false);
        let out = write(f11, 200, &[], false, None, &[big.as_bytes(), b"yz"]).unwrap();
        let chunked = format!("\n{:x}\n{big}\n2\nyz\n0", big.len());
        assert!(out.contains(&chunked), "{out}");
        let length = (big.len() + 2).to_string();
        let out = write(
            f11,
            200,
            &[("content-length", &length)],
            false,
            None,
            &[big.as_bytes(), b"yz"],
        );
        assert!(out.unwrap().ends_with(&format!("\n\n{big}yz")));
    }

    #[test]
    fn framing_is_the_daemons() {
        let f11 = facts(Version::Http11, true, false);
        // The app's length is kept, once.
        let out = write(
            f11,
            200,
            &[("content-length", "2"), ("x", "y")],
            false,
            None,
            &[b"hi"],
        )
        .unwrap();
        assert_eq!(out.matches("Content-Length: 2").count(), 1, "{out}");
        assert!(!out.contains("content-length"), "{out}");
        // A body that arrived whole gets a length; a stream gets chunked.
        let out = write(f11, 200, &[], false, Some(5), &[b"hello"]).unwrap();
        assert!(out.contains("Content-Length: 5"), "{out}");
        let out = write(f11, 200, &[], false, None, &[b"ab", b"c"]).unwrap();
        assert!(
            out.contains("Transfer-Encoding: chunked") && out.ends_with("2\nab\n1\nc\n0\n"),
            "{out:?}"
        );
        // HTTP/1.0 with an unknown length: delimited by close.
        let f10 = facts(Version::Http10, true, false);
        let out = write(f10, 200, &[], false, None, &[b"x"]).unwrap();
        assert!(out.contains("Connection: close"), "{out}");
        // No body on HEAD, 204, 304; an empty response gets Content-Length: 0.
        let head = facts(Version::Http11, true, true);
        let out = write(head, 200, &[("content-length", "9")], true, None, &[]).unwrap();
        assert!(out.contains("Content-Length: 9"), "{out}");
        let out = write(f11, 204, &[], true, None, &[]).unwrap();
        assert!(!out.contains("Content-Length"), "{out}");
        let out = write(f11, 200, &[], true, None, &[]).unwrap();
        assert!(out.contains("Content-Length: 0"), "{out}");
    }

    #[test]
    fn hop_by_hop_and_date_are_replaced() {
        let f = facts(Version::Http11, false, false);
        let out = write(
            f,
            200,
            &[
                ("connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("date", "x"),
                ("server", "app"),
            ],
            true,
            None,
            &[],
        )
        .unwrap();
        assert!(
            out.contains("Connection: close") && !out.contains("keep-alive"),
            "{out}"
        );
        assert!(
            !out.contains("transfer-encoding") && !out.contains("date: x"),
            "{out}"
        );
        assert!(
            out.contains("server: app") && !out.contains("Server: portshare"),
            "{out}"
        );
    }

    #[test]
    fn what_an_application_gets_wrong_is_refused() {
        let f = facts(Version::Http11, true, false);
        for bad in [
            &[("x", "a\r\nInjected: 1")][..],
            &[("bad name", "v")],
            &[("x:y", "v")],
            &[("", "v")],
            &[("content-length", "1"), ("content-length", "2")],
            &[("content-length", "nope")],
        ] {
            assert_eq!(write(f, 200, bad, true, None, &[]), None, "{bad:?}");
        }
        // A body longer or shorter than promised.
        assert_eq!(
            write(f, 200, &[("content-length", "1")], false, None, &[b"ab"]),
            None
        );
        assert_eq!(
            write(f, 200, &[("content-length", "3")], false, None, &[b"ab"]),
            None
        );
        assert_eq!(
            write(f, 200, &[("content-length", "3")], true, None, &[]),
            None
        );
        // Interim and upgrade responses are not relayed.
        assert_eq!(write(f, 101, &[], true, None, &[]), None);
        assert_eq!(write(f, 100, &[], true, None, &[]), None);
    }
    #[test]
    fn numbers() {
        for (n, hex) in [(0, "0"), (1, "1"), (15, "f"), (16, "10"), (0xabc, "abc")] {
            let mut wr = BytesMut::new();
            put_hex(&mut wr, n);
            assert_eq!(&wr[..], hex.as_bytes());
        }
        let mut wr = BytesMut::new();
        put_hex(&mut wr, usize::MAX);
        assert_eq!(wr.len(), usize::BITS as usize / 4);
        let mut buf = itoa_buf();
        assert_eq!(fmt_u64(&mut buf, 0), b"0");
        assert_eq!(fmt_u64(&mut buf, u64::MAX), b"18446744073709551615");
    }
}
