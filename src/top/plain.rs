//! `top` without a terminal: one line per queue and per listening address each refresh,
//! `key=value` fields a script can split, prefixed by the UTC time of the sample.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portshare_proto::text::printable;

use super::model::View;

/// The lines of one refresh.
pub(crate) fn lines(view: &View, now: SystemTime) -> String {
    let t = clock(now);
    let mut out = String::new();
    if view.queues.is_empty() {
        let _ = writeln!(out, "{t} queues=0");
    }
    for q in &view.queues {
        let _ = write!(
            out,
            "{t} queue={} arrivals/s={:.1} served/s={:.1} refused/s={:.1}",
            field(&q.name),
            q.arrivals,
            q.served,
            q.refused,
        );
        for (reason, rate) in &q.refused_by {
            let _ = write!(out, " refused.{reason}/s={rate:.1}");
        }
        let _ = write!(
            out,
            " depth={} oldest_ms={} in_flight={}",
            q.depth,
            q.oldest_wait.as_millis(),
            q.in_flight
        );
        for (name, p) in [
            ("wait_p50_ms", q.wait.p50),
            ("wait_p99_ms", q.wait.p99),
            ("app_p50_ms", q.app.p50),
            ("app_p99_ms", q.app.p99),
        ] {
            let _ = write!(out, " {name}={}", millis(p));
        }
        match q.workers {
            Some(w) => {
                let _ = write!(
                    out,
                    " workers={} slots={} free={}",
                    w.processes, w.slots, w.free
                );
            }
            None => out.push_str(" workers=hidden"),
        }
        out.push('\n');
    }
    for p in &view.ports {
        let _ = writeln!(out, "{t} port={} connections={}", p.address, p.connections);
    }
    out
}

/// A value other accounts chose, as one field: printable, no spaces.
fn field(s: &str) -> String {
    printable(s).replace(' ', "%20")
}

/// A duration in milliseconds with one decimal, or `-` when unknown.
pub(crate) fn millis(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

/// `HH:MM:SS` in UTC.
pub(crate) fn clock(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::super::model::{Latency, PortRow, QueueRow, Workers};
    use super::*;

    #[test]
    fn a_refresh_reads_as_key_value_lines() {
        let view = View {
            version: "0.1.0".into(),
            pid: 1,
            interval: Duration::from_secs(1),
            queues: vec![QueueRow {
                name: "my app\n".into(),
                owner: "alice".into(),
                enabled: true,
                arrivals: 12.0,
                served: 10.0,
                refused: 2.0,
                refused_by: vec![("QueueFull".to_owned(), 2.0)],
                depth: 7,
                depth_history: vec![7],
                oldest_wait: Duration::from_millis(250),
                in_flight: 2,
                wait: Latency {
                    p50: Some(Duration::from_micros(1500)),
                    p99: None,
                },
                app: Latency::default(),
                workers: Some(Workers {
                    processes: 1,
                    slots: 4,
                    free: 1,
                }),
            }],
            ports: vec![PortRow {
                address: "127.0.0.1:8080".into(),
                connections: 3,
            }],
        };
        let t = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 + 61);
        assert_eq!(
            lines(&view, t),
            "01:01:01 queue=my%20app\\u{a} arrivals/s=12.0 served/s=10.0 refused/s=2.0 \
             refused.QueueFull/s=2.0 depth=7 oldest_ms=250 in_flight=2 wait_p50_ms=1.5 \
             wait_p99_ms=- app_p50_ms=- app_p99_ms=- workers=1 slots=4 free=1\n\
             01:01:01 port=127.0.0.1:8080 connections=3\n"
        );
    }
}
