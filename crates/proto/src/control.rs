//! The control API: HTTP/1.1 with JSON bodies on the daemon's Unix socket, so that
//! `curl --unix-socket` works and any language can be a client.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `POST /v1/queues` | [`QueueSpec`] | [`QueueInfo`]: the queue created or opened |
//! | `PATCH /v1/queues/{name}` | [`QueueProps`] | [`QueueInfo`] |
//! | `DELETE /v1/queues/{name}` | – | `204`: this connection lets go of the queue |
//! | `POST /v1/queues/{name}/urls` | [`AddUrl`] | [`UrlAdded`] |
//! | `DELETE /v1/queues/{name}/urls` | [`RemoveUrl`] | `204` |
//! | `POST /v1/queues/{name}/attach` | – (`Upgrade: portshare-worker/1`, `portshare-slots: N`) | `101`, then the [worker wire](crate::wire) |
//! | `GET /v1/state` | – | [`ServiceState`] |
//!
//! Failures answer 4xx or 5xx with an [`ApiError`], which carries the Win32 code HTTP.sys
//! would have returned. What a connection creates (queues, URLs) belongs to that connection
//! and goes away when it closes, except that a queue with a linger time keeps its URLs and
//! pending requests that long for the next connection that opens it by name.

use serde::{Deserialize, Serialize};

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
    /// before its connection is closed (`Timer_ReqQueue`). Default 120000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timer_ms: Option<u64>,
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
    /// Forward this queue's requests to `unix:/path` or a loopback `IP:port` instead of
    /// waiting for attached workers. Root only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
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
    /// Request-queue timer in milliseconds.
    pub queue_timer_ms: u64,
    /// The upstream address, for upstream queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// URLs the queue already holds (those kept by linger, when opened).
    #[serde(default)]
    pub urls: Vec<String>,
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

/// Every failure of the control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The Win32 error code, such as 183.
    pub code: u32,
    /// Its symbolic name, such as `ERROR_ALREADY_EXISTS`.
    pub name: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
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
    /// The IP listen list; empty means every address.
    pub iplisten: Vec<String>,
    /// The bound sockets.
    pub listeners: Vec<ListenerState>,
    /// Registered URL prefixes.
    pub prefixes: Vec<PrefixState>,
    /// Request queues.
    pub queues: Vec<QueueState>,
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
    /// Most requests waiting.
    pub length: u32,
    /// The 503 verbosity.
    pub verbosity: Verbosity,
    /// Active or not.
    pub enabled: bool,
    /// Linger time in milliseconds.
    pub linger_ms: u64,
    /// Request-queue timer in milliseconds.
    pub queue_timer_ms: u64,
    /// True while the queue outlives its owner, waiting to be opened.
    pub lingering: bool,
    /// The upstream address, for upstream queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Requests waiting now.
    pub depth: u64,
    /// Requests in the workers' hands now.
    pub in_flight: u64,
    /// Its URLs.
    pub urls: Vec<String>,
    /// Processes with workers attached.
    pub processes: Vec<ProcessState>,
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
    /// Its command line, or `unknown`.
    pub command: String,
    /// Slots it declared, over all its workers.
    pub slots: u32,
    /// Requests it holds now.
    pub busy: u32,
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
}
