//! The byte-level checks behind [`parse_head`](super::parse_head): the request-target, line
//! ends, header lines, and the checks on the complete head.

use portshare_router::{Reason, Version};

use super::{Body, Head, HeadError, Headers};

pub(super) const REQUEST_TOO_LONG: HeadError = HeadError::new(
    400,
    Reason::RequestLength,
    "request line and headers longer than MaxRequestBytes",
);
pub(super) const OBS_FOLD: HeadError = HeadError::new(
    400,
    Reason::Header,
    "header line starts with whitespace (obs-fold)",
);
const BARE_CR: HeadError = HeadError::new(400, Reason::InvalidCrLf, "CR not followed by LF");
const FIELD_TOO_LONG: HeadError = HeadError::new(
    400,
    Reason::FieldLength,
    "header field longer than MaxFieldLength",
);

/// Scans the request-target from `start` to the space after it, over the whole buffer
/// (not only the first MaxRequestBytes): `Some(index of the space)`, or `None` for more.
pub(super) fn scan_target(
    buf: &[u8],
    start: usize,
    field: usize,
) -> Result<Option<usize>, HeadError> {
    let mut i = start;
    while let Some(&b) = buf.get(i) {
        match b {
            b' ' if i == start => {
                return Err(HeadError::new(
                    400,
                    Reason::BadRequest,
                    "empty request-target (two spaces after the method)",
                ));
            }
            b' ' => return Ok(Some(i)),
            b'\n' => return Err(NO_VERSION),
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Err(NO_VERSION),
                    Some(_) => Err(BARE_CR),
                };
            }
            // As routing answers: whitespace breaks the request line, other control bytes
            // are a bad URL.
            b'\t' => {
                return Err(HeadError::new(
                    400,
                    Reason::BadRequest,
                    "whitespace inside the request-target",
                ));
            }
            0..0x20 | 0x7F => {
                return Err(HeadError::new(
                    400,
                    Reason::Url,
                    "control byte in the request-target",
                ));
            }
            _ => {}
        }
        i += 1;
        if i - start > field {
            return Err(HeadError::new(
                414,
                Reason::UrlLength,
                "request-target longer than MaxFieldLength",
            ));
        }
    }
    Ok(None)
}

const NO_VERSION: HeadError =
    HeadError::new(400, Reason::BadRequest, "request line has no version");

/// Finds the end of the line starting at `from`: `Some((end of content, start of next
/// line))`, or `None` for more. A CR must be followed by LF.
pub(super) fn line_end(view: &[u8], from: usize) -> Result<Option<(usize, usize)>, HeadError> {
    let mut i = from;
    while let Some(&b) = view.get(i) {
        match b {
            b'\n' => return Ok(Some((i, i + 1))),
            b'\r' => {
                return match view.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i, i + 2))),
                    Some(_) => Err(BARE_CR),
                };
            }
            _ => i += 1,
        }
    }
    Ok(None)
}

/// Checks the header line starting at `start`: `Some(start of the next line)`, or `None`
/// for more. The line is checked byte by byte, so a partial line fails as the whole would.
pub(super) fn scan_field(
    view: &[u8],
    start: usize,
    field: usize,
) -> Result<Option<usize>, HeadError> {
    let mut i = start;
    loop {
        let Some(&b) = view.get(i) else {
            return Ok(None);
        };
        match b {
            b':' if i == start => {
                return Err(HeadError::new(400, Reason::Header, "empty header name"));
            }
            b':' => break,
            b'\r' | b'\n' => {
                return Err(HeadError::new(
                    400,
                    Reason::Header,
                    "header line without ':'",
                ));
            }
            _ if !is_tchar(b) => {
                return Err(HeadError::new(
                    400,
                    Reason::Header,
                    "header name is not a token",
                ));
            }
            _ => {}
        }
        i += 1;
        if i - start > field {
            return Err(FIELD_TOO_LONG);
        }
    }
    let name_len = i - start;
    i += 1;
    while let Some(b' ' | b'\t') = view.get(i) {
        i += 1;
    }
    let value_start = i;
    while let Some(&b) = view.get(i) {
        match b {
            b'\n' => return Ok(Some(i + 1)),
            b'\r' => {
                return match view.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(i + 2)),
                    Some(_) => Err(BARE_CR),
                };
            }
            b' ' | b'\t' => {}
            0..0x20 | 0x7F => {
                return Err(HeadError::new(
                    400,
                    Reason::Header,
                    "control character in a header value",
                ));
            }
            // Trailing whitespace is not counted, so only a byte that is not whitespace can
            // take the field over the limit.
            _ if name_len + (i + 1 - value_start) > field => return Err(FIELD_TOO_LONG),
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

/// The checks on the complete head: Host, body framing, Connection, Expect.
pub(super) fn interpret<'a>(
    method: &'a [u8],
    target: &'a [u8],
    version: Version,
    fields: &'a [u8],
) -> Result<Head<'a>, HeadError> {
    let mut host = None;
    let mut length = None;
    let mut chunked = false;
    let (mut close, mut keep) = (false, false);
    let mut expect_continue = false;
    for (name, value) in (Headers { rest: fields }) {
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                // HTTP.sys would join the two into `a, b`, which is no host.
                return Err(HeadError::new(
                    400,
                    Reason::Hostname,
                    "more than one Host header",
                ));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|&b| b == b',') {
                let n = parse_length(trim_ows(item)).ok_or(HeadError::new(
                    400,
                    Reason::Number,
                    "Content-Length is not a number",
                ))?;
                if length.is_some_and(|m| m != n) {
                    return Err(HeadError::new(
                        400,
                        Reason::Header,
                        "Content-Length values differ",
                    ));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::new(
                    501,
                    Reason::NotImplemented,
                    "Transfer-Encoding other than one chunked",
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for item in value.split(|&b| b == b',').map(trim_ows) {
                close |= item.eq_ignore_ascii_case(b"close");
                keep |= item.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body = match (length, chunked) {
        (Some(_), true) => {
            return Err(HeadError::new(
                400,
                Reason::Header,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (None, true) => Body::Chunked,
        (Some(n), false) => Body::Length(n),
        (None, false) if version == Version::Http11 && matches!(method, b"POST" | b"PUT") => {
            return Err(HeadError::new(
                411,
                Reason::LengthRequired,
                "POST or PUT without Content-Length or chunked",
            ));
        }
        (None, false) => Body::None,
    };
    let http11 = version == Version::Http11;
    Ok(Head {
        method,
        target,
        version,
        fields,
        host,
        body,
        expect_continue: expect_continue && http11,
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing for
        // any HTTP/1.0 hop on the way; it is served, and the connection closed after it.
        keep_alive: !close && (http11 || (keep && !chunked)),
    })
}

/// `1*DIGIT` as a u64; `None` when empty, not digits, or too big.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Removes leading and trailing spaces and tabs.
pub(super) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    trim_ows_end(s)
}

/// Removes trailing spaces and tabs.
pub(super) fn trim_ows_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
