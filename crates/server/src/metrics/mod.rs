//! Counters: the recording side of HTTP.sys's performance counters (spec §17) and of what
//! it lacks, and their exposition.
//!
//! This module owns the counters the data plane writes and the registries the control
//! plane reads them through:
//!
//! - [`QueueCounters`], held by each [`Queue`](crate::queue::Queue) (an unnamed queue
//!   shares its owner's, so a label per account, not per queue): arrivals, slots given,
//!   slots given back, refusals by reason, and histograms of time waiting, time in the
//!   application and total time;
//! - [`SiteCounters`], held by each route's [`Destination`](crate::shared::Destination)
//!   and shared by every registration of one scheme, host and port;
//! - [`PortCounters`], held by each listening socket: connections open and accepted, by
//!   scheme;
//! - [`Service`], in [`Shared`](crate::shared::Shared): TLS handshakes, the registries,
//!   and every error-log line by reason.
//!
//! Each counter lives as long as what it counts: the registries keep only weak references,
//! so a queue's or a site's series go when it does.
//!
//! Recording takes no lock: relaxed atomic additions, each histogram on cache lines of its
//! own. Registries take a lock when a queue, a route or a listener is made, and when the
//! counters are read; never for a request.
//!
//! Children: `read` turns the counters into the control API's
//! [`Metrics`](portshare_proto::control::Metrics); `text` writes that as Prometheus text
//! or OpenMetrics; `listen` is the opt-in scrape listener (`[metrics] listen`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use portshare_router::{Reason, Scheme};

pub(crate) mod listen;
pub(crate) mod read;
pub(crate) mod text;

/// The histograms' bucket bounds, in microseconds: 1-2-5 steps from 100 µs to 50 s, then
/// 60 s; one more bucket holds what is above.
pub(crate) const BOUNDS_US: [u64; 19] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000, 60_000_000,
];

/// The reasons counted, in the order of their slots; any other (a reason added later)
/// counts in the last slot, as `Other`.
pub(crate) const REASONS: [Reason; 42] = [
    Reason::AppOffline,
    Reason::AppPoolTimer,
    Reason::AppShutdown,
    Reason::BadRequest,
    Reason::BadGateway,
    Reason::ClientReset,
    Reason::ConnectionAbandonedByAppPool,
    Reason::ConnectionAbandonedByReqQueue,
    Reason::ConnectionDropped,
    Reason::ConnectionDroppedListFull,
    Reason::ConnLimit,
    Reason::ConnectionsRefused,
    Reason::Disabled,
    Reason::EntityTooLarge,
    Reason::FieldLength,
    Reason::Forbidden,
    Reason::Header,
    Reason::Hostname,
    Reason::Internal,
    Reason::InvalidCrLf,
    Reason::LengthRequired,
    Reason::NotAvailable,
    Reason::NotImplemented,
    Reason::Number,
    Reason::Precondition,
    Reason::QueueFull,
    Reason::RequestLength,
    Reason::TimerAppPool,
    Reason::TimerConnectionIdle,
    Reason::TimerEntityBody,
    Reason::TimerHeaderWait,
    Reason::TimerMinBytesPerSecond,
    Reason::TimerReqQueue,
    Reason::TimerResponse,
    Reason::TimerSslRenegotiation,
    Reason::Url,
    Reason::UrlLength,
    Reason::Verb,
    Reason::VersionNotSupported,
    Reason::NotFound,
    Reason::Misdirected,
    Reason::UpstreamOwner,
];

/// The slot of `reason` in [`REASONS`], or the `Other` slot after them.
fn slot_of(reason: Reason) -> usize {
    REASONS
        .iter()
        .position(|&r| r == reason)
        .unwrap_or(REASONS.len())
}

/// The phrase of slot `i`.
fn phrase(i: usize) -> &'static str {
    REASONS.get(i).map_or("Other", |r| r.as_str())
}

/// Counts by reason: one per [`REASONS`] and one for the rest.
#[derive(Debug)]
pub(crate) struct ByReason([AtomicU64; REASONS.len() + 1]);

impl Default for ByReason {
    fn default() -> ByReason {
        ByReason(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl ByReason {
    pub(crate) fn add(&self, reason: Reason) {
        self.0[slot_of(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// The reasons counted at least once, with their counts.
    pub(crate) fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .map(|(i, n)| (phrase(i), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }
}

/// A latency histogram of relaxed atomics over [`BOUNDS_US`], on cache lines of its own.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Histogram {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Counts one observation.
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// One sample, as the control API carries it (counts per bucket, not cumulative).
    pub(crate) fn sample(&self) -> portshare_proto::control::Histogram {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        portshare_proto::control::Histogram {
            bounds_us: BOUNDS_US.to_vec(),
            count: counts.iter().sum(),
            counts,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A counter on a cache line of its own, for one many connections add to at once.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Padded(AtomicU64);

impl Padded {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters of a request queue (or of one account's unnamed queues).
#[derive(Debug)]
pub(crate) struct QueueCounters {
    /// The queue's name, or `~uid:N` for the unnamed queues of account N.
    pub(crate) label: String,
    pub(crate) owner_uid: u32,
    arrivals: Padded,
    delivered: Padded,
    completed: Padded,
    refused: ByReason,
    pub(crate) wait: Histogram,
    pub(crate) app: Histogram,
    pub(crate) total: Histogram,
}

impl QueueCounters {
    /// Counters of their own, for a queue labelled `label`.
    pub(crate) fn new(label: String, owner_uid: u32) -> Arc<QueueCounters> {
        Arc::new(QueueCounters {
            label,
            owner_uid,
            arrivals: Padded::default(),
            delivered: Padded::default(),
            completed: Padded::default(),
            refused: ByReason::default(),
            wait: Histogram::default(),
            app: Histogram::default(),
            total: Histogram::default(),
        })
    }

    /// A request asked the queue for a slot.
    pub(crate) fn arrival(&self) {
        self.arrivals.add(1);
    }

    /// The queue refused or dropped a request.
    pub(crate) fn refused(&self, reason: Reason) {
        self.refused.add(reason);
    }

    /// A request that arrived at `arrived` got a slot now.
    pub(crate) fn taken(&self, arrived: Instant, now: Instant) {
        self.delivered.add(1);
        self.wait.record(now.saturating_duration_since(arrived));
    }

    /// A request that arrived at `arrived` and got its slot at `taken` gave it back.
    pub(crate) fn done(&self, arrived: Instant, taken: Instant) {
        let now = Instant::now();
        self.completed.add(1);
        self.app.record(now.saturating_duration_since(taken));
        self.total.record(now.saturating_duration_since(arrived));
    }
}

/// The counters of a site: requests routed to registrations of one scheme, host and port
/// (HTTP Service Url Groups, with a site for a URL group).
#[derive(Debug, Default)]
pub(crate) struct SiteCounters {
    key: SiteKey,
    requests: Padded,
    get: AtomicU64,
    head: AtomicU64,
    bytes_in: Padded,
    bytes_out: Padded,
}

impl SiteCounters {
    /// A request with `method` was routed to the site.
    pub(crate) fn request(&self, method: &[u8]) {
        self.requests.add(1);
        match method {
            b"GET" => self.get.fetch_add(1, Ordering::Relaxed),
            b"HEAD" => self.head.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Bytes read from a client of the site.
    pub(crate) fn read(&self, n: usize) {
        self.bytes_in.add(n as u64);
    }

    /// Bytes written to a client of the site.
    pub(crate) fn written(&self, n: usize) {
        self.bytes_out.add(n as u64);
    }
}

/// Counts a request of an HTTP/1 connection routed to `site`, and makes the site the one
/// the connection's bytes count for from now on; its head, read before the connection knew
/// its site, counts for it too.
pub(crate) fn routed(
    current: &mut Option<Arc<SiteCounters>>,
    site: &Arc<SiteCounters>,
    head_bytes: &[u8],
    head: &crate::head::Head<'_>,
) {
    site.request(head.method());
    if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, site)) {
        site.read(head_bytes.len());
        *current = Some(site.clone());
    }
}

/// A site's scheme, host (as registered, lower case) and port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SiteKey {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Connections of one listening socket, by scheme.
#[derive(Debug)]
pub(crate) struct PortCounters {
    address: SocketAddr,
    /// Open now and accepted, for http (`[0]`) and https (`[1]`).
    open: [AtomicU64; 2],
    accepted: [AtomicU64; 2],
}

/// A connection counted open on its listener until dropped.
#[derive(Debug)]
pub(crate) struct Open(Arc<PortCounters>, usize);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

impl PortCounters {
    /// Counts a connection accepted, and open until the guard is dropped.
    pub(crate) fn accepted(self: &Arc<PortCounters>, https: bool) -> Open {
        let i = usize::from(https);
        self.accepted[i].fetch_add(1, Ordering::Relaxed);
        self.open[i].fetch_add(1, Ordering::Relaxed);
        Open(self.clone(), i)
    }
}

/// Every error-log line of the daemon's process by reason, from the error log's one door
/// ([`crate::errlog::Entry::emit`]), which has no [`Service`] at hand.
static REFUSED: std::sync::LazyLock<ByReason> = std::sync::LazyLock::new(ByReason::default);

/// Counts an error-log line.
pub(crate) fn logged(reason: Reason) {
    REFUSED.add(reason);
}

/// The service's counters and the registries of the others.
#[derive(Debug)]
pub(crate) struct Service {
    started: Instant,
    tls_ok: AtomicU64,
    tls_failed: AtomicU64,
    /// The counters of each account's unnamed queues.
    owners: Mutex<HashMap<u32, Weak<QueueCounters>>>,
    sites: Mutex<HashMap<SiteKey, Weak<SiteCounters>>>,
    ports: Mutex<Vec<Weak<PortCounters>>>,
}

impl Default for Service {
    fn default() -> Service {
        Service {
            started: Instant::now(),
            tls_ok: AtomicU64::new(0),
            tls_failed: AtomicU64::new(0),
            owners: Mutex::default(),
            sites: Mutex::default(),
            ports: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // What a registry holds stays consistent whatever panicked while it was held.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service {
    /// Counts a TLS handshake: done, or failed (or timed out).
    pub(crate) fn handshake(&self, ok: bool) {
        let c = if ok { &self.tls_ok } else { &self.tls_failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of a new queue: its own for a named one; for an unnamed one (`~…`),
    /// those its owner's unnamed queues share while any lives.
    pub(crate) fn queue(&self, name: &str, owner_uid: u32) -> Arc<QueueCounters> {
        if !name.starts_with('~') {
            return QueueCounters::new(name.to_owned(), owner_uid);
        }
        let mut owners = lock(&self.owners);
        owners.retain(|_, w| w.strong_count() > 0);
        if let Some(c) = owners.get(&owner_uid).and_then(Weak::upgrade) {
            return c;
        }
        let c = QueueCounters::new(format!("~uid:{owner_uid}"), owner_uid);
        owners.insert(owner_uid, Arc::downgrade(&c));
        c
    }

    /// The counters of the site of a registration of `scheme`, `host` and `port`, shared
    /// with the other registrations of the site while any lives.
    pub(crate) fn site(&self, scheme: Scheme, host: &str, port: u16) -> Arc<SiteCounters> {
        let key = SiteKey {
            https: scheme == Scheme::Https,
            host: host.to_ascii_lowercase(),
            port,
        };
        let mut sites = lock(&self.sites);
        sites.retain(|_, w| w.strong_count() > 0);
        if let Some(c) = sites.get(&key).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(SiteCounters {
            key: key.clone(),
            ..SiteCounters::default()
        });
        sites.insert(key, Arc::downgrade(&c));
        c
    }

    /// The counters of a new listening socket on `address`.
    pub(crate) fn port(&self, address: SocketAddr) -> Arc<PortCounters> {
        let c = Arc::new(PortCounters {
            address,
            open: [AtomicU64::new(0), AtomicU64::new(0)],
            accepted: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let mut ports = lock(&self.ports);
        ports.retain(|w| w.strong_count() > 0);
        ports.push(Arc::downgrade(&c));
        c
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::default();
        for us in [0, 100, 101, 60_000_000, 60_000_001] {
            h.record(Duration::from_micros(us));
        }
        let s = h.sample();
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[BOUNDS_US.len() - 1], 1);
        assert_eq!(s.counts[BOUNDS_US.len()], 1);
        assert_eq!(s.count, 5);
        assert_eq!(s.sum_us, 120_000_202);
        assert_eq!(s.quantile(0.4), Some(Duration::from_micros(100)));
    }

    #[test]
    fn unnamed_queues_of_one_owner_share_counters_while_one_lives() {
        let s = Service::default();
        let a = s.queue("~0a", 1000);
        let b = s.queue("~0b", 1000);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.label, "~uid:1000");
        assert!(!Arc::ptr_eq(&a, &s.queue("~0c", 1001)));
        let named = s.queue("app", 1000);
        assert_eq!(named.label, "app");
        drop((a, b));
        let c = s.queue("~0d", 1000);
        assert_eq!(c.arrivals.get(), 0);
    }

    #[test]
    fn every_reason_has_a_slot_of_its_own() {
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(slot_of(*r), i);
        }
        assert_eq!(phrase(REASONS.len()), "Other");
        let by = ByReason::default();
        by.add(Reason::QueueFull);
        by.add(Reason::QueueFull);
        by.add(Reason::UpstreamOwner);
        let got: Vec<_> = by.nonzero().collect();
        assert_eq!(got, vec![("QueueFull", 2), ("Upstream_Owner", 1)]);
    }
}
