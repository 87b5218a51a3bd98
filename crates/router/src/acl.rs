//! URL ACLs: who may register, and who may reserve, which part of the namespace.
//!
//! Decisions follow HTTP.sys (spec §9). A registration is judged by its *governing*
//! reservation: among the reservations of the same category, scheme, host and port, the one
//! whose path is the longest segment-wise prefix of the registration's path; when there is
//! none, the implicit root reservation of that host and port, which only administrators
//! hold. Administrators have no say over explicit reservations they are not named in.
//! A non-administrator may register `http://localhost:P/` (or a loopback literal) with
//! P > 1024 without any reservation, unless some explicit reservation exists on that
//! scheme and port.
//!
//! Each decision costs the same however many reservations there are: the governing
//! reservation is found by looking up each segment-wise prefix of the registration's path,
//! longest first, in a hash table of the reservations by site and path; the other-scheme
//! check and the exemption read a count per scheme and port.

use core::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use hashbrown::{HashMap, HashTable};

use crate::error::Win32Error;
use crate::prefix::{Host, Scheme, UrlPrefix};

/// Who an ACL entry names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Account {
    /// A user only.
    User(String),
    /// A group only.
    Group(String),
    /// A user or a group of that name. `Everyone` (any case) names every caller.
    Name(String),
}

impl Account {
    fn matches(&self, caller: &Caller) -> bool {
        match self {
            Account::User(u) => caller.users.iter().any(|c| c == u),
            Account::Group(g) => caller.groups.iter().any(|c| c == g),
            Account::Name(n) => {
                n.eq_ignore_ascii_case("everyone")
                    || caller.users.iter().chain(&caller.groups).any(|c| c == n)
            }
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::User(n) => write!(f, "user {n}"),
            Account::Group(n) => write!(f, "group {n}"),
            Account::Name(n) => f.write_str(n),
        }
    }
}

/// One entry of a reservation's ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ace {
    /// Who it grants.
    pub account: Account,
    /// May register URLs under the reservation (`listen=yes`, GX).
    pub listen: bool,
    /// May add reservations under it (`delegate=yes`, GW).
    pub delegate: bool,
}

impl Ace {
    /// An entry granting `listen` and `delegate` as given.
    pub fn new(account: Account, listen: bool, delegate: bool) -> Ace {
        Ace {
            account,
            listen,
            delegate,
        }
    }
}

/// A reservation: a URL prefix and the ACL that governs registrations under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    prefix: UrlPrefix,
    aces: Vec<Ace>,
}

impl Reservation {
    /// A reservation of `prefix` for `aces`.
    pub fn new(prefix: UrlPrefix, aces: Vec<Ace>) -> Reservation {
        Reservation { prefix, aces }
    }

    /// The reserved prefix.
    pub fn prefix(&self) -> &UrlPrefix {
        &self.prefix
    }

    /// Its ACL entries.
    pub fn aces(&self) -> &[Ace] {
        &self.aces
    }

    fn grants(&self, caller: &Caller, right: fn(&Ace) -> bool) -> bool {
        self.aces
            .iter()
            .any(|a| right(a) && a.account.matches(caller))
    }
}

/// The identity a request to register or reserve comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    users: Vec<String>,
    groups: Vec<String>,
    admin: bool,
}

impl Caller {
    /// A caller known by the user name `user`.
    pub fn new(user: impl Into<String>) -> Caller {
        Caller {
            users: vec![user.into()],
            ..Caller::default()
        }
    }

    /// Another name the same user is known by (for example `uid:1000`).
    pub fn alias(mut self, name: impl Into<String>) -> Caller {
        self.users.push(name.into());
        self
    }

    /// A group the caller belongs to.
    pub fn group(mut self, group: impl Into<String>) -> Caller {
        self.groups.push(group.into());
        self
    }

    /// Whether the caller holds the implicit root reservations (root, the admin group).
    pub fn admin(mut self, yes: bool) -> Caller {
        self.admin = yes;
        self
    }

    /// True for an administrator.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

/// The reservation whose ACL decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Governing<'a> {
    /// An explicit reservation.
    Reservation(&'a Reservation),
    /// The implicit root reservation of the prefix's host and port.
    Implicit(&'a UrlPrefix),
    /// No reservation: the localhost exemption applied.
    Exempt,
}

impl Governing<'_> {
    /// `"http://+:80/app/"` for an explicit reservation, `"implicit http://+:80/"` for the
    /// root, `None` for the exemption.
    pub fn describe(&self) -> Option<String> {
        match self {
            Governing::Reservation(r) => Some(r.prefix.as_str().to_owned()),
            Governing::Implicit(p) => Some(format!("implicit {}", p.root_string())),
            Governing::Exempt => None,
        }
    }
}

/// Why a registration or reservation was refused by the ACLs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AclError {
    /// The governing reservation does not grant the right (`ERROR_ACCESS_DENIED`).
    AccessDenied {
        /// The governing reservation, described as [`Governing::describe`] does.
        governing: String,
        /// `"listen"` or `"delegate"`.
        right: &'static str,
        /// A reservation on the registration's scheme and port that took the localhost
        /// exemption away (spec §9.3): without it, the registration would have been exempt.
        exemption_lost_to: Option<String>,
    },
    /// The port is reserved for the other scheme (`ERROR_ALREADY_EXISTS`).
    SchemeConflict {
        /// The reservation of the other scheme.
        existing: String,
    },
    /// The same URL is already reserved (`ERROR_ALREADY_EXISTS`).
    AlreadyReserved {
        /// The reservation already there.
        existing: String,
    },
    /// No such reservation (`ERROR_FILE_NOT_FOUND`).
    NotReserved {
        /// The URL asked for.
        prefix: String,
    },
}

impl AclError {
    /// The Win32 error HTTP.sys returns.
    pub fn win32(&self) -> Win32Error {
        match self {
            AclError::AccessDenied { .. } => Win32Error::AccessDenied,
            AclError::SchemeConflict { .. } | AclError::AlreadyReserved { .. } => {
                Win32Error::AlreadyExists
            }
            AclError::NotReserved { .. } => Win32Error::FileNotFound,
        }
    }

    /// The reservation that decided, as the vectors name it.
    pub fn governing(&self) -> Option<&str> {
        match self {
            AclError::AccessDenied { governing, .. } => Some(governing),
            AclError::SchemeConflict { existing } | AclError::AlreadyReserved { existing } => {
                Some(existing)
            }
            AclError::NotReserved { .. } => None,
        }
    }
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclError::AccessDenied {
                governing,
                right,
                exemption_lost_to: None,
            } => write!(
                f,
                "access denied: the governing reservation {governing} does not grant you the \
                 {right} right; ask its owner or an administrator for a reservation"
            ),
            AclError::AccessDenied {
                governing,
                right,
                exemption_lost_to: Some(reservation),
            } => write!(
                f,
                "access denied: the localhost exemption does not apply, because the \
                 reservation {reservation} is on the same scheme and port (any reservation \
                 there takes the exemption away), so the governing reservation is {governing}, \
                 which does not grant you the {right} right; ask for a reservation that does"
            ),
            AclError::SchemeConflict { existing } => write!(
                f,
                "the port is reserved for the other scheme by {existing}: one port serves either \
                 http or https"
            ),
            AclError::AlreadyReserved { existing } => write!(f, "{existing} is already reserved"),
            AclError::NotReserved { prefix } => write!(f, "{prefix} is not reserved"),
        }
    }
}

impl std::error::Error for AclError {}

/// The reservations of a host, and the decisions they make.
///
/// # Examples
///
/// ```
/// use portshare_router::{Account, Ace, Caller, Reservation, UrlAcl};
///
/// let mut acl = UrlAcl::new();
/// let alice = Ace::new(Account::Name("alice".into()), true, false);
/// acl.insert(Reservation::new("http://+:80/app/".parse()?, vec![alice]))?;
///
/// let caller = Caller::new("alice");
/// assert!(acl.check_register(&"http://+:80/app/sub/".parse()?, &caller).is_ok());
/// let denied = acl.check_register(&"http://+:80/application/".parse()?, &caller).unwrap_err();
/// assert_eq!(denied.governing(), Some("implicit http://+:80/"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct UrlAcl {
    reservations: Vec<Reservation>,
    index: Index,
}

/// Where each reservation sits in `reservations`, by site and folded path; and how many
/// reservations each scheme and port has.
#[derive(Clone, Default)]
struct Index {
    by_path: HashTable<usize>,
    ports: HashMap<(Scheme, u16), usize>,
    state: foldhash::fast::FixedState,
}

/// The hash of `prefix`'s site with `path` (a folded path, `prefix`'s own or one of its
/// segment-wise prefixes).
fn site_path_hash(state: &foldhash::fast::FixedState, prefix: &UrlPrefix, path: &str) -> u64 {
    let mut h = state.build_hasher();
    prefix.scheme().hash(&mut h);
    prefix.port().hash(&mut h);
    prefix.category().hash(&mut h);
    if let Host::Ip(ip) = prefix.host() {
        ip.hash(&mut h);
    }
    prefix.folded_host().hash(&mut h);
    path.hash(&mut h);
    h.finish()
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("reservations", &self.by_path.len())
            .finish()
    }
}

impl Index {
    fn hash(&self, prefix: &UrlPrefix, path: &str) -> u64 {
        site_path_hash(&self.state, prefix, path)
    }

    /// Indexes `all[at]`.
    fn insert(&mut self, all: &[Reservation], at: usize) {
        let prefix = &all[at].prefix;
        let hash = self.hash(prefix, prefix.folded_path());
        let state = &self.state;
        let rehash =
            |&i: &usize| site_path_hash(state, &all[i].prefix, all[i].prefix.folded_path());
        self.by_path.insert_unique(hash, at, rehash);
        *self
            .ports
            .entry((prefix.scheme(), prefix.port()))
            .or_default() += 1;
    }

    /// Indexes `all` anew, after a removal moved the positions.
    fn rebuild(&mut self, all: &[Reservation]) {
        self.by_path.clear();
        self.ports.clear();
        for at in 0..all.len() {
            self.insert(all, at);
        }
    }

    /// The position of the reservation of `prefix`'s site whose folded path is `path`.
    fn find(&self, all: &[Reservation], prefix: &UrlPrefix, path: &str) -> Option<usize> {
        let hash = self.hash(prefix, path);
        self.by_path
            .find(hash, |&i| {
                let r = &all[i].prefix;
                r.folded_path() == path && r.same_site(prefix)
            })
            .copied()
    }

    /// True when `scheme` and `port` have an explicit reservation.
    fn on_port(&self, scheme: Scheme, port: u16) -> bool {
        self.ports.get(&(scheme, port)).is_some_and(|&n| n > 0)
    }
}

impl UrlAcl {
    /// No reservations: only administrators may register.
    pub fn new() -> UrlAcl {
        UrlAcl::default()
    }

    /// Every reservation, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.iter()
    }

    /// The reservation of exactly this URL.
    pub fn get(&self, prefix: &UrlPrefix) -> Option<&Reservation> {
        let at = self
            .index
            .find(&self.reservations, prefix, prefix.folded_path())?;
        self.reservations.get(at)
    }

    /// Decides whether `caller` may register `prefix`: the other-scheme check, then the
    /// governing reservation's listen right (or the localhost exemption). The duplicate check
    /// HTTP.sys makes between the two is the route table's
    /// ([`RouteTable::check_add`](crate::RouteTable::check_add)).
    ///
    /// # Errors
    ///
    /// [`AclError::SchemeConflict`] or [`AclError::AccessDenied`].
    pub fn check_register<'a>(
        &'a self,
        prefix: &'a UrlPrefix,
        caller: &Caller,
    ) -> Result<Governing<'a>, AclError> {
        let other_scheme = prefix.scheme().other();
        if let Some(other) = self
            .index
            .on_port(other_scheme, prefix.port())
            .then(|| {
                self.reservations
                    .iter()
                    .find(|r| r.prefix.port() == prefix.port() && r.prefix.scheme() == other_scheme)
            })
            .flatten()
        {
            return Err(AclError::SchemeConflict {
                existing: other.prefix.as_str().to_owned(),
            });
        }
        if let Some(r) = self.governing(prefix, false) {
            return if r.grants(caller, |a| a.listen) {
                Ok(Governing::Reservation(r))
            } else {
                Err(denied(Governing::Reservation(r), "listen"))
            };
        }
        if self.exempt(prefix, caller) {
            return Ok(Governing::Exempt);
        }
        if caller.admin {
            Ok(Governing::Implicit(prefix))
        } else if Self::exemptable(prefix)
            && let Some(r) = self.on_port(prefix)
        {
            Err(AclError::AccessDenied {
                governing: Governing::Implicit(prefix).describe().unwrap_or_default(),
                right: "listen",
                exemption_lost_to: Some(r.prefix.as_str().to_owned()),
            })
        } else {
            Err(denied(Governing::Implicit(prefix), "listen"))
        }
    }

    /// Decides whether `caller` may reserve `prefix`: not reserved already, and the caller is
    /// an administrator or holds the delegate right on the governing reservation.
    ///
    /// # Errors
    ///
    /// [`AclError::AlreadyReserved`] or [`AclError::AccessDenied`].
    pub fn check_reserve<'a>(
        &'a self,
        prefix: &'a UrlPrefix,
        caller: &Caller,
    ) -> Result<Governing<'a>, AclError> {
        if let Some(r) = self.get(prefix) {
            return Err(AclError::AlreadyReserved {
                existing: r.prefix.as_str().to_owned(),
            });
        }
        let governing = match self.governing(prefix, true) {
            Some(r) if caller.admin || r.grants(caller, |a| a.delegate) => {
                return Ok(Governing::Reservation(r));
            }
            Some(r) => Governing::Reservation(r),
            None => Governing::Implicit(prefix),
        };
        if caller.admin {
            Ok(governing)
        } else {
            Err(denied(governing, "delegate"))
        }
    }

    /// Adds a reservation on `caller`'s word, after [`check_reserve`](UrlAcl::check_reserve).
    ///
    /// # Errors
    ///
    /// As [`check_reserve`](UrlAcl::check_reserve).
    pub fn add(&mut self, reservation: Reservation, caller: &Caller) -> Result<(), AclError> {
        self.check_reserve(&reservation.prefix, caller)?;
        self.push(reservation);
        Ok(())
    }

    /// Adds a reservation with no rights check (configuration the administrator wrote).
    ///
    /// # Errors
    ///
    /// [`AclError::AlreadyReserved`].
    pub fn insert(&mut self, reservation: Reservation) -> Result<(), AclError> {
        if let Some(r) = self.get(&reservation.prefix) {
            return Err(AclError::AlreadyReserved {
                existing: r.prefix.as_str().to_owned(),
            });
        }
        self.push(reservation);
        Ok(())
    }

    /// Appends a reservation checked already, and indexes it.
    fn push(&mut self, reservation: Reservation) {
        self.reservations.push(reservation);
        self.index
            .insert(&self.reservations, self.reservations.len() - 1);
    }

    /// Removes a reservation; administrators may remove any, others need the delegate right
    /// on the reservation governing it.
    ///
    /// # Errors
    ///
    /// [`AclError::NotReserved`] or [`AclError::AccessDenied`].
    pub fn remove(&mut self, prefix: &UrlPrefix, caller: &Caller) -> Result<Reservation, AclError> {
        let index = self
            .index
            .find(&self.reservations, prefix, prefix.folded_path())
            .ok_or_else(|| AclError::NotReserved {
                prefix: prefix.as_str().to_owned(),
            })?;
        if !caller.admin {
            match self.governing(prefix, true) {
                Some(r) if r.grants(caller, |a| a.delegate) => {}
                Some(r) => return Err(denied(Governing::Reservation(r), "delegate")),
                None => return Err(denied(Governing::Implicit(prefix), "delegate")),
            }
        }
        // Removals are rare: the order added is kept, and the index made anew.
        let removed = self.reservations.remove(index);
        self.index.rebuild(&self.reservations);
        Ok(removed)
    }

    /// The explicit reservation governing `prefix`, excluding the same URL when `strictly`.
    /// Paths end with `/`, so the paths that cover a path are its prefixes that end with
    /// one: looked up longest first, the first found is the longest.
    fn governing(&self, prefix: &UrlPrefix, strictly: bool) -> Option<&Reservation> {
        let path = prefix.folded_path();
        path.match_indices('/')
            .rev()
            .map(|(at, _)| &path[..=at])
            .filter(|covering| !strictly || covering.len() < path.len())
            .find_map(|covering| self.index.find(&self.reservations, prefix, covering))
            .map(|at| &self.reservations[at])
    }

    /// The localhost exemption: non-administrators, http, port above 1024, `localhost` or a
    /// loopback literal, and no explicit reservation on that scheme and port.
    fn exempt(&self, prefix: &UrlPrefix, caller: &Caller) -> bool {
        !caller.admin
            && Self::exemptable(prefix)
            && !self.index.on_port(prefix.scheme(), prefix.port())
    }

    /// What the exemption may cover: http, port above 1024, `localhost` or a loopback
    /// literal.
    fn exemptable(prefix: &UrlPrefix) -> bool {
        let local = match prefix.host() {
            Host::Name(n) => n.eq_ignore_ascii_case("localhost"),
            Host::Ip(IpAddr::V4(a)) => a.is_loopback(),
            Host::Ip(IpAddr::V6(a)) => a.is_loopback(),
            Host::Strong | Host::Weak => false,
        };
        local && prefix.scheme() == Scheme::Http && prefix.port() > 1024
    }

    /// An explicit reservation on `prefix`'s scheme and port, which takes the exemption
    /// away.
    fn on_port(&self, prefix: &UrlPrefix) -> Option<&Reservation> {
        if !self.index.on_port(prefix.scheme(), prefix.port()) {
            return None;
        }
        self.reservations
            .iter()
            .find(|r| r.prefix.scheme() == prefix.scheme() && r.prefix.port() == prefix.port())
    }
}

fn denied(governing: Governing<'_>, right: &'static str) -> AclError {
    AclError::AccessDenied {
        governing: governing.describe().unwrap_or_default(),
        right,
        exemption_lost_to: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> UrlPrefix {
        s.parse().unwrap()
    }

    fn acl(entries: &[(&str, &str, bool, bool)]) -> UrlAcl {
        let mut acl = UrlAcl::new();
        for (url, who, listen, delegate) in entries {
            let ace = Ace::new(Account::Name((*who).into()), *listen, *delegate);
            acl.insert(Reservation::new(p(url), vec![ace])).unwrap();
        }
        acl
    }

    fn register(
        acl: &UrlAcl,
        prefix: &str,
        caller: &Caller,
    ) -> Result<Option<String>, (Win32Error, Option<String>)> {
        let prefix = p(prefix);
        acl.check_register(&prefix, caller)
            .map(|g| g.describe())
            .map_err(|e| (e.win32(), e.governing().map(str::to_owned)))
    }

    /// The governing reservation, as the rules state it: every reservation looked at.
    fn governing_by_scan<'a>(
        acl: &'a UrlAcl,
        prefix: &UrlPrefix,
        strictly: bool,
    ) -> Option<&'a Reservation> {
        acl.iter()
            .filter(|r| r.prefix.same_site(prefix) && r.prefix.path_covers(prefix))
            .filter(|r| !strictly || r.prefix != *prefix)
            .max_by_key(|r| r.prefix.folded_path().len())
    }

    #[test]
    fn the_index_finds_what_a_scan_finds_through_adds_and_removals() {
        let hosts = [
            "+",
            "*",
            "a.example",
            "A.EXAMPLE",
            "127.0.0.1",
            "[::1]",
            "b.example",
        ];
        let paths = [
            "/",
            "/app/",
            "/APP/",
            "/app/sub/",
            "/app/sub/deep/",
            "/other/",
            "/app/x/",
        ];
        let mut seed = 11u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let any = |next: &mut dyn FnMut(usize) -> usize| {
            let scheme = ["http", "https"][next(2)];
            let port = [80, 443, 8080][next(3)];
            p(&format!(
                "{scheme}://{}:{port}{}",
                hosts[next(hosts.len())],
                paths[next(paths.len())]
            ))
        };
        let mut acl = UrlAcl::new();
        for step in 0..3_000 {
            let prefix = any(&mut next);
            if next(3) == 0 {
                let root = Caller::new("root").admin(true);
                let _ = acl.remove(&prefix, &root);
            } else {
                let _ = acl.insert(Reservation::new(prefix, Vec::new()));
            }
            let probe = any(&mut next);
            for strictly in [false, true] {
                assert_eq!(
                    acl.governing(&probe, strictly).map(|r| r.prefix.as_str()),
                    governing_by_scan(&acl, &probe, strictly).map(|r| r.prefix.as_str()),
                    "{probe} at step {step}"
                );
            }
            assert_eq!(
                acl.get(&probe).map(|r| r.prefix.as_str()),
                acl.iter()
                    .find(|r| r.prefix == probe)
                    .map(|r| r.prefix.as_str())
            );
        }
    }

    #[test]
    fn admin_holds_the_implicit_root() {
        let caller = Caller::new("root").admin(true);
        assert_eq!(
            register(&UrlAcl::new(), "http://+:80/", &caller),
            Ok(Some("implicit http://+:80/".into()))
        );
    }

    #[test]
    fn sub_path_of_a_reservation() {
        let acl = acl(&[("http://+:80/app/", "alice", true, false)]);
        let alice = Caller::new("alice");
        assert!(register(&acl, "http://+:80/app/sub/", &alice).is_ok());
        assert_eq!(
            register(&acl, "http://+:80/application/", &alice)
                .unwrap_err()
                .0,
            Win32Error::AccessDenied
        );
        assert_eq!(
            register(&acl, "http://localhost:80/app/", &alice)
                .unwrap_err()
                .1
                .as_deref(),
            Some("implicit http://localhost:80/")
        );
    }

    #[test]
    fn admin_not_named_in_an_explicit_reservation_is_denied() {
        let acl = acl(&[("http://+:80/app/", "alice", true, false)]);
        let root = Caller::new("root").admin(true);
        assert_eq!(
            register(&acl, "http://+:80/app/", &root).unwrap_err(),
            (Win32Error::AccessDenied, Some("http://+:80/app/".into()))
        );
        assert!(register(&acl, "http://+:80/other/", &root).is_ok());
    }

    #[test]
    fn localhost_exemption() {
        let alice = Caller::new("alice");
        let none = UrlAcl::new();
        assert_eq!(register(&none, "http://localhost:8080/", &alice), Ok(None));
        assert_eq!(register(&none, "http://127.0.0.2:8080/", &alice), Ok(None));
        assert_eq!(register(&none, "http://[::1]:8080/", &alice), Ok(None));
        assert!(register(&none, "http://localhost:1024/", &alice).is_err());
        assert!(register(&none, "https://localhost:8443/", &alice).is_err());
        assert!(register(&none, "http://+:8080/", &alice).is_err());
        assert!(register(&none, "http://10.1.2.3:8080/", &alice).is_err());
        // Any explicit reservation on the port turns the exemption off, and the denial
        // says so.
        let other = acl(&[("http://+:8080/app/", "alice", true, false)]);
        assert_eq!(
            register(&other, "http://localhost:8080/", &alice)
                .unwrap_err()
                .1
                .as_deref(),
            Some("implicit http://localhost:8080/")
        );
        let err = other
            .check_register(&p("http://localhost:8080/"), &alice)
            .expect_err("denied");
        assert_eq!(
            err.to_string(),
            "access denied: the localhost exemption does not apply, because the reservation \
             http://+:8080/app/ is on the same scheme and port (any reservation there takes the \
             exemption away), so the governing reservation is implicit http://localhost:8080/, \
             which does not grant you the listen right; ask for a reservation that does"
        );
        // A denial with no exemption to lose does not mention it.
        let err = other
            .check_register(&p("http://+:8081/"), &alice)
            .expect_err("denied");
        assert!(!err.to_string().contains("exemption"), "{err}");
    }

    #[test]
    fn account_kinds() {
        let mut acl = UrlAcl::new();
        acl.insert(Reservation::new(
            p("http://+:8080/"),
            vec![Ace::new(Account::Group("web".into()), true, false)],
        ))
        .unwrap();
        acl.insert(Reservation::new(
            p("http://+:8081/"),
            vec![Ace::new(Account::User("uid:1000".into()), true, false)],
        ))
        .unwrap();
        let member = Caller::new("bob").group("web");
        let web_user = Caller::new("web");
        assert!(register(&acl, "http://+:8080/", &member).is_ok());
        assert!(register(&acl, "http://+:8080/", &web_user).is_err());
        assert!(
            register(
                &acl,
                "http://+:8081/",
                &Caller::new("alice").alias("uid:1000")
            )
            .is_ok()
        );
        assert!(register(&acl, "http://+:8081/", &Caller::new("x").group("uid:1000")).is_err());
    }

    #[test]
    fn everyone_names_every_caller() {
        let acl = acl(&[(
            "http://+:80/Temporary_Listen_Addresses/",
            "Everyone",
            true,
            false,
        )]);
        assert!(
            register(
                &acl,
                "http://+:80/temporary_listen_addresses/x/",
                &Caller::new("z")
            )
            .is_ok()
        );
    }

    #[test]
    fn delegation() {
        let mut acl = acl(&[("http://+:80/app/", "alice", true, true)]);
        let alice = Caller::new("alice");
        let bob_ace = vec![Ace::new(Account::Name("bob".into()), true, false)];
        acl.add(
            Reservation::new(p("http://+:80/app/team/"), bob_ace.clone()),
            &alice,
        )
        .unwrap();
        assert!(register(&acl, "http://+:80/app/team/x/", &Caller::new("bob")).is_ok());
        // bob has no delegate right.
        let err = acl
            .add(
                Reservation::new(p("http://+:80/app/team/y/"), bob_ace.clone()),
                &Caller::new("bob"),
            )
            .unwrap_err();
        assert_eq!(err.governing(), Some("http://+:80/app/team/"));
        // Nobody but administrators reserves under the implicit root.
        let err = acl
            .add(Reservation::new(p("http://+:81/"), bob_ace.clone()), &alice)
            .unwrap_err();
        assert_eq!(err.governing(), Some("implicit http://+:81/"));
        assert_eq!(
            acl.add(Reservation::new(p("http://+:80/APP/"), bob_ace), &alice)
                .unwrap_err()
                .win32(),
            Win32Error::AlreadyExists
        );
        assert!(
            acl.remove(&p("http://+:80/app/team/"), &Caller::new("bob"))
                .is_err()
        );
        assert!(acl.remove(&p("http://+:80/app/team/"), &alice).is_ok());
        assert_eq!(
            acl.remove(&p("http://+:80/app/team/"), &alice)
                .unwrap_err()
                .win32(),
            Win32Error::FileNotFound
        );
    }

    #[test]
    fn scheme_conflict_names_the_reservation() {
        let acl = acl(&[("https://+:443/", "alice", true, false)]);
        assert_eq!(
            register(&acl, "http://+:443/", &Caller::new("alice")).unwrap_err(),
            (Win32Error::AlreadyExists, Some("https://+:443/".into()))
        );
    }
}
