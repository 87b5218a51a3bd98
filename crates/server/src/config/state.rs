//! The state file: what the CLI changed (reservations, listen-list entries, certificate
//! bindings), kept across restarts beside the configuration, which wins over it. A state
//! file written before a kind of entry existed still loads: each list defaults to empty.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use portshare_proto::sslcert::{BindingKey, BindingParams};
use serde::{Deserialize, Serialize};

use super::UrlAclConfig;
use crate::error::Error;

/// What the CLI changed, kept across restarts: `state_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateFile {
    /// Listen-list entries added with `portshare iplisten add`.
    #[serde(default)]
    pub(crate) iplisten: Vec<IpAddr>,
    /// Reservations added with `portshare urlacl add`.
    #[serde(default, rename = "urlacl")]
    pub(crate) urlacls: Vec<UrlAclConfig>,
    /// Certificate bindings added with `portshare sslcert add`; their PEM files are the
    /// daemon's copies, in the `sslcert` folder beside the state file, named after the
    /// binding.
    #[serde(default)]
    pub(crate) sslcert: Vec<SavedSslCert>,
}

/// A certificate binding added through the control API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavedSslCert {
    /// How the binding is found.
    pub(crate) binding: BindingKey,
    /// Whether a client CA file was kept with it.
    #[serde(default)]
    pub(crate) client_ca: bool,
    /// Its parameters.
    #[serde(default)]
    pub(crate) params: BindingParams,
}

impl StateFile {
    /// Reads the state file; a missing file is an empty state.
    pub(crate) fn load(path: &Path) -> Result<StateFile, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Error::config(format!("state file {}", path.display())).with(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => {
                Err(Error::config(format!("cannot read the state file {}", path.display())).with(e))
            }
        }
    }

    /// Writes the state file whole: to a temporary file beside it, then renamed over it, so
    /// a crash leaves the old state or the new one, never half of one.
    pub(crate) fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| format!("cannot encode the state: {e}"))?;
        let text = format!(
            "# Written by portshare: reservations, listen-list entries and certificate bindings\n\
             # added with the CLI.\n\
             # Entries of the configuration file win over these.\n{text}"
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
    }
}

/// The state file of a daemon that names none: `/var/lib/portshare/state.toml` for root,
/// else `$XDG_STATE_HOME/portshare/state.toml` (by default under `~/.local/state`).
pub fn default_state_file(
    is_root: bool,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/portshare/state.toml");
    }
    if let Some(dir) = env("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("portshare/state.toml");
    }
    match env("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Path::new(&home).join(".local/state/portshare/state.toml"),
        None => PathBuf::from("/var/lib/portshare/state.toml"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_from_before_certificate_bindings_still_loads() {
        let old = "# Written by portshare\niplisten = [\"127.0.0.1\"]\n\n[[urlacl]]\n\
                   url = \"http://+:80/a/\"\nusers = [\"alice\"]\n";
        let s: StateFile = toml::from_str(old).expect("an old state file loads");
        assert_eq!(s.urlacls.len(), 1);
        assert!(s.sslcert.is_empty());
    }

    #[test]
    fn certificate_bindings_round_trip() {
        let mut s = StateFile::default();
        s.sslcert.push(SavedSslCert {
            binding: "hostnameport=a.example:443".parse().expect("key"),
            client_ca: true,
            params: BindingParams {
                http2: false,
                ..BindingParams::default()
            },
        });
        s.sslcert.push(SavedSslCert {
            binding: "ipport=[::]:8443".parse().expect("key"),
            client_ca: false,
            params: BindingParams::default(),
        });
        let text = toml::to_string(&s).expect("encodes");
        assert!(
            text.contains("binding = \"hostnameport=a.example:443\""),
            "{text}"
        );
        let back: StateFile = toml::from_str(&text).expect("decodes");
        assert_eq!(back, s);
    }
}
