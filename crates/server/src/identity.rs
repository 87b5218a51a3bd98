//! Who is on the other end of a control connection, and the names URL ACLs use for them.
//!
//! The uid, gid and pid come from `SO_PEERCRED`, fixed by the kernel when the peer
//! connected. The supplementary groups should come from `SO_PEERGROUPS`, which no safe
//! wrapper offers (neither rustix nor nix has it, and the workspace forbids `unsafe`), so they
//! are read from `/proc/PID/status` as the connection is accepted, and used only if that
//! process's effective uid and gid are still the ones `SO_PEERCRED` gave: a peer that
//! exited, and whose PID went to someone else, gets no supplementary groups (a group check
//! then fails closed). Names come from the system's user and group databases (through
//! NSS), looked up when needed, so a rename or a new member takes effect without a reload;
//! the one exception is `admin_group`, whose gid is looked up at start and on each reload.
//! Every lookup runs on the blocking pool, never on a runtime thread, and before the
//! daemon's lock is taken where it can be.

use nix::unistd::{Gid, Group, Uid, User};
use portshare_router::Caller;

/// A control connection's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups.
    pub(crate) groups: Vec<u32>,
}

impl Identity {
    /// The identity of `pid`, which `SO_PEERCRED` says connected as `uid` and `gid`.
    pub(crate) fn of_peer(pid: u32, uid: u32, gid: u32) -> Identity {
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| supplementary_groups(&status, uid, gid))
            .unwrap_or_default();
        Identity { uid, gid, groups }
    }

    /// The caller URL ACLs judge: known by user name and `uid:N`, member of its primary and
    /// supplementary groups by name and `gid:N`; an administrator when `admin`.
    pub(crate) fn caller(&self, admin: bool) -> Caller {
        let mut caller = Caller::new(format!("uid:{}", self.uid));
        if let Some(name) = user_name(self.uid) {
            caller = caller.alias(name);
        }
        let mut gids = vec![self.gid];
        gids.extend(self.groups.iter().copied().filter(|g| *g != self.gid));
        for gid in gids {
            caller = caller.group(format!("gid:{gid}"));
            if let Some(name) = group_name(gid) {
                caller = caller.group(name);
            }
        }
        caller.admin(admin)
    }

    /// True when the identity is in group `gid`, by primary or supplementary membership.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The `Groups:` line of a `/proc/PID/status`, if its `Uid:` and `Gid:` lines have `uid`
/// and `gid` as the effective ids.
fn supplementary_groups(status: &str, uid: u32, gid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|w| w.parse::<u32>().ok())
            })
    };
    let effective_uid = field("Uid:")?.nth(1)?;
    let effective_gid = field("Gid:")?.nth(1)?;
    if effective_uid != uid || effective_gid != gid {
        return None;
    }
    Some(field("Groups:")?.collect())
}

/// The name of user `uid`, if it has one.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The name of group `gid`, if it has one.
pub(crate) fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// A user's name for display: its name, else `uid:N`.
pub(crate) fn display_user(uid: u32) -> String {
    user_name(uid).unwrap_or_else(|| format!("uid:{uid}"))
}

/// The uid a user is named by: `uid:N`, or a name from the user database.
pub(crate) fn resolve_user(name: &str) -> Option<u32> {
    if let Some(n) = name.strip_prefix("uid:") {
        return n.parse().ok();
    }
    User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// The gid a group is named by: `gid:N`, or a name from the group database.
pub(crate) fn resolve_group(name: &str) -> Option<u32> {
    if let Some(n) = name.strip_prefix("gid:") {
        return n.parse().ok();
    }
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tsh\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t200\t200\t200\nGroups:\t4 24 27 \n";

    #[test]
    fn groups_come_from_status_when_the_ids_agree() {
        assert_eq!(
            supplementary_groups(STATUS, 1001, 200),
            Some(vec![4, 24, 27])
        );
        assert_eq!(supplementary_groups(STATUS, 1000, 200), None);
        assert_eq!(supplementary_groups(STATUS, 1001, 100), None);
        let none = "Uid:\t5\t5\t5\t5\nGid:\t5\t5\t5\t5\nGroups:\t\n";
        assert_eq!(supplementary_groups(none, 5, 5), Some(vec![]));
    }

    #[test]
    fn numeric_names_resolve() {
        assert_eq!(resolve_user("uid:4242"), Some(4242));
        assert_eq!(resolve_group("gid:77"), Some(77));
        assert_eq!(resolve_user("uid:x"), None);
        assert_eq!(resolve_user("root"), Some(0));
    }

    #[test]
    fn the_caller_carries_both_spellings() {
        let id = Identity {
            uid: 0,
            gid: 0,
            groups: vec![4242],
        };
        let acl_names = format!("{:?}", id.caller(false));
        for name in ["uid:0", "root", "gid:0", "gid:4242"] {
            assert!(acl_names.contains(name), "{name} in {acl_names}");
        }
        assert!(id.in_group(4242) && id.in_group(0) && !id.in_group(1));
    }
}
