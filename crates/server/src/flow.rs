//! What the daemon holds of workers' responses, and its bounds.
//!
//! Every frame a worker connection's reader takes off the socket to hand to a client is
//! charged, from then until its bytes are written to the client or dropped, to the
//! worker's [`Account`] and to the daemon's [`Buffers`]. The [`Charge`] travels with the
//! frame and gives its bytes back when dropped, so the count is exact however a request
//! ends: written, reset, the client gone, the worker gone. A frame is charged its payload
//! plus [`EVENT_OVERHEAD`], so a flood of tiny frames is bounded like a flood of large ones;
//! the daemon copies each payload out of its read buffer into an allocation of its own, so
//! what is charged is what is kept.
//!
//! # Bounds
//!
//! A worker's reader takes a frame only if its charge fits, and otherwise stops reading that
//! socket until some of what the worker holds is released: the back-pressure falls on that
//! worker's streams alone. A charge fits when
//!
//! - the worker then holds at most [`WORKER_BOUND`], and
//! - the daemon then holds at most [`SHARED_BOUND`] in all, or the worker at most
//!   [`WORKER_FLOOR`]: however much other workers hold, each may always hold its floor, so
//!   one application's flood never stalls another.
//!
//! Together: the daemon never holds more than `SHARED_BOUND + WORKER_FLOOR × accounts`,
//! the `bound` that `/v1/state` shows beside the bytes held. The accounts alive are the
//! worker connections, and for a moment those just gone: a client connection whose worker
//! is gone gives up at once, releasing what it held, so a worker cannot multiply floors by
//! disconnecting and attaching again.
//! Since every frame fits a floor (data frames are at most one window, heads at most
//! [`MAX_RESPONSE_HEAD`]), a worker holding nothing can always take its next frame.
//!
//! What a worker can make the daemon hold is bounded at the source too: the daemon grants a
//! stream's window back only once the bytes are written to the client, so a worker that
//! keeps to its windows holds at most one window per stream; one that does not is
//! disconnected (see the [worker wire](portshare_proto::wire)).
//!
//! The numbers: a window is 256 KiB, so [`WORKER_BOUND`] lets one worker connection have 16
//! streams' windows in the daemon at once before its other streams wait, and the shared
//! 16 MiB is what the daemon spends on responses whose clients read more slowly than their
//! application writes, the kernel's socket buffers aside. A client that reads nothing is
//! cut by `MinSendRate`, which releases what it held.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portshare_proto::control::BufferGauge;
use portshare_proto::wire::{INITIAL_WINDOW, MAX_RESPONSE_HEAD};
use tokio::sync::Notify;

/// What each frame held is charged beyond its payload: the event, its place in the
/// stream's channel and the payload's allocation.
pub(crate) const EVENT_OVERHEAD: usize = 128;

/// The most one worker connection may have held at once.
pub(crate) const WORKER_BOUND: usize = 4 << 20;

/// What all worker connections together may hold before each is held to its floor.
pub(crate) const SHARED_BOUND: usize = 16 << 20;

/// What any worker connection may always hold: a full window of data and a response head.
pub(crate) const WORKER_FLOOR: usize = INITIAL_WINDOW as usize + MAX_RESPONSE_HEAD;

/// The daemon-wide count.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    total: AtomicUsize,
    peak: AtomicUsize,
    /// Accounts alive, each with its floor.
    accounts: AtomicUsize,
    /// Readers waiting for the total to fall (their own floor used up).
    waiting: AtomicUsize,
    /// Woken on every release while some reader waits for the total.
    freed: Notify,
}

impl Buffers {
    /// A new account, for one worker connection.
    pub(crate) fn account(self: &Arc<Buffers>) -> Arc<Account> {
        self.accounts.fetch_add(1, Ordering::SeqCst);
        Arc::new(Account {
            budget: self.clone(),
            held: AtomicUsize::new(0),
            released: Notify::new(),
        })
    }

    /// The gauge `/v1/state` shows.
    pub(crate) fn gauge(&self) -> BufferGauge {
        let accounts = self.accounts.load(Ordering::SeqCst);
        BufferGauge {
            bytes: self.total.load(Ordering::SeqCst) as u64,
            peak: self.peak.load(Ordering::Relaxed) as u64,
            bound: (SHARED_BOUND + WORKER_FLOOR * accounts) as u64,
            shared_bound: SHARED_BOUND as u64,
            worker_bound: WORKER_BOUND as u64,
            worker_floor: WORKER_FLOOR as u64,
        }
    }
}

/// One worker connection's count.
#[derive(Debug)]
pub(crate) struct Account {
    budget: Arc<Buffers>,
    held: AtomicUsize,
    /// Woken when a charge of this account is released.
    released: Notify,
}

impl Account {
    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Charges a frame of `payload` bytes, if it fits.
    ///
    /// Only the worker's reader charges its account, so what it holds can only fall between
    /// the check and the charge; the total is taken with a compare-and-swap, so the bound
    /// holds with many readers at once.
    pub(crate) fn try_charge(self: &Arc<Account>, payload: usize) -> Option<Charge> {
        let bytes = payload + EVENT_OVERHEAD;
        let held = self.held.load(Ordering::SeqCst);
        if held + bytes > WORKER_BOUND {
            return None;
        }
        let within_floor = held + bytes <= WORKER_FLOOR;
        let total = &self.budget.total;
        let mut now = total.load(Ordering::SeqCst);
        loop {
            if now + bytes > SHARED_BOUND && !within_floor {
                return None;
            }
            match total.compare_exchange_weak(now, now + bytes, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        self.budget.peak.fetch_max(now + bytes, Ordering::Relaxed);
        self.held.fetch_add(bytes, Ordering::SeqCst);
        Some(Charge {
            account: self.clone(),
            bytes,
        })
    }

    /// A charge of nothing, to merge others into.
    pub(crate) fn nothing(self: &Arc<Account>) -> Charge {
        Charge {
            account: self.clone(),
            bytes: 0,
        }
    }

    /// Waits until a frame of `payload` bytes may fit: something this account held, or
    /// anything at all, was released since the charge was refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn room(&self, payload: usize) {
        let bytes = payload + EVENT_OVERHEAD;
        loop {
            let own = self.released.notified();
            let any = self.budget.freed.notified();
            tokio::pin!(own, any);
            own.as_mut().enable();
            any.as_mut().enable();
            let waiting = Waiting::new(&self.budget);
            let held = self.held();
            if held + bytes <= WORKER_BOUND
                && (held + bytes <= WORKER_FLOOR
                    || self.budget.total.load(Ordering::SeqCst) + bytes <= SHARED_BOUND)
            {
                return;
            }
            tokio::select! {
                () = own => {}
                () = any => {}
            }
            drop(waiting);
        }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.budget.accounts.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a reader among those waiting for the total to fall, while it lives.
struct Waiting<'a>(&'a Buffers);

impl<'a> Waiting<'a> {
    fn new(budget: &'a Buffers) -> Waiting<'a> {
        budget.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(budget)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes held for a worker until this is dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    account: Arc<Account>,
    bytes: usize,
}

impl Charge {
    /// Takes over `other`'s bytes, to release them with this charge's.
    pub(crate) fn merge(&mut self, mut other: Charge) {
        debug_assert!(Arc::ptr_eq(&self.account, &other.account));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let account = &self.account;
        account.held.fetch_sub(self.bytes, Ordering::SeqCst);
        let budget = &account.budget;
        budget.total.fetch_sub(self.bytes, Ordering::SeqCst);
        account.released.notify_one();
        // Registered before a waiting reader checks the total (`Account::room`), so a
        // release after its check finds it counted here.
        if budget.waiting.load(Ordering::SeqCst) > 0 {
            budget.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_held_to_its_bound_and_the_total_to_the_shared_bound_past_floors() {
        let budget = Arc::new(Buffers::default());
        let a = budget.account();
        let window = INITIAL_WINDOW as usize;
        // One worker alone: up to its own bound.
        let mut held = Vec::new();
        while let Some(c) = a.try_charge(window) {
            held.push(c);
        }
        assert_eq!(held.len(), WORKER_BOUND / (window + EVENT_OVERHEAD));
        assert!(a.held() <= WORKER_BOUND);
        // Others fill the shared bound; then each still gets its floor, no more.
        let others: Vec<_> = (0..8).map(|_| budget.account()).collect();
        for o in &others {
            while let Some(c) = o.try_charge(window) {
                held.push(c);
            }
        }
        let gauge = budget.gauge();
        assert!(gauge.bytes <= gauge.bound, "{gauge:?}");
        assert!(gauge.bytes > SHARED_BOUND as u64, "{gauge:?}");
        let late = budget.account();
        let first = late.try_charge(window).expect("the floor is always there");
        assert!(late.try_charge(MAX_RESPONSE_HEAD).is_none());
        assert!(late.try_charge(1000).is_some(), "what fits the floor");
        drop(first);
        assert!(budget.gauge().bytes <= budget.gauge().bound);
        // Everything released: nothing held.
        drop(held);
        drop(late);
        let gauge = budget.gauge();
        assert_eq!(gauge.bytes, 0, "{gauge:?}");
        assert_eq!(
            gauge.bound,
            (SHARED_BOUND + 9 * WORKER_FLOOR) as u64,
            "a and the 8 others"
        );
        assert!(gauge.peak <= gauge.bound);
    }

    #[test]
    fn merged_charges_are_released_once() {
        let budget = Arc::new(Buffers::default());
        let a = budget.account();
        let mut batch = a.nothing();
        for n in [0, 10, 1000] {
            batch.merge(a.try_charge(n).expect("room"));
        }
        assert_eq!(a.held(), 1010 + 3 * EVENT_OVERHEAD);
        drop(batch);
        assert_eq!((a.held(), budget.gauge().bytes), (0, 0));
    }

    #[tokio::test]
    async fn a_refused_reader_waits_for_a_release_of_its_own_or_of_the_total() {
        let budget = Arc::new(Buffers::default());
        let big = budget.account();
        let mut held = Vec::new();
        // `big` and a crowd fill everything past the floors.
        while let Some(c) = big.try_charge(64 * 1024) {
            held.push(c);
        }
        let crowd: Vec<_> = (0..4).map(|_| budget.account()).collect();
        for o in &crowd {
            while let Some(c) = o.try_charge(64 * 1024) {
                held.push(c);
            }
        }
        let small = budget.account();
        let mine: Vec<_> = std::iter::from_fn(|| small.try_charge(64 * 1024)).collect();
        assert!(small.try_charge(64 * 1024).is_none());
        // Someone else's release lets `small` go on once the total is under the bound.
        let wait = tokio::spawn({
            let small = small.clone();
            async move { small.room(64 * 1024).await }
        });
        tokio::task::yield_now().await;
        assert!(!wait.is_finished());
        held.truncate(held.len() / 2);
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("woken by the release")
            .expect("no panic");
        drop(mine);
    }
}
