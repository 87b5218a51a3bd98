//! The reasons HTTP.sys writes in its error log (httperr), and the statuses they go with.

use core::fmt;

/// A reason phrase of the httperr log: why the service itself answered, refused, dropped or
/// timed out a request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// `AppOffline` (503).
    AppOffline,
    /// `AppPoolTimer` (503).
    AppPoolTimer,
    /// `AppShutdown` (503).
    AppShutdown,
    /// `BadRequest` (400): a generic parse error.
    BadRequest,
    /// `Bad_Gateway` (502): an upstream server failed before its response, or sent one
    /// the daemon refuses (not HTTP.sys's: it has no upstreams).
    BadGateway,
    /// `Client_Reset`: the client left before the request reached an application.
    ClientReset,
    /// `Connection_Abandoned_By_AppPool`.
    ConnectionAbandonedByAppPool,
    /// `Connection_Abandoned_By_ReqQueue`: the application left with the request in hand.
    ConnectionAbandonedByReqQueue,
    /// `Connection_Dropped`: closed before the final response was sent.
    ConnectionDropped,
    /// `Connection_Dropped_List_Full`.
    ConnectionDroppedListFull,
    /// `ConnLimit` (503): a connection limit was reached.
    ConnLimit,
    /// `Connections_Refused`: new connections refused for lack of resources.
    ConnectionsRefused,
    /// `Disabled` (503): the queue was disabled.
    Disabled,
    /// `EntityTooLarge` (413).
    EntityTooLarge,
    /// `FieldLength` (400): a header field above MaxFieldLength.
    FieldLength,
    /// `Forbidden` (403).
    Forbidden,
    /// `Header` (400): a header could not be parsed.
    Header,
    /// `Hostname` (400): a bad host, or one no registration serves.
    Hostname,
    /// `Internal` (500).
    Internal,
    /// `Invalid_CR/LF` (400).
    InvalidCrLf,
    /// `LengthRequired` (411).
    LengthRequired,
    /// `N/A` (503): a reservation won routing, or an internal failure.
    NotAvailable,
    /// `N/I` (501): not implemented, such as an unknown Transfer-Encoding.
    NotImplemented,
    /// `Number` (400): a number such as Content-Length failed to parse.
    Number,
    /// `Precondition` (412).
    Precondition,
    /// `QueueFull` (503): the request queue is full.
    QueueFull,
    /// `RequestLength` (400): request line and headers above MaxRequestBytes.
    RequestLength,
    /// `Timer_AppPool`.
    TimerAppPool,
    /// `Timer_ConnectionIdle`.
    TimerConnectionIdle,
    /// `Timer_EntityBody`.
    TimerEntityBody,
    /// `Timer_HeaderWait`.
    TimerHeaderWait,
    /// `Timer_MinBytesPerSecond`.
    TimerMinBytesPerSecond,
    /// `Timer_ReqQueue`: the request waited too long in its queue.
    TimerReqQueue,
    /// `Timer_Response`.
    TimerResponse,
    /// `Timer_SslRenegotiation`.
    TimerSslRenegotiation,
    /// `URL` (400): the URL failed to parse or canonicalize.
    Url,
    /// `URL_Length` (414): the URL is above the limit.
    UrlLength,
    /// `Verb` (400): the method failed to parse.
    Verb,
    /// `Version_N/S` (505): the HTTP version is not supported.
    VersionNotSupported,
    /// `NotFound` (404): the host matched a registration but no path did.
    NotFound,
    /// `Misdirected` (421): on https, the Host is not the name the client gave in its TLS
    /// handshake (SNI) and the certificate binding requires them to agree. HTTP.sys has no
    /// such phrase; Portshare's own.
    Misdirected,
    /// `Upstream_Owner` (502): the upstream of a queue an account other than root created
    /// is served by another account (its socket's owner is not the queue owner). HTTP.sys
    /// has no upstreams; Portshare's own.
    UpstreamOwner,
}

impl Reason {
    /// The phrase as httperr writes it, such as `Timer_ReqQueue` or `N/A`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::AppOffline => "AppOffline",
            Reason::AppPoolTimer => "AppPoolTimer",
            Reason::AppShutdown => "AppShutdown",
            Reason::BadRequest => "BadRequest",
            Reason::BadGateway => "Bad_Gateway",
            Reason::ClientReset => "Client_Reset",
            Reason::ConnectionAbandonedByAppPool => "Connection_Abandoned_By_AppPool",
            Reason::ConnectionAbandonedByReqQueue => "Connection_Abandoned_By_ReqQueue",
            Reason::ConnectionDropped => "Connection_Dropped",
            Reason::ConnectionDroppedListFull => "Connection_Dropped_List_Full",
            Reason::ConnLimit => "ConnLimit",
            Reason::ConnectionsRefused => "Connections_Refused",
            Reason::Disabled => "Disabled",
            Reason::EntityTooLarge => "EntityTooLarge",
            Reason::FieldLength => "FieldLength",
            Reason::Forbidden => "Forbidden",
            Reason::Header => "Header",
            Reason::Hostname => "Hostname",
            Reason::Internal => "Internal",
            Reason::InvalidCrLf => "Invalid_CR/LF",
            Reason::LengthRequired => "LengthRequired",
            Reason::NotAvailable => "N/A",
            Reason::NotImplemented => "N/I",
            Reason::Number => "Number",
            Reason::Precondition => "Precondition",
            Reason::QueueFull => "QueueFull",
            Reason::RequestLength => "RequestLength",
            Reason::TimerAppPool => "Timer_AppPool",
            Reason::TimerConnectionIdle => "Timer_ConnectionIdle",
            Reason::TimerEntityBody => "Timer_EntityBody",
            Reason::TimerHeaderWait => "Timer_HeaderWait",
            Reason::TimerMinBytesPerSecond => "Timer_MinBytesPerSecond",
            Reason::TimerReqQueue => "Timer_ReqQueue",
            Reason::TimerResponse => "Timer_Response",
            Reason::TimerSslRenegotiation => "Timer_SslRenegotiation",
            Reason::Url => "URL",
            Reason::UrlLength => "URL_Length",
            Reason::Verb => "Verb",
            Reason::VersionNotSupported => "Version_N/S",
            Reason::NotFound => "NotFound",
            Reason::Misdirected => "Misdirected",
            Reason::UpstreamOwner => "Upstream_Owner",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A response the service writes itself instead of handing the request to an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rejection {
    /// The HTTP status: 400, 404, 414, 503, 505...
    pub status: u16,
    /// The httperr reason phrase.
    pub reason: Reason,
}

impl Rejection {
    pub(crate) const fn new(status: u16, reason: Reason) -> Rejection {
        Rejection { status, reason }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}
