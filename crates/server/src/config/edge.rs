//! The edge of the configuration: listening addresses with options of their own (the PROXY
//! protocol), the proxies whose forwarding headers are believed, and the ACME account
//! certificates are obtained with.

use std::path::PathBuf;

use serde::Deserialize;

use super::Fault;

/// One `[[listener]]` table: what connections reaching `address` must start with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `IP:PORT`; a wildcard IP covers every address of its family on the port.
    pub address: std::net::SocketAddr,
    /// Every connection starts with a PROXY protocol header (v1 or v2), else is closed.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// One `[[trusted_proxy]]` table: address ranges of proxies in front of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxyConfig {
    /// CIDR ranges (`10.0.0.0/8`, `::1/128`) or single addresses.
    pub ranges: Vec<String>,
}

/// The `[acme]` table: the directory, the account's contact, and the challenge ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The directory URL, `https://`.
    pub directory: String,
    /// The account's contact URLs (`mailto:...`); may be empty.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The CAs the directory's https certificate chains to, PEM. Default: the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The port HTTP-01 challenges arrive on. Default 80.
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// The port TLS-ALPN-01 challenges arrive on. Default 443.
    #[serde(default = "default_tls_port")]
    pub tls_port: u16,
    /// Answer TLS-ALPN-01 on `tls_port` rather than HTTP-01. Default false.
    #[serde(default)]
    pub tls_alpn: bool,
}

fn default_http_port() -> u16 {
    80
}

fn default_tls_port() -> u16 {
    443
}

impl AcmeConfig {
    pub(super) fn check(&self) -> Result<(), Fault> {
        let at = |key, message: String| Fault::at(Some(("acme", None)), key, message);
        if !self.directory.starts_with("https://") {
            return Err(at(
                "directory",
                format!(
                    "acme.directory = {:?}: expected an https:// URL",
                    self.directory
                ),
            ));
        }
        if self.http_port == 0 || self.tls_port == 0 {
            let key = if self.http_port == 0 {
                "http_port"
            } else {
                "tls_port"
            };
            return Err(at(key, format!("acme.{key} = 0: expected 1 to 65535")));
        }
        Ok(())
    }
}

/// Checks the `[[listener]]` and `[[trusted_proxy]]` tables: no address listed twice, every
/// range an address or `ADDRESS/BITS`.
pub(super) fn check(
    listeners: &[ListenerConfig],
    trusted_proxies: &[TrustedProxyConfig],
) -> Result<(), Fault> {
    for (i, l) in listeners.iter().enumerate() {
        if listeners[..i].iter().any(|m| m.address == l.address) {
            return Err(Fault::at(
                Some(("listener", Some(i))),
                "address",
                format!("listener address = \"{}\": listed twice", l.address),
            ));
        }
    }
    for (i, t) in trusted_proxies.iter().enumerate() {
        for r in &t.ranges {
            if crate::trust::Cidr::parse(r).is_none() {
                return Err(Fault::at(
                    Some(("trusted_proxy", Some(i))),
                    "ranges",
                    format!(
                        "trusted_proxy range {r:?}: expected an address or ADDRESS/BITS \
                         (10.0.0.0/8, ::1/128)"
                    ),
                ));
            }
        }
    }
    Ok(())
}
