//! Queues as the control API makes them: creating and opening one (`POST /v1/queues`),
//! with its upstream and that upstream's owner; its properties; and a held upstream queue's
//! readiness (`POST /v1/queues/{name}/ready`).

use super::*;

impl Daemon {
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
                portshare_proto::control::check_queue_name(n)
                    .map_err(|e| api(Win32Error::InvalidParameter, e))?;
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
            if spec.upstream.is_some() || spec.https_redirect.is_some() || spec.held {
                return Err(api(
                    Win32Error::InvalidParameter,
                    "upstream, held and https_redirect are set when a queue is created, not \
                     when it is opened",
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
                // What the queue kept stays the queue's, until a connection adds a URL of it
                // again and so takes it over.
                tracing::info!(queue = %name, pid = session.peer.pid, "lingering queue reopened");
            }
            return Ok(info(entry, props, false, &self.shared));
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
            Some(a) => {
                let address =
                    Address::parse(a).map_err(|e| api(Win32Error::InvalidParameter, e))?;
                let root = session.peer.uid == 0 || config;
                if !root && !address.provable() {
                    return Err(api(
                        Win32Error::AccessDenied,
                        format!(
                            "{address} is neither a unix: socket nor a loopback port: only \
                             root (or the configuration file) may point a queue at another \
                             host"
                        ),
                    ));
                }
                // Root may point anywhere; anyone else's upstream must be served by them,
                // which every new connection checks.
                let owner = (!root).then_some(session.peer.uid);
                let pipeline = spec.pipeline.unwrap_or(1);
                if !(1..=MAX_PIPELINE).contains(&pipeline) {
                    return Err(api(
                        Win32Error::InvalidParameter,
                        format!(
                            "pipeline = {pipeline}: expected 1 (no pipelining) to {MAX_PIPELINE}"
                        ),
                    ));
                }
                Some(Arc::new(Upstream::new(
                    address,
                    spec.strip_prefix,
                    owner,
                    pipeline as usize,
                )))
            }
        };
        if spec.pipeline.is_some() && upstream.is_none() {
            return Err(api(
                Win32Error::InvalidParameter,
                "pipeline applies to upstream queues only: workers take many requests already",
            ));
        }
        if spec.strip_prefix && upstream.is_none() {
            return Err(api(
                Win32Error::InvalidParameter,
                "strip_prefix applies to upstream queues only: workers get the whole target",
            ));
        }
        match spec.https_redirect {
            Some(0) => {
                return Err(api(
                    Win32Error::InvalidParameter,
                    "https_redirect = 0: expected a port from 1 to 65535",
                ));
            }
            Some(_) if upstream.is_some() => {
                return Err(api(
                    Win32Error::InvalidParameter,
                    "a queue either forwards to an upstream or redirects to https, not both",
                ));
            }
            _ => {}
        }
        if spec.held && upstream.is_none() {
            return Err(api(
                Win32Error::InvalidParameter,
                "held applies to upstream queues: a queue of workers waits for its workers",
            ));
        }
        let mut props = Props::default();
        props
            .apply(&spec.props)
            .map_err(|e| api(Win32Error::InvalidParameter, e))?;
        self.may_own_queue(&st, session)?;
        let counters = self.shared.metrics.queue(&name, session.peer.uid);
        let queue = Queue::with_counters(
            name.clone(),
            session.peer.uid,
            props,
            upstream.clone(),
            counters,
        );
        queue.set_https_redirect(spec.https_redirect);
        let upstream_seat = upstream.map(|up| {
            let seat = UpstreamSeat {
                id: self.next_id(),
                slots: connections.unwrap_or(DEFAULT_UPSTREAM_CONNECTIONS),
                ready: !spec.held,
            };
            if seat.ready {
                queue.attach(seat.id, Target::Upstream(up), seat.slots);
            }
            seat
        });
        let entry = QueueEntry {
            queue,
            handles: HashMap::from([(session.id, session.peer.identity.clone())]),
            urls: HashMap::new(),
            lingering: None,
            config,
            access: declared.unwrap_or_default(),
            creator: spec.name.is_none().then_some(session.peer.pid),
            upstream_seat,
        };
        let created = info(&entry, props, true, &self.shared);
        st.queues.insert(name, entry);
        Ok(created)
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
        Ok(info(entry, props, false, &self.shared))
    }

    /// `POST /v1/queues/{name}/ready`: the owner of an upstream queue attaches its
    /// upstream (waiting requests go to it at once) or detaches it (requests wait in the
    /// FIFO again; those the upstream holds finish). Nobody else may: not administrators,
    /// nor the accounts on its access list, as the queue's requests are its owner's.
    pub(crate) fn set_ready(
        &self,
        session: &Session,
        name: &str,
        ready: bool,
    ) -> Result<QueueInfo, ApiError> {
        if ready {
            let up = self.ready_target(session, name)?;
            check_upstream_owner(name, &up, &self.shared.upstreams)?;
        }
        let mut st = self.lock();
        let (entry, up) = Daemon::ready_target_locked(&mut st, session, name)?;
        let Some(seat) = entry.upstream_seat.as_mut() else {
            return Err(api(
                Win32Error::InvalidParameter,
                "the queue has no upstream",
            ));
        };
        if ready && !seat.ready {
            seat.id = self.next_id();
            entry
                .queue
                .attach(seat.id, Target::Upstream(up.clone()), seat.slots);
        } else if !ready && seat.ready {
            entry.queue.detach(seat.id);
        }
        if seat.ready != ready {
            tracing::info!(
                queue = name,
                pid = session.peer.pid,
                ready,
                "upstream queue readiness changed"
            );
        }
        seat.ready = ready;
        Ok(info(entry, entry.queue.props(), false, &self.shared))
    }

    /// The upstream `POST /v1/queues/{name}/ready` would attach, once the caller may.
    fn ready_target(&self, session: &Session, name: &str) -> Result<Arc<Upstream>, ApiError> {
        let mut st = self.lock();
        let (_, up) = Daemon::ready_target_locked(&mut st, session, name)?;
        Ok(up)
    }

    fn ready_target_locked<'s>(
        st: &'s mut State,
        session: &Session,
        name: &str,
    ) -> Result<(&'s mut QueueEntry, Arc<Upstream>), ApiError> {
        let entry = Daemon::entry(st, name)?;
        let owner = session.peer.uid == entry.queue.owner_uid() && entry.rights_of(session).any();
        if entry.config || !owner {
            return Err(entry.denied(name, "only its owner may declare it ready or hold it"));
        }
        let (Some(_), Some(up)) = (entry.upstream_seat, entry.queue.upstream().cloned()) else {
            return Err(api(
                Win32Error::InvalidParameter,
                format!(
                    "queue {:?} forwards to no upstream: only upstream queues are held or ready",
                    portshare_proto::text::printable(name)
                ),
            ));
        };
        Ok((entry, up))
    }
}

/// Before a held queue of an account's is declared ready: one connection to its upstream,
/// checked as every new one is ([`crate::owner`]) and closed, so that the owner hears now,
/// naming the process, when another account holds the address. Run on the blocking pool,
/// never under the lock. A server that does not answer yet is no refusal: its requests get
/// 503 until it does, as any upstream's.
fn check_upstream_owner(
    name: &str,
    up: &Upstream,
    share: &Arc<crate::upstream::Share>,
) -> Result<(), ApiError> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(());
    };
    let connected = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), up.connect(share)).await });
    match connected {
        Ok(Err(e)) => match crate::owner::not_owner(&e) {
            Some(refused) => Err(api(
                Win32Error::AccessDenied,
                format!(
                    "queue {:?} cannot be ready: its upstream {} is {refused}",
                    portshare_proto::text::printable(name),
                    up.address
                ),
            )),
            None => Ok(()),
        },
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
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
