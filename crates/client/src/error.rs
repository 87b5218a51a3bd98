//! What can go wrong talking to the daemon or serving a queue.

use std::io;
use std::path::PathBuf;

use portshare_proto::Win32Error;
use portshare_proto::control::ApiError;

/// A boxed error, as services and bodies report them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a control request failed, or a queue could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The daemon refused a request, with the Win32 code HTTP.sys would have returned:
    /// 183 `ERROR_ALREADY_EXISTS` for a prefix another queue holds, 5 `ERROR_ACCESS_DENIED`
    /// for one outside the caller's reservations, 32 `ERROR_SHARING_VIOLATION` for a port
    /// another program has bound.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The daemon's control socket could not be reached.
    #[error(
        "cannot reach the portshare daemon at {}: {source}; is `portshare serve` running? \
         (PORTSHARE_CONTROL names another socket)",
        path.display()
    )]
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// Why connecting failed.
        source: io::Error,
    },
    /// The daemon answered something this SDK does not understand, failed without the
    /// API's error body, or closed a connection in the middle of an exchange.
    #[error("portshare daemon: {0}")]
    Protocol(String),
    /// A control or worker connection failed in HTTP terms: the daemon's answer is not
    /// HTTP/1.1, or the connection broke. The [`hyper::Error`] is the source.
    #[error("portshare daemon: {context}: {source}")]
    Http {
        /// What was going on: `control request`, `attach`...
        context: &'static str,
        /// What hyper said.
        source: hyper::Error,
    },
    /// A control request could not be made: its body does not encode as JSON, or its path
    /// is not a path. The encoder's or the `http` crate's error is the source.
    #[error("cannot make the control request: {0}")]
    Request(#[source] BoxError),
    /// Reading or writing a socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The service reported, from `poll_ready`, that it can take no more requests.
    #[error("the service failed: {0}")]
    Service(#[source] BoxError),
}

impl Error {
    /// The daemon's refusal, when that is what this is.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The Win32 code of the daemon's refusal, such as 183.
    pub fn code(&self) -> Option<u32> {
        self.api().map(|e| e.code)
    }

    /// The daemon's refusal as a named code, when it is one this SDK knows.
    pub fn win32(&self) -> Option<Win32Error> {
        self.api().and_then(ApiError::win32)
    }

    /// True for 183 `ERROR_ALREADY_EXISTS`: another queue holds the prefix.
    pub fn is_already_exists(&self) -> bool {
        self.api().is_some_and(ApiError::is_already_exists)
    }

    /// True for 5 `ERROR_ACCESS_DENIED`: no reservation lets this user register the
    /// prefix, or the queue belongs to another user.
    pub fn is_access_denied(&self) -> bool {
        self.api().is_some_and(ApiError::is_access_denied)
    }

    /// True for 32 `ERROR_SHARING_VIOLATION`: another program holds the port.
    pub fn is_sharing_violation(&self) -> bool {
        self.api().is_some_and(ApiError::is_sharing_violation)
    }

    /// True when the daemon could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect { .. })
    }
}

/// A request body that ended early: the client went away, or the daemon closed the worker
/// connection.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body was cut short: the client went away or the daemon closed the worker connection"
)]
pub struct BodyError {
    _private: (),
}

impl BodyError {
    pub(crate) fn new() -> BodyError {
        BodyError { _private: () }
    }
}
