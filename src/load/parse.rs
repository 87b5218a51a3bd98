//! The generator's HTTP/1.1 response parser: the head (status, framing, `Connection:
//! close`, `Retry-After`) through `httparse`, and a chunked-body decoder that consumes what
//! it is given. Pure functions over buffers: the bytes are the server's, so every path ends
//! in a value or [`Malformed`], never a panic.

use bytes::{Buf, BytesMut};

/// The most bytes a response head may take.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may have.
const MAX_FIELDS: usize = 64;
/// The longest chunk-size line or trailer line.
const MAX_LINE: usize = 4096;

/// The response does not parse as HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the connection closes.
    UntilClose,
}

/// A response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Bytes the head takes in the buffer.
    pub(crate) len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The server closes the connection after this response.
    pub(crate) close: bool,
    /// A `Retry-After` field came with it.
    pub(crate) retry_after: bool,
}

/// Parses the head at the start of `buf`: `Ok(None)` until it is all there.
pub(crate) fn head(buf: &[u8]) -> Result<Option<Head>, Malformed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Malformed("a response head over 64 KiB"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many header fields")),
        Err(_) => return Err(Malformed("not an HTTP/1.1 response head")),
    };
    let status = response.code.unwrap_or(0);
    let http10 = response.version == Some(0);
    let mut close = http10;
    let mut retry_after = false;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for f in response.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(f.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Malformed("a Content-Length that is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed("two different Content-Length fields"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else leaves the length unknown.
            chunked = last_token(f.value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in f.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = true;
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        len,
        status,
        framing,
        close: close || framing == Framing::UntilClose,
        retry_after,
    }))
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// A chunked body being read: feed it the buffer as bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Chunked {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// In a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// In the trailer section.
    Trailers,
    /// Past the last CRLF.
    Done,
}

impl Chunked {
    /// Consumes what it can of `buf`: `Ok(true)` once the body has ended (the bytes after
    /// it stay in `buf`), `Ok(false)` when it needs more.
    pub(crate) fn advance(&mut self, buf: &mut BytesMut) -> Result<bool, Malformed> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(false);
                    };
                    let line = &buf[..end];
                    let digits = line
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(Malformed("a chunk size that is not a number"));
                    }
                    let mut size = 0u64;
                    for &d in digits {
                        let v = (d as char)
                            .to_digit(16)
                            .ok_or(Malformed("a chunk size that is not a number"))?;
                        size = size * 16 + u64::from(v);
                    }
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    let take = left.min(buf.len() as u64);
                    buf.advance(take as usize);
                    if take < left {
                        *self = Chunked::Data(left - take);
                        return Ok(false);
                    }
                    *self = Chunked::DataEnd;
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(false);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        *self = Chunked::Done;
                    }
                }
                Chunked::Done => return Ok(true),
            }
        }
    }
}

/// Where the CRLF ending the line at the start of `buf` is, once it is there.
fn line_end(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= MAX_LINE => Ok(Some(end)),
        Some(_) => Err(Malformed("a line of the chunked body over 4 KiB")),
        None if buf.len() > MAX_LINE => Err(Malformed("a line of the chunked body over 4 KiB")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Head {
        head(text.as_bytes()).expect("parses").expect("complete")
    }

    #[test]
    fn heads() {
        let h = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(
            (h.status, h.framing, h.close, h.len),
            (200, Framing::Length(5), false, 38)
        );
        let h = parsed(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!((h.status, h.close, h.retry_after), (503, true, true));
        let h = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = parsed("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n");
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        let h = parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(h.close);
        let h = parsed("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.close);
        let h = parsed("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
        let h = parsed("HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(head(b""), Ok(None));
    }

    #[test]
    fn malformed_heads() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(head(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "A: b\r\n".repeat(65));
        assert!(head(many.as_bytes()).is_err());
        assert!(head(&vec![b'a'; MAX_HEAD]).is_err());
    }

    fn body(chunks: &[&[u8]]) -> (Result<bool, Malformed>, BytesMut) {
        let mut c = Chunked::default();
        let mut buf = BytesMut::new();
        let mut last = Ok(false);
        for part in chunks {
            buf.extend_from_slice(part);
            // Once the body has ended, what follows is left alone.
            if last == Ok(false) {
                last = c.advance(&mut buf);
            }
        }
        (last, buf)
    }

    #[test]
    fn chunked_bodies_in_any_cut() {
        let whole: &[u8] = b"5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\nNEXT";
        for cut in 0..whole.len() {
            let (done, rest) = body(&[&whole[..cut], &whole[cut..]]);
            assert_eq!(done, Ok(true), "cut at {cut}");
            assert_eq!(&rest[..], b"NEXT", "cut at {cut}");
        }
        let (done, _) = body(&[b"5\r\nhel"]);
        assert_eq!(done, Ok(false));
        for bad in [
            &b"z\r\n"[..],
            b"5\r\nhelloXX",
            b"1234567890123456\r\n",
            &[b'1'; 5000],
        ] {
            assert!(body(&[bad]).0.is_err(), "{bad:?}");
        }
    }

    /// A fixed pseudo-random stream, so the garbage is the same on every run.
    fn garbage(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly bytes that matter to the parser, some of anything.
                let pick = b"HTTP/1.1 200\r\n:;0123456789abcdefABCDEF chunked Content-Length";
                if x.is_multiple_of(4) {
                    x as u8
                } else {
                    pick[(x >> 8) as usize % pick.len()]
                }
            })
            .collect()
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0..2000u64 {
            let g = garbage(seed, (seed % 300) as usize);
            let _ = head(&g);
            let mut prefixed = b"HTTP/1.1 200 OK\r\n".to_vec();
            prefixed.extend_from_slice(&g);
            let _ = head(&prefixed);
            let mut c = Chunked::default();
            let mut buf = BytesMut::from(&g[..]);
            for _ in 0..3 {
                if c.advance(&mut buf).is_err() {
                    break;
                }
                buf.extend_from_slice(&g[..g.len() / 2]);
            }
        }
    }
}
