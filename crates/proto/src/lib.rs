//! What the Portshare daemon, its application SDK and its CLI agree on: where the control
//! socket lives, the control API's types and paths ([`control`]), certificate bindings
//! ([`sslcert`]), the Win32 codes its refusals carry ([`Win32Error`]), the worker wire
//! ([`wire`]) and the names of the metadata headers applications receive ([`header`]).
//!
//! ```
//! use std::path::Path;
//! use portshare_proto::{control_socket_for_client, header};
//!
//! // PORTSHARE_CONTROL wins over everything else.
//! let env = |k: &str| (k == "PORTSHARE_CONTROL").then(|| "/tmp/ps.sock".into());
//! assert_eq!(control_socket_for_client(env, |_| false), Path::new("/tmp/ps.sock"));
//! assert!(header::is_reserved("Portshare-Raw-Url"));
//! ```

pub mod control;
pub mod gather;
pub mod sslcert;
pub mod text;
mod win32;
pub mod wire;

pub use win32::Win32Error;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable naming the control socket, for the daemon and its clients.
pub const CONTROL_ENV: &str = "PORTSHARE_CONTROL";

/// The system daemon's control socket, used when the daemon runs as root.
pub const SYSTEM_CONTROL_SOCKET: &str = "/run/portshare/control.sock";

/// The control socket below a per-user runtime directory (`$XDG_RUNTIME_DIR`).
pub const USER_CONTROL_SOCKET: &str = "portshare/control.sock";

/// Where a daemon listens: `explicit` (`--control`), else `PORTSHARE_CONTROL`, else the
/// system socket when running as root, else the per-user one under `$XDG_RUNTIME_DIR`
/// (falling back to the system path when that variable is unset).
pub fn control_socket_for_daemon(
    explicit: Option<&Path>,
    is_root: bool,
    env: impl Fn(&str) -> Option<OsString>,
) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = env(CONTROL_ENV).filter(|p| !p.is_empty()) {
        return p.into();
    }
    match env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) if !is_root => Path::new(&dir).join(USER_CONTROL_SOCKET),
        _ => PathBuf::from(SYSTEM_CONTROL_SOCKET),
    }
}

/// Where a client (the CLI, the SDK, the examples) connects: `PORTSHARE_CONTROL`, else the
/// per-user socket if it exists, else the system socket, so an unprivileged application
/// finds a system daemon.
pub fn control_socket_for_client(
    env: impl Fn(&str) -> Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(p) = env(CONTROL_ENV).filter(|p| !p.is_empty()) {
        return p.into();
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let user = Path::new(&dir).join(USER_CONTROL_SOCKET);
        if exists(&user) {
            return user;
        }
    }
    PathBuf::from(SYSTEM_CONTROL_SOCKET)
}

/// The metadata headers the daemon adds to each request it hands to an application. All
/// start with [`header::PREFIX`]; the daemon strips every inbound header with that prefix,
/// so clients cannot forge them.
pub mod header {
    /// The reserved prefix.
    pub const PREFIX: &str = "portshare-";
    /// The request-target exactly as the client sent it.
    pub const RAW_URL: &str = "portshare-raw-url";
    /// The client's address, `ip:port`.
    pub const CLIENT_ADDR: &str = "portshare-client-addr";
    /// The local address the connection arrived on, `ip:port`.
    pub const LOCAL_ADDR: &str = "portshare-local-addr";
    /// The registered prefix that won routing, as registered.
    pub const URL_PREFIX: &str = "portshare-url-prefix";
    /// The UrlContext value registered with that prefix.
    pub const URL_CONTEXT: &str = "portshare-url-context";
    /// The daemon's id for the request, as in its logs.
    pub const REQUEST_ID: &str = "portshare-request-id";
    /// On https only: the TLS session, as
    /// `version=TLSv1.3; cipher=TLS13_AES_128_GCM_SHA256; sni=a.example; alpn=http/1.1`
    /// (`sni=` and `alpn=` empty when the client sent none).
    pub const TLS: &str = "portshare-tls";
    /// On https with a client certificate only: the client's leaf certificate, base64 of
    /// its DER (standard alphabet, padded, one line).
    pub const CLIENT_CERT: &str = "portshare-client-cert";

    /// True when a header name is in the reserved space (compared case-insensitively).
    pub fn is_reserved(name: &str) -> bool {
        name.len() >= PREFIX.len()
            && name.as_bytes()[..PREFIX.len()].eq_ignore_ascii_case(PREFIX.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).into())
    }

    #[test]
    fn daemon_path_order() {
        let vars = [("XDG_RUNTIME_DIR", "/run/user/1000")];
        assert_eq!(
            control_socket_for_daemon(Some(Path::new("/x.sock")), false, env(&vars)),
            Path::new("/x.sock")
        );
        assert_eq!(
            control_socket_for_daemon(None, false, env(&vars)),
            Path::new("/run/user/1000/portshare/control.sock")
        );
        assert_eq!(
            control_socket_for_daemon(None, true, env(&vars)),
            Path::new(SYSTEM_CONTROL_SOCKET)
        );
        let with_env = [("PORTSHARE_CONTROL", "/e.sock"), ("XDG_RUNTIME_DIR", "/r")];
        assert_eq!(
            control_socket_for_daemon(None, true, env(&with_env)),
            Path::new("/e.sock")
        );
    }

    #[test]
    fn client_path_order() {
        let vars = [("XDG_RUNTIME_DIR", "/run/user/1000")];
        assert_eq!(
            control_socket_for_client(env(&vars), |_| true),
            Path::new("/run/user/1000/portshare/control.sock")
        );
        assert_eq!(
            control_socket_for_client(env(&vars), |_| false),
            Path::new(SYSTEM_CONTROL_SOCKET)
        );
        assert_eq!(
            control_socket_for_client(env(&[]), |_| true),
            Path::new(SYSTEM_CONTROL_SOCKET)
        );
    }

    #[test]
    fn reserved_headers() {
        assert!(header::is_reserved("PORTSHARE-REQUEST-ID"));
        assert!(header::is_reserved(header::URL_CONTEXT));
        assert!(!header::is_reserved("portshare"));
        assert!(!header::is_reserved("x-portshare-id"));
    }
}
