//! URL ACLs: the reservations of the configuration file and the state file, who may add and
//! remove them (`POST`/`DELETE /v1/urlacl`), and the reservations' part in routing.

use portshare_proto::control::{
    AccountKind, AclEntry, AddReservation, RemoveReservation, ReservationInfo, UrlAclList,
};
use portshare_router::{Account, Ace, Reservation};

use super::reload::Report;
use super::*;
use crate::config::{UrlAclConfig, unknown_names_warning};

/// The reservation an ACL entry of the configuration or the state file describes.
pub(super) fn reservation_of(a: &UrlAclConfig) -> Result<Reservation, String> {
    let prefix = UrlPrefix::parse(&a.url).map_err(|e| format!("urlacl {:?}: {e}", a.url))?;
    let account = |name: &String, group: bool| {
        if name.eq_ignore_ascii_case("everyone") {
            Account::Name("Everyone".into())
        } else if group {
            Account::Group(name.clone())
        } else {
            Account::User(name.clone())
        }
    };
    let aces = a
        .users
        .iter()
        .map(|u| account(u, false))
        .chain(a.groups.iter().map(|g| account(g, true)))
        .map(|acc| Ace::new(acc, a.listen, a.delegate))
        .collect();
    Ok(Reservation::new(prefix, aces))
}

pub(super) fn info_of(a: &UrlAclConfig, source: Source) -> ReservationInfo {
    let entry = |kind, name: &String| AclEntry {
        kind,
        name: name.clone(),
        listen: a.listen,
        delegate: a.delegate,
    };
    ReservationInfo {
        url: UrlPrefix::parse(&a.url).map_or_else(|_| a.url.clone(), |p| p.to_string()),
        entries: a
            .users
            .iter()
            .map(|u| entry(AccountKind::User, u))
            .chain(a.groups.iter().map(|g| entry(AccountKind::Group, g)))
            .collect(),
        source,
        warnings: Vec::new(),
    }
}

pub(super) fn same_url(a: &str, b: &UrlPrefix) -> bool {
    UrlPrefix::parse(a).is_ok_and(|p| p == *b)
}

impl Daemon {
    /// Rebuilds the reservations from the configuration and the state file: the
    /// configuration's entries win over the state file's for the same URL.
    pub(super) fn apply_acl(&self, st: &mut State, report: &mut Report) {
        let mut acl = UrlAcl::new();
        let mut sources = HashMap::new();
        let config = st.config.urlacls.iter().map(|a| (a, Source::Config));
        let saved = st.saved.urlacls.iter().map(|a| (a, Source::State));
        for (a, source) in config.chain(saved) {
            let r = match reservation_of(a) {
                Ok(r) => r,
                Err(e) => {
                    report.warn(format!("state file {}: {e}", self.state_file.display()));
                    continue;
                }
            };
            let prefix = r.prefix().clone();
            if sources.contains_key(&prefix) {
                if source == Source::State {
                    report.warn(format!(
                        "the reservation of {prefix} in the state file is overridden by the \
                         configuration file's"
                    ));
                }
                continue;
            }
            // The configuration's are in `Config::warnings`, with its other checks.
            if source == Source::State
                && let Some(w) = unknown_names_warning(a)
            {
                report.warn(w);
            }
            if acl.insert(r).is_ok() {
                sources.insert(prefix, source);
            }
        }
        // In URL order, so a report reads the same from one reload to the next.
        let sorted = |set: Vec<&UrlPrefix>| {
            let mut v: Vec<UrlPrefix> = set.into_iter().cloned().collect();
            v.sort_by_cached_key(ToString::to_string);
            v
        };
        let removed = sorted(
            st.acl_sources
                .keys()
                .filter(|p| !sources.contains_key(*p))
                .collect(),
        );
        let added = sorted(
            sources
                .keys()
                .filter(|p| !st.acl_sources.contains_key(*p))
                .collect(),
        );
        let kept = sorted(
            sources
                .keys()
                .filter(|p| st.acl_sources.contains_key(*p))
                .collect(),
        );
        for prefix in removed {
            let _ = st.table.unreserve(&prefix);
            report
                .changes
                .push(format!("reservation removed: {prefix}"));
        }
        for prefix in added {
            report.changes.push(format!("reservation added: {prefix}"));
            if let Err(e) = st.table.reserve(prefix.clone()) {
                report.warn(format!(
                    "reservation {prefix} does not take part in routing: {e}"
                ));
            }
        }
        for prefix in kept {
            let aces = |acl: &UrlAcl| acl.get(&prefix).map(|r| r.aces().to_vec());
            if aces(&st.acl) != aces(&acl) {
                report
                    .changes
                    .push(format!("reservation changed: {prefix}"));
            }
        }
        st.acl = acl;
        st.acl_sources = sources;
    }

    /// `GET /v1/urlacl`.
    pub(crate) fn urlacl_list(&self) -> UrlAclList {
        let st = self.lock();
        let mut reservations: Vec<ReservationInfo> = st
            .config
            .urlacls
            .iter()
            .map(|a| info_of(a, Source::Config))
            .chain(st.saved.urlacls.iter().filter_map(|a| {
                let p = UrlPrefix::parse(&a.url).ok()?;
                (st.acl_sources.get(&p) == Some(&Source::State)).then(|| info_of(a, Source::State))
            }))
            .collect();
        reservations.sort_by(|a, b| a.url.cmp(&b.url));
        UrlAclList {
            reservations,
            admin_group: st.config.admin_group.clone(),
        }
    }

    /// `POST /v1/urlacl`: administrators, and holders of the delegate right on the
    /// governing reservation, may reserve.
    pub(crate) fn urlacl_add(
        &self,
        session: &Session,
        add: &AddReservation,
    ) -> Result<ReservationInfo, ApiError> {
        let prefix = UrlPrefix::parse(&add.url).map_err(|e| {
            api(
                e.win32(),
                format!("{:?} is not a valid URL prefix: {e}", add.url),
            )
        })?;
        if add.users.is_empty() && add.groups.is_empty() {
            return Err(api(
                Win32Error::InvalidParameter,
                "a reservation grants someone: name at least one user or group",
            ));
        }
        let entry = UrlAclConfig {
            url: prefix.to_string(),
            users: add.users.clone(),
            groups: add.groups.clone(),
            listen: add.listen,
            delegate: add.delegate,
        };
        let reservation =
            reservation_of(&entry).map_err(|e| api(Win32Error::InvalidParameter, e))?;
        let known_as = session.known_as.clone();
        let warnings: Vec<String> = unknown_names_warning(&entry).into_iter().collect();
        let _one_at_a_time = self.one_change();
        let st = self.lock();
        if st.config.urlacls.iter().any(|a| same_url(&a.url, &prefix)) {
            return Err(api(
                Win32Error::AlreadyExists,
                format!(
                    "{prefix} is reserved in the configuration file: change it there and reload"
                ),
            ));
        }
        let caller = known_as.admin(self.is_admin(&st, &session.peer));
        st.acl
            .check_reserve(&prefix, &caller)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        let mut saved = st.saved.clone();
        saved.urlacls.push(entry.clone());
        // Written without the lock; nothing it was judged on can change meanwhile, as
        // only changes (one at a time) touch the configuration and the saved state.
        drop(st);
        self.save_state(&saved)?;
        let mut st = self.lock();
        let st = &mut *st;
        st.saved = saved;
        st.acl
            .insert(reservation)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        st.acl_sources.insert(prefix.clone(), Source::State);
        if let Err(e) = st.table.reserve(prefix.clone()) {
            tracing::warn!(%prefix, error = %e, "a reservation does not take part in routing");
        }
        self.publish(st);
        tracing::info!(%prefix, pid = session.peer.pid, user = %session.peer.user, "reserved");
        for w in &warnings {
            tracing::warn!(%prefix, "{w}");
        }
        Ok(ReservationInfo {
            warnings,
            ..info_of(&entry, Source::State)
        })
    }

    /// `DELETE /v1/urlacl`.
    pub(crate) fn urlacl_remove(
        &self,
        session: &Session,
        remove: &RemoveReservation,
    ) -> Result<(), ApiError> {
        let prefix = UrlPrefix::parse(&remove.url).map_err(|e| {
            api(
                e.win32(),
                format!("{:?} is not a valid URL prefix: {e}", remove.url),
            )
        })?;
        let known_as = session.known_as.clone();
        let _one_at_a_time = self.one_change();
        let st = self.lock();
        match st.acl_sources.get(&prefix) {
            None => {
                return Err(api(
                    Win32Error::FileNotFound,
                    format!("{prefix} is not reserved"),
                ));
            }
            Some(Source::Config) => {
                return Err(api(
                    Win32Error::AccessDenied,
                    format!(
                        "{prefix} is reserved in the configuration file: remove it there and \
                         reload"
                    ),
                ));
            }
            Some(Source::State) => {}
        }
        let caller = known_as.admin(self.is_admin(&st, &session.peer));
        let mut acl = st.acl.clone();
        acl.remove(&prefix, &caller)
            .map_err(|e| api(e.win32(), e.to_string()))?;
        let mut saved = st.saved.clone();
        saved.urlacls.retain(|a| !same_url(&a.url, &prefix));
        drop(st);
        self.save_state(&saved)?;
        let mut st = self.lock();
        let st = &mut *st;
        st.saved = saved;
        st.acl = acl;
        st.acl_sources.remove(&prefix);
        let _ = st.table.unreserve(&prefix);
        self.publish(st);
        tracing::info!(%prefix, pid = session.peer.pid, user = %session.peer.user, "unreserved");
        Ok(())
    }

    /// Writes the state file (see `changing`: the caller holds it, not the lock).
    pub(super) fn save_state(&self, saved: &StateFile) -> Result<(), ApiError> {
        saved
            .save(&self.state_file)
            .map_err(|e| api(Win32Error::AccessDenied, format!("{e}; nothing changed")))
    }
}
