//! The ACME challenges the daemon answers itself ([`Challenges`]): while an order of an
//! `acme = true` binding is pending, a `GET` (or `HEAD`) of
//! `/.well-known/acme-challenge/TOKEN` on the challenge port, whose Host is the name the
//! token was issued for, is answered with the token's key authorization before routing
//! (RFC 8555 §8.3). Any other request, another host's, or one for a token that is not
//! pending (never was, or its order ended) is routed as usual. With `tls_alpn = true`, a
//! handshake on `tls_port` offering `acme-tls/1` with a pending host's SNI gets that
//! host's challenge certificate instead (RFC 8737), and the connection ends there.
//!
//! The control plane (`daemon::acme`) writes the table, swapping it whole in
//! [`crate::shared::Shared`]; connections read it without a lock. An empty table, the
//! usual case, costs a plain-http request one load and one check.

use std::collections::HashMap;
use std::sync::Arc;

/// The path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub(crate) const PATH: &[u8] = b"/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The pending challenges: HTTP-01, (host, token) to key authorization, on one port;
/// TLS-ALPN-01, host to its challenge certificate, on another.
#[derive(Debug, Default, Clone)]
pub(crate) struct Challenges {
    /// The port HTTP-01 validation arrives on (`[acme] http_port`).
    pub(crate) port: u16,
    /// Host (lower case, a checked DNS name) and token, to the key authorization.
    pub(crate) tokens: HashMap<(String, String), Arc<str>>,
    /// The port TLS-ALPN-01 validation arrives on (`[acme] tls_port`).
    pub(crate) tls_port: u16,
    /// Host (lower case) to the certificate that answers its TLS-ALPN-01 challenge.
    pub(crate) alpn: HashMap<String, Arc<rustls::sign::CertifiedKey>>,
}

impl Challenges {
    /// The key authorization that answers a request, if the request is a pending
    /// challenge's: `GET` or `HEAD` of [`PATH`] and a pending token, on the challenge port,
    /// with the token's host in Host (its port, if any, is not compared: validation
    /// servers send it when the port is not 80).
    pub(crate) fn answer(
        &self,
        local_port: u16,
        method: &[u8],
        target: &[u8],
        host: Option<&[u8]>,
    ) -> Option<&Arc<str>> {
        if self.tokens.is_empty() || local_port != self.port {
            return None;
        }
        if method != b"GET" && method != b"HEAD" {
            return None;
        }
        let token = std::str::from_utf8(target.strip_prefix(PATH)?).ok()?;
        let host = std::str::from_utf8(host?).ok()?;
        // `name:port` or `name`; a bracketed IP literal never names a binding.
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let name = portshare_proto::sslcert::dns_name(name)?;
        self.tokens.get(&(name, token.to_owned()))
    }

    /// Whether TLS-ALPN-01 challenges are pending on `port`: its connections are TLS.
    pub(crate) fn alpn_on(&self, port: u16) -> bool {
        !self.alpn.is_empty() && port == self.tls_port
    }

    /// The challenge certificate for a handshake that offers `acme-tls/1` for `sni` on
    /// `local_port`, if that host's challenge is pending.
    pub(crate) fn alpn_answer(
        &self,
        local_port: u16,
        sni: Option<&str>,
    ) -> Option<&Arc<rustls::sign::CertifiedKey>> {
        if !self.alpn_on(local_port) {
            return None;
        }
        self.alpn.get(sni?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pending_token_for_its_host_on_the_port_is_answered() {
        let mut c = Challenges {
            port: 80,
            ..Default::default()
        };
        assert!(c.tokens.is_empty());
        c.tokens
            .insert(("app.example".into(), "tok".into()), Arc::from("tok.thumb"));
        let path = b"/.well-known/acme-challenge/tok";
        let ok = |port, method: &[u8], target: &[u8], host: Option<&[u8]>| {
            c.answer(port, method, target, host).map(|a| a.to_string())
        };
        assert_eq!(
            ok(80, b"GET", path, Some(b"app.example")).as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(
            ok(80, b"GET", path, Some(b"App.Example.:80")).as_deref(),
            Some("tok.thumb")
        );
        assert!(ok(80, b"HEAD", path, Some(b"app.example")).is_some());
        // Another host, another port, another method, another token, no Host.
        assert_eq!(ok(80, b"GET", path, Some(b"other.example")), None);
        assert_eq!(ok(8080, b"GET", path, Some(b"app.example")), None);
        assert_eq!(ok(80, b"POST", path, Some(b"app.example")), None);
        assert_eq!(
            ok(
                80,
                b"GET",
                b"/.well-known/acme-challenge/tok2",
                Some(b"app.example")
            ),
            None
        );
        assert_eq!(
            ok(
                80,
                b"GET",
                b"/.well-known/acme-challenge/tok?x",
                Some(b"app.example")
            ),
            None
        );
        assert_eq!(ok(80, b"GET", path, None), None);
        assert_eq!(ok(80, b"GET", path, Some(b"[::1]:80")), None);
    }

    #[test]
    fn a_tls_alpn_certificate_only_for_its_host_on_the_tls_port() {
        let key = crate::tls::acme_alpn_key("app.example", &[0u8; 32]).expect("key");
        let mut c = Challenges {
            tls_port: 443,
            ..Default::default()
        };
        assert!(!c.alpn_on(443));
        c.alpn.insert("app.example".into(), key);
        assert!(c.alpn_on(443) && !c.alpn_on(8443));
        assert!(c.alpn_answer(443, Some("app.example")).is_some());
        assert!(c.alpn_answer(443, Some("other.example")).is_none());
        assert!(c.alpn_answer(443, None).is_none());
        assert!(c.alpn_answer(8443, Some("app.example")).is_none());
    }
}
