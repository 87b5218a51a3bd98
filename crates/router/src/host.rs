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
    #[inline]
    pub fn parse(value: &'a [u8]) -> Result<RequestHost<'a>, InvalidHost> {
        match plain_name(value) {
            Some(host) => Ok(host),
            None => RequestHost::parse_any(value),
        }
    }

    /// [`parse`](RequestHost::parse), for any host.
    fn parse_any(value: &'a [u8]) -> Result<RequestHost<'a>, InvalidHost> {
        if value.first() == Some(&b'[') {
            return parse_bracketed(value);
        }
        let (host, port) = match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        };
        check_port(port)?;
        // One pass over the bytes decides the common ASCII case.
        let mut label = 0usize;
        let mut digits_and_dots = true;
        let mut ace = false;
        let mut ascii = true;
        for (i, &b) in host.iter().enumerate() {
            match b {
                b'.' if label == 0 => return Err(InvalidHost),
                b'.' => label = 0,
                b'0'..=b'9' => label += 1,
                b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'_' => {
                    if label == 0
                        && host.len() - i >= 4
                        && host[i..i + 4].eq_ignore_ascii_case(b"xn--")
                    {
                        ace = true;
                    }
                    digits_and_dots = false;
                    label += 1;
                }
                0x80.. => {
                    ascii = false;
                    digits_and_dots = false;
                    label += 1;
                }
                _ => return Err(InvalidHost),
            }
        }
        if label == 0 {
            return Err(InvalidHost);
        }
        let host = core::str::from_utf8(host).map_err(|_| InvalidHost)?;
        if digits_and_dots {
            let addr: Ipv4Addr = host.parse().map_err(|_| InvalidHost)?;
            return Ok(RequestHost {
                raw: host,
                name: Cow::Borrowed(host),
                ip: Some(IpAddr::V4(addr)),
            });
        }
        if ascii {
            if host.len() > 255 {
                return Err(InvalidHost);
            }
        } else {
            check_host_name(host).map_err(|_| InvalidHost)?;
        }
        let name = if ace || !ascii {
            punycode::to_unicode(host).ok_or(InvalidHost)?
        } else {
            Cow::Borrowed(host)
        };
        Ok(RequestHost {
            raw: host,
            name,
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

/// Byte classes of host names.
const DIGIT: u8 = 1;
const DOT: u8 = 2;
/// A letter or `_`.
const NAME: u8 = 4;
const DASH: u8 = 8;
/// Anything else: `:`, `[`, a byte outside ASCII...
const OTHER: u8 = 16;
const HOST_CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'0'..=b'9' => DIGIT,
            b'.' => DOT,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => NAME,
            b'-' => DASH,
            _ => OTHER,
        };
        b += 1;
    }
    t
};

/// The common Host header, taken in one branch-free pass: an ASCII name (letters, digits,
/// `-`, `_`) of non-empty labels, not all digits, with no port and no `--` (so no
/// punycode label). `None` for anything else, which [`RequestHost::parse_any`] decides.
#[inline]
fn plain_name(value: &[u8]) -> Option<RequestHost<'_>> {
    let mut kinds = 0;
    let mut doubled = 0;
    // As if after a dot: a leading dot is an empty label.
    let mut prev = DOT;
    for &b in value {
        let class = HOST_CLASS[usize::from(b)];
        kinds |= class;
        // ".." is an empty label, "--" maybe an "xn--" one.
        doubled |= class & prev & (DOT | DASH);
        prev = class;
    }
    let plain = kinds & OTHER == 0
        && kinds & (NAME | DASH) != 0
        && doubled == 0
        && prev != DOT
        && value.len() <= 255;
    if !plain {
        return None;
    }
    let host = core::str::from_utf8(value).ok()?;
    Some(RequestHost {
        raw: host,
        name: Cow::Borrowed(host),
        ip: None,
    })
}

/// `[IPv6]` with an optional port; IPv4-mapped addresses and zone ids are refused.
fn parse_bracketed(value: &[u8]) -> Result<RequestHost<'_>, InvalidHost> {
    let value = core::str::from_utf8(value).map_err(|_| InvalidHost)?;
    let end = value.find(']').ok_or(InvalidHost)?;
    let (host, rest) = value.split_at(end + 1);
    match rest {
        "" => {}
        _ => check_port(Some(rest.strip_prefix(':').ok_or(InvalidHost)?.as_bytes()))?,
    }
    let addr: Ipv6Addr = host[1..end].parse().map_err(|_| InvalidHost)?;
    if addr.to_ipv4_mapped().is_some() {
        return Err(InvalidHost);
    }
    Ok(RequestHost {
        raw: host,
        name: Cow::Borrowed(host),
        ip: Some(IpAddr::V6(addr)),
    })
}

/// A port, when present, is decimal and at most 65535; empty is allowed.
fn check_port(port: Option<&[u8]>) -> Result<(), InvalidHost> {
    match port {
        None | Some(b"") => Ok(()),
        Some(p) if p.len() <= 5 && p.iter().all(u8::is_ascii_digit) => {
            let n = p
                .iter()
                .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'));
            if n <= 65535 { Ok(()) } else { Err(InvalidHost) }
        }
        Some(_) => Err(InvalidHost),
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

    /// The one-pass way for plain names gives what the general way gives.
    #[test]
    fn plain_names_agree_with_the_general_way() {
        let alphabet = b"a0.-_:xn";
        let mut taken = 0;
        for len in 0..=6 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut v = Vec::new();
                for _ in 0..len {
                    v.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                if let Some(fast) = plain_name(&v) {
                    taken += 1;
                    assert_eq!(Ok(fast), RequestHost::parse_any(&v), "{v:?}");
                }
            }
        }
        assert!(taken > 10_000, "{taken}");
        for v in ["example.com", "host7.example.com", "A_b-C.d", "x.y-z"] {
            assert!(plain_name(v.as_bytes()).is_some(), "{v}");
        }
        let long = "a".repeat(256);
        for v in [
            "xn--bcher-kva.example",
            "a.b.",
            ".a",
            "1.2.3.4",
            "a:80",
            "фото",
            &long,
        ] {
            assert!(plain_name(v.as_bytes()).is_none(), "{v}");
        }
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
