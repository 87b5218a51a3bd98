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

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use portshare_proto::control::{AddUrl, ApiError, OpenMode, QueueSpec, ReloadReport};
use portshare_router::{UrlPrefix, Win32Error};

use super::{Applied, CONFIG_SESSION, Daemon, Session, State, api};
use crate::access::Access;
use crate::config::{Config, QueueConfig, StateFile};
use crate::shared::Settings;
use crate::{accesslog, errlog};

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

/// The configuration's URL changes of one queue, applied with every other queue's.
#[derive(Debug)]
struct UrlChanges {
    queue: String,
    /// URLs it holds that the configuration no longer lists.
    remove: Vec<Arc<UrlPrefix>>,
    /// URLs the configuration lists that it does not hold (new, or failed before).
    add: Vec<String>,
    /// Report each URL added as a change (not at start, nor for a queue new in this
    /// reload).
    announce: bool,
}

/// What a load or reload changed, and what did not work.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) changes: Vec<String>,
    pub(super) warnings: Vec<String>,
}

impl Report {
    /// Adds a warning, once: two checks may find the same thing (the configuration's
    /// listen list is checked with the file and again as the list in force).
    pub(super) fn warn(&mut self, w: String) {
        if self.warnings.contains(&w) {
            return;
        }
        tracing::warn!("{w}");
        self.warnings.push(w);
    }
}

impl Daemon {
    /// Applies the configuration and the state file at start; returns the warnings.
    pub(crate) fn load(self: &Arc<Self>) -> Result<Vec<String>, crate::Error> {
        let saved = StateFile::load(&self.state_file)?;
        let mut report = Report::default();
        let config = self.lock().config.clone();
        for w in config.warnings() {
            report.warn(w);
        }
        // The configuration's bindings and the state file's (see `sslcerts`).
        let bindings = self
            .sslcert_bindings(&config, &saved.sslcert, None, &mut report)
            .map_err(crate::Error::config)?;
        self.shared.tls.store(Arc::new(bindings));
        let access =
            accesslog::Log::open(&config.access_log, self.own_uid).map_err(crate::Error::config)?;
        let mut settings = Settings::new(&config, self.shared.settings.load().errlog.clone());
        settings.access = Arc::new(access);
        self.shared.settings.store(Arc::new(settings));
        let queues = {
            let mut st = self.lock();
            st.saved = saved;
            self.apply_acl(&mut st, &mut report);
            st.iplisten = self.listen_list(&st);
            st.foreign = Daemon::foreign(&st.iplisten, &mut report);
            st.config.queues.clone()
        };
        let failed = self.sync_queues(&[], &queues, true, &mut report);
        if !failed.is_empty() {
            return Err(crate::Error::config(failed.join("; ")));
        }
        self.acme_start();
        Ok(report.warnings)
    }

    /// `POST /v1/reload` and SIGHUP: reads the configuration file again and applies it. A
    /// file that does not parse or check changes nothing.
    ///
    /// Blocking (the file, the group database, the listeners): call it on the blocking pool,
    /// where it waits for any other change to finish first.
    pub(crate) fn reload(self: &Arc<Self>) -> Result<ReloadReport, ApiError> {
        let _one_at_a_time = self.one_change();
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
        // What `portshare check-config` says of the same file (the account databases and
        // the machine's addresses are asked before the lock is taken).
        for w in new.warnings() {
            report.warn(w);
        }
        // Certificates are read before anything changes: a binding whose files cannot be
        // used refuses the whole file.
        // With the state file's bindings, which the configuration's shadow (see `sslcerts`).
        let saved = self.lock().saved.sslcert.clone();
        let bindings = self
            .sslcert_bindings(&new, &saved, None, &mut report)
            .map_err(|e| {
                api(
                    Win32Error::InvalidData,
                    format!("{e}; the daemon keeps its current configuration"),
                )
            })?;
        // The access log's folder is checked (and its writer started) before anything
        // changes: a folder the daemon may not use refuses the whole file.
        let access = if self.lock().config.access_log == new.access_log {
            None
        } else {
            let log = accesslog::Log::open(&new.access_log, self.own_uid).map_err(|e| {
                api(
                    Win32Error::InvalidData,
                    format!("{e}; the daemon keeps its current configuration"),
                )
            })?;
            Some(Arc::new(log))
        };
        // The group database is asked before the lock is taken.
        let admin_gid = new
            .admin_group
            .as_deref()
            .and_then(crate::identity::resolve_group);
        let old = {
            let mut st = self.lock();
            st.admin_gid = admin_gid;
            let old = std::mem::replace(&mut st.config, new.clone());
            self.apply_settings(&mut st, &old, access, &mut report);
            if old.admin_group != new.admin_group {
                report.changes.push(format!(
                    "admin group: {} -> {}",
                    old.admin_group.as_deref().unwrap_or("(none)"),
                    new.admin_group.as_deref().unwrap_or("(none)")
                ));
            }
            self.apply_acl(&mut st, &mut report);
            self.publish(&mut st);
            // New handshakes use the certificates as read now (their files may have
            // changed under the same paths); sessions already made keep theirs.
            self.shared.tls.store(Arc::new(bindings));
            if !new.sslcerts.is_empty() || !old.sslcerts.is_empty() {
                report
                    .changes
                    .push("certificate bindings, for new connections".into());
            }
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
        if old.metrics != new.metrics {
            report.warn("metrics.listen changed: it applies when the daemon restarts".into());
        }
        if old.control.limits() != new.control.limits() {
            report.changes.push("control limits".into());
        }
        self.apply_listen_list(&mut report);
        self.sync_queues(&old.queues, &new.queues, false, &mut report);
        self.acme_start();
        tracing::info!(
            config = %path.display(),
            changes = report.changes.len(),
            "reloaded"
        );
        Ok(ReloadReport {
            config: path.display().to_string(),
            changes: report.changes,
            warnings: report.warnings,
        })
    }

    /// Swaps in new limits, timers, error log, access log (`access`, opened when it
    /// changed), PROXY listeners and trusted proxies if they changed (for connections
    /// accepted, and requests read, from then on).
    fn apply_settings(
        &self,
        st: &mut State,
        old: &Config,
        access: Option<Arc<accesslog::Log>>,
        report: &mut Report,
    ) {
        let new = &st.config;
        let listeners = old.listeners != new.listeners;
        let trusted = old.trusted_proxies != new.trusted_proxies;
        if old.limits == new.limits
            && old.timers == new.timers
            && old.errlog == new.errlog
            && access.is_none()
            && !listeners
            && !trusted
        {
            return;
        }
        if listeners {
            report.changes.push("listeners (PROXY protocol)".into());
        }
        if trusted {
            report.changes.push("trusted proxies".into());
        }
        let current = self.shared.settings.load_full();
        let errlog = if old.errlog == new.errlog {
            current.errlog.clone()
        } else {
            report.changes.push("error log settings".into());
            Arc::new(errlog::Log::open(&new.errlog))
        };
        let access = match access {
            Some(log) => {
                report.changes.push("access log settings".into());
                log
            }
            None => current.access.clone(),
        };
        if old.limits != new.limits {
            report.changes.push("limits".into());
        }
        if old.timers != new.timers {
            report.changes.push("timers".into());
        }
        let mut settings = Settings::new(new, errlog);
        settings.access = access;
        self.shared.settings.store(Arc::new(settings));
        self.shared.connections.recheck();
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
        {
            let mut st = self.lock();
            let mut closed = false;
            for q in old.iter().filter(|q| !new.iter().any(|n| n.name == q.name)) {
                if st.queues.get(&q.name).is_some_and(|e| e.config) {
                    st.config_queues.remove(&q.name);
                    self.destroy(&mut st, &q.name);
                    closed = true;
                    report.changes.push(format!("queue {:?} closed", q.name));
                }
            }
            if closed {
                self.publish(&mut st);
            }
        }
        // Every queue's URL changes, applied together once the queues are in place.
        let mut url_changes = Vec::new();
        // An access list changed took URLs off the table: published with the URLs.
        let mut republish = false;
        for q in new {
            let props = q.props();
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
                        https_redirect: q.https_redirect,
                        strip_prefix: q.strip_prefix,
                        pipeline: q.pipeline,
                        ..QueueSpec::default()
                    };
                    if let Err(e) = self.open_queue(&session, &spec, q.connections, Some(access)) {
                        let w = format!("queue {:?}: not created: {e}", q.name);
                        report.warn(w.clone());
                        failed.push(w);
                        continue;
                    }
                    self.lock().config_queues.insert(q.name.clone(), q.clone());
                    if !initial {
                        report.changes.push(format!("queue {:?} created", q.name));
                    }
                }
                Some((true, _)) => {
                    // Compared with what is in force, not with the previous file: a change
                    // reverted before a restart is no change.
                    let in_force = self.lock().config_queues.get(&q.name).cloned();
                    let b = in_force
                        .or_else(|| before.cloned())
                        .unwrap_or_else(|| q.clone());
                    if b.upstream != q.upstream
                        || b.connections != q.connections
                        || b.strip_prefix != q.strip_prefix
                        || b.pipeline != q.pipeline
                    {
                        report.warn(format!(
                            "queue {:?}: upstream, connections, strip_prefix and pipeline apply \
                             when the daemon restarts",
                            q.name
                        ));
                    }
                    if b.https_redirect != q.https_redirect {
                        report.warn(format!(
                            "queue {:?}: https_redirect applies when the daemon restarts",
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
                        republish = true;
                        report.changes.push(format!("queue {:?} access", q.name));
                    }
                }
            }
            // What the queue holds now, so a URL that failed before is tried again.
            // Compared as sets (equal by HTTP.sys's rules, whatever the spelling): a queue
            // may hold many URLs.
            let held = self.config_urls(&q.name);
            let holds: HashSet<&UrlPrefix> = held.iter().map(|p| p.as_ref()).collect();
            let listed: HashSet<UrlPrefix> = q
                .urls
                .iter()
                .filter_map(|u| UrlPrefix::parse(u).ok())
                .collect();
            url_changes.push(UrlChanges {
                queue: q.name.clone(),
                remove: held
                    .iter()
                    .filter(|p| !listed.contains(p.as_ref()))
                    .cloned()
                    .collect(),
                // One that does not parse is tried, to be reported.
                add: q
                    .urls
                    .iter()
                    .filter(|u| !UrlPrefix::parse(u).is_ok_and(|p| holds.contains(&p)))
                    .cloned()
                    .collect(),
                announce: before.is_some(),
            });
        }
        self.apply_config_urls(&session, &url_changes, republish, report);
        failed
    }

    /// Applies the configuration's URL changes of every queue under one lock, and
    /// publishes the route table once: removals first (so a URL moved from one queue to
    /// another is free for it), then additions. Each addition stands on its own: like an
    /// IIS site that fails to start, a URL that fails (a port another program holds, a
    /// prefix another queue holds) waits for the next reload, reported, and the daemon
    /// serves the rest. `republish`: the table changed already and must be published.
    fn apply_config_urls(
        self: &Arc<Self>,
        session: &Session,
        changes: &[UrlChanges],
        mut republish: bool,
        report: &mut Report,
    ) {
        let known_as = session.known_as.clone();
        // Ports another program holds, named once the lock is let go.
        let mut held_by_others = Vec::new();
        let mut refused = false;
        {
            let mut st = self.lock();
            let st = &mut *st;
            for c in changes {
                for prefix in &c.remove {
                    match self.remove_locked(
                        st,
                        session,
                        &c.queue,
                        prefix,
                        "removed from the configuration",
                    ) {
                        Ok(()) => {
                            republish = true;
                            report
                                .changes
                                .push(format!("queue {:?}: {prefix} removed", c.queue));
                        }
                        Err(e) => {
                            report.warn(format!("queue {:?}: {prefix}: not removed: {e}", c.queue))
                        }
                    }
                }
            }
            let caller = known_as.admin(self.is_admin(st, &session.peer));
            for c in changes {
                let Some(queue) = st.queues.get(&c.queue).map(|e| e.queue.clone()) else {
                    continue;
                };
                for url in &c.add {
                    let add = AddUrl {
                        url: url.clone(),
                        context: 0,
                    };
                    let prefix = match UrlPrefix::parse(url) {
                        Ok(p) => Arc::new(p),
                        Err(e) => {
                            report.warn(format!("queue {:?}: {url}: {e}", c.queue));
                            continue;
                        }
                    };
                    // The configuration's URLs have no cap.
                    let (mut room, mut held) = (None, None);
                    let added = self.add_one(
                        st, session, &c.queue, &queue, &caller, &add, prefix, &mut room, &mut held,
                    );
                    match (added, held) {
                        (Ok((done, answer)), _) => {
                            if let Applied::New(prefix) = done {
                                republish = true;
                                tracing::info!(queue = %c.queue, %prefix, "registered");
                            }
                            for w in answer.warnings {
                                report.warn(format!("queue {:?}: {w}", c.queue));
                            }
                            if c.announce {
                                report
                                    .changes
                                    .push(format!("queue {:?}: {url} added", c.queue));
                            }
                        }
                        (Err(_), Some(e)) => {
                            refused = true;
                            held_by_others.push((c.queue.clone(), url.clone(), e));
                        }
                        (Err(e), None) => {
                            refused = true;
                            report.warn(format!("queue {:?}: {url}: {e}", c.queue));
                        }
                    }
                }
            }
            if republish {
                self.publish(st);
            }
        }
        for (queue, url, e) in held_by_others {
            let e = self.name_held(e);
            report.warn(format!("queue {queue:?}: {url}: {e}"));
        }
        if refused {
            Daemon::prune_bind_failures(&mut self.lock());
        }
    }

    /// The URLs the configuration's session holds on queue `name`.
    fn config_urls(&self, name: &str) -> Vec<Arc<UrlPrefix>> {
        let st = self.lock();
        st.queues.get(name).map_or_else(Vec::new, |e| {
            e.urls
                .iter()
                .filter(|(_, owner)| **owner == Some(CONFIG_SESSION))
                .map(|(p, _)| p.clone())
                .collect()
        })
    }

    /// `POST /v1/reload` from a control connection: administrators only.
    pub(crate) fn reload_for(
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
        self.reload()
    }
}
