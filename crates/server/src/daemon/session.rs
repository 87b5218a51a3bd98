//! Sessions: each control connection is one, and owns what it creates. When it ends its
//! queues and URLs go with it, as handles close on Windows, unless a queue lingers for the
//! next process that opens it by name.

use super::*;

/// A control connection: the owner of what it creates.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) peer: Peer,
    /// Who the URL ACLs judge: the peer's user and groups by id and by name, the names
    /// looked up once, on the blocking pool, when the connection came (its ids are fixed
    /// then too, as a Windows process's token is).
    pub(crate) known_as: portshare_router::Caller,
}

/// The session that holds the configuration file's queues.
pub(super) const CONFIG_SESSION: u64 = 0;

impl Daemon {
    /// A control connection closed: everything it created goes, as handles close on Windows.
    pub(crate) fn end_session(self: &Arc<Self>, session: &Session) {
        let mut st = self.lock();
        let st = &mut *st;
        let names: Vec<String> = st
            .queues
            .iter()
            .filter(|(_, e)| e.handles.contains_key(&session.id))
            .map(|(n, _)| n.clone())
            .collect();
        // URLs the connection added to queues it never opened (their owner may add URLs
        // without a handle) go with it too.
        let mut added: Vec<(String, Arc<UrlPrefix>)> = Vec::new();
        for (name, e) in &mut st.queues {
            if e.handles.contains_key(&session.id) {
                continue;
            }
            e.urls.retain(|p, by| {
                let mine = *by == Some(session.id);
                if mine {
                    added.push((name.clone(), p.clone()));
                }
                !mine
            });
        }
        if names.is_empty() && added.is_empty() {
            return;
        }
        for (name, p) in &added {
            self.unregister(st, name, p, "the control connection that added it closed");
        }
        for name in names {
            self.let_go(st, session.id, &name);
        }
        self.publish(st);
    }

    pub(super) fn let_go(self: &Arc<Self>, st: &mut State, session: u64, name: &str) {
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
            tracing::info!(queue = name, ?linger, "queue lingers");
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
        let mine: Vec<Arc<UrlPrefix>> = entry
            .urls
            .iter()
            .filter(|(_, owner)| **owner == Some(session) || last)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &mine {
            entry.urls.remove(p);
        }
        for p in &mine {
            self.unregister(st, name, p, "the control connection that added it closed");
        }
        if last {
            self.destroy(st, name);
        }
    }

    /// The session the configuration file's queues belong to.
    /// Blocking (the user database): call it on the blocking pool.
    pub(super) fn config_session(&self) -> Session {
        let identity = Identity {
            uid: self.own_uid,
            gid: self.own_gid,
            groups: Vec::new(),
        };
        Session {
            id: CONFIG_SESSION,
            known_as: identity.caller(false),
            peer: Peer {
                pid: std::process::id(),
                uid: self.own_uid,
                identity,
                user: identity::display_user(self.own_uid),
                command: "portshare (configuration)".into(),
            },
        }
    }
}
