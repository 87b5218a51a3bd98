//! Request bodies as they arrive from the client: a Content-Length count or a chunked
//! decoder, taking body bytes out of the connection's read buffer without copying them.
//! `crate::relay` reads upstreams' response bodies with the same decoder, as strictly.
//!
//! # Chunk framing is strict
//!
//! The request head tolerates lines ended by LF alone, as HTTP.sys does (spec §3.4). The
//! chunked framing does not (RFC 9112 §7.1): every chunk-size line, the CRLF after each
//! chunk's data, every trailer line and the final blank line must end in CRLF, and each
//! trailer line must be a field line (`name: value`, the name a token, no control bytes
//! but tab in the value, no obs-fold). Anything else is 400: a body whose end two parsers
//! could find in different places is how a request is smuggled past a front end. The rest
//! follows RFC 9112 §7.1.1 loosely, as most servers do: spaces or tabs may follow the size,
//! and an extension is skipped up to the line end without parsing its grammar, though a
//! control byte in it (tab aside) is refused. Trailer fields are read, checked and dropped;
//! the application never sees them.

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
    /// After the data, expecting CR.
    DataEnd,
    /// After the data's CR, expecting LF.
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer field's name.
    TrailerName { seen: usize },
    /// After a trailer field's colon.
    TrailerValue { seen: usize },
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
                    b'\n' => return Err(BARE_LF),
                    _ => return Err(BadChunk("bad byte in chunk size")),
                },
                Chunked::Extension { seen, size } => match b {
                    b'\r' => Chunked::SizeLf { size },
                    b'\n' => return Err(BARE_LF),
                    _ if is_ctl(b) => return Err(BadChunk("control byte in a chunk extension")),
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
                    b'\n' => return Err(BARE_LF),
                    _ => return Err(BadChunk("chunk data longer than its size")),
                },
                Chunked::DataLf if b == b'\n' => Chunked::new(),
                Chunked::DataLf => return Err(BadChunk("CR without LF after chunk data")),
                Chunked::TrailerStart => match b {
                    b'\r' => Chunked::TrailerLf { blank: true },
                    b'\n' => return Err(BARE_LF),
                    b' ' | b'\t' => return Err(BadChunk("trailer line starts with whitespace")),
                    b':' => return Err(BadChunk("empty trailer field name")),
                    _ if is_tchar(b) => Chunked::TrailerName { seen: 1 },
                    _ => return Err(BadChunk("trailer field name is not a token")),
                },
                Chunked::TrailerName { seen } => match b {
                    b':' => Chunked::TrailerValue { seen: seen + 1 },
                    b'\r' | b'\n' => return Err(BadChunk("trailer line without ':'")),
                    _ if !is_tchar(b) => {
                        return Err(BadChunk("trailer field name is not a token"));
                    }
                    _ if seen >= MAX_LINE => return Err(BadChunk("trailer line too long")),
                    _ => Chunked::TrailerName { seen: seen + 1 },
                },
                Chunked::TrailerValue { seen } => match b {
                    b'\r' => Chunked::TrailerLf { blank: false },
                    b'\n' => return Err(BARE_LF),
                    _ if is_ctl(b) => return Err(BadChunk("control byte in a trailer value")),
                    _ if seen >= MAX_LINE => return Err(BadChunk("trailer line too long")),
                    _ => Chunked::TrailerValue { seen: seen + 1 },
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

const BARE_LF: BadChunk = BadChunk("chunk framing line ends in LF without CR");

/// A control byte other than tab: never part of an extension or a field value.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
    fn upper_hex_extensions_and_trailers() {
        let wire = b"A \t;name=\"a b\"\r\n0123456789\r\n0\r\nX-Sum: 1 2\r\nEmpty:\r\n\r\n";
        let (body, done, _) = decode(wire, 100, 100).unwrap();
        assert_eq!(body, b"0123456789");
        assert!(done);
    }

    /// (name, input): each refused, whatever the pieces it arrives in.
    #[rustfmt::skip]
    const BAD: &[(&str, &[u8])] = &[
        ("size_not_hex", b"x\r\n"),
        ("size_missing", b"\r\n"),
        ("data_longer_than_size", b"5\r\nhelloX"),
        ("cr_without_lf_after_size", b"5\rX"),
        ("size_too_large", b"ffffffffffffffff1\r\n"),
        // Regression: LF without CR was taken as a line end in the body's framing.
        ("lf_only_size_line", b"5\nhello\r\n0\r\n\r\n"),
        ("lf_only_extension_line", b"5;x\nhello\r\n0\r\n\r\n"),
        ("lf_only_after_data", b"5\r\nhello\n0\r\n\r\n"),
        ("lf_only_last_chunk", b"0\n\r\n"),
        ("lf_only_trailer", b"0\r\nX: y\n\r\n"),
        ("lf_only_final_line", b"0\r\n\n"),
        // Regression: a trailer line without a colon was skipped as if it were a field.
        ("trailer_without_colon", b"0\r\nnot a field\r\n\r\n"),
        ("trailer_name_only", b"0\r\nX-Sum\r\n\r\n"),
        ("trailer_empty_name", b"0\r\n: v\r\n\r\n"),
        ("trailer_space_before_colon", b"0\r\nX-Sum : v\r\n\r\n"),
        ("trailer_obs_fold", b"0\r\nX: a\r\n b\r\n\r\n"),
        ("trailer_control_byte", b"0\r\nX: a\x01b\r\n\r\n"),
        ("extension_control_byte", b"5;a\x00\r\nhello\r\n"),
        ("cr_without_lf_in_trailer", b"0\r\nX: y\rZ"),
    ];

    #[test]
    fn bad_framing_is_an_error() {
        for &(name, bad) in BAD {
            for step in [1, 3, 100] {
                assert!(decode(bad, step, 100).is_err(), "{name} step {step}");
            }
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let long = |prefix: &str, filler: u8, suffix: &str| {
            let mut wire = prefix.as_bytes().to_vec();
            wire.extend(std::iter::repeat_n(filler, MAX_LINE + 1));
            wire.extend_from_slice(suffix.as_bytes());
            wire
        };
        assert!(decode(&long("1;", b'a', "\r\nx\r\n"), 512, 100).is_err());
        assert!(decode(&long("0\r\nX:", b'a', "\r\n\r\n"), 512, 100).is_err());
        assert!(decode(&long("0\r\n", b'a', ": v\r\n\r\n"), 512, 100).is_err());
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
