//! The HTTP/1 request-head parser: from the bytes read so far to a checked request head, or
//! the response HTTP.sys would have answered with.
//!
//! # Why hand-written
//!
//! `httparse` was measured against the rules and left out. It gives different answers from
//! HTTP.sys where HTTP.sys is observed: it refuses `HTTP/1.2`…`HTTP/1.9` (HTTP.sys takes
//! them as 1.1) and cannot tell `HTTP/2.0` (505) from garbage (400). Its errors carry no
//! position, and its `Partial` says nothing about how far it got, so the limits (414 for a
//! long target even before the line ends, MaxRequestBytes while the head is still partial,
//! MaxFieldLength per field) would need a second scan anyway; and its header array must be
//! sized up front. One forward scan over the bytes is shorter than the wrapping would be.
//!
//! # How the scan decides
//!
//! The scan reads the head once, front to back, and every error is decided by the bytes
//! before it: the first bad byte wins, and an error seen in a prefix of the input is the
//! error of every longer input. So a connection loop can call [`parse_head`] again on its
//! growing buffer and never sees its verdict change. Checks that need the whole head (two
//! Content-Lengths, Transfer-Encoding, 411, a second Host) run once the blank line is in.
//!
//! Only the first MaxRequestBytes bytes are read, except the request-target: a target longer
//! than MaxFieldLength is 414 even when the request line has already passed MaxRequestBytes
//! (with the defaults, 16384 each, a 16385-byte target would otherwise never be 414).
//!
//! Nothing is allocated: the head keeps the checked header block and walks it again when
//! asked for a header; only [`Head::joined`] allocates, and only for a repeated header.

use core::fmt;
use std::borrow::Cow;
use std::iter::FusedIterator;

use portshare_router::{Reason, Rejection, RequestHead, Version, check_method};

use scan::{
    OBS_FOLD, REQUEST_TOO_LONG, interpret, line_end, scan_field, scan_target, trim_ows,
    trim_ows_end,
};

mod scan;
#[cfg(test)]
mod tests;

/// Size limits on a request head: HTTP.sys's `MaxRequestBytes` and `MaxFieldLength`.
///
/// HTTP.sys accepts 256 to 16777216 for `MaxRequestBytes` and 64 to 65534 for
/// `MaxFieldLength`; this type takes any value, so tests can use small ones.
///
/// # Examples
///
/// ```
/// use portshare_server::HeadLimits;
///
/// let mut limits = HeadLimits::default();
/// limits.max_field_length(65534).max_request_bytes(32768);
/// assert_eq!(limits.field_length(), 32768);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeadLimits {
    max_request_bytes: usize,
    max_field_length: usize,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            max_request_bytes: 16384,
            max_field_length: 16384,
        }
    }
}

impl HeadLimits {
    /// Most bytes of request line and headers together, the blank line included
    /// (`MaxRequestBytes`); above it the answer is 400 `RequestLength`. A smaller value also
    /// lowers the field length limit to it. Default: 16384.
    pub fn max_request_bytes(&mut self, n: usize) -> &mut Self {
        self.max_request_bytes = n;
        self
    }

    /// Longest header field, name and value without the colon and surrounding whitespace,
    /// and longest request-target (`MaxFieldLength`); above it the answer is 400
    /// `FieldLength`, or 414 `URL_Length` for the target. Default: 16384.
    pub fn max_field_length(&mut self, n: usize) -> &mut Self {
        self.max_field_length = n;
        self
    }

    /// The `MaxRequestBytes` in force.
    pub fn request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// The `MaxFieldLength` in force: the one set, lowered to `MaxRequestBytes` when that is
    /// smaller. Routing's URL limit ([`UrlOptions::max_url_length`]) should get this value.
    ///
    /// [`UrlOptions::max_url_length`]: portshare_router::UrlOptions::max_url_length
    pub fn field_length(&self) -> usize {
        self.max_field_length.min(self.max_request_bytes)
    }
}

/// What [`parse_head`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parsed<'a> {
    /// The head is not complete and nothing is wrong yet: read more bytes and parse again.
    Partial,
    /// The head is complete and passed every check.
    Complete {
        /// The request head, borrowing from the buffer.
        head: Head<'a>,
        /// Bytes the head took, its blank line included; the body (if any) starts here.
        len: usize,
    },
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Body {
    /// No body: neither Content-Length nor Transfer-Encoding.
    None,
    /// A body of exactly this many bytes (`Content-Length`).
    Length(u64),
    /// A chunked body (`Transfer-Encoding: chunked`), to be de-chunked before delivery.
    Chunked,
}

/// A checked request head, borrowing from the buffer it was parsed from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    method: &'a [u8],
    target: &'a [u8],
    version: Version,
    /// The header lines and the blank line, exactly as received and already checked.
    fields: &'a [u8],
    host: Option<&'a [u8]>,
    body: Body,
    expect_continue: bool,
    keep_alive: bool,
}

impl<'a> Head<'a> {
    /// The method as sent: `get` and `xyzzy` are kept as they are (unknown verbs).
    pub fn method(&self) -> &'a [u8] {
        self.method
    }

    /// The request-target exactly as received (HTTP.sys's raw URL), not canonicalized: it
    /// has no control bytes but may hold bytes of 0x80 and above.
    pub fn target(&self) -> &'a [u8] {
        self.target
    }

    /// The version; `HTTP/1.2` to `HTTP/1.9` are [`Version::Http11`].
    pub fn version(&self) -> Version {
        self.version
    }

    /// The headers in the order received, as (name, value) with the value's surrounding
    /// spaces and tabs removed; repeated headers come once per line.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.fields }
    }

    /// The first value of the header `name` (compared case-insensitively).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The header `name` as HTTP.sys delivers it: the values of all its lines joined with
    /// `", "`. Borrowed when the header appears once.
    ///
    /// # Examples
    ///
    /// ```
    /// use portshare_server::{HeadLimits, Parsed, parse_head};
    ///
    /// let buf = b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept: b\r\n\r\n";
    /// let Parsed::Complete { head, .. } = parse_head(buf, &HeadLimits::default())? else {
    ///     return Err("incomplete".into());
    /// };
    /// assert_eq!(head.joined(b"Accept").as_deref(), Some(&b"a, b"[..]));
    /// assert_eq!(head.joined(b"Range"), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn joined(&self, name: &[u8]) -> Option<Cow<'a, [u8]>> {
        let mut values = self
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = Vec::with_capacity(first.len() + 2 + second.len());
        joined.extend_from_slice(first);
        for value in core::iter::once(second).chain(values) {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value);
        }
        Some(Cow::Owned(joined))
    }

    /// The Host header's value, `None` when there is none (a second Host is refused).
    pub fn host(&self) -> Option<&'a [u8]> {
        self.host
    }

    /// How the body is framed.
    pub fn body(&self) -> Body {
        self.body
    }

    /// The client sent `Expect: 100-continue` in an HTTP/1.1 request and waits for
    /// `100 Continue` before its body. HTTP/1.0 requests never expect it (RFC 9110 §10.1.1
    /// says to ignore it there); other Expect values are left to the application.
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    /// The client asks to keep the connection: HTTP/1.1 unless `Connection: close`,
    /// HTTP/1.0 only with `Connection: keep-alive` (and no `close`) and no
    /// `Transfer-Encoding`: an HTTP/1.0 request with a chunked body is served, then the
    /// connection closes (RFC 9112 §6.1).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// What routing needs from this head.
    pub fn request_head(&self) -> RequestHead<'a> {
        RequestHead::new(self.method, self.target, self.version, self.host)
    }
}

impl fmt::Debug for Head<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Head")
            .field("method", &Escaped(self.method))
            .field("target", &Escaped(self.target))
            .field("version", &self.version)
            .field("headers", &self.headers())
            .field("body", &self.body)
            .field("expect_continue", &self.expect_continue)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

/// The headers of a [`Head`], in order: see [`Head::headers`].
#[derive(Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // The block was checked by the scan: every line but the blank one has a colon.
        let newline = self.rest.iter().position(|&b| b == b'\n')?;
        let (line, rest) = self.rest.split_at(newline);
        self.rest = rest.get(1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            self.rest = &[];
            return None;
        };
        let (name, value) = line.split_at(colon);
        Some((name, trim_ows(value.get(1..).unwrap_or_default())))
    }
}

impl FusedIterator for Headers<'_> {}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.clone().map(|(n, v)| (Escaped(n), Escaped(v))))
            .finish()
    }
}

/// A request head HTTP.sys would refuse, with the response it would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeadError {
    rejection: Rejection,
    detail: &'static str,
}

impl HeadError {
    /// The status and httperr reason to answer with; the connection is closed after it.
    pub fn rejection(&self) -> Rejection {
        self.rejection
    }

    /// What was wrong, in a few words, for logs.
    pub fn detail(&self) -> &'static str {
        self.detail
    }

    const fn new(status: u16, reason: Reason, detail: &'static str) -> HeadError {
        HeadError {
            rejection: Rejection { status, reason },
            detail,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rejection, self.detail)
    }
}

impl std::error::Error for HeadError {}

/// Parses the request head at the start of `buf`.
///
/// Call it again with the longer buffer after [`Parsed::Partial`]; the verdict on bytes
/// already seen never changes. Bytes after the head (the body, a pipelined request) are left
/// alone. The request-target is not canonicalized: routing does that.
///
/// Each call scans from the start of `buf`. Since skipping a call can only delay a verdict,
/// never change it, a loop fed a few bytes at a time may call again only once the new bytes
/// hold a LF or the buffer has passed `MaxRequestBytes` or `MaxFieldLength`.
///
/// # Errors
///
/// A [`HeadError`] with HTTP.sys's answer, among them: 400 `RequestLength` when the head
/// passes `MaxRequestBytes` (also while partial), 414 `URL_Length` for a target longer than
/// `MaxFieldLength`, 400 `FieldLength`, 400 `Verb`, 505 `Version_N/S`, 400 `Header`,
/// 400 `Number`, 501 `N/I` for a Transfer-Encoding other than `chunked`, 411
/// `LengthRequired`. The crate documentation lists the rules.
pub fn parse_head<'a>(buf: &'a [u8], limits: &HeadLimits) -> Result<Parsed<'a>, HeadError> {
    let max = limits.request_bytes();
    let field = limits.field_length();
    // Everything but the request-target is read only up to MaxRequestBytes.
    let view = buf.get(..max).unwrap_or(buf);
    let more = || {
        if buf.len() > max {
            Err(REQUEST_TOO_LONG)
        } else {
            Ok(Parsed::Partial)
        }
    };

    // RFC 9112 §2.2: empty lines before the request line (a stray CRLF after a body) are
    // skipped; they count towards MaxRequestBytes.
    let mut start = 0;
    loop {
        match view.get(start..).unwrap_or_default() {
            [b'\n', ..] => start += 1,
            [b'\r', b'\n', ..] => start += 2,
            [] | [b'\r'] => return more(),
            _ => break,
        }
    }

    let rest = view.get(start..).unwrap_or_default();
    let space = rest.iter().position(|&b| b == b' ');
    let method = rest.get(..space.unwrap_or(rest.len())).unwrap_or_default();
    if space.is_some() || !method.is_empty() {
        check_method(method).map_err(|r| HeadError {
            rejection: r,
            detail: "method is empty or not a token",
        })?;
    }
    let Some(space) = space else { return more() };

    let target_start = start + space + 1;
    let Some(target_end) = scan_target(buf, target_start, field)? else {
        return Ok(Parsed::Partial);
    };
    if target_end >= max {
        return Err(REQUEST_TOO_LONG);
    }
    let target = buf.get(target_start..target_end).unwrap_or_default();

    let version_start = target_end + 1;
    let Some((version_end, mut pos)) = line_end(view, version_start)? else {
        return more();
    };
    let version = view.get(version_start..version_end).unwrap_or_default();
    let version = Version::parse(trim_ows_end(version)).map_err(|r| HeadError {
        rejection: r,
        detail: if r.status == 505 {
            "HTTP version 2 or above in a text request line"
        } else {
            "malformed HTTP version"
        },
    })?;

    let fields_start = pos;
    let len = loop {
        match view.get(pos..).unwrap_or_default() {
            [b'\n', ..] => break pos + 1,
            [b'\r', b'\n', ..] => break pos + 2,
            [] | [b'\r'] => return more(),
            [b' ' | b'\t', ..] => return Err(OBS_FOLD),
            _ => match scan_field(view, pos, field)? {
                Some(next) => pos = next,
                None => return more(),
            },
        }
    };

    let fields = view.get(fields_start..len).unwrap_or_default();
    let head = interpret(method, target, version, fields)?;
    Ok(Parsed::Complete { head, len })
}

/// Bytes shown as an escaped string in `Debug`.
struct Escaped<'a>(&'a [u8]);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}
