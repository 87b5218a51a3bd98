//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in front
//! of the daemon writes at the start of each connection to say who the client is.
//!
//! This module owns the header's parser ([`parse`]: pure, over any bytes), reading it off a
//! socket without taking a byte past its end ([`read`]), and which listening addresses ask
//! for it ([`required`]). It must not route, nor judge the header's addresses: the client
//! address it yields is what applications and the error log are told, while routing keeps
//! the socket's own local address (spec §2.3).
//!
//! On a listener that requires the header, a connection without a valid one is closed:
//! the protocol forbids guessing whether a header is there. What is accepted:
//!
//! - v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN ...\r\n`, at most
//!   107 bytes, addresses in their family's plain form, ports decimal;
//! - v2: the 12-byte signature, version 2, command `LOCAL` (a health check: the socket's
//!   own addresses stand) or `PROXY`, family `INET`/`INET6` over `STREAM` (any other
//!   family stands for the socket's addresses, as `UNKNOWN` does), TLVs skipped, at most
//!   [`MAX_LEN`] bytes in all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::errlog;
use crate::shared::Shared;

/// The v2 signature.
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's prefix.
const V1: &[u8; 6] = b"PROXY ";
/// The longest v1 header, CRLF included.
pub(crate) const MAX_V1: usize = 107;
/// The longest header read, of either version: a v2 header's TLVs beyond it are refused.
pub(crate) const MAX_LEN: usize = 4096;

/// What a header says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// The balancer's own connection (v2 `LOCAL`), or one whose addresses it does not
    /// tell (v1 `UNKNOWN`, v2 `UNSPEC` or `UNIX`): the socket's addresses stand.
    Unknown,
    /// A proxied TCP connection: the client's address, and the one it reached.
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

impl Header {
    /// The client address the connection's requests carry: the header's source, else the
    /// socket's peer.
    pub(crate) fn client(self, peer: SocketAddr) -> SocketAddr {
        match self {
            Header::Unknown => peer,
            Header::Tcp { source, .. } => {
                SocketAddr::new(source.ip().to_canonical(), source.port())
            }
        }
    }
}

/// How far a buffer gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A valid start; `end` is the header's length once known (v2, after 16 bytes).
    Partial { end: Option<usize> },
    /// A header of `len` bytes.
    Complete { header: Header, len: usize },
}

/// Why bytes are no PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    Signature,
    V1TooLong,
    V1Syntax,
    V2Command,
    V2TooLong,
    V2Short,
    Ended,
    Io,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::Signature => "no PROXY protocol signature",
            Invalid::V1TooLong => "PROXY v1 line longer than 107 bytes",
            Invalid::V1Syntax => "malformed PROXY v1 line",
            Invalid::V2Command => "PROXY v2 version or command unknown",
            Invalid::V2TooLong => "PROXY v2 header longer than 4096 bytes",
            Invalid::V2Short => "PROXY v2 address block too short for its family",
            Invalid::Ended => "the connection ended inside the PROXY header",
            Invalid::Io => "reading the PROXY header failed",
        })
    }
}

/// Parses the header at the start of `buf` (bytes after it are left alone).
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, Invalid> {
    let n = buf.len().min(SIG.len());
    if buf[..n] == SIG[..n] {
        return if n < SIG.len() {
            Ok(Parsed::Partial { end: None })
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1.len());
    if buf[..n] == V1[..n] {
        return if n < V1.len() {
            Ok(Parsed::Partial { end: None })
        } else {
            parse_v1(buf)
        };
    }
    Err(Invalid::Signature)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Invalid> {
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_V1 {
            Err(Invalid::V1TooLong)
        } else {
            Ok(Parsed::Partial { end: None })
        };
    };
    let line = window[..lf].strip_suffix(b"\r").ok_or(Invalid::V1Syntax)?;
    let line = std::str::from_utf8(&line[V1.len()..]).map_err(|_| Invalid::V1Syntax)?;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        // The rest of the line is the sender's business (the spec lets it say anything).
        Some("UNKNOWN") => Header::Unknown,
        Some(family @ ("TCP4" | "TCP6")) => {
            let v4 = family == "TCP4";
            let mut ip = || -> Result<IpAddr, Invalid> {
                let text = fields.next().ok_or(Invalid::V1Syntax)?;
                let ip: IpAddr = if v4 {
                    IpAddr::V4(text.parse::<Ipv4Addr>().map_err(|_| Invalid::V1Syntax)?)
                } else {
                    IpAddr::V6(text.parse::<Ipv6Addr>().map_err(|_| Invalid::V1Syntax)?)
                };
                Ok(ip)
            };
            let (src, dst) = (ip()?, ip()?);
            let mut port = || -> Result<u16, Invalid> {
                let text = fields.next().ok_or(Invalid::V1Syntax)?;
                // Decimal digits only, no sign, no leading zero but for 0 itself.
                let plain = !text.is_empty()
                    && text.len() <= 5
                    && text.bytes().all(|b| b.is_ascii_digit())
                    && (text == "0" || !text.starts_with('0'));
                if !plain {
                    return Err(Invalid::V1Syntax);
                }
                text.parse().map_err(|_| Invalid::V1Syntax)
            };
            let (sport, dport) = (port()?, port()?);
            if fields.next().is_some() {
                return Err(Invalid::V1Syntax);
            }
            Header::Tcp {
                source: SocketAddr::new(src, sport),
                destination: SocketAddr::new(dst, dport),
            }
        }
        _ => return Err(Invalid::V1Syntax),
    };
    Ok(Parsed::Complete {
        header,
        len: lf + 1,
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Invalid> {
    if buf.len() > 12 && buf[12] >> 4 != 2 {
        return Err(Invalid::V2Command);
    }
    let local = match buf.get(12).map(|b| b & 0x0f) {
        None => return Ok(Parsed::Partial { end: None }),
        Some(0) => true,
        Some(1) => false,
        Some(_) => return Err(Invalid::V2Command),
    };
    let Some(&[family, hi, lo]) = buf.get(13..16) else {
        return Ok(Parsed::Partial { end: None });
    };
    let end = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if end > MAX_LEN {
        return Err(Invalid::V2TooLong);
    }
    let Some(block) = buf.get(16..end) else {
        return Ok(Parsed::Partial { end: Some(end) });
    };
    let stream = family & 0x0f == 1;
    let header = match family >> 4 {
        _ if local => Header::Unknown,
        1 if stream => {
            let a: [u8; 12] = block
                .get(..12)
                .ok_or(Invalid::V2Short)?
                .try_into()
                .map_err(|_| Invalid::V2Short)?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            Header::Tcp {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
            }
        }
        2 if stream => {
            let a: [u8; 36] = block
                .get(..36)
                .ok_or(Invalid::V2Short)?
                .try_into()
                .map_err(|_| Invalid::V2Short)?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Header::Tcp {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            }
        }
        // UNSPEC, UNIX, datagrams, families to come: the socket's addresses stand.
        _ => Header::Unknown,
    };
    Ok(Parsed::Complete { header, len: end })
}

/// Reads the header at the start of `tcp`, and not one byte more: what follows (a TLS
/// ClientHello, a request head) is left in the socket for whoever reads next. Bytes are
/// looked at with `MSG_PEEK` and taken only up to the header's end as far as it is known,
/// so every read is of header bytes. The caller bounds the time (`HeaderWait`).
pub(crate) async fn read(tcp: &mut TcpStream) -> Result<Header, Invalid> {
    let mut buf = vec![0u8; MAX_LEN];
    let mut have = 0;
    loop {
        let seen = match tcp.peek(&mut buf[have..]).await {
            Ok(0) => return Err(Invalid::Ended),
            Ok(n) => have + n,
            Err(_) => return Err(Invalid::Io),
        };
        let take = match parse(&buf[..seen])? {
            Parsed::Complete { len, .. } => len,
            Parsed::Partial { end: Some(end) } => end.min(seen),
            // Everything seen is header: v1 has not reached its LF, v2 not its length.
            Parsed::Partial { end: None } => seen,
        };
        if tcp.read_exact(&mut buf[have..take]).await.is_err() {
            return Err(Invalid::Io);
        }
        have = take;
        if let Parsed::Complete { header, .. } = parse(&buf[..have])? {
            return Ok(header);
        }
        if have >= MAX_LEN {
            return Err(Invalid::V2TooLong);
        }
    }
}

/// Reads the header of a connection to a PROXY listener under `HeaderWait` (counted from
/// the accept; a timer that fires writes one `Timer_HeaderWait` line, as for a head). The
/// client address its requests carry, or `None` when the connection is to be closed: no
/// valid header (logged at debug), the timer, or the daemon stopping.
pub(crate) async fn accept(
    shared: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<SocketAddr> {
    let settings = shared.settings.load_full();
    let until = settings.timers.header_wait.fires_at(Instant::now());
    let stop = shared.stop.notified();
    tokio::pin!(stop);
    stop.as_mut().enable();
    if shared.stopping() {
        return None;
    }
    let read = tokio::select! {
        r = timeout_at(until, read(tcp)) => r,
        () = &mut stop => return None,
    };
    match read {
        Ok(Ok(header)) => Some(header.client(peer)),
        Ok(Err(error)) => {
            tracing::debug!(%error, "proxy protocol: connection closed");
            None
        }
        Err(_) => {
            errlog::Entry {
                client: peer,
                local,
                version: None,
                method: None,
                uri: None,
                status: None,
                reason: portshare_router::Reason::TimerHeaderWait,
                queue: None,
            }
            .emit(&settings.errlog);
            None
        }
    }
}

/// Whether a connection that reached `local` must start with a header: some `[[listener]]`
/// address with `proxy_protocol` has its port and either its IP or the wildcard of its
/// family. The connection's own local address is judged, not the socket's bound one, so
/// an entry for `127.0.0.2:80` covers what reaches 127.0.0.2 through a `0.0.0.0:80`
/// socket, and an entry for `0.0.0.0:80` covers every IPv4 address on port 80.
pub(crate) fn required(entries: &[SocketAddr], local: SocketAddr) -> bool {
    let ip = local.ip().to_canonical();
    entries.iter().any(|e| {
        e.port() == local.port()
            && (e.ip().to_canonical() == ip
                || (e.ip().is_unspecified() && e.ip().is_ipv4() == ip.is_ipv4()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = SIG.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn tcp(src: &str, dst: &str) -> Header {
        Header::Tcp {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    #[test]
    fn v1_lines_parse_and_bytes_after_them_are_left() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Ok(Parsed::Complete {
                header: tcp("192.0.2.1:56324", "198.51.100.2:443"),
                len: 45,
            })
        );
        let line = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
        assert_eq!(
            parse(line),
            Ok(Parsed::Complete {
                header: tcp("[2001:db8::1]:1", "[::1]:65535"),
                len: line.len(),
            })
        );
        let line = b"PROXY UNKNOWN whatever follows\r\n";
        assert_eq!(
            parse(line),
            Ok(Parsed::Complete {
                header: Header::Unknown,
                len: line.len()
            })
        );
        assert_eq!(parse(b"PROX"), Ok(Parsed::Partial { end: None }));
        assert_eq!(parse(b"PROXY TCP4 1.2"), Ok(Parsed::Partial { end: None }));
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(Invalid::V1Syntax),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 100]].concat();
        assert_eq!(parse(&long), Err(Invalid::V1TooLong));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Invalid::Signature));
        assert_eq!(parse(b"\x16\x03\x01"), Err(Invalid::Signature));
    }

    #[test]
    fn v2_headers_parse_with_tlvs_skipped() {
        let mut block = vec![192, 0, 2, 1, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb];
        block.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a NOOP TLV
        let h = v2(1, 0x11, &block);
        assert_eq!(
            parse(&[&h[..], b"rest"].concat()),
            Ok(Parsed::Complete {
                header: tcp("192.0.2.1:56324", "10.0.0.1:443"),
                len: h.len(),
            })
        );
        let mut block = [0u8; 36];
        block[15] = 1;
        block[31] = 2;
        block[32..36].copy_from_slice(&[0, 80, 1, 0]);
        assert_eq!(
            parse(&v2(1, 0x21, &block)),
            Ok(Parsed::Complete {
                header: tcp("[::1]:80", "[::2]:256"),
                len: 52,
            })
        );
        // LOCAL: the addresses, if any, are not the client's.
        assert_eq!(
            parse(&v2(0, 0x11, &[1; 12])),
            Ok(Parsed::Complete {
                header: Header::Unknown,
                len: 28
            })
        );
        assert_eq!(
            parse(&v2(1, 0x00, &[])),
            Ok(Parsed::Complete {
                header: Header::Unknown,
                len: 16
            })
        );
        assert_eq!(parse(&h[..20]), Ok(Parsed::Partial { end: Some(h.len()) }));
        assert_eq!(parse(&h[..14]), Ok(Parsed::Partial { end: None }));
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        let mut h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x11; // version 1
        assert_eq!(parse(&h), Err(Invalid::V2Command));
        assert_eq!(parse(&v2(2, 0x11, &[0; 12])), Err(Invalid::V2Command));
        assert_eq!(parse(&v2(1, 0x11, &[0; 11])), Err(Invalid::V2Short));
        assert_eq!(parse(&v2(1, 0x21, &[0; 35])), Err(Invalid::V2Short));
        let mut h = SIG.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&h), Err(Invalid::V2TooLong));
    }

    #[test]
    fn listeners_match_their_address_or_their_wildcard() {
        let entries: Vec<SocketAddr> = ["127.0.0.2:80", "0.0.0.0:443", "[::1]:8080"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let at = |s: &str| required(&entries, s.parse().unwrap());
        assert!(at("127.0.0.2:80"));
        assert!(at("[::ffff:127.0.0.2]:80"));
        assert!(!at("127.0.0.3:80"));
        assert!(!at("127.0.0.2:81"));
        assert!(at("127.0.0.9:443"));
        assert!(!at("[::1]:443"));
        assert!(at("[::1]:8080"));
        assert!(!at("127.0.0.1:8080"));
    }

    #[tokio::test]
    async fn read_takes_the_header_and_leaves_the_rest() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            // In pieces, the second one carrying bytes past the header.
            c.write_all(b"PROXY TCP4 192.0").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            c.write_all(b".2.7 10.0.0.1 1000 80\r\nGET").await.unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        let h = read(&mut s).await.unwrap();
        assert_eq!(h, tcp("192.0.2.7:1000", "10.0.0.1:80"));
        let mut rest = [0u8; 3];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET");
        drop(client.await.unwrap());
    }

    proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn no_v2_like_input_panics(tail in proptest::collection::vec(any::<u8>(), 0..120)) {
            let input = [&SIG[..], &tail].concat();
            if let Ok(Parsed::Complete { len, .. }) = parse(&input) {
                prop_assert!(len <= input.len());
            }
        }

        #[test]
        fn no_v1_like_input_panics(tail in "[A-Z0-9 .:\r\n]{0,120}") {
            let input = format!("PROXY {tail}");
            if let Ok(Parsed::Complete { len, .. }) = parse(input.as_bytes()) {
                prop_assert!(len <= input.len() && len <= MAX_V1);
            }
        }
    }
}
