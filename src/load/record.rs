//! What a run records: per second of intended send time, the requests offered, sent and not
//! sent, each sent request's one outcome, and the latency of its response in an HDR
//! histogram; beside them, what the daemon said of the target queue once a second. Also
//! the CSV those rows are written as.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use portshare_proto::control::QueueCounters;

/// The highest latency a histogram holds exactly (an hour, in microseconds); longer ones
/// are recorded as this.
const MAX_MICROS: u64 = 3_600_000_000;

/// How one sent request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response with this status, with or without `Retry-After`.
    Status(u16, bool),
    /// The connection was reset or closed before the response was whole.
    Reset,
    /// No whole response within `--timeout`.
    Timeout,
    /// The connection could not be opened, or the response was not HTTP.
    Error,
}

/// The counts of one second, or of the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) offered: u64,
    pub(crate) sent: u64,
    pub(crate) not_sent: u64,
    pub(crate) ok: u64,
    pub(crate) unavailable: u64,
    pub(crate) retry_after: u64,
    pub(crate) other: u64,
    pub(crate) resets: u64,
    pub(crate) timeouts: u64,
    pub(crate) errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.offered += o.offered;
        self.sent += o.sent;
        self.not_sent += o.not_sent;
        self.ok += o.ok;
        self.unavailable += o.unavailable;
        self.retry_after += o.retry_after;
        self.other += o.other;
        self.resets += o.resets;
        self.timeouts += o.timeouts;
        self.errors += o.errors;
    }

    /// Sent requests whose outcome is known.
    pub(crate) fn ended(&self) -> u64 {
        self.ok + self.unavailable + self.other + self.resets + self.timeouts + self.errors
    }
}

/// One second of the run.
#[derive(Debug, Clone)]
pub(crate) struct Second {
    pub(crate) counts: Counts,
    /// Latency of the responses (any status), from the intended send time, in µs.
    pub(crate) latency: Histogram<u64>,
}

impl Second {
    fn new() -> Second {
        Second {
            counts: Counts::default(),
            // Two significant figures: a 1 % error, a few KiB a second.
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 2)
                .expect("fixed, valid histogram bounds"),
        }
    }
}

/// The recorder shared by the dispatcher and the connections.
#[derive(Debug)]
pub(crate) struct Recorder {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    seconds: Vec<Second>,
    /// Every response's latency, at three significant figures.
    overall: Histogram<u64>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            inner: Mutex::new(Inner {
                seconds: Vec::new(),
                overall: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                    .expect("fixed, valid histogram bounds"),
            }),
        }
    }

    fn with(&self, second: usize, f: impl FnOnce(&mut Second, &mut Histogram<u64>)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        if inner.seconds.len() <= second {
            inner.seconds.resize_with(second + 1, Second::new);
        }
        f(&mut inner.seconds[second], &mut inner.overall);
    }

    /// Requests whose time came in `second`: `sent` handed to a connection, `not_sent`
    /// not.
    pub(crate) fn offered(&self, second: usize, sent: u64, not_sent: u64) {
        self.with(second, |s, _| {
            s.counts.offered += sent + not_sent;
            s.counts.sent += sent;
            s.counts.not_sent += not_sent;
        });
    }

    /// A sent request of `second` ended, `latency` after its intended time.
    pub(crate) fn ended(&self, second: usize, outcome: Outcome, latency: Duration) {
        self.with(second, |s, overall| {
            let c = &mut s.counts;
            match outcome {
                Outcome::Status(status, retry) => {
                    match status {
                        200..=299 => c.ok += 1,
                        503 => {
                            c.unavailable += 1;
                            c.retry_after += u64::from(retry);
                        }
                        _ => c.other += 1,
                    }
                    let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
                    s.latency.saturating_record(micros);
                    overall.saturating_record(micros);
                }
                Outcome::Reset => c.resets += 1,
                Outcome::Timeout => c.timeouts += 1,
                Outcome::Error => c.errors += 1,
            }
        });
    }

    /// The seconds recorded (at least `len` of them), and the overall latency histogram.
    pub(crate) fn finish(&self, len: usize) -> (Vec<Second>, Histogram<u64>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.seconds.len() < len {
            inner.seconds.resize_with(len, Second::new);
        }
        (std::mem::take(&mut inner.seconds), inner.overall.clone())
    }

    /// What the recorders of all threads recorded, second by second (at least `len`).
    pub(crate) fn finish_all(all: &[Arc<Recorder>], len: usize) -> (Vec<Second>, Histogram<u64>) {
        let mut seconds: Vec<Second> = Vec::new();
        let mut overall =
            Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("fixed, valid histogram bounds");
        for r in all {
            let (theirs, their_overall) = r.finish(len);
            if seconds.len() < theirs.len() {
                seconds.resize_with(theirs.len(), Second::new);
            }
            for (mine, theirs) in seconds.iter_mut().zip(&theirs) {
                mine.counts.add(&theirs.counts);
                // Same bounds on both sides: adding cannot fail.
                let _ = mine.latency.add(&theirs.latency);
            }
            let _ = overall.add(&their_overall);
        }
        (seconds, overall)
    }
}

/// What the daemon said of the target queue at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) depth: u64,
    pub(crate) length: u32,
    pub(crate) counters: QueueCounters,
    /// Each attached process's PID and the requests it was handed so far.
    pub(crate) served: Vec<(u32, u64)>,
}

/// The queue's side of one second: the sample at its end, and what its counters and each
/// process's served count grew by during it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QueueSecond {
    pub(crate) depth: u64,
    pub(crate) length: u32,
    pub(crate) delta: QueueCounters,
    pub(crate) served: Vec<(u32, u64)>,
}

/// The growth from `before` to `after` (a counter that went back, as when a queue was
/// created anew, counts from zero).
pub(crate) fn queue_second(before: Option<&Sample>, after: &Sample) -> QueueSecond {
    let zero = Sample::default();
    let b = before.unwrap_or(&zero);
    let d = |a: u64, b: u64| if a >= b { a - b } else { a };
    let (ac, bc) = (&after.counters, &b.counters);
    QueueSecond {
        depth: after.depth,
        length: after.length,
        delta: QueueCounters {
            delivered: d(ac.delivered, bc.delivered),
            queue_full: d(ac.queue_full, bc.queue_full),
            disabled: d(ac.disabled, bc.disabled),
            timed_out: d(ac.timed_out, bc.timed_out),
            abandoned: d(ac.abandoned, bc.abandoned),
            conn_limit: d(ac.conn_limit, bc.conn_limit),
        },
        served: after
            .served
            .iter()
            .map(|&(pid, n)| {
                let was = b.served.iter().find(|p| p.0 == pid).map_or(0, |p| p.1);
                (pid, d(n, was))
            })
            .collect(),
    }
}

/// One row of the report: the client's counts and latency, the queue's side when known.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) counts: Counts,
    /// p50, p99 and max latency in ms, when a response came.
    pub(crate) latency: Option<(f64, f64, f64)>,
    pub(crate) queue: Option<QueueSecond>,
}

/// The rows, one per second: the client's seconds beside the queue's (a run's last rows
/// may have no requests, while the queue drains).
pub(crate) fn rows(seconds: &[Second], queue: &[Option<QueueSecond>]) -> Vec<Row> {
    let n = seconds.len().max(queue.len());
    (0..n)
        .map(|i| {
            let s = seconds.get(i);
            Row {
                counts: s.map(|s| s.counts).unwrap_or_default(),
                latency: s.and_then(|s| percentiles(&s.latency)),
                queue: queue.get(i).cloned().flatten(),
            }
        })
        .collect()
}

/// p50, p99 and max of a histogram, in ms; `None` when it is empty.
pub(crate) fn percentiles(h: &Histogram<u64>) -> Option<(f64, f64, f64)> {
    if h.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some((
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    ))
}

/// The sums of the rows' counts.
pub(crate) fn totals(rows: &[Row]) -> Counts {
    let mut t = Counts::default();
    for r in rows {
        t.add(&r.counts);
    }
    t
}

/// The CSV header.
pub(crate) const CSV_HEADER: &str = "second,offered,sent,not_sent,status_2xx,status_503,\
retry_after,other_status,resets,timeouts,errors,p50_ms,p99_ms,max_ms,queue_depth,\
queue_length,delivered,refused_queue_full,refused_disabled,refused_conn_limit,\
queue_timed_out,abandoned,served_by_pid";

/// The rows as CSV, with the header. Queue columns are empty when the daemon was not
/// reached; `served_by_pid` is `PID:N` pairs separated by spaces.
pub(crate) fn csv(rows: &[Row]) -> String {
    let mut out = String::with_capacity(64 + rows.len() * 96);
    out.push_str(CSV_HEADER);
    out.push('\n');
    for (i, r) in rows.iter().enumerate() {
        let c = &r.counts;
        let _ = write!(
            out,
            "{i},{},{},{},{},{},{},{},{},{},{},",
            c.offered,
            c.sent,
            c.not_sent,
            c.ok,
            c.unavailable,
            c.retry_after,
            c.other,
            c.resets,
            c.timeouts,
            c.errors
        );
        match r.latency {
            Some((p50, p99, max)) => {
                let _ = write!(out, "{p50:.3},{p99:.3},{max:.3},");
            }
            None => out.push_str(",,,"),
        }
        match &r.queue {
            Some(q) => {
                let d = &q.delta;
                let served: Vec<String> = q
                    .served
                    .iter()
                    .map(|(pid, n)| format!("{pid}:{n}"))
                    .collect();
                let _ = write!(
                    out,
                    "{},{},{},{},{},{},{},{},{}",
                    q.depth,
                    q.length,
                    d.delivered,
                    d.queue_full,
                    d.disabled,
                    d.conn_limit,
                    d.timed_out,
                    d.abandoned,
                    served.join(" ")
                );
            }
            None => out.push_str(",,,,,,,,"),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_lands_in_its_intended_second() {
        let r = Recorder::new();
        r.offered(0, 1, 1);
        r.offered(2, 1, 0);
        r.ended(0, Outcome::Status(503, true), Duration::from_millis(3));
        r.ended(2, Outcome::Reset, Duration::from_millis(1));
        let (seconds, overall) = r.finish(4);
        assert_eq!(seconds.len(), 4);
        assert_eq!(
            seconds[0].counts,
            Counts {
                offered: 2,
                sent: 1,
                not_sent: 1,
                unavailable: 1,
                retry_after: 1,
                ..Counts::default()
            }
        );
        assert_eq!(seconds[2].counts.resets, 1);
        assert_eq!(overall.len(), 1);
        let rows = rows(&seconds, &[]);
        let t = totals(&rows);
        assert_eq!((t.offered, t.sent, t.ended()), (3, 2, 2));
    }

    #[test]
    fn csv_has_a_header_and_one_row_a_second() {
        let r = Recorder::new();
        r.offered(1, 1, 0);
        r.ended(1, Outcome::Status(200, false), Duration::from_millis(2));
        let (seconds, _) = r.finish(2);
        let before = Sample {
            counters: QueueCounters {
                delivered: 5,
                ..QueueCounters::default()
            },
            served: vec![(10, 5)],
            ..Sample::default()
        };
        let after = Sample {
            depth: 3,
            length: 100,
            counters: QueueCounters {
                delivered: 7,
                queue_full: 1,
                ..QueueCounters::default()
            },
            served: vec![(10, 6), (11, 1)],
        };
        let q = vec![None, Some(queue_second(Some(&before), &after))];
        let text = csv(&rows(&seconds, &q));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let width = CSV_HEADER.split(',').count();
        assert!(
            lines.iter().all(|l| l.split(',').count() == width),
            "{text}"
        );
        assert_eq!(lines[1], "0,0,0,0,0,0,0,0,0,0,0,,,,,,,,,,,,");
        assert!(
            lines[2].starts_with("1,1,1,0,1,0,0,0,0,0,0,2.00"),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].ends_with(",3,100,2,1,0,0,0,0,10:1 11:1"),
            "{}",
            lines[2]
        );
    }
}
