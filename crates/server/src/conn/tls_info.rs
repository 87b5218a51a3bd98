//! What an https connection learned in its handshake, as its requests need it.

use bytes::Bytes;

/// The TLS session's facts, taken once after the handshake and shared by every request
/// (HTTP/1) or stream (HTTP/2) of the connection.
#[derive(Debug, Clone)]
pub(crate) struct TlsInfo {
    /// The `portshare-tls` header's value: `version=…; cipher=…; sni=…; alpn=…`.
    pub(crate) header: Bytes,
    /// The client's leaf certificate, base64 of its DER, for `portshare-client-cert`.
    pub(crate) client_cert: Option<Bytes>,
    /// The SNI name the client sent, lower case.
    pub(crate) sni: Option<Box<str>>,
    /// Answer 421 to a request whose Host is not the SNI name.
    pub(crate) require_sni_match: bool,
}
