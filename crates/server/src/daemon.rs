//! The daemon's state: queues, registrations, listeners and the sessions that own them.
//!
//! Everything that changes goes through one lock, [`Daemon::state`]; the data path never
//! takes it. Connections read the route table from an [`ArcSwap`] snapshot that each change
//! replaces, so lookups never wait for registrations or for each other.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use portshare_proto::control::{
    AddUrl, ApiError, BindFailure, GrantAccess, ListenerState, OpenMode, PrefixState, ProcessState,
    QueueInfo, QueueLimits, QueueProps, QueueSpec, QueueState, ServiceState, Source, UrlAdded,
};
use portshare_router::{Host, RouteTable, Scheme, UrlAcl, UrlOptions, UrlPrefix, Win32Error};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::accept::{self, Failure, Spare, Throttle};
use crate::access::{Access, Rights};
use crate::bind::{self, BindError};
use crate::budget::Budget;
use crate::config::{Config, StateFile, Timers};
use crate::errlog;
use crate::head::HeadLimits;
use crate::identity::{self, Identity};
use crate::queue::{Props, Queue, Target};
use crate::quota::Quota;
use crate::upstream::{self, Address, Upstream};
use crate::worker::Peer;

mod caps;
mod operate;

pub(crate) use operate::Start;

/// What every client connection reads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<RouteTable<Arc<Binding>>>,
    /// Limits, timers and the error log; a reload swaps in new ones, which apply from each
    /// connection's next request.
    pub(crate) settings: ArcSwap<Settings>,
    pub(crate) request_ids: AtomicU64,
    /// Open client connections, against `limits.max_connections`.
    pub(crate) connections: Connections,
    /// Set when the daemon begins to stop: connections finish the request in hand and close.
    pub(crate) stopping: AtomicBool,
    /// Woken when `stopping` is set.
    pub(crate) stop: Notify,
    /// The descriptor budget.
    pub(crate) budget: Budget,
    /// Upstream connections open, against the budget's upstream share.
    pub(crate) upstreams: Arc<upstream::Share>,
    /// The accept loops' spare descriptor.
    pub(crate) spare: Spare,
}

impl Shared {
    /// No routes yet, `settings` in force.
    fn new(settings: Settings, budget: Budget) -> Arc<Shared> {
        Arc::new(Shared {
            table: ArcSwap::from_pointee(RouteTable::new()),
            settings: ArcSwap::from_pointee(settings),
            request_ids: AtomicU64::new(1),
            connections: Connections::default(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            budget,
            upstreams: upstream::Share::new(budget.upstream),
            spare: Spare::new(),
        })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// `MaxConnections` in force: the configured value, at most the budget's client share.
    pub(crate) fn max_connections(&self) -> u64 {
        self.settings
            .load()
            .max_connections
            .min(self.budget.clients)
    }

    /// A place for one more client connection, once fewer than `max_connections` are open.
    async fn place(self: &Arc<Shared>) -> Place {
        self.connections.reserve(|| self.max_connections()).await;
        Place(self.clone())
    }
}

/// One open client connection, counted until dropped.
struct Place(Arc<Shared>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.connections.release();
    }
}

/// The count of open client connections, and the wake-up of accept loops waiting at the
/// service-wide limit (`MaxConnections`: at the limit, no connection is accepted until one
/// closes).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: AtomicU64,
    freed: Notify,
}

impl Connections {
    /// Takes a place for one more connection, waiting while `max` are open.
    pub(crate) async fn reserve(&self, max: impl Fn() -> u64) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let open = self.open.load(Ordering::Acquire);
            if open < max() {
                if self
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            freed.await;
        }
    }

    /// Gives back a place taken by [`Connections::reserve`].
    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// Wakes the accept loops, to look at the limit again after a reload.
    pub(crate) fn recheck(&self) {
        self.freed.notify_waiters();
    }

    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }
}

/// The configuration the data path reads.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) url_opts: UrlOptions,
    pub(crate) head_limits: HeadLimits,
    pub(crate) timers: ConnTimers,
    /// `MaxConnections`.
    pub(crate) max_connections: u64,
    /// The httperr files, written out when the last connection using them lets go.
    pub(crate) errlog: Arc<errlog::Log>,
}

impl Settings {
    fn new(config: &Config, errlog: Arc<errlog::Log>) -> Settings {
        let l = config.limits;
        let mut head_limits = HeadLimits::default();
        head_limits
            .max_request_bytes(l.max_request_bytes)
            .max_field_length(l.max_field_length);
        let mut url_opts = UrlOptions::default();
        url_opts
            .segment_max_length(l.url_segment_max_length)
            .segment_max_count(l.url_segment_max_count)
            .max_url_length(head_limits.field_length());
        let t = config.timers;
        Settings {
            url_opts,
            head_limits,
            timers: ConnTimers {
                header_wait: Timers::duration(t.header_wait),
                idle_connection: Timers::duration(t.idle_connection),
                entity_body: Timers::duration(t.entity_body),
                drain_entity_body: Timers::duration(t.drain_entity_body),
                min_send_rate: t.min_send_rate,
            },
            max_connections: l.max_connections,
            errlog,
        }
    }
}

/// The service's timers, as a connection reads them; a duration of 65535 s or more never
/// fires.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnTimers {
    pub(crate) header_wait: Duration,
    pub(crate) idle_connection: Duration,
    pub(crate) entity_body: Duration,
    pub(crate) drain_entity_body: Duration,
    /// Bytes per second; `u32::MAX` turns the check off.
    pub(crate) min_send_rate: u32,
}

/// What a registration delivers to.
#[derive(Debug)]
pub(crate) struct Binding {
    pub(crate) queue: Arc<Queue>,
    /// The prefix as registered, for `portshare-url-prefix`.
    pub(crate) prefix: String,
    pub(crate) context: u64,
}

/// A control connection: the owner of what it creates.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) peer: Peer,
}

/// Upstream connections of a queue that sets none: enough that a few hundred concurrent
/// clients do not wait in the queue for a connection the upstream could have served.
const DEFAULT_UPSTREAM_CONNECTIONS: u32 = 256;

/// The session that holds the configuration file's queues.
const CONFIG_SESSION: u64 = 0;

#[derive(Debug)]
struct QueueEntry {
    queue: Arc<Queue>,
    /// Sessions holding the queue open, and who each is.
    handles: HashMap<u64, Identity>,
    /// Its URLs (equal by HTTP.sys's rules, whatever the spelling), each with the session
    /// that added it; `None` once the queue lingers.
    urls: HashMap<UrlPrefix, Option<u64>>,
    /// Set while the queue outlives its last handle; the number tells lingerings apart.
    lingering: Option<u64>,
    /// Declared by the configuration file: the daemon holds the name.
    config: bool,
    /// Accounts granted rights besides the owner.
    access: Access,
    /// For an unnamed queue, the process that created it: no other may use it.
    creator: Option<u32>,
}

impl QueueEntry {
    /// What the process `pid`, of identity `id`, may do with the queue: everything for the
    /// owner (for an unnamed queue, only the process that created it), what the access
    /// list grants for anyone else. Being an administrator grants nothing here.
    fn rights(&self, pid: u32, id: &Identity) -> Rights {
        let owner = id.uid == self.queue.owner_uid();
        match self.creator {
            Some(creator) if owner && pid == creator => Rights::ALL,
            Some(_) => Rights::default(),
            None if owner => Rights::ALL,
            None => self.access.rights(id),
        }
    }

    fn rights_of(&self, session: &Session) -> Rights {
        self.rights(session.peer.pid, &session.peer.identity)
    }

    /// Who holds the queue, for messages: its owner's name and uid, or the configuration.
    fn holder(&self) -> String {
        if self.config {
            return "the daemon (the configuration file declares it)".into();
        }
        let uid = self.queue.owner_uid();
        format!("{} (uid {uid})", identity::display_user(uid))
    }

    /// ERROR_ACCESS_DENIED for queue `name`, naming its owner.
    fn denied(&self, name: &str, what: &str) -> ApiError {
        api(
            Win32Error::AccessDenied,
            format!(
                "queue {:?} belongs to {}; {what}",
                portshare_proto::text::printable(name),
                self.holder()
            ),
        )
    }
}

/// Checks a queue name the API or the configuration file gives: 1 to 260 characters, none
/// of them control or format characters (which could rewrite an administrator's terminal),
/// and not in the `~` namespace of unnamed queues (the API's names only).
pub(crate) fn check_queue_name(name: &str, config: bool) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 260 {
        return Err("a queue name has 1 to 260 characters".into());
    }
    if name.chars().any(portshare_proto::text::is_hidden) {
        return Err(format!(
            "queue name {:?} holds control or format characters",
            portshare_proto::text::printable(name)
        ));
    }
    if !config && name.starts_with('~') {
        return Err(format!(
            "queue name {name:?}: names starting with `~` are the daemon's, for unnamed queues"
        ));
    }
    Ok(())
}

/// A name for an unnamed queue: `~` and 128 random bits, so nobody can take it first or
/// guess it.
fn unnamed_queue_name() -> Result<String, ApiError> {
    let mut bits = [0u8; 16];
    getrandom::fill(&mut bits).map_err(|e| {
        api(
            Win32Error::NotSupported,
            format!("no randomness for an unnamed queue's name: {e}"),
        )
    })?;
    let mut name = String::with_capacity(33);
    name.push('~');
    for b in bits {
        use std::fmt::Write as _;
        let _ = write!(name, "{b:02x}");
    }
    Ok(name)
}

#[derive(Debug)]
struct Listener {
    task: Option<JoinHandle<()>>,
    connections: Arc<AtomicU64>,
}

impl Listener {
    /// Stops accepting; the socket is closed once the returned task has ended.
    fn close(mut self) -> Option<JoinHandle<()>> {
        let task = self.task.take();
        if let Some(t) = &task {
            t.abort();
        }
        task
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

#[derive(Debug)]
struct State {
    table: RouteTable<Arc<Binding>>,
    queues: HashMap<String, QueueEntry>,
    listeners: HashMap<SocketAddr, Listener>,
    acl: UrlAcl,
    /// Where each reservation comes from.
    acl_sources: HashMap<UrlPrefix, Source>,
    /// The configuration in force.
    config: Config,
    /// What the CLI changed.
    saved: StateFile,
    /// The listen list in force.
    iplisten: Vec<IpAddr>,
    /// Addresses that should listen and cannot.
    bind_failures: BTreeMap<SocketAddr, ApiError>,
    request_queue_timer: Duration,
}

/// The daemon.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub(crate) shared: Arc<Shared>,
    state: Mutex<State>,
    /// The uid and gid the daemon runs as: like root, its user holds the implicit root
    /// reservations.
    own_uid: u32,
    own_gid: u32,
    /// The configuration file, read again on reload.
    config_path: Option<PathBuf>,
    /// `--iplisten` addresses, which replace the listen list for as long as the daemon runs.
    iplisten_flags: Vec<IpAddr>,
    state_file: PathBuf,
    ids: AtomicU64,
    /// Open control connections, against the budget's control share and the per-uid caps.
    pub(crate) quota: Arc<Quota>,
}

fn api(err: Win32Error, message: impl Into<String>) -> ApiError {
    ApiError::new(err, message)
}

impl Daemon {
    /// A daemon with no listeners yet; [`Daemon::load`] applies the configuration.
    pub(crate) fn new(start: Start) -> Arc<Daemon> {
        let config = start.config;
        let errlog = Arc::new(errlog::Log::open(&config.errlog));
        let shared = Shared::new(Settings::new(&config, errlog), start.budget);
        Arc::new(Daemon {
            shared,
            state: Mutex::new(State {
                table: RouteTable::new(),
                queues: HashMap::new(),
                listeners: HashMap::new(),
                acl: UrlAcl::new(),
                acl_sources: HashMap::new(),
                request_queue_timer: Timers::duration(config.timers.request_queue),
                config,
                saved: StateFile::default(),
                iplisten: Vec::new(),
                bind_failures: BTreeMap::new(),
            }),
            own_uid: start.own_uid,
            own_gid: start.own_gid,
            config_path: start.config_path,
            iplisten_flags: start.iplisten_flags,
            state_file: start.state_file,
            ids: AtomicU64::new(1),
            quota: Quota::new(&start.budget),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Root, the daemon's own user, and members of the admin group hold the implicit root
    /// reservations.
    fn is_admin(&self, st: &State, peer: &Peer) -> bool {
        self.is_admin_identity(st, &peer.identity)
    }

    fn is_admin_identity(&self, st: &State, who: &identity::Identity) -> bool {
        who.uid == 0
            || who.uid == self.own_uid
            || st
                .config
                .admin_group
                .as_deref()
                .and_then(identity::resolve_group)
                .is_some_and(|gid| who.in_group(gid))
    }

    /// `POST /v1/queues`. `declared` is the access list of a queue the configuration file
    /// declares (the configuration's session creates those); `None` for the API's.
    ///
    /// As HTTP.sys checks opening a named queue against its creator's security descriptor
    /// (spec §6.5), an existing queue opens only for its owner and the accounts its access
    /// list names; administrators are not let in unasked.
    pub(crate) fn open_queue(
        self: &Arc<Self>,
        session: &Session,
        spec: &QueueSpec,
        connections: Option<u32>,
        declared: Option<Access>,
    ) -> Result<QueueInfo, ApiError> {
        let config = declared.is_some();
        let name = match &spec.name {
            Some(n) => {
                check_queue_name(n, config).map_err(|e| api(Win32Error::InvalidParameter, e))?;
                n.clone()
            }
            None => unnamed_queue_name()?,
        };
        let mut st = self.lock();
        self.may_hold_queues(&st, session)?;
        if let Some(entry) = st.queues.get_mut(&name) {
            if spec.mode == OpenMode::Create {
                return Err(api(
                    Win32Error::AlreadyExists,
                    format!("a queue named {name:?} exists; open it instead of creating it"),
                ));
            }
            if !entry.rights_of(session).any() {
                return Err(entry.denied(
                    &name,
                    "only its owner and the accounts it granted access may open it",
                ));
            }
            if spec.upstream.is_some() {
                return Err(api(
                    Win32Error::InvalidParameter,
                    "upstream is set when a queue is created, not when it is opened",
                ));
            }
            let q = entry.queue.clone();
            let props = if spec.props == QueueProps::default() {
                q.props()
            } else if session.peer.uid == q.owner_uid() {
                q.set_props(&spec.props)
                    .map_err(|e| api(Win32Error::InvalidParameter, e))?
            } else {
                return Err(entry.denied(&name, "only its owner sets its properties"));
            };
            entry
                .handles
                .insert(session.id, session.peer.identity.clone());
            if entry.lingering.take().is_some() {
                // The new holder adopts what the queue kept while it lingered.
                for owner in entry.urls.values_mut() {
                    owner.get_or_insert(session.id);
                }
                tracing::info!(queue = %name, pid = session.peer.pid, "lingering queue reopened");
            }
            return Ok(info(entry, props, false));
        }
        if spec.mode == OpenMode::Open {
            return Err(api(
                Win32Error::FileNotFound,
                format!("no queue named {name:?}"),
            ));
        }
        if !config && st.config.queues.iter().any(|q| q.name == name) {
            return Err(api(
                Win32Error::AlreadyExists,
                format!(
                    "the configuration file declares queue {name:?}: the name belongs to the \
                     daemon"
                ),
            ));
        }
        let upstream = match &spec.upstream {
            None => None,
            Some(_) if session.peer.uid != 0 && !config => {
                return Err(api(
                    Win32Error::AccessDenied,
                    "only root (or the configuration file) may create an upstream queue: \
                     the daemon connects nowhere on an ordinary user's word",
                ));
            }
            Some(a) => Some(Arc::new(Upstream::new(
                Address::parse(a).map_err(|e| api(Win32Error::InvalidParameter, e))?,
            ))),
        };
        let mut props = Props::new(st.request_queue_timer);
        props
            .apply(&spec.props)
            .map_err(|e| api(Win32Error::InvalidParameter, e))?;
        self.may_own_queue(&st, session)?;
        let queue = Queue::new(name.clone(), session.peer.uid, props, upstream.clone());
        if let Some(up) = upstream {
            let slots = connections.unwrap_or(DEFAULT_UPSTREAM_CONNECTIONS);
            queue.attach(self.next_id(), Target::Upstream(up), slots);
        }
        let entry = QueueEntry {
            queue,
            handles: HashMap::from([(session.id, session.peer.identity.clone())]),
            urls: HashMap::new(),
            lingering: None,
            config,
            access: declared.unwrap_or_default(),
            creator: spec.name.is_none().then_some(session.peer.pid),
        };
        let created = info(&entry, props, true);
        st.queues.insert(name, entry);
        Ok(created)
    }

    /// The queue named `name`, or ERROR_INVALID_HANDLE.
    fn entry<'s>(st: &'s mut State, name: &str) -> Result<&'s mut QueueEntry, ApiError> {
        st.queues.get_mut(name).ok_or_else(|| {
            api(
                Win32Error::InvalidHandle,
                format!(
                    "no queue named {:?}",
                    portshare_proto::text::printable(name)
                ),
            )
        })
    }

    /// `PATCH /v1/queues/{name}`: its owner and administrators.
    pub(crate) fn set_props(
        &self,
        session: &Session,
        name: &str,
        p: &QueueProps,
    ) -> Result<QueueInfo, ApiError> {
        let mut st = self.lock();
        let admin = self.is_admin(&st, &session.peer);
        let entry = Daemon::entry(&mut st, name)?;
        let owner = session.peer.uid == entry.queue.owner_uid() && entry.rights_of(session).any();
        if !admin && !owner {
            return Err(entry.denied(
                name,
                "only its owner, root or a member of the admin group may change it",
            ));
        }
        let props = entry
            .queue
            .set_props(p)
            .map_err(|e| api(Win32Error::InvalidParameter, e))?;
        Ok(info(entry, props, false))
    }

    /// `POST /v1/queues/{name}/access`: its owner and administrators set who else may use
    /// it. Workers of accounts left without `attach` are detached, URLs added by
    /// connections of accounts left without `register` removed, and connections left with
    /// no right let go of the queue.
    pub(crate) fn set_access(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
        grant: &GrantAccess,
    ) -> Result<QueueInfo, ApiError> {
        let mut st = self.lock();
        let st = &mut *st;
        let admin = self.is_admin(st, &session.peer);
        let entry = Daemon::entry(st, name)?;
        if entry.config {
            return Err(entry.denied(
                name,
                "its access list is in the configuration file: change it there and reload",
            ));
        }
        if entry.creator.is_some() {
            return Err(api(
                Win32Error::InvalidParameter,
                "an unnamed queue is its creating process's alone: it has no access list",
            ));
        }
        if !admin && session.peer.uid != entry.queue.owner_uid() {
            return Err(entry.denied(
                name,
                "only its owner, root or a member of the admin group may grant access to it",
            ));
        }
        entry
            .access
            .set(&grant.entries)
            .map_err(|e| api(Win32Error::InvalidParameter, e))?;
        tracing::info!(
            queue = name,
            pid = session.peer.pid,
            user = %session.peer.user,
            "queue access changed"
        );
        self.enforce_access(st, name);
        self.publish(st);
        let entry = Daemon::entry(st, name)?;
        Ok(info(entry, entry.queue.props(), false))
    }

    /// Takes from queue `name` what its access list no longer grants: the workers of
    /// accounts without `attach`, the URLs added by connections of accounts without
    /// `register`, and the handles of connections with no right left.
    fn enforce_access(self: &Arc<Self>, st: &mut State, name: &str) {
        let Some(entry) = st.queues.get_mut(name) else {
            return;
        };
        // A handle's process id is not kept: the rule for pids is only the unnamed queue's,
        // and an unnamed queue has no access list to change.
        let pid = 0;
        let idle: Vec<u64> = entry
            .handles
            .iter()
            .filter(|(_, id)| !entry.rights(pid, id).any())
            .map(|(s, _)| *s)
            .collect();
        let unregistered: Vec<UrlPrefix> = entry
            .urls
            .iter()
            .filter(|(_, added_by)| {
                added_by
                    .and_then(|s| entry.handles.get(&s))
                    .is_some_and(|id| !entry.rights(pid, id).register)
            })
            .map(|(p, _)| p.clone())
            .collect();
        let detached: Vec<Arc<crate::worker::WorkerConn>> = entry
            .queue
            .seats()
            .into_iter()
            .filter_map(|(target, _, _)| match target {
                Target::Worker(w) if !entry.rights(w.peer.pid, &w.peer.identity).attach => Some(w),
                _ => None,
            })
            .collect();
        for p in &unregistered {
            entry.urls.remove(p);
        }
        for p in &unregistered {
            tracing::info!(
                queue = name,
                "{p} removed: its account may no longer register"
            );
            self.unregister(st, p);
        }
        for session in idle {
            self.let_go(st, session, name);
        }
        for w in detached {
            tracing::info!(
                queue = name,
                pid = w.peer.pid,
                user = %w.peer.user,
                "worker {} detached: its account may no longer attach",
                w.id
            );
            w.shutdown();
        }
    }

    /// The queue a worker may attach to: its owner's and those granted `attach`.
    pub(crate) fn attachable(&self, session: &Session, name: &str) -> Result<Arc<Queue>, ApiError> {
        let mut st = self.lock();
        let entry = Daemon::entry(&mut st, name)?;
        if !entry.rights_of(session).attach {
            return Err(entry.denied(
                name,
                "only its owner and the accounts it granted `attach` may attach workers",
            ));
        }
        if entry.queue.upstream().is_some() {
            return Err(api(
                Win32Error::InvalidParameter,
                format!("queue {name:?} forwards to an upstream; workers cannot attach to it"),
            ));
        }
        Ok(entry.queue.clone())
    }

    /// `POST /v1/queues/{name}/urls`.
    pub(crate) fn add_url(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
        add: &AddUrl,
    ) -> Result<UrlAdded, ApiError> {
        let prefix = UrlPrefix::parse(&add.url).map_err(|e| {
            api(
                e.win32(),
                format!("{:?} is not a valid URL prefix: {e}", add.url),
            )
        })?;
        let mut st = self.lock();
        let st = &mut *st;
        let entry = Daemon::entry(st, name)?;
        if !entry.rights_of(session).register {
            return Err(entry.denied(
                name,
                "only its owner and the accounts it granted `register` may add URLs to it",
            ));
        }
        if session.peer.uid != entry.queue.owner_uid() && !entry.handles.contains_key(&session.id) {
            return Err(api(
                Win32Error::InvalidHandle,
                format!("open queue {name:?} on this connection before adding URLs to it"),
            ));
        }
        let queue = entry.queue.clone();
        if let Some(owner) = entry.urls.get_mut(&prefix) {
            // Re-adding what a lingering queue kept for its next holder.
            if owner.is_none_or(|o| o == session.id) {
                *owner = Some(session.id);
                let listening = self.listening_for(st, &prefix);
                let warnings = Daemon::warnings(st, &prefix, &listening);
                return Ok(UrlAdded {
                    url: prefix.to_string(),
                    listening,
                    warnings,
                });
            }
        }
        let caller = session
            .peer
            .identity
            .caller(self.is_admin(st, &session.peer));
        // HTTP.sys's order (spec §1.3): the scheme and duplicate checks before the ACL, so
        // a duplicate is 183 whoever asks.
        st.table
            .check_add(&prefix)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        st.acl
            .check_register(&prefix, &caller)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        // After the checks HTTP.sys makes, so a refused https prefix is refused for the same
        // reason as on Windows.
        if prefix.scheme() == Scheme::Https {
            return Err(api(
                Win32Error::NotSupported,
                "https prefixes need TLS, which this daemon does not serve yet",
            ));
        }
        if let Host::Ip(ip) = prefix.host() {
            bind::check_local(*ip).map_err(|e| bind_error(&e))?;
        }
        let needs_bind = !st.table.listens(prefix.scheme(), prefix.port());
        if needs_bind {
            self.bind_port(st, prefix.port())?;
        }
        let binding = Arc::new(Binding {
            queue,
            prefix: add.url.clone(),
            context: add.context,
        });
        if let Err(e) = st.table.add(prefix.clone(), binding) {
            if needs_bind {
                Daemon::release_port(st, prefix.port());
            }
            return Err(api(e.win32(), e.to_string()));
        }
        if let Some(entry) = st.queues.get_mut(name) {
            entry.urls.insert(prefix.clone(), Some(session.id));
        }
        self.publish(st);
        let listening = self.listening_for(st, &prefix);
        let warnings = Daemon::warnings(st, &prefix, &listening);
        for w in &warnings {
            tracing::warn!(queue = name, "{w}");
        }
        tracing::info!(queue = name, pid = session.peer.pid, "registered {prefix}");
        Ok(UrlAdded {
            url: prefix.to_string(),
            listening,
            warnings,
        })
    }

    /// `DELETE /v1/queues/{name}/urls`.
    pub(crate) fn remove_url(
        &self,
        session: &Session,
        name: &str,
        url: &str,
    ) -> Result<(), ApiError> {
        let prefix = UrlPrefix::parse(url).map_err(|e| api(e.win32(), e.to_string()))?;
        let mut st = self.lock();
        let st = &mut *st;
        let admin = self.is_admin(st, &session.peer);
        let entry = Daemon::entry(st, name)?;
        let owner = session.peer.uid == entry.queue.owner_uid() && entry.rights_of(session).any();
        if !admin && !owner && !entry.rights_of(session).register {
            return Err(entry.denied(name, "only its owner and its registrants may remove URLs"));
        }
        let Some(added_by) = entry.urls.get(&prefix) else {
            return Err(api(
                Win32Error::FileNotFound,
                format!("{prefix} is not registered on queue {name:?}"),
            ));
        };
        if added_by.is_some_and(|o| o != session.id) && !admin && !owner {
            return Err(api(
                Win32Error::AccessDenied,
                "only the connection that added a URL, the queue's owner, root or a member of \
                 the admin group may remove it",
            ));
        }
        entry.urls.remove(&prefix);
        self.unregister(st, &prefix);
        self.publish(st);
        Ok(())
    }

    /// `DELETE /v1/queues/{name}`: the session lets go of the queue; an administrator who
    /// does not hold it deletes it, with its URLs, workers and waiting requests.
    pub(crate) fn close_queue(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
    ) -> Result<(), ApiError> {
        let mut st = self.lock();
        let admin = self.is_admin(&st, &session.peer);
        match st.queues.get(name) {
            Some(e) if e.handles.contains_key(&session.id) => {
                self.let_go(&mut st, session.id, name);
            }
            Some(e) if admin && e.config => {
                return Err(e.denied(
                    name,
                    "remove it from the configuration file and reload to delete it",
                ));
            }
            Some(e) if admin => {
                tracing::info!(
                    queue = name,
                    owner = %e.holder(),
                    pid = session.peer.pid,
                    user = %session.peer.user,
                    "queue deleted by an administrator"
                );
                self.destroy(&mut st, name);
            }
            _ => {
                return Err(api(
                    Win32Error::InvalidHandle,
                    format!("this connection does not hold a queue named {name:?}"),
                ));
            }
        }
        self.publish(&mut st);
        Ok(())
    }

    /// A control connection closed: everything it created goes, as handles close on Windows.
    pub(crate) fn end_session(self: &Arc<Self>, session: &Session) {
        let mut st = self.lock();
        let names: Vec<String> = st
            .queues
            .iter()
            .filter(|(_, e)| e.handles.contains_key(&session.id))
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        for name in names {
            self.let_go(&mut st, session.id, &name);
        }
        self.publish(&mut st);
    }

    fn let_go(self: &Arc<Self>, st: &mut State, session: u64, name: &str) {
        let Some(entry) = st.queues.get_mut(name) else {
            return;
        };
        entry.handles.remove(&session);
        let last = entry.handles.is_empty();
        let linger = entry.queue.props().linger;
        if last && !linger.is_zero() && entry.creator.is_none() {
            // Keep the queue, its URLs and its waiting requests for the next holder.
            let generation = self.next_id();
            entry.lingering = Some(generation);
            for owner in entry.urls.values_mut() {
                *owner = None;
            }
            tracing::info!(queue = name, "queue lingers for {linger:?}");
            let daemon = self.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                let mut st = daemon.lock();
                if st
                    .queues
                    .get(&name)
                    .is_some_and(|e| e.lingering == Some(generation))
                {
                    tracing::info!(queue = %name, "linger time over; queue closed");
                    daemon.destroy(&mut st, &name);
                    daemon.publish(&mut st);
                }
            });
            return;
        }
        // The session's URLs go with it.
        let mine: Vec<UrlPrefix> = entry
            .urls
            .iter()
            .filter(|(_, owner)| **owner == Some(session) || last)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &mine {
            entry.urls.remove(p);
        }
        for p in &mine {
            self.unregister(st, p);
        }
        if last {
            self.destroy(st, name);
        }
    }

    fn destroy(&self, st: &mut State, name: &str) {
        let Some(entry) = st.queues.remove(name) else {
            return;
        };
        for p in entry.urls.keys() {
            self.unregister(st, p);
        }
        entry.queue.close();
    }

    fn unregister(&self, st: &mut State, prefix: &UrlPrefix) {
        if st.table.remove(prefix).is_ok() && !st.table.listens(prefix.scheme(), prefix.port()) {
            Daemon::release_port(st, prefix.port());
        }
    }

    fn publish(&self, st: &mut State) {
        self.shared.table.store(Arc::new(st.table.clone()));
    }

    /// The addresses to bind for a port: the listen list, else both wildcards.
    fn addresses(iplisten: &[IpAddr], port: u16) -> Vec<SocketAddr> {
        if iplisten.is_empty() {
            vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ]
        } else {
            iplisten
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        }
    }

    /// Binds every address of a port, or none: a half-done bind is rolled back.
    fn bind_port(&self, st: &mut State, port: u16) -> Result<(), ApiError> {
        if self.shared.stopping() {
            return Ok(()); // nothing new listens while the daemon stops
        }
        let addresses = Daemon::addresses(&st.iplisten, port);
        self.may_listen(st, addresses.len())?;
        let mut bound = Vec::new();
        for addr in addresses {
            match bind::listen(addr, 1024) {
                Ok(l) => bound.push((addr, l)),
                Err(BindError::NoIpv6 { .. }) if st.iplisten.is_empty() => {
                    tracing::warn!(
                        "{addr}: this host has no IPv6; serving port {port} on IPv4 only"
                    );
                }
                Err(e) => {
                    drop(bound);
                    tracing::warn!("cannot listen on {addr}: {e}");
                    // Kept for the state view until the address binds or the port is let go.
                    st.bind_failures.insert(addr, bind_error(&e));
                    return Err(bind_error(&e));
                }
            }
        }
        for (addr, l) in bound {
            self.start_listener(st, addr, l);
        }
        Ok(())
    }

    fn start_listener(&self, st: &mut State, addr: SocketAddr, l: tokio::net::TcpListener) {
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            self.shared.clone(),
            l,
            addr,
            connections.clone(),
        ));
        tracing::info!("listening on {addr}");
        st.bind_failures.remove(&addr);
        st.listeners.insert(
            addr,
            Listener {
                task: Some(task),
                connections,
            },
        );
    }

    fn release_port(st: &mut State, port: u16) {
        st.bind_failures.retain(|addr, _| addr.port() != port);
        st.listeners.retain(|addr, _| {
            let keep = addr.port() != port;
            if !keep {
                tracing::info!("closed {addr}: nothing is registered on port {port}");
            }
            keep
        });
    }

    fn listening_for(&self, st: &State, prefix: &UrlPrefix) -> Vec<String> {
        let mut out: Vec<String> = st
            .listeners
            .keys()
            .filter(|a| a.port() == prefix.port())
            .filter(|a| match prefix.host() {
                Host::Ip(ip) => serves(a.ip(), *ip),
                _ => true,
            })
            .map(|a| a.to_string())
            .collect();
        out.sort();
        out
    }

    fn warnings(st: &State, prefix: &UrlPrefix, listening: &[String]) -> Vec<String> {
        if listening.is_empty() {
            let list: Vec<String> = st.iplisten.iter().map(|i| i.to_string()).collect();
            vec![format!(
                "nothing listens for {prefix}: its address is not in the IP listen list ({}); \
                 the registration stands, but clients cannot reach it",
                list.join(", ")
            )]
        } else {
            Vec::new()
        }
    }

    /// Begins a graceful stop: the listeners close, connections close as soon as they hold
    /// no request, and workers are told (a drain frame). Requests in progress and waiting
    /// in queues go on. Returns how long they may take.
    pub(crate) fn begin_stop(&self) -> Duration {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
        let mut st = self.lock();
        st.listeners.clear();
        for entry in st.queues.values() {
            for (target, _, _) in entry.queue.seats() {
                if let Target::Worker(w) = target {
                    w.send(portshare_proto::wire::encode_drain);
                }
            }
        }
        Timers::duration(st.config.timers.shutdown)
    }

    /// Client connections open now.
    pub(crate) fn open_connections(&self) -> u64 {
        self.shared.connections.open()
    }

    /// Closes every queue and listener, for a daemon that stops.
    pub(crate) fn close_all(&self) {
        let mut st = self.lock();
        let names: Vec<String> = st.queues.keys().cloned().collect();
        for name in names {
            self.destroy(&mut st, &name);
        }
        st.listeners.clear();
        self.publish(&mut st);
    }

    /// `GET /v1/state`, as `viewer` may see it: the processes attached to a queue (their
    /// pids, users and command lines) only for administrators, the queue's owner and the
    /// accounts on its access list.
    pub(crate) fn state(&self, viewer: &Session) -> ServiceState {
        let st = self.lock();
        let admin = self.is_admin(&st, &viewer.peer);
        let mut listeners: Vec<ListenerState> = st
            .listeners
            .iter()
            .map(|(a, l)| ListenerState {
                address: a.to_string(),
                connections: l.connections.load(Ordering::Relaxed),
            })
            .collect();
        listeners.sort_by(|a, b| a.address.cmp(&b.address));
        let mut prefixes: Vec<PrefixState> = st
            .table
            .iter()
            .map(|r| {
                let listening = self.listening_for(&st, r.prefix());
                PrefixState {
                    url: r.prefix().to_string(),
                    queue: r.value().queue.name().to_owned(),
                    context: r.value().context,
                    warning: Daemon::warnings(&st, r.prefix(), &listening).pop(),
                    listening,
                }
            })
            .collect();
        prefixes.sort_by(|a, b| a.url.cmp(&b.url));
        let mut queues: Vec<QueueState> = st
            .queues
            .iter()
            .map(|(name, e)| {
                let q = &e.queue;
                let props = q.props();
                let (depth, in_flight, oldest) = q.depth();
                let shown = admin || e.rights_of(viewer).any();
                let mut processes: Vec<ProcessState> = Vec::new();
                for (target, slots, busy) in q.seats().into_iter().filter(|_| shown) {
                    let Target::Worker(w) = target else { continue };
                    match processes.iter_mut().find(|p| p.pid == w.peer.pid) {
                        Some(p) => {
                            p.slots += slots;
                            p.busy += busy;
                        }
                        None => processes.push(ProcessState {
                            pid: w.peer.pid,
                            uid: w.peer.uid,
                            user: portshare_proto::text::printable(&w.peer.user).into_owned(),
                            command: portshare_proto::text::printable(&w.peer.command).into_owned(),
                            slots,
                            busy,
                        }),
                    }
                }
                let mut urls: Vec<String> = e.urls.keys().map(ToString::to_string).collect();
                urls.sort();
                QueueState {
                    name: name.clone(),
                    owner_uid: q.owner_uid(),
                    owner_user: identity::display_user(q.owner_uid()),
                    length: props.length,
                    verbosity: props.verbosity,
                    enabled: props.enabled,
                    linger_ms: props.linger.as_millis() as u64,
                    queue_timer_ms: props.timer.as_millis() as u64,
                    limits: limits(&props),
                    connections: q.connections(),
                    lingering: e.lingering.is_some(),
                    config: e.config,
                    access: e.access.entries(),
                    upstream: q.upstream().map(|u| u.address.to_string()),
                    depth,
                    oldest_wait_ms: oldest.map_or(0, |d| d.as_millis() as u64),
                    in_flight,
                    urls,
                    processes_hidden: !shown,
                    processes,
                    counters: q.counters(),
                }
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let mut reservations: Vec<String> = st.acl.iter().map(|r| r.prefix().to_string()).collect();
        reservations.sort();
        ServiceState {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            iplisten: st.iplisten.iter().map(|i| i.to_string()).collect(),
            listeners,
            bind_failures: st
                .bind_failures
                .iter()
                .map(|(a, e)| BindFailure {
                    address: a.to_string(),
                    error: e.clone(),
                })
                .collect(),
            prefixes,
            reservations,
            queues,
            budget: Some(self.budget_state(&st)),
        }
    }
}

/// Whether a socket bound to `bound` receives connections for `ip`.
fn serves(bound: IpAddr, ip: IpAddr) -> bool {
    bound == ip || (bound.is_unspecified() && bound.is_ipv4() == ip.to_canonical().is_ipv4())
}

fn limits(props: &Props) -> QueueLimits {
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
    QueueLimits {
        entity_body_ms: ms(props.timers.entity_body),
        drain_entity_body_ms: ms(props.timers.drain_entity_body),
        min_send_rate: props.timers.min_send_rate.unwrap_or(0),
        max_connections: props.max_connections,
    }
}

fn info(entry: &QueueEntry, props: Props, created: bool) -> QueueInfo {
    let q = &entry.queue;
    let mut urls: Vec<String> = entry.urls.keys().map(ToString::to_string).collect();
    urls.sort();
    QueueInfo {
        name: q.name().to_owned(),
        created,
        length: props.length,
        verbosity: props.verbosity,
        enabled: props.enabled,
        linger_ms: props.linger.as_millis() as u64,
        queue_timer_ms: props.timer.as_millis() as u64,
        limits: limits(&props),
        upstream: q.upstream().map(|u| u.address.to_string()),
        urls,
        access: entry.access.entries(),
    }
}

fn bind_error(e: &BindError) -> ApiError {
    ApiError::new(e.win32(), e.to_string())
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    connections: Arc<AtomicU64>,
) {
    let warn = Throttle::default();
    loop {
        // At MaxConnections, wait for a connection to close before accepting the next:
        // clients wait in the listen backlog.
        let place = shared.place().await;
        match listener.accept().await {
            Ok((io, peer)) => {
                let shared = shared.clone();
                let connections = connections.clone();
                // The socket's own address: with a wildcard listener, the address the
                // client reached.
                let local = io.local_addr().unwrap_or(local);
                connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    crate::conn::serve(shared, io, peer, local).await;
                    connections.fetch_sub(1, Ordering::Relaxed);
                    drop(place);
                });
            }
            Err(error) => {
                drop(place);
                let failure = Failure::of(&error);
                if failure == Failure::Peer {
                    tracing::debug!(%local, %error, "accept: the connection failed");
                    continue;
                }
                let shed = if failure == Failure::Descriptors {
                    shed_clients(&shared, &listener, local).await
                } else {
                    0
                };
                if let Some(held_back) = warn.pass() {
                    tracing::warn!(
                        %local,
                        %error,
                        shed,
                        held_back,
                        "cannot accept client connections; pausing"
                    );
                }
                tokio::time::sleep(accept::PAUSE).await;
            }
        }
    }
}

/// Out of descriptors: closes connections waiting on `listener`, through the spare
/// descriptor, each with a `Connections_Refused` line. Returns how many.
async fn shed_clients(
    shared: &Shared,
    listener: &tokio::net::TcpListener,
    local: SocketAddr,
) -> usize {
    let mut shed = 0;
    while shed < accept::SHED_BURST {
        let peer = shared.spare.shed(async {
            let (io, peer) = listener.accept().await?;
            let local = io.local_addr().unwrap_or(local);
            Ok((peer, local))
        });
        let Some(Ok((peer, local))) = peer else {
            break;
        };
        errlog::Entry {
            client: peer,
            local,
            version: None,
            method: None,
            uri: None,
            status: None,
            reason: portshare_router::Reason::ConnectionsRefused,
            queue: None,
        }
        .emit(&shared.settings.load().errlog);
        shed += 1;
    }
    shed
}

/// What connections share, for tests of the data path: no routes, default settings, no
/// error-log files.
#[cfg(test)]
pub(crate) fn test_shared() -> Arc<Shared> {
    let errlog = Arc::new(errlog::Log::open(&crate::config::ErrLogConfig {
        enabled: false,
        ..Default::default()
    }));
    let budget = Budget::of(1024).expect("1024 descriptors are enough");
    Shared::new(Settings::new(&Config::default(), errlog), budget)
}
