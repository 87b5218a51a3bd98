//! The daemon's configuration: embedded defaults, a TOML file over them, command-line
//! flags over both.
//!
//! ```toml
//! # Addresses to bind (the IP listen list); empty or absent = 0.0.0.0 and ::.
//! iplisten = ["127.0.0.1"]
//!
//! [limits]
//! max_request_bytes = 16384   # MaxRequestBytes: request line + headers
//! max_field_length = 16384    # MaxFieldLength: one header field, and the URL
//! url_segment_max_length = 260
//! url_segment_max_count = 255
//!
//! [timers]                     # seconds
//! header_wait = 120
//! idle_connection = 120
//! entity_body = 120
//! request_queue = 120         # default request-queue timer of new queues
//!
//! [errlog]                     # the httperr files; lines also go to the `httperr` log target
//! enabled = true
//! folder = "/var/log/portshare/httperr"   # httperr1.log, httperr2.log, ...
//! truncate_size = 1048576     # bytes per file; default and minimum 1 MB
//!
//! [[queue]]                    # a queue the daemon holds itself, e.g. for an upstream
//! name = "legacy"
//! urls = ["http://+:8080/legacy/"]
//! length = 1000
//! verbosity = "limited"        # basic | limited | full
//! upstream = "unix:/run/legacy.sock"   # or "127.0.0.1:9000"
//! connections = 256           # most upstream connections (the queue's slots)
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portshare_proto::control::Verbosity;
use serde::Deserialize;

/// Everything the daemon is told.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The IP listen list; empty = every address (`0.0.0.0` and `::`).
    #[serde(default)]
    pub iplisten: Vec<IpAddr>,
    /// Request-head and URL limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timers.
    #[serde(default)]
    pub timers: Timers,
    /// The error log files.
    #[serde(default)]
    pub errlog: ErrLogConfig,
    /// Queues the daemon creates at start and holds for as long as it runs.
    #[serde(default, rename = "queue")]
    pub queues: Vec<QueueConfig>,
}

/// HTTP.sys's limits, with its defaults.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// `MaxRequestBytes`: request line and headers together.
    pub max_request_bytes: usize,
    /// `MaxFieldLength`: one header field, and the request-target.
    pub max_field_length: usize,
    /// `UrlSegmentMaxLength`: characters in one path segment after decoding.
    pub url_segment_max_length: usize,
    /// `UrlSegmentMaxCount`: path segments.
    pub url_segment_max_count: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: 16384,
            max_field_length: 16384,
            url_segment_max_length: 260,
            url_segment_max_count: 255,
        }
    }
}

/// Timers, in seconds, with HTTP.sys's defaults.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// Time to receive a request head (`HeaderWait`).
    pub header_wait: f64,
    /// Time an idle keep-alive connection stays open (`IdleConnection`).
    pub idle_connection: f64,
    /// Longest gap while receiving a request body, and time to drain one an application
    /// did not read (`EntityBody`, `DrainEntityBody`).
    pub entity_body: f64,
    /// The request-queue timer of queues that do not set their own (`RequestQueue`).
    pub request_queue: f64,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            header_wait: 120.0,
            idle_connection: 120.0,
            entity_body: 120.0,
            request_queue: 120.0,
        }
    }
}

impl Timers {
    fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("header_wait", self.header_wait),
            ("idle_connection", self.idle_connection),
            ("entity_body", self.entity_body),
            ("request_queue", self.request_queue),
        ] {
            if !(v > 0.0 && v <= 4_294_967.0) {
                return Err(format!(
                    "timers.{name} = {v}: expected seconds above 0 and at most 4294967"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn duration(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }
}

/// The error log files (`httperrN.log`), with HTTP.sys's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrLogConfig {
    /// `EnableErrorLogging`: write the files. The lines go to the `httperr` log target
    /// either way. Default: true.
    pub enabled: bool,
    /// The folder of `httperr1.log`, `httperr2.log`, ..., created if missing; when it cannot
    /// be, the daemon warns and logs to the target only. Default: `/var/log/portshare/httperr`.
    pub folder: PathBuf,
    /// `ErrorLogFileTruncateSize`: a line that would take a file past this many bytes starts
    /// the next file. Default and minimum: 1048576 (1 MB).
    pub truncate_size: u64,
}

impl ErrLogConfig {
    /// HTTP.sys's default and least `ErrorLogFileTruncateSize`.
    const MIN_TRUNCATE_SIZE: u64 = 1_048_576;

    fn check(&self) -> Result<(), String> {
        if self.truncate_size < Self::MIN_TRUNCATE_SIZE {
            return Err(format!(
                "errlog.truncate_size = {}: expected at least 1048576 (1 MB, HTTP.sys's minimum)",
                self.truncate_size
            ));
        }
        if self.folder.as_os_str().is_empty() {
            return Err("errlog.folder is empty: expected a folder path".into());
        }
        Ok(())
    }
}

impl Default for ErrLogConfig {
    fn default() -> ErrLogConfig {
        ErrLogConfig {
            enabled: true,
            folder: PathBuf::from("/var/log/portshare/httperr"),
            truncate_size: Self::MIN_TRUNCATE_SIZE,
        }
    }
}

/// A queue from the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Its name.
    pub name: String,
    /// Its URL prefixes.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Most requests waiting; default 1000.
    #[serde(default)]
    pub length: Option<u32>,
    /// The 503 verbosity; default basic.
    #[serde(default)]
    pub verbosity: Option<Verbosity>,
    /// Active or not; default active.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Request-queue timer, seconds.
    #[serde(default)]
    pub request_queue_timer: Option<f64>,
    /// `unix:/path` or a loopback `IP:port` to forward requests to.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Most connections to the upstream at once; default 256.
    #[serde(default)]
    pub connections: Option<u32>,
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks configuration text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn check(&self) -> Result<(), String> {
        let l = &self.limits;
        if !(256..=16_777_216).contains(&l.max_request_bytes) {
            return Err(format!(
                "limits.max_request_bytes = {}: expected 256 to 16777216",
                l.max_request_bytes
            ));
        }
        if !(64..=65534).contains(&l.max_field_length) {
            return Err(format!(
                "limits.max_field_length = {}: expected 64 to 65534",
                l.max_field_length
            ));
        }
        if l.url_segment_max_length > 32766 {
            return Err(format!(
                "limits.url_segment_max_length = {}: expected 0 (no limit) to 32766",
                l.url_segment_max_length
            ));
        }
        if l.url_segment_max_count > 16383 {
            return Err(format!(
                "limits.url_segment_max_count = {}: expected 0 (no limit) to 16383",
                l.url_segment_max_count
            ));
        }
        self.timers.check()?;
        self.errlog.check()?;
        for q in &self.queues {
            if q.name.is_empty() || q.name.chars().count() > 260 {
                return Err(format!(
                    "queue {:?}: a name has 1 to 260 characters",
                    q.name
                ));
            }
            if let Some(len) = q.length
                && !(1..=0x7FFF_FFFF).contains(&len)
            {
                return Err(format!(
                    "queue {:?}: length = {len}: expected 1 to 2147483647",
                    q.name
                ));
            }
            if let Some(up) = &q.upstream {
                crate::upstream::Address::parse(up)
                    .map_err(|e| format!("queue {:?}: upstream = {up:?}: {e}", q.name))?;
            }
            if q.connections == Some(0) {
                return Err(format!(
                    "queue {:?}: connections must be at least 1",
                    q.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("").unwrap();
        assert!(c.iplisten.is_empty());
        assert_eq!(c.limits.max_request_bytes, 16384);
        assert_eq!(c.timers.request_queue, 120.0);
        assert!(c.errlog.enabled);
        assert_eq!(c.errlog.folder, Path::new("/var/log/portshare/httperr"));
        assert_eq!(c.errlog.truncate_size, 1_048_576);
    }

    #[test]
    fn errlog_parses_and_is_checked() {
        let c = Config::from_toml(
            "[errlog]\nenabled = false\nfolder = \"/tmp/e\"\ntruncate_size = 2097152\n",
        )
        .unwrap();
        assert!(!c.errlog.enabled);
        assert_eq!(c.errlog.folder, Path::new("/tmp/e"));
        assert_eq!(c.errlog.truncate_size, 2_097_152);
        let e = Config::from_toml("[errlog]\ntruncate_size = 1048575\n").unwrap_err();
        assert!(
            e.contains("errlog.truncate_size") && e.contains("1048576"),
            "{e}"
        );
        let e = Config::from_toml("[errlog]\nfolder = \"\"\n").unwrap_err();
        assert!(e.contains("errlog.folder"), "{e}");
        let e = Config::from_toml("[errlog]\nsize = 1\n").unwrap_err();
        assert!(e.contains("size"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml("[limits]\nmax_field_length = 10\n").unwrap_err();
        assert!(e.contains("max_field_length"), "{e}");
        let e = Config::from_toml("iplisten = [\"not-an-ip\"]\n").unwrap_err();
        assert!(e.contains("iplisten"), "{e}");
        let e =
            Config::from_toml("[[queue]]\nname = \"q\"\nupstream = \"10.1.2.3:80\"\n").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = Config::from_toml("bogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn queues_parse() {
        let c = Config::from_toml(
            "[[queue]]\nname = \"legacy\"\nurls = [\"http://+:8080/l/\"]\nverbosity = \"full\"\nupstream = \"unix:/tmp/x.sock\"\n",
        )
        .unwrap();
        assert_eq!(c.queues[0].verbosity, Some(Verbosity::Full));
    }
}
