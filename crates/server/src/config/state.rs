//! The state file: what the CLI changed (reservations, listen-list entries), kept across
//! restarts beside the configuration, which wins over it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
            "# Written by portshare: reservations and listen-list entries added with the CLI.\n\
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
