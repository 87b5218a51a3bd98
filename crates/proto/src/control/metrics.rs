//! The counters of `GET /v1/metrics`: HTTP.sys's performance counters (per request queue
//! and per site) and what HTTP.sys lacks (latency histograms, refusals by reason, workers'
//! slots, connections per port, TLS handshakes), one sample of them.
//!
//! Totals count from the daemon's start (for a queue: from its creation; an unnamed
//! queue's are its owner's, shared by all that account's unnamed queues); gauges are the
//! value now. A reader derives rates from two samples.
//!
//! ```
//! use std::time::Duration;
//! use portshare_proto::control::Histogram;
//!
//! let h = Histogram {
//!     bounds_us: vec![1_000, 10_000, 100_000],
//!     counts: vec![50, 40, 9, 1],
//!     count: 100,
//!     sum_us: 1_234_567,
//! };
//! assert_eq!(h.quantile(0.5), Some(Duration::from_millis(1)));
//! assert_eq!(h.quantile(0.99), Some(Duration::from_millis(100)));
//! assert_eq!(h.quantile(1.0), None); // beyond the last bound
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One sample of the daemon's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Per request queue (unnamed queues as one entry per owner, named `~uid:N`), by name.
    pub queues: Vec<QueueMetrics>,
    /// Per site: the scheme, host and port of registered prefixes.
    pub sites: Vec<SiteMetrics>,
    /// Per listening socket and scheme.
    pub ports: Vec<PortMetrics>,
    /// TLS handshakes on https ports.
    pub tls: TlsMetrics,
    /// Every error-log line of the service by its reason phrase (`QueueFull`, `NotFound`,
    /// `Timer_ReqQueue`, …), whether or not the request reached a queue.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

/// The counters of one request queue (HTTP Service Request Queues).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueMetrics {
    /// The queue's name; `~uid:N` for the unnamed queues of account N.
    pub name: String,
    /// The owner's uid.
    pub owner_uid: u32,
    /// Requests routed to the queue that asked for a slot (`ArrivalRate`'s total).
    pub arrivals: u64,
    /// Requests given a slot: handed to a worker or the upstream.
    pub delivered: u64,
    /// Requests given a slot that are done (their response complete, or failed).
    #[serde(default)]
    pub completed: u64,
    /// Requests the queue refused or dropped, by reason phrase (their sum is
    /// `RejectedRequests`).
    pub refused: BTreeMap<String, u64>,
    /// Requests waiting for a slot now (`CurrentQueueSize`).
    pub depth: u64,
    /// How long the oldest waiting request has waited, in milliseconds (`MaxQueueItemAge`).
    pub oldest_wait_ms: u64,
    /// Requests in the workers' hands now (slots taken).
    pub in_flight: u64,
    /// Opaque (upgraded) connections open now.
    pub opaque: u64,
    /// Client connections counted against the queue now.
    #[serde(default)]
    pub connections: u64,
    /// Time from arrival to a slot.
    pub wait: Histogram,
    /// Time from a slot taken to the slot given back: the response complete (or failed).
    pub app: Histogram,
    /// Time from arrival to the slot given back.
    pub total: Histogram,
    /// The attached processes, for callers who may see them (empty otherwise).
    pub workers: Vec<WorkerMetrics>,
    /// The processes are hidden from this caller.
    #[serde(default)]
    pub workers_hidden: bool,
}

/// One attached process of a queue: its worker connections summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMetrics {
    /// Its process id (0 for a queue's upstream).
    pub pid: u32,
    /// Slots it declared.
    pub slots: u32,
    /// Slots taken now.
    pub busy: u32,
    /// Requests it has finished (slots given back), while attached.
    pub served: u64,
}

/// The counters of one site (HTTP Service Url Groups): requests routed to a registration
/// with this scheme, host and port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteMetrics {
    /// `http` or `https`.
    pub scheme: String,
    /// The prefix's host as registered: a name, an address, `+` or `*`.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Requests routed (`AllRequests`).
    pub requests: u64,
    /// `GET` requests (`GetRequests`).
    pub get: u64,
    /// `HEAD` requests (`HeadRequests`).
    pub head: u64,
    /// Bytes read from clients for the site's requests, over HTTP/1 (`BytesReceived`).
    pub bytes_in: u64,
    /// Bytes written to clients for the site's requests, over HTTP/1 (`BytesSent`).
    pub bytes_out: u64,
}

/// Connections of one listening socket, by the scheme the port serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMetrics {
    /// The socket's address, such as `127.0.0.1:8080`.
    pub address: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Connections open now (`CurrentConnections`).
    pub connections: u64,
    /// Connections accepted since the socket was opened (`ConnectionAttempts`).
    pub accepted: u64,
}

/// TLS handshakes since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMetrics {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes that failed or timed out.
    pub failures: u64,
}

/// A latency histogram: `counts[i]` observations at most `bounds_us[i]` microseconds and
/// above the bound before (not cumulative), and one more bucket at the end for those above
/// the last bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// The buckets' upper bounds, in microseconds, ascending.
    pub bounds_us: Vec<u64>,
    /// Observations per bucket (`bounds_us.len() + 1` of them).
    pub counts: Vec<u64>,
    /// All observations.
    pub count: u64,
    /// The observations' sum, in microseconds.
    pub sum_us: u64,
}

impl Histogram {
    /// The `q` quantile (0.0 to 1.0) as the upper bound of the bucket it falls in; `None`
    /// with no observations, or when it falls above the last bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // The rank of the observation the quantile names, 1-based.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return self.bounds_us.get(i).map(|&us| Duration::from_micros(us));
            }
        }
        None
    }

    /// The mean, `None` with no observations.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.sum_us / self.count))
    }

    /// The observations made since `earlier`, a sample of the same histogram taken before
    /// this one: bucket by bucket, never below zero (a histogram that started again, as a
    /// queue made anew under the same name, counts from zero). Two samples a second apart
    /// give that second's quantiles.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        if self.bounds_us != earlier.bounds_us || earlier.count > self.count {
            return self.clone();
        }
        Histogram {
            bounds_us: self.bounds_us.clone(),
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            count: self.count - earlier.count,
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// Adds `other`'s observations (same bounds) to this one's.
    pub fn merge(&mut self, other: &Histogram) {
        if self.bounds_us.is_empty() && self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        if self.bounds_us != other.bounds_us {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(counts: Vec<u64>) -> Histogram {
        let count = counts.iter().sum();
        Histogram {
            bounds_us: vec![100, 200, 500],
            counts,
            count,
            sum_us: 0,
        }
    }

    #[test]
    fn quantiles_name_the_bucket_they_fall_in() {
        let x = h(vec![1, 1, 2, 0]);
        assert_eq!(x.quantile(0.0), Some(Duration::from_micros(100)));
        assert_eq!(x.quantile(0.25), Some(Duration::from_micros(100)));
        assert_eq!(x.quantile(0.26), Some(Duration::from_micros(200)));
        assert_eq!(x.quantile(0.5), Some(Duration::from_micros(200)));
        assert_eq!(x.quantile(1.0), Some(Duration::from_micros(500)));
        assert_eq!(h(vec![0, 0, 0, 3]).quantile(0.5), None);
        assert_eq!(h(vec![0, 0, 0, 0]).quantile(0.5), None);
        assert_eq!(x.quantile(1.5), None);
        assert_eq!(x.quantile(f64::NAN), None);
    }

    #[test]
    fn what_happened_since_an_earlier_sample() {
        let before = h(vec![1, 0, 2, 0]);
        let now = h(vec![1, 3, 2, 1]);
        let d = now.since(&before);
        assert_eq!(d.counts, vec![0, 3, 0, 1]);
        assert_eq!(d.count, 4);
        assert_eq!(d.quantile(0.5), Some(Duration::from_micros(200)));
        // Started again: all of it is new.
        assert_eq!(h(vec![1, 0, 0, 0]).since(&now), h(vec![1, 0, 0, 0]));
        assert_eq!(now.since(&Histogram::default()), now);
    }

    #[test]
    fn histograms_merge_bucket_by_bucket() {
        let mut a = Histogram::default();
        a.merge(&h(vec![1, 0, 0, 0]));
        a.merge(&h(vec![0, 2, 0, 1]));
        assert_eq!(a.counts, vec![1, 2, 0, 1]);
        assert_eq!(a.count, 4);
    }
}
