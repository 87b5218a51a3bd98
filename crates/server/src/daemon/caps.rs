//! What one user may hold, and what the descriptor budget lets the daemon hold: control
//! connections (counted in [`Quota`](crate::quota::Quota)), sessions holding queues, queues,
//! listening sockets.
//!
//! Administrators (root, the daemon's own user, members of `admin_group`) and the
//! configuration file's queues have no per-uid caps; everyone meets the budget's shares.

use std::collections::HashSet;
use std::time::Duration;

use portshare_proto::control::{ApiError, BudgetShare, DescriptorBudget};
use portshare_proto::text::count;
use portshare_router::Win32Error;

use super::{CONFIG_SESSION, Daemon, Session, State, api};
use crate::identity::Identity;
use crate::quota::{Place, Refusal};

impl Daemon {
    /// A place for control connection `id` of `who`, as it is accepted.
    pub(crate) fn admit(&self, id: u64, who: &Identity) -> Result<Place, Refusal> {
        let (admin, per_uid) = {
            let st = self.lock();
            (
                self.is_admin_identity(&st, who),
                st.config.control.max_connections_per_uid,
            )
        };
        self.quota.admit(id, who.uid, admin, per_uid)
    }

    /// How long a control connection that has not opened a queue may stay silent.
    pub(crate) fn request_wait(&self) -> Duration {
        self.lock().config.control.request_wait()
    }

    /// Refuses a session that holds no queue yet when its user has as many sessions
    /// holding queues as it may (`control.max_sessions_per_uid`).
    pub(super) fn may_hold_queues(&self, st: &State, session: &Session) -> Result<(), ApiError> {
        if session.id == CONFIG_SESSION || self.is_admin(st, &session.peer) {
            return Ok(());
        }
        let holders: HashSet<u64> = st
            .queues
            .values()
            .flat_map(|e| e.handles.keys().copied())
            .filter(|&id| id != CONFIG_SESSION)
            .collect();
        if holders.contains(&session.id) {
            return Ok(());
        }
        let uid = session.peer.uid;
        let cap = st.config.control.max_sessions_per_uid;
        let mine = holders
            .iter()
            .filter(|&&id| self.quota.uid_of(id) == Some(uid))
            .count();
        if mine >= cap as usize {
            return Err(api(
                Win32Error::NotEnoughQuota,
                format!(
                    "uid {uid} has {} holding queues, the most one user may \
                     (control.max_sessions_per_uid); open this queue on one of them",
                    count(mine as u64, "control connection", "control connections")
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a new queue when its creator's user owns as many as it may
    /// (`control.max_queues_per_uid`). The configuration file's queues are not counted.
    pub(super) fn may_own_queue(&self, st: &State, session: &Session) -> Result<(), ApiError> {
        if session.id == CONFIG_SESSION || self.is_admin(st, &session.peer) {
            return Ok(());
        }
        let uid = session.peer.uid;
        let cap = st.config.control.max_queues_per_uid;
        let mine = st
            .queues
            .values()
            .filter(|e| e.queue.owner_uid() == uid && !e.config)
            .count();
        if mine >= cap as usize {
            return Err(api(
                Win32Error::NotEnoughQuota,
                format!(
                    "uid {uid} owns {}, the most one user may \
                     (control.max_queues_per_uid); close one first",
                    count(mine as u64, "queue", "queues")
                ),
            ));
        }
        Ok(())
    }

    /// How many more URLs the queues `owner` owns may hold when `session` registers them
    /// (`control.max_urls_per_uid`): each costs the daemon memory, so that no user grows it
    /// without bound. `None` when there is no cap: for administrators and the
    /// configuration file. Counted once per request, however many URLs it adds.
    pub(super) fn url_room(&self, st: &State, session: &Session, owner: u32) -> Option<usize> {
        if session.id == CONFIG_SESSION || self.is_admin(st, &session.peer) {
            return None;
        }
        let cap = st.config.control.max_urls_per_uid as usize;
        Some(cap.saturating_sub(Daemon::urls_owned(st, owner)))
    }

    /// The refusal of a URL past `owner`'s cap.
    pub(super) fn url_cap_reached(st: &State, owner: u32) -> ApiError {
        api(
            Win32Error::NotEnoughQuota,
            format!(
                "the queues of uid {owner} hold {}, the most one user may \
                 (control.max_urls_per_uid); remove one first",
                count(Daemon::urls_owned(st, owner) as u64, "URL", "URLs")
            ),
        )
    }

    /// The URLs on the queues `owner` owns, the configuration file's left out.
    fn urls_owned(st: &State, owner: u32) -> usize {
        st.queues
            .values()
            .filter(|e| e.queue.owner_uid() == owner && !e.config)
            .map(|e| e.urls.len())
            .sum()
    }

    /// Refuses `more` listening sockets beyond the budget's listener share.
    pub(super) fn may_listen(&self, st: &State, more: usize) -> Result<(), ApiError> {
        let max = self.shared.budget.listeners;
        let open = st.listeners.len() as u64;
        if open + more as u64 > max {
            return Err(api(
                Win32Error::TooManyOpenFiles,
                format!(
                    "the daemon listens on {} and may listen on {max} (its \
                     descriptor budget); register on a port already in use, or raise the \
                     open-file limit",
                    count(open, "socket", "sockets")
                ),
            ));
        }
        Ok(())
    }

    /// The budget and what each share holds, for the state view.
    pub(super) fn budget_state(&self, st: &State) -> DescriptorBudget {
        let b = &self.shared.budget;
        DescriptorBudget {
            open_files: b.limit,
            clients: BudgetShare {
                max: self.shared.max_connections(),
                open: self.shared.connections.open(),
            },
            control: BudgetShare {
                max: b.control,
                open: self.quota.open(),
            },
            control_admin: b.control_admin,
            upstream: BudgetShare {
                max: b.upstream,
                open: self.shared.upstreams.open(),
            },
            listeners: BudgetShare {
                max: b.listeners,
                open: st.listeners.len() as u64,
            },
            reserve: b.reserve,
        }
    }
}
