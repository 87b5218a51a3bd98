//! Certificate bindings, as HTTP.sys keeps them (`netsh http add sslcert`): the key a
//! binding is found by ([`BindingKey`]), its parameters ([`BindingParams`]) and what
//! `show sslcert` tells of it ([`SslCertInfo`], [`SslCertList`]).
//!
//! A key is spelled as netsh spells it and travels as that string in JSON:
//!
//! | spelling | chosen when |
//! |---|---|
//! | `hostnameport=NAME:PORT` | the client's SNI name is `NAME` (compared lower-cased) |
//! | `ccs=PORT` | the client sent SNI and the central store folder holds a certificate for it |
//! | `ipport=IP:PORT` | the connection arrived on exactly `IP:PORT` |
//! | `ipport=0.0.0.0:PORT`, `ipport=[::]:PORT` | any IPv4 (IPv6) address of `PORT` |
//!
//! ```
//! use portshare_proto::sslcert::BindingKey;
//!
//! let key: BindingKey = "hostnameport=WWW.Example.com:443".parse()?;
//! assert_eq!(key.to_string(), "hostnameport=www.example.com:443");
//! assert_eq!(key.port(), 443);
//! assert!("ipport=[::]:8443".parse::<BindingKey>()?.is_wildcard());
//! assert!("hostnameport=../etc:443".parse::<BindingKey>().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a certificate binding is found at the handshake (netsh's `ipport=`,
/// `hostnameport=`, `ccs=`). Serialized as its netsh spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BindingKey {
    /// `ipport=IP:PORT`: an exact local address, or with `0.0.0.0` / `[::]` any address of
    /// that family on the port.
    IpPort(SocketAddr),
    /// `hostnameport=NAME:PORT`: the SNI name `NAME` (lower case, a DNS name) on the port.
    HostnamePort {
        /// The host name, lower case.
        host: Box<str>,
        /// The local port.
        port: u16,
    },
    /// `ccs=PORT`: a central certificate store, a folder of certificates named after their
    /// hosts, consulted by SNI name on the port.
    Ccs {
        /// The local port.
        port: u16,
    },
}

impl BindingKey {
    /// The local port the binding serves.
    pub fn port(&self) -> u16 {
        match self {
            BindingKey::IpPort(a) => a.port(),
            BindingKey::HostnamePort { port, .. } | BindingKey::Ccs { port } => *port,
        }
    }

    /// True for `ipport=0.0.0.0:PORT` and `ipport=[::]:PORT`.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, BindingKey::IpPort(a) if a.ip().is_unspecified())
    }
}

/// Why a binding key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBindingKey(String);

impl fmt::Display for InvalidBindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidBindingKey {}

fn bad(text: &str, why: &str) -> InvalidBindingKey {
    InvalidBindingKey(format!(
        "certificate binding {:?}: {why}",
        crate::text::printable(text)
    ))
}

fn parse_port(text: &str, port: &str) -> Result<u16, InvalidBindingKey> {
    // One to five digits, no sign, no leading zero: the prefix grammar's rule for ports.
    let ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && !(port.len() > 1 && port.starts_with('0'));
    match port.parse::<u16>() {
        Ok(p) if ok && p != 0 => Ok(p),
        _ => Err(bad(text, "the port is a number from 1 to 65535")),
    }
}

impl FromStr for BindingKey {
    type Err = InvalidBindingKey;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = text.split_once('=').ok_or_else(|| {
            bad(
                text,
                "expected ipport=IP:PORT, hostnameport=NAME:PORT or ccs=PORT",
            )
        })?;
        match kind.to_ascii_lowercase().as_str() {
            "ipport" => {
                let (ip, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(text, "expected IP:PORT"))?;
                let port = parse_port(text, port)?;
                let ip = match ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
                    Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6),
                    None => ip.parse::<std::net::Ipv4Addr>().map(IpAddr::V4),
                }
                .map_err(|_| bad(text, "the address is IPv4 or [IPv6] without zone"))?;
                Ok(BindingKey::IpPort(SocketAddr::new(ip, port)))
            }
            "hostnameport" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(text, "expected NAME:PORT"))?;
                let port = parse_port(text, port)?;
                let host = dns_name(host).ok_or_else(|| bad(text, "the name is not a DNS name"))?;
                Ok(BindingKey::HostnamePort {
                    host: host.into(),
                    port,
                })
            }
            "ccs" => Ok(BindingKey::Ccs {
                port: parse_port(text, rest)?,
            }),
            _ => Err(bad(
                text,
                "expected ipport=IP:PORT, hostnameport=NAME:PORT or ccs=PORT",
            )),
        }
    }
}

impl fmt::Display for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // SocketAddr writes IPv6 in brackets, as netsh does.
            BindingKey::IpPort(a) => write!(f, "ipport={a}"),
            BindingKey::HostnamePort { host, port } => write!(f, "hostnameport={host}:{port}"),
            BindingKey::Ccs { port } => write!(f, "ccs={port}"),
        }
    }
}

impl Serialize for BindingKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BindingKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a DNS host name (as SNI carries it) and returns it in lower case: 1 to 253
/// characters, dot-separated labels of 1 to 63 letters, digits and hyphens, no label
/// starting or ending with a hyphen, one trailing dot dropped. `None` for anything else,
/// so that `..`, `/`, `*`, IP-literal brackets and control characters never get further.
pub fn dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    for label in name.split('.') {
        let b = label.as_bytes();
        if b.is_empty()
            || b.len() > 63
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
            || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            return None;
        }
    }
    Some(name.to_ascii_lowercase())
}

/// `clientcertnegotiation`: what the handshake asks of the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ClientCert {
    /// No certificate is asked for (netsh's default).
    #[default]
    Ignore,
    /// A certificate is asked for; the handshake goes on without one. One that is sent is
    /// checked against the binding's CA.
    Request,
    /// The handshake fails without a certificate the binding's CA signed.
    Require,
}

impl fmt::Display for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientCert::Ignore => "ignore",
            ClientCert::Request => "request",
            ClientCert::Require => "require",
        })
    }
}

/// The lowest TLS version a binding accepts (netsh's `disablelegacytls`, `disabletls12`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[non_exhaustive]
pub enum MinTls {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

impl fmt::Display for MinTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MinTls::Tls12 => "1.2",
            MinTls::Tls13 => "1.3",
        })
    }
}

fn yes() -> bool {
    true
}

/// A binding's parameters beside its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingParams {
    /// What the handshake asks of the client. Default: [`ClientCert::Ignore`].
    #[serde(default)]
    pub client_cert: ClientCert,
    /// Offer `h2` in ALPN (the inverse of netsh's `disablehttp2`). Default: true.
    #[serde(default = "yes")]
    pub http2: bool,
    /// The lowest TLS version accepted. Default: 1.2.
    #[serde(default)]
    pub min_tls: MinTls,
    /// Resume sessions by tickets as well as by session IDs (`enablesessionticket`).
    /// Default: false.
    #[serde(default)]
    pub session_tickets: bool,
    /// Answer 421 to a request whose Host is not the SNI name. Default: false (HTTP.sys
    /// lets them differ); [`ClientCert::Require`] implies it.
    #[serde(default)]
    pub require_sni_match: bool,
}

impl Default for BindingParams {
    fn default() -> Self {
        BindingParams {
            client_cert: ClientCert::Ignore,
            http2: true,
            min_tls: MinTls::Tls12,
            session_tickets: false,
            require_sni_match: false,
        }
    }
}

impl BindingParams {
    /// Whether Host must equal the SNI name: set, or implied by a required client
    /// certificate.
    pub fn sni_must_match(&self) -> bool {
        self.require_sni_match || self.client_cert == ClientCert::Require
    }
}

/// What `show sslcert` tells of a certificate: the leaf of a binding's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    /// The subject's distinguished name, as RFC 4514 writes it.
    pub subject: String,
    /// The DNS names and IP addresses of the subjectAltName extension.
    #[serde(default)]
    pub sans: Vec<String>,
    /// Start of validity, RFC 3339 in UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 in UTC.
    pub not_after: String,
    /// SHA-1 of the DER certificate in lower-case hex: netsh's `certhash`.
    pub sha1: String,
    /// SHA-256 of the DER certificate in lower-case hex.
    pub sha256: String,
}

/// Where a binding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BindingSource {
    /// An `[[sslcert]]` table of the configuration file (wins over the API).
    Config,
    /// Added through the control API and kept in the state file.
    Api,
}

/// One binding as `show sslcert` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SslCertInfo {
    /// How the binding is found.
    pub binding: BindingKey,
    /// Its parameters.
    #[serde(flatten)]
    pub params: BindingParams,
    /// Its certificate; `None` for a `ccs` binding, whose certificates are in its folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<CertSummary>,
    /// The folder of a `ccs` binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// The host names a `ccs` folder's index holds (`*.example.com` for a wildcard file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ccs_names: Vec<String>,
    /// Where the binding comes from.
    pub source: BindingSource,
    /// For a binding whose certificate the daemon obtains by ACME, where that stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeStatus>,
    /// What the checks found worth saying (expired, name outside the SANs, key readable
    /// by others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Where an ACME certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AcmeState {
    /// An order is in progress (challenges pending), or about to start.
    Pending,
    /// A certificate is served; it is renewed at two thirds of its lifetime.
    Valid,
    /// The last attempt failed, and no certificate is served; another follows.
    Failed,
}

impl fmt::Display for AcmeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcmeState::Pending => "pending",
            AcmeState::Valid => "valid",
            AcmeState::Failed => "failed",
        })
    }
}

/// What `show sslcert` tells of a certificate the daemon obtains by ACME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeStatus {
    /// Where it stands.
    pub state: AcmeState,
    /// The end of the served certificate's validity, RFC 3339 in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// When the next order starts (a renewal, or a retry after a failure), RFC 3339 in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// Why the last attempt failed, if it did; kept until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Attempts that failed in a row.
    #[serde(default)]
    pub failures: u32,
    /// Certificates obtained since the daemon started.
    #[serde(default)]
    pub issued: u32,
}

/// The answer to `show sslcert`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SslCertList {
    /// Every binding, in key order.
    #[serde(default)]
    pub bindings: Vec<SslCertInfo>,
}

/// Largest `POST /v1/sslcert` body: one binding's PEM files, or a `ccs` folder's files
/// all together. The control socket refuses longer bodies before reading them whole.
pub const MAX_ADD_BYTES: usize = 1 << 20;

/// Most bindings the control API may add; the configuration file's are not counted.
pub const MAX_API_BINDINGS: usize = 4096;

/// Most files in one `ccs` folder sent over the control API.
pub const MAX_CCS_FILES: usize = 1024;

/// A PEM file as the CLI read it, with its caller's rights: the name is for messages
/// only (the daemon never opens it), the contents are what the daemon keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemFile {
    /// The file's name as the caller gave it, for messages.
    pub name: String,
    /// The file's contents.
    pub pem: String,
}

/// A central store folder's certificates as the CLI read them: each `NAME.pem` file of the
/// folder (`_.example.com.pem` for `*.example.com`), chain and key in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemFolder {
    /// The folder's name as the caller gave it, for messages and `show sslcert`.
    pub name: String,
    /// Its `*.pem` files; each file's `name` is its name in the folder (no `/`).
    pub files: Vec<PemFile>,
}

/// `POST /v1/sslcert` (`portshare sslcert add`): a binding and its material. An `ipport`
/// or `hostnameport` binding carries `cert` and `key`; a `ccs` binding carries `folder`.
/// `client_ca` comes with a client certificate policy other than `ignore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSslCert {
    /// How the binding is found.
    pub binding: BindingKey,
    /// Its parameters.
    #[serde(default)]
    pub params: BindingParams,
    /// The certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PemFile>,
    /// The certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PemFile>,
    /// The CAs client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PemFile>,
    /// A `ccs` binding's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PemFolder>,
}

/// `DELETE /v1/sslcert` (`portshare sslcert delete`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteSslCert {
    /// The binding to delete.
    pub binding: BindingKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_print_in_netsh_spelling() {
        for (text, shown) in [
            ("ipport=0.0.0.0:443", "ipport=0.0.0.0:443"),
            ("ipport=[::]:443", "ipport=[::]:443"),
            ("IPPORT=127.0.0.1:8443", "ipport=127.0.0.1:8443"),
            ("ipport=[::1]:1", "ipport=[::1]:1"),
            (
                "hostnameport=WWW.Example.COM:443",
                "hostnameport=www.example.com:443",
            ),
            ("hostnameport=localhost.:443", "hostnameport=localhost:443"),
            ("ccs=443", "ccs=443"),
        ] {
            let key: BindingKey = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(key.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<BindingKey>().as_ref(), Ok(&key), "{shown}");
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        for text in [
            "",
            "443",
            "ipport=443",
            "ipport=1.2.3.4",
            "ipport=1.2.3.4:0",
            "ipport=1.2.3.4:65536",
            "ipport=1.2.3.4:0443",
            "ipport=1.2.3.4:+443",
            "ipport=::1:443",
            "ipport=[fe80::1%2]:443",
            "ipport=host:443",
            "hostnameport=:443",
            "hostnameport=a..b:443",
            "hostnameport=../x:443",
            "hostnameport=*.example.com:443",
            "hostnameport=-a.example:443",
            "hostnameport=a_b.example:443",
            "hostnameport=a.example",
            "hostnameport=[::1]:443",
            "ccs=",
            "ccs=x",
            "urlprefix=x:443",
        ] {
            assert!(text.parse::<BindingKey>().is_err(), "{text:?} accepted");
        }
        let long = format!("hostnameport={}.example:443", "a".repeat(64));
        assert!(long.parse::<BindingKey>().is_err());
    }

    #[test]
    fn wildcards_and_ports() {
        let k: BindingKey = "ipport=0.0.0.0:80".parse().unwrap();
        assert!(k.is_wildcard());
        assert_eq!(k.port(), 80);
        assert!(
            !"ipport=127.0.0.1:80"
                .parse::<BindingKey>()
                .unwrap()
                .is_wildcard()
        );
        assert!(!"ccs=80".parse::<BindingKey>().unwrap().is_wildcard());
    }

    #[test]
    fn dns_names() {
        assert_eq!(dns_name("A.Example."), Some("a.example".into()));
        assert_eq!(
            dns_name("xn--bcher-kva.example"),
            Some("xn--bcher-kva.example".into())
        );
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a b",
            "*.a",
            "a\0",
            "é.example",
            "1.2.3.4:5",
        ] {
            assert_eq!(dns_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serde_as_strings_with_defaults() {
        let key: BindingKey = serde_json::from_str("\"ccs=8443\"").unwrap();
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"ccs=8443\"");
        assert!(serde_json::from_str::<BindingKey>("\"ccs=0\"").is_err());

        let p: BindingParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, BindingParams::default());
        assert!(p.http2 && !p.session_tickets && !p.sni_must_match());
        let p: BindingParams =
            serde_json::from_str(r#"{"client_cert":"require","min_tls":"1.3"}"#).unwrap();
        assert_eq!(p.min_tls, MinTls::Tls13);
        assert!(p.sni_must_match());
        assert!(serde_json::from_str::<BindingParams>(r#"{"min_tls":"1.1"}"#).is_err());
        assert!(serde_json::from_str::<BindingParams>(r#"{"http3":true}"#).is_err());

        let info = SslCertInfo {
            binding: "hostnameport=a.example:443".parse().unwrap(),
            params: BindingParams::default(),
            cert: None,
            folder: None,
            ccs_names: vec![],
            source: BindingSource::Config,
            acme: None,
            warnings: vec![],
        };
        let json = serde_json::to_string(&SslCertList {
            bindings: vec![info.clone()],
        })
        .unwrap();
        assert!(
            json.contains(r#""binding":"hostnameport=a.example:443""#),
            "{json}"
        );
        assert!(json.contains(r#""client_cert":"ignore""#), "{json}");
        let back: SslCertList = serde_json::from_str(&json).unwrap();
        assert_eq!(back.bindings, vec![info]);
    }
}
