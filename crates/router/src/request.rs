//! From a request head to a decision: deliver to a registration, or answer for it.

use core::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::canon::{Target, TargetForm, UrlError, UrlOptions};
use crate::host::RequestHost;
use crate::prefix::Scheme;
use crate::reason::{Reason, Rejection};
use crate::table::{Lookup, Port, Registration, RouteTable};

/// The listening endpoint a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `http` for plain TCP, `https` for TLS.
    pub scheme: Scheme,
    /// The connection's local address; its port is the one routing uses.
    pub local: SocketAddr,
}

impl Endpoint {
    /// An endpoint of `scheme` at `local`.
    pub fn new(scheme: Scheme, local: SocketAddr) -> Endpoint {
        Endpoint { scheme, local }
    }
}

/// The HTTP version of a text request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Version {
    /// HTTP/1.0: the Host header may be missing.
    Http10,
    /// HTTP/1.1, and 1.2 to 1.9 taken as 1.1.
    Http11,
}

impl Version {
    /// Parses `HTTP/x.y` as HTTP.sys does: 1.0 and 1.1 to 1.9 are served, 2.0 and above in a
    /// text request line are answered 505, anything else 400.
    ///
    /// # Errors
    ///
    /// The rejection to answer with: 505 `Version_N/S` or 400 `BadRequest`.
    pub fn parse(s: &[u8]) -> Result<Version, Rejection> {
        let bad = Rejection::new(400, Reason::BadRequest);
        let rest = s.strip_prefix(b"HTTP/").ok_or(bad)?;
        let dot = rest.iter().position(|&b| b == b'.').ok_or(bad)?;
        let (major, minor) = (&rest[..dot], &rest[dot + 1..]);
        let digits = |d: &[u8]| !d.is_empty() && d.len() <= 3 && d.iter().all(u8::is_ascii_digit);
        if !digits(major) || !digits(minor) {
            return Err(bad);
        }
        let major: u16 = parse_digits(major);
        let minor: u16 = parse_digits(minor);
        match (major, minor) {
            (1, 0) => Ok(Version::Http10),
            (1, _) => Ok(Version::Http11),
            (2.., _) => Err(Rejection::new(505, Reason::VersionNotSupported)),
            _ => Err(bad),
        }
    }

    /// `HTTP/1.0` or `HTTP/1.1`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

fn parse_digits(d: &[u8]) -> u16 {
    d.iter().fold(0, |acc, &b| acc * 10 + u16::from(b - b'0'))
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a method token. Any token is served, unknown and lower-case verbs included
/// (`get` is an unknown verb, not GET); separators make it 400 `Verb`.
///
/// # Errors
///
/// 400 `Verb` for an empty method or one with characters outside RFC 9110's `tchar`.
#[inline]
pub fn check_method(method: &[u8]) -> Result<(), Rejection> {
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if method.is_empty() || !method.iter().all(tchar) {
        return Err(Rejection::new(400, Reason::Verb));
    }
    Ok(())
}

/// The parts of a request head that decide where it goes.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method token.
    pub method: &'a [u8],
    /// The raw request-target.
    pub target: &'a [u8],
    /// The version from the request line.
    pub version: Version,
    /// The Host header's value, `None` when absent (repeated Host headers are the caller's
    /// to refuse).
    pub host: Option<&'a [u8]>,
}

impl<'a> RequestHead<'a> {
    /// A request head.
    pub fn new(
        method: &'a [u8],
        target: &'a [u8],
        version: Version,
        host: Option<&'a [u8]>,
    ) -> RequestHead<'a> {
        RequestHead {
            method,
            target,
            version,
            host,
        }
    }
}

/// Where a request goes.
#[derive(Debug)]
#[non_exhaustive]
pub enum Dispatch<'t, 'a, T> {
    /// To the application that registered the winning prefix.
    Deliver(Delivery<'t, 'a, T>),
    /// The service answers itself.
    Reject(Rejection),
    /// Nothing is registered on this scheme and port, so nothing would listen: the
    /// connection is refused before any request is read.
    Refused,
}

impl<'t, 'a, T> Dispatch<'t, 'a, T> {
    /// The delivery, if the request goes to an application.
    pub fn delivery(self) -> Option<Delivery<'t, 'a, T>> {
        match self {
            Dispatch::Deliver(d) => Some(d),
            _ => None,
        }
    }

    /// The rejection, if the service answers itself.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Dispatch::Reject(r) => Some(*r),
            _ => None,
        }
    }
}

/// A request on its way to a registration.
#[derive(Debug)]
pub struct Delivery<'t, 'a, T> {
    registration: &'t Registration<T>,
    target: Target<'a>,
    host: Option<RequestHost<'a>>,
}

impl<'t, 'a, T> Delivery<'t, 'a, T> {
    /// The winning registration.
    pub fn registration(&self) -> &'t Registration<T> {
        self.registration
    }

    /// The canonicalized target: cooked path, raw query, raw URL.
    pub fn target(&self) -> &Target<'a> {
        &self.target
    }

    /// The host routing used, `None` for HTTP/1.0 without Host.
    pub fn host(&self) -> Option<&RequestHost<'a>> {
        self.host.as_ref()
    }

    /// The cooked URL the application sees: `scheme://host:localport/path?query`.
    pub fn cooked_url(&self, endpoint: &Endpoint) -> String {
        cooked_url(endpoint, self.host.as_ref(), &self.target)
    }
}

/// A request that passed the checks before routing.
pub(crate) struct Prepared<'a> {
    pub(crate) target: Target<'a>,
    pub(crate) host: Option<RequestHost<'a>>,
}

/// The checks HTTP.sys makes before routing, in its order: method, version, URL, host.
/// The target is returned even when the host fails, for explanations.
pub(crate) fn prepare<'a>(
    head: &RequestHead<'a>,
    opts: &UrlOptions,
) -> Result<Prepared<'a>, (Rejection, Option<Target<'a>>)> {
    match checks(head, opts) {
        Ok((target, Ok(host))) => Ok(Prepared { target, host }),
        Ok((target, Err(rejection))) => Err((rejection, Some(target))),
        Err(rejection) => Err((rejection, None)),
    }
}

/// [`prepare`]'s checks, for it and for dispatch alike: the method and the URL, then the
/// canonical target with the host's verdict.
#[inline(always)]
fn checks<'a>(
    head: &RequestHead<'a>,
    opts: &UrlOptions,
) -> Result<(Target<'a>, Result<Option<RequestHost<'a>>, Rejection>), Rejection> {
    check_method(head.method)?;
    let target = opts
        .canonicalize(head.target)
        .map_err(|e: UrlError| e.rejection())?;
    let host = request_host(head, &target);
    Ok((target, host))
}

/// The host a request is routed by: the absolute-form authority, else the Host header;
/// `None` for HTTP/1.0 without one.
#[inline]
fn request_host<'a>(
    head: &RequestHead<'a>,
    target: &Target<'a>,
) -> Result<Option<RequestHost<'a>>, Rejection> {
    let hostname = Rejection::new(400, Reason::Hostname);
    let host_bytes = match target.form() {
        TargetForm::Absolute { authority } => authority,
        _ => match (head.host, head.version) {
            (Some(b""), Version::Http10) | (None, Version::Http10) => return Ok(None),
            (Some(h), _) => h,
            (None, _) => return Err(hostname),
        },
    };
    match RequestHost::parse(host_bytes) {
        Ok(h) => Ok(Some(h)),
        Err(_) => Err(hostname),
    }
}

/// `scheme://host:port` + cooked path + `?query`; the port is always the local one, and
/// HTTP/1.0 without Host gets the local address.
pub(crate) fn cooked_url(
    endpoint: &Endpoint,
    host: Option<&RequestHost<'_>>,
    target: &Target<'_>,
) -> String {
    let mut url = String::with_capacity(16 + target.path().len());
    url.push_str(endpoint.scheme.as_str());
    url.push_str("://");
    match (host, endpoint.local.ip()) {
        (Some(h), _) => url.push_str(h.as_str()),
        (None, IpAddr::V4(a)) => url.push_str(&a.to_string()),
        (None, IpAddr::V6(a)) => {
            url.push('[');
            url.push_str(&a.to_string());
            url.push(']');
        }
    }
    url.push(':');
    url.push_str(&endpoint.local.port().to_string());
    url.push_str(target.path());
    if let Some(q) = target.query() {
        url.push('?');
        url.push_str(&String::from_utf8_lossy(q));
    }
    url
}

impl<T> RouteTable<T> {
    /// Decides where a request goes: the whole of HTTP.sys's path from request line to
    /// request queue (method, version, URL canonicalization, host, routing).
    ///
    /// Allocates nothing when the path needs no decoding.
    pub fn dispatch<'t, 'a>(
        &'t self,
        endpoint: &Endpoint,
        head: &RequestHead<'a>,
        opts: &UrlOptions,
    ) -> Dispatch<'t, 'a, T> {
        // Refused comes first: with nothing registered, no socket would read the request.
        let Some(port) = self.port(endpoint.scheme, endpoint.local.port()) else {
            return Dispatch::Refused;
        };
        match checks(head, opts) {
            Ok((target, Ok(host))) => self.route_on(port, endpoint, target, host),
            Ok((_, Err(rejection))) | Err(rejection) => Dispatch::Reject(rejection),
        }
    }

    /// Routes an already canonicalized target with an already checked host.
    pub fn route<'t, 'a>(
        &'t self,
        endpoint: &Endpoint,
        target: Target<'a>,
        host: Option<RequestHost<'a>>,
    ) -> Dispatch<'t, 'a, T> {
        match self.port(endpoint.scheme, endpoint.local.port()) {
            Some(port) => self.route_on(port, endpoint, target, host),
            None => Dispatch::Refused,
        }
    }

    #[inline]
    fn route_on<'t, 'a>(
        &'t self,
        port: &Port,
        endpoint: &Endpoint,
        target: Target<'a>,
        host: Option<RequestHost<'a>>,
    ) -> Dispatch<'t, 'a, T> {
        let found = self.lookup(
            port,
            endpoint.local.ip(),
            host.as_ref(),
            target.routing_path(),
        );
        match found {
            Lookup::Registration(registration) => Dispatch::Deliver(Delivery {
                registration,
                target,
                host,
            }),
            Lookup::Reserved => Dispatch::Reject(Rejection::new(503, Reason::NotAvailable)),
            Lookup::NotFound => Dispatch::Reject(Rejection::new(404, Reason::NotFound)),
            Lookup::Hostname => Dispatch::Reject(Rejection::new(400, Reason::Hostname)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(Version::parse(b"HTTP/1.0"), Ok(Version::Http10));
        assert_eq!(Version::parse(b"HTTP/1.1"), Ok(Version::Http11));
        assert_eq!(Version::parse(b"HTTP/1.9"), Ok(Version::Http11));
        for v in [&b"HTTP/2.0"[..], b"HTTP/2.2", b"HTTP/3.0"] {
            assert_eq!(Version::parse(v).unwrap_err().status, 505, "{v:?}");
        }
        for v in [
            &b"http/1.1"[..],
            b"HTTP/0.1",
            b"HTTP/1.1.1",
            b"garbage",
            b"HTTP/1",
            b"HTTP/.1",
            b"",
        ] {
            assert_eq!(
                Version::parse(v).unwrap_err(),
                Rejection::new(400, Reason::BadRequest),
                "{v:?}"
            );
        }
    }

    #[test]
    fn methods() {
        for m in [&b"GET"[..], b"xyzzy", b"NOSUCH", b"get", b"M-SEARCH"] {
            assert!(check_method(m).is_ok());
        }
        for m in [&b""[..], b"GE(T", b"G,T", b"GET/", b"G\"T"] {
            assert_eq!(check_method(m), Err(Rejection::new(400, Reason::Verb)));
        }
    }

    #[test]
    fn cooked_url_uses_local_port_and_address() {
        let opts = UrlOptions::default();
        let t = opts.canonicalize(b"/a/../b?x=1").unwrap();
        let ep = Endpoint::new(Scheme::Http, "127.0.0.1:8080".parse().unwrap());
        let host = RequestHost::parse(b"localhost:9999").unwrap();
        assert_eq!(
            cooked_url(&ep, Some(&host), &t),
            "http://localhost:8080/b?x=1"
        );
        let ep6 = Endpoint::new(Scheme::Https, "[::1]:443".parse().unwrap());
        assert_eq!(cooked_url(&ep6, None, &t), "https://[::1]:443/b?x=1");
    }
}
