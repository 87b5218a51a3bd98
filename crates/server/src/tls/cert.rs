//! Certificate and key files: reading PEM, the checks made at load, reload and
//! `check-config`, and the [`CertSummary`] that `show sslcert` gives.
//!
//! A file that cannot be read, holds no PEM of the kind expected, or a key that is not the
//! certificate's, is refused with a message naming the file and the reason. What still
//! works but deserves an administrator's eye (an expired or not-yet-valid certificate, a
//! host name outside its SANs, a key file that other users may read) is a warning.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use portshare_proto::sslcert::CertSummary;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate chain with its key, checked, and what is known of its leaf.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) summary: CertSummary,
    pub(crate) warnings: Vec<String>,
}

/// Reads a chain from `cert` and its key from `key`; `name` is the host name it is bound
/// to (`hostnameport`), checked against its SANs.
pub(crate) fn load_pair(cert: &Path, key: &Path, name: Option<&str>) -> Result<Loaded, String> {
    let chain = certs(&read(cert)?, cert)?;
    let der = private_key(&read(key)?, key)?;
    let mut loaded = certified(chain, der, cert, key, name)?;
    loaded.warnings.extend(readable_by_others(key));
    Ok(loaded)
}

/// Reads a central-store file: the chain and its key in one PEM file, for host `name`.
pub(crate) fn load_combined(file: &Path, name: &str) -> Result<Loaded, String> {
    let bytes = read(file)?;
    let chain = certs(&bytes, file)?;
    let der = private_key(&bytes, file)?;
    let mut loaded = certified(chain, der, file, file, Some(name))?;
    loaded.warnings.extend(readable_by_others(file));
    Ok(loaded)
}

/// The validity (from, until) in Unix seconds of the leaf of the PEM chain in `path`;
/// `None` if there is no readable certificate.
pub(crate) fn validity(path: &Path) -> Option<(i64, i64)> {
    let chain = certs(&read(path).ok()?, path).ok()?;
    summarize(chain.first()?).ok().map(|(_, v, _)| v)
}

/// Reads the CA certificates client certificates must chain to.
pub(crate) fn load_cas(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certs(&read(path)?, path)? {
        roots.add(der).map_err(|e| {
            format!(
                "{}: not a CA certificate rustls accepts: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certs(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no PEM CERTIFICATE", path.display()));
    }
    Ok(chain)
}

fn private_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::Error;
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        Error::NoItemsFound => format!(
            "{}: holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        ),
        e => format!("{}: bad PEM: {e}", path.display()),
    })
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    der: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    name: Option<&str>,
) -> Result<Loaded, String> {
    let signing = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: the key cannot be used: {e}", key_path.display()))?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{}: the key is not the key of the certificate in {}",
                key_path.display(),
                cert_path.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "{}: the certificate cannot be used: {e}",
                cert_path.display()
            ));
        }
    }
    let leaf = &key.cert[0];
    let (summary, validity, names) = summarize(leaf)
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", cert_path.display()))?;
    let mut warnings = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > validity.1 {
        warnings.push(format!(
            "{}: the certificate expired at {}",
            cert_path.display(),
            summary.not_after
        ));
    } else if now < validity.0 {
        warnings.push(format!(
            "{}: the certificate is not valid before {}",
            cert_path.display(),
            summary.not_before
        ));
    }
    if let Some(name) = name
        && !names.iter().any(|n| covers(n, name))
    {
        warnings.push(format!(
            "{}: {name} is not among the certificate's names ({})",
            cert_path.display(),
            summary.sans.join(", ")
        ));
    }
    Ok(Loaded {
        key: Arc::new(key),
        summary,
        warnings,
    })
}

/// Whether a SAN DNS name (`a.example`, `*.example`) covers a host name, both lower case.
pub(crate) fn covers(san: &str, host: &str) -> bool {
    match san.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => san == host,
    }
}

/// A warning when a key file may be read by accounts other than its owner.
fn readable_by_others(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 != 0).then(|| {
        format!(
            "{}: the private key is readable by other users (mode {:04o}); chmod 600 it",
            path.display(),
            mode & 0o7777
        )
    })
}

/// A certificate's summary, its validity (from, until) in Unix seconds, and its SAN DNS
/// names in lower case.
type Summarized = (CertSummary, (i64, i64), Vec<String>);

/// What `show sslcert` tells of a certificate, and what the checks need of it.
fn summarize(der: &[u8]) -> Result<Summarized, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut sans = Vec::new();
    let mut names = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    sans.push((*d).to_owned());
                    names.push(d.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    sans.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let summary = CertSummary {
        subject: cert.subject().to_string(),
        sans,
        not_before: rfc3339(from),
        not_after: rfc3339(until),
        sha1: hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
        ),
        sha256: hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref()),
    };
    Ok((summary, (from, until), names))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Unix seconds as RFC 3339 in UTC (`2026-05-01T12:00:00Z`); before 1970 reads as 1970.
pub(crate) fn rfc3339(secs: i64) -> String {
    let secs = secs.max(0) as u64;
    let (y, m, d) = crate::pages::civil(secs / 86400);
    let rem = secs % 86400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Standard base64 with padding, for `portshare-client-cert`.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn sans_cover_names() {
        assert!(covers("a.example", "a.example"));
        assert!(covers("*.example", "a.example"));
        assert!(!covers("*.example", "a.b.example"));
        assert!(!covers("*.example", "example"));
        assert!(!covers("b.example", "a.example"));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("ps-tls-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let cert = write("a.crt", &a.cert.pem(), 0o644);
        let key = write("a.key", &a.signing_key.serialize_pem(), 0o600);
        let other_key = write("b.key", &b.signing_key.serialize_pem(), 0o600);
        let open_key = write("open.key", &a.signing_key.serialize_pem(), 0o644);
        let junk = write("junk.pem", "-----BEGIN CERTIFICATE-----\n!!!\n", 0o600);

        let ok = load_pair(&cert, &key, Some("a.example")).unwrap();
        assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
        assert_eq!(ok.summary.sans, vec!["a.example"]);
        assert_eq!(ok.summary.sha256.len(), 64);
        assert_eq!(ok.summary.sha1.len(), 40);

        let e = load_pair(&cert, &other_key, None).unwrap_err();
        assert!(e.contains("b.key") && e.contains("not the key"), "{e}");
        let e = load_pair(&dir.join("missing.crt"), &key, None).unwrap_err();
        assert!(
            e.contains("missing.crt") && e.contains("cannot read"),
            "{e}"
        );
        let e = load_pair(&junk, &key, None).unwrap_err();
        assert!(e.contains("junk.pem"), "{e}");
        let e = load_pair(&cert, &cert, None).unwrap_err();
        assert!(
            e.contains("a.crt") && e.contains("no PEM private key"),
            "{e}"
        );

        let w = load_pair(&cert, &open_key, Some("c.example"))
            .unwrap()
            .warnings;
        assert!(
            w.iter().any(|w| w.contains("readable by other users")),
            "{w:?}"
        );
        assert!(
            w.iter().any(|w| w.contains("c.example is not among")),
            "{w:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
