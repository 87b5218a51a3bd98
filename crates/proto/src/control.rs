//! The control API: HTTP/1.1 with JSON bodies on the daemon's Unix socket, so that
//! `curl --unix-socket` works and any language can be a client.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `POST /v1/queues` | [`QueueSpec`] | [`QueueInfo`]: the queue created or opened |
//! | `PATCH /v1/queues/{name}` | [`QueueProps`] | [`QueueInfo`] |
//! | `DELETE /v1/queues/{name}` | – | `204`: this connection lets go of the queue |
//! | `POST /v1/queues/{name}/urls` | [`AddUrl`], or [`AddUrlBatch`] for several | [`UrlAdded`], or [`UrlsAdded`] |
//! | `DELETE /v1/queues/{name}/urls` | [`RemoveUrl`], or [`RemoveUrlBatch`] for several | `204` |
//! | `POST /v1/queues/{name}/access` | [`GrantAccess`] | [`QueueInfo`]: the accounts' rights set |
//! | `POST /v1/queues/{name}/ready` | [`SetReady`] | [`QueueInfo`]: a held upstream queue ready, or held again |
//! | `POST /v1/queues/{name}/attach` | – (`Upgrade: portshare-worker/1`, `portshare-slots: N`) | `101`, then the [worker wire](crate::wire) |
//! | `GET /v1/state` (`?queue=`, `?port=`, `?url=`: [`StateFilter`]) | – | [`ServiceState`] |
//! | `GET /v1/metrics` | – | [`Metrics`]: the counters, as the caller may see them |
//! | `GET /v1/urlacl` | – | [`UrlAclList`] |
//! | `POST /v1/urlacl` | [`AddReservation`] | `201`, [`ReservationInfo`] |
//! | `DELETE /v1/urlacl` | [`RemoveReservation`] | `204` |
//! | `GET /v1/iplisten` | – | [`IpListenList`] |
//! | `POST /v1/iplisten` | [`IpListenChange`] | `201`, [`IpListenList`] |
//! | `DELETE /v1/iplisten` | [`IpListenChange`] | `200`, [`IpListenList`] |
//! | `POST /v1/reload` | – | [`ReloadReport`]: the configuration file read again and applied |
//!
//! The paths are constants in [`path`], with the encoding of a queue's name in its path
//! (`%XX` for every byte but unreserved ASCII) and its decoding.
//!
//! Failures answer 4xx or 5xx with an [`ApiError`], which carries the Win32 code HTTP.sys
//! would have returned; the status follows from the code ([`Win32Error::http_status`]). A
//! refused batch of URLs also says which of them failed ([`ApiError::index`]).
//!
//! What a connection creates (queues, URLs) belongs to that connection and goes away when
//! it closes, except that a queue with a linger time keeps its URLs and pending requests
//! that long for the next connection that opens it by name.
//!
//! A named queue belongs to the account that created it, as an HTTP.sys queue carries its
//! creator's security descriptor: only that account, and the accounts it granted rights in
//! the queue's access list ([`AccessEntry`]), may open it. Administrators may inspect,
//! disable and delete any queue, and change its access list, but do not join it unasked.
//! Queues the configuration file declares belong to the daemon. An unnamed queue is its
//! creating process's alone.

mod filter;
mod metrics;
pub mod path;

pub use filter::StateFilter;
pub use metrics::{
    Histogram, Metrics, PortMetrics, QueueMetrics, SiteMetrics, TlsMetrics, WorkerMetrics,
};

use serde::{Deserialize, Serialize};

use crate::Win32Error;

/// Checks a queue name, as the API and the configuration file give it: 1 to 260
/// characters, none of them control or format characters (which could rewrite an
/// administrator's terminal, see [`crate::text`]), and not in the `~` namespace that the
/// daemon keeps for the names it makes up for unnamed queues.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 260 {
        return Err("a queue name has 1 to 260 characters".into());
    }
    if name.chars().any(crate::text::is_hidden) {
        return Err(format!(
            "queue name {:?} holds control or format characters",
            crate::text::printable(name)
        ));
    }
    if name.starts_with('~') {
        return Err(format!(
            "queue name {name:?}: names starting with `~` are the daemon's, for unnamed queues"
        ));
    }
    Ok(())
}

/// How a full or disabled queue answers (`HttpServer503VerbosityProperty`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    /// Reset the connection, no response (HTTP.sys's default).
    #[default]
    Basic,
    /// `503 Service Unavailable` with the standard page.
    Limited,
    /// 503 with a reason phrase naming the cause.
    Full,
}

impl Verbosity {
    /// The lower-case name used in JSON, configuration and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Verbosity::Basic => "basic",
            Verbosity::Limited => "limited",
            Verbosity::Full => "full",
        }
    }
}

impl core::str::FromStr for Verbosity {
    type Err = String;

    fn from_str(s: &str) -> Result<Verbosity, String> {
        match s {
            "basic" => Ok(Verbosity::Basic),
            "limited" => Ok(Verbosity::Limited),
            "full" => Ok(Verbosity::Full),
            _ => Err(format!(
                "unknown 503 verbosity {s:?}: expected basic, limited or full"
            )),
        }
    }
}

/// Whether `POST /v1/queues` creates, opens, or either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenMode {
    /// Create; a name in use is ERROR_ALREADY_EXISTS (183).
    Create,
    /// Open an existing queue by name (`HTTP_CREATE_REQUEST_QUEUE_FLAG_OPEN_EXISTING`); a
    /// missing one is ERROR_FILE_NOT_FOUND (2).
    Open,
    /// Open the queue if it exists, else create it.
    #[default]
    OpenOrCreate,
}

/// Properties of a queue, each optional: what is absent keeps its value (or default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueProps {
    /// Most requests waiting (1..=2147483647); default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    /// The 503 verbosity; default basic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<Verbosity>,
    /// Active (true, the default) or inactive: an inactive queue answers 503 `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long, in milliseconds, the queue outlives the connection that created it, with
    /// its URLs and pending requests, waiting for a process to open it by name. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    /// The request-queue timer in milliseconds: the longest a request waits for a worker
    /// before its connection is closed (`Timer_ReqQueue`). 0: the service's
    /// (`timers.request_queue`, default 120000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timer_ms: Option<u64>,
    /// `EntityBody` in milliseconds: the longest gap while a request body arrives. 0: the
    /// service's (`timers.entity_body`, default 120000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_body_ms: Option<u64>,
    /// `DrainEntityBody` in milliseconds: the time to read and discard a body the
    /// application left unread. 0: the service's (default 120000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_entity_body_ms: Option<u64>,
    /// `MinSendRate` in bytes per second: a client taking a response more slowly is cut
    /// off (`Timer_MinBytesPerSecond`). 0: the service's (default 150); 4294967295: no
    /// check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_send_rate: Option<u32>,
    /// Most client connections whose requests the queue holds at once; one more gets 503
    /// `ConnLimit`. 0: no limit (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most opaque connections (upgraded by a worker's `101`, such as WebSockets) the
    /// queue's workers hold at once (1..=1000000); one more is refused with 503. Default
    /// [`QueueProps::DEFAULT_MAX_OPAQUE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_opaque: Option<u32>,
}

impl QueueProps {
    /// Checks each property present against its range, as the daemon does before it sets
    /// any, whether they come from the control API or the configuration file. A timer or
    /// rate of 0 is the service's, a `max_connections` of 0 no limit; 65535 s or more turns
    /// a timer off.
    ///
    /// # Errors
    ///
    /// An [`InvalidProps`] naming the first property out of range, such as a `length` of 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use portshare_proto::control::QueueProps;
    ///
    /// let ok = QueueProps { length: Some(10), queue_timer_ms: Some(0), ..QueueProps::default() };
    /// assert!(ok.validate().is_ok());
    /// let bad = QueueProps { length: Some(0), ..QueueProps::default() };
    /// assert_eq!(bad.validate().map_err(|e| e.field), Err("length"));
    /// ```
    pub fn validate(&self) -> Result<(), InvalidProps> {
        if let Some(len) = self.length
            && !(1..=Self::MAX_LENGTH).contains(&len)
        {
            return Err(InvalidProps {
                field: "length",
                message: format!("length = {len}: expected 1 to {}", Self::MAX_LENGTH),
            });
        }
        if let Some(n) = self.max_opaque
            && !(1..=Self::MAX_OPAQUE).contains(&n)
        {
            return Err(InvalidProps {
                field: "max_opaque",
                message: format!("max_opaque = {n}: expected 1 to {}", Self::MAX_OPAQUE),
            });
        }
        Ok(())
    }

    /// The longest a queue may be (HTTP.sys's limit: a LONG).
    pub const MAX_LENGTH: u32 = 0x7FFF_FFFF;

    /// The opaque connections a queue holds at most unless told otherwise.
    pub const DEFAULT_MAX_OPAQUE: u32 = 10_000;

    /// The largest `max_opaque`.
    pub const MAX_OPAQUE: u32 = 1_000_000;
}

/// A queue property out of its range: what [`QueueProps::validate`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidProps {
    /// The property, as [`QueueProps`] names it.
    pub field: &'static str,
    /// What it holds and what it may hold.
    pub message: String,
}

impl core::fmt::Display for InvalidProps {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidProps {}

/// A queue's timers and connection limit, as set on it: 0 means the service's value (for
/// the timers) or no limit (for `max_connections`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLimits {
    /// `EntityBody`, milliseconds.
    #[serde(default)]
    pub entity_body_ms: u64,
    /// `DrainEntityBody`, milliseconds.
    #[serde(default)]
    pub drain_entity_body_ms: u64,
    /// `MinSendRate`, bytes per second.
    #[serde(default)]
    pub min_send_rate: u32,
    /// Most client connections.
    #[serde(default)]
    pub max_connections: u32,
    /// Most opaque connections at once.
    #[serde(default)]
    pub max_opaque: u32,
    /// `RequestQueue`, milliseconds, as set on the queue (the one in force is
    /// `queue_timer_ms` beside these limits).
    #[serde(default)]
    pub request_queue_ms: u64,
}

/// The service's values, which a queue's 0 stands for (`[timers]` and `[limits]` of the
/// configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTimers {
    /// `RequestQueue`, milliseconds.
    pub request_queue_ms: u64,
    /// `EntityBody`, milliseconds.
    pub entity_body_ms: u64,
    /// `DrainEntityBody`, milliseconds.
    pub drain_entity_body_ms: u64,
    /// `MinSendRate`, bytes per second; 4294967295 checks nothing.
    pub min_send_rate: u32,
    /// `MaxConnections` of the whole service.
    pub max_connections: u64,
}

/// `POST /v1/queues`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// The name (at most 260 characters). Without one the daemon makes up a name that no
    /// other connection may open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Create, open or either.
    #[serde(default)]
    pub mode: OpenMode,
    /// Properties to set (only the queue's owner may set them on an existing queue).
    #[serde(default, flatten)]
    pub props: QueueProps,
    /// Forward this queue's requests to `unix:/path` or `IP:port` instead of waiting for
    /// attached workers. Any account may name a Unix socket or a loopback port it serves
    /// itself (every new connection is checked: the server's socket must be the queue
    /// owner's); only root may name another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Answer every request of this queue's (http) URLs with `308 Permanent Redirect` to
    /// the same host and target over https, on this port; no worker is involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<u16>,
    /// For an upstream queue: start held, not ready. The queue takes registrations and
    /// holds arriving requests in its FIFO (under its length and request-queue timer)
    /// until its owner declares it ready ([`SetReady`]), as an HTTP.sys queue holds
    /// requests until its application receives them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub held: bool,
    /// For an upstream queue: the upstream gets the request target without the
    /// registration's path prefix (`/py/a?x` -> `/a?x` for `http://+:80/py/`), and
    /// `X-Forwarded-Prefix: /py`. Refused on other queues.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_prefix: bool,
    /// For an upstream queue: how many requests without a body (GET and HEAD) may wait
    /// on one upstream connection, written one after another and answered in order
    /// (HTTP/1.1 pipelining), from 1 (none; the default) to [`MAX_PIPELINE`]. Fewer
    /// connections and system calls per request, for an upstream that answers quickly:
    /// a slow answer holds up those behind it on its connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<u32>,
}

/// The most requests a queue's [`QueueSpec::pipeline`] may put on one upstream connection.
pub const MAX_PIPELINE: u32 = 64;

/// For `skip_serializing_if`.
fn is_false(b: &bool) -> bool {
    !*b
}

/// `POST /v1/queues/{name}/ready`: the owner of a held upstream queue attaches its upstream
/// (`true`: waiting requests go to it) or detaches it again (`false`: requests wait, as
/// while the application restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetReady {
    /// Ready or held.
    pub ready: bool,
}

/// One account's rights on a queue, besides its owner's (who holds them all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEntry {
    /// A user or a group (every member, by primary or supplementary membership).
    pub kind: AccountKind,
    /// A name, or `uid:N` / `gid:N`.
    pub name: String,
    /// May open the queue and attach workers: receive its requests. Default yes.
    #[serde(default = "yes")]
    pub attach: bool,
    /// May open the queue and add URLs to it, still only where its own URL ACL
    /// reservations allow. Default no.
    #[serde(default)]
    pub register: bool,
}

/// `POST /v1/queues/{name}/access`: sets each named account's rights, replacing what it
/// had; an entry with neither right takes the account off the list. Workers of an account
/// that loses `attach` are detached, and URLs its connections added go when it loses
/// `register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantAccess {
    /// The accounts and their new rights.
    pub entries: Vec<AccessEntry>,
}

/// A queue as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// True when this request created it.
    pub created: bool,
    /// Most requests waiting.
    pub length: u32,
    /// The 503 verbosity.
    pub verbosity: Verbosity,
    /// Active or not.
    pub enabled: bool,
    /// Linger time in milliseconds.
    pub linger_ms: u64,
    /// The request-queue timer in force, in milliseconds: its own, else the service's.
    pub queue_timer_ms: u64,
    /// Its other timers and its connection limit.
    #[serde(default)]
    pub limits: QueueLimits,
    /// The upstream address, for upstream queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// True while an upstream queue is held: requests wait, its upstream is not used.
    #[serde(default)]
    pub held: bool,
    /// URLs the queue already holds (those kept by linger, when opened).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The accounts granted rights on it besides its owner.
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

/// `POST /v1/queues/{name}/urls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUrl {
    /// The URL prefix, such as `http://+:80/app/`.
    pub url: String,
    /// The UrlContext value delivered with each request this prefix wins
    /// (`portshare-url-context`).
    #[serde(default)]
    pub context: u64,
}

/// `POST /v1/queues/{name}/urls` with several URLs: `{"urls": [{"url": ...}, ...]}`. All
/// are registered, or none: the first that fails undoes the ones before it (the ports
/// bound for them are let go), and the refusal's [`ApiError::index`] names it.
///
/// The daemon checks every URL's syntax first (87 `ERROR_INVALID_PARAMETER` for the first
/// malformed one), then registers them in order, as a connection adding them one at a
/// time would, the route table published once at the end. A URL given twice is 183
/// `ERROR_ALREADY_EXISTS` at its second place. At most [`AddUrlBatch::MAX`] URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUrlBatch {
    /// The URLs, each as [`AddUrl`] gives one.
    pub urls: Vec<AddUrl>,
}

impl AddUrlBatch {
    /// The most URLs one batch may hold; a longer one is refused whole (87).
    pub const MAX: usize = 10_000;
}

/// The answer to [`AddUrlBatch`]: what each URL got, in the batch's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlsAdded {
    /// One [`UrlAdded`] per URL of the batch.
    pub urls: Vec<UrlAdded>,
}

/// The answer to [`AddUrl`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlAdded {
    /// The prefix in its canonical form.
    pub url: String,
    /// The local addresses (`ip:port`) that now listen for it; empty when nothing does.
    pub listening: Vec<String>,
    /// Things the caller should know, such as an address outside the listen list.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `DELETE /v1/queues/{name}/urls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveUrl {
    /// The URL prefix, as registered (any spelling that parses to the same prefix).
    pub url: String,
}

/// `DELETE /v1/queues/{name}/urls` with several URLs: every one checked first, then all
/// removed and the route table changed once; a refusal names the index of the URL and
/// removes none. At most [`AddUrlBatch::MAX`] URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveUrlBatch {
    /// The URLs, each as [`RemoveUrl`] gives one.
    pub urls: Vec<RemoveUrl>,
}

/// Every failure of the control API: the Win32 code HTTP.sys would have returned, its name
/// and a message. Ask what it is with the predicates ([`is_access_denied`](Self::is_access_denied)
/// and the like) rather than by number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The Win32 error code, such as 183.
    pub code: u32,
    /// Its symbolic name, such as `ERROR_ALREADY_EXISTS`.
    pub name: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
    /// For a refused [`AddUrlBatch`]: the place in `urls` (from 0) of the URL that failed,
    /// whose code this is. Absent for every other refusal, and for a batch refused as a
    /// whole (too many URLs, a queue the caller may not use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl ApiError {
    /// The refusal `error`, saying `message`.
    pub fn new(error: Win32Error, message: impl Into<String>) -> ApiError {
        ApiError {
            code: error.code(),
            name: error.name().to_owned(),
            message: message.into(),
            index: None,
        }
    }

    /// This refusal as the answer to a batch whose URL `index` failed.
    #[must_use]
    pub fn at(mut self, index: usize) -> ApiError {
        self.index = Some(index);
        self
    }

    /// The named code, when this crate knows the number (a newer daemon may send others).
    pub fn win32(&self) -> Option<Win32Error> {
        Win32Error::from_code(self.code)
    }

    /// True when the code is `error`'s.
    pub fn is(&self, error: Win32Error) -> bool {
        self.code == error.code()
    }

    /// The HTTP status the control API answers this refusal with (see
    /// [`Win32Error::http_status`]); 400 for a code this crate does not know.
    pub fn http_status(&self) -> u16 {
        self.win32().map_or(400, Win32Error::http_status)
    }

    /// True for 2 `ERROR_FILE_NOT_FOUND`: no such queue to open, reservation or listen-list
    /// entry to remove, or control endpoint.
    pub fn is_file_not_found(&self) -> bool {
        self.is(Win32Error::FileNotFound)
    }

    /// True for 4 `ERROR_TOO_MANY_OPEN_FILES`: the daemon's descriptor budget for control
    /// connections or listening sockets is spent.
    pub fn is_too_many_open_files(&self) -> bool {
        self.is(Win32Error::TooManyOpenFiles)
    }

    /// True for 5 `ERROR_ACCESS_DENIED`: no reservation lets this user register the
    /// prefix, the queue belongs to another account, or the request needs an administrator.
    pub fn is_access_denied(&self) -> bool {
        self.is(Win32Error::AccessDenied)
    }

    /// True for 6 `ERROR_INVALID_HANDLE`: the queue named is not one this connection holds.
    pub fn is_invalid_handle(&self) -> bool {
        self.is(Win32Error::InvalidHandle)
    }

    /// True for 13 `ERROR_INVALID_DATA`: the configuration file does not parse or check.
    pub fn is_invalid_data(&self) -> bool {
        self.is(Win32Error::InvalidData)
    }

    /// True for 32 `ERROR_SHARING_VIOLATION`: another program holds the port.
    pub fn is_sharing_violation(&self) -> bool {
        self.is(Win32Error::SharingViolation)
    }

    /// True for 87 `ERROR_INVALID_PARAMETER`: a malformed URL prefix, name or body.
    pub fn is_invalid_parameter(&self) -> bool {
        self.is(Win32Error::InvalidParameter)
    }

    /// True for 183 `ERROR_ALREADY_EXISTS`: another queue holds the prefix, or the queue or
    /// reservation exists.
    pub fn is_already_exists(&self) -> bool {
        self.is(Win32Error::AlreadyExists)
    }

    /// True for 1816 `ERROR_NOT_ENOUGH_QUOTA`: the caller's user is at one of the daemon's
    /// per-user caps.
    pub fn is_not_enough_quota(&self) -> bool {
        self.is(Win32Error::NotEnoughQuota)
    }
}

impl core::fmt::Display for ApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({} {})", self.message, self.code, self.name)
    }
}

impl std::error::Error for ApiError {}

/// `GET /v1/state`: what the daemon holds, for `portshare show servicestate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The daemon's version.
    pub version: String,
    /// The daemon's process id.
    #[serde(default)]
    pub pid: u32,
    /// The IP listen list; empty means every address.
    pub iplisten: Vec<String>,
    /// The bound sockets.
    pub listeners: Vec<ListenerState>,
    /// Addresses the daemon should listen on and cannot, with who holds them.
    #[serde(default)]
    pub bind_failures: Vec<BindFailure>,
    /// Registered URL prefixes.
    pub prefixes: Vec<PrefixState>,
    /// Reserved URLs (URL ACLs): they take part in routing, and a request one of them wins
    /// with no registration under it is answered 503.
    #[serde(default)]
    pub reservations: Vec<String>,
    /// Request queues.
    pub queues: Vec<QueueState>,
    /// How the daemon's open-file limit is shared out, and what each share holds now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<DescriptorBudget>,
    /// Response bytes workers have sent that the daemon has not yet written to clients.
    #[serde(default)]
    pub buffers: BufferGauge,
    /// The URL limits requests are judged by, for `portshare explain --live`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_limits: Option<UrlLimits>,
    /// The service's timers and connection limit, in force for queues that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_timers: Option<ServiceTimers>,
    /// Access log lines dropped (a slow or full disk, a file the daemon could not use)
    /// since the access log settings in force took effect; 0 when the log is off.
    #[serde(default)]
    pub access_log_dropped: u64,
    /// The filter this view was asked with; absent for the whole view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<StateFilter>,
}

/// The limits a request's URL is judged by (`[limits]` in the configuration file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlLimits {
    /// `UrlSegmentMaxLength`: characters in one path segment; 0 for no limit.
    pub segment_max_length: u64,
    /// `UrlSegmentMaxCount`: path segments; 0 for no limit.
    pub segment_max_count: u64,
    /// `MaxFieldLength`, which bounds the URL too.
    pub max_url_length: u64,
}

/// The descriptor budget: the daemon's open-file limit, cut into shares at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorBudget {
    /// The open-file limit (`RLIMIT_NOFILE`) the shares come from.
    pub open_files: u64,
    /// Client connections: `MaxConnections`, at most the share.
    pub clients: BudgetShare,
    /// Control connections, attached workers included.
    pub control: BudgetShare,
    /// The last control places, which only administrators may take.
    pub control_admin: u64,
    /// Connections to upstream servers.
    pub upstream: BudgetShare,
    /// Listening sockets.
    pub listeners: BudgetShare,
    /// Descriptors kept for the daemon itself, listening sockets included.
    pub reserve: u64,
}

/// One share of the descriptor budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetShare {
    /// The most open at once.
    pub max: u64,
    /// Open now.
    pub open: u64,
}

/// What the daemon holds of workers' responses: frames taken off worker sockets and not yet
/// written to their clients, each counted as its payload plus a fixed overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferGauge {
    /// Bytes held now, over all worker connections.
    pub bytes: u64,
    /// The most held at once since the daemon started.
    pub peak: u64,
    /// The most the daemon may hold now: `shared_bound`, plus `worker_floor` for each
    /// worker connection (or one gone whose frames a client connection still holds).
    pub bound: u64,
    /// Past this total, a worker holding more than `worker_floor` is not read until some of
    /// what it holds is released.
    pub shared_bound: u64,
    /// The most one worker connection may have held at once.
    pub worker_bound: u64,
    /// What any worker connection may always hold, whatever the others hold.
    pub worker_floor: u64,
}

/// An address the daemon cannot bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindFailure {
    /// `ip:port`.
    pub address: String,
    /// The error, naming the process that holds the address when one does (PID, command
    /// line, user, or `unknown`).
    pub error: ApiError,
}

/// One bound socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerState {
    /// `ip:port`.
    pub address: String,
    /// Client connections open on it.
    pub connections: u64,
}

/// One registered prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixState {
    /// The prefix, canonical form.
    pub url: String,
    /// Its queue.
    pub queue: String,
    /// Its UrlContext.
    pub context: u64,
    /// The addresses listening for it; empty when nothing does.
    pub listening: Vec<String>,
    /// Set when nothing listens for it, saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One request queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The queue's name.
    pub name: String,
    /// The uid that owns it.
    pub owner_uid: u32,
    /// Its user name, or `uid:N`.
    #[serde(default)]
    pub owner_user: String,
    /// Most requests waiting.
    pub length: u32,
    /// The 503 verbosity.
    pub verbosity: Verbosity,
    /// Active or not.
    pub enabled: bool,
    /// Linger time in milliseconds.
    pub linger_ms: u64,
    /// The request-queue timer in force, in milliseconds: its own, else the service's.
    pub queue_timer_ms: u64,
    /// Its other timers and its connection limit.
    #[serde(default)]
    pub limits: QueueLimits,
    /// Client connections whose requests it holds now.
    #[serde(default)]
    pub connections: u64,
    /// True while the queue outlives its owner, waiting to be opened.
    pub lingering: bool,
    /// Declared by the configuration file: the daemon holds it.
    #[serde(default)]
    pub config: bool,
    /// The accounts granted rights on it besides its owner.
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// The upstream address, for upstream queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// True while an upstream queue is held (not ready): requests wait in its FIFO.
    #[serde(default)]
    pub held: bool,
    /// Why the upstream's new connections are refused, when its server is not run by the
    /// queue owner (its requests get 502 `Upstream_Owner` meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_refused: Option<String>,
    /// The https port this queue's requests are redirected to, for redirecting queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<u16>,
    /// Requests waiting now.
    pub depth: u64,
    /// How long the oldest waiting request has waited, in milliseconds (0 when none waits).
    #[serde(default)]
    pub oldest_wait_ms: u64,
    /// Requests in the workers' hands now.
    pub in_flight: u64,
    /// Opaque connections (upgraded by a worker's `101`) open now; each also holds its
    /// slot, so it counts in `in_flight` too.
    #[serde(default)]
    pub opaque: u64,
    /// Its URLs.
    pub urls: Vec<String>,
    /// Processes with workers attached. Shown to administrators, the queue's owner and the
    /// accounts on its access list; to anyone else, empty, with `processes_hidden` set.
    pub processes: Vec<ProcessState>,
    /// True when `processes` was withheld from the caller.
    #[serde(default)]
    pub processes_hidden: bool,
    /// Counters since the queue was created.
    pub counters: QueueCounters,
}

/// A process attached to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// Its PID.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its user name, or `uid:N` when the uid has none.
    #[serde(default)]
    pub user: String,
    /// Its command line, or `unknown`.
    pub command: String,
    /// Slots it declared, over all its workers.
    pub slots: u32,
    /// Requests it holds now.
    pub busy: u32,
    /// Bytes of its responses the daemon holds now, not yet written to clients.
    #[serde(default)]
    pub buffered: u64,
    /// Requests handed to its attached workers, summed over the worker connections it has
    /// now (a worker connection that went away takes its count with it).
    #[serde(default)]
    pub served: u64,
}

/// Counters of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounters {
    /// Requests handed to a worker.
    pub delivered: u64,
    /// Refused because the queue was full.
    pub queue_full: u64,
    /// Refused because the queue was disabled.
    pub disabled: u64,
    /// Dropped when the request-queue timer fired.
    pub timed_out: u64,
    /// Abandoned because a worker went away holding them, or the queue closed.
    pub abandoned: u64,
    /// Refused because the queue's connection limit was reached (`ConnLimit`).
    #[serde(default)]
    pub conn_limit: u64,
}

/// Where a reservation or a listen-list entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file: changed by editing it and reloading, never by the CLI.
    Config,
    /// The state file, written by the CLI (`portshare urlacl add`, `portshare iplisten add`):
    /// kept across restarts, like HTTP.sys's registry values.
    State,
}

/// One entry of a reservation's access list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    /// `user` or `group`.
    pub kind: AccountKind,
    /// The name as written: a user or group name, `uid:N` or `gid:N`.
    pub name: String,
    /// May register URLs under the reservation.
    pub listen: bool,
    /// May add reservations under it.
    pub delegate: bool,
}

/// What an [`AclEntry`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// A user.
    User,
    /// A group: every member, by primary or supplementary group.
    Group,
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationInfo {
    /// The reserved URL prefix, canonical form.
    pub url: String,
    /// Who may do what under it.
    pub entries: Vec<AclEntry>,
    /// Where it comes from.
    pub source: Source,
    /// After `urlacl add`: what deserves the operator's attention, such as an account that
    /// does not exist on this machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `GET /v1/urlacl`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlAclList {
    /// Every explicit reservation, sorted by URL. The implicit root reservations (held by
    /// root and the admin group) are not listed.
    pub reservations: Vec<ReservationInfo>,
    /// The group whose members hold the implicit root reservations, as root does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_group: Option<String>,
}

/// `POST /v1/urlacl`: `netsh http add urlacl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddReservation {
    /// The URL prefix to reserve.
    pub url: String,
    /// Users granted (names, or `uid:N`).
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups granted (names, or `gid:N`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The listen right (may register under it); default true.
    #[serde(default = "yes")]
    pub listen: bool,
    /// The delegate right (may reserve under it); default false.
    #[serde(default)]
    pub delegate: bool,
}

fn yes() -> bool {
    true
}

/// `DELETE /v1/urlacl`: `netsh http delete urlacl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveReservation {
    /// The reserved URL prefix (any spelling that parses to it).
    pub url: String,
}

/// One address of the IP listen list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpListenEntry {
    /// The address, no port.
    pub address: String,
    /// Where it comes from.
    pub source: Source,
}

/// `GET /v1/iplisten`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpListenList {
    /// The list; empty means every address (`0.0.0.0` and `::`).
    pub addresses: Vec<IpListenEntry>,
    /// Set when the daemon was started with `--iplisten`, which overrides the list until it
    /// restarts without it: the list is then kept but not what the daemon listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridden_by: Vec<String>,
    /// After a change: what it broke or could not do, such as URLs no socket serves any
    /// more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `POST /v1/iplisten` and `DELETE /v1/iplisten`: `netsh http add|delete iplisten`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpListenChange {
    /// An IPv4 or IPv6 address, no port.
    pub address: String,
}

/// `POST /v1/reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The file read.
    pub config: String,
    /// What changed, one line each; empty when nothing did.
    pub changes: Vec<String>,
    /// Problems that did not stop the reload (an address that cannot be bound...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::{ApiError, QueueProps, QueueSpec, SetReady};
    use crate::Win32Error;

    #[test]
    fn held_and_strip_prefix_are_sent_only_when_set() {
        // A daemon older than these fields refuses unknown ones: a spec without them must
        // read as it always did.
        let plain = serde_json::to_string(&QueueSpec::default()).expect("serializes");
        assert!(
            !plain.contains("held") && !plain.contains("strip_prefix"),
            "{plain}"
        );
        let spec: QueueSpec =
            serde_json::from_str(r#"{"upstream": "127.0.0.1:1", "held": true}"#).expect("parses");
        assert!(spec.held && !spec.strip_prefix);
        let ready: SetReady = serde_json::from_str(r#"{"ready": false}"#).expect("parses");
        assert!(!ready.ready);
        assert!(serde_json::from_str::<SetReady>(r#"{"ready": true, "x": 1}"#).is_err());
    }

    #[test]
    fn queue_properties_keep_their_ranges() {
        let length = |n| QueueProps {
            length: Some(n),
            ..QueueProps::default()
        };
        for (props, ok) in [
            (QueueProps::default(), true),
            (length(1), true),
            (length(QueueProps::MAX_LENGTH), true),
            (length(0), false),
            (length(QueueProps::MAX_LENGTH + 1), false),
        ] {
            assert_eq!(props.validate().is_ok(), ok, "{props:?}");
        }
        // 0 is the service's timer or no limit; the largest values turn a timer off.
        let zeros = QueueProps {
            linger_ms: Some(0),
            queue_timer_ms: Some(0),
            entity_body_ms: Some(0),
            drain_entity_body_ms: Some(0),
            min_send_rate: Some(0),
            max_connections: Some(0),
            ..QueueProps::default()
        };
        assert_eq!(zeros.validate(), Ok(()));
        let most = QueueProps {
            queue_timer_ms: Some(u64::MAX),
            min_send_rate: Some(u32::MAX),
            ..QueueProps::default()
        };
        assert_eq!(most.validate(), Ok(()));
        let e = length(0).validate().expect_err("length 0");
        assert_eq!(
            (e.field, e.to_string()),
            ("length", "length = 0: expected 1 to 2147483647".to_owned())
        );
        let opaque = |n| QueueProps {
            max_opaque: Some(n),
            ..QueueProps::default()
        };
        assert_eq!(opaque(1).validate(), Ok(()));
        assert_eq!(opaque(QueueProps::MAX_OPAQUE).validate(), Ok(()));
        for bad in [0, QueueProps::MAX_OPAQUE + 1] {
            let e = opaque(bad).validate().expect_err("max_opaque out of range");
            assert_eq!(e.field, "max_opaque");
        }
    }

    #[test]
    fn api_errors_answer_by_name() {
        let e = ApiError::new(Win32Error::AlreadyExists, "taken");
        assert_eq!((e.code, e.name.as_str()), (183, "ERROR_ALREADY_EXISTS"));
        assert_eq!(e.to_string(), "taken (183 ERROR_ALREADY_EXISTS)");
        assert!(e.is_already_exists() && e.is(Win32Error::AlreadyExists));
        assert!(!e.is_access_denied() && !e.is_sharing_violation());
        assert_eq!(
            (e.win32(), e.http_status()),
            (Some(Win32Error::AlreadyExists), 409)
        );
        let wire: ApiError =
            serde_json::from_str(r#"{"code":5,"name":"ERROR_ACCESS_DENIED","message":"no"}"#)
                .expect("an ApiError");
        assert!(wire.is_access_denied());
        assert_eq!(wire.http_status(), 403);
        // A code from a newer daemon: no name, and the catch-all status.
        let unknown = ApiError {
            code: 9999,
            name: "ERROR_SOMETHING".into(),
            message: "?".into(),
            index: None,
        };
        assert_eq!((unknown.win32(), unknown.http_status()), (None, 400));
    }
}
