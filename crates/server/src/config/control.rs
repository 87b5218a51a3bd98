//! The control socket's configuration: its place, its permissions, and what one user may
//! hold through it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Fault;

/// The control socket's place and permissions, and what one user may hold through it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Its path; `--control` wins over it. Default: see `portshare_proto::control_socket`.
    pub socket: Option<PathBuf>,
    /// Its permission bits, in octal; default `0666`.
    pub mode: Option<String>,
    /// Seconds a connection that has not opened a queue may take to send a request, after
    /// connecting and after each answer, before the daemon closes it. Default 10.
    pub request_wait: f64,
    /// Control connections (attached workers included) one user other than an
    /// administrator may hold open at once. Default 256.
    pub max_connections_per_uid: u32,
    /// Of those, connections holding a queue open. Default 64.
    pub max_sessions_per_uid: u32,
    /// Queues one user other than an administrator may own at once. Default 128.
    pub max_queues_per_uid: u32,
    /// URLs registered at once on the queues one user other than an administrator owns.
    /// Default 10,000.
    pub max_urls_per_uid: u32,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            socket: None,
            mode: None,
            request_wait: 10.0,
            max_connections_per_uid: 256,
            max_sessions_per_uid: 64,
            max_queues_per_uid: 128,
            max_urls_per_uid: 10_000,
        }
    }
}

impl ControlConfig {
    /// The most a per-uid cap may be.
    const MAX_CAP: u32 = 1_000_000;

    /// The caps and the wait, without the socket's place and mode (which apply at start
    /// only): what a reload changes.
    pub(crate) fn limits(&self) -> (f64, [u32; 4]) {
        (
            self.request_wait,
            [
                self.max_connections_per_uid,
                self.max_sessions_per_uid,
                self.max_queues_per_uid,
                self.max_urls_per_uid,
            ],
        )
    }

    /// `request_wait`.
    pub(crate) fn request_wait(&self) -> Duration {
        Duration::from_secs_f64(self.request_wait)
    }

    pub(super) fn check(&self) -> Result<(), Fault> {
        let at = |key, message: String| Fault::at(Some(("control", None)), key, message);
        if let Some(mode) = &self.mode
            && (mode.is_empty() || u32::from_str_radix(mode, 8).map_or(true, |m| m > 0o777))
        {
            return Err(at(
                "mode",
                format!(
                    "control.mode = {mode:?}: expected octal permission bits, such as \"0666\""
                ),
            ));
        }
        if !(self.request_wait >= 0.1 && self.request_wait <= 3600.0) {
            return Err(at(
                "request_wait",
                format!(
                    "control.request_wait = {}: expected seconds from 0.1 to 3600",
                    self.request_wait
                ),
            ));
        }
        for (key, v) in [
            ("max_connections_per_uid", self.max_connections_per_uid),
            ("max_sessions_per_uid", self.max_sessions_per_uid),
            ("max_queues_per_uid", self.max_queues_per_uid),
            ("max_urls_per_uid", self.max_urls_per_uid),
        ] {
            if !(1..=Self::MAX_CAP).contains(&v) {
                return Err(at(
                    key,
                    format!("control.{key} = {v}: expected 1 to {}", Self::MAX_CAP),
                ));
            }
        }
        Ok(())
    }
    /// The permission bits.
    pub fn mode_bits(&self) -> u32 {
        self.mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(0o666)
    }
}
