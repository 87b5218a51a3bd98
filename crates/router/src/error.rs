//! Errors, each tied to the Win32 error code HTTP.sys answers with.

use core::fmt;

/// A Win32 error code, as HTTP.sys's registration calls return them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Win32Error {
    /// `ERROR_FILE_NOT_FOUND` (2): removing something that is not there.
    FileNotFound,
    /// `ERROR_TOO_MANY_OPEN_FILES` (4): the daemon's descriptor budget for this kind of
    /// object (control connections, listening sockets) is spent.
    TooManyOpenFiles,
    /// `ERROR_ACCESS_DENIED` (5): the governing reservation does not grant the caller.
    AccessDenied,
    /// `ERROR_INVALID_HANDLE` (6): no such queue or session.
    InvalidHandle,
    /// `ERROR_INVALID_DATA` (13): a configuration file that does not parse or check.
    InvalidData,
    /// `ERROR_SHARING_VIOLATION` (32): another program holds the address.
    SharingViolation,
    /// `ERROR_NOT_SUPPORTED` (50): a host form HTTP.sys refuses, such as `0.0.0.0`.
    NotSupported,
    /// `ERROR_INVALID_PARAMETER` (87): a malformed URL prefix or argument.
    InvalidParameter,
    /// `ERROR_ALREADY_EXISTS` (183): a duplicate, or a port already used by the other scheme.
    AlreadyExists,
    /// `ERROR_INVALID_NETNAME` (1214): an IP literal this machine does not own.
    InvalidNetname,
    /// `ERROR_NOT_ENOUGH_QUOTA` (1816): the caller's user holds as many control connections,
    /// queue-holding sessions or queues as one user may.
    NotEnoughQuota,
}

impl Win32Error {
    /// Every code, in numeric order.
    pub const ALL: [Win32Error; 11] = [
        Win32Error::FileNotFound,
        Win32Error::TooManyOpenFiles,
        Win32Error::AccessDenied,
        Win32Error::InvalidHandle,
        Win32Error::InvalidData,
        Win32Error::SharingViolation,
        Win32Error::NotSupported,
        Win32Error::InvalidParameter,
        Win32Error::AlreadyExists,
        Win32Error::InvalidNetname,
        Win32Error::NotEnoughQuota,
    ];

    /// The numeric code.
    pub const fn code(self) -> u32 {
        match self {
            Win32Error::FileNotFound => 2,
            Win32Error::TooManyOpenFiles => 4,
            Win32Error::AccessDenied => 5,
            Win32Error::InvalidHandle => 6,
            Win32Error::InvalidData => 13,
            Win32Error::SharingViolation => 32,
            Win32Error::NotSupported => 50,
            Win32Error::InvalidParameter => 87,
            Win32Error::AlreadyExists => 183,
            Win32Error::InvalidNetname => 1214,
            Win32Error::NotEnoughQuota => 1816,
        }
    }

    /// The symbolic name, such as `ERROR_ALREADY_EXISTS`.
    pub const fn name(self) -> &'static str {
        match self {
            Win32Error::FileNotFound => "ERROR_FILE_NOT_FOUND",
            Win32Error::TooManyOpenFiles => "ERROR_TOO_MANY_OPEN_FILES",
            Win32Error::AccessDenied => "ERROR_ACCESS_DENIED",
            Win32Error::InvalidHandle => "ERROR_INVALID_HANDLE",
            Win32Error::InvalidData => "ERROR_INVALID_DATA",
            Win32Error::SharingViolation => "ERROR_SHARING_VIOLATION",
            Win32Error::NotSupported => "ERROR_NOT_SUPPORTED",
            Win32Error::InvalidParameter => "ERROR_INVALID_PARAMETER",
            Win32Error::AlreadyExists => "ERROR_ALREADY_EXISTS",
            Win32Error::InvalidNetname => "ERROR_INVALID_NETNAME",
            Win32Error::NotEnoughQuota => "ERROR_NOT_ENOUGH_QUOTA",
        }
    }

    /// Looks a code up by its number.
    pub fn from_code(code: u32) -> Option<Win32Error> {
        Win32Error::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Looks a code up by its symbolic name.
    pub fn from_name(name: &str) -> Option<Win32Error> {
        Win32Error::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl fmt::Display for Win32Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

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
