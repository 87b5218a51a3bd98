//! The control plane: the daemon's state, and every change to it.
//!
//! Everything that changes goes through one lock, [`Daemon::state`]; the data path never
//! takes it. A change that affects routing publishes a new route table to
//! [`Shared`], which connections read without a lock, so lookups
//! never wait for registrations or for each other. Nothing here runs on the data path
//! except the accept loops, which only hand connections to `conn`.
//!
//! The rooms:
//!
//! - this file: the state itself, and URL and access-list operations, with each queue's
//!   ownership (see [`crate::access`]);
//! - [`queues`]: creating and opening queues (`POST /v1/queues`), their properties, and a
//!   held upstream queue's readiness;
//! - [`session`]: control connections as the owners of what they create, and linger;
//! - [`listener`]: listening sockets per port, the accept loops, the IP listen list;
//! - [`reservations`]: URL ACLs from the configuration and the state file;
//! - [`sslcerts`]: certificate bindings of the control API, and their merge with the
//!   configuration's;
//! - [`acme`]: certificates obtained and renewed by ACME, and their challenges;
//! - [`reload`]: applying the configuration at start and on reload;
//! - [`view`]: the state view;
//! - [`metrics`]: the counters' sample, as each caller may see it;
//! - [`caps`]: per-uid caps and the descriptor budget's shares;
//! - [`routes`]: the route table's two copies, changed and published at a flat cost.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use portshare_proto::control::{
    AddUrl, AddUrlBatch, ApiError, BindFailure, GrantAccess, ListenerState, MAX_PIPELINE, OpenMode,
    PrefixState, ProcessState, QueueInfo, QueueProps, QueueSpec, QueueState, RemoveUrlBatch,
    ServiceState, Source, UrlAdded,
};
use portshare_router::{Host, Scheme, UrlAcl, UrlPrefix, Win32Error};
use tokio::task::JoinHandle;

use crate::accept::{self, Failure, Throttle};
use crate::access::{Access, Rights};
use crate::bind::{self, BindError};
use crate::config::{Config, StateFile};
use crate::errlog;
use crate::identity::{self, Identity};
use crate::queue::{Props, Queue, Target};
use crate::quota::Quota;
use crate::shared::{Destination, Settings, Shared};
use crate::upstream::{Address, Upstream};
use crate::worker::Peer;

mod acme;
mod caps;
mod listener;
mod metrics;
mod queues;
mod reload;
mod reservations;
pub(crate) mod routes;
mod session;
mod sslcerts;
mod view;

use listener::{Listener, bind_error};
pub(crate) use reload::Start;
use routes::Routes;
use session::CONFIG_SESSION;
pub(crate) use session::Session;
use view::info;

/// Upstream connections of a queue that sets none: enough that a few hundred concurrent
/// clients do not wait in the queue for a connection the upstream could have served.
const DEFAULT_UPSTREAM_CONNECTIONS: u32 = 256;

#[derive(Debug)]
struct QueueEntry {
    queue: Arc<Queue>,
    /// Sessions holding the queue open, and who each is.
    handles: HashMap<u64, Identity>,
    /// Its URLs (equal by HTTP.sys's rules, whatever the spelling), each with the session
    /// that added it; `None` once the queue lingers.
    /// Each prefix is the one the route table holds, shared.
    urls: HashMap<Arc<UrlPrefix>, Option<u64>>,
    /// Set while the queue outlives its last handle; the number tells lingerings apart.
    lingering: Option<u64>,
    /// Declared by the configuration file: the daemon holds the name.
    config: bool,
    /// Accounts granted rights besides the owner.
    access: Access,
    /// For an unnamed queue, the process that created it: no other may use it.
    creator: Option<u32>,
    /// For an upstream queue, the seat its upstream takes while it is ready.
    upstream_seat: Option<UpstreamSeat>,
}

/// The answer to a single URL's registration, made as a batch of one: its one answer, and
/// a refusal without the batch's index.
fn one_answer(added: Result<Vec<UrlAdded>, ApiError>) -> Result<UrlAdded, ApiError> {
    let mut added = added.map_err(|mut e| {
        e.index = None;
        e
    })?;
    added.pop().ok_or_else(|| {
        api(
            Win32Error::InvalidParameter,
            "the registration gave no answer",
        )
    })
}

/// Refuses a batch of more than [`AddUrlBatch::MAX`] URLs, adding or removing, whole (87).
fn within_batch_cap(n: usize) -> Result<(), ApiError> {
    if n > AddUrlBatch::MAX {
        return Err(api(
            Win32Error::InvalidParameter,
            format!(
                "a batch holds at most {} URLs and this one holds {n}: send them in several \
                 batches",
                AddUrlBatch::MAX
            ),
        ));
    }
    Ok(())
}

/// A URL of a batch as it was registered: what undoing it takes.
#[derive(Debug)]
enum Applied {
    /// Added to the route table and the queue.
    New(Arc<UrlPrefix>),
    /// Kept by the lingering queue and taken over by the connection.
    TakenOver(Arc<UrlPrefix>),
}

/// The upstream's place among a queue's seats. A held queue has none attached: requests
/// wait in its FIFO until its owner declares it ready.
#[derive(Debug, Clone, Copy)]
struct UpstreamSeat {
    /// The seat's id while attached; a new one each time, so that slots of an earlier
    /// attachment, given back late, never count against this one.
    id: u64,
    /// Its connections.
    slots: u32,
    ready: bool,
}

impl QueueEntry {
    /// True while an upstream queue is held: its requests wait.
    fn held(&self) -> bool {
        self.upstream_seat.is_some_and(|s| !s.ready)
    }
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

#[derive(Debug)]
struct State {
    /// The route table: changed here, published to [`Shared::table`].
    table: Routes<Arc<Destination>>,
    queues: HashMap<String, QueueEntry>,
    listeners: HashMap<SocketAddr, Listener>,
    /// Listeners let go whose task has not ended yet: their socket still holds the
    /// address until it does (see [`Daemon::wait_closed`]).
    closing: HashMap<SocketAddr, JoinHandle<()>>,
    acl: UrlAcl,
    /// Where each reservation comes from.
    acl_sources: HashMap<UrlPrefix, Source>,
    /// The configuration in force.
    config: Config,
    /// What the CLI changed.
    saved: StateFile,
    /// The listen list in force.
    iplisten: Vec<IpAddr>,
    /// The gid of `admin_group`, looked up at start and on reload, so that no check of who
    /// is an administrator waits on the group database.
    admin_gid: Option<u32>,
    /// Entries of the listen list this machine does not own: skipped, with a warning, when
    /// ports are bound (spec §8).
    foreign: Vec<IpAddr>,
    /// Addresses that should listen and cannot.
    bind_failures: BTreeMap<SocketAddr, ApiError>,
    /// Ports ACME orders hold open for their challenges, and how many orders each.
    acme_ports: HashMap<u16, usize>,
    /// The configuration's queues as they were created: what a reload cannot change
    /// (upstream, connections, strip_prefix, https_redirect) is in force as written here.
    config_queues: HashMap<String, crate::config::QueueConfig>,
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
    /// Held from start to end by whoever changes the configuration or the state file: a
    /// reload (SIGHUP or `POST /v1/reload`), a listen-list change, a reservation. Two never
    /// interleave their steps, and the state file is written without holding `state`.
    /// Taken before `state`, never after it.
    changing: Mutex<()>,
    /// Open control connections, against the budget's control share and the per-uid caps.
    pub(crate) quota: Arc<Quota>,
    /// The ACME tasks and their state.
    acme: acme::AcmeRun,
}

fn api(err: Win32Error, message: impl Into<String>) -> ApiError {
    ApiError::new(err, message)
}

impl Daemon {
    /// A daemon with no listeners yet; [`Daemon::load`] applies the configuration.
    pub(crate) fn new(start: Start) -> Arc<Daemon> {
        let admin_gid = start
            .config
            .admin_group
            .as_deref()
            .and_then(identity::resolve_group);
        let config = start.config;
        let errlog = Arc::new(errlog::Log::open(&config.errlog));
        let shared = Shared::new(Settings::new(&config, errlog), start.budget);
        Arc::new(Daemon {
            shared,
            state: Mutex::new(State {
                table: Routes::new(),
                queues: HashMap::new(),
                listeners: HashMap::new(),
                closing: HashMap::new(),
                acl: UrlAcl::new(),
                acl_sources: HashMap::new(),
                config,
                saved: StateFile::default(),
                iplisten: Vec::new(),
                admin_gid,
                foreign: Vec::new(),
                bind_failures: BTreeMap::new(),
                acme_ports: HashMap::new(),
                config_queues: HashMap::new(),
            }),
            own_uid: start.own_uid,
            own_gid: start.own_gid,
            config_path: start.config_path,
            iplisten_flags: start.iplisten_flags,
            state_file: start.state_file,
            ids: AtomicU64::new(1),
            changing: Mutex::new(()),
            quota: Quota::new(&start.budget),
            acme: acme::AcmeRun::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One change of the configuration or the state file at a time (see `changing`).
    /// Blocking: call it on the blocking pool.
    fn one_change(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
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
        who.uid == 0 || who.uid == self.own_uid || st.admin_gid.is_some_and(|gid| who.in_group(gid))
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
        Ok(info(entry, entry.queue.props(), false, &self.shared))
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
        let unregistered: Vec<Arc<UrlPrefix>> = entry
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
            self.unregister(st, name, p, "its account may no longer register");
        }
        for session in idle {
            self.let_go(st, session, name);
        }
        for w in detached {
            tracing::info!(
                queue = name,
                pid = w.peer.pid,
                user = %w.peer.user,
                worker = w.id,
                "worker detached: its account may no longer attach"
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
        if entry.queue.https_redirect().is_some() {
            return Err(api(
                Win32Error::InvalidParameter,
                format!(
                    "queue {name:?} redirects its requests to https; workers cannot attach to it"
                ),
            ));
        }
        Ok(entry.queue.clone())
    }

    /// `POST /v1/queues/{name}/urls` with one URL: a batch of one, answered as it always
    /// was (no index in a refusal).
    pub(crate) fn add_url(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
        add: &AddUrl,
    ) -> Result<UrlAdded, ApiError> {
        one_answer(self.add_urls(session, name, std::slice::from_ref(add)))
    }

    /// `POST /v1/queues/{name}/urls` with a batch ([`AddUrlBatch`]): every URL registered,
    /// or none. A refusal of one URL carries its index, and its message names it.
    pub(crate) fn add_url_batch(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
        batch: &AddUrlBatch,
    ) -> Result<Vec<UrlAdded>, ApiError> {
        let n = batch.urls.len();
        within_batch_cap(n)?;
        let added = self.add_urls(session, name, &batch.urls).map_err(|mut e| {
            if let Some(add) = e.index.and_then(|i| batch.urls.get(i)) {
                e.message = format!(
                    "URL {} of the batch ({:?}): {}",
                    e.index.unwrap_or_default(),
                    portshare_proto::text::printable(&add.url),
                    e.message
                );
            }
            e
        })?;
        if n > 1 {
            tracing::info!(
                queue = name,
                urls = n,
                pid = session.peer.pid,
                "registered a batch"
            );
        }
        Ok(added)
    }

    /// Registers `adds` on queue `name`, all or none, and publishes the route table once. A
    /// port another program holds is refused naming that program, looked up once the lock
    /// is let go. A refusal of one URL carries its index.
    fn add_urls(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
        adds: &[AddUrl],
    ) -> Result<Vec<UrlAdded>, ApiError> {
        // Every URL's syntax first, before the lock, as a single URL's always was.
        let prefixes = adds
            .iter()
            .enumerate()
            .map(|(i, add)| {
                UrlPrefix::parse(&add.url).map(Arc::new).map_err(|e| {
                    api(
                        e.win32(),
                        format!("{:?} is not a valid URL prefix: {e}", add.url),
                    )
                    .at(i)
                })
            })
            .collect::<Result<Vec<Arc<UrlPrefix>>, ApiError>>()?;
        let mut held = None;
        let mut added = self.add_urls_locked(session, name, adds, prefixes.clone(), &mut held);
        // The port's own listener, let go a moment ago, may not have closed yet.
        if added.is_err()
            && held
                .as_ref()
                .and_then(BindError::in_use)
                .is_some_and(|a| self.wait_closed(a))
        {
            held = None;
            added = self.add_urls_locked(session, name, adds, prefixes, &mut held);
        }
        let added = match (held, added) {
            (Some(e), Err(refused)) => {
                let named = self.name_held(e);
                Err(match refused.index {
                    Some(i) => named.at(i),
                    None => named,
                })
            }
            (_, added) => added,
        };
        if added.is_err() {
            // The caller has the refusal; the state view keeps a failure only while
            // something still needs its port.
            Daemon::prune_bind_failures(&mut self.lock());
        }
        added
    }

    fn add_urls_locked(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
        adds: &[AddUrl],
        prefixes: Vec<Arc<UrlPrefix>>,
        held: &mut Option<BindError>,
    ) -> Result<Vec<UrlAdded>, ApiError> {
        let mut st = self.lock();
        self.add_urls_in(&mut st, session, name, adds, prefixes, held)
    }

    /// `POST /v1/queues/{name}/urls` with one URL, on the calling (runtime) thread, when
    /// that cannot block: the daemon's lock is free this instant, and the outcome needs no
    /// lookup of a port's holder. `None` otherwise, having changed nothing: the caller then
    /// runs [`add_url`](Daemon::add_url) on the blocking pool. Everything else a
    /// registration does is work in memory and non-blocking system calls (a port bound),
    /// and the caller's names were looked up when its connection came; the hand-off to the
    /// blocking pool and back was most of what a registration cost.
    pub(crate) fn try_add_url_now(
        self: &Arc<Self>,
        session: &Session,
        name: &str,
        add: &AddUrl,
    ) -> Option<Result<UrlAdded, ApiError>> {
        let prefix = match UrlPrefix::parse(&add.url) {
            Ok(p) => Arc::new(p),
            Err(_) => return None,
        };
        let mut st = self.state.try_lock().ok()?;
        let mut held = None;
        let added = self.add_urls_in(
            &mut st,
            session,
            name,
            std::slice::from_ref(add),
            vec![prefix],
            &mut held,
        );
        if held.is_some() {
            // Refused for a port another program holds: nothing changed, and naming the
            // holder reads /proc. The blocking pool does it all again.
            return None;
        }
        if added.is_err() {
            // As `add_urls`: a failure stays in the state view only while its port is needed.
            Daemon::prune_bind_failures(&mut st);
        }
        Some(one_answer(added))
    }

    /// The body of [`add_urls_locked`](Daemon::add_urls_locked), under the lock.
    fn add_urls_in(
        self: &Arc<Self>,
        st: &mut State,
        session: &Session,
        name: &str,
        adds: &[AddUrl],
        prefixes: Vec<Arc<UrlPrefix>>,
        held: &mut Option<BindError>,
    ) -> Result<Vec<UrlAdded>, ApiError> {
        let known_as = session.known_as.clone();
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
        let caller = known_as.admin(self.is_admin(st, &session.peer));
        let mut room = self.url_room(st, session, queue.owner_uid());
        let mut applied = Vec::with_capacity(adds.len());
        let mut answers = Vec::with_capacity(adds.len());
        for (i, (add, prefix)) in adds.iter().zip(prefixes).enumerate() {
            let one = self.add_one(
                st, session, name, &queue, &caller, add, prefix, &mut room, held,
            );
            match one {
                Ok((done, answer)) => {
                    applied.push(done);
                    answers.push(answer);
                }
                Err(e) => {
                    self.undo_adds(st, name, applied);
                    return Err(e.at(i));
                }
            }
        }
        if applied.iter().any(|a| matches!(a, Applied::New(_))) {
            // Once for the whole batch: connections see all of it or none.
            self.publish(st);
        }
        for (done, answer) in applied.iter().zip(&answers) {
            for w in &answer.warnings {
                tracing::warn!(queue = name, "{w}");
            }
            if let Applied::New(prefix) = done {
                tracing::info!(queue = name, %prefix, pid = session.peer.pid, "registered");
            }
        }
        Ok(answers)
    }

    /// Registers one URL of a batch under the lock, without publishing: what to undo if a
    /// later one fails, and the answer.
    #[allow(clippy::too_many_arguments)]
    fn add_one(
        self: &Arc<Self>,
        st: &mut State,
        session: &Session,
        name: &str,
        queue: &Arc<Queue>,
        caller: &portshare_router::Caller,
        add: &AddUrl,
        prefix: Arc<UrlPrefix>,
        room: &mut Option<usize>,
        held: &mut Option<BindError>,
    ) -> Result<(Applied, UrlAdded), ApiError> {
        let entry = Daemon::entry(st, name)?;
        match entry.urls.get_mut(&prefix) {
            // Re-adding what a lingering queue kept for its next holder: the connection
            // takes it over.
            Some(added_by @ None) => {
                *added_by = Some(session.id);
                let listening = self.listening_for(st, &prefix);
                let warnings = self.warnings(st, &prefix, &listening);
                let answer = UrlAdded {
                    url: prefix.to_string(),
                    listening,
                    warnings,
                };
                return Ok((Applied::TakenOver(prefix), answer));
            }
            // HTTP.sys answers a second HttpAddUrl of the same prefix with 183 (spec §1.3).
            Some(Some(added_by)) if *added_by == session.id => {
                return Err(api(
                    Win32Error::AlreadyExists,
                    format!("this connection registered {prefix} already"),
                ));
            }
            _ => {}
        }
        if prefix.scheme() == Scheme::Https && queue.https_redirect().is_some() {
            return Err(api(
                Win32Error::InvalidParameter,
                format!("queue {name:?} redirects http to https: it takes http URLs only"),
            ));
        }
        // HTTP.sys's order (spec §1.3): the scheme and duplicate checks before the ACL, so
        // a duplicate is 183 whoever asks.
        st.table
            .check_add(&prefix)
            .map_err(|e| self.registered_already(st, session, &prefix, &e))?;
        st.acl
            .check_register(&prefix, caller)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        if let Some(room) = room {
            if *room == 0 {
                return Err(Daemon::url_cap_reached(st, queue.owner_uid()));
            }
            *room -= 1;
        }
        if let Host::Ip(ip) = prefix.host() {
            bind::check_local(*ip).map_err(|e| bind_error(&e))?;
        }
        // A port an ACME order holds open for its challenges is bound already.
        let needs_bind = !st.table.listens(prefix.scheme(), prefix.port())
            && !st.acme_ports.contains_key(&prefix.port());
        if needs_bind {
            self.bind_port(st, prefix.port(), held)?;
        }
        let site = (prefix.scheme(), prefix.host().to_string(), prefix.port());
        let binding = Arc::new(Destination {
            queue: queue.clone(),
            prefix: prefix.clone(),
            context: add.context,
            site: self.shared.metrics.site(site.0, &site.1, site.2),
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
        let listening = self.listening_for(st, &prefix);
        let warnings = self.warnings(st, &prefix, &listening);
        let answer = UrlAdded {
            url: prefix.to_string(),
            listening,
            warnings,
        };
        Ok((Applied::New(prefix), answer))
    }

    /// Undoes the URLs of a batch that failed, latest first: a taken-over URL goes back to
    /// its lingering queue, a new one leaves the table and the queue, and a port bound for
    /// the batch is let go. Nothing was published or logged for them.
    fn undo_adds(&self, st: &mut State, name: &str, applied: Vec<Applied>) {
        for done in applied.into_iter().rev() {
            match done {
                Applied::TakenOver(prefix) => {
                    if let Some(added_by) = st
                        .queues
                        .get_mut(name)
                        .and_then(|e| e.urls.get_mut(&prefix))
                    {
                        *added_by = None;
                    }
                }
                Applied::New(prefix) => {
                    if let Some(entry) = st.queues.get_mut(name) {
                        entry.urls.remove(&prefix);
                    }
                    if st.table.remove(&prefix).is_ok()
                        && !st.table.listens(prefix.scheme(), prefix.port())
                        && !st.acme_ports.contains_key(&prefix.port())
                    {
                        Daemon::release_port(st, prefix.port());
                    }
                }
            }
        }
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
        self.remove_locked(
            st,
            session,
            name,
            &prefix,
            "removed by a control connection",
        )?;
        self.publish(st);
        Ok(())
    }

    /// `DELETE /v1/queues/{name}/urls` with a list: every URL checked first, then all
    /// removed and the table published once. A refusal carries the URL's index and removes
    /// none; a URL given twice is not registered (2) at its second place.
    pub(crate) fn remove_url_batch(
        &self,
        session: &Session,
        name: &str,
        batch: &RemoveUrlBatch,
    ) -> Result<(), ApiError> {
        within_batch_cap(batch.urls.len())?;
        let mut prefixes = Vec::with_capacity(batch.urls.len());
        let mut seen = std::collections::HashSet::with_capacity(batch.urls.len());
        for (i, rm) in batch.urls.iter().enumerate() {
            let prefix =
                UrlPrefix::parse(&rm.url).map_err(|e| api(e.win32(), e.to_string()).at(i))?;
            if !seen.insert(prefix.clone()) {
                return Err(api(
                    Win32Error::FileNotFound,
                    format!("{prefix} is in the batch twice"),
                )
                .at(i));
            }
            prefixes.push(prefix);
        }
        let mut st = self.lock();
        let st = &mut *st;
        for (i, prefix) in prefixes.iter().enumerate() {
            self.check_remove(st, session, name, prefix)
                .map_err(|e| e.at(i))?;
        }
        for prefix in &prefixes {
            if let Some(entry) = st.queues.get_mut(name) {
                entry.urls.remove(prefix);
            }
            self.unregister(st, name, prefix, "removed by a control connection");
        }
        self.publish(st);
        if prefixes.len() > 1 {
            tracing::info!(
                queue = name,
                urls = prefixes.len(),
                pid = session.peer.pid,
                "removed a batch"
            );
        }
        Ok(())
    }

    /// Takes `prefix` off queue `name` for `session`, if it may, without publishing.
    fn remove_locked(
        &self,
        st: &mut State,
        session: &Session,
        name: &str,
        prefix: &UrlPrefix,
        reason: &str,
    ) -> Result<(), ApiError> {
        self.check_remove(st, session, name, prefix)?;
        if let Some(entry) = st.queues.get_mut(name) {
            entry.urls.remove(prefix);
        }
        self.unregister(st, name, prefix, reason);
        Ok(())
    }

    /// Whether `session` may take `prefix` off queue `name`, and it is there to take.
    fn check_remove(
        &self,
        st: &mut State,
        session: &Session,
        name: &str,
        prefix: &UrlPrefix,
    ) -> Result<(), ApiError> {
        let admin = self.is_admin(st, &session.peer);
        let entry = Daemon::entry(st, name)?;
        let owner = session.peer.uid == entry.queue.owner_uid() && entry.rights_of(session).any();
        if !admin && !owner && !entry.rights_of(session).register {
            return Err(entry.denied(name, "only its owner and its registrants may remove URLs"));
        }
        let Some(added_by) = entry.urls.get(prefix) else {
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

    /// The refusal of a prefix the table holds already (183), naming the queue that holds
    /// it and, for a caller the state view shows them to, its processes.
    fn registered_already(
        &self,
        st: &State,
        session: &Session,
        prefix: &UrlPrefix,
        e: &portshare_router::TableError,
    ) -> ApiError {
        use std::fmt::Write as _;
        let Some(queue) = st
            .table
            .get(prefix)
            .map(|r| r.value().queue.name().to_owned())
        else {
            return api(e.win32(), e.to_string());
        };
        let mut message = format!(
            "{e} on queue {:?}",
            portshare_proto::text::printable(&queue)
        );
        if let Some(entry) = st.queues.get(&queue) {
            if self.is_admin(st, &session.peer) || entry.rights_of(session).any() {
                let mut processes: Vec<(u32, String)> = Vec::new();
                for (target, _, _) in entry.queue.seats() {
                    if let Target::Worker(w) = target
                        && !processes.iter().any(|(pid, _)| *pid == w.peer.pid)
                    {
                        let command = portshare_proto::text::printable(&w.peer.command);
                        processes.push((w.peer.pid, command.into_owned()));
                    }
                }
                if processes.is_empty() {
                    message.push_str(", which no process has attached to");
                } else {
                    let list: Vec<String> = processes
                        .iter()
                        .map(|(pid, command)| format!("PID {pid} ({command})"))
                        .collect();
                    let _ = write!(message, ", served by {}", list.join(", "));
                }
            } else {
                message.push_str(
                    " (its processes are shown to its owner, its grantees and administrators)",
                );
            }
        }
        api(e.win32(), message)
    }

    fn destroy(&self, st: &mut State, name: &str) {
        let Some(entry) = st.queues.remove(name) else {
            return;
        };
        for p in entry.urls.keys() {
            self.unregister(st, name, p, "its queue closed");
        }
        entry.queue.close();
    }

    /// Takes `prefix` of queue `name` out of the route table, logged with `reason`, and
    /// closes its port's listeners when nothing else needs them.
    fn unregister(&self, st: &mut State, name: &str, prefix: &UrlPrefix, reason: &str) {
        if st.table.remove(prefix).is_ok() {
            tracing::info!(queue = name, %prefix, reason, "unregistered");
        } else {
            return;
        }
        if !st.table.listens(prefix.scheme(), prefix.port())
            && !st.acme_ports.contains_key(&prefix.port())
        {
            Daemon::release_port(st, prefix.port());
        }
    }

    /// Makes the route table's changes visible to connections: once per control request,
    /// at a cost that does not grow with the table (see [`routes`]).
    fn publish(&self, st: &mut State) {
        st.table.publish(&self.shared.table);
    }

    /// Begins a graceful stop: the listeners close, connections close as soon as they hold
    /// no request, and workers are told (a drain frame). Requests in progress and waiting
    /// in queues go on. Returns how long they may take, and the accept loops, which end
    /// soon: each holds a place of the connection count while it waits for a client, so
    /// the count means client connections only once they have ended.
    pub(crate) fn begin_stop(&self) -> (Duration, Vec<tokio::task::JoinHandle<()>>) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
        let mut st = self.lock();
        let accepting = st
            .listeners
            .drain()
            .filter_map(|(_, l)| l.close())
            .collect();
        for entry in st.queues.values() {
            for (target, _, _) in entry.queue.seats() {
                if let Target::Worker(w) = target {
                    w.send(portshare_proto::wire::encode_drain);
                }
            }
        }
        (st.config.timers.shutdown.duration(), accepting)
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
}
