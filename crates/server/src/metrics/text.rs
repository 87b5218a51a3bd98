//! The counters as Prometheus text (version 0.0.4) or OpenMetrics 1.0: one family per
//! counter, labels escaped, histograms with cumulative `le` buckets in seconds.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `portshare_uptime_seconds` | gauge | |
//! | `portshare_queue_arrivals_total` | counter | `queue` |
//! | `portshare_queue_requests_total` | counter | `queue`, `outcome` (`delivered`, `refused`) |
//! | `portshare_queue_completed_total` | counter | `queue` |
//! | `portshare_queue_refused_total` | counter | `queue`, `reason` |
//! | `portshare_queue_depth` | gauge | `queue` |
//! | `portshare_queue_oldest_wait_seconds` | gauge | `queue` |
//! | `portshare_queue_in_flight` | gauge | `queue` |
//! | `portshare_queue_opaque_connections` | gauge | `queue` |
//! | `portshare_queue_connections` | gauge | `queue` |
//! | `portshare_queue_wait_seconds`, `_app_seconds`, `_total_seconds` | histogram | `queue` |
//! | `portshare_worker_slots`, `portshare_worker_busy_slots` | gauge | `queue`, `pid` |
//! | `portshare_worker_served_total` | counter | `queue`, `pid` |
//! | `portshare_site_requests_total` | counter | `scheme`, `host`, `port`, `method` (`GET`, `HEAD`, `other`) |
//! | `portshare_site_received_bytes_total`, `portshare_site_sent_bytes_total` | counter | `scheme`, `host`, `port` |
//! | `portshare_port_connections` | gauge | `address`, `scheme` |
//! | `portshare_port_accepted_total` | counter | `address`, `scheme` |
//! | `portshare_tls_handshakes_total` | counter | `result` (`ok`, `failed`) |
//! | `portshare_refused_total` | counter | `reason`: every error-log line |

use std::fmt::Write as _;

use portshare_proto::control::{Histogram, Metrics};

/// Which text format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0, ended by `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it.
    pub(crate) fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of the format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Writes a label value with `\`, `"` and line feeds escaped, as both formats require.
fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

struct Out {
    s: String,
    format: Format,
}

impl Out {
    /// Starts a family: `name` is the sample name, `_total` included for a counter.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let family = match (self.format, kind) {
            (Format::OpenMetrics, "counter") => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let _ = writeln!(self.s, "# HELP {family} {help}");
        let _ = writeln!(self.s, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.s.push_str(name);
        if !labels.is_empty() {
            self.s.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                self.s.push_str(k);
                self.s.push_str("=\"");
                escape(&mut self.s, v);
                self.s.push('"');
            }
            self.s.push('}');
        }
        let _ = writeln!(self.s, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, n) in h.counts.iter().enumerate() {
            cumulative += n;
            let le = match h.bounds_us.get(i) {
                Some(&us) => format!("{:?}", us as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let mut with = labels.to_vec();
            with.push(("le", le.as_str()));
            self.sample(&bucket, &with, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, seconds(h.sum_us));
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

fn seconds(us: u64) -> String {
    format!("{:?}", us as f64 / 1e6)
}

/// `m` in `format`.
pub(crate) fn render(m: &Metrics, format: Format) -> String {
    let mut o = Out {
        s: String::with_capacity(4096 + m.queues.len() * 8192),
        format,
    };
    o.family(
        "portshare_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    o.sample("portshare_uptime_seconds", &[], seconds(m.uptime_ms * 1000));

    type Field = fn(&portshare_proto::control::QueueMetrics) -> u64;
    let per_queue: [(&str, &str, &str, Field); 2] = [
        (
            "portshare_queue_arrivals_total",
            "counter",
            "Requests routed to the queue that asked for a slot (ArrivalRate).",
            |q| q.arrivals,
        ),
        (
            "portshare_queue_completed_total",
            "counter",
            "Requests that gave their slot back: response complete, or failed.",
            |q| q.completed,
        ),
    ];
    for (name, kind, help, f) in per_queue {
        o.family(name, kind, help);
        for q in &m.queues {
            o.sample(name, &[("queue", q.name.as_str())], f(q));
        }
    }
    o.family(
        "portshare_queue_requests_total",
        "counter",
        "Requests by outcome: given a slot, or refused (RejectedRequests).",
    );
    for q in &m.queues {
        let refused: u64 = q.refused.values().sum();
        o.sample(
            "portshare_queue_requests_total",
            &[("queue", q.name.as_str()), ("outcome", "delivered")],
            q.delivered,
        );
        o.sample(
            "portshare_queue_requests_total",
            &[("queue", q.name.as_str()), ("outcome", "refused")],
            refused,
        );
    }
    o.family(
        "portshare_queue_refused_total",
        "counter",
        "Requests the queue refused or dropped, by error-log reason.",
    );
    for q in &m.queues {
        for (reason, n) in &q.refused {
            o.sample(
                "portshare_queue_refused_total",
                &[("queue", q.name.as_str()), ("reason", reason.as_str())],
                n,
            );
        }
    }
    let gauges: [(&str, &str, Field); 4] = [
        (
            "portshare_queue_depth",
            "Requests waiting for a slot (CurrentQueueSize).",
            |q| q.depth,
        ),
        (
            "portshare_queue_in_flight",
            "Requests holding a slot.",
            |q| q.in_flight,
        ),
        (
            "portshare_queue_opaque_connections",
            "Upgraded connections open.",
            |q| q.opaque,
        ),
        (
            "portshare_queue_connections",
            "Client connections counted against the queue.",
            |q| q.connections,
        ),
    ];
    for (name, help, f) in gauges {
        o.family(name, "gauge", help);
        for q in &m.queues {
            o.sample(name, &[("queue", q.name.as_str())], f(q));
        }
    }
    o.family(
        "portshare_queue_oldest_wait_seconds",
        "gauge",
        "Age of the oldest waiting request (MaxQueueItemAge).",
    );
    for q in &m.queues {
        o.sample(
            "portshare_queue_oldest_wait_seconds",
            &[("queue", q.name.as_str())],
            seconds(q.oldest_wait_ms * 1000),
        );
    }
    type Hist = fn(&portshare_proto::control::QueueMetrics) -> &Histogram;
    let histograms: [(&str, &str, Hist); 3] = [
        (
            "portshare_queue_wait_seconds",
            "Time from arrival to a slot.",
            |q| &q.wait,
        ),
        (
            "portshare_queue_app_seconds",
            "Time from a slot taken to the slot given back (response complete).",
            |q| &q.app,
        ),
        (
            "portshare_queue_total_seconds",
            "Time from arrival to the slot given back.",
            |q| &q.total,
        ),
    ];
    for (name, help, f) in histograms {
        o.family(name, "histogram", help);
        for q in &m.queues {
            o.histogram(name, &[("queue", q.name.as_str())], f(q));
        }
    }
    type Worker = fn(&portshare_proto::control::WorkerMetrics) -> u64;
    let workers: [(&str, &str, &str, Worker); 3] = [
        (
            "portshare_worker_slots",
            "gauge",
            "Slots an attached process declared.",
            |w| u64::from(w.slots),
        ),
        (
            "portshare_worker_busy_slots",
            "gauge",
            "Slots of an attached process holding a request.",
            |w| u64::from(w.busy),
        ),
        (
            "portshare_worker_served_total",
            "counter",
            "Requests an attached process finished.",
            |w| w.served,
        ),
    ];
    for (name, kind, help, f) in workers {
        o.family(name, kind, help);
        for q in &m.queues {
            for w in &q.workers {
                let pid = w.pid.to_string();
                o.sample(
                    name,
                    &[("queue", q.name.as_str()), ("pid", pid.as_str())],
                    f(w),
                );
            }
        }
    }
    o.family(
        "portshare_site_requests_total",
        "counter",
        "Requests routed to a site (AllRequests, GetRequests, HeadRequests).",
    );
    for s in &m.sites {
        let port = s.port.to_string();
        for (method, n) in [
            ("GET", s.get),
            ("HEAD", s.head),
            ("other", s.requests.saturating_sub(s.get + s.head)),
        ] {
            let labels = [
                ("scheme", s.scheme.as_str()),
                ("host", s.host.as_str()),
                ("port", port.as_str()),
                ("method", method),
            ];
            o.sample("portshare_site_requests_total", &labels, n);
        }
    }
    type Site = fn(&portshare_proto::control::SiteMetrics) -> u64;
    let bytes: [(&str, &str, Site); 2] = [
        (
            "portshare_site_received_bytes_total",
            "Bytes read from the site's HTTP/1 clients (BytesReceivedRate).",
            |s| s.bytes_in,
        ),
        (
            "portshare_site_sent_bytes_total",
            "Bytes written to the site's HTTP/1 clients (BytesSentRate).",
            |s| s.bytes_out,
        ),
    ];
    for (name, help, f) in bytes {
        o.family(name, "counter", help);
        for s in &m.sites {
            let port = s.port.to_string();
            let labels = [
                ("scheme", s.scheme.as_str()),
                ("host", s.host.as_str()),
                ("port", port.as_str()),
            ];
            o.sample(name, &labels, f(s));
        }
    }
    o.family(
        "portshare_port_connections",
        "gauge",
        "Client connections open on a listening socket (CurrentConnections).",
    );
    for p in &m.ports {
        let labels = [
            ("address", p.address.as_str()),
            ("scheme", p.scheme.as_str()),
        ];
        o.sample("portshare_port_connections", &labels, p.connections);
    }
    o.family(
        "portshare_port_accepted_total",
        "counter",
        "Client connections accepted on a listening socket (ConnectionAttempts).",
    );
    for p in &m.ports {
        let labels = [
            ("address", p.address.as_str()),
            ("scheme", p.scheme.as_str()),
        ];
        o.sample("portshare_port_accepted_total", &labels, p.accepted);
    }
    o.family(
        "portshare_tls_handshakes_total",
        "counter",
        "TLS handshakes on https ports, by result.",
    );
    o.sample(
        "portshare_tls_handshakes_total",
        &[("result", "ok")],
        m.tls.handshakes,
    );
    o.sample(
        "portshare_tls_handshakes_total",
        &[("result", "failed")],
        m.tls.failures,
    );
    o.family(
        "portshare_refused_total",
        "counter",
        "Error-log lines of the service, by reason.",
    );
    for (reason, n) in &m.refused {
        o.sample("portshare_refused_total", &[("reason", reason.as_str())], n);
    }
    if format == Format::OpenMetrics {
        o.s.push_str("# EOF\n");
    }
    o.s
}

#[cfg(test)]
mod tests {
    use super::*;
    use portshare_proto::control::QueueMetrics;

    fn one_queue(name: &str) -> Metrics {
        let mut q = QueueMetrics {
            name: name.to_owned(),
            arrivals: 3,
            delivered: 2,
            wait: Histogram {
                bounds_us: vec![100, 1_000_000],
                counts: vec![1, 1, 1],
                count: 3,
                sum_us: 2_500_000,
            },
            ..QueueMetrics::default()
        };
        q.refused.insert("QueueFull".into(), 1);
        Metrics {
            queues: vec![q],
            ..Metrics::default()
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&one_queue("a\"b\\c\nd"), Format::Prometheus);
        assert!(
            text.contains("portshare_queue_arrivals_total{queue=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{text}"
        );
        // A line feed in a name never starts a line of its own.
        assert!(
            text.lines()
                .all(|l| l.starts_with("# ") || l.starts_with("portshare_")),
            "{text}"
        );
    }

    #[test]
    fn histograms_are_cumulative_in_seconds() {
        let text = render(&one_queue("q"), Format::Prometheus);
        for line in [
            "portshare_queue_wait_seconds_bucket{queue=\"q\",le=\"0.0001\"} 1",
            "portshare_queue_wait_seconds_bucket{queue=\"q\",le=\"1.0\"} 2",
            "portshare_queue_wait_seconds_bucket{queue=\"q\",le=\"+Inf\"} 3",
            "portshare_queue_wait_seconds_sum{queue=\"q\"} 2.5",
            "portshare_queue_wait_seconds_count{queue=\"q\"} 3",
            "portshare_queue_requests_total{queue=\"q\",outcome=\"refused\"} 1",
            "# TYPE portshare_queue_arrivals_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = render(&one_queue("q"), Format::OpenMetrics);
        assert!(text.contains("# TYPE portshare_queue_arrivals counter\n"));
        assert!(text.contains("portshare_queue_arrivals_total{queue=\"q\"} 3\n"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;version=1.0.0,*/*;q=0.1")),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    }
}
