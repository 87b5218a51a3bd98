//! The UrlPrefix grammar: `scheme://host:port/path/`.

use core::fmt;
use core::hash::{Hash, Hasher};
use core::str::FromStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::chars::{hex_pair, is_restricted};
use crate::error::PrefixError;
use crate::fold::fold;

/// The scheme of a prefix, and of the listening endpoint a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `http`: a plain TCP endpoint.
    Http,
    /// `https`: a TLS endpoint.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The other scheme; one port serves only one of the two.
    pub const fn other(self) -> Scheme {
        match self {
            Scheme::Http => Scheme::Https,
            Scheme::Https => Scheme::Http,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four routing categories, in the order routing tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `+`: any host, any local address; tried first.
    Strong,
    /// A host name: the request's host must equal it.
    Explicit,
    /// An IP literal: the connection's local address must equal it, whatever the host.
    IpBound,
    /// `*`: whatever the first three did not take.
    Weak,
}

impl Category {
    /// The categories in precedence order.
    pub const ORDER: [Category; 4] = [
        Category::Strong,
        Category::Explicit,
        Category::IpBound,
        Category::Weak,
    ];

    /// `"strong"`, `"explicit"`, `"ip"` or `"weak"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Strong => "strong",
            Category::Explicit => "explicit",
            Category::IpBound => "ip",
            Category::Weak => "weak",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of a prefix.
#[derive(Debug, Clone)]
pub enum Host {
    /// `+`, the strong wildcard.
    Strong,
    /// `*`, the weak wildcard.
    Weak,
    /// A host name in Unicode form, as written.
    Name(Box<str>),
    /// An IPv4 literal or a bracketed IPv6 literal.
    Ip(IpAddr),
}

impl Host {
    /// The routing category this host puts a prefix in.
    pub fn category(&self) -> Category {
        match self {
            Host::Strong => Category::Strong,
            Host::Weak => Category::Weak,
            Host::Name(_) => Category::Explicit,
            Host::Ip(_) => Category::IpBound,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Strong => f.write_str("+"),
            Host::Weak => f.write_str("*"),
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// A parsed URL prefix such as `http://+:80/app/`.
///
/// Two prefixes are equal when HTTP.sys would call them the same registration: same scheme,
/// same host (names compared case-insensitively, addresses numerically), same port and the
/// same path compared case-insensitively. [`Display`](fmt::Display) prints the canonical
/// form; [`as_str`](UrlPrefix::as_str) gives back the string it was parsed from.
///
/// # Examples
///
/// ```
/// use portshare_router::{Category, UrlPrefix};
///
/// let p: UrlPrefix = "http://Example.com:8080/base%20path/".parse()?;
/// assert_eq!(p.category(), Category::Explicit);
/// assert_eq!(p.port(), 8080);
/// assert_eq!(p.path(), "/base path/");
/// assert_eq!(p.to_string(), "http://Example.com:8080/base path/");
/// assert_eq!(p, "http://EXAMPLE.COM:8080/BASE PATH/".parse()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct UrlPrefix {
    scheme: Scheme,
    host: Host,
    port: u16,
    path: Box<str>,
    /// Upper-cased host name (names only) and path: the identity.
    folded_host: Box<str>,
    folded_path: Box<str>,
    original: Box<str>,
}

impl UrlPrefix {
    /// Parses a prefix string; the same as [`str::parse`].
    ///
    /// # Errors
    ///
    /// A [`PrefixError`] naming what is wrong; its [`win32`](PrefixError::win32) is the code
    /// HTTP.sys returns (87, or 50 for `0.0.0.0`).
    pub fn parse(s: &str) -> Result<UrlPrefix, PrefixError> {
        let (scheme, rest) = s.split_once("://").ok_or(PrefixError::MissingScheme)?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(PrefixError::Scheme(other.to_owned())),
        };
        let (host, rest) = split_host(rest)?;
        let host = parse_host(host)?;
        let rest = rest.strip_prefix(':').ok_or(PrefixError::MissingPort)?;
        let port_end = rest.find('/').unwrap_or(rest.len());
        let port = parse_port(&rest[..port_end])?;
        let path = &rest[port_end..];
        if path.is_empty() {
            return Err(PrefixError::MissingPath);
        }
        let path = decode_prefix_path(path)?;
        let folded_host = match &host {
            Host::Name(n) => fold(n).into(),
            _ => "".into(),
        };
        Ok(UrlPrefix {
            scheme,
            folded_host,
            folded_path: fold(&path).into(),
            host,
            port,
            path: path.into(),
            original: s.into(),
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host: `+`, `*`, a name or an address.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The routing category, from the host's form.
    pub fn category(&self) -> Category {
        self.host.category()
    }

    /// The port, 1–65535.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path in decoded (Unicode) form; starts and ends with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The string this prefix was parsed from, exactly.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The path upper-cased, as routing compares it.
    pub(crate) fn folded_path(&self) -> &str {
        &self.folded_path
    }

    /// The host name upper-cased (empty for other host forms).
    pub(crate) fn folded_host(&self) -> &str {
        &self.folded_host
    }

    /// The path's segments, without the empty ones the slashes leave.
    pub(crate) fn folded_segments(&self) -> impl Iterator<Item = &str> {
        self.folded_path.split('/').filter(|s| !s.is_empty())
    }

    /// True when both have the same scheme, category, host and port.
    pub(crate) fn same_site(&self, other: &UrlPrefix) -> bool {
        self.scheme == other.scheme && self.port == other.port && self.same_host(other)
    }

    /// True when both have the same host (and so the same category).
    pub(crate) fn same_host(&self, other: &UrlPrefix) -> bool {
        match (&self.host, &other.host) {
            (Host::Strong, Host::Strong) | (Host::Weak, Host::Weak) => true,
            (Host::Name(_), Host::Name(_)) => self.folded_host == other.folded_host,
            (Host::Ip(a), Host::Ip(b)) => a == b,
            _ => false,
        }
    }

    /// True when `self`'s path covers `other`'s, on whole segments (`/app/` covers
    /// `/app/sub/`, not `/application/`). Both paths end with `/`. The rule the URL ACLs'
    /// index is held to in tests.
    #[cfg(test)]
    pub(crate) fn path_covers(&self, other: &UrlPrefix) -> bool {
        other.folded_path.starts_with(&*self.folded_path)
    }

    /// The implicit root reservation of this prefix's host and port, such as
    /// `http://localhost:80/`.
    pub(crate) fn root_string(&self) -> String {
        let host = match &self.host {
            Host::Name(n) => n.to_string(),
            other => other.to_string(),
        };
        format!("{}://{}:{}/", self.scheme, host, self.port)
    }
}

impl PartialEq for UrlPrefix {
    fn eq(&self, other: &UrlPrefix) -> bool {
        self.same_site(other) && self.folded_path == other.folded_path
    }
}

impl Eq for UrlPrefix {}

impl Hash for UrlPrefix {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.scheme.hash(state);
        self.port.hash(state);
        self.category().hash(state);
        if let Host::Ip(ip) = &self.host {
            ip.hash(state);
        }
        self.folded_host.hash(state);
        self.folded_path.hash(state);
    }
}

impl FromStr for UrlPrefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<UrlPrefix, PrefixError> {
        UrlPrefix::parse(s)
    }
}

impl fmt::Display for UrlPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)?;
        // The path is kept decoded; only '%' needs escaping to parse back the same.
        for (i, part) in self.path.split('%').enumerate() {
            if i > 0 {
                f.write_str("%25")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

fn split_host(rest: &str) -> Result<(&str, &str), PrefixError> {
    if rest.starts_with('[') {
        let end = rest.find(']').ok_or_else(|| PrefixError::Host {
            host: rest.split('/').next().unwrap_or(rest).to_owned(),
            why: "has no closing ']'",
        })?;
        return Ok(rest.split_at(end + 1));
    }
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    if end == 0 {
        return Err(PrefixError::MissingHost);
    }
    Ok(rest.split_at(end))
}

fn parse_host(host: &str) -> Result<Host, PrefixError> {
    let bad = |why| PrefixError::Host {
        host: host.to_owned(),
        why,
    };
    match host {
        "+" => return Ok(Host::Strong),
        "*" => return Ok(Host::Weak),
        _ => {}
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(bad("has no closing ']'"))?;
        if inner.contains('%') {
            return Err(bad("has a zone id, which prefixes cannot carry"));
        }
        let addr = Ipv6Addr::from_str(inner).map_err(|_| bad("is not an IPv6 address"))?;
        if addr.is_unspecified() {
            return Err(bad("is the unspecified address: use + or *"));
        }
        return Ok(Host::Ip(IpAddr::V6(addr)));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let addr = Ipv4Addr::from_str(host).map_err(|_| bad("is not a dotted IPv4 address"))?;
        if addr.is_unspecified() {
            return Err(PrefixError::UnspecifiedAddress);
        }
        return Ok(Host::Ip(IpAddr::V4(addr)));
    }
    check_host_name(host).map_err(bad)?;
    // On bytes: a label's fourth byte may be inside a character (`exaф`).
    if host.split('.').any(|label| {
        label
            .as_bytes()
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"xn--"))
    }) {
        return Err(bad("is in punycode: write the Unicode form of the name"));
    }
    Ok(Host::Name(host.into()))
}

/// Checks a host name: dot-separated non-empty labels of letters, digits, `-` and `_`, at
/// most 255 characters. Shared with the request-side host check.
pub(crate) fn check_host_name(host: &str) -> Result<(), &'static str> {
    if host.chars().count() > 255 {
        return Err("is longer than 255 characters");
    }
    if host.contains('*') {
        return Err("has a '*': only the whole host may be a wildcard");
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err("has an empty label");
        }
        if !label
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        {
            return Err("has a character not allowed in a host name");
        }
    }
    Ok(())
}

fn parse_port(port: &str) -> Result<u16, PrefixError> {
    let bad = |why| PrefixError::Port {
        port: port.to_owned(),
        why,
    };
    if port.is_empty() {
        return Err(bad("is empty"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("is not a decimal number"));
    }
    if port.starts_with('0') {
        return Err(if port == "0" {
            bad("is 0; use a port from 1 to 65535")
        } else {
            bad("has a leading zero")
        });
    }
    match port.parse::<u16>() {
        Ok(p) => Ok(p),
        Err(_) => Err(bad("is above 65535")),
    }
}

/// Decodes a prefix path once (`%XX` to bytes, which must form UTF-8) and checks it.
fn decode_prefix_path(path: &str) -> Result<String, PrefixError> {
    let bad = |why| PrefixError::Path {
        path: path.to_owned(),
        why,
    };
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(bad("has a '%' without two hex digits"))?;
            let v = hex_pair(hex[0], hex[1]).ok_or(bad("has a '%' without two hex digits"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| bad("decodes to bytes that are not UTF-8"))?;
    if !decoded.ends_with('/') {
        return Err(PrefixError::NoTrailingSlash);
    }
    if !decoded.starts_with('/') {
        return Err(bad("does not start with '/'"));
    }
    if let Some(c) = decoded
        .chars()
        .find(|&c| is_restricted(c) || matches!(c, '?' | '#' | '\\'))
    {
        return Err(match c {
            '?' | '#' => bad("has a '?' or '#': prefixes hold no query or fragment"),
            '\\' => bad("has a '\\', which requests can never carry after canonicalization"),
            _ => bad("has a control character"),
        });
    }
    if decoded.len() > 1 {
        let inner = &decoded[1..decoded.len() - 1];
        for seg in inner.split('/') {
            match seg {
                "" => return Err(bad("has an empty segment ('//')")),
                "." | ".." => return Err(bad("has a '.' or '..' segment")),
                _ => {}
            }
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Win32Error;

    fn code(s: &str) -> Option<u32> {
        UrlPrefix::parse(s).err().map(|e| e.win32().code())
    }

    #[test]
    fn strong_wildcard() {
        let p = UrlPrefix::parse("http://+:80/app1/").unwrap();
        assert_eq!(p.category(), Category::Strong);
        assert_eq!(p.path(), "/app1/");
    }

    #[test]
    fn weak_wildcard() {
        assert_eq!(
            UrlPrefix::parse("http://*:80/").unwrap().category(),
            Category::Weak
        );
    }

    #[test]
    fn explicit_name() {
        let p = UrlPrefix::parse("https://api.example.com:443/").unwrap();
        assert_eq!(p.category(), Category::Explicit);
        assert_eq!(p.scheme(), Scheme::Https);
    }

    #[test]
    fn ipv4_literal() {
        let p = UrlPrefix::parse("http://10.0.0.1:80/").unwrap();
        assert_eq!(p.category(), Category::IpBound);
    }

    #[test]
    fn ipv6_literal() {
        let p = UrlPrefix::parse("http://[::1]:8080/").unwrap();
        assert_eq!(p.category(), Category::IpBound);
        assert_eq!(p.to_string(), "http://[::1]:8080/");
    }

    #[test]
    fn unicode_name_and_path() {
        let p = UrlPrefix::parse("http://bücher.example:80/base葉path/").unwrap();
        assert_eq!(p.path(), "/base葉path/");
    }

    #[test]
    fn escaped_path_is_decoded_once() {
        let p = UrlPrefix::parse("http://+:80/a%2520b/").unwrap();
        assert_eq!(p.path(), "/a%20b/");
        assert_eq!(p.to_string(), "http://+:80/a%2520b/");
        assert_eq!(UrlPrefix::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn case_insensitive_identity() {
        assert_eq!(
            UrlPrefix::parse("http://LOCALHOST:8080/App/").unwrap(),
            UrlPrefix::parse("http://localhost:8080/app/").unwrap()
        );
        assert_ne!(
            UrlPrefix::parse("http://+:80/a/").unwrap(),
            UrlPrefix::parse("http://x:80/a/").unwrap()
        );
    }

    #[test]
    fn rejections() {
        let cases: &[(&str, u32)] = &[
            ("localhost:50000/", 87),                 // no scheme
            ("http://localhost/", 87),                // no port
            ("http://localhost:50000", 87),           // no path
            ("http://+:8080/app", 87),                // no trailing slash
            ("http://localhost:/", 87),               // empty port
            ("http://localhost:0/", 87),              // port 0
            ("http://localhost:65536/", 87),          // above 65535
            ("http://localhost:-1/", 87),             // negative
            ("http://localhost:080/", 87),            // leading zero
            ("http://localhost:8x/", 87),             // non-numeric
            ("http://localhost:*/", 87),              // wildcard port
            ("HTTP://+:8080/", 87),                   // upper-case scheme
            ("ftp://+:21/", 87),                      // unknown scheme
            ("http://0.0.0.0:8080/", 50),             // unspecified IPv4
            ("http://[::]:8080/", 87),                // unspecified IPv6
            ("http://[::1%2]:8080/", 87),             // zone id
            ("http://[]:8080/", 87),                  // empty brackets
            ("http://[::1:8080/", 87),                // unclosed bracket
            ("http://192.:8080/", 87),                // bad IPv4
            ("http://256.1.1.1:8080/", 87),           // octet above 255
            ("http://.:8080/", 87),                   // lone dot
            ("http://\\\\:8080/", 87),                // backslashes
            ("http://*.contoso.com:80/", 87),         // subdomain wildcard
            ("http://xn--bcher-kva.example:80/", 87), // punycode
            ("http://:80/", 87),                      // no host
            ("http://a..b:80/", 87),                  // empty label
            ("http://a b:80/", 87),                   // space in host
            ("http://localhost:8080/a%zz/", 87),      // bad escape
            ("http://localhost:8080/a%2/", 87),       // short escape
            ("http://localhost:8080/a//b/", 87),      // empty segment
            ("http://localhost:8080/a/../", 87),      // dot segment
            ("http://localhost:8080/a?b/", 87),       // query
            ("http://localhost:8080/%00/", 87),       // control character
            ("http://localhost:8080/%ff/", 87),       // not UTF-8
            ("http://127.0.0.1:8000:127.0.0.1/", 87), // IIS host:port:ip form
        ];
        for (input, want) in cases {
            assert_eq!(code(input), Some(*want), "{input}");
        }
        let long = format!("http://{}:80/", "a".repeat(256));
        assert_eq!(code(&long), Some(87));
    }

    #[test]
    fn unspecified_is_not_supported() {
        let err = UrlPrefix::parse("http://0.0.0.0:80/").unwrap_err();
        assert_eq!(err.win32(), Win32Error::NotSupported);
        assert!(err.to_string().contains("0.0.0.0"));
    }

    #[test]
    fn errors_name_the_part() {
        let err = UrlPrefix::parse("http://localhost:080/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "URL prefix port \"080\" has a leading zero"
        );
    }

    #[test]
    fn root_string_keeps_case() {
        let p = UrlPrefix::parse("http://LocalHost:80/a/b/").unwrap();
        assert_eq!(p.root_string(), "http://LocalHost:80/");
    }

    #[test]
    fn path_covers_whole_segments() {
        let app = UrlPrefix::parse("http://+:80/app/").unwrap();
        assert!(app.path_covers(&UrlPrefix::parse("http://+:80/APP/sub/").unwrap()));
        assert!(!app.path_covers(&UrlPrefix::parse("http://+:80/application/").unwrap()));
    }
}
