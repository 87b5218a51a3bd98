//! One sample of the counters, as the control API carries it ([`Metrics`]): the queues'
//! counters with their gauges (depth, oldest wait, slots) read from the queues themselves,
//! an owner's unnamed queues as one, and the registries' sites and ports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use portshare_proto::control::{
    Metrics, PortMetrics, QueueMetrics, SiteMetrics, TlsMetrics, WorkerMetrics,
};

use super::{REFUSED, Service, lock};
use crate::queue::{Queue, Target};

/// A sample of `queues` (each with whether the caller may see its processes) and of the
/// service's own counters.
pub(crate) fn sample<'q>(
    service: &Service,
    queues: impl IntoIterator<Item = (&'q Arc<Queue>, bool)>,
) -> Metrics {
    let mut by_label: BTreeMap<String, QueueMetrics> = BTreeMap::new();
    for (q, shown) in queues {
        let c = q.metrics();
        let m = by_label
            .entry(c.label.clone())
            .or_insert_with(|| QueueMetrics {
                name: c.label.clone(),
                owner_uid: c.owner_uid,
                arrivals: c.arrivals.get(),
                delivered: c.delivered.get(),
                completed: c.completed.get(),
                refused: c
                    .refused
                    .nonzero()
                    .map(|(r, n)| (r.to_owned(), n))
                    .collect(),
                wait: c.wait.sample(),
                app: c.app.sample(),
                total: c.total.sample(),
                ..QueueMetrics::default()
            });
        let (depth, in_flight, oldest) = q.depth();
        m.depth += depth;
        m.in_flight += in_flight;
        m.oldest_wait_ms = m
            .oldest_wait_ms
            .max(oldest.map_or(0, |d| d.as_millis() as u64));
        m.opaque += q.opaque();
        m.connections += q.connections();
        if !shown {
            m.workers_hidden = true;
            continue;
        }
        for (target, slots, busy, served) in q.seats_served() {
            let pid = match target {
                Target::Worker(w) => w.peer.pid,
                Target::Upstream(_) => 0,
            };
            match m.workers.iter_mut().find(|w| w.pid == pid) {
                Some(w) => {
                    w.slots += slots;
                    w.busy += busy;
                    w.served += served;
                }
                None => m.workers.push(WorkerMetrics {
                    pid,
                    slots,
                    busy,
                    served,
                }),
            }
        }
    }
    for m in by_label.values_mut() {
        if m.workers_hidden {
            m.workers.clear();
        }
        m.workers.sort_by_key(|w| w.pid);
    }
    let mut sites: Vec<SiteMetrics> = lock(&service.sites)
        .values()
        .filter_map(std::sync::Weak::upgrade)
        .map(|s| SiteMetrics {
            scheme: if s.key.https { "https" } else { "http" }.to_owned(),
            host: s.key.host.clone(),
            port: s.key.port,
            requests: s.requests.get(),
            get: s.get.load(Ordering::Relaxed),
            head: s.head.load(Ordering::Relaxed),
            bytes_in: s.bytes_in.get(),
            bytes_out: s.bytes_out.get(),
        })
        .collect();
    sites.sort_by(|a, b| (&a.scheme, &a.host, a.port).cmp(&(&b.scheme, &b.host, b.port)));
    let mut ports = Vec::new();
    for p in lock(&service.ports)
        .iter()
        .filter_map(std::sync::Weak::upgrade)
    {
        for (i, scheme) in ["http", "https"].into_iter().enumerate() {
            let accepted = p.accepted[i].load(Ordering::Relaxed);
            // A port serves one scheme: the other is shown only if it ever served it.
            if accepted == 0 && (i == 1 || p.accepted[1].load(Ordering::Relaxed) > 0) {
                continue;
            }
            ports.push(PortMetrics {
                address: p.address.to_string(),
                scheme: scheme.to_owned(),
                connections: p.open[i].load(Ordering::Relaxed),
                accepted,
            });
        }
    }
    ports.sort_by(|a, b| (&a.address, &a.scheme).cmp(&(&b.address, &b.scheme)));
    // A socket closed while its connections last, and opened again: one series of both.
    ports.dedup_by(|later, kept| {
        let same = later.address == kept.address && later.scheme == kept.scheme;
        if same {
            kept.connections += later.connections;
            kept.accepted += later.accepted;
        }
        same
    });
    Metrics {
        uptime_ms: service.uptime().as_millis() as u64,
        queues: by_label.into_values().collect(),
        sites,
        ports,
        tls: TlsMetrics {
            handshakes: service.tls_ok.load(Ordering::Relaxed),
            failures: service.tls_failed.load(Ordering::Relaxed),
        },
        refused: REFUSED.nonzero().map(|(r, n)| (r.to_owned(), n)).collect(),
    }
}
