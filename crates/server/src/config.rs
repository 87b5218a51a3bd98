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
//! max_connections = 4294967295  # MaxConnections: open client connections; default: the
//!                               # client share of the descriptor budget
//! disable_server_header = 0   # DisableServerHeader: 0 Server on all, 1 not on the
//!                               # daemon's own pages, 2 on none (an app's own passes)
//!
//! [timers]                     # seconds; 65535 disables a timer
//! header_wait = 120
//! idle_connection = 120
//! entity_body = 120           # default of queues that set none
//! drain_entity_body = 120     # default of queues that set none
//! request_queue = 120         # default request-queue timer of new queues
//! min_send_rate = 150         # bytes per second; 4294967295 disables it
//! shutdown = 30               # SIGTERM: how long requests in progress may take to finish
//!
//! [errlog]                     # the httperr files; lines also go to the `httperr` log target
//! enabled = true
//! folder = "/var/log/portshare/httperr"   # httperr1.log, httperr2.log, ...
//! truncate_size = 1048576     # bytes per file; default and minimum 1 MB
//!
//! [access_log]                 # a line per request routed to a queue; off by default
//! enabled = true
//! folder = "/var/log/portshare/access"   # the daemon's own (default for root; else
//!                              # $XDG_STATE_HOME/portshare/access)
//! format = "w3c"              # w3c | json
//! per_queue = false           # a file set per queue, in FOLDER/<queue name, encoded>/
//! queues = []                 # only these queues; empty: all
//! rollover = "daily"          # daily (u_exYYMMDD.log) | hourly (u_exYYMMDDHH.log) |
//!                              # size (u_extendN.log)
//! max_size = 10485760         # rollover = "size": bytes per file; at least 1 MB
//!
//! # Members of this group hold the implicit root reservations, as root does.
//! admin_group = "portshare-admin"
//! # Reservations and listen-list entries added with the CLI; default
//! # /var/lib/portshare/state.toml (root) or $XDG_STATE_HOME/portshare/state.toml.
//! state_file = "/var/lib/portshare/state.toml"
//!
//! [control]
//! socket = "/run/portshare/control.sock"   # --control wins over this
//! mode = "0666"                # every local user may connect; the URL ACLs are the gate
//! request_wait = 10            # seconds a connection that opened no queue may stay silent
//! max_connections_per_uid = 256   # control connections, workers included, of one user
//! max_sessions_per_uid = 64    # of those, connections holding a queue open
//! max_queues_per_uid = 128     # queues one user owns (administrators have no caps)
//! max_urls_per_uid = 10000     # URLs registered on the queues one user owns
//!
//! [[urlacl]]                   # a reservation: netsh http add urlacl
//! url = "http://+:80/app/"
//! users = ["alice", "uid:1001"]
//! groups = ["web", "gid:1002"]
//! listen = true                # may register under it (default true)
//! delegate = false             # may reserve under it (default false)
//!
//! [[queue]]                    # a queue the daemon holds itself, e.g. for an upstream
//! name = "legacy"
//! urls = ["http://+:8080/legacy/"]
//! length = 1000
//! verbosity = "limited"        # basic | limited | full
//! enabled = true
//! linger = 0                  # seconds
//! request_queue_timer = 120   # seconds; default: timers.request_queue
//! entity_body = 120           # seconds; default: timers.entity_body
//! drain_entity_body = 120     # seconds; default: timers.drain_entity_body
//! min_send_rate = 150         # bytes per second; default: timers.min_send_rate
//! max_connections = 100       # client connections its requests may hold; default unlimited
//! max_opaque = 10000          # upgraded (WebSocket) connections open at once; default 10000
//! owner = "alice"              # who may open it and attach workers (default: the daemon's user)
//! upstream = "unix:/run/legacy.sock"   # or "127.0.0.1:9000", or another host's IP:port
//! connections = 256           # most upstream connections (the queue's slots)
//!
//! [[sslcert]]                  # a certificate binding: netsh http add sslcert
//! hostnameport = "www.example.com:443"   # or ipport = "0.0.0.0:443", or ccs = 443
//! cert = "/etc/portshare/www.pem"        # the chain, PEM, leaf first
//! key = "/etc/portshare/www.key"         # its key, PEM; readable by root only
//! # folder = "/etc/portshare/ccs"        # ccs only: NAME.pem (chain and key), _.NAME.pem
//! client_cert = "ignore"      # ignore | request | require
//! # client_ca = "/etc/portshare/clients-ca.pem"   # needed with request or require
//! http2 = true                # offer h2 in ALPN
//! min_tls = "1.2"             # "1.2" | "1.3"
//! session_tickets = false     # resumption by session IDs only
//! require_sni_match = false   # 421 when Host is not the SNI name
//!
//! [[listener]]                 # options of a listening address
//! address = "0.0.0.0:443"     # IP:PORT; a wildcard covers its family's addresses
//! proxy_protocol = true       # connections start with a PROXY v1/v2 header, else closed
//!
//! [[trusted_proxy]]            # peers whose Forwarded / X-Forwarded-For are believed
//! ranges = ["10.0.0.0/8", "::1/128"]
//! # acme = true               # obtain and renew the certificate by ACME (no cert, key)
//!
//! [metrics]                    # Prometheus / OpenMetrics scrapes: GET /metrics
//! listen = "127.0.0.1:9180"   # off by default; shows every queue: keep it on loopback;
//!                             # applies when the daemon starts
//!
//! [acme]                       # for [[sslcert]] tables with acme = true
//! directory = "https://acme-v02.api.letsencrypt.org/directory"
//! contact = ["mailto:admin@example.com"]
//! # ca = "/etc/portshare/acme-ca.pem"   # CAs for the directory's https; default: the
//!                                       # system's trust store
//! http_port = 80              # where HTTP-01 challenges arrive
//! tls_port = 443              # where TLS-ALPN-01 challenges arrive
//! tls_alpn = false            # TLS-ALPN-01 on tls_port instead of HTTP-01
//! ```
//!
//! A file that does not parse, or holds a value out of range, is refused with the line and
//! the key at fault ([`ConfigError`]); a running daemon then keeps the configuration it has.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use portshare_proto::control::{AccessEntry, AccountKind, QueueProps, Verbosity};
use portshare_router::UrlPrefix;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::timers::Timer;

mod access_log;
mod control;
mod edge;
mod error;
mod metrics;
mod sslcert;
mod state;

pub use crate::timers::Timers;
pub use access_log::{AccessLogConfig, AccessLogFormat, AccessLogRollover};
pub use control::ControlConfig;
pub use edge::{AcmeConfig, ListenerConfig, TrustedProxyConfig};
pub use error::ConfigError;
pub(crate) use error::Fault;
pub use metrics::MetricsConfig;
pub use sslcert::SslCertConfig;
pub use state::default_state_file;
pub(crate) use state::{SavedSslCert, StateFile};

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
    /// The access log files.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Queues the daemon creates at start and holds for as long as it runs.
    #[serde(default, rename = "queue")]
    pub queues: Vec<QueueConfig>,
    /// Members of this group (a name or `gid:N`) hold the implicit root reservations.
    #[serde(default)]
    pub admin_group: Option<String>,
    /// Where CLI changes to reservations and the listen list are kept.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// The control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// Reservations (URL ACLs).
    #[serde(default, rename = "urlacl")]
    pub urlacls: Vec<UrlAclConfig>,
    /// Certificate bindings for https ports.
    #[serde(default, rename = "sslcert")]
    pub sslcerts: Vec<SslCertConfig>,
    /// Listening addresses with options of their own (the PROXY protocol).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Peers whose `Forwarded` and `X-Forwarded-For` headers are believed.
    #[serde(default, rename = "trusted_proxy")]
    pub trusted_proxies: Vec<TrustedProxyConfig>,
    /// The ACME account that `acme = true` bindings obtain their certificates with.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// The Prometheus scrape listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// One reservation of the configuration file or the state file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UrlAclConfig {
    /// The reserved URL prefix.
    pub url: String,
    /// Users granted: names or `uid:N`.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups granted: names or `gid:N`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The listen right; default true.
    #[serde(default = "yes")]
    pub listen: bool,
    /// The delegate right; default false.
    #[serde(default)]
    pub delegate: bool,
}

fn yes() -> bool {
    true
}

/// HTTP.sys's limits, with its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
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
    /// `MaxConnections`: open client connections, all addresses together. At the limit the
    /// daemon accepts no more until one closes (they wait in the listen backlog). 1024 to
    /// 2031616, or 4294967295 (the default) for no limit; the daemon never goes above the
    /// client share of its descriptor budget either way.
    pub max_connections: u64,
    /// `DisableServerHeader`: 0 (the default) puts `Server: portshare/VERSION` on the
    /// daemon's own responses and on applications' responses that carry none; 1 leaves it
    /// off the daemon's own responses only; 2 leaves it off everywhere. An application's
    /// own `Server` header always passes.
    pub disable_server_header: u8,
}

impl Limits {
    /// `max_connections` when it sets no limit.
    pub const UNLIMITED: u64 = u32::MAX as u64;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: 16384,
            max_field_length: 16384,
            url_segment_max_length: 260,
            url_segment_max_count: 255,
            max_connections: Limits::UNLIMITED,
            disable_server_header: 0,
        }
    }
}

/// The error log files (`httperrN.log`), with HTTP.sys's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

    fn check(&self) -> Result<(), Fault> {
        if self.truncate_size < Self::MIN_TRUNCATE_SIZE {
            return Err(Fault::at(
                Some(("errlog", None)),
                "truncate_size",
                format!(
                    "errlog.truncate_size = {}: expected at least 1048576 (1 MB, HTTP.sys's minimum)",
                    self.truncate_size
                ),
            ));
        }
        if self.folder.as_os_str().is_empty() {
            return Err(Fault::at(
                Some(("errlog", None)),
                "folder",
                "errlog.folder is empty: expected a folder path",
            ));
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
    /// Request-queue timer, seconds; default (and 0) `timers.request_queue`.
    #[serde(default)]
    pub request_queue_timer: Option<Timer>,
    /// `EntityBody` for this queue's requests, seconds; default (and 0)
    /// `timers.entity_body`.
    #[serde(default)]
    pub entity_body: Option<Timer>,
    /// `DrainEntityBody` for this queue's requests, seconds; default (and 0)
    /// `timers.drain_entity_body`.
    #[serde(default)]
    pub drain_entity_body: Option<Timer>,
    /// `MinSendRate` for this queue's responses, bytes per second; default
    /// `timers.min_send_rate`.
    #[serde(default)]
    pub min_send_rate: Option<u32>,
    /// Most client connections whose requests this queue holds at once (the URL group's
    /// `MaxConnections`); a connection beyond it gets 503 `ConnLimit`. Default unlimited.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most opaque connections (a worker's `101`: WebSockets) open at once, 1 to 1000000;
    /// one more is refused with 503. Default 10000.
    #[serde(default)]
    pub max_opaque: Option<u32>,
    /// How long, in seconds, the queue keeps its URLs and waiting requests after the last
    /// process that opened it lets go; default 0.
    #[serde(default)]
    pub linger: Option<f64>,
    /// A user (a name or `uid:N`) granted both rights on the queue, `attach` and
    /// `register`: shorthand for an `access` entry. The queue itself belongs to the daemon.
    #[serde(default)]
    pub owner: Option<String>,
    /// Accounts granted rights on the queue (`[[queue.access]]`).
    #[serde(default)]
    pub access: Vec<QueueAccessConfig>,
    /// `unix:/path` or `IP:port` to forward requests to (any host: the file is root's).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Most connections to the upstream at once; default 256.
    #[serde(default)]
    pub connections: Option<u32>,
    /// Answer every request of the queue's (http) URLs with `308 Permanent Redirect` to the
    /// same host and target over https on this port, for sites that serve both.
    #[serde(default)]
    pub https_redirect: Option<u16>,
    /// For an upstream queue: forward targets without the URL's path prefix, with
    /// `X-Forwarded-Prefix` naming it.
    #[serde(default)]
    pub strip_prefix: bool,
    /// For an upstream queue: requests without a body that may wait on one upstream
    /// connection (HTTP/1.1 pipelining), 1 to 64; default 1 (none).
    #[serde(default)]
    pub pipeline: Option<u32>,
}

/// An entry of a queue's access list in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueAccessConfig {
    /// Users granted: names or `uid:N`.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups granted, every member: names or `gid:N`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// May attach workers (receive the queue's requests); default yes.
    #[serde(default = "yes")]
    pub attach: bool,
    /// May add URLs to the queue, under its own URL ACL reservations; default no.
    #[serde(default)]
    pub register: bool,
}

impl QueueConfig {
    /// The queue's access list: `owner` with both rights, then each `access` entry.
    pub(crate) fn access_entries(&self) -> Vec<AccessEntry> {
        let entry = |kind, name: &String, attach, register| AccessEntry {
            kind,
            name: name.clone(),
            attach,
            register,
        };
        let owner = self
            .owner
            .iter()
            .map(|o| entry(AccountKind::User, o, true, true));
        let listed = self.access.iter().flat_map(|a| {
            let users = a
                .users
                .iter()
                .map(|u| entry(AccountKind::User, u, a.attach, a.register));
            let groups = a
                .groups
                .iter()
                .map(|g| entry(AccountKind::Group, g, a.attach, a.register));
            users.chain(groups)
        });
        owner.chain(listed).collect()
    }

    /// The queue's properties as the control API sets them. What the file leaves out is
    /// the default (for the timers, the service's), so a key removed by a reload goes back
    /// to it.
    pub(crate) fn props(&self) -> QueueProps {
        let ms = |t: Option<Timer>| Some(t.map_or(0, Timer::as_millis));
        QueueProps {
            length: self.length,
            verbosity: self.verbosity,
            enabled: self.enabled,
            linger_ms: self.linger.map(|s| (s * 1000.0) as u64),
            queue_timer_ms: ms(self.request_queue_timer),
            entity_body_ms: ms(self.entity_body),
            drain_entity_body_ms: ms(self.drain_entity_body),
            min_send_rate: Some(self.min_send_rate.unwrap_or(0)),
            max_connections: Some(self.max_connections.unwrap_or(0)),
            max_opaque: Some(self.max_opaque.unwrap_or(QueueProps::DEFAULT_MAX_OPAQUE)),
        }
    }

    /// Whether a reload must set the queue's properties again.
    pub(crate) fn props_differ(&self, q: &QueueConfig) -> bool {
        self.length != q.length
            || self.verbosity != q.verbosity
            || self.enabled != q.enabled
            || self.linger != q.linger
            || self.request_queue_timer != q.request_queue_timer
            || self.entity_body != q.entity_body
            || self.drain_entity_body != q.drain_entity_body
            || self.min_send_rate != q.min_send_rate
            || self.max_connections != q.max_connections
            || self.max_opaque != q.max_opaque
    }
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) holds: the file cannot be read
    /// (its source is the [`io::Error`](std::io::Error)), or its text is refused (its
    /// source is the [`ConfigError`]). It reads `PATH: line N: what is wrong`.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}", path.display())).with(e))?;
        Config::from_toml(&text).map_err(|e| Error::config(path.display().to_string()).with(e))
    }

    /// Parses and checks configuration text.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the line and the key at fault, when the text does not parse
    /// as TOML, has a key this version does not know, or holds a value out of range.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::parse(text, e))?;
        config
            .check_values()
            .map_err(|fault| fault.locate(Some(text)))?;
        Ok(config)
    }

    /// What a valid file may still get wrong on this machine: users and groups that resolve
    /// to nobody (a reservation naming them grants nobody), an admin group that does not
    /// exist, addresses of the listen list that are not this machine's. The daemon reports
    /// the same at start and on each reload; `portshare check-config` prints them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .urlacls
            .iter()
            .filter_map(unknown_names_warning)
            .collect();
        if let Some(g) = &self.admin_group
            && crate::identity::resolve_group(g).is_none()
        {
            out.push(format!("admin_group {g:?}: no such group on this machine"));
        }
        for q in &self.queues {
            for e in q.access_entries() {
                let known = match e.kind {
                    AccountKind::User => crate::identity::resolve_user(&e.name).is_some(),
                    AccountKind::Group => crate::identity::resolve_group(&e.name).is_some(),
                };
                if !known {
                    let kind = match e.kind {
                        AccountKind::User => "user",
                        AccountKind::Group => "group",
                    };
                    out.push(format!(
                        "queue {:?}: no {kind} {:?} on this machine, so it is granted nothing",
                        q.name, e.name
                    ));
                }
            }
        }
        for ip in &self.iplisten {
            if !ip.is_unspecified()
                && matches!(
                    crate::bind::check_local(*ip),
                    Err(crate::bind::BindError::NotLocal { .. })
                )
            {
                out.push(foreign_address_warning(*ip));
            }
        }
        out
    }

    /// Reads the files the configuration names, as the daemon does at start and reload:
    /// the certificates and keys of its `[[sslcert]]` bindings, and their `ccs` folders;
    /// and the access log's folder, when it exists, as a daemon of this user would judge it.
    /// Returns what deserves a warning (an expired certificate, a name outside its SANs, a
    /// key file other users may read).
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) holds, naming the binding,
    /// the file and the reason: a file that cannot be read, holds no usable PEM, or a key
    /// that is not its certificate's.
    pub fn check_files(&self) -> Result<Vec<String>, Error> {
        crate::accesslog::check_folder(&self.access_log, nix::unistd::geteuid().as_raw())
            .map_err(Error::config)?;
        crate::tls::Bindings::load(&self.sslcerts)
            .map(|(_, warnings)| warnings)
            .map_err(Error::config)
    }

    /// Checks values that parse but make no sense, as [`from_toml`](Config::from_toml) does
    /// for a file. The error has no line: the configuration has no text here.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key at fault and what it should hold.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.check_values().map_err(|fault| fault.locate(None))
    }

    fn check_values(&self) -> Result<(), Fault> {
        let l = &self.limits;
        let limit = |key: &'static str, v: usize, range: core::ops::RangeInclusive<usize>| {
            if range.contains(&v) {
                Ok(())
            } else {
                Err(Fault::at(
                    Some(("limits", None)),
                    key,
                    format!(
                        "limits.{key} = {v}: expected {} to {}",
                        range.start(),
                        range.end()
                    ),
                ))
            }
        };
        limit("max_request_bytes", l.max_request_bytes, 256..=16_777_216)?;
        limit("max_field_length", l.max_field_length, 64..=65534)?;
        limit(
            "url_segment_max_length",
            l.url_segment_max_length,
            0..=32766,
        )?;
        limit("url_segment_max_count", l.url_segment_max_count, 0..=16383)?;
        limit(
            "disable_server_header",
            usize::from(l.disable_server_header),
            0..=2,
        )?;
        if l.max_connections != Limits::UNLIMITED
            && !(1024..=2_031_616).contains(&l.max_connections)
        {
            return Err(Fault::at(
                Some(("limits", None)),
                "max_connections",
                format!(
                    "limits.max_connections = {}: expected 1024 to 2031616, or 4294967295 for no limit",
                    l.max_connections
                ),
            ));
        }
        self.timers
            .check()
            .map_err(|(key, message)| Fault::at(Some(("timers", None)), key, message))?;
        self.errlog.check()?;
        self.access_log.check()?;
        self.control.check()?;
        if let Some(g) = &self.admin_group
            && g.is_empty()
        {
            return Err(Fault::at(
                None,
                "admin_group",
                "admin_group is empty: expected a group name or gid:N",
            ));
        }
        // Sets, not pairs: a file may hold 10,000 reservations or queues.
        let mut reserved = std::collections::HashSet::new();
        for (i, a) in self.urlacls.iter().enumerate() {
            let at = |key: &'static str, message: String| {
                Fault::at(Some(("urlacl", Some(i))), key, message)
            };
            let prefix = portshare_router::UrlPrefix::parse(&a.url)
                .map_err(|e| at("url", format!("urlacl url = {:?}: {e}", a.url)))?;
            if !reserved.insert(prefix) {
                return Err(at(
                    "url",
                    format!("urlacl url = {:?}: reserved twice", a.url),
                ));
            }
            if a.users.is_empty() && a.groups.is_empty() {
                return Err(at(
                    "url",
                    format!("urlacl {:?}: grants nobody: add users or groups", a.url),
                ));
            }
            for name in a.users.iter().chain(&a.groups) {
                if name.is_empty() || name.chars().any(char::is_whitespace) {
                    return Err(at(
                        if a.users.contains(name) {
                            "users"
                        } else {
                            "groups"
                        },
                        format!("urlacl {:?}: {name:?} is not a user or group name", a.url),
                    ));
                }
            }
        }
        for (i, c) in self.sslcerts.iter().enumerate() {
            c.check(i, &self.sslcerts[..i])?;
            if c.acme && self.acme.is_none() {
                return Err(Fault::at(
                    Some(("sslcert", Some(i))),
                    "acme",
                    "acme = true needs an [acme] table (directory, contact)",
                ));
            }
        }
        if let Some(a) = &self.acme {
            a.check()?;
        }
        edge::check(&self.listeners, &self.trusted_proxies)?;
        let mut names = std::collections::HashSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            let at = |key: &'static str, message: String| {
                Fault::at(Some(("queue", Some(i))), key, message)
            };
            portshare_proto::control::check_queue_name(&q.name)
                .map_err(|e| at("name", format!("queue {:?}: {e}", q.name)))?;
            if !names.insert(q.name.as_str()) {
                return Err(at("name", format!("queue {:?}: defined twice", q.name)));
            }
            // The rules the control API holds the properties to, then the file's own.
            q.props().validate().map_err(|e| {
                at(
                    config_key(e.field),
                    format!("queue {:?}: {}", q.name, e.message),
                )
            })?;
            for url in &q.urls {
                portshare_router::UrlPrefix::parse(url)
                    .map_err(|e| at("urls", format!("queue {:?}: url {url:?}: {e}", q.name)))?;
            }
            for (key, t) in [
                ("request_queue_timer", q.request_queue_timer),
                ("entity_body", q.entity_body),
                ("drain_entity_body", q.drain_entity_body),
            ] {
                if let Some(t) = t
                    && t > Timer::from_secs(Timer::MAX_SECS)
                {
                    return Err(at(
                        key,
                        format!(
                            "queue {:?}: {key} = {t}: expected seconds from 0 to 4294967",
                            q.name
                        ),
                    ));
                }
            }
            if let Some(v) = q.linger
                && !(0.0..=4_294_967.0).contains(&v)
            {
                return Err(at(
                    "linger",
                    format!(
                        "queue {:?}: linger = {v}: expected seconds from 0 to 4294967",
                        q.name
                    ),
                ));
            }
            if let Some(up) = &q.upstream {
                crate::upstream::Address::parse(up).map_err(|e| {
                    at(
                        "upstream",
                        format!("queue {:?}: upstream = {up:?}: {e}", q.name),
                    )
                })?;
            }
            if let Some(n) = q.pipeline {
                if q.upstream.is_none() {
                    return Err(at(
                        "pipeline",
                        format!(
                            "queue {:?}: pipeline applies to upstream queues only",
                            q.name
                        ),
                    ));
                }
                if !(1..=portshare_proto::control::MAX_PIPELINE).contains(&n) {
                    return Err(at(
                        "pipeline",
                        format!(
                            "queue {:?}: pipeline = {n}: expected 1 (no pipelining) to {}",
                            q.name,
                            portshare_proto::control::MAX_PIPELINE
                        ),
                    ));
                }
            }
            if q.strip_prefix && q.upstream.is_none() {
                return Err(at(
                    "strip_prefix",
                    format!(
                        "queue {:?}: strip_prefix applies to upstream queues only",
                        q.name
                    ),
                ));
            }
            match q.https_redirect {
                Some(0) => {
                    return Err(at(
                        "https_redirect",
                        format!(
                            "queue {:?}: https_redirect = 0: expected a port from 1 to 65535",
                            q.name
                        ),
                    ));
                }
                Some(_) if q.upstream.is_some() => {
                    return Err(at(
                        "https_redirect",
                        format!(
                            "queue {:?}: a queue either forwards to an upstream or redirects to \
                             https, not both",
                            q.name
                        ),
                    ));
                }
                Some(_) => {
                    if let Some(url) = q.urls.iter().find(|u| u.starts_with("https:")) {
                        return Err(at(
                            "https_redirect",
                            format!(
                                "queue {:?}: redirects http to https, but lists {url:?}: it \
                                 takes http URLs only",
                                q.name
                            ),
                        ));
                    }
                }
                None => {}
            }
            if q.min_send_rate == Some(0) {
                return Err(at(
                    "min_send_rate",
                    format!(
                        "queue {:?}: min_send_rate = 0: expected bytes per second from 1 to 4294967295",
                        q.name
                    ),
                ));
            }
            if q.max_connections == Some(0) {
                return Err(at(
                    "max_connections",
                    format!("queue {:?}: max_connections must be at least 1", q.name),
                ));
            }
            if q.connections == Some(0) {
                return Err(at(
                    "connections",
                    format!("queue {:?}: connections must be at least 1", q.name),
                ));
            }
            if let Some(o) = &q.owner
                && o.is_empty()
            {
                return Err(at("owner", format!("queue {:?}: owner is empty", q.name)));
            }
            for a in &q.access {
                if a.users.is_empty() && a.groups.is_empty() {
                    return Err(at(
                        "access",
                        format!("queue {:?}: an access entry names no user or group", q.name),
                    ));
                }
                if let Some(n) = a
                    .users
                    .iter()
                    .chain(&a.groups)
                    .find(|n| n.is_empty() || n.chars().any(char::is_whitespace))
                {
                    return Err(at(
                        "access",
                        format!("queue {:?}: {n:?} is not a user or group name", q.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The key of a queue's table that sets the control API's property `field`.
fn config_key(field: &'static str) -> &'static str {
    match field {
        "queue_timer_ms" => "request_queue_timer",
        "entity_body_ms" => "entity_body",
        "drain_entity_body_ms" => "drain_entity_body",
        "linger_ms" => "linger",
        other => other,
    }
}

/// The users and groups of a reservation that resolve to nobody (`Everyone` always
/// resolves), each as `user NAME` or `group NAME`.
/// The warning for a reservation naming accounts this machine does not have, if it does.
pub(crate) fn unknown_names_warning(a: &UrlAclConfig) -> Option<String> {
    let unknown = unknown_names(a);
    let url = UrlPrefix::parse(&a.url).map_or_else(|_| a.url.clone(), |p| p.to_string());
    (!unknown.is_empty()).then(|| {
        format!(
            "reservation {url}: no {} on this machine, so it grants them nothing",
            unknown.join(", no ")
        )
    })
}

/// The warning for an address of the listen list this machine does not have.
pub(crate) fn foreign_address_warning(ip: IpAddr) -> String {
    format!(
        "{ip} is in the IP listen list but is no address of this machine: it is skipped until \
         a reload finds it here"
    )
}

fn unknown_names(a: &UrlAclConfig) -> Vec<String> {
    let everyone = |n: &String| n.eq_ignore_ascii_case("everyone");
    let users = a
        .users
        .iter()
        .filter(|u| !everyone(u) && crate::identity::resolve_user(u).is_none())
        .map(|u| format!("user {u}"));
    let groups = a
        .groups
        .iter()
        .filter(|g| !everyone(g) && crate::identity::resolve_group(g).is_none())
        .map(|g| format!("group {g}"));
    users.chain(groups).collect()
}

/// The configuration file `portshare serve` reads when given none, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/portshare/portshare.toml";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("").unwrap();
        assert!(c.iplisten.is_empty());
        assert_eq!(c.limits.max_request_bytes, 16384);
        assert_eq!(c.timers.request_queue, Timer::from_secs(120));
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
        let e = Config::from_toml("[errlog]\ntruncate_size = 1048575\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("errlog.truncate_size") && e.contains("1048576"),
            "{e}"
        );
        let e = Config::from_toml("[errlog]\nfolder = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("errlog.folder"), "{e}");
        let e = Config::from_toml("[errlog]\nsize = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("size"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml("[limits]\nmax_field_length = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_field_length"), "{e}");
        let e = Config::from_toml("iplisten = [\"not-an-ip\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iplisten"), "{e}");
        let e = Config::from_toml("[[queue]]\nname = \"q\"\nupstream = \"0.0.0.0:80\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no server's address"), "{e}");
        // The configuration is root's word: another host is allowed.
        Config::from_toml("[[queue]]\nname = \"q\"\nupstream = \"10.1.2.3:80\"\n").unwrap();
        let e = Config::from_toml("bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn a_queues_access_list_and_owner_become_grants() {
        let c = Config::from_toml(
            "[[queue]]\nname = \"q\"\nowner = \"uid:5\"\n[[queue.access]]\nusers = [\"uid:6\"]\ngroups = [\"gid:7\"]\n[[queue.access]]\ngroups = [\"gid:8\"]\nattach = false\nregister = true\n",
        )
        .unwrap();
        let got: Vec<(String, bool, bool)> = c.queues[0]
            .access_entries()
            .into_iter()
            .map(|e| (e.name, e.attach, e.register))
            .collect();
        let want = [
            ("uid:5", true, true),
            ("uid:6", true, false),
            ("gid:7", true, false),
            ("gid:8", false, true),
        ];
        assert_eq!(got, want.map(|(n, a, r)| (n.to_owned(), a, r)).to_vec());
        for (text, what) in [
            (
                "[[queue]]\nname = \"q\"\n[[queue.access]]\nattach = true\n",
                "names no user",
            ),
            (
                "[[queue]]\nname = \"q\"\n[[queue.access]]\nusers = [\"a b\"]\n",
                "not a user",
            ),
            (
                "[[queue]]\nname = \"q\"\n[[queue.access]]\nusers = [\"a\"]\nread = true\n",
                "read",
            ),
            ("[[queue]]\nname = \"~q\"\n", "unnamed"),
            ("[[queue]]\nname = \"a\\u001b[2J\"\n", "control or format"),
            ("[[queue]]\nname = \"a\\u202Eb\"\n", "control or format"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn limits_and_timers_keep_http_sys_ranges() {
        let c = Config::from_toml(
            "[limits]\nmax_connections = 1024\n[timers]\ndrain_entity_body = 5\nmin_send_rate = 4294967295\nshutdown = 2.5\n[[queue]]\nname = \"q\"\nentity_body = 3\nmin_send_rate = 1000\nmax_connections = 7\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.timers.drain_entity_body, Timer::from_secs(5));
        assert_eq!(c.timers.min_send_rate, u32::MAX);
        assert_eq!(c.queues[0].max_connections, Some(7));
        assert_eq!(Limits::default().max_connections, Limits::UNLIMITED);
        assert_eq!(Timers::default().min_send_rate, 150);
        for (text, key) in [
            (
                "[limits]\nmax_connections = 1023\n",
                "limits.max_connections = 1023",
            ),
            (
                "[limits]\nmax_connections = 2031617\n",
                "limits.max_connections",
            ),
            ("[timers]\nmin_send_rate = 0\n", "timers.min_send_rate = 0"),
            (
                "[limits]\ndisable_server_header = 3\n",
                "limits.disable_server_header = 3: expected 0 to 2",
            ),
            ("[timers]\nshutdown = 0\n", "timers.shutdown = 0"),
            (
                "[[queue]]\nname = \"q\"\nmax_connections = 0\n",
                "max_connections",
            ),
            (
                "[[queue]]\nname = \"q\"\nmax_opaque = 0\n",
                "max_opaque = 0: expected 1 to 1000000",
            ),
            (
                "[[queue]]\nname = \"q\"\nmin_send_rate = 0\n",
                "min_send_rate",
            ),
            (
                "[[queue]]\nname = \"q\"\ndrain_entity_body = -1\n",
                "drain_entity_body",
            ),
            (
                "[[queue]]\nname = \"q\"\nrequest_queue_timer = 4294968\n",
                "queue \"q\": request_queue_timer = 4294968: expected seconds from 0 to 4294967",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let text = "iplisten = []\n\n[limits]\nmax_request_bytes = 16384\nmax_field_length = 10\n";
        let e = Config::from_toml(text).unwrap_err().to_string();
        assert!(e.starts_with("line 5: limits.max_field_length = 10"), "{e}");
        let text = "[[queue]]\nname = \"a\"\n\n[[queue]]\nname = \"b\"\nlength = 0\n";
        let e = Config::from_toml(text).unwrap_err().to_string();
        assert!(e.starts_with("line 6: queue \"b\": length = 0"), "{e}");
        let text = "[[urlacl]]\nurl = \"http://+:80/a/\"\nusers = [\"alice\"]\n[[urlacl]]\nurl = \"http://+:80/b\"\nusers = [\"bob\"]\n";
        let e = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            e.starts_with("line 5: urlacl url = \"http://+:80/b\""),
            "{e}"
        );
        // Parse errors come with their line from the TOML parser.
        let e = Config::from_toml("[timers]\nheader_wait = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        // So does a timer that is no length of time, its key named all the same.
        let e = Config::from_toml("[timers]\nidle_connection = -1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("timers.idle_connection = -1: expected"),
            "{e}"
        );
    }

    #[test]
    fn errors_carry_the_line_and_the_key() {
        let e =
            Config::from_toml("iplisten = []\n\n[limits]\nmax_field_length = 10\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str(), e.message.as_str()),
            (
                Some(4),
                "limits.max_field_length",
                "limits.max_field_length = 10: expected 64 to 65534"
            )
        );
        assert!(std::error::Error::source(&e).is_none());
        let text = "[[queue]]\nname = \"a\"\n\n[[queue]]\nname = \"b\"\nlength = 0\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(6), "queue[1].length"));
        let e = Config::from_toml("admin_group = \"\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(1), "admin_group"));
        // Without text, no line; the same key and message.
        let mut c = Config::default();
        c.limits.max_field_length = 10;
        let e = c.check().unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (None, "limits.max_field_length"));
        assert_eq!(e.to_string(), e.message);
        // Text that does not parse: the parser's report, its error as the source.
        let text = "iplisten = []\n[limits]\nmax_request_bytes = \"lots\"\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(3), "limits.max_request_bytes")
        );
        assert!(
            e.to_string().starts_with("TOML parse error at line 3"),
            "{e}"
        );
        assert!(e.to_string().contains(&e.message), "{e}");
        let source = std::error::Error::source(&e).expect("the parser's error");
        assert!(source.downcast_ref::<toml::de::Error>().is_some());
        let e = Config::from_toml("[limits]\nmax_requests_bytes = 1\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(2), "limits.max_requests_bytes")
        );
        let e = Config::from_toml("[limits\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(1), ""));
    }

    #[test]
    fn files_that_cannot_be_read_or_checked() {
        let dir = std::env::temp_dir().join(format!("portshare-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.toml");
        let e = Config::from_file(&missing).unwrap_err();
        assert!(e.is_config() && !e.is_bind());
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        let io = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[timers]\nrequest_queue = -1\n").unwrap();
        let e = Config::from_file(&bad).unwrap_err();
        assert!(e.is_config());
        let inner = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<ConfigError>())
            .expect("a ConfigError");
        assert_eq!(e.to_string(), format!("{}: {inner}", bad.display()));
        assert_eq!(inner.line, Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reservations_and_control_parse() {
        let c = Config::from_toml(
            "admin_group = \"web-admins\"\nstate_file = \"/tmp/s.toml\"\n[control]\nmode = \"0660\"\n[[urlacl]]\nurl = \"http://+:80/app/\"\nusers = [\"alice\", \"uid:1001\"]\ndelegate = true\n",
        )
        .unwrap();
        assert_eq!(c.admin_group.as_deref(), Some("web-admins"));
        assert_eq!(c.control.mode_bits(), 0o660);
        assert!(c.urlacls[0].listen && c.urlacls[0].delegate);
        let e = Config::from_toml("[control]\nmode = \"999\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2: control.mode"), "{e}");
        let e = Config::from_toml("[[urlacl]]\nurl = \"http://+:80/a/\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("grants nobody"), "{e}");
    }

    #[test]
    fn control_caps_parse_and_are_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.control, ControlConfig::default());
        assert_eq!(c.control.limits(), (10.0, [256, 64, 128, 10_000]));
        assert_eq!(c.control.request_wait(), Duration::from_secs(10));
        let c = Config::from_toml(
            "[control]\nrequest_wait = 0.5\nmax_connections_per_uid = 8\nmax_sessions_per_uid = 2\nmax_queues_per_uid = 3\nmax_urls_per_uid = 4\n",
        )
        .unwrap();
        assert_eq!(c.control.limits(), (0.5, [8, 2, 3, 4]));
        assert_eq!(c.control.mode_bits(), 0o666);
        for (text, key) in [
            (
                "[control]\nrequest_wait = 0\n",
                "line 2: control.request_wait = 0",
            ),
            (
                "[control]\nrequest_wait = 3601\n",
                "control.request_wait = 3601",
            ),
            (
                "[control]\nmax_connections_per_uid = 0\n",
                "line 2: control.max_connections_per_uid = 0: expected 1 to 1000000",
            ),
            (
                "[control]\nmax_sessions_per_uid = 0\n",
                "control.max_sessions_per_uid",
            ),
            (
                "[control]\nmode = \"0600\"\nmax_queues_per_uid = 1000001\n",
                "line 3: control.max_queues_per_uid",
            ),
            ("[control]\nmax_queues = 5\n", "max_queues"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn acme_tables_parse_and_are_checked() {
        let acme = "[acme]\ndirectory = \"https://ca.example/dir\"\n";
        let c = Config::from_toml(&format!(
            "[[sslcert]]\nhostnameport = \"a.example:443\"\nacme = true\n{acme}"
        ))
        .unwrap();
        let a = c.acme.expect("[acme]");
        assert_eq!((a.http_port, a.tls_port, a.tls_alpn), (80, 443, false));
        assert!(c.sslcerts[0].acme && c.sslcerts[0].cert.is_none());
        for (text, key) in [
            (
                "[[sslcert]]\nhostnameport = \"a.example:443\"\nacme = true\n".to_owned(),
                "needs an [acme] table",
            ),
            (
                format!("[[sslcert]]\nipport = \"0.0.0.0:443\"\nacme = true\n{acme}"),
                "needs a hostnameport binding",
            ),
            (
                format!(
                    "[[sslcert]]\nhostnameport = \"a.example:443\"\nacme = true\n\
                     cert = \"a.pem\"\n{acme}"
                ),
                "no cert",
            ),
            (
                "[acme]\ndirectory = \"http://ca.example/dir\"\n".to_owned(),
                "expected an https:// URL",
            ),
            (format!("{acme}http_port = 0\n"), "acme.http_port = 0"),
            (format!("{acme}url = \"x\"\n"), "url"),
        ] {
            let e = Config::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
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
