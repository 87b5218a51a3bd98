//! The ACME HTTP-01 challenges the daemon answers itself ([`Challenges`]): while an order
//! of an `acme = true` binding is pending, a `GET` (or `HEAD`) of
//! `/.well-known/acme-challenge/TOKEN` on the challenge port, whose Host is the name the
//! token was issued for, is answered with the token's key authorization before routing
//! (RFC 8555 §8.3). Any other request, another host's, or one for a token that is not
//! pending (never was, or its order ended) is routed as usual.
//!
//! The control plane (`daemon::acme`) writes the table, swapping it whole in
//! [`crate::shared::Shared`]; connections read it without a lock. An empty table, the
//! usual case, costs a plain-http request one load and one check.

use std::collections::HashMap;
use std::sync::Arc;

/// The path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub(crate) const PATH: &[u8] = b"/.well-known/acme-challenge/";

/// The pending HTTP-01 challenges: (host, token) to key authorization, on one port.
#[derive(Debug, Default, Clone)]
pub(crate) struct Challenges {
    /// The port they arrive on (`[acme] http_port`).
    pub(crate) port: u16,
    /// Host (lower case, a checked DNS name) and token, to the key authorization.
    pub(crate) tokens: HashMap<(String, String), Arc<str>>,
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
}
