//! The Win32 error codes the daemon answers with, named: HTTP.sys's registration calls
//! return them, and the control API carries them in every [`ApiError`](crate::control::ApiError).
//!
//! This is their one home. The router gives its refusals one of these, the daemon maps each
//! to the control API's HTTP status with [`Win32Error::http_status`], and the SDK and the CLI
//! ask an `ApiError` what it is with predicates such as
//! [`is_access_denied`](crate::control::ApiError::is_access_denied), so no code is matched
//! by its number outside this file.

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
    /// `ERROR_GEN_FAILURE` (31): an address that cannot be bound for a reason HTTP.sys has
    /// no better code for.
    GenFailure,
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
    pub const ALL: [Win32Error; 12] = [
        Win32Error::FileNotFound,
        Win32Error::TooManyOpenFiles,
        Win32Error::AccessDenied,
        Win32Error::InvalidHandle,
        Win32Error::InvalidData,
        Win32Error::GenFailure,
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
            Win32Error::GenFailure => 31,
            Win32Error::SharingViolation => 32,
            Win32Error::NotSupported => 50,
            Win32Error::InvalidParameter => 87,
            Win32Error::AlreadyExists => 183,
            Win32Error::InvalidNetname => 1214,
            Win32Error::NotEnoughQuota => 1816,
        }
    }

    /// The symbolic name, such as `ERROR_ALREADY_EXISTS`, as in `winerror.h`.
    pub const fn name(self) -> &'static str {
        match self {
            Win32Error::FileNotFound => "ERROR_FILE_NOT_FOUND",
            Win32Error::TooManyOpenFiles => "ERROR_TOO_MANY_OPEN_FILES",
            Win32Error::AccessDenied => "ERROR_ACCESS_DENIED",
            Win32Error::InvalidHandle => "ERROR_INVALID_HANDLE",
            Win32Error::InvalidData => "ERROR_INVALID_DATA",
            Win32Error::GenFailure => "ERROR_GEN_FAILURE",
            Win32Error::SharingViolation => "ERROR_SHARING_VIOLATION",
            Win32Error::NotSupported => "ERROR_NOT_SUPPORTED",
            Win32Error::InvalidParameter => "ERROR_INVALID_PARAMETER",
            Win32Error::AlreadyExists => "ERROR_ALREADY_EXISTS",
            Win32Error::InvalidNetname => "ERROR_INVALID_NETNAME",
            Win32Error::NotEnoughQuota => "ERROR_NOT_ENOUGH_QUOTA",
        }
    }

    /// The HTTP status the control API answers a refusal with this code: 404 for what is
    /// not there, 403 denied, 409 a conflict, 422 a configuration file that does not check,
    /// 429 a per-user cap, 503 a spent descriptor budget, and 400 for the rest (a malformed
    /// argument, an address this machine does not own, a failure to bind).
    pub const fn http_status(self) -> u16 {
        match self {
            Win32Error::FileNotFound | Win32Error::InvalidHandle => 404,
            Win32Error::InvalidData => 422,
            Win32Error::AccessDenied => 403,
            Win32Error::SharingViolation | Win32Error::AlreadyExists => 409,
            Win32Error::TooManyOpenFiles => 503,
            Win32Error::NotEnoughQuota => 429,
            Win32Error::GenFailure
            | Win32Error::NotSupported
            | Win32Error::InvalidParameter
            | Win32Error::InvalidNetname => 400,
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

#[cfg(test)]
mod tests {
    use super::Win32Error;

    #[test]
    fn codes_and_names_are_one_to_one() {
        let mut last = 0;
        for e in Win32Error::ALL {
            assert!(e.code() > last, "{e}: ALL is in numeric order");
            last = e.code();
            assert_eq!(Win32Error::from_code(e.code()), Some(e));
            assert_eq!(Win32Error::from_name(e.name()), Some(e));
            assert!(e.name().starts_with("ERROR_"), "{e}");
        }
        assert_eq!(Win32Error::from_code(1), None);
        assert_eq!(Win32Error::from_name("ERROR_SUCCESS"), None);
        assert_eq!(
            Win32Error::AlreadyExists.to_string(),
            "ERROR_ALREADY_EXISTS (183)"
        );
    }

    #[test]
    fn http_statuses() {
        for (e, status) in [
            (Win32Error::FileNotFound, 404),
            (Win32Error::TooManyOpenFiles, 503),
            (Win32Error::AccessDenied, 403),
            (Win32Error::InvalidHandle, 404),
            (Win32Error::InvalidData, 422),
            (Win32Error::GenFailure, 400),
            (Win32Error::SharingViolation, 409),
            (Win32Error::NotSupported, 400),
            (Win32Error::InvalidParameter, 400),
            (Win32Error::AlreadyExists, 409),
            (Win32Error::InvalidNetname, 400),
            (Win32Error::NotEnoughQuota, 429),
        ] {
            assert_eq!(e.http_status(), status, "{e}");
        }
    }
}
