//! The state view (`GET /v1/state`): what the daemon holds, as a caller may see it, whole
//! or narrowed by a [`StateFilter`]. Reads the state under its lock and copies it out;
//! changes nothing.

use portshare_proto::control::{ServiceTimers, StateFilter, UrlLimits};

use super::*;

/// The queue as the control API shows it, its request-queue timer the one in force.
pub(super) fn info(entry: &QueueEntry, props: Props, created: bool, shared: &Shared) -> QueueInfo {
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
        queue_timer_ms: props
            .timers
            .request_queue(&shared.settings.load().timers)
            .as_millis(),
        limits: props.limits(),
        upstream: q.upstream().map(|u| u.address.to_string()),
        held: entry.held(),
        urls,
        access: entry.access.entries(),
    }
}

impl Daemon {
    /// `GET /v1/state`, as `viewer` may see it: the processes attached to a queue (their
    /// pids, users and command lines) only for administrators, the queue's owner and the
    /// accounts on its access list. `filter` narrows it (see [`StateFilter`]); what it
    /// leaves is shown as in the whole view.
    pub(crate) fn state(&self, viewer: &Session, filter: &StateFilter) -> ServiceState {
        let st = self.lock();
        let admin = self.is_admin(&st, &viewer.peer);
        let on_port = |port: u16| filter.port.is_none_or(|p| p == port);
        let narrows_urls = filter.port.is_some() || filter.url.is_some();
        let mut listeners: Vec<ListenerState> = st
            .listeners
            .iter()
            .filter(|(a, _)| on_port(a.port()))
            .map(|(a, l)| ListenerState {
                address: a.to_string(),
                connections: l.connections.load(Ordering::Relaxed),
            })
            .collect();
        listeners.sort_by(|a, b| a.address.cmp(&b.address));
        let mut prefixes: Vec<PrefixState> = st
            .table
            .iter()
            .filter(|r| {
                filter.is_empty()
                    || filter.shows_url(
                        &r.prefix().to_string(),
                        r.prefix().port(),
                        r.value().queue.name(),
                    )
            })
            .map(|r| {
                let listening = self.listening_for(&st, r.prefix());
                PrefixState {
                    url: r.prefix().to_string(),
                    queue: r.value().queue.name().to_owned(),
                    context: r.value().context,
                    warning: self.warnings(&st, r.prefix(), &listening).pop(),
                    listening,
                }
            })
            .collect();
        prefixes.sort_by(|a, b| a.url.cmp(&b.url));
        let timers = self.shared.settings.load().timers;
        // A queue's URLs as the filter shows them (all of them without `port` and `url`).
        let shown_urls = |e: &QueueEntry| -> Vec<String> {
            e.urls
                .keys()
                .map(|p| (p.to_string(), p.port()))
                .filter(|(url, port)| filter.shows_url_text(url, *port))
                .map(|(url, _)| url)
                .collect()
        };
        let mut queues: Vec<QueueState> = st
            .queues
            .iter()
            .filter(|(name, _)| filter.queue.as_deref().is_none_or(|q| q == name.as_str()))
            .filter_map(|(name, e)| {
                let urls = shown_urls(e);
                (!narrows_urls || !urls.is_empty()).then_some((name, e, urls))
            })
            .map(|(name, e, mut urls)| {
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
                            p.buffered += w.buffered() as u64;
                            p.served += w.served();
                        }
                        None => processes.push(ProcessState {
                            pid: w.peer.pid,
                            uid: w.peer.uid,
                            user: portshare_proto::text::printable(&w.peer.user).into_owned(),
                            command: portshare_proto::text::printable(&w.peer.command).into_owned(),
                            slots,
                            busy,
                            buffered: w.buffered() as u64,
                            served: w.served(),
                        }),
                    }
                }
                urls.sort();
                QueueState {
                    name: name.clone(),
                    owner_uid: q.owner_uid(),
                    owner_user: identity::display_user(q.owner_uid()),
                    length: props.length,
                    verbosity: props.verbosity,
                    enabled: props.enabled,
                    linger_ms: props.linger.as_millis() as u64,
                    queue_timer_ms: props.timers.request_queue(&timers).as_millis(),
                    limits: props.limits(),
                    connections: q.connections(),
                    lingering: e.lingering.is_some(),
                    config: e.config,
                    access: e.access.entries(),
                    upstream: q.upstream().map(|u| u.address.to_string()),
                    held: e.held(),
                    upstream_refused: q.upstream().and_then(|u| u.refused()),
                    https_redirect: q.https_redirect(),
                    depth,
                    oldest_wait_ms: oldest.map_or(0, |d| d.as_millis() as u64),
                    in_flight,
                    opaque: q.opaque(),
                    urls,
                    processes_hidden: !shown,
                    processes,
                    counters: q.counters(),
                }
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let mut reservations: Vec<String> = st
            .acl
            .iter()
            .map(|r| (r.prefix().to_string(), r.prefix().port()))
            .filter(|(url, port)| filter.shows_url_text(url, *port))
            .map(|(url, _)| url)
            .collect();
        reservations.sort();
        ServiceState {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            iplisten: st.iplisten.iter().map(|i| i.to_string()).collect(),
            listeners,
            bind_failures: st
                .bind_failures
                .iter()
                .filter(|(a, _)| on_port(a.port()))
                .map(|(a, e)| BindFailure {
                    address: a.to_string(),
                    error: e.clone(),
                })
                .collect(),
            prefixes,
            reservations,
            queues,
            budget: Some(self.budget_state(&st)),
            buffers: self.shared.buffers.gauge(),
            access_log_dropped: self.shared.settings.load().access.dropped(),
            url_limits: Some(UrlLimits {
                segment_max_length: st.config.limits.url_segment_max_length as u64,
                segment_max_count: st.config.limits.url_segment_max_count as u64,
                max_url_length: st.config.limits.max_field_length as u64,
            }),
            service_timers: Some(ServiceTimers {
                request_queue_ms: timers.request_queue.as_millis(),
                entity_body_ms: timers.entity_body.as_millis(),
                drain_entity_body_ms: timers.drain_entity_body.as_millis(),
                min_send_rate: timers.min_send_rate,
                max_connections: self.shared.max_connections(),
            }),
            filter: (!filter.is_empty()).then(|| filter.clone()),
        }
    }
}
