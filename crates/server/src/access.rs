//! Who may use a queue besides its owner: the queue's access list.
//!
//! An HTTP.sys request queue carries its creator's security descriptor, and opening it by
//! name is checked against that descriptor (spec §6.5). Here a queue's owner holds every
//! right, and the owner (or an administrator) grants other accounts, users or groups, one
//! or both of two rights:
//!
//! - `attach`: open the queue and attach workers, that is, receive its requests;
//! - `register`: open the queue and add URLs to it, each still judged by the URL ACLs as
//!   the grantee's own registration.
//!
//! Accounts are resolved to numeric ids when the list is set: a grant follows the uid or
//! gid, not a name that may be reassigned later. Administrators hold no right by being
//! administrators: they may grant themselves one, visibly, but never join a queue unasked.

use portshare_proto::control::{AccessEntry, AccountKind};

use crate::identity::{self, Identity};

/// What an account may do with a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rights {
    pub(crate) attach: bool,
    pub(crate) register: bool,
}

impl Rights {
    /// The owner's: everything.
    pub(crate) const ALL: Rights = Rights {
        attach: true,
        register: true,
    };

    /// Whether the account may open the queue at all.
    pub(crate) fn any(self) -> bool {
        self.attach || self.register
    }
}

/// An account a grant names, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    User(u32),
    Group(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    who: Who,
    rights: Rights,
    /// As it was written, for the state view.
    name: String,
}

/// A queue's access list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Access {
    grants: Vec<Grant>,
}

impl Access {
    /// The rights `id` holds through the list: the union of every grant that names its
    /// uid or one of its groups.
    pub(crate) fn rights(&self, id: &Identity) -> Rights {
        let mut r = Rights::default();
        for g in &self.grants {
            let applies = match g.who {
                Who::User(uid) => uid == id.uid,
                Who::Group(gid) => id.in_group(gid),
            };
            if applies {
                r.attach |= g.rights.attach;
                r.register |= g.rights.register;
            }
        }
        r
    }

    /// Sets each entry's account to the entry's rights, replacing what it had; an entry
    /// with neither right takes the account off. Nothing changes when a name resolves to
    /// nobody: the error names it.
    pub(crate) fn set(&mut self, entries: &[AccessEntry]) -> Result<(), String> {
        let mut next = self.grants.clone();
        for e in entries {
            let who = resolve(e)?;
            next.retain(|g| g.who != who);
            let rights = Rights {
                attach: e.attach,
                register: e.register,
            };
            if rights.any() {
                next.push(Grant {
                    who,
                    rights,
                    name: e.name.clone(),
                });
            }
        }
        self.grants = next;
        Ok(())
    }

    /// The list from entries; names that resolve to nobody grant nothing and are returned,
    /// for a configuration file that names an account this machine lacks.
    pub(crate) fn lenient(entries: &[AccessEntry]) -> (Access, Vec<String>) {
        let mut access = Access::default();
        let mut unknown = Vec::new();
        for e in entries {
            if let Err(e) = access.set(std::slice::from_ref(e)) {
                unknown.push(e);
            }
        }
        (access, unknown)
    }

    /// The list as the API shows it.
    pub(crate) fn entries(&self) -> Vec<AccessEntry> {
        self.grants
            .iter()
            .map(|g| AccessEntry {
                kind: match g.who {
                    Who::User(_) => AccountKind::User,
                    Who::Group(_) => AccountKind::Group,
                },
                name: g.name.clone(),
                attach: g.rights.attach,
                register: g.rights.register,
            })
            .collect()
    }
}

fn resolve(e: &AccessEntry) -> Result<Who, String> {
    match e.kind {
        AccountKind::User => identity::resolve_user(&e.name)
            .map(Who::User)
            .ok_or_else(|| format!("no user {:?} on this machine", e.name)),
        AccountKind::Group => identity::resolve_group(&e.name)
            .map(Who::Group)
            .ok_or_else(|| format!("no group {:?} on this machine", e.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: AccountKind, name: &str, attach: bool, register: bool) -> AccessEntry {
        AccessEntry {
            kind,
            name: name.into(),
            attach,
            register,
        }
    }

    fn id(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn grants_by_uid_and_by_group_add_up() {
        let mut a = Access::default();
        a.set(&[
            entry(AccountKind::User, "uid:1001", true, false),
            entry(AccountKind::Group, "gid:50", false, true),
        ])
        .expect("numeric names");
        assert_eq!(
            a.rights(&id(1001, 1001, &[])),
            Rights {
                attach: true,
                register: false
            }
        );
        assert_eq!(a.rights(&id(1001, 1001, &[50])), Rights::ALL);
        assert_eq!(
            a.rights(&id(7, 50, &[])),
            Rights {
                attach: false,
                register: true
            }
        );
        assert!(!a.rights(&id(7, 7, &[51])).any());
    }

    #[test]
    fn an_entry_replaces_the_accounts_rights_and_none_revokes() {
        let mut a = Access::default();
        a.set(&[entry(AccountKind::User, "uid:5", true, true)])
            .expect("set");
        a.set(&[entry(AccountKind::User, "uid:5", true, false)])
            .expect("set");
        assert_eq!(a.entries().len(), 1);
        assert!(!a.rights(&id(5, 5, &[])).register);
        a.set(&[entry(AccountKind::User, "uid:5", false, false)])
            .expect("set");
        assert!(a.entries().is_empty());
        assert!(!a.rights(&id(5, 5, &[])).any());
    }

    #[test]
    fn an_unknown_name_changes_nothing() {
        let mut a = Access::default();
        a.set(&[entry(AccountKind::User, "uid:5", true, false)])
            .expect("set");
        let before = a.clone();
        let err = a
            .set(&[
                entry(AccountKind::User, "uid:6", true, false),
                entry(AccountKind::Group, "no-such-group-here", true, false),
            ])
            .expect_err("unknown group");
        assert!(err.contains("no-such-group-here"), "{err}");
        assert_eq!(a, before);
        let (lenient, unknown) = Access::lenient(&[
            entry(AccountKind::User, "uid:6", true, false),
            entry(AccountKind::User, "no-such-user-here", true, false),
        ]);
        assert_eq!(lenient.entries().len(), 1);
        assert_eq!(unknown.len(), 1);
    }
}
