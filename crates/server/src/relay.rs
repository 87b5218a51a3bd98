//! The bytes of the HTTP/1.1 exchange with an upstream server: the request head as the
//! upstream gets it, the response head parsed in place with strict framing, and the
//! response body taken out of the upstream's read buffer by that framing.
//!
//! This module owns the framing rules of the relay (RFC 9112 §6, RFC 9110 §7.6.1): which
//! response heads are refused, which fields are hop-by-hop and never cross, how a request
//! body is framed for the upstream. It does no I/O: `conn::to_upstream` and `h2::stream`
//! drive an [`UpConn`](crate::upstream::UpConn) with it, and `crate::upstream` keeps the
//! connections.
//!
//! # What a response head must be
//!
//! A status line `HTTP/1.x NNN reason` and field lines ended by CRLF (LF alone is taken,
//! as httparse takes it), at most [`MAX_RESPONSE_HEAD`] bytes and [`MAX_FIELDS`] fields.
//! Refused: obs-fold, a field name with spaces before its colon, a `Content-Length` that
//! is not digits, two that differ, `Content-Length` with `Transfer-Encoding`, a
//! `Transfer-Encoding` other than exactly `chunked`, a status below 100, and `101` to a
//! request that asked for no upgrade. A refused head is the upstream's fault: the client
//! gets 502 and the connection to the upstream is closed.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
pub(crate) use portshare_proto::wire::MAX_RESPONSE_HEAD;

use crate::body::{BodyIn, Chunked};

/// Most fields a response head may carry.
pub(crate) const MAX_FIELDS: usize = 128;

/// Fields that never cross a hop (RFC 9110 §7.6.1), besides those `Connection` names.
const HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Whether `name` is a hop-by-hop field of the fixed list.
pub(crate) fn hop_by_hop(name: &[u8]) -> bool {
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The tokens of comma-separated `values`, trimmed, empty ones skipped.
pub(crate) fn tokens<'a>(value: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether a request with this method may be sent again on a new connection after the
/// one it went out on turned out closed (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// A response head the relay refuses, and why (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadHead(pub(crate) &'static str);

impl std::fmt::Display for BadHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// How the response body is delimited on the upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delimit {
    /// No body (HEAD, 1xx, 204, 304), whatever the fields say.
    None,
    /// A Content-Length or chunked body.
    Framed(BodyIn),
    /// Until the upstream closes.
    Close,
}

/// Room for a response head's field positions, kept by an upstream connection from one
/// response to the next so that a response costs no allocation.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    fields: Vec<(Range<usize>, Range<usize>)>,
    connection: Vec<Range<usize>>,
}

/// A parsed response head: the status, the head's length in the buffer, its fields as
/// ranges of the buffer, and what its framing and `Connection` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    /// Bytes of the buffer the head takes, its blank line included.
    pub(crate) len: usize,
    pub(crate) delimit: Delimit,
    /// The upstream will close the connection after this response (`Connection: close`,
    /// or HTTP/1.0 without `keep-alive`).
    pub(crate) close: bool,
    /// The Content-Length the response declared, if any.
    pub(crate) length: Option<u64>,
    /// The response's `Upgrade` value, if any (for a 101).
    pub(crate) upgrade: Option<Range<usize>>,
    fields: Vec<(Range<usize>, Range<usize>)>,
    /// Values of the `Connection` fields.
    connection: Vec<Range<usize>>,
}

impl ResponseHead {
    /// Gives the head's room back to its connection.
    pub(crate) fn recycle(self, spare: &mut Spare) {
        spare.fields = self.fields;
        spare.connection = self.connection;
    }

    /// The end-to-end fields, in order, as slices of `buf` (the buffer the head was parsed
    /// from): hop-by-hop fields, those `Connection` names, and `Content-Length` dropped.
    pub(crate) fn fields<'b>(
        &'b self,
        buf: &'b [u8],
    ) -> impl Iterator<Item = (&'b [u8], &'b [u8])> {
        self.fields
            .iter()
            .map(move |(n, v)| (&buf[n.clone()], &buf[v.clone()]))
            .filter(move |(n, _)| {
                !hop_by_hop(n)
                    && !n.eq_ignore_ascii_case(b"content-length")
                    && !self
                        .connection
                        .iter()
                        .any(|c| tokens(&buf[c.clone()]).any(|t| t.eq_ignore_ascii_case(n)))
            })
    }
}

/// Parses a response head at the start of `buf`: `Ok(None)` while it is incomplete (and
/// under [`MAX_RESPONSE_HEAD`]). `head_request` says the request was HEAD, whose response
/// has no body whatever it says.
pub(crate) fn parse_response(
    buf: &[u8],
    head_request: bool,
    spare: &mut Spare,
) -> Result<Option<ResponseHead>, BadHead> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(BadHead("response head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(BadHead("too many response fields")),
        Err(_) => return Err(BadHead("malformed response head")),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(BadHead("response head too large"));
    }
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(BadHead("bad status"));
    }
    let http10 = resp.version == Some(0);
    let base = buf.as_ptr() as usize;
    // Where a slice httparse handed back lies in `buf` (an empty one may lie elsewhere).
    let at = |s: &[u8]| {
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        match start.checked_add(s.len()) {
            Some(end) if end <= buf.len() => start..end,
            _ => 0..0,
        }
    };
    let mut fields = std::mem::take(&mut spare.fields);
    fields.clear();
    let mut connection = std::mem::take(&mut spare.connection);
    connection.clear();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    let mut upgrade = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if value.contains(&0) {
            return Err(BadHead("NUL in a field value"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let n = parse_length(t).ok_or(BadHead("bad Content-Length"))?;
                if length.is_some_and(|m| m != n) {
                    return Err(BadHead("differing Content-Length values"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for t in tokens(value) {
                if chunked || !t.eq_ignore_ascii_case(b"chunked") {
                    return Err(BadHead("Transfer-Encoding other than chunked"));
                }
                chunked = true;
            }
            if !chunked {
                return Err(BadHead("empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
            connection.push(at(value));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = Some(at(value));
        }
        fields.push((at(name), at(value)));
    }
    if chunked && length.is_some() {
        return Err(BadHead("Content-Length with Transfer-Encoding"));
    }
    if http10 && chunked {
        return Err(BadHead("chunked in an HTTP/1.0 response"));
    }
    let delimit = if head_request || status < 200 || status == 204 || status == 304 {
        Delimit::None
    } else if chunked {
        Delimit::Framed(BodyIn::Chunked(Chunked::new()))
    } else if let Some(n) = length {
        Delimit::Framed(if n == 0 {
            BodyIn::Done
        } else {
            BodyIn::Length(n)
        })
    } else {
        close = true;
        Delimit::Close
    };
    Ok(Some(ResponseHead {
        status,
        len,
        delimit,
        close,
        length,
        upgrade,
        fields,
        connection,
    }))
}

/// A Content-Length value: ASCII digits only, no sign, no overflow.
fn parse_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    t.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Takes response body bytes out of `rd` by `delimit`: the bytes (possibly none) and
/// whether the body is complete. A close-delimited body is complete only at the
/// upstream's end of stream, which the caller sees.
pub(crate) fn take_body(
    delimit: &mut Delimit,
    rd: &mut BytesMut,
    max: usize,
) -> Result<(Bytes, bool), &'static str> {
    match delimit {
        Delimit::None => Ok((Bytes::new(), true)),
        Delimit::Framed(body) => body.take(rd, max).map_err(|e| e.0),
        Delimit::Close => {
            let n = rd.len().min(max);
            Ok((rd.split_to(n).freeze(), false))
        }
    }
}

/// How a request body goes to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// Appends body `data` to `out` in `framing`; `end` closes a chunked body.
pub(crate) fn frame_body(out: &mut Vec<u8>, framing: ReqFraming, data: &[u8], end: bool) {
    match framing {
        ReqFraming::Chunked => {
            if !data.is_empty() {
                let mut hex = [0u8; 16];
                let mut i = hex.len();
                let mut n = data.len();
                loop {
                    i -= 1;
                    hex[i] = b"0123456789abcdef"[n & 15];
                    n >>= 4;
                    if n == 0 {
                        break;
                    }
                }
                out.extend_from_slice(&hex[i..]);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            if end {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        _ => out.extend_from_slice(data),
    }
}

/// Writes one field line, unless its value could split the head (a value the daemon
/// took from elsewhere than a parsed head).
pub(crate) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return;
    }
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ResponseHead>, BadHead> {
        parse_response(text.as_bytes(), false, &mut Spare::default())
    }

    #[test]
    fn framing_is_read_from_the_head() {
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.delimit, Delimit::Framed(BodyIn::Length(5)));
        assert_eq!(h.len, 38);
        assert!(!h.close);
        let h = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.delimit, Delimit::Framed(BodyIn::Chunked(_))));
        let h = parse("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.delimit, Delimit::Close);
        assert!(h.close);
        let h = parse("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.delimit, Delimit::None);
        let h = parse("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.delimit, Delimit::None);
        let h = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            true,
            &mut Spare::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.delimit, Delimit::None);
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.length, Some(3));
        let h = parse("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        let h = parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.close);
        let h = parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        assert_eq!(parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"), Ok(None));
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n",
            "HTTP/1.1 099 Odd\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was taken");
        }
        let big = format!("HTTP/1.1 200 OK\r\nX-A: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse(&big).is_err());
        let many: String = (0..MAX_FIELDS + 1)
            .map(|i| format!("X-{i}: a\r\n"))
            .collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_dropped() {
        let text = "HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: 1\r\n\
                    Keep-Alive: timeout=5\r\nTrailer: X-T\r\nTE: trailers\r\nUpgrade: x\r\n\
                    Proxy-Connection: keep-alive\r\nContent-Length: 0\r\nX-Kept: 2\r\n\r\n";
        let h = parse(text).unwrap().unwrap();
        let kept: Vec<_> = h.fields(text.as_bytes()).collect();
        assert_eq!(kept, vec![(&b"X-Kept"[..], &b"2"[..])]);
    }

    #[test]
    fn close_delimited_and_chunked_bodies_are_taken() {
        let mut rd = BytesMut::from(&b"5\r\nhello\r\n0\r\n\r\n"[..]);
        let mut d = Delimit::Framed(BodyIn::Chunked(Chunked::new()));
        let (a, done) = take_body(&mut d, &mut rd, usize::MAX).unwrap();
        assert_eq!((&a[..], done), (&b"hello"[..], false));
        let (a, done) = take_body(&mut d, &mut rd, usize::MAX).unwrap();
        assert_eq!((&a[..], done), (&b""[..], true));
        let mut rd = BytesMut::from(&b"abc"[..]);
        let mut d = Delimit::Close;
        let (a, done) = take_body(&mut d, &mut rd, usize::MAX).unwrap();
        assert_eq!((&a[..], done), (&b"abc"[..], false));
    }

    #[test]
    fn chunks_are_framed_for_the_upstream() {
        let mut out = Vec::new();
        frame_body(&mut out, ReqFraming::Chunked, &[b'a'; 26], false);
        frame_body(&mut out, ReqFraming::Chunked, b"", true);
        assert_eq!(
            out,
            [&b"1a\r\n"[..], &[b'a'; 26], b"\r\n0\r\n\r\n"].concat()
        );
    }

    proptest::proptest! {
        #[test]
        fn no_response_head_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_response(&bytes, false, &mut Spare::default());
            let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
            text.extend_from_slice(&bytes);
            if let Ok(Some(h)) = parse_response(&text, false, &mut Spare::default()) {
                let _ = h.fields(&text).count();
            }
        }
    }
}
