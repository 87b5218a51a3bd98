//! `portshare show counters`: one sample of the daemon's counters (`GET /v1/metrics`), as
//! `typeperf -sc 1` gives HTTP.sys's: per queue, per site, per listening socket, TLS, and
//! the service's refusals by reason. `--json` prints the daemon's answer; `--queue` keeps
//! one queue.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use portshare_proto::control::{Histogram, Metrics, QueueMetrics, path};
use portshare_proto::text::printable;

use crate::client::Client;

/// Prints one sample, of every queue or of `queue` alone.
pub(crate) fn run(client: &Client, json: bool, queue: Option<&str>) -> ExitCode {
    let mut m = match client.get::<Metrics>(path::METRICS) {
        Ok(m) => m,
        Err(e) => return e.report("show counters"),
    };
    if let Some(name) = queue {
        m.queues.retain(|q| q.name == name);
        if m.queues.is_empty() {
            eprintln!(
                "portshare: show counters: no queue named {:?} (an unnamed queue counts under ~uid:N)",
                printable(name)
            );
            return ExitCode::FAILURE;
        }
    }
    let text = if json {
        match serde_json::to_string_pretty(&m) {
            Ok(t) => t + "\n",
            Err(e) => {
                eprintln!("portshare: show counters: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        text(&m, queue.is_none())
    };
    crate::print(&text);
    ExitCode::SUCCESS
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(1) => format!("<={} us", d.as_micros()),
        Some(d) => format!("<={} ms", d.as_millis()),
        None => "-".to_owned(),
    }
}

fn quantiles(h: &Histogram) -> String {
    if h.count == 0 {
        return "no requests".to_owned();
    }
    format!(
        "p50 {}  p99 {}  mean {}  ({} requests)",
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        h.mean().map_or("-".to_owned(), |d| format!(
            "{:.3} ms",
            d.as_secs_f64() * 1e3
        )),
        h.count
    )
}

fn queue_text(out: &mut String, q: &QueueMetrics) {
    let _ = writeln!(
        out,
        "\nRequest queue {:?} (owner uid {})",
        printable(&q.name),
        q.owner_uid
    );
    let refused: u64 = q.refused.values().sum();
    let reasons: Vec<String> = q.refused.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let rows = [
        ("Arrivals", q.arrivals.to_string()),
        ("Delivered", q.delivered.to_string()),
        ("Completed", q.completed.to_string()),
        (
            "RejectedRequests",
            if reasons.is_empty() {
                refused.to_string()
            } else {
                format!("{refused} ({})", reasons.join(", "))
            },
        ),
        ("CurrentQueueSize", q.depth.to_string()),
        ("MaxQueueItemAge", format!("{} ms", q.oldest_wait_ms)),
        ("In flight", q.in_flight.to_string()),
        ("Connections", q.connections.to_string()),
        ("Opaque connections", q.opaque.to_string()),
        ("Wait in queue", quantiles(&q.wait)),
        ("Time in application", quantiles(&q.app)),
        ("Total time", quantiles(&q.total)),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "    {k:<22}{v}");
    }
    if q.workers_hidden {
        let _ = writeln!(out, "    {:<22}(not shown to you)", "Processes");
    } else if q.workers.is_empty() {
        let _ = writeln!(out, "    {:<22}(none attached)", "Processes");
    }
    for w in &q.workers {
        let who = match w.pid {
            0 => "upstream".to_owned(),
            pid => format!("pid {pid}"),
        };
        let _ = writeln!(
            out,
            "    {who:<22}{} of {} slots busy, {} served",
            w.busy, w.slots, w.served
        );
    }
}

/// The sample as text; `all` adds the sites, ports, TLS and the service's refusals.
pub(crate) fn text(m: &Metrics, all: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Portshare counters (uptime {:.1} s)",
        m.uptime_ms as f64 / 1000.0
    );
    if m.queues.is_empty() {
        let _ = writeln!(out, "\nNo request queues.");
    }
    for q in &m.queues {
        queue_text(&mut out, q);
    }
    if !all {
        return out;
    }
    for s in &m.sites {
        let _ = writeln!(
            out,
            "\nSite {}://{}:{}\n    AllRequests {}  GetRequests {}  HeadRequests {}  BytesReceived {}  BytesSent {}",
            s.scheme,
            printable(&s.host),
            s.port,
            s.requests,
            s.get,
            s.head,
            s.bytes_in,
            s.bytes_out
        );
    }
    if !m.ports.is_empty() {
        let _ = writeln!(out, "\nListening sockets:");
    }
    for p in &m.ports {
        let _ = writeln!(
            out,
            "    {} ({}): {} open, {} accepted",
            p.address, p.scheme, p.connections, p.accepted
        );
    }
    let _ = writeln!(
        out,
        "\nTLS handshakes: {} done, {} failed",
        m.tls.handshakes, m.tls.failures
    );
    let reasons: Vec<String> = m.refused.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let _ = writeln!(
        out,
        "Error-log lines by reason: {}",
        if reasons.is_empty() {
            "none".to_owned()
        } else {
            reasons.join(", ")
        }
    );
    out
}
