//! The descriptor budget: how the daemon's open-file limit (`RLIMIT_NOFILE`, read once at
//! start) is split between the kinds of descriptor that someone else can make it open.
//!
//! Every client connection, control connection (an attached worker is one), upstream
//! connection and listening socket is a descriptor, and they all come out of one limit. When
//! that limit is reached, every `accept`, `open` and `connect` fails with `EMFILE`, for every
//! application at once. So each kind gets a share, and the code that opens descriptors of
//! that kind counts against its share and refuses, or waits, at the end of it:
//!
//! | share | size | at the end of it |
//! |---|---|---|
//! | the daemon's own | 64 + limit/16 | — |
//! | of which listening sockets | half of it | a registration that needs a new port: `ERROR_TOO_MANY_OPEN_FILES` |
//! | control connections | limit/8, the last limit/128 (at least 8) for administrators | the connection is refused |
//! | upstream connections | limit/8, of which a quarter at most for one account's queues | the request is answered 503 |
//! | client connections | the rest, about 11/16 | `MaxConnections`: new connections wait in the backlog |
//!
//! The daemon's own share covers what it opens itself: the standard streams, the control
//! socket, the spare descriptor of the accept loops, the runtime's, the error log and state
//! files, `/proc` reads, control connections being refused, and listening sockets. The
//! control share is further cut per user (`[control]` in the configuration), and the
//! upstream share per account (`upstream::Share`), so that one account cannot take it all
//! either. A limit of 65536 gives 44992 client connections,
//! 8192 control connections (512 kept for administrators), 8192 upstream connections and
//! 2080 listening sockets.
//!
//! The limit is read after the daemon raised its soft limit to the hard one. Below
//! [`MIN_OPEN_FILES`] the daemon does not start: the shares would be too small to serve.

use std::fmt;

/// The least open-file limit the daemon starts with.
pub(crate) const MIN_OPEN_FILES: u64 = 256;

/// A limit above this (or none) counts as this: the kernel's default `nr_open`, the most
/// descriptors a process may have unless the administrator raised it.
const MAX_OPEN_FILES: u64 = 1 << 20;

/// Descriptors the daemon keeps for itself whatever the limit.
const FIXED_RESERVE: u64 = 64;

/// Control places kept for administrators, at the least.
const MIN_ADMIN_PLACES: u64 = 8;

/// How many descriptors of each kind the daemon may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The open-file limit the budget comes from.
    pub(crate) limit: u64,
    /// The daemon's own descriptors, listening sockets included.
    pub(crate) reserve: u64,
    /// Listening sockets, out of `reserve`.
    pub(crate) listeners: u64,
    /// Client connections: the ceiling of `MaxConnections`.
    pub(crate) clients: u64,
    /// Control connections, attached workers included.
    pub(crate) control: u64,
    /// The last of the `control` places, which only administrators may take.
    pub(crate) control_admin: u64,
    /// Connections to upstream servers, all upstream queues together.
    pub(crate) upstream: u64,
}

impl Budget {
    /// The budget of a process that may open `limit` descriptors.
    ///
    /// # Errors
    ///
    /// A limit below [`MIN_OPEN_FILES`], with what to do about it.
    pub(crate) fn of(limit: u64) -> Result<Budget, String> {
        if limit < MIN_OPEN_FILES {
            return Err(format!(
                "the open-file limit (RLIMIT_NOFILE) is {limit}: the daemon needs at least \
                 {MIN_OPEN_FILES}; raise it (`ulimit -n`, or LimitNOFILE= in the service unit)"
            ));
        }
        let limit = limit.min(MAX_OPEN_FILES);
        let reserve = FIXED_RESERVE + limit / 16;
        let control = limit / 8;
        let upstream = limit / 8;
        Ok(Budget {
            limit,
            reserve,
            listeners: reserve / 2,
            clients: limit - reserve - control - upstream,
            control,
            control_admin: (control / 16).max(MIN_ADMIN_PLACES),
            upstream,
        })
    }

    /// The budget of this process, from its soft open-file limit now.
    pub(crate) fn current() -> Result<Budget, String> {
        use nix::sys::resource::{Resource, getrlimit};
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)
            .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
        Budget::of(soft)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} client connections, {} control connections ({} kept for administrators), \
             {} upstream connections, {} for the daemon ({} listening sockets)",
            self.clients,
            self.control,
            self.control_admin,
            self.upstream,
            self.reserve,
            self.listeners
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_limit() {
        for limit in [
            256,
            300,
            512,
            1000,
            1024,
            4096,
            20000,
            65536,
            524_288,
            1 << 20,
        ] {
            let b = Budget::of(limit).unwrap();
            assert_eq!(
                b.reserve + b.clients + b.control + b.upstream,
                limit,
                "{limit}"
            );
            assert!(b.listeners < b.reserve, "{limit}");
            assert!(b.control_admin < b.control, "{limit}");
            assert!(
                b.clients >= limit * 2 / 5,
                "{limit}: clients keep the larger part"
            );
        }
    }

    #[test]
    fn worked_examples() {
        // The figures the README and the module doc give.
        let b = Budget::of(65536).unwrap();
        assert_eq!(
            (
                b.clients,
                b.control,
                b.control_admin,
                b.upstream,
                b.reserve,
                b.listeners
            ),
            (44992, 8192, 512, 8192, 4160, 2080)
        );
        let b = Budget::of(1024).unwrap();
        assert_eq!(
            (
                b.clients,
                b.control,
                b.control_admin,
                b.upstream,
                b.reserve,
                b.listeners
            ),
            (640, 128, 8, 128, 128, 64)
        );
        let b = Budget::of(256).unwrap();
        assert_eq!(
            (
                b.clients,
                b.control,
                b.control_admin,
                b.upstream,
                b.reserve,
                b.listeners
            ),
            (112, 32, 8, 32, 80, 40)
        );
    }

    #[test]
    fn too_small_a_limit_is_refused_and_no_limit_is_capped() {
        let e = Budget::of(255).unwrap_err();
        assert!(e.contains("255") && e.contains("256"), "{e}");
        assert!(Budget::of(0).is_err());
        let b = Budget::of(u64::MAX).unwrap();
        assert_eq!(b.limit, 1 << 20);
        assert_eq!(b, Budget::of(1 << 20).unwrap());
    }
}
