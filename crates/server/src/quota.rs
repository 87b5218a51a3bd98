//! The control connections' share of the descriptor budget: how many are open, in all and
//! per uid, and the places kept for administrators.
//!
//! A connection takes its [`Place`] as it is accepted, before the daemon reads a byte from
//! it, and gives it back when it closes; an attached worker keeps the place of the
//! connection it was upgraded from. The rules:
//!
//! - At most `control` connections are open at once (the budget's control share). The last
//!   `control_admin` of those places are for administrators (root, the daemon's own user,
//!   members of `admin_group`): when only those are left, anyone else is refused, so an
//!   operator can always connect to see and mend what is going on.
//! - A user other than an administrator holds at most `control.max_connections_per_uid` at
//!   once. Administrators have no cap of their own: they draw on the whole share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use portshare_proto::text::count;
use portshare_router::Win32Error;

use crate::budget::Budget;

/// Open control connections against the share.
#[derive(Debug)]
pub(crate) struct Quota {
    /// All places.
    max: u64,
    /// Of those, the last ones, for administrators only.
    admin: u64,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    open: u64,
    per_uid: HashMap<u32, u32>,
    /// The uid of each open session, by session id.
    sessions: HashMap<u64, u32>,
}

/// Why a connection was refused: the Win32 error and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) error: Win32Error,
    pub(crate) message: String,
}

impl Quota {
    pub(crate) fn new(budget: &Budget) -> Arc<Quota> {
        Arc::new(Quota {
            max: budget.control,
            admin: budget.control_admin,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A place for session `id` of `uid`, or why not. `per_uid` is the cap of a user other
    /// than an administrator.
    pub(crate) fn admit(
        self: &Arc<Quota>,
        id: u64,
        uid: u32,
        admin: bool,
        per_uid: u32,
    ) -> Result<Place, Refusal> {
        let mut c = self.lock();
        if c.open >= self.max {
            return Err(Refusal {
                error: Win32Error::TooManyOpenFiles,
                message: format!(
                    "the daemon holds {} control connections, the most its descriptor budget \
                     allows; try again when some have closed",
                    c.open
                ),
            });
        }
        if !admin {
            if c.open >= self.max - self.admin {
                return Err(Refusal {
                    error: Win32Error::TooManyOpenFiles,
                    message: format!(
                        "the daemon holds {}; the last {} kept for administrators; try \
                         again when some have closed",
                        count(c.open, "control connection", "control connections"),
                        count(self.admin, "place is", "places are")
                    ),
                });
            }
            let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
            if mine >= per_uid {
                return Err(Refusal {
                    error: Win32Error::NotEnoughQuota,
                    message: format!(
                        "uid {uid} holds {}, the most one user may \
                         (control.max_connections_per_uid); close some first",
                        count(mine, "control connection", "control connections")
                    ),
                });
            }
        }
        c.open += 1;
        *c.per_uid.entry(uid).or_insert(0) += 1;
        c.sessions.insert(id, uid);
        Ok(Place {
            quota: self.clone(),
            id,
            uid,
        })
    }

    /// The uid of open session `id`.
    pub(crate) fn uid_of(&self, id: u64) -> Option<u32> {
        self.lock().sessions.get(&id).copied()
    }

    /// Control connections open now.
    pub(crate) fn open(&self) -> u64 {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open control connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct Place {
    quota: Arc<Quota>,
    id: u64,
    uid: u32,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut c = self.quota.lock();
        c.open -= 1;
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
        c.sessions.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(limit: u64) -> Arc<Quota> {
        Quota::new(&Budget::of(limit).unwrap())
    }

    #[test]
    fn a_user_stops_at_its_cap_and_others_go_on() {
        let q = quota(1024);
        let mine: Vec<Place> = (0..3)
            .map(|i| q.admit(i, 1000, false, 3).unwrap())
            .collect();
        let e = q.admit(3, 1000, false, 3).unwrap_err();
        assert_eq!(e.error, Win32Error::NotEnoughQuota);
        assert!(e.message.contains("uid 1000 holds 3"), "{}", e.message);
        let other = q.admit(4, 1001, false, 3).unwrap();
        assert_eq!(q.open(), 4);
        assert_eq!(q.uid_of(4), Some(1001));
        drop(mine);
        assert_eq!(q.open(), 1);
        assert_eq!(q.uid_of(0), None);
        q.admit(5, 1000, false, 3).unwrap();
        drop(other);
    }

    #[test]
    fn the_last_places_are_for_administrators() {
        // 1024 descriptors: 128 control places, the last 8 for administrators.
        let q = quota(1024);
        let users: Vec<Place> = (0..120)
            .map(|i| q.admit(i, 2000 + i as u32, false, 1).unwrap())
            .collect();
        let e = q.admit(500, 5000, false, 1).unwrap_err();
        assert_eq!(e.error, Win32Error::TooManyOpenFiles);
        assert!(
            e.message.contains("kept for administrators"),
            "{}",
            e.message
        );
        // An administrator has no per-uid cap, only the share.
        let admins: Vec<Place> = (0..8)
            .map(|i| q.admit(600 + i, 0, true, 1).unwrap())
            .collect();
        let e = q.admit(700, 0, true, 1).unwrap_err();
        assert_eq!(e.error, Win32Error::TooManyOpenFiles);
        drop(admins);
        drop(users);
        assert_eq!(q.open(), 0);
        assert!(q.lock().per_uid.is_empty());
    }
}
