//! The daemon's state: queues, registrations, listeners and the sessions that own them.
//!
//! Everything that changes goes through one lock, [`Daemon::state`]; the data path never
//! takes it. Connections read the route table from an [`ArcSwap`] snapshot that each change
//! replaces, so lookups never wait for registrations or for each other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use portshare_proto::control::{
    AddUrl, ApiError, BindFailure, ListenerState, OpenMode, PrefixState, ProcessState, QueueInfo,
    QueueLimits, QueueProps, QueueSpec, QueueState, ServiceState, Source, UrlAdded,
};
use portshare_router::{Host, RouteTable, Scheme, UrlAcl, UrlOptions, UrlPrefix, Win32Error};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::bind::{self, BindError};
use crate::config::{Config, StateFile, Timers};
use crate::errlog;
use crate::flow::Budget;
use crate::head::HeadLimits;
use crate::identity;
use crate::queue::{Props, Queue, Target};
use crate::upstream::{Address, Upstream};
use crate::worker::Peer;

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
    /// What the daemon holds of workers' responses, over all worker connections.
    pub(crate) buffers: Arc<Budget>,
}

impl Shared {
    /// No routes yet, `settings` in force.
    fn new(settings: Settings) -> Arc<Shared> {
        Arc::new(Shared {
            table: ArcSwap::from_pointee(RouteTable::new()),
            settings: ArcSwap::from_pointee(settings),
            request_ids: AtomicU64::new(1),
            connections: Connections::default(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            buffers: Arc::default(),
        })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A place for one more client connection, once fewer than `max_connections` are open.
    async fn place(self: &Arc<Shared>) -> Place {
        self.connections
            .reserve(|| self.settings.load().max_connections)
            .await;
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
    /// Sessions holding the queue open.
    handles: HashSet<u64>,
    /// Its URLs (equal by HTTP.sys's rules, whatever the spelling), each with the session
    /// that added it; `None` once the queue lingers.
    urls: HashMap<UrlPrefix, Option<u64>>,
    /// Set while the queue outlives its last handle; the number tells lingerings apart.
    lingering: Option<u64>,
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
}

fn api(err: Win32Error, message: impl Into<String>) -> ApiError {
    ApiError {
        code: err.code(),
        name: err.name().to_owned(),
        message: message.into(),
    }
}

impl Daemon {
    /// A daemon with no listeners yet; [`Daemon::load`] applies the configuration.
    pub(crate) fn new(start: Start) -> Arc<Daemon> {
        let config = start.config;
        let errlog = Arc::new(errlog::Log::open(&config.errlog));
        let shared = Shared::new(Settings::new(&config, errlog));
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
        peer.uid == 0
            || peer.uid == self.own_uid
            || st
                .config
                .admin_group
                .as_deref()
                .and_then(identity::resolve_group)
                .is_some_and(|gid| peer.identity.in_group(gid))
    }

    /// `POST /v1/queues`.
    pub(crate) fn open_queue(
        self: &Arc<Self>,
        session: &Session,
        spec: &QueueSpec,
        connections: Option<u32>,
        owner: Option<u32>,
    ) -> Result<QueueInfo, ApiError> {
        let name = match &spec.name {
            Some(n) if n.is_empty() || n.chars().count() > 260 => {
                return Err(api(
                    Win32Error::InvalidParameter,
                    "a queue name has 1 to 260 characters",
                ));
            }
            Some(n) => n.clone(),
            None => format!("~{}.{}", session.id, self.next_id()),
        };
        let mut st = self.lock();
        if let Some(entry) = st.queues.get_mut(&name) {
            if spec.mode == OpenMode::Create {
                return Err(api(
                    Win32Error::AlreadyExists,
                    format!("a queue named {name:?} exists; open it instead of creating it"),
                ));
            }
            let q = &entry.queue;
            if q.owner_uid() != session.peer.uid && session.peer.uid != 0 {
                return Err(api(
                    Win32Error::AccessDenied,
                    format!(
                        "queue {name:?} belongs to uid {}; only that user or root may open it",
                        q.owner_uid()
                    ),
                ));
            }
            if spec.upstream.is_some() {
                return Err(api(
                    Win32Error::InvalidParameter,
                    "upstream is set when a queue is created, not when it is opened",
                ));
            }
            let props = q
                .set_props(&spec.props)
                .map_err(|e| api(Win32Error::InvalidParameter, e))?;
            entry.handles.insert(session.id);
            if entry.lingering.take().is_some() {
                // The new holder adopts what the queue kept while it lingered.
                for owner in entry.urls.values_mut() {
                    owner.get_or_insert(session.id);
                }
                tracing::info!(queue = %name, pid = session.peer.pid, "lingering queue reopened");
            }
            let urls = entry.urls.keys().map(ToString::to_string).collect();
            return Ok(info(q, props, false, urls));
        }
        if spec.mode == OpenMode::Open {
            return Err(api(
                Win32Error::FileNotFound,
                format!("no queue named {name:?}"),
            ));
        }
        let upstream = match &spec.upstream {
            None => None,
            Some(_) if session.peer.uid != 0 && session.id != CONFIG_SESSION => {
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
        let owner = owner.unwrap_or(session.peer.uid);
        let queue = Queue::new(name.clone(), owner, props, upstream.clone());
        if let Some(up) = upstream {
            let slots = connections.unwrap_or(DEFAULT_UPSTREAM_CONNECTIONS);
            queue.attach(self.next_id(), Target::Upstream(up), slots);
        }
        st.queues.insert(
            name.clone(),
            QueueEntry {
                queue: queue.clone(),
                handles: HashSet::from([session.id]),
                urls: HashMap::new(),
                lingering: None,
            },
        );
        Ok(info(&queue, props, true, Vec::new()))
    }

    /// Finds a queue the session may change.
    fn owned<'s>(
        st: &'s mut State,
        session: &Session,
        name: &str,
    ) -> Result<&'s mut QueueEntry, ApiError> {
        let entry = st.queues.get_mut(name).ok_or_else(|| {
            api(
                Win32Error::InvalidHandle,
                format!("no queue named {name:?}"),
            )
        })?;
        let uid = session.peer.uid;
        if entry.queue.owner_uid() != uid && uid != 0 && session.id != CONFIG_SESSION {
            return Err(api(
                Win32Error::AccessDenied,
                format!(
                    "queue {name:?} belongs to uid {}; only that user or root may change it",
                    entry.queue.owner_uid()
                ),
            ));
        }
        Ok(entry)
    }

    /// `PATCH /v1/queues/{name}`.
    pub(crate) fn set_props(
        &self,
        session: &Session,
        name: &str,
        p: &QueueProps,
    ) -> Result<QueueInfo, ApiError> {
        let mut st = self.lock();
        let admin = self.is_admin(&st, &session.peer);
        let entry = st.queues.get_mut(name).ok_or_else(|| {
            api(
                Win32Error::InvalidHandle,
                format!("no queue named {name:?}"),
            )
        })?;
        if !admin && !entry.handles.contains(&session.id) {
            return Err(api(
                Win32Error::AccessDenied,
                format!(
                    "only a process that opened queue {name:?}, root or a member of the admin \
                     group may change it"
                ),
            ));
        }
        let props = entry
            .queue
            .set_props(p)
            .map_err(|e| api(Win32Error::InvalidParameter, e))?;
        let urls = entry.urls.keys().map(ToString::to_string).collect();
        Ok(info(&entry.queue, props, false, urls))
    }

    /// The queue a worker may attach to.
    pub(crate) fn attachable(&self, session: &Session, name: &str) -> Result<Arc<Queue>, ApiError> {
        let mut st = self.lock();
        let entry = Daemon::owned(&mut st, session, name)?;
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
        let entry = Daemon::owned(st, session, name)?;
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
        let entry = Daemon::owned(st, session, name)?;
        let Some(owner) = entry.urls.get(&prefix) else {
            return Err(api(
                Win32Error::FileNotFound,
                format!("{prefix} is not registered on queue {name:?}"),
            ));
        };
        if owner.is_some_and(|o| o != session.id) && session.peer.uid != 0 {
            return Err(api(
                Win32Error::AccessDenied,
                "only the connection that added a URL (or root) may remove it",
            ));
        }
        entry.urls.remove(&prefix);
        self.unregister(st, &prefix);
        self.publish(st);
        Ok(())
    }

    /// `DELETE /v1/queues/{name}`: the session lets go of the queue.
    pub(crate) fn close_queue(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
    ) -> Result<(), ApiError> {
        let mut st = self.lock();
        if !st
            .queues
            .get(name)
            .is_some_and(|e| e.handles.contains(&session.id))
        {
            return Err(api(
                Win32Error::InvalidHandle,
                format!("this connection does not hold a queue named {name:?}"),
            ));
        }
        self.let_go(&mut st, session.id, name);
        self.publish(&mut st);
        Ok(())
    }

    /// A control connection closed: everything it created goes, as handles close on Windows.
    pub(crate) fn end_session(self: &Arc<Self>, session: &Session) {
        let mut st = self.lock();
        let names: Vec<String> = st
            .queues
            .iter()
            .filter(|(_, e)| e.handles.contains(&session.id))
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
        if last && !linger.is_zero() && !name.starts_with('~') {
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
        let mut bound = Vec::new();
        for addr in Daemon::addresses(&st.iplisten, port) {
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

    /// `GET /v1/state`.
    pub(crate) fn state(&self) -> ServiceState {
        let st = self.lock();
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
                let mut processes: Vec<ProcessState> = Vec::new();
                for (target, slots, busy) in q.seats() {
                    let Target::Worker(w) = target else { continue };
                    match processes.iter_mut().find(|p| p.pid == w.peer.pid) {
                        Some(p) => {
                            p.slots += slots;
                            p.busy += busy;
                            p.buffered += w.buffered() as u64;
                        }
                        None => processes.push(ProcessState {
                            pid: w.peer.pid,
                            uid: w.peer.uid,
                            user: w.peer.user.clone(),
                            command: w.peer.command.clone(),
                            slots,
                            busy,
                            buffered: w.buffered() as u64,
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
                    upstream: q.upstream().map(|u| u.address.to_string()),
                    depth,
                    oldest_wait_ms: oldest.map_or(0, |d| d.as_millis() as u64),
                    in_flight,
                    urls,
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
            buffers: self.shared.buffers.gauge(),
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

fn info(q: &Queue, props: Props, created: bool, mut urls: Vec<String>) -> QueueInfo {
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
    }
}

fn bind_error(e: &BindError) -> ApiError {
    ApiError {
        code: e.code(),
        name: e.name().to_owned(),
        message: e.to_string(),
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    connections: Arc<AtomicU64>,
) {
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
            Err(e) => {
                drop(place);
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!("accept on {local}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
/// What connections share, for tests of the data path: no routes, default settings, no
/// error-log files.
#[cfg(test)]
pub(crate) fn test_shared() -> Arc<Shared> {
    let errlog = Arc::new(errlog::Log::open(&crate::config::ErrLogConfig {
        enabled: false,
        ..Default::default()
    }));
    Shared::new(Settings::new(&Config::default(), errlog))
}
