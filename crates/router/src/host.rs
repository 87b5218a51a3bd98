//! The host a request is routed by: the Host header, or the authority of an absolute-form
//! target.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::prefix::check_host_name;
use crate::punycode;

/// A request's host, checked and ready for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost<'a> {
    /// The host part as received, without the port (IPv6 keeps its brackets).
    raw: &'a str,
    /// The name explicit prefixes compare with: punycode labels turned to Unicode.
    name: Cow<'a, str>,
    ip: Option<IpAddr>,
}

impl<'a> RequestHost<'a> {
    /// Parses a `host[:port]` value. The port, if any, must be decimal and at most 65535;
    /// it never takes part in routing.
    ///
    /// # Errors
    ///
    /// [`InvalidHost`] for anything that is not a host name, an IPv4 literal or a
    /// bracketed IPv6 literal (an IPv4-mapped IPv6 literal and a zone id included); the
    /// service answers 400 `Hostname`.
    pub fn parse(value: &'a [u8]) -> Result<RequestHost<'a>, InvalidHost> {
        let value = core::str::from_utf8(value).map_err(|_| InvalidHost)?;
        let (host, port) = if value.starts_with('[') {
            let end = value.find(']').ok_or(InvalidHost)?;
            let (host, rest) = value.split_at(end + 1);
            match rest {
                "" => (host, None),
                _ => (host, Some(rest.strip_prefix(':').ok_or(InvalidHost)?)),
            }
        } else {
            match value.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (value, None),
            }
        };
        if let Some(port) = port
            && (!port.bytes().all(|b| b.is_ascii_digit())
                || (!port.is_empty() && port.parse::<u16>().is_err()))
        {
            return Err(InvalidHost);
        }
        if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(InvalidHost)?;
            let addr: Ipv6Addr = inner.parse().map_err(|_| InvalidHost)?;
            if addr.to_ipv4_mapped().is_some() {
                return Err(InvalidHost);
            }
            return Ok(RequestHost {
                raw: host,
                name: Cow::Borrowed(host),
                ip: Some(IpAddr::V6(addr)),
            });
        }
        if host.is_empty() {
            return Err(InvalidHost);
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let addr: Ipv4Addr = host.parse().map_err(|_| InvalidHost)?;
            return Ok(RequestHost {
                raw: host,
                name: Cow::Borrowed(host),
                ip: Some(IpAddr::V4(addr)),
            });
        }
        check_host_name(host).map_err(|_| InvalidHost)?;
        Ok(RequestHost {
            raw: host,
            name: punycode::to_unicode(host).ok_or(InvalidHost)?,
            ip: None,
        })
    }

    /// The host as received, without its port.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// The name explicit prefixes are compared with (punycode decoded to Unicode).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

/// The Host header, or the absolute-form authority, is not a valid `host[:port]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHost;

impl core::fmt::Display for InvalidHost {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the request hostname is invalid")
    }
}

impl std::error::Error for InvalidHost {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> RequestHost<'_> {
        RequestHost::parse(v.as_bytes()).unwrap()
    }

    fn bad(v: &[u8]) -> bool {
        RequestHost::parse(v).is_err()
    }

    #[test]
    fn name_with_port() {
        let h = ok("Example.com:8080");
        assert_eq!(
            (h.as_str(), h.name(), h.ip()),
            ("Example.com", "Example.com", None)
        );
    }

    #[test]
    fn ip_literals() {
        assert_eq!(ok("127.0.0.1:80").ip(), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ok("[::1]:80").ip(), Some("::1".parse().unwrap()));
        assert_eq!(ok("[::1]").as_str(), "[::1]");
    }

    #[test]
    fn punycode_becomes_unicode() {
        assert_eq!(ok("xn--bcher-kva.example").name(), "bücher.example");
        assert_eq!(ok("XN--BCHER-KVA.example").name(), "BüCHER.example");
    }

    #[test]
    fn empty_port_is_allowed() {
        assert_eq!(ok("example.com:").as_str(), "example.com");
    }

    #[test]
    fn refused() {
        for v in [
            &b""[..],
            b"http://127.0.0.1/vdir",
            b"a b",
            b"[::ffff:7f00:1]",
            b"[::ffff:127.0.0.1]:80",
            b"[fe80::1%eth0]",
            b"[::1",
            b"[::1]x",
            b"host:99999",
            b"host:8x",
            b"host:1:2",
            b"256.0.0.1",
            b"1.2.3",
            b"a..b",
            b"user@host",
            b"\xff",
            b"xn--",
        ] {
            assert!(bad(v), "{v:?}");
        }
    }
}
