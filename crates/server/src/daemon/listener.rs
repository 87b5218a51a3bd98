//! Listeners: one socket per (address, port) in the listen list, bound when the first
//! registration needs the port and closed with the last; the accept loop that hands each
//! client connection to the data path; and the listen list itself (`--iplisten`, the
//! configuration, the state file).
//!
//! A listener belongs to the daemon's state and changes under its lock; its accept loop is
//! a task of its own that reads only [`Shared`].

use std::collections::BTreeSet;

use portshare_proto::control::{IpListenChange, IpListenEntry, IpListenList};

use tracing::Instrument;

use super::reload::Report;
use super::*;

#[derive(Debug)]
pub(super) struct Listener {
    pub(super) task: Option<JoinHandle<()>>,
    pub(super) connections: Arc<AtomicU64>,
}

impl Listener {
    /// Stops accepting; the socket is closed once the returned task has ended.
    pub(super) fn close(mut self) -> Option<JoinHandle<()>> {
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

/// Whether a socket bound to `bound` receives connections for `ip`.
pub(super) fn serves(bound: IpAddr, ip: IpAddr) -> bool {
    bound == ip || (bound.is_unspecified() && bound.is_ipv4() == ip.to_canonical().is_ipv4())
}

pub(super) fn bind_error(e: &BindError) -> ApiError {
    ApiError::new(e.win32(), e.to_string())
}

/// One connection counted against its listener until dropped.
struct Counted(Arc<AtomicU64>);

impl Counted {
    fn new(count: &Arc<AtomicU64>) -> Counted {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    connections: Arc<AtomicU64>,
    counters: Arc<crate::metrics::PortCounters>,
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
                let counters = counters.clone();
                // The socket's own address: with a wildcard listener, the address the
                // client reached.
                let local = io.local_addr().unwrap_or(local);
                // Counted for the listener as long as the task lives, however it ends.
                let counted = Counted::new(&connections);
                // Everything the connection logs carries both addresses, at debug level:
                // an enabled span is entered and left on every poll of the connection, a
                // cost per request the default level does not pay.
                let span = tracing::debug_span!("conn", client.addr = %peer, server.addr = %local);
                tokio::spawn(
                    async move {
                        // Behind a load balancer, the header names the client first.
                        let mut io = io;
                        let proxied =
                            crate::proxy::required(&shared.settings.load().proxy_listeners, local);
                        let peer = if proxied {
                            match crate::proxy::accept(&shared, &mut io, peer, local).await {
                                Some(client) => client,
                                None => return drop((counted, place)),
                            }
                        } else {
                            peer
                        };
                        // A port serves one scheme (spec §1.3): https if what is
                        // registered on it is.
                        // A port held for TLS-ALPN-01 challenges is TLS too.
                        let https = shared
                            .table
                            .load()
                            .listens(portshare_router::Scheme::Https, local.port())
                            || shared.challenges.load().alpn_on(local.port());
                        let open = counters.accepted(https);
                        if https {
                            // Boxed: the handshake's and HTTP/2's state would otherwise
                            // make every plain connection's task as large as theirs.
                            Box::pin(crate::tls::serve(shared, io, peer, local)).await;
                        } else {
                            crate::conn::serve(shared, io, peer, local).await;
                        }
                        drop((counted, place, open));
                    }
                    .instrument(span),
                );
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
pub(super) async fn shed_clients(
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

impl Daemon {
    /// The addresses to bind for a port: the listen list, else both wildcards. An entry the
    /// machine does not own (`foreign`) is skipped, and so is one a wildcard of its family in
    /// the list already covers: on Linux `0.0.0.0:P` and `127.0.0.1:P` cannot both listen,
    /// and the wildcard's connections carry the address the client reached all the same.
    pub(super) fn addresses(iplisten: &[IpAddr], foreign: &[IpAddr], port: u16) -> Vec<SocketAddr> {
        if iplisten.is_empty() {
            return vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ];
        }
        let any_v4 = iplisten.contains(&IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let any_v6 = iplisten.contains(&IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let covered =
            |ip: &IpAddr| !ip.is_unspecified() && if ip.is_ipv4() { any_v4 } else { any_v6 };
        iplisten
            .iter()
            .filter(|ip| !foreign.contains(ip) && !covered(ip))
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    }

    /// The entries of `list` this machine does not own, each reported: binding them would
    /// fail every registration on a new port.
    pub(super) fn foreign(list: &[IpAddr], report: &mut Report) -> Vec<IpAddr> {
        let foreign: Vec<IpAddr> = list
            .iter()
            .filter(|ip| !ip.is_unspecified())
            .filter(|ip| matches!(bind::check_local(**ip), Err(BindError::NotLocal { .. })))
            .copied()
            .collect();
        for ip in &foreign {
            report.warn(crate::config::foreign_address_warning(*ip));
        }
        foreign
    }

    /// Binds every address of a port, or none: a half-done bind is rolled back. An address
    /// another socket holds is refused without naming the holder: the failure is left in
    /// `held` for [`Daemon::name_held`], once the lock is let go.
    pub(super) fn bind_port(
        &self,
        st: &mut State,
        port: u16,
        held: &mut Option<BindError>,
    ) -> Result<(), ApiError> {
        if self.shared.stopping() {
            return Ok(()); // nothing new listens while the daemon stops
        }
        let addresses = Daemon::addresses(&st.iplisten, &st.foreign, port);
        self.may_listen(st, addresses.len())?;
        let mut bound = Vec::new();
        for addr in addresses {
            match bind::listen(addr, 1024) {
                Ok(l) => bound.push((addr, l)),
                Err(BindError::NoIpv6 { .. }) if st.iplisten.is_empty() => {
                    tracing::warn!(%addr, port, "this host has no IPv6: the port is served on IPv4 only");
                }
                Err(e) => {
                    drop(bound);
                    // Kept for the state view until the address binds or the port is let go.
                    let refusal = bind_error(&e);
                    st.bind_failures.insert(addr, refusal.clone());
                    if e.in_use().is_some() {
                        *held = Some(e);
                    } else {
                        tracing::warn!(%addr, error = %e, "cannot listen");
                    }
                    return Err(refusal);
                }
            }
        }
        for (addr, l) in bound {
            self.start_listener(st, addr, l);
        }
        Ok(())
    }

    /// Names who holds the address of a failed bind (a scan of `/proc`: call it on the
    /// blocking pool, without the lock), and puts the named refusal in the state view.
    pub(super) fn name_held(&self, mut e: BindError) -> ApiError {
        e.name_holder();
        let refusal = bind_error(&e);
        if let Some(addr) = e.in_use() {
            tracing::warn!(%addr, error = %e, "cannot listen");
            if let Some(failure) = self.lock().bind_failures.get_mut(&addr) {
                *failure = refusal.clone();
            }
        }
        refusal
    }

    pub(super) fn start_listener(
        &self,
        st: &mut State,
        addr: SocketAddr,
        l: tokio::net::TcpListener,
    ) {
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            self.shared.clone(),
            l,
            addr,
            connections.clone(),
            self.shared.metrics.port(addr),
        ));
        tracing::info!(%addr, "listening");
        st.bind_failures.remove(&addr);
        st.listeners.insert(
            addr,
            Listener {
                task: Some(task),
                connections,
            },
        );
    }

    /// Forgets the bind failures of ports nothing needs: no registration, no ACME
    /// challenge, no URL of a configuration queue waiting for its port.
    pub(super) fn prune_bind_failures(st: &mut State) {
        let needed = |port: u16| {
            st.table
                .ports()
                .any(|(scheme, p)| p == port && st.table.listens(scheme, p))
                || st.acme_ports.contains_key(&port)
                || st.config.queues.iter().any(|q| {
                    q.urls
                        .iter()
                        .any(|u| UrlPrefix::parse(u).is_ok_and(|p| p.port() == port))
                })
        };
        let gone: Vec<SocketAddr> = st
            .bind_failures
            .keys()
            .filter(|a| !needed(a.port()))
            .copied()
            .collect();
        for addr in gone {
            st.bind_failures.remove(&addr);
        }
    }

    /// Stops the listeners of `port`. Each socket closes when its task ends, on a runtime
    /// thread, a moment later: until then the task waits in `closing`.
    pub(super) fn release_port(st: &mut State, port: u16) {
        st.bind_failures.retain(|addr, _| addr.port() != port);
        st.closing.retain(|_, task| !task.is_finished());
        let gone: Vec<SocketAddr> = st
            .listeners
            .keys()
            .filter(|a| a.port() == port)
            .copied()
            .collect();
        for addr in gone {
            tracing::info!(%addr, "closed: nothing is registered on its port");
            if let Some(task) = st.listeners.remove(&addr).and_then(Listener::close) {
                st.closing.insert(addr, task);
            }
        }
    }

    /// Waits (on the blocking pool, without the lock) for the listener of `addr` the daemon
    /// let go to close, so that the address binds again. Whether there was one.
    pub(super) fn wait_closed(&self, addr: SocketAddr) -> bool {
        let Some(task) = self.lock().closing.remove(&addr) else {
            return false;
        };
        // An aborted accept loop ends at its next poll, on a runtime thread; the bound is
        // only for safety.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !task.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    pub(super) fn listening_for(&self, st: &State, prefix: &UrlPrefix) -> Vec<String> {
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

    /// What a registration should know: no certificate binding covers an https prefix's
    /// port (spec §10: it registers, and clients fail at the handshake); nothing listens
    /// for it. The state view shows the last.
    pub(super) fn warnings(
        &self,
        st: &State,
        prefix: &UrlPrefix,
        listening: &[String],
    ) -> Vec<String> {
        let mut out = Vec::new();
        if prefix.scheme() == Scheme::Https && !self.shared.tls.load().covers_port(prefix.port()) {
            out.push(format!(
                "no certificate binding covers port {} ([[sslcert]] in the configuration): \
                 the registration stands, but TLS handshakes on that port fail",
                prefix.port()
            ));
        }
        if listening.is_empty() {
            out.push(format!(
                "nothing listens for {prefix}: {}; the registration stands, but clients cannot \
                 reach it",
                Daemon::why_not_listening(st, prefix)
            ));
        }
        out
    }

    /// Why no socket serves `prefix`: the bind failures of its port, its address missing
    /// from the listen list, or a list with no address of this machine.
    fn why_not_listening(st: &State, prefix: &UrlPrefix) -> String {
        let list = match st.iplisten.as_slice() {
            [] => "empty: every address".to_owned(),
            l => l
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut failed: Vec<String> = st
            .bind_failures
            .keys()
            .filter(|a| a.port() == prefix.port())
            .map(ToString::to_string)
            .collect();
        failed.sort();
        if !failed.is_empty() {
            return format!(
                "{} cannot be bound (see Bind failures)",
                failed.join(" and ")
            );
        }
        let listed =
            |ip: &IpAddr| st.iplisten.is_empty() || st.iplisten.iter().any(|l| serves(*l, *ip));
        match prefix.host() {
            Host::Ip(ip) if st.foreign.contains(ip) => {
                format!("{ip} is in the IP listen list but is no address of this machine")
            }
            Host::Ip(ip) if !listed(ip) => {
                format!("{ip} is not in the IP listen list ({list})")
            }
            _ if !st.iplisten.is_empty() && st.iplisten.iter().all(|i| st.foreign.contains(i)) => {
                format!("the IP listen list ({list}) holds no address of this machine")
            }
            _ => format!(
                "no address of the IP listen list ({list}) is bound on port {}",
                prefix.port()
            ),
        }
    }

    /// The registered prefixes some socket serves now.
    fn reachable(&self, st: &State) -> Vec<UrlPrefix> {
        st.table
            .iter()
            .map(|r| r.prefix())
            .filter(|p| !self.listening_for(st, p).is_empty())
            .cloned()
            .collect()
    }

    /// The listen list in force: the `--iplisten` flags, else the configuration's list and
    /// the state file's.
    pub(super) fn listen_list(&self, st: &State) -> Vec<IpAddr> {
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
    ///
    /// Blocking: it waits for accept tasks to end and names the holders of taken addresses
    /// through `/proc`. Call it on the blocking pool; the lock is held only to decide and to
    /// bind, never while waiting or scanning.
    pub(super) fn apply_listen_list(self: &Arc<Self>, report: &mut Report) {
        let (closing, reachable): (Vec<JoinHandle<()>>, Vec<UrlPrefix>) = {
            let mut st = self.lock();
            let reachable = self.reachable(&st);
            let new = self.listen_list(&st);
            let same =
                new.len() == st.iplisten.len() && new.iter().all(|a| st.iplisten.contains(a));
            let foreign = Daemon::foreign(&new, report);
            if same && foreign == st.foreign && st.bind_failures.is_empty() {
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
            st.foreign = foreign;
            let (iplisten, foreign) = (st.iplisten.clone(), st.foreign.clone());
            let gone: Vec<_> = st
                .listeners
                .keys()
                .filter(|a| !Daemon::addresses(&iplisten, &foreign, a.port()).contains(a))
                .copied()
                .collect();
            let closing = gone
                .into_iter()
                .filter_map(|a| {
                    tracing::info!(addr = %a, "closing: not in the listen list any more");
                    st.listeners.remove(&a).and_then(Listener::close)
                })
                .collect();
            (closing, reachable)
        };
        if !closing.is_empty() {
            let runtime = tokio::runtime::Handle::current();
            for task in closing {
                let _ = runtime.block_on(task);
            }
        }
        let mut held = Vec::new();
        let mut st = self.lock();
        let ports: BTreeSet<u16> = st
            .table
            .ports()
            .filter(|&(scheme, port)| st.table.listens(scheme, port))
            .map(|(_, port)| port)
            .chain(st.acme_ports.keys().copied())
            .collect();
        st.bind_failures.retain(|a, _| ports.contains(&a.port()));
        for port in ports {
            for addr in Daemon::addresses(&st.iplisten, &st.foreign, port) {
                if st.listeners.contains_key(&addr) {
                    continue;
                }
                match bind::listen(addr, 1024) {
                    Ok(l) => self.start_listener(&mut st, addr, l),
                    Err(BindError::NoIpv6 { .. }) if st.iplisten.is_empty() => {}
                    Err(e) => {
                        st.bind_failures.insert(addr, bind_error(&e));
                        if e.in_use().is_some() {
                            held.push(e);
                        } else {
                            report.warn(format!("cannot listen on {addr}: {e}"));
                        }
                    }
                }
            }
        }
        self.publish(&mut st);
        drop(st);
        for e in held {
            let refusal = self.name_held(e);
            report.warn(format!("cannot listen: {}", refusal.message));
        }
        // Say which URLs the change left unreachable: the registrations stand, and nothing
        // else would tell.
        let st = self.lock();
        for prefix in reachable {
            if st.table.get(&prefix).is_some() && self.listening_for(&st, &prefix).is_empty() {
                report.warn(format!(
                    "{prefix} stops listening: {}; the registration stands, but clients cannot \
                     reach it",
                    Daemon::why_not_listening(&st, &prefix)
                ));
            }
        }
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
            warnings: Vec::new(),
        }
    }

    /// `POST /v1/iplisten` (`add`) and `DELETE /v1/iplisten`: administrators only.
    /// Blocking (the state file, the listeners): call it on the blocking pool.
    pub(crate) fn iplisten_change(
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
        let _one_at_a_time = self.one_change();
        let saved = {
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
        };
        // Written without the lock (see `changing`).
        self.save_state(&saved)?;
        self.lock().saved = saved;
        let mut report = Report::default();
        self.apply_listen_list(&mut report);
        let change = if add { "added" } else { "deleted" };
        tracing::info!(pid = session.peer.pid, user = %session.peer.user, %ip, change,
            "listen list changed");
        Ok(IpListenList {
            warnings: report.warnings,
            ..self.iplisten_list()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter()
            .map(|s| s.parse().expect("an address"))
            .collect()
    }

    #[test]
    fn a_wildcard_covers_the_addresses_of_its_family_and_foreign_ones_are_skipped() {
        let bound = |list: &[&str], foreign: &[&str]| -> Vec<String> {
            Daemon::addresses(&ips(list), &ips(foreign), 80)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(bound(&[], &[]), ["0.0.0.0:80", "[::]:80"]);
        assert_eq!(
            bound(&["0.0.0.0", "127.0.0.1", "::1"], &[]),
            ["0.0.0.0:80", "[::1]:80"]
        );
        assert_eq!(
            bound(&["::", "::1", "127.0.0.1"], &[]),
            ["[::]:80", "127.0.0.1:80"]
        );
        assert_eq!(
            bound(&["127.0.0.1", "192.0.2.1"], &["192.0.2.1"]),
            ["127.0.0.1:80"]
        );
    }

    #[test]
    fn addresses_this_machine_lacks_are_found_and_reported() {
        let mut report = Report::default();
        let foreign = Daemon::foreign(&ips(&["127.0.0.1", "0.0.0.0", "192.0.2.1"]), &mut report);
        assert_eq!(foreign, ips(&["192.0.2.1"]));
        assert_eq!(report.warnings.len(), 1);
        assert!(
            report.warnings[0].contains("192.0.2.1"),
            "{:?}",
            report.warnings
        );
    }
}
