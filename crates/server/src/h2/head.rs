//! A stream's decoded header list rebuilt as the HTTP/1.1 head the daemon's parser knows,
//! so both protocols meet the same limits and checks.

use http::header::{CONTENT_LENGTH, COOKIE, HOST};
use portshare_router::{Reason, Rejection};

/// Rebuilds the decoded header list as the HTTP/1.1 head the daemon's parser and
/// everything after it know: `METHOD :path HTTP/1.1`, Host first (the `:authority`, or
/// the Host header of a request without one), cookies joined into one field, the other
/// fields as sent. A body without a `Content-Length` is marked chunked, and a bodiless
/// request with neither gets `Content-Length: 0`, so the parser frames it as HTTP/2 did
/// (the marking never reaches an application: `Transfer-Encoding` does not pass).
pub(super) fn rebuild(parts: &http::request::Parts, has_body: bool) -> Result<Vec<u8>, Rejection> {
    let bad = |reason| Rejection {
        status: 400,
        reason,
    };
    let target = parts
        .uri
        .path_and_query()
        .ok_or(bad(Reason::BadRequest))?
        .as_str();
    let mut raw = Vec::with_capacity(256 + target.len());
    raw.extend_from_slice(parts.method.as_str().as_bytes());
    raw.push(b' ');
    raw.extend_from_slice(target.as_bytes());
    raw.extend_from_slice(b" HTTP/1.1\r\n");
    let hosts = parts.headers.get_all(HOST);
    match parts.uri.authority() {
        Some(authority) => {
            // RFC 9113 §8.3.1: a Host that names another entity than :authority is
            // malformed.
            if hosts.iter().any(|h| {
                !h.as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            }) {
                return Err(bad(Reason::Hostname));
            }
            raw.extend_from_slice(b"host: ");
            raw.extend_from_slice(authority.as_str().as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        None => {
            for h in hosts {
                raw.extend_from_slice(b"host: ");
                raw.extend_from_slice(h.as_bytes());
                raw.extend_from_slice(b"\r\n");
            }
        }
    }
    let mut cookies = parts.headers.get_all(COOKIE).iter();
    if let Some(first) = cookies.next() {
        raw.extend_from_slice(b"cookie: ");
        raw.extend_from_slice(first.as_bytes());
        for c in cookies {
            raw.extend_from_slice(b"; ");
            raw.extend_from_slice(c.as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        if name == HOST || name == COOKIE {
            continue;
        }
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(CONTENT_LENGTH) {
        if has_body {
            raw.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
            raw.extend_from_slice(b"content-length: 0\r\n");
        }
    }
    raw.extend_from_slice(b"\r\n");
    Ok(raw)
}
