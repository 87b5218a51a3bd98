//! Operating the daemon: the configuration at start and on reload, URL ACLs, the IP listen
//! list, and the state file the CLI's changes persist in.
//!
//! A reload applies a new configuration file without closing a client connection or
//! dropping a request: limits and timers apply from each connection's next request,
//! reservations and the admin group from the next registration (registrations already made
//! stand, as on Windows), and listeners open and close only where the listen list changed.
//! A listening socket must close before a narrower or wider address on its port can be
//! bound (`0.0.0.0:80` and `127.0.0.1:80` exclude each other), so a change of the listen
//! list refuses connections to that port for that instant; connections already accepted
//! carry on.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use portshare_proto::control::{
    AccountKind, AclEntry, AddReservation, AddUrl, ApiError, IpListenChange, IpListenEntry,
    IpListenList, OpenMode, QueueProps, QueueSpec, ReloadReport, RemoveReservation,
    ReservationInfo, Source, UrlAclList,
};
use portshare_router::{Account, Ace, Reservation, UrlAcl, UrlPrefix, Win32Error};
use tokio::task::JoinHandle;

use super::{CONFIG_SESSION, Daemon, Session, Settings, State, api, bind_error};
use crate::access::Access;
use crate::bind::{self, BindError};
use crate::config::{Config, QueueConfig, StateFile, Timers, UrlAclConfig, unknown_names};
use crate::errlog;
use crate::identity::{self, Identity};
use crate::worker::Peer;

/// What the daemon starts from.
#[derive(Debug)]
pub(crate) struct Start {
    /// The descriptor budget, from the open-file limit at start.
    pub(crate) budget: crate::budget::Budget,
    /// The configuration, with command-line flags applied.
    pub(crate) config: Config,
    /// The file it came from, read again on reload.
    pub(crate) config_path: Option<PathBuf>,
    /// `--iplisten` addresses: they replace the listen list while the daemon runs.
    pub(crate) iplisten_flags: Vec<IpAddr>,
    pub(crate) own_uid: u32,
    pub(crate) own_gid: u32,
    /// Where the CLI's changes persist.
    pub(crate) state_file: PathBuf,
}

/// What a load or reload changed, and what did not work.
#[derive(Debug, Default)]
struct Report {
    changes: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn warn(&mut self, w: String) {
        tracing::warn!("{w}");
        self.warnings.push(w);
    }
}

/// The reservation an ACL entry of the configuration or the state file describes.
fn reservation_of(a: &UrlAclConfig) -> Result<Reservation, String> {
    let prefix = UrlPrefix::parse(&a.url).map_err(|e| format!("urlacl {:?}: {e}", a.url))?;
    let account = |name: &String, group: bool| {
        if name.eq_ignore_ascii_case("everyone") {
            Account::Name("Everyone".into())
        } else if group {
            Account::Group(name.clone())
        } else {
            Account::User(name.clone())
        }
    };
    let aces = a
        .users
        .iter()
        .map(|u| account(u, false))
        .chain(a.groups.iter().map(|g| account(g, true)))
        .map(|acc| Ace::new(acc, a.listen, a.delegate))
        .collect();
    Ok(Reservation::new(prefix, aces))
}

fn info_of(a: &UrlAclConfig, source: Source) -> ReservationInfo {
    let entry = |kind, name: &String| AclEntry {
        kind,
        name: name.clone(),
        listen: a.listen,
        delegate: a.delegate,
    };
    ReservationInfo {
        url: UrlPrefix::parse(&a.url).map_or_else(|_| a.url.clone(), |p| p.to_string()),
        entries: a
            .users
            .iter()
            .map(|u| entry(AccountKind::User, u))
            .chain(a.groups.iter().map(|g| entry(AccountKind::Group, g)))
            .collect(),
        source,
    }
}

fn same_url(a: &str, b: &UrlPrefix) -> bool {
    UrlPrefix::parse(a).is_ok_and(|p| p == *b)
}

impl Daemon {
    /// The session the configuration file's queues belong to.
    fn config_session(&self) -> Session {
        Session {
            id: CONFIG_SESSION,
            peer: Peer {
                pid: std::process::id(),
                uid: self.own_uid,
                identity: Identity {
                    uid: self.own_uid,
                    gid: self.own_gid,
                    groups: Vec::new(),
                },
                user: identity::display_user(self.own_uid),
                command: "portshare (configuration)".into(),
            },
        }
    }

    /// Applies the configuration and the state file at start; returns the warnings.
    pub(crate) fn load(self: &Arc<Self>) -> Result<Vec<String>, crate::Error> {
        let saved = StateFile::load(&self.state_file)?;
        let mut report = Report::default();
        let queues = {
            let mut st = self.lock();
            st.saved = saved;
            self.apply_acl(&mut st, &mut report);
            st.iplisten = self.listen_list(&st);
            st.config.queues.clone()
        };
        let failed = self.sync_queues(&[], &queues, true, &mut report);
        if !failed.is_empty() {
            return Err(crate::Error::config(failed.join("; ")));
        }
        Ok(report.warnings)
    }

    /// `POST /v1/reload` and SIGHUP: reads the configuration file again and applies it. A
    /// file that does not parse or check changes nothing.
    pub(crate) async fn reload(self: &Arc<Self>) -> Result<ReloadReport, ApiError> {
        let Some(path) = self.config_path.clone() else {
            return Err(api(
                Win32Error::InvalidParameter,
                "the daemon was started without a configuration file: there is nothing to \
                 reload (start it with --config FILE)",
            ));
        };
        let new = Config::from_file(&path).map_err(|e| {
            api(
                Win32Error::InvalidData,
                format!("{e}; the daemon keeps its current configuration"),
            )
        })?;
        let mut report = Report::default();
        let old = {
            let mut st = self.lock();
            let old = std::mem::replace(&mut st.config, new.clone());
            self.apply_settings(&mut st, &old, &mut report);
            if old.admin_group != new.admin_group {
                report.changes.push(format!(
                    "admin group: {} -> {}",
                    old.admin_group.as_deref().unwrap_or("(none)"),
                    new.admin_group.as_deref().unwrap_or("(none)")
                ));
            }
            self.apply_acl(&mut st, &mut report);
            self.publish(&mut st);
            old
        };
        if old.state_file != new.state_file {
            report.warn("state_file changed: it applies when the daemon restarts".into());
        }
        if old.control.socket != new.control.socket || old.control.mode != new.control.mode {
            report.warn(
                "control.socket or control.mode changed: it applies when the daemon restarts"
                    .into(),
            );
        }
        if old.control.limits() != new.control.limits() {
            report.changes.push("control limits".into());
        }
        self.apply_listen_list(&mut report).await;
        self.sync_queues(&old.queues, &new.queues, false, &mut report);
        tracing::info!(
            "reloaded {}: {} change(s)",
            path.display(),
            report.changes.len()
        );
        Ok(ReloadReport {
            config: path.display().to_string(),
            changes: report.changes,
            warnings: report.warnings,
        })
    }

    /// Swaps in new limits, timers and error log if they changed.
    fn apply_settings(&self, st: &mut State, old: &Config, report: &mut Report) {
        let new = &st.config;
        if old.limits == new.limits && old.timers == new.timers && old.errlog == new.errlog {
            return;
        }
        let current = self.shared.settings.load_full();
        let errlog = if old.errlog == new.errlog {
            current.errlog.clone()
        } else {
            report.changes.push("error log settings".into());
            Arc::new(errlog::Log::open(&new.errlog))
        };
        if old.limits != new.limits {
            report.changes.push("limits".into());
        }
        if old.timers != new.timers {
            report.changes.push("timers".into());
        }
        self.shared
            .settings
            .store(Arc::new(Settings::new(new, errlog)));
        self.shared.connections.recheck();
        st.request_queue_timer = Timers::duration(new.timers.request_queue);
    }

    /// Rebuilds the reservations from the configuration and the state file: the
    /// configuration's entries win over the state file's for the same URL.
    fn apply_acl(&self, st: &mut State, report: &mut Report) {
        let mut acl = UrlAcl::new();
        let mut sources = HashMap::new();
        let config = st.config.urlacls.iter().map(|a| (a, Source::Config));
        let saved = st.saved.urlacls.iter().map(|a| (a, Source::State));
        for (a, source) in config.chain(saved) {
            let r = match reservation_of(a) {
                Ok(r) => r,
                Err(e) => {
                    report.warn(format!("state file {}: {e}", self.state_file.display()));
                    continue;
                }
            };
            let prefix = r.prefix().clone();
            if sources.contains_key(&prefix) {
                if source == Source::State {
                    report.warn(format!(
                        "the reservation of {prefix} in the state file is overridden by the \
                         configuration file's"
                    ));
                }
                continue;
            }
            let unknown = unknown_names(a);
            if !unknown.is_empty() {
                report.warn(format!(
                    "reservation {prefix}: no {} on this machine, so it grants them nothing",
                    unknown.join(", no ")
                ));
            }
            if acl.insert(r).is_ok() {
                sources.insert(prefix, source);
            }
        }
        // In URL order, so a report reads the same from one reload to the next.
        let sorted = |set: Vec<&UrlPrefix>| {
            let mut v: Vec<UrlPrefix> = set.into_iter().cloned().collect();
            v.sort_by_cached_key(ToString::to_string);
            v
        };
        let removed = sorted(
            st.acl_sources
                .keys()
                .filter(|p| !sources.contains_key(*p))
                .collect(),
        );
        let added = sorted(
            sources
                .keys()
                .filter(|p| !st.acl_sources.contains_key(*p))
                .collect(),
        );
        let kept = sorted(
            sources
                .keys()
                .filter(|p| st.acl_sources.contains_key(*p))
                .collect(),
        );
        for prefix in removed {
            let _ = st.table.unreserve(&prefix);
            report
                .changes
                .push(format!("reservation removed: {prefix}"));
        }
        for prefix in added {
            report.changes.push(format!("reservation added: {prefix}"));
            if let Err(e) = st.table.reserve(prefix.clone()) {
                report.warn(format!(
                    "reservation {prefix} does not take part in routing: {e}"
                ));
            }
        }
        for prefix in kept {
            let aces = |acl: &UrlAcl| acl.get(&prefix).map(|r| r.aces().to_vec());
            if aces(&st.acl) != aces(&acl) {
                report
                    .changes
                    .push(format!("reservation changed: {prefix}"));
            }
        }
        st.acl = acl;
        st.acl_sources = sources;
    }

    /// The listen list in force: the `--iplisten` flags, else the configuration's list and
    /// the state file's.
    fn listen_list(&self, st: &State) -> Vec<IpAddr> {
        if !self.iplisten_flags.is_empty() {
            return self.iplisten_flags.clone();
        }
        let mut list = st.config.iplisten.clone();
        for ip in &st.saved.iplisten {
            if !list.contains(ip) {
                list.push(*ip);
            }
        }
        list
    }

    /// Opens and closes listeners where the listen list changed. A socket that goes is
    /// closed (its accept task gone) before anything is bound on its port.
    async fn apply_listen_list(self: &Arc<Self>, report: &mut Report) {
        let closing: Vec<JoinHandle<()>> = {
            let mut st = self.lock();
            let new = self.listen_list(&st);
            let same =
                new.len() == st.iplisten.len() && new.iter().all(|a| st.iplisten.contains(a));
            if same && st.bind_failures.is_empty() {
                return;
            }
            if !same {
                let show = |l: &[IpAddr]| match l {
                    [] => "every address".to_owned(),
                    l => l
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                report.changes.push(format!(
                    "listen list: {} -> {}",
                    show(&st.iplisten),
                    show(&new)
                ));
                st.iplisten = new;
            }
            let iplisten = st.iplisten.clone();
            let gone: Vec<_> = st
                .listeners
                .keys()
                .filter(|a| !Daemon::addresses(&iplisten, a.port()).contains(a))
                .copied()
                .collect();
            gone.into_iter()
                .filter_map(|a| {
                    tracing::info!("closing {a}: not in the listen list any more");
                    st.listeners.remove(&a).and_then(super::Listener::close)
                })
                .collect()
        };
        for task in closing {
            let _ = task.await;
        }
        let mut st = self.lock();
        let ports: BTreeSet<u16> = st
            .table
            .ports()
            .filter(|&(scheme, port)| st.table.listens(scheme, port))
            .map(|(_, port)| port)
            .collect();
        st.bind_failures.retain(|a, _| ports.contains(&a.port()));
        for port in ports {
            for addr in Daemon::addresses(&st.iplisten, port) {
                if st.listeners.contains_key(&addr) {
                    continue;
                }
                match bind::listen(addr, 1024) {
                    Ok(l) => self.start_listener(&mut st, addr, l),
                    Err(BindError::NoIpv6 { .. }) if st.iplisten.is_empty() => {}
                    Err(e) => {
                        report.warn(format!("cannot listen on {addr}: {e}"));
                        st.bind_failures.insert(addr, bind_error(&e));
                    }
                }
            }
        }
        self.publish(&mut st);
    }

    /// Creates, changes and closes the configuration file's queues, from `old` to `new`
    /// (`initial` at start). Every change that can be made is made; what cannot (a name
    /// another account holds, a URL whose port another program holds...) is reported as a
    /// warning, and the queues that could not be created are returned.
    fn sync_queues(
        self: &Arc<Self>,
        old: &[QueueConfig],
        new: &[QueueConfig],
        initial: bool,
        report: &mut Report,
    ) -> Vec<String> {
        let session = self.config_session();
        let mut failed = Vec::new();
        for q in old.iter().filter(|q| !new.iter().any(|n| n.name == q.name)) {
            let mut st = self.lock();
            if st.queues.get(&q.name).is_some_and(|e| e.config) {
                self.destroy(&mut st, &q.name);
                self.publish(&mut st);
                report.changes.push(format!("queue {:?} closed", q.name));
            }
        }
        for q in new {
            let props = QueueProps {
                length: q.length,
                verbosity: q.verbosity,
                enabled: q.enabled,
                linger_ms: q.linger.map(|s| (s * 1000.0) as u64),
                queue_timer_ms: q.request_queue_timer.map(|s| (s * 1000.0) as u64),
                // Absent from the file: the service's value (0), also after a reload.
                entity_body_ms: Some(q.entity_body.map_or(0, |s| (s * 1000.0) as u64)),
                drain_entity_body_ms: Some(q.drain_entity_body.map_or(0, |s| (s * 1000.0) as u64)),
                min_send_rate: Some(q.min_send_rate.unwrap_or(0)),
                max_connections: Some(q.max_connections.unwrap_or(0)),
            };
            let (access, unknown) = Access::lenient(&q.access_entries());
            for u in unknown {
                report.warn(format!("queue {:?}: {u}, so it grants nothing", q.name));
            }
            let held = {
                let st = self.lock();
                st.queues.get(&q.name).map(|e| (e.config, e.holder()))
            };
            let before = old.iter().find(|o| o.name == q.name);
            match held {
                // Never adopted: the configuration's URLs wait until that queue is gone.
                Some((false, holder)) => {
                    let w = format!(
                        "queue {:?}: not applied: the name is held by {holder}, who created it \
                         before the configuration declared it; its URLs are served once that \
                         queue closes and the configuration is reloaded",
                        q.name
                    );
                    report.warn(w.clone());
                    failed.push(w);
                    continue;
                }
                None => {
                    let spec = QueueSpec {
                        name: Some(q.name.clone()),
                        mode: OpenMode::Create,
                        props,
                        upstream: q.upstream.clone(),
                    };
                    if let Err(e) = self.open_queue(&session, &spec, q.connections, Some(access)) {
                        let w = format!("queue {:?}: not created: {e}", q.name);
                        report.warn(w.clone());
                        failed.push(w);
                        continue;
                    }
                    if !initial {
                        report.changes.push(format!("queue {:?} created", q.name));
                    }
                }
                Some((true, _)) => {
                    let b = before.cloned().unwrap_or_else(|| q.clone());
                    if b.upstream != q.upstream || b.connections != q.connections {
                        report.warn(format!(
                            "queue {:?}: upstream and connections apply when the daemon restarts",
                            q.name
                        ));
                    }
                    if before.is_none_or(|b| b.props_differ(q)) {
                        match self.set_props(&session, &q.name, &props) {
                            Ok(_) => report
                                .changes
                                .push(format!("queue {:?} properties", q.name)),
                            Err(e) => report.warn(format!("queue {:?}: not applied: {e}", q.name)),
                        }
                    }
                    let mut st = self.lock();
                    let changed = st
                        .queues
                        .get_mut(&q.name)
                        .filter(|e| e.access != access)
                        .map(|e| e.access = access)
                        .is_some();
                    if changed {
                        self.enforce_access(&mut st, &q.name);
                        self.publish(&mut st);
                        report.changes.push(format!("queue {:?} access", q.name));
                    }
                }
            }
            // What the queue holds now, so a URL that failed before is tried again.
            let held = self.config_urls(&q.name);
            let listed = |p: &UrlPrefix| q.urls.iter().any(|u| same_url(u, p));
            for url in held.iter().filter(|p| !listed(p)).map(ToString::to_string) {
                match self.remove_url(&session, &q.name, &url) {
                    Ok(()) => report
                        .changes
                        .push(format!("queue {:?}: {url} removed", q.name)),
                    Err(e) => report.warn(format!("queue {:?}: {url}: not removed: {e}", q.name)),
                }
            }
            for url in q
                .urls
                .iter()
                .filter(|u| !held.iter().any(|p| same_url(u, p)))
            {
                let add = AddUrl {
                    url: url.clone(),
                    context: 0,
                };
                match self.add_url(&session, &q.name, &add) {
                    Ok(added) => {
                        for w in added.warnings {
                            report.warn(format!("queue {:?}: {w}", q.name));
                        }
                        if before.is_some() {
                            report
                                .changes
                                .push(format!("queue {:?}: {url} added", q.name));
                        }
                    }
                    // Like an IIS site that fails to start, the URL waits for the next
                    // reload; the daemon serves the rest.
                    Err(e) => report.warn(format!("queue {:?}: {url}: {e}", q.name)),
                }
            }
        }
        failed
    }

    /// The URLs the configuration's session holds on queue `name`.
    fn config_urls(&self, name: &str) -> Vec<UrlPrefix> {
        let st = self.lock();
        st.queues.get(name).map_or_else(Vec::new, |e| {
            e.urls
                .iter()
                .filter(|(_, owner)| **owner == Some(CONFIG_SESSION))
                .map(|(p, _)| p.clone())
                .collect()
        })
    }

    /// `GET /v1/urlacl`.
    pub(crate) fn urlacl_list(&self) -> UrlAclList {
        let st = self.lock();
        let mut reservations: Vec<ReservationInfo> = st
            .config
            .urlacls
            .iter()
            .map(|a| info_of(a, Source::Config))
            .chain(st.saved.urlacls.iter().filter_map(|a| {
                let p = UrlPrefix::parse(&a.url).ok()?;
                (st.acl_sources.get(&p) == Some(&Source::State)).then(|| info_of(a, Source::State))
            }))
            .collect();
        reservations.sort_by(|a, b| a.url.cmp(&b.url));
        UrlAclList {
            reservations,
            admin_group: st.config.admin_group.clone(),
        }
    }

    /// `POST /v1/urlacl`: administrators, and holders of the delegate right on the
    /// governing reservation, may reserve.
    pub(crate) fn urlacl_add(
        &self,
        session: &Session,
        add: &AddReservation,
    ) -> Result<ReservationInfo, ApiError> {
        let prefix = UrlPrefix::parse(&add.url).map_err(|e| {
            api(
                e.win32(),
                format!("{:?} is not a valid URL prefix: {e}", add.url),
            )
        })?;
        if add.users.is_empty() && add.groups.is_empty() {
            return Err(api(
                Win32Error::InvalidParameter,
                "a reservation grants someone: name at least one user or group",
            ));
        }
        let entry = UrlAclConfig {
            url: prefix.to_string(),
            users: add.users.clone(),
            groups: add.groups.clone(),
            listen: add.listen,
            delegate: add.delegate,
        };
        let reservation =
            reservation_of(&entry).map_err(|e| api(Win32Error::InvalidParameter, e))?;
        let mut st = self.lock();
        let st = &mut *st;
        if st.config.urlacls.iter().any(|a| same_url(&a.url, &prefix)) {
            return Err(api(
                Win32Error::AlreadyExists,
                format!(
                    "{prefix} is reserved in the configuration file: change it there and reload"
                ),
            ));
        }
        let caller = session
            .peer
            .identity
            .caller(self.is_admin(st, &session.peer));
        st.acl
            .check_reserve(&prefix, &caller)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        let mut saved = st.saved.clone();
        saved.urlacls.push(entry.clone());
        saved
            .save(&self.state_file)
            .map_err(|e| api(Win32Error::AccessDenied, format!("{e}; nothing changed")))?;
        st.saved = saved;
        st.acl
            .insert(reservation)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        st.acl_sources.insert(prefix.clone(), Source::State);
        if let Err(e) = st.table.reserve(prefix.clone()) {
            tracing::warn!("reservation {prefix} does not take part in routing: {e}");
        }
        self.publish(st);
        tracing::info!(pid = session.peer.pid, user = %session.peer.user, "reserved {prefix}");
        Ok(info_of(&entry, Source::State))
    }

    /// `DELETE /v1/urlacl`.
    pub(crate) fn urlacl_remove(
        &self,
        session: &Session,
        remove: &RemoveReservation,
    ) -> Result<(), ApiError> {
        let prefix = UrlPrefix::parse(&remove.url).map_err(|e| {
            api(
                e.win32(),
                format!("{:?} is not a valid URL prefix: {e}", remove.url),
            )
        })?;
        let mut st = self.lock();
        let st = &mut *st;
        match st.acl_sources.get(&prefix) {
            None => {
                return Err(api(
                    Win32Error::FileNotFound,
                    format!("{prefix} is not reserved"),
                ));
            }
            Some(Source::Config) => {
                return Err(api(
                    Win32Error::AccessDenied,
                    format!(
                        "{prefix} is reserved in the configuration file: remove it there and \
                         reload"
                    ),
                ));
            }
            Some(Source::State) => {}
        }
        let caller = session
            .peer
            .identity
            .caller(self.is_admin(st, &session.peer));
        let mut acl = st.acl.clone();
        acl.remove(&prefix, &caller)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        let mut saved = st.saved.clone();
        saved.urlacls.retain(|a| !same_url(&a.url, &prefix));
        saved
            .save(&self.state_file)
            .map_err(|e| api(Win32Error::AccessDenied, format!("{e}; nothing changed")))?;
        st.saved = saved;
        st.acl = acl;
        st.acl_sources.remove(&prefix);
        let _ = st.table.unreserve(&prefix);
        self.publish(st);
        tracing::info!(pid = session.peer.pid, user = %session.peer.user, "unreserved {prefix}");
        Ok(())
    }

    /// `GET /v1/iplisten`.
    pub(crate) fn iplisten_list(&self) -> IpListenList {
        let st = self.lock();
        let config = st.config.iplisten.iter().map(|a| (a, Source::Config));
        let saved = st
            .saved
            .iplisten
            .iter()
            .filter(|a| !st.config.iplisten.contains(a))
            .map(|a| (a, Source::State));
        IpListenList {
            addresses: config
                .chain(saved)
                .map(|(a, source)| IpListenEntry {
                    address: a.to_string(),
                    source,
                })
                .collect(),
            overridden_by: self
                .iplisten_flags
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// `POST /v1/iplisten` (`add`) and `DELETE /v1/iplisten`: administrators only.
    pub(crate) async fn iplisten_change(
        self: &Arc<Self>,
        session: &Session,
        change: &IpListenChange,
        add: bool,
    ) -> Result<IpListenList, ApiError> {
        let ip: IpAddr = change.address.trim().parse().map_err(|_| {
            api(
                Win32Error::InvalidParameter,
                format!(
                    "{:?} is not an IP address (no port, no brackets: 10.0.0.1 or ::1)",
                    change.address
                ),
            )
        })?;
        {
            let mut st = self.lock();
            let st = &mut *st;
            if !self.is_admin(st, &session.peer) {
                return Err(api(
                    Win32Error::AccessDenied,
                    "only root, the daemon's user or a member of the admin group may change the \
                     IP listen list",
                ));
            }
            if st.config.iplisten.contains(&ip) {
                return Err(api(
                    if add {
                        Win32Error::AlreadyExists
                    } else {
                        Win32Error::AccessDenied
                    },
                    format!(
                        "{ip} is in the configuration file's listen list: change it there and reload"
                    ),
                ));
            }
            let mut saved = st.saved.clone();
            match (add, saved.iplisten.contains(&ip)) {
                (true, true) => {
                    return Err(api(
                        Win32Error::AlreadyExists,
                        format!("{ip} is in the listen list already"),
                    ));
                }
                (false, false) => {
                    return Err(api(
                        Win32Error::FileNotFound,
                        format!("{ip} is not in the listen list"),
                    ));
                }
                (true, false) => saved.iplisten.push(ip),
                (false, true) => saved.iplisten.retain(|a| *a != ip),
            }
            saved
                .save(&self.state_file)
                .map_err(|e| api(Win32Error::AccessDenied, format!("{e}; nothing changed")))?;
            st.saved = saved;
        }
        let mut report = Report::default();
        self.apply_listen_list(&mut report).await;
        tracing::info!(pid = session.peer.pid, user = %session.peer.user,
            "listen list: {} {ip}", if add { "added" } else { "deleted" });
        Ok(self.iplisten_list())
    }

    /// `POST /v1/reload` from a control connection: administrators only.
    pub(crate) async fn reload_for(
        self: &Arc<Self>,
        session: &Session,
    ) -> Result<ReloadReport, ApiError> {
        let admin = {
            let st = self.lock();
            self.is_admin(&st, &session.peer)
        };
        if !admin {
            return Err(api(
                Win32Error::AccessDenied,
                "only root, the daemon's user or a member of the admin group may reload",
            ));
        }
        self.reload().await
    }
}
