//! `[access_log]`: the access log files (`crate::accesslog`), off unless enabled.

use std::path::PathBuf;

use serde::Deserialize;

use super::Fault;

/// How each request's line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// W3C extended log format, with HTTP.sys's fields (the default).
    #[default]
    W3c,
    /// One JSON object per line, with the same fields.
    Json,
}

/// When a file is left for the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogRollover {
    /// A file per UTC day, `u_exYYMMDD.log` (the default).
    #[default]
    Daily,
    /// A file per UTC hour, `u_exYYMMDDHH.log`.
    Hourly,
    /// A new file before one would exceed `max_size`, `u_extendN.log`.
    Size,
}

/// The access log: one line per request routed to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write the files. Default: false.
    pub enabled: bool,
    /// The folder, the daemon's own: created (0750) if missing, refused when another
    /// account than the daemon's or root owns it, or when its group or others may write to
    /// it. Default: `/var/log/portshare/access` for root, else
    /// `$XDG_STATE_HOME/portshare/access` (by default under `~/.local/state`).
    pub folder: Option<PathBuf>,
    /// `w3c` (default) or `json`.
    pub format: AccessLogFormat,
    /// A file set per queue, in a folder named after the queue, instead of one for the
    /// whole service. Default: false.
    pub per_queue: bool,
    /// The queues whose requests are logged; empty (the default): every queue.
    pub queues: Vec<String>,
    /// `daily` (default), `hourly` or `size`.
    pub rollover: AccessLogRollover,
    /// With `rollover = "size"`: a line that would take a file past this many bytes starts
    /// the next file. Default 10485760 (10 MB); at least 1048576 (1 MB, HTTP.sys's least
    /// rollover size).
    pub max_size: u64,
}

impl AccessLogConfig {
    /// HTTP.sys's least rollover size.
    pub(crate) const MIN_SIZE: u64 = 1_048_576;

    pub(super) fn check(&self) -> Result<(), Fault> {
        let at = |key, message: String| Fault::at(Some(("access_log", None)), key, message);
        if self.max_size < Self::MIN_SIZE {
            return Err(at(
                "max_size",
                format!(
                    "access_log.max_size = {}: expected at least 1048576 (1 MB, HTTP.sys's least \
                     rollover size)",
                    self.max_size
                ),
            ));
        }
        if let Some(f) = &self.folder
            && !f.is_absolute()
        {
            return Err(at(
                "folder",
                format!(
                    "access_log.folder = {:?}: expected an absolute path",
                    f.display()
                ),
            ));
        }
        if let Some(q) = self.queues.iter().find(|q| q.is_empty()) {
            return Err(at(
                "queues",
                format!("access_log.queues: {q:?} is not a queue name"),
            ));
        }
        Ok(())
    }

    /// The folder in force: the configured one, else the default for `is_root`.
    pub(crate) fn folder(
        &self,
        is_root: bool,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> PathBuf {
        if let Some(f) = &self.folder {
            return f.clone();
        }
        let system = PathBuf::from("/var/log/portshare/access");
        if is_root {
            return system;
        }
        // Beside the state file (`$XDG_STATE_HOME/portshare/`); without a home, the
        // system's place, which an ordinary account can seldom use (the daemon then says so).
        let state = super::default_state_file(false, env);
        if state.starts_with("/var/lib") {
            system
        } else {
            state.with_file_name("access")
        }
    }
}

impl Default for AccessLogConfig {
    fn default() -> AccessLogConfig {
        AccessLogConfig {
            enabled: false,
            folder: None,
            format: AccessLogFormat::W3c,
            per_queue: false,
            queues: Vec::new(),
            rollover: AccessLogRollover::Daily,
            max_size: 10_485_760,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Config;

    #[test]
    fn off_by_default_and_parsed() {
        let c = Config::from_toml("").expect("empty");
        assert!(!c.access_log.enabled);
        let c = Config::from_toml(
            "[access_log]\nenabled = true\nfolder = \"/tmp/a\"\nformat = \"json\"\n\
             per_queue = true\nqueues = [\"x\"]\nrollover = \"size\"\nmax_size = 2000000\n",
        )
        .expect("parses");
        let a = &c.access_log;
        assert!(a.enabled && a.per_queue);
        assert_eq!(a.format, AccessLogFormat::Json);
        assert_eq!(a.rollover, AccessLogRollover::Size);
        assert_eq!(a.max_size, 2_000_000);
        assert_eq!(a.queues, ["x"]);
        for (text, key) in [
            ("[access_log]\nmax_size = 10\n", "access_log.max_size"),
            ("[access_log]\nfolder = \"rel\"\n", "access_log.folder"),
            ("[access_log]\nqueues = [\"\"]\n", "access_log.queues"),
        ] {
            let e = Config::from_toml(text).expect_err(text);
            assert_eq!(e.key, key, "{e}");
            assert_eq!(e.line, Some(2), "{e}");
        }
        let e = Config::from_toml("[access_log]\nrollover = \"weekly\"\n").expect_err("weekly");
        assert!(e.to_string().contains("weekly"), "{e}");
    }

    #[test]
    fn default_folder() {
        let a = AccessLogConfig::default();
        let none = |_: &str| None;
        assert_eq!(a.folder(true, none), Path::new("/var/log/portshare/access"));
        let home = |k: &str| (k == "HOME").then(|| "/home/u".into());
        assert_eq!(
            a.folder(false, home),
            Path::new("/home/u/.local/state/portshare/access")
        );
        let xdg = |k: &str| (k == "XDG_STATE_HOME").then(|| "/s".into());
        assert_eq!(a.folder(false, xdg), Path::new("/s/portshare/access"));
    }
}
