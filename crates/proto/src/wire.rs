//! The worker wire: how requests travel from the daemon to an attached worker and responses
//! come back, on the Unix socket a worker upgraded from a control connection.
//!
//! The protocol (the attach and its versions, every frame, the heads' encodings, windows,
//! resets, drain, opaque streams, errors and limits) is specified in
//! `docs/worker-protocol.md`, written for an SDK in any language. This module is its byte
//! layout: the one place frames are encoded and decoded, for the daemon and the SDK alike.
//!
//! # Why a framing of its own
//!
//! A worker holds many requests at once (its slots), and the daemon gains most when one
//! system call carries many of them. HTTP/2 does that but pays for HPACK, its own flow
//! control and a stream state machine on both ends; pipelined HTTP/1.1 cannot interleave
//! bodies. This framing is the least that does the job: each frame names its stream, so any
//! number of requests and their bodies share one socket in any order, and a reader parses a
//! whole read's worth of frames in one pass without copying payloads (they are `Bytes`
//! slices of the read buffer).
//!
//! # Frames
//!
//! A 10-byte header (payload length, stream id, [`Kind`], flags with [`END`]) and a payload
//! of at most [`MAX_PAYLOAD`]. A receiver judges each frame by its header ([`peek`]) before
//! the payload is in, so a peer cannot make it set room aside for bytes it would refuse: an
//! unknown kind, a length over [`MAX_PAYLOAD`], a window or reset payload other than 4
//! bytes or a drain with a payload is a [`WireError`], and the connection closes. Heads are
//! [`RequestHead`] and [`ResponseHead`]; each direction of a stream starts with
//! [`INITIAL_WINDOW`] of body credit; [`ResetCode`] says why a stream was reset.
//!
//! # Versions
//!
//! A worker offers the versions it speaks in the attach's `Upgrade` ([`offer`]); the
//! daemon takes the highest in common ([`negotiate`]) and names it in its `101`
//! ([`chosen`]). Version 2 adds opaque streams: after a `101` head, data frames carry a
//! connection's raw bytes both ways under the same windows.

use crate::gather::Gather;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use core::fmt;

/// The `Upgrade` token of version 1 of the wire, which every daemon speaks.
pub const UPGRADE_PROTOCOL: &str = "portshare-worker/1";

/// The name of the wire's `Upgrade` tokens, `portshare-worker/N` for version N.
pub const PROTOCOL_NAME: &str = "portshare-worker";

/// The versions of the wire this crate speaks, highest first.
///
/// - 1: requests and responses;
/// - 2: as 1, and opaque streams: a `101` answer to a request that asked to upgrade its
///   connection turns the stream into a two-way byte stream (`docs/worker-protocol.md`).
pub const VERSIONS: &[u32] = &[2, 1];

/// The `Upgrade` value offering every version in [`VERSIONS`], highest first:
/// `portshare-worker/2, portshare-worker/1`.
pub fn offer() -> String {
    VERSIONS
        .iter()
        .map(|v| format!("{PROTOCOL_NAME}/{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The version an `Upgrade` value names, for one of its comma-separated tokens:
/// `portshare-worker/N` (the name compared case-insensitively, N decimal without sign).
fn token_version(token: &str) -> Option<u32> {
    let (name, v) = token.trim().split_once('/')?;
    if !name.eq_ignore_ascii_case(PROTOCOL_NAME) || v.is_empty() || v.len() > 9 {
        return None;
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The version both sides speak: the highest of those `offered` (the worker's `Upgrade`
/// value, a comma-separated list in any order) that is also in `spoken`. Tokens that are
/// not `portshare-worker/N`, and versions not in `spoken`, are ignored, so a worker may
/// offer versions newer than a daemon knows. `None` when nothing is in common.
pub fn negotiate(offered: &str, spoken: &[u32]) -> Option<u32> {
    offered
        .split(',')
        .filter_map(token_version)
        .filter(|v| spoken.contains(v))
        .max()
}

/// The version a daemon chose, from the `Upgrade` value of its `101` answer: exactly one
/// token, one of the versions `offered`.
pub fn chosen(answer: &str, offered: &[u32]) -> Option<u32> {
    let v = token_version(answer)?;
    offered.contains(&v).then_some(v)
}

/// The header in which a worker declares how many requests it will hold at once.
pub const SLOTS_HEADER: &str = "portshare-slots";

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 10;

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 1 << 24;

/// Body bytes each direction of a stream may send before the peer grants more.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Largest payload of a response head frame (status and headers, encoded). The daemon
/// disconnects a worker that sends a larger one; the SDK refuses to send one.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The flag bit marking the end of a stream's body in one direction.
pub const END: u8 = 1;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A request or response head.
    Head,
    /// Body bytes.
    Data,
    /// More body credit.
    Window,
    /// The stream ends at once.
    Reset,
    /// The worker takes no new requests; or, from the daemon, the daemon is stopping.
    Drain,
}

impl Kind {
    fn to_u8(self) -> u8 {
        match self {
            Kind::Head => 1,
            Kind::Data => 2,
            Kind::Window => 3,
            Kind::Reset => 4,
            Kind::Drain => 5,
        }
    }

    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Head,
            2 => Kind::Data,
            3 => Kind::Window,
            4 => Kind::Reset,
            5 => Kind::Drain,
            _ => return None,
        })
    }
}

/// Why a stream was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResetCode {
    /// Daemon → worker: the client went away or a timer fired; stop working on it.
    Cancel,
    /// Worker → daemon: abort the client's connection without a response.
    Abort,
    /// Either way: the peer broke the protocol on this stream.
    Protocol,
}

impl ResetCode {
    /// The code's number on the wire.
    pub fn to_u32(self) -> u32 {
        match self {
            ResetCode::Cancel => 0,
            ResetCode::Abort => 1,
            ResetCode::Protocol => 2,
        }
    }

    /// The code for a number, unknown numbers taken as [`ResetCode::Abort`].
    pub fn from_u32(n: u32) -> ResetCode {
        match n {
            0 => ResetCode::Cancel,
            2 => ResetCode::Protocol,
            _ => ResetCode::Abort,
        }
    }
}

/// One decoded frame. Payloads are slices of the read buffer, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request or response head; decode it with [`RequestHead::decode`] or
    /// [`ResponseHead::decode`].
    Head {
        /// The stream.
        stream: u32,
        /// No body follows.
        end: bool,
        /// The encoded head.
        payload: Bytes,
    },
    /// Body bytes.
    Data {
        /// The stream.
        stream: u32,
        /// The last body bytes of this direction.
        end: bool,
        /// The bytes.
        data: Bytes,
    },
    /// More credit for the body this side sends on `stream`.
    Window {
        /// The stream.
        stream: u32,
        /// Bytes granted.
        credit: u32,
    },
    /// The stream ends at once.
    Reset {
        /// The stream.
        stream: u32,
        /// Why.
        code: ResetCode,
    },
    /// The worker takes no new requests; or, from the daemon, the daemon is stopping.
    Drain,
}

/// A frame that could not be decoded: the peer does not speak this protocol, and the
/// connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(&'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker wire: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// A frame's header, read before its payload has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes that follow the header.
    pub len: usize,
    /// The stream.
    pub stream: u32,
    /// What the frame is.
    pub kind: Kind,
    /// The `END` flag.
    pub end: bool,
}

impl FrameHeader {
    /// Bytes of the whole frame, header and payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len
    }

    /// The frame this header starts, with its payload.
    ///
    /// # Errors
    ///
    /// When `payload` is not [`FrameHeader::len`] bytes long.
    pub fn with_payload(self, payload: Bytes) -> Result<Frame, WireError> {
        if payload.len() != self.len {
            return Err(WireError("payload length differs from the header's"));
        }
        let stream = self.stream;
        let end = self.end;
        let word = |p: &Bytes| -> Result<u32, WireError> {
            <[u8; 4]>::try_from(&p[..])
                .map(u32::from_le_bytes)
                .map_err(|_| WireError("window or reset payload is not 4 bytes"))
        };
        Ok(match self.kind {
            Kind::Head => Frame::Head {
                stream,
                end,
                payload,
            },
            Kind::Data => Frame::Data {
                stream,
                end,
                data: payload,
            },
            Kind::Window => Frame::Window {
                stream,
                credit: word(&payload)?,
            },
            Kind::Reset => Frame::Reset {
                stream,
                code: ResetCode::from_u32(word(&payload)?),
            },
            Kind::Drain => Frame::Drain,
        })
    }
}

/// Reads the header at the front of `buf` without taking anything: `None` while fewer than
/// [`HEADER_LEN`] bytes are there.
///
/// # Errors
///
/// An unknown kind, a payload longer than [`MAX_PAYLOAD`], a window or reset payload other
/// than 4 bytes, or a drain with a payload: the peer does not speak this protocol.
pub fn peek(buf: &[u8]) -> Result<Option<FrameHeader>, WireError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError("frame longer than the largest payload"));
    }
    let kind = Kind::from_u8(h[8]).ok_or(WireError("unknown frame kind"))?;
    match kind {
        Kind::Window | Kind::Reset if len != 4 => {
            return Err(WireError("window or reset payload is not 4 bytes"));
        }
        Kind::Drain if len != 0 => return Err(WireError("drain frame with a payload")),
        _ => {}
    }
    Ok(Some(FrameHeader {
        len,
        stream: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        kind,
        end: h[9] & END != 0,
    }))
}

/// Takes the next whole frame off the front of `buf`, or `None` when more bytes are needed.
///
/// Room for a frame's payload is not set aside here: a caller that wants its buffer to
/// grow to a frame announced by [`peek`] reserves it once it accepts the header.
///
/// # Errors
///
/// As [`peek`]: the peer does not speak this protocol.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    let Some(header) = peek(buf)? else {
        return Ok(None);
    };
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    header
        .with_payload(buf.split_to(header.len).freeze())
        .map(Some)
}

fn put_header(buf: &mut BytesMut, len: usize, stream: u32, kind: Kind, end: bool) {
    debug_assert!(len <= MAX_PAYLOAD);
    buf.put_u32_le(len as u32);
    buf.put_u32_le(stream);
    buf.put_u8(kind.to_u8());
    buf.put_u8(if end { END } else { 0 });
}

/// Appends a data frame. Bodies longer than [`MAX_PAYLOAD`] are split by the caller.
pub fn encode_data(buf: &mut BytesMut, stream: u32, end: bool, data: &[u8]) {
    buf.reserve(HEADER_LEN + data.len());
    put_header(buf, data.len(), stream, Kind::Data, end);
    buf.put_slice(data);
}

/// Appends a data frame whose payload is `data` itself, not a copy when it is large
/// ([`Gather::put_bytes`]).
pub fn gather_data(out: &mut Gather, stream: u32, end: bool, data: Bytes) {
    put_header(out.tail(), data.len(), stream, Kind::Data, end);
    out.put_bytes(data);
}

/// Appends a window frame granting `credit` more bytes.
pub fn encode_window(buf: &mut BytesMut, stream: u32, credit: u32) {
    put_header(buf, 4, stream, Kind::Window, false);
    buf.put_u32_le(credit);
}

/// Appends a reset frame.
pub fn encode_reset(buf: &mut BytesMut, stream: u32, code: ResetCode) {
    put_header(buf, 4, stream, Kind::Reset, true);
    buf.put_u32_le(code.to_u32());
}

/// Appends a drain frame.
pub fn encode_drain(buf: &mut BytesMut) {
    put_header(buf, 0, 0, Kind::Drain, false);
}

/// The HTTP version of a request, as the worker should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1 (and 1.2–1.9, which HTTP.sys serves as 1.1).
    Http11,
}

/// A request head on the wire: method, the target the worker sees (cooked path re-encoded,
/// then `?` and the raw query), version and headers, the `portshare-*` metadata among them.
///
/// Payload: version (1 byte: 0 = 1.0, 1 = 1.1), then method, target and each header's name
/// and value as a u32 length and the bytes, after a u32 header count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as the client sent it.
    pub method: Bytes,
    /// Path and query.
    pub target: Bytes,
    /// The version.
    pub version: Version,
    /// Header names (as sent) and values, in order.
    pub headers: Vec<(Bytes, Bytes)>,
}

/// Writes a request head frame from borrowed parts, without building a [`RequestHead`].
#[derive(Debug)]
pub struct RequestHeadWriter<'b> {
    buf: &'b mut BytesMut,
    start: usize,
    count_at: usize,
    count: u32,
}

impl<'b> RequestHeadWriter<'b> {
    /// Starts a request head frame on `stream`; `end` when the request has no body.
    pub fn new(
        buf: &'b mut BytesMut,
        stream: u32,
        end: bool,
        method: &[u8],
        target: &[u8],
        version: Version,
    ) -> RequestHeadWriter<'b> {
        let start = buf.len();
        put_header(buf, 0, stream, Kind::Head, end);
        buf.put_u8(match version {
            Version::Http10 => 0,
            Version::Http11 => 1,
        });
        put_field(buf, method);
        put_field(buf, target);
        let count_at = buf.len();
        buf.put_u32_le(0);
        RequestHeadWriter {
            buf,
            start,
            count_at,
            count: 0,
        }
    }

    /// Adds a header.
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        put_field(self.buf, name);
        put_field(self.buf, value);
        self.count += 1;
        self
    }

    /// Finishes the frame: patches its length and header count.
    pub fn finish(self) {
        finish_head(self.buf, self.start, self.count_at, self.count);
    }
}

/// Patches a head frame's payload length (the rest of its header was right from the
/// start) and header count in place.
fn finish_head(buf: &mut BytesMut, start: usize, count_at: usize, count: u32) {
    let len = buf.len() - start - HEADER_LEN;
    debug_assert!(len <= MAX_PAYLOAD);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
}

fn put_field(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u32_le(bytes.len() as u32);
    buf.put_slice(bytes);
}

struct Reader {
    payload: Bytes,
}

impl Reader {
    fn u8(&mut self) -> Result<u8, WireError> {
        if self.payload.is_empty() {
            return Err(WireError("head ends early"));
        }
        Ok(self.payload.get_u8())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        if self.payload.len() < 2 {
            return Err(WireError("head ends early"));
        }
        Ok(self.payload.get_u16_le())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        if self.payload.len() < 4 {
            return Err(WireError("head ends early"));
        }
        Ok(self.payload.get_u32_le())
    }

    fn field(&mut self) -> Result<Bytes, WireError> {
        let n = self.u32()? as usize;
        if self.payload.len() < n {
            return Err(WireError("head field longer than the frame"));
        }
        Ok(self.payload.split_to(n))
    }

    fn headers(&mut self) -> Result<Vec<(Bytes, Bytes)>, WireError> {
        let n = self.u32()? as usize;
        // Each header takes at least 8 bytes; a count beyond that is a lie.
        if n > self.payload.len() / 8 {
            return Err(WireError("header count larger than the frame"));
        }
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            headers.push((self.field()?, self.field()?));
        }
        if !self.payload.is_empty() {
            return Err(WireError("bytes after the last header"));
        }
        Ok(headers)
    }
}

impl RequestHead {
    /// Decodes the payload of a head frame sent by the daemon.
    pub fn decode(payload: Bytes) -> Result<RequestHead, WireError> {
        let mut r = Reader { payload };
        let version = match r.u8()? {
            0 => Version::Http10,
            1 => Version::Http11,
            _ => return Err(WireError("unknown HTTP version")),
        };
        let method = r.field()?;
        let target = r.field()?;
        let headers = r.headers()?;
        Ok(RequestHead {
            method,
            target,
            version,
            headers,
        })
    }

    /// Appends this head as a frame.
    pub fn encode(&self, buf: &mut BytesMut, stream: u32, end: bool) {
        let mut w =
            RequestHeadWriter::new(buf, stream, end, &self.method, &self.target, self.version);
        for (n, v) in &self.headers {
            w.header(n, v);
        }
        w.finish();
    }
}

/// A response head on the wire: the status and the headers.
///
/// Payload: the status as u16, then a u32 header count and each header's name and value as
/// a u32 length and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code, 100–999 (1xx responses other than 101 are not sent on the wire).
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl ResponseHead {
    /// Decodes the payload of a head frame sent by a worker.
    pub fn decode(payload: Bytes) -> Result<ResponseHead, WireError> {
        let mut r = Reader { payload };
        let status = r.u16()?;
        if !(100..=999).contains(&status) {
            return Err(WireError("status outside 100..=999"));
        }
        let headers = r.headers()?;
        Ok(ResponseHead { status, headers })
    }

    /// The payload length a response head with these headers encodes to, whatever its
    /// status: what to check against [`MAX_RESPONSE_HEAD`] before sending it.
    pub fn payload_len<'h>(headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>) -> usize {
        headers
            .into_iter()
            .fold(2 + 4, |n, (name, value)| n + 8 + name.len() + value.len())
    }

    /// Appends a response head frame from borrowed parts.
    pub fn encode_parts<'h>(
        buf: &mut BytesMut,
        stream: u32,
        end: bool,
        status: u16,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    ) {
        let start = buf.len();
        put_header(buf, 0, stream, Kind::Head, end);
        buf.put_u16_le(status);
        let count_at = buf.len();
        buf.put_u32_le(0);
        let mut count = 0;
        for (n, v) in headers {
            put_field(buf, n);
            put_field(buf, v);
            count += 1;
        }
        finish_head(buf, start, count_at, count);
    }

    /// Appends this head as a frame.
    pub fn encode(&self, buf: &mut BytesMut, stream: u32, end: bool) {
        ResponseHead::encode_parts(
            buf,
            stream,
            end,
            self.status,
            self.headers.iter().map(|(n, v)| (&n[..], &v[..])),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = decode(buf).expect("valid frames") {
            out.push(f);
        }
        out
    }

    #[test]
    fn round_trip_every_kind() {
        let req = RequestHead {
            method: Bytes::from_static(b"POST"),
            target: Bytes::from_static(b"/app/x?y=1"),
            version: Version::Http11,
            headers: vec![
                (Bytes::from_static(b"Host"), Bytes::from_static(b"a")),
                (
                    Bytes::from_static(b"portshare-request-id"),
                    Bytes::from_static(b"7"),
                ),
            ],
        };
        let resp = ResponseHead {
            status: 201,
            headers: vec![(
                Bytes::from_static(b"content-length"),
                Bytes::from_static(b"2"),
            )],
        };
        let mut buf = BytesMut::new();
        req.encode(&mut buf, 3, false);
        encode_data(&mut buf, 3, true, b"hi");
        resp.encode(&mut buf, 3, false);
        encode_window(&mut buf, 3, 1000);
        encode_reset(&mut buf, 9, ResetCode::Abort);
        encode_drain(&mut buf);
        let frames = all(&mut buf);
        assert!(buf.is_empty());
        let Frame::Head {
            stream: 3,
            end: false,
            payload,
        } = frames[0].clone()
        else {
            panic!("{:?}", frames[0]);
        };
        assert_eq!(RequestHead::decode(payload), Ok(req));
        assert_eq!(
            frames[1],
            Frame::Data {
                stream: 3,
                end: true,
                data: Bytes::from_static(b"hi")
            }
        );
        let Frame::Head { payload, .. } = frames[2].clone() else {
            panic!()
        };
        assert_eq!(ResponseHead::decode(payload), Ok(resp));
        assert_eq!(
            frames[3],
            Frame::Window {
                stream: 3,
                credit: 1000
            }
        );
        assert_eq!(
            frames[4],
            Frame::Reset {
                stream: 9,
                code: ResetCode::Abort
            }
        );
        assert_eq!(frames[5], Frame::Drain);
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        encode_data(&mut whole, 1, false, b"hello");
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut part), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut);
        }
    }

    #[test]
    fn peek_reads_the_header_alone() {
        let mut buf = BytesMut::new();
        encode_data(&mut buf, 7, true, &[0; 100]);
        let want = FrameHeader {
            len: 100,
            stream: 7,
            kind: Kind::Data,
            end: true,
        };
        for cut in 0..buf.len() {
            let got = peek(&buf[..cut]).expect("a valid header");
            assert_eq!(got, (cut >= HEADER_LEN).then_some(want), "cut at {cut}");
        }
        assert_eq!(want.frame_len(), buf.len());
        let mut empty = BytesMut::new();
        encode_drain(&mut empty);
        assert_eq!(peek(&empty).unwrap().map(|h| h.kind), Some(Kind::Drain));
    }

    /// A header announcing a large payload costs its receiver nothing until it accepts it.
    #[test]
    fn a_partial_frame_reserves_nothing() {
        let mut buf = BytesMut::with_capacity(64);
        put_header(&mut buf, MAX_PAYLOAD, 1, Kind::Data, false);
        buf.put_slice(b"first bytes");
        let before = buf.capacity();
        assert_eq!(decode(&mut buf), Ok(None));
        assert_eq!(buf.capacity(), before);
        assert_eq!(peek(&buf).unwrap().map(|h| h.len), Some(MAX_PAYLOAD));
    }

    #[test]
    fn fixed_size_payloads_are_checked_at_the_header() {
        // (kind, payload length, valid)
        let cases = [
            (Kind::Window, 4, true),
            (Kind::Window, 0, false),
            (Kind::Window, 5, false),
            (Kind::Window, MAX_PAYLOAD, false),
            (Kind::Reset, 4, true),
            (Kind::Reset, 3, false),
            (Kind::Drain, 0, true),
            (Kind::Drain, 1, false),
            (Kind::Head, MAX_PAYLOAD, true),
            (Kind::Data, MAX_PAYLOAD + 1, false),
            (Kind::Head, MAX_PAYLOAD + 1, false),
        ];
        for (kind, len, valid) in cases {
            let mut buf = BytesMut::new();
            put_header(&mut buf, len.min(MAX_PAYLOAD), 1, kind, false);
            buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
            assert_eq!(peek(&buf).is_ok(), valid, "{kind:?} of {len} bytes");
        }
    }

    #[test]
    fn a_payload_must_match_its_header() {
        let header = FrameHeader {
            len: 3,
            stream: 1,
            kind: Kind::Data,
            end: false,
        };
        assert!(header.with_payload(Bytes::from_static(b"ab")).is_err());
        assert_eq!(
            header.with_payload(Bytes::from_static(b"abc")),
            Ok(Frame::Data {
                stream: 1,
                end: false,
                data: Bytes::from_static(b"abc")
            })
        );
    }

    #[test]
    fn a_response_heads_length_is_known_before_encoding() {
        let headers: [(&[u8], &[u8]); 3] =
            [(b"a", b"1"), (b"content-type", b"text/plain"), (b"x", b"")];
        let mut buf = BytesMut::new();
        ResponseHead::encode_parts(&mut buf, 1, true, 200, headers);
        assert_eq!(ResponseHead::payload_len(headers), buf.len() - HEADER_LEN);
        assert_eq!(ResponseHead::payload_len([]), 6);
    }

    #[test]
    fn the_highest_common_version_wins() {
        assert_eq!(offer(), "portshare-worker/2, portshare-worker/1");
        assert_eq!(negotiate(&offer(), VERSIONS), Some(2));
        assert_eq!(negotiate("portshare-worker/1", VERSIONS), Some(1));
        // Order, case and spaces do not matter; unknown tokens and versions are ignored.
        assert_eq!(
            negotiate(" PortShare-Worker/1 ,portshare-worker/2", VERSIONS),
            Some(2)
        );
        assert_eq!(
            negotiate(
                "websocket, portshare-worker/9, portshare-worker/1",
                VERSIONS
            ),
            Some(1)
        );
        assert_eq!(negotiate("portshare-worker/2", &[1]), None);
        for bad in [
            "",
            "portshare-worker",
            "portshare-worker/",
            "portshare-worker/+1",
            "portshare-worker/1.0",
            "portshare-worker/99999999999999999999",
            "other/1",
            ",,,",
        ] {
            assert_eq!(negotiate(bad, VERSIONS), None, "{bad:?}");
        }
        assert_eq!(chosen("portshare-worker/2", &[2, 1]), Some(2));
        assert_eq!(chosen("portshare-worker/3", &[2, 1]), None);
        assert_eq!(
            chosen("portshare-worker/2, portshare-worker/1", &[2, 1]),
            None
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0][..]);
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 0, 77, 0][..]);
        assert!(decode(&mut buf).is_err());
        assert!(RequestHead::decode(Bytes::from_static(&[1, 9, 0, 0, 0])).is_err());
        assert!(
            RequestHead::decode(Bytes::from_static(&[
                1, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255
            ]))
            .is_err()
        );
        assert!(ResponseHead::decode(Bytes::from_static(&[20, 0, 0, 0, 0, 0])).is_err());
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = RequestHead::decode(Bytes::from(bytes.clone()));
            let _ = ResponseHead::decode(Bytes::from(bytes.clone()));
            let _ = decode(&mut BytesMut::from(&bytes[..]));
        }
    }
}
