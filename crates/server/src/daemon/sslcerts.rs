//! Certificate bindings of the control API (`portshare sslcert`, `/v1/sslcert`): who may
//! add and delete them, where their PEM material is kept, and how they join the
//! configuration's `[[sslcert]]` tables into the bindings in force.
//!
//! - Only administrators (root, the daemon's user, the admin group) add and delete; anyone
//!   may list, as with `netsh http show sslcert`: the list tells host names and certificate
//!   summaries, which the state view and the handshakes already tell every local user and
//!   client. No answer ever carries a private key.
//! - The CLI sends the PEM files' contents; the daemon writes its own copies, mode 0600, in
//!   the `sslcert` folder (0700) beside the state file, under names made from the binding
//!   key ([`stem`]), never from a name the caller sent, and then reads them through the
//!   same checks (`crate::tls`) as the configuration's files. A `ccs` folder's files are
//!   named after the host names they serve, each checked as a DNS name.
//! - One request holds at most [`MAX_ADD_BYTES`] of PEM, and the API at most
//!   [`MAX_API_BINDINGS`] bindings, so a control connection cannot grow the daemon or its
//!   disk without bound.
//! - The configuration wins: a key it binds is refused by `add` (183) and by `delete` (5),
//!   and a state-file binding the configuration comes to bind is shadowed, with a warning.
//! - An `add` or `delete` builds the bindings anew and swaps them in for new handshakes,
//!   as a reload does; established connections keep their sessions. It runs under the
//!   reload mutex, so the two never interleave.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use portshare_proto::sslcert::{
    AddSslCert, BindingKey, BindingSource, ClientCert, DeleteSslCert, MAX_ADD_BYTES,
    MAX_API_BINDINGS, MAX_CCS_FILES, PemFile, SslCertInfo, SslCertList, dns_name,
};

use super::reload::Report;
use super::*;
use crate::config::{SavedSslCert, SslCertConfig};
use crate::tls::Bindings;

/// The name the daemon's copies of a binding's files are made from: the binding key with
/// nothing a path could misread (`ipport-0.0.0.0-443`, `ipport-` and 32 hex digits for
/// IPv6, `hostnameport-www.example.com-443`, `ccs-443`).
pub(super) fn stem(key: &BindingKey) -> String {
    match key {
        BindingKey::IpPort(a) => match a.ip() {
            IpAddr::V4(ip) => format!("ipport-{ip}-{}", a.port()),
            IpAddr::V6(ip) => {
                let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
                format!("ipport-{hex}-{}", a.port())
            }
        },
        // The host is a checked DNS name: letters, digits, hyphens and dots.
        BindingKey::HostnamePort { host, port } => format!("hostnameport-{host}-{port}"),
        BindingKey::Ccs { port } => format!("ccs-{port}"),
        // Keys the API does not take have no files.
        other => format!("other-{}", other.port()),
    }
}

/// Where a state-file binding's files are.
#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    /// A `ccs` binding's folder.
    folder: PathBuf,
}

impl Files {
    fn of(dir: &Path, key: &BindingKey) -> Files {
        let stem = stem(key);
        Files {
            cert: dir.join(format!("{stem}.cert.pem")),
            key: dir.join(format!("{stem}.key.pem")),
            client_ca: dir.join(format!("{stem}.ca.pem")),
            folder: dir.join(&stem),
        }
    }

    /// Removes what there is of them.
    fn remove(&self) {
        for f in [&self.cert, &self.key, &self.client_ca] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// The `[[sslcert]]` table a state-file binding stands for, its files the daemon's copies.
fn table_of(dir: &Path, saved: &SavedSslCert) -> SslCertConfig {
    let files = Files::of(dir, &saved.binding);
    let ccs = matches!(saved.binding, BindingKey::Ccs { .. });
    let text = saved.binding.to_string();
    let (kind, value) = text.split_once('=').unwrap_or(("", ""));
    SslCertConfig {
        ipport: (kind == "ipport").then(|| value.to_owned()),
        hostnameport: (kind == "hostnameport").then(|| value.to_owned()),
        ccs: ccs.then(|| saved.binding.port()),
        folder: ccs.then_some(files.folder),
        cert: (!ccs).then_some(files.cert),
        key: (!ccs).then_some(files.key),
        client_cert: saved.params.client_cert,
        client_ca: saved.client_ca.then_some(files.client_ca),
        http2: saved.params.http2,
        min_tls: saved.params.min_tls,
        session_tickets: saved.params.session_tickets,
        require_sni_match: saved.params.require_sni_match,
        acme: false,
    }
}

fn config_keys(config: &Config) -> Vec<BindingKey> {
    config
        .sslcerts
        .iter()
        .filter_map(|t| t.binding_key().ok())
        .collect()
}

/// The `ccs` file name a caller sent, as the daemon keeps it: `NAME.pem` or `_.NAME.pem`
/// with `NAME` a DNS name, lower case. `None` for anything else.
fn ccs_file_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".pem")?;
    match stem.strip_prefix("_.") {
        Some(parent) => dns_name(parent).map(|p| format!("_.{p}.pem")),
        None => dns_name(stem).map(|n| format!("{n}.pem")),
    }
}

/// Writes `bytes` to `path`, mode 0600 from its creation.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub(super) fn private_dir(path: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// A message about the daemon's copies, with each copy's path replaced by the name the
/// caller sent.
fn as_sent(message: &str, names: &[(PathBuf, String)]) -> String {
    let mut m = message.to_owned();
    for (path, name) in names {
        m = m.replace(&path.display().to_string(), name);
    }
    portshare_proto::text::printable(&m).into_owned()
}

impl Daemon {
    /// The folder the API's certificate material is kept in: `sslcert` beside the state
    /// file.
    fn sslcert_dir(&self) -> PathBuf {
        self.state_file
            .parent()
            .unwrap_or(Path::new("."))
            .join("sslcert")
    }

    /// The bindings of `config` and `saved` together, built and checked: the
    /// configuration's tables, then the state file's that no table of the configuration
    /// shadows (each shadowed one named in a warning) and whose files still check (each
    /// that does not is left out, with a warning). `extra` joins as a state-file binding.
    ///
    /// # Errors
    ///
    /// A configuration binding whose files cannot be used, or `extra`'s.
    pub(super) fn sslcert_bindings(
        &self,
        config: &Config,
        saved: &[SavedSslCert],
        extra: Option<&SavedSslCert>,
        report: &mut Report,
    ) -> Result<Bindings, String> {
        let dir = self.sslcert_dir();
        let shadowing = config_keys(config);
        let mut tables: Vec<SslCertConfig> = config
            .sslcerts
            .iter()
            .map(|t| {
                if t.acme {
                    self.acme_table(t, report)
                } else {
                    t.clone()
                }
            })
            .collect();
        for s in saved {
            if shadowing.contains(&s.binding) {
                report.warn(format!(
                    "the certificate binding {} in the state file is overridden by the \
                     configuration file's",
                    s.binding
                ));
                continue;
            }
            let table = table_of(&dir, s);
            if let Err(e) = Bindings::load(std::slice::from_ref(&table)) {
                report.warn(format!(
                    "state file {}: certificate binding {} left out: {e}",
                    self.state_file.display(),
                    s.binding
                ));
                continue;
            }
            tables.push(table);
        }
        tables.extend(extra.map(|s| table_of(&dir, s)));
        let (bindings, warnings) = Bindings::load(&tables)?;
        for w in warnings {
            report.warn(w);
        }
        Ok(bindings)
    }

    /// Which keys of `list` the state file holds: the API's, unless the configuration binds
    /// them too.
    fn mark_sources(st: &State, list: &mut SslCertList) {
        let config = config_keys(&st.config);
        for b in &mut list.bindings {
            let api = !config.contains(&b.binding)
                && st.saved.sslcert.iter().any(|s| s.binding == b.binding);
            b.source = if api {
                BindingSource::Api
            } else {
                BindingSource::Config
            };
        }
    }

    /// `GET /v1/sslcert`: the bindings in force, for anyone.
    pub(crate) fn sslcert_list(&self) -> SslCertList {
        let mut list = self.shared.tls.load().list().clone();
        {
            let st = self.lock();
            Daemon::mark_sources(&st, &mut list);
        }
        for b in &mut list.bindings {
            b.acme = self.acme_status(&b.binding);
        }
        list
    }

    fn may_bind_certificates(&self, session: &Session, verb: &str) -> Result<(), ApiError> {
        let st = self.lock();
        if self.is_admin(&st, &session.peer) {
            return Ok(());
        }
        Err(api(
            Win32Error::AccessDenied,
            format!("only root, the daemon's user or a member of the admin group may {verb}"),
        ))
    }

    /// `POST /v1/sslcert`: administrators bind a certificate. Runs on the blocking pool.
    pub(crate) fn sslcert_add(
        &self,
        session: &Session,
        add: &AddSslCert,
    ) -> Result<SslCertInfo, ApiError> {
        let invalid = |m: String| api(Win32Error::InvalidParameter, m);
        let key = &add.binding;
        // The request's shape, before anything is written.
        let ccs = matches!(key, BindingKey::Ccs { .. });
        if ccs && (add.folder.is_none() || add.cert.is_some() || add.key.is_some()) {
            return Err(invalid(format!(
                "{key}: a ccs binding takes a folder of certificates, not cert and key"
            )));
        }
        if !ccs && (add.cert.is_none() || add.key.is_none() || add.folder.is_some()) {
            return Err(invalid(format!(
                "{key}: needs a certificate chain and its key (cert and key)"
            )));
        }
        if add.params.client_cert != ClientCert::Ignore && add.client_ca.is_none() {
            return Err(invalid(format!(
                "{key}: client_cert {} needs client_ca (the CAs client certificates chain to)",
                add.params.client_cert
            )));
        }
        let files = add.folder.as_ref().map_or(&[][..], |f| &f.files[..]);
        if files.len() > MAX_CCS_FILES {
            return Err(invalid(format!(
                "{key}: more than {MAX_CCS_FILES} certificates in the folder"
            )));
        }
        let size: usize = [&add.cert, &add.key, &add.client_ca]
            .into_iter()
            .flatten()
            .chain(files)
            .map(|f| f.pem.len())
            .sum();
        if size > MAX_ADD_BYTES {
            return Err(invalid(format!(
                "{key}: the files of one binding hold at most {} KiB together",
                MAX_ADD_BYTES / 1024
            )));
        }
        let mut ccs_names: Vec<(String, &PemFile)> = Vec::new();
        for f in files {
            let Some(name) = ccs_file_name(&f.name) else {
                return Err(invalid(format!(
                    "{key}: {}: a central store file is named NAME.pem or _.NAME.pem, NAME \
                     a DNS name",
                    portshare_proto::text::printable(&f.name)
                )));
            };
            if ccs_names.iter().any(|(n, _)| *n == name) {
                return Err(invalid(format!("{key}: {name} is in the folder twice")));
            }
            ccs_names.push((name, f));
        }
        if ccs && ccs_names.is_empty() {
            return Err(invalid(format!("{key}: the folder holds no certificate")));
        }

        self.may_bind_certificates(session, "add certificate bindings")?;
        // One add, delete or reload at a time: each builds the bindings from what the
        // others left.
        let _one_at_a_time = self.one_change();
        let (config, saved) = {
            let st = self.lock();
            if config_keys(&st.config).contains(key) {
                return Err(api(
                    Win32Error::AlreadyExists,
                    format!("{key} is bound in the configuration file: change it there and reload"),
                ));
            }
            if st.saved.sslcert.iter().any(|s| s.binding == *key) {
                return Err(api(
                    Win32Error::AlreadyExists,
                    format!("{key} is bound already: delete it first"),
                ));
            }
            if st.saved.sslcert.len() >= MAX_API_BINDINGS {
                return Err(api(
                    Win32Error::NotEnoughQuota,
                    format!("the API holds {MAX_API_BINDINGS} certificate bindings, its most"),
                ));
            }
            (st.config.clone(), st.saved.sslcert.clone())
        };

        // The daemon's own copies, then the checks on them.
        let dir = self.sslcert_dir();
        let paths = Files::of(&dir, key);
        let entry = SavedSslCert {
            binding: key.clone(),
            client_ca: add.client_ca.is_some(),
            params: add.params,
        };
        let mut names = Vec::new();
        let written = (|| {
            private_dir(&dir)?;
            paths.remove();
            let mut put = |path: &Path, f: &PemFile| {
                names.push((path.to_owned(), f.name.clone()));
                write_private(path, f.pem.as_bytes())
            };
            if let (Some(c), Some(k)) = (&add.cert, &add.key) {
                put(&paths.cert, c)?;
                put(&paths.key, k)?;
            }
            if let Some(ca) = &add.client_ca {
                put(&paths.client_ca, ca)?;
            }
            if ccs {
                private_dir(&paths.folder)?;
                for (name, f) in &ccs_names {
                    put(&paths.folder.join(name), f)?;
                }
                if let Some(folder) = &add.folder {
                    names.push((paths.folder.clone(), folder.name.clone()));
                }
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = written {
            paths.remove();
            return Err(api(
                Win32Error::AccessDenied,
                format!("{e}; nothing changed"),
            ));
        }
        // The same checks as the configuration's files: this binding alone first, so a
        // refusal names its files, then all the bindings together.
        let alone = Bindings::load(std::slice::from_ref(&table_of(&dir, &entry)));
        let mut info = match alone {
            Ok((one, _)) => match one.list().bindings.first() {
                Some(info) => info.clone(),
                None => {
                    paths.remove();
                    return Err(api(Win32Error::InvalidData, format!("{key}: not bound")));
                }
            },
            Err(e) => {
                paths.remove();
                return Err(api(Win32Error::InvalidData, as_sent(&e, &names)));
            }
        };
        let mut report = Report::default();
        let bindings = match self.sslcert_bindings(&config, &saved, Some(&entry), &mut report) {
            Ok(b) => b,
            Err(e) => {
                paths.remove();
                return Err(api(
                    Win32Error::InvalidData,
                    format!(
                        "the bindings cannot be built: {}; nothing changed",
                        as_sent(&e, &names)
                    ),
                ));
            }
        };
        // The state file is written without the lock: `one_change` keeps every other
        // writer of it out meanwhile.
        let mut state = self.lock().saved.clone();
        state.sslcert.push(entry);
        if let Err(e) = self.save_state(&state) {
            paths.remove();
            return Err(e);
        }
        self.lock().saved = state;
        self.shared.tls.store(Arc::new(bindings));
        info.source = BindingSource::Api;
        if let Some(folder) = &add.folder {
            info.folder = Some(portshare_proto::text::printable(&folder.name).into_owned());
        }
        info.warnings = info.warnings.iter().map(|w| as_sent(w, &names)).collect();
        tracing::info!(
            binding = %key,
            pid = session.peer.pid,
            user = %session.peer.user,
            "certificate bound"
        );
        Ok(info)
    }

    /// `DELETE /v1/sslcert`: administrators delete a binding `add` made.
    pub(crate) fn sslcert_delete(
        &self,
        session: &Session,
        delete: &DeleteSslCert,
    ) -> Result<(), ApiError> {
        let key = &delete.binding;
        self.may_bind_certificates(session, "delete certificate bindings")?;
        let _one_at_a_time = self.one_change();
        let (config, saved) = {
            let st = self.lock();
            if config_keys(&st.config).contains(key) {
                return Err(api(
                    Win32Error::AccessDenied,
                    format!("{key} is bound in the configuration file: remove it there and reload"),
                ));
            }
            if !st.saved.sslcert.iter().any(|s| s.binding == *key) {
                return Err(api(Win32Error::FileNotFound, format!("{key} is not bound")));
            }
            let rest: Vec<SavedSslCert> = st
                .saved
                .sslcert
                .iter()
                .filter(|s| s.binding != *key)
                .cloned()
                .collect();
            (st.config.clone(), rest)
        };
        let mut report = Report::default();
        let bindings = self
            .sslcert_bindings(&config, &saved, None, &mut report)
            .map_err(|e| {
                api(
                    Win32Error::InvalidData,
                    format!("the bindings cannot be built: {e}; nothing changed"),
                )
            })?;
        let mut state = self.lock().saved.clone();
        state.sslcert.retain(|s| s.binding != *key);
        self.save_state(&state)?;
        self.lock().saved = state;
        self.shared.tls.store(Arc::new(bindings));
        Files::of(&self.sslcert_dir(), key).remove();
        tracing::info!(
            binding = %key,
            pid = session.peer.pid,
            user = %session.peer.user,
            "certificate binding deleted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_come_from_the_key_alone() {
        for (key, stem_) in [
            ("ipport=0.0.0.0:443", "ipport-0.0.0.0-443"),
            (
                "ipport=[::]:443",
                "ipport-00000000000000000000000000000000-443",
            ),
            (
                "ipport=[::1]:8443",
                "ipport-00000000000000000000000000000001-8443",
            ),
            (
                "hostnameport=WWW.Example.com:443",
                "hostnameport-www.example.com-443",
            ),
            ("ccs=443", "ccs-443"),
        ] {
            let k: BindingKey = key.parse().expect("key");
            assert_eq!(stem(&k), stem_);
            assert!(!stem(&k).contains('/') && !stem(&k).starts_with('.'));
        }
    }

    #[test]
    fn ccs_file_names_are_dns_names() {
        assert_eq!(
            ccs_file_name("A.Example.pem").as_deref(),
            Some("a.example.pem")
        );
        assert_eq!(
            ccs_file_name("_.example.pem").as_deref(),
            Some("_.example.pem")
        );
        for bad in [
            "../x.pem",
            "a/b.pem",
            ".pem",
            "a.example",
            "..pem",
            "_..pem",
            "*.example.pem",
            "a b.pem",
        ] {
            assert_eq!(ccs_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_name_what_the_caller_sent() {
        let names = vec![(
            PathBuf::from("/var/lib/p/sslcert/x.key.pem"),
            "my.key".into(),
        )];
        assert_eq!(
            as_sent(
                "/var/lib/p/sslcert/x.key.pem: the key is not the key of the certificate",
                &names
            ),
            "my.key: the key is not the key of the certificate"
        );
    }
}
