//! Request bodies as they arrive from the client: a Content-Length count or a chunked
//! decoder, taking body bytes out of the connection's read buffer without copying them.

use bytes::{Bytes, BytesMut};

/// Longest chunk-size line (size, extensions) and trailer line accepted.
const MAX_LINE: usize = 4096;

/// The rest of a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyIn {
    /// Nothing (left) to read.
    Done,
    /// This many bytes to come.
    Length(u64),
    /// A chunked body, at this point of its framing.
    Chunked(Chunked),
}

/// The chunked decoder's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Reading the chunk size (hex digits so far, and their value).
    Size { digits: usize, value: u64 },
    /// Skipping a chunk extension up to the line end.
    Extension { seen: usize, size: u64 },
    /// After the size line's CR, expecting LF.
    SizeLf { size: u64 },
    /// Inside a chunk's data.
    Data(u64),
    /// After the data, expecting CR or LF.
    DataEnd,
    /// After the data's CR, expecting LF.
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer { seen: usize },
    /// After a trailer line's (or the blank line's) CR.
    TrailerLf { blank: bool },
}

/// A body the client framed wrongly; the connection cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadChunk(pub(crate) &'static str);

impl BodyIn {
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, BodyIn::Done)
    }

    /// Takes up to `max` body bytes out of `buf`. Returns the bytes (possibly empty) and
    /// whether the body is now complete. Framing bytes are consumed as they are met.
    pub(crate) fn take(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
    ) -> Result<(Bytes, bool), BadChunk> {
        match self {
            BodyIn::Done => Ok((Bytes::new(), true)),
            BodyIn::Length(left) => {
                let n = (*left).min(buf.len() as u64).min(max as u64) as usize;
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                let done = *left == 0;
                if done {
                    *self = BodyIn::Done;
                }
                Ok((data, done))
            }
            BodyIn::Chunked(state) => {
                let (data, done) = state.take(buf, max)?;
                if done {
                    *self = BodyIn::Done;
                }
                Ok((data, done))
            }
        }
    }
}

impl Chunked {
    pub(crate) fn new() -> Chunked {
        Chunked::Size {
            digits: 0,
            value: 0,
        }
    }

    fn take(&mut self, buf: &mut BytesMut, max: usize) -> Result<(Bytes, bool), BadChunk> {
        loop {
            if let Chunked::Data(left) = self {
                if buf.is_empty() || max == 0 {
                    return Ok((Bytes::new(), false));
                }
                let n = (*left).min(buf.len() as u64).min(max as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *self = Chunked::DataEnd;
                }
                return Ok((buf.split_to(n).freeze(), false));
            }
            let Some(&b) = buf.first() else {
                return Ok((Bytes::new(), false));
            };
            bytes::Buf::advance(buf, 1);
            *self = match *self {
                Chunked::Size { digits, value } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                        if digits >= 15 {
                            return Err(BadChunk("chunk size too large"));
                        }
                        Chunked::Size {
                            digits: digits + 1,
                            value: value * 16 + d,
                        }
                    }
                    _ if digits == 0 => return Err(BadChunk("chunk size missing")),
                    b';' | b' ' | b'\t' => Chunked::Extension {
                        seen: digits,
                        size: value,
                    },
                    b'\r' => Chunked::SizeLf { size: value },
                    b'\n' => Chunked::after_size(value),
                    _ => return Err(BadChunk("bad byte in chunk size")),
                },
                Chunked::Extension { seen, size } => match b {
                    b'\r' => Chunked::SizeLf { size },
                    b'\n' => Chunked::after_size(size),
                    _ if seen >= MAX_LINE => return Err(BadChunk("chunk extension too long")),
                    _ => Chunked::Extension {
                        seen: seen + 1,
                        size,
                    },
                },
                Chunked::SizeLf { size } if b == b'\n' => Chunked::after_size(size),
                Chunked::SizeLf { .. } => {
                    return Err(BadChunk("CR without LF in chunk size line"));
                }
                // Handled before a byte is taken.
                Chunked::Data(_) => return Err(BadChunk("decoder state")),
                Chunked::DataEnd => match b {
                    b'\r' => Chunked::DataLf,
                    b'\n' => Chunked::new(),
                    _ => return Err(BadChunk("chunk data longer than its size")),
                },
                Chunked::DataLf if b == b'\n' => Chunked::new(),
                Chunked::DataLf => return Err(BadChunk("CR without LF after chunk data")),
                Chunked::TrailerStart => match b {
                    b'\r' => Chunked::TrailerLf { blank: true },
                    b'\n' => return Ok((Bytes::new(), true)),
                    _ => Chunked::Trailer { seen: 1 },
                },
                Chunked::Trailer { seen } => match b {
                    b'\r' => Chunked::TrailerLf { blank: false },
                    b'\n' => Chunked::TrailerStart,
                    _ if seen >= MAX_LINE => return Err(BadChunk("trailer line too long")),
                    _ => Chunked::Trailer { seen: seen + 1 },
                },
                Chunked::TrailerLf { blank } if b == b'\n' => {
                    if blank {
                        return Ok((Bytes::new(), true));
                    }
                    Chunked::TrailerStart
                }
                Chunked::TrailerLf { .. } => return Err(BadChunk("CR without LF in trailer")),
            };
        }
    }

    fn after_size(size: u64) -> Chunked {
        if size == 0 {
            Chunked::TrailerStart
        } else {
            Chunked::Data(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns the body and whether it ended.
    fn decode(input: &[u8], step: usize, max: usize) -> Result<(Vec<u8>, bool, usize), BadChunk> {
        let mut body = BodyIn::Chunked(Chunked::new());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                let (data, done) = body.take(&mut buf, max)?;
                out.extend_from_slice(&data);
                if done {
                    return Ok((out, true, buf.len()));
                }
                if data.is_empty() {
                    break;
                }
            }
        }
        Ok((out, false, buf.len()))
    }

    #[test]
    fn chunked_in_any_pieces() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET";
        for step in 1..wire.len() {
            for max in [1, 3, 1024] {
                let (body, done, left) = decode(wire, step, max).unwrap();
                assert_eq!(body, b"hello world", "step {step} max {max}");
                assert!(done);
                assert!(left <= 3, "the next request stays in the buffer");
            }
        }
    }

    #[test]
    fn lf_only_and_upper_hex() {
        let (body, done, _) = decode(b"A\n0123456789\n0\n\n", 100, 100).unwrap();
        assert_eq!(body, b"0123456789");
        assert!(done);
    }

    #[test]
    fn bad_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX",
            b"5\rX",
            b"ffffffffffffffff1\r\n",
        ] {
            assert!(
                decode(bad, 100, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_bodies() {
        let mut body = BodyIn::Length(5);
        let mut buf = BytesMut::from(&b"helloGET"[..]);
        assert_eq!(
            body.take(&mut buf, 3).unwrap(),
            (Bytes::from_static(b"hel"), false)
        );
        assert_eq!(
            body.take(&mut buf, 9).unwrap(),
            (Bytes::from_static(b"lo"), true)
        );
        assert_eq!(&buf[..], b"GET");
        assert!(body.is_done());
    }
}
