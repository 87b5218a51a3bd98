//! Errors, each tied to the Win32 error code HTTP.sys answers with ([`Win32Error`], defined
//! in `portshare-proto`).

use core::fmt;

/// The named Win32 codes live in `portshare-proto`, which the daemon, the SDK and the CLI
/// share; the router gives its refusals one of them.
pub use portshare_proto::Win32Error;

/// Why a URL prefix string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrefixError {
    /// No `scheme://` at the start.
    MissingScheme,
    /// A scheme other than `http` or `https`, or one not in lower case.
    Scheme(String),
    /// Nothing between `://` and the port.
    MissingHost,
    /// The host is not `+`, `*`, a name, an IPv4 literal or a bracketed IPv6 literal.
    Host {
        /// The host as written.
        host: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `0.0.0.0`: HTTP.sys answers `ERROR_NOT_SUPPORTED`; use `+` or `*`.
    UnspecifiedAddress,
    /// No `:port` after the host; HTTP.sys requires it even for 80 and 443.
    MissingPort,
    /// The port is empty, not decimal, has a leading zero, or is outside 1–65535.
    Port {
        /// The port as written.
        port: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Nothing after the port: a prefix needs at least `/`.
    MissingPath,
    /// The path does not end in `/`; HTTP.sys does not append it.
    NoTrailingSlash,
    /// The path is malformed: a bad `%` escape, `//`, a dot segment, a control character,
    /// `?`, `#` or `\`.
    Path {
        /// The path as written.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl PrefixError {
    /// The Win32 error HTTP.sys returns for this prefix.
    pub fn win32(&self) -> Win32Error {
        match self {
            PrefixError::UnspecifiedAddress => Win32Error::NotSupported,
            _ => Win32Error::InvalidParameter,
        }
    }
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::MissingScheme => {
                f.write_str("URL prefix has no scheme: write http://HOST:PORT/PATH/")
            }
            PrefixError::Scheme(s) => {
                write!(
                    f,
                    "URL prefix scheme {s:?} is not \"http\" or \"https\" (lower case)"
                )
            }
            PrefixError::MissingHost => f.write_str("URL prefix has no host: use +, * or a name"),
            PrefixError::Host { host, why } => write!(f, "URL prefix host {host:?} {why}"),
            PrefixError::UnspecifiedAddress => f.write_str(
                "URL prefix host 0.0.0.0 is not supported: use + (any host) or * (fallback)",
            ),
            PrefixError::MissingPort => {
                f.write_str("URL prefix has no port: the port is required, even 80 and 443")
            }
            PrefixError::Port { port, why } => write!(f, "URL prefix port {port:?} {why}"),
            PrefixError::MissingPath => f.write_str("URL prefix has no path: end it with /"),
            PrefixError::NoTrailingSlash => f.write_str("URL prefix path must end with /"),
            PrefixError::Path { path, why } => write!(f, "URL prefix path {path:?} {why}"),
        }
    }
}

impl std::error::Error for PrefixError {}
