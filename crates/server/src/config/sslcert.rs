//! `[[sslcert]]` tables: certificate bindings of the configuration file, as text. Their
//! files are read and checked by `crate::tls`, at start, reload and `check-config`.

use std::path::PathBuf;

use portshare_proto::sslcert::{BindingKey, BindingParams, ClientCert, MinTls};
use serde::Deserialize;

use super::Fault;

/// One `[[sslcert]]` table: how the binding is found (exactly one of `ipport`,
/// `hostnameport`, `ccs`), its certificate and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslCertConfig {
    /// `IP:PORT`, with `0.0.0.0:PORT` and `[::]:PORT` for any address of the family.
    #[serde(default)]
    pub ipport: Option<String>,
    /// `NAME:PORT`: chosen by the SNI name.
    #[serde(default)]
    pub hostnameport: Option<String>,
    /// `PORT`: the central store in `folder`, looked up by the SNI name.
    #[serde(default)]
    pub ccs: Option<u16>,
    /// The central store's folder: `NAME.pem` files holding a chain and its key each;
    /// `_.example.com.pem` serves `*.example.com`.
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// The certificate chain, PEM, leaf first.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `ignore` (default), `request` or `require`.
    #[serde(default)]
    pub client_cert: ClientCert,
    /// The CAs client certificates must chain to, PEM; needed unless `client_cert` is
    /// `ignore`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Offer HTTP/2 in ALPN. Default true.
    #[serde(default = "super::yes")]
    pub http2: bool,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_tls: MinTls,
    /// Resume by session tickets as well as by session IDs. Default false.
    #[serde(default)]
    pub session_tickets: bool,
    /// Answer 421 when Host is not the SNI name. Default false.
    #[serde(default)]
    pub require_sni_match: bool,
    /// Obtain and renew the certificate by ACME (the `[acme]` table): a `hostnameport`
    /// binding without `cert` and `key`. Default false.
    #[serde(default)]
    pub acme: bool,
}

impl SslCertConfig {
    /// The binding's key, as the table spells it (checked with the rest of the configuration).
    pub fn binding_key(&self) -> Result<BindingKey, String> {
        let text = match (&self.ipport, &self.hostnameport, self.ccs) {
            (Some(a), None, None) => format!("ipport={a}"),
            (None, Some(h), None) => format!("hostnameport={h}"),
            (None, None, Some(p)) => format!("ccs={p}"),
            _ => {
                return Err("sslcert: expected exactly one of ipport, hostnameport and ccs".into());
            }
        };
        text.parse::<BindingKey>()
            .map_err(|e| format!("sslcert: {e}"))
    }

    /// The binding's parameters.
    pub fn params(&self) -> BindingParams {
        BindingParams {
            client_cert: self.client_cert,
            http2: self.http2,
            min_tls: self.min_tls,
            session_tickets: self.session_tickets,
            require_sni_match: self.require_sni_match,
        }
    }

    /// The checks that need no file: the key, and which paths go with it.
    pub(super) fn check(&self, i: usize, before: &[SslCertConfig]) -> Result<(), Fault> {
        let at = |key: &'static str, message: String| {
            Fault::at(Some(("sslcert", Some(i))), key, message)
        };
        let which = if self.ipport.is_some() {
            "ipport"
        } else if self.hostnameport.is_some() {
            "hostnameport"
        } else {
            "ccs"
        };
        let key = self.binding_key().map_err(|e| at(which, e))?;
        if before.iter().any(|b| b.binding_key().as_ref() == Ok(&key)) {
            return Err(at(which, format!("sslcert {key}: bound twice")));
        }
        if self.acme {
            let BindingKey::HostnamePort { .. } = key else {
                return Err(at(
                    "acme",
                    format!("sslcert {key}: acme = true needs a hostnameport binding"),
                ));
            };
            if let Some(k) = [
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
                ("folder", self.folder.is_some()),
            ]
            .into_iter()
            .find_map(|(k, set)| set.then_some(k))
            {
                return Err(at(
                    k,
                    format!("sslcert {key}: acme = true obtains its certificate: no {k}"),
                ));
            }
        } else if matches!(key, BindingKey::Ccs { .. }) {
            if self.folder.is_none() {
                return Err(at("folder", format!("sslcert {key}: needs folder")));
            }
            if self.cert.is_some() || self.key.is_some() {
                return Err(at(
                    if self.cert.is_some() { "cert" } else { "key" },
                    format!("sslcert {key}: a ccs binding takes its certificates from folder"),
                ));
            }
        } else {
            if self.folder.is_some() {
                return Err(at(
                    "folder",
                    format!("sslcert {key}: folder is for ccs only"),
                ));
            }
            if self.cert.is_none() {
                return Err(at(
                    "cert",
                    format!("sslcert {key}: needs cert (a PEM chain file)"),
                ));
            }
            if self.key.is_none() {
                return Err(at(
                    "key",
                    format!("sslcert {key}: needs key (a PEM key file)"),
                ));
            }
        }
        if self.client_cert != ClientCert::Ignore && self.client_ca.is_none() {
            return Err(at(
                "client_ca",
                format!(
                    "sslcert {key}: client_cert = \"{}\" needs client_ca (a PEM file of CAs)",
                    self.client_cert
                ),
            ));
        }
        Ok(())
    }
}
