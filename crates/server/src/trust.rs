//! Trusted proxies: the address ranges (`[[trusted_proxy]]`) whose `Forwarded` and
//! `X-Forwarded-For` headers the daemon believes, and the client address a request from
//! one of them stands for.
//!
//! This module owns the range matcher ([`Cidr`], a dozen lines: no crate needed for a mask
//! compare) and the walk along a forwarding chain ([`client`]). It must not decide what
//! applications receive of the headers themselves ([`headers`](crate::conn::headers)
//! strips them from everyone) nor touch routing: `X-Forwarded-Proto` changes what
//! applications are told, never the scheme a request is routed by (spec §2.2).
//!
//! A chain is walked from its right end, the hop nearest the daemon: each address in a
//! trusted range is a proxy and the walk goes on; the first address outside every range
//! is the client. An entry that is no address (`unknown`, an obfuscated `_name`) ends the
//! walk at the proxy that wrote it. IPv4-mapped IPv6 addresses are matched as IPv4.

use std::net::IpAddr;

use crate::head::Head;

/// An address range: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `ADDRESS/BITS` or `ADDRESS`; an IPv4-mapped range becomes its IPv4 one.
    pub(crate) fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => {
                let plain = !b.is_empty() && b.len() <= 3 && b.bytes().all(|c| c.is_ascii_digit());
                (a, Some(plain.then(|| b.parse::<u8>().ok()).flatten()?))
            }
            None => (text, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return None;
        }
        let (net, bits) = match net {
            IpAddr::V6(v6) if bits >= 96 && v6.to_ipv4_mapped().is_some() => {
                (net.to_canonical(), bits - 96)
            }
            _ => (net, bits),
        };
        Some(Cidr { net, bits })
    }

    /// Whether `ip` (IPv4-mapped taken as IPv4) is in the range.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let prefix = |a: u128, b: u128, width: u32| {
            let bits = u32::from(self.bits);
            bits == 0 || (a ^ b) >> (width - bits) == 0
        };
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix(u128::from(u32::from(n)), u128::from(u32::from(a)), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix(u128::from(n), u128::from(a), 128),
            _ => false,
        }
    }
}

/// The trusted ranges in force.
#[derive(Debug, Default, Clone)]
pub(crate) struct Trusted(Vec<Cidr>);

impl Trusted {
    /// The ranges of the configuration (checked when it was read: a bad one is skipped).
    pub(crate) fn new<'a>(ranges: impl IntoIterator<Item = &'a str>) -> Trusted {
        Trusted(ranges.into_iter().filter_map(Cidr::parse).collect())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// An address as a forwarding header writes it: `192.0.2.1`, `2001:db8::1`, `[::1]`,
/// with a port or without, quoted or not.
fn address(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.1;proto=https`); `None` for an
/// element without one.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let i = pair.iter().position(|&b| b == b'=')?;
        let key = pair[..i].trim_ascii();
        key.eq_ignore_ascii_case(b"for").then(|| &pair[i + 1..])
    })
}

/// The client a request from `peer` stands for: `peer` itself unless it is trusted, else
/// the chain of `Forwarded` (or, when the request has none, `X-Forwarded-For`) walked from
/// the right, as the module says.
pub(crate) fn client(trusted: &Trusted, head: &Head<'_>, peer: IpAddr) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let named = |want: &'static [u8]| {
        head.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(want))
            .map(|(_, v)| v)
    };
    let forwarded = named(b"forwarded").next().is_some();
    // Every entry of every header of the chosen kind, in order: a proxy may add a header
    // of its own rather than append to the last.
    let entries: Vec<Option<IpAddr>> = if forwarded {
        named(b"forwarded")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|e| forwarded_for(e).and_then(address))
            .collect()
    } else {
        named(b"x-forwarded-for")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(address)
            .collect()
    };
    let mut client = peer;
    for entry in entries.into_iter().rev() {
        let Some(ip) = entry else { break };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// The scheme a trusted proxy says the client used (the last `X-Forwarded-Proto`, when it
/// is `http` or `https`). For what applications are told only.
pub(crate) fn proto(trusted: &Trusted, head: &Head<'_>, peer: IpAddr) -> Option<&'static str> {
    if trusted.is_empty() || !trusted.contains(peer) {
        return None;
    }
    let last = head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"x-forwarded-proto"))
        .filter_map(|(_, v)| v.rsplit(|&b| b == b',').next())
        .last()?;
    match last.trim_ascii() {
        p if p.eq_ignore_ascii_case(b"https") => Some("https"),
        p if p.eq_ignore_ascii_case(b"http") => Some("http"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{Parsed, parse_head};
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_match_by_prefix_and_mapped_addresses_as_ipv4() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("::a00:1")));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::2")));
        let mapped = Cidr::parse("::ffff:192.168.0.0/112").unwrap();
        assert!(mapped.contains(ip("192.168.3.4")));
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("2001:db8:1::1"))
        );
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x",
            "1.2.3.4/+8",
            "1.2.3.4/255",
            "",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    fn client_of(fields: &str, peer: &str) -> IpAddr {
        let text = format!("GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
        let limits = crate::HeadLimits::default();
        let Ok(Parsed::Complete { head, .. }) = parse_head(text.as_bytes(), &limits) else {
            panic!("head: {text}");
        };
        let trusted = Trusted::new(["127.0.0.2", "10.0.0.0/8"]);
        client(&trusted, &head, ip(peer))
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let xff = "X-Forwarded-For: 203.0.113.9, 198.51.100.7, 10.1.1.1\r\n";
        assert_eq!(client_of(xff, "127.0.0.2"), ip("198.51.100.7"));
        // An untrusted peer is the client, whatever it says.
        assert_eq!(client_of(xff, "127.0.0.3"), ip("127.0.0.3"));
        assert_eq!(client_of(xff, "::ffff:127.0.0.2"), ip("198.51.100.7"));
        // Forwarded first, quoted IPv6 with a port.
        let both = "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=192.0.2.60;proto=http, for=\"[2001:db8::7]:4711\"\r\n";
        assert_eq!(client_of(both, "127.0.0.2"), ip("2001:db8::7"));
        // Headers repeated join in order; all trusted: the left-most.
        let split = "X-Forwarded-For: 10.0.0.5\r\nX-Forwarded-For: 10.0.0.6\r\n";
        assert_eq!(client_of(split, "127.0.0.2"), ip("10.0.0.5"));
        // An entry that is no address stops at the proxy that wrote it.
        let odd = "Forwarded: for=unknown, for=10.0.0.9\r\n";
        assert_eq!(client_of(odd, "127.0.0.2"), ip("10.0.0.9"));
        assert_eq!(client_of("", "127.0.0.2"), ip("127.0.0.2"));
    }

    proptest! {
        #[test]
        fn no_range_text_panics(text in "[0-9a-f:./]{0,50}") {
            let _ = Cidr::parse(&text).map(|c| c.contains(ip("::1")));
        }
    }
}
