//! What the accept loops (client ports and the control socket) do when `accept` fails.
//!
//! The errors mean different things and get different answers:
//!
//! - **Out of descriptors** (`EMFILE`, `ENFILE`): the connection waits in the backlog and
//!   the listener stays readable, so a loop that just tries again spins, and one that only
//!   sleeps leaves every waiting client hanging. The loop gives up its [`Spare`] descriptor,
//!   accepts the waiting connection into it and closes it at once (the client sees the
//!   connection closed, HTTP.sys's `Connections_Refused`), takes the spare back, and pauses
//!   briefly. The listeners themselves stay open throughout.
//! - **Out of memory** (`ENOBUFS`, `ENOMEM`): nothing to free here; pause and try again.
//! - **The peer's doing** (`ECONNABORTED`, `EPERM` from a firewall rule, the network errors
//!   Linux passes on from the new socket, a reset): that connection is gone and the next may
//!   be fine, so the loop goes on at once.
//!
//! Warnings about these are [`Throttle`]d: at most one per interval, saying how many
//! followed it, so an attack cannot fill the log.

use std::fs::File;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long an accept loop pauses after running out of descriptors or memory.
pub(crate) const PAUSE: Duration = Duration::from_millis(50);

/// Most waiting connections one loop closes in a row when out of descriptors, before it
/// pauses.
pub(crate) const SHED_BURST: usize = 64;

/// What an `accept` error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Out of descriptors: shed the waiting connection with the spare, then pause.
    Descriptors,
    /// Out of memory or another resource: pause.
    Resources,
    /// The connection failed on the peer's side: go on at once.
    Peer,
}

impl Failure {
    /// What `e`, returned by `accept`, calls for.
    pub(crate) fn of(e: &io::Error) -> Failure {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => Failure::Descriptors,
            Some(
                libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPERM
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::EOPNOTSUPP
                | libc::ETIMEDOUT,
            ) => Failure::Peer,
            _ => Failure::Resources,
        }
    }
}

/// One descriptor held in reserve (on `/dev/null`), given up for an instant so that an
/// accept loop out of descriptors can accept a waiting connection in order to close it.
///
/// While it is given up, any thread of the daemon may take the descriptor (a file being
/// opened, the other loop): the spare is then lost until a descriptor is freed, and the
/// loops only pause meanwhile. The budget is what keeps the daemon from running out; the
/// spare keeps the loops from spinning, and clients from hanging, if it does anyway.
#[derive(Debug)]
pub(crate) struct Spare(Mutex<SpareState>);

#[derive(Debug)]
enum SpareState {
    Held(File),
    /// Given up by a loop that is shedding.
    Lent,
    /// Not held: it could not be opened, or another thread took its descriptor while it
    /// was given up.
    Lost,
}

impl Spare {
    /// Opens the spare descriptor; without one, shedding waits for a descriptor to be freed.
    pub(crate) fn new() -> Spare {
        Spare(Mutex::new(match File::open("/dev/null") {
            Ok(f) => SpareState::Held(f),
            Err(error) => {
                tracing::warn!(%error, "cannot open a spare descriptor");
                SpareState::Lost
            }
        }))
    }

    /// Frees the spare descriptor, polls `accept` once, and takes the spare back, all
    /// without waiting, so the descriptor is free only for the instant of the `accept`
    /// call. `accept` must close what it accepted before it returns, so that the spare gets
    /// its descriptor back: it returns only what the caller wants to know of the
    /// connection. `None` when another loop is shedding just now, when the spare is lost
    /// and no descriptor has been freed since, or when no connection is waiting.
    pub(crate) fn shed<T>(
        &self,
        accept: impl Future<Output = io::Result<T>>,
    ) -> Option<io::Result<T>> {
        {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, SpareState::Lent) {
                SpareState::Held(file) => drop(file),
                SpareState::Lent => return None,
                // A descriptor freed since stands in for it, if there is one.
                SpareState::Lost => {
                    if File::open("/dev/null").is_err() {
                        *state = SpareState::Lost;
                        return None;
                    }
                }
            }
        }
        let accept = std::pin::pin!(accept);
        let accepted = match accept.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r),
            // Nothing waiting (or the task's budget spent): the loop's next accept waits
            // with its own waker.
            Poll::Pending => None,
        };
        *self.lock() = match File::open("/dev/null") {
            Ok(f) => SpareState::Held(f),
            Err(_) => SpareState::Lost,
        };
        accepted
    }

    /// Whether the spare descriptor is held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> bool {
        matches!(*self.lock(), SpareState::Held(_))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Lets one warning through per interval, and counts those held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl Throttle {
    /// A throttle letting one warning through every `every`.
    pub(crate) const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: Mutex::new(None),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a warning may be logged now, `n` being how many were held back since
    /// the last one; `None` (and one more held back) otherwise.
    pub(crate) fn pass(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_told_apart() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(Failure::of(&os(libc::EMFILE)), Failure::Descriptors);
        assert_eq!(Failure::of(&os(libc::ENFILE)), Failure::Descriptors);
        assert_eq!(Failure::of(&os(libc::ENOBUFS)), Failure::Resources);
        assert_eq!(Failure::of(&os(libc::ENOMEM)), Failure::Resources);
        assert_eq!(Failure::of(&os(libc::ECONNABORTED)), Failure::Peer);
        assert_eq!(Failure::of(&os(libc::EPERM)), Failure::Peer);
        assert_eq!(Failure::of(&os(libc::EPROTO)), Failure::Peer);
        assert_eq!(Failure::of(&io::Error::other("odd")), Failure::Resources);
    }

    #[test]
    fn a_throttle_counts_what_it_held_back() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.pass(), Some(0));
        assert_eq!(t.pass(), None);
        assert_eq!(t.pass(), None);
        let t2 = Throttle::new(Duration::ZERO);
        assert_eq!(t2.pass(), Some(0));
        assert_eq!(t2.pass(), Some(0));
        *t.last.lock().unwrap() = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.pass(), Some(2));
    }

    #[test]
    fn the_spare_is_given_up_and_taken_back() {
        let spare = Spare::new();
        assert!(spare.held());
        let out = spare.shed(async { File::open("/dev/null").map(drop) });
        assert!(matches!(out, Some(Ok(()))), "{out:?}");
        assert!(spare.held());
        // Nothing waiting: the accept does not complete, the spare comes back all the same.
        let out = spare.shed(std::future::pending::<io::Result<()>>());
        assert!(out.is_none());
        assert!(spare.held());
        // Lost, it is opened again at the next shed.
        *spare.lock() = SpareState::Lost;
        assert!(spare.shed(async { Ok(()) }).is_some());
        assert!(spare.held());
    }
}
