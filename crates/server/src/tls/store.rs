//! The certificate bindings in force ([`Bindings`]): built whole from the configuration at
//! start and on reload, checked as they are built, and asked at each handshake which
//! binding serves it (spec §10).
//!
//! Each binding has a rustls `ServerConfig` of its own, made once: its certificate, its
//! client-certificate policy, its TLS versions, its ALPN list, its session cache and, if
//! it enables them, its ticket key. A `ccs` binding has one per file of its folder, all
//! with the binding's parameters; its folder is read when the bindings are built, never
//! during a handshake.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use portshare_proto::sslcert::{
    BindingKey, BindingParams, BindingSource, ClientCert, MinTls, SslCertInfo, SslCertList,
    dns_name,
};
use rustls::ServerConfig;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use super::cert;
use crate::config::SslCertConfig;

/// How many sessions a binding remembers for resumption by session ID.
const SESSION_CACHE: usize = 4096;

/// Most files a `ccs` folder's index takes.
const CCS_MAX_FILES: usize = 10_000;

/// One binding, ready for handshakes.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) params: BindingParams,
}

/// A central certificate store: host name (`*.example.com` for a wildcard file) to the
/// binding made of its file.
#[derive(Debug)]
struct Ccs {
    names: HashMap<String, Arc<Bound>>,
}

/// The bindings in force.
#[derive(Debug)]
pub(crate) struct Bindings {
    hostname: HashMap<(String, u16), Arc<Bound>>,
    ccs: HashMap<u16, Ccs>,
    ipport: HashMap<SocketAddr, Arc<Bound>>,
    /// What `show sslcert` lists.
    list: SslCertList,
    /// For a handshake no binding serves: a configuration that resolves no certificate,
    /// so rustls ends the handshake with a fatal alert.
    refuse: Arc<ServerConfig>,
}

impl Bindings {
    /// No bindings: every handshake is refused.
    pub(crate) fn empty() -> Bindings {
        Bindings {
            hostname: HashMap::new(),
            ccs: HashMap::new(),
            ipport: HashMap::new(),
            list: SslCertList::default(),
            refuse: refusing(),
        }
    }

    /// Reads and checks every `[[sslcert]]` table's files and builds the bindings; the
    /// warnings are returned beside them.
    ///
    /// # Errors
    ///
    /// The first binding whose files cannot be used: the message names the binding, the
    /// file and the reason.
    pub(crate) fn load(tables: &[SslCertConfig]) -> Result<(Bindings, Vec<String>), String> {
        let mut b = Bindings::empty();
        let mut warnings = Vec::new();
        for t in tables {
            let key = t.binding_key()?;
            let params = t.params();
            let fail = |e: String| format!("sslcert {key}: {e}");
            let client_ca = match (&t.client_ca, params.client_cert) {
                (Some(p), ClientCert::Request | ClientCert::Require) => {
                    Some(Arc::new(cert::load_cas(p).map_err(fail)?))
                }
                _ => None,
            };
            let mut info = SslCertInfo {
                binding: key.clone(),
                params,
                cert: None,
                folder: None,
                ccs_names: Vec::new(),
                source: BindingSource::Config,
                acme: None,
                warnings: Vec::new(),
            };
            match &key {
                BindingKey::Ccs { port } => {
                    let folder = t.folder.as_deref().unwrap_or(Path::new("."));
                    let (names, w) =
                        index_folder(folder, params, client_ca.as_ref()).map_err(fail)?;
                    info.folder = Some(folder.display().to_string());
                    info.ccs_names = names.keys().cloned().collect();
                    info.ccs_names.sort();
                    info.warnings = w;
                    b.ccs.insert(*port, Ccs { names });
                }
                // An ACME binding before its first certificate: listed, serving nothing.
                _ if t.acme && t.cert.is_none() => {}
                _ => {
                    let name = match &key {
                        BindingKey::HostnamePort { host, .. } => Some(&**host),
                        _ => None,
                    };
                    let (Some(c), Some(k)) = (&t.cert, &t.key) else {
                        return Err(fail("needs cert and key".into()));
                    };
                    let loaded = cert::load_pair(c, k, name).map_err(fail)?;
                    let bound = Arc::new(Bound {
                        config: server_config(params, loaded.key, client_ca.as_ref())
                            .map_err(fail)?,
                        params,
                    });
                    info.cert = Some(loaded.summary);
                    info.warnings = loaded.warnings;
                    match &key {
                        BindingKey::HostnamePort { host, port } => {
                            b.hostname.insert((host.to_string(), *port), bound);
                        }
                        BindingKey::IpPort(addr) => {
                            b.ipport.insert(*addr, bound);
                        }
                        _ => {}
                    }
                }
            }
            warnings.extend(info.warnings.iter().map(|w| format!("sslcert {key}: {w}")));
            b.list.bindings.push(info);
        }
        b.list.bindings.sort_by(|x, y| x.binding.cmp(&y.binding));
        Ok((b, warnings))
    }

    /// The binding for a handshake, in HTTP.sys's order (spec §10): the SNI name's
    /// `hostnameport` on the local port; with SNI, the port's `ccs` store; the exact
    /// `ipport`; the wildcard `ipport` of the local address's family. `sni` is a checked,
    /// lower-case DNS name.
    pub(crate) fn select(&self, sni: Option<&str>, local: SocketAddr) -> Option<&Arc<Bound>> {
        let port = local.port();
        if let Some(name) = sni {
            if let Some(b) = self.hostname.get(&(name.to_owned(), port)) {
                return Some(b);
            }
            if let Some(store) = self.ccs.get(&port) {
                let wildcard = name
                    .split_once('.')
                    .map(|(_, parent)| format!("*.{parent}"));
                if let Some(b) = store
                    .names
                    .get(name)
                    .or_else(|| wildcard.and_then(|w| store.names.get(&w)))
                {
                    return Some(b);
                }
            }
        }
        let ip = local.ip().to_canonical();
        let any = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        self.ipport
            .get(&SocketAddr::new(ip, port))
            .or_else(|| self.ipport.get(&SocketAddr::new(any, port)))
    }

    /// The configuration that refuses a handshake.
    pub(crate) fn refusing(&self) -> Arc<ServerConfig> {
        self.refuse.clone()
    }

    /// Whether any binding serves `port`.
    pub(crate) fn covers_port(&self, port: u16) -> bool {
        self.list.bindings.iter().any(|b| b.binding.port() == port)
    }

    /// What `show sslcert` lists.
    #[allow(dead_code)] // for the control API's `show sslcert`
    pub(crate) fn list(&self) -> &SslCertList {
        &self.list
    }
}

/// A central store's index, and the warnings of its files.
type Indexed = (HashMap<String, Arc<Bound>>, Vec<String>);

/// Reads a central store folder: each `NAME.pem` (chain and key) whose `NAME` is a DNS
/// name, and `_.NAME.pem` as `*.NAME`. Other files are skipped with a warning; a file
/// that is named right but cannot be used fails the binding.
fn index_folder(
    folder: &Path,
    params: BindingParams,
    client_ca: Option<&Arc<rustls::RootCertStore>>,
) -> Result<Indexed, String> {
    let entries = std::fs::read_dir(folder)
        .map_err(|e| format!("cannot read folder {}: {e}", folder.display()))?;
    let mut names = HashMap::new();
    let mut warnings = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read folder {}: {e}", folder.display()))?;
        let path = entry.path();
        let file = entry.file_name();
        let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".pem")) else {
            continue;
        };
        let (name, host) = match stem.strip_prefix("_.") {
            Some(parent) => match dns_name(parent) {
                Some(p) => (format!("*.{p}"), format!("_.{p}")),
                None => {
                    warnings.push(format!(
                        "{}: not named after a DNS name; skipped",
                        path.display()
                    ));
                    continue;
                }
            },
            None => match dns_name(stem) {
                Some(n) => (n.clone(), n),
                None => {
                    warnings.push(format!(
                        "{}: not named after a DNS name; skipped",
                        path.display()
                    ));
                    continue;
                }
            },
        };
        if names.len() >= CCS_MAX_FILES {
            return Err(format!(
                "{}: more than {CCS_MAX_FILES} certificates",
                folder.display()
            ));
        }
        // A wildcard file's SANs are checked for a name it covers.
        let probe = match name.strip_prefix("*.") {
            Some(parent) => format!("x.{parent}"),
            None => host.clone(),
        };
        let loaded = cert::load_combined(&path, &probe)?;
        warnings.extend(loaded.warnings);
        let bound = Arc::new(Bound {
            config: server_config(params, loaded.key, client_ca)?,
            params,
        });
        names.insert(name, bound);
    }
    Ok((names, warnings))
}

/// A binding's rustls configuration: TLS 1.2 and 1.3 (or 1.3 only), no 0-RTT, resumption
/// by session ID from a cache of its own, tickets only if the binding enables them, ALPN
/// as [`super::alpn`] says.
fn server_config(
    params: BindingParams,
    key: Arc<CertifiedKey>,
    client_ca: Option<&Arc<rustls::RootCertStore>>,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match params.min_tls {
        MinTls::Tls13 => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match (params.client_cert, client_ca) {
        (ClientCert::Request | ClientCert::Require, Some(roots)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), super::provider());
            let verifier = if params.client_cert == ClientCert::Request {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client_ca cannot be used: {e}"))?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    config.alpn_protocols = super::alpn(params.http2);
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.max_early_data_size = 0;
    if params.session_tickets {
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
    }
    Ok(Arc::new(config))
}

/// A configuration whose certificate resolver finds nothing.
fn refusing() -> Arc<ServerConfig> {
    #[derive(Debug)]
    struct Nothing;
    impl ResolvesServerCert for Nothing {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            None
        }
    }
    let config = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_no_client_auth()
                .with_cert_resolver(Arc::new(Nothing))
        });
    // The provider is aws-lc-rs's default, which supports the default versions.
    Arc::new(config.expect("aws-lc-rs supports TLS 1.2 and 1.3"))
}
