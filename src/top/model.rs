//! What `top` shows, computed from two samples of the daemon's state: rates are the
//! counters' differences over the time between the samples, and each queue keeps a short
//! history of its depth for the sparkline.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use portshare_proto::control::{Histogram, Metrics, QueueCounters, QueueMetrics, ServiceState};

/// How many samples of a queue's depth the sparkline keeps.
pub(crate) const HISTORY: usize = 60;

/// One sample: the state view, the counters when the daemon has them, and when they were
/// taken.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) state: ServiceState,
    pub(crate) metrics: Option<Metrics>,
}

impl Sample {
    /// The counters of queue `name` (owned by `owner`): an unnamed queue's are its
    /// owner's, shared by all that account's unnamed queues.
    fn queue(&self, name: &str, owner: u32) -> Option<&QueueMetrics> {
        let key = if name.starts_with('~') {
            format!("~uid:{owner}")
        } else {
            name.to_owned()
        };
        self.metrics.as_ref()?.queues.iter().find(|q| q.name == key)
    }
}

/// A refusal counter of a queue, named by the §7.3 reason it is logged with.
type Refusal = (&'static str, fn(&QueueCounters) -> u64);

/// The refusal counters of a queue.
const REFUSALS: [Refusal; 5] = [
    ("QueueFull", |c| c.queue_full),
    ("Disabled", |c| c.disabled),
    ("Timer_ReqQueue", |c| c.timed_out),
    ("ConnLimit", |c| c.conn_limit),
    ("Connection_Abandoned_By_ReqQueue", |c| c.abandoned),
];

/// One queue's row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueRow {
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) enabled: bool,
    /// Requests arriving per second: handed to a worker or refused.
    pub(crate) arrivals: f64,
    /// Requests handed to a worker per second.
    pub(crate) served: f64,
    /// Requests refused per second, all reasons.
    pub(crate) refused: f64,
    /// Refusals per second by reason, the reasons with none left out.
    pub(crate) refused_by: Vec<(String, f64)>,
    pub(crate) depth: u64,
    /// Depth at each sample, oldest first, at most [`HISTORY`].
    pub(crate) depth_history: Vec<u64>,
    pub(crate) oldest_wait: Duration,
    pub(crate) in_flight: u64,
    /// Time waiting in the queue, over the interval; unknown without the daemon's counters.
    pub(crate) wait: Latency,
    /// Time in the application, over the interval.
    pub(crate) app: Latency,
    /// Attached processes and their slots; `None` when the daemon withheld them.
    pub(crate) workers: Option<Workers>,
}

/// Two quantiles of a latency over the interval; `None` when no request completed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Latency {
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
}

impl Latency {
    /// The quantiles of what `now` observed since `then`.
    fn between(now: &Histogram, then: Option<&Histogram>) -> Latency {
        let d = match then {
            Some(then) => now.since(then),
            None => now.clone(),
        };
        Latency {
            p50: d.quantile(0.5),
            p99: d.quantile(0.99),
        }
    }
}

/// The processes attached to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Workers {
    pub(crate) processes: usize,
    pub(crate) slots: u64,
    pub(crate) free: u64,
}

/// One listening address's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortRow {
    pub(crate) address: String,
    pub(crate) connections: u64,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    pub(crate) version: String,
    pub(crate) pid: u32,
    /// The time the rates are taken over.
    pub(crate) interval: Duration,
    pub(crate) queues: Vec<QueueRow>,
    pub(crate) ports: Vec<PortRow>,
}

/// Turns successive samples into views.
#[derive(Debug, Default)]
pub(crate) struct Model {
    previous: Option<Sample>,
    history: HashMap<String, VecDeque<u64>>,
}

impl Model {
    /// Takes a new sample. The first gives no view: rates need two.
    pub(crate) fn update(&mut self, sample: Sample, only: Option<&str>) -> Option<View> {
        for q in &sample.state.queues {
            let h = self.history.entry(q.name.clone()).or_default();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(q.depth);
        }
        // A queue gone takes its history with it.
        self.history
            .retain(|name, _| sample.state.queues.iter().any(|q| &q.name == name));
        let previous = self.previous.replace(sample)?;
        let current = self.previous.as_ref().expect("just set");
        Some(self.view(&previous, current, only))
    }

    fn view(&self, before: &Sample, now: &Sample, only: Option<&str>) -> View {
        let interval = now.at.saturating_duration_since(before.at);
        let secs = interval.as_secs_f64().max(1e-3);
        let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let queues = now
            .state
            .queues
            .iter()
            .filter(|q| only.is_none_or(|o| q.name.contains(o)))
            .map(|q| {
                // A queue new since the last sample counts from zero.
                let zero = QueueCounters::default();
                let then = before
                    .state
                    .queues
                    .iter()
                    .find(|b| b.name == q.name)
                    .map_or(&zero, |b| &b.counters);
                let c = &q.counters;
                let served = per_s(c.delivered, then.delivered);
                let counted = now.queue(&q.name, q.owner_uid);
                let counted_then = before.queue(&q.name, q.owner_uid);
                let (arrivals, refused_by, wait, app) = match counted {
                    // The daemon's counters: every refusal by its reason, and latencies.
                    Some(m) => {
                        let refused_by: Vec<(String, f64)> = m
                            .refused
                            .iter()
                            .map(|(reason, &n)| {
                                let was = counted_then
                                    .and_then(|t| t.refused.get(reason))
                                    .copied()
                                    .unwrap_or(0);
                                (reason.clone(), per_s(n, was))
                            })
                            .filter(|(_, rate)| *rate > 0.0)
                            .collect();
                        (
                            per_s(m.arrivals, counted_then.map_or(0, |t| t.arrivals)),
                            refused_by,
                            Latency::between(&m.wait, counted_then.map(|t| &t.wait)),
                            Latency::between(&m.app, counted_then.map(|t| &t.app)),
                        )
                    }
                    // A daemon without them: the state view's refusal counters.
                    None => {
                        let refused_by: Vec<(String, f64)> = REFUSALS
                            .iter()
                            .map(|(name, get)| ((*name).to_owned(), per_s(get(c), get(then))))
                            .filter(|(_, rate)| *rate > 0.0)
                            .collect();
                        // Requests the timer or a departing worker dropped had arrived before.
                        let arrivals = refused_by
                            .iter()
                            .filter(|(name, _)| {
                                !matches!(
                                    name.as_str(),
                                    "Timer_ReqQueue" | "Connection_Abandoned_By_ReqQueue"
                                )
                            })
                            .fold(served, |sum, (_, r)| sum + r);
                        (arrivals, refused_by, Latency::default(), Latency::default())
                    }
                };
                // (A fold from 0.0: an empty float sum is -0.0.)
                let refused = refused_by.iter().fold(0.0, |sum, (_, r)| sum + r);
                let workers = (!q.processes_hidden).then(|| {
                    let slots: u64 = q.processes.iter().map(|p| u64::from(p.slots)).sum();
                    let busy: u64 = q.processes.iter().map(|p| u64::from(p.busy)).sum();
                    Workers {
                        processes: q.processes.len(),
                        slots,
                        free: slots.saturating_sub(busy),
                    }
                });
                QueueRow {
                    name: q.name.clone(),
                    owner: if q.owner_user.is_empty() {
                        format!("uid:{}", q.owner_uid)
                    } else {
                        q.owner_user.clone()
                    },
                    enabled: q.enabled,
                    arrivals,
                    served,
                    refused,
                    refused_by,
                    depth: q.depth,
                    depth_history: self
                        .history
                        .get(&q.name)
                        .map(|h| h.iter().copied().collect())
                        .unwrap_or_default(),
                    oldest_wait: Duration::from_millis(q.oldest_wait_ms),
                    in_flight: q.in_flight,
                    wait,
                    app,
                    workers,
                }
            })
            .collect();
        let ports = now
            .state
            .listeners
            .iter()
            .map(|l| PortRow {
                address: l.address.clone(),
                connections: l.connections,
            })
            .collect();
        View {
            version: now.state.version.clone(),
            pid: now.state.pid,
            interval,
            queues,
            ports,
        }
    }
}

/// The depth history as a line of block characters, scaled to its own maximum and
/// right-aligned in `width` cells.
pub(crate) fn sparkline(history: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &history[history.len().saturating_sub(width)..];
    let max = tail.iter().copied().max().unwrap_or(0);
    let mut line = " ".repeat(width - tail.len());
    for &v in tail {
        line.push(if max == 0 {
            ' '
        } else {
            // 1..=8 bars for anything above zero; zero stays empty.
            let level = (v * 8).div_ceil(max) as usize;
            if level == 0 { ' ' } else { BARS[level - 1] }
        });
    }
    line
}

#[cfg(test)]
mod tests {
    use portshare_proto::control::{ListenerState, ProcessState, QueueState, Verbosity};

    use super::*;

    fn queue(name: &str, delivered: u64, queue_full: u64, depth: u64) -> QueueState {
        QueueState {
            name: name.into(),
            owner_uid: 1000,
            owner_user: "alice".into(),
            length: 100,
            verbosity: Verbosity::Basic,
            enabled: true,
            linger_ms: 0,
            queue_timer_ms: 0,
            limits: Default::default(),
            connections: 0,
            lingering: false,
            config: false,
            access: vec![],
            upstream: None,
            held: false,
            upstream_refused: None,
            https_redirect: None,
            depth,
            oldest_wait_ms: 250,
            in_flight: 2,
            opaque: 0,
            urls: vec![],
            processes: vec![ProcessState {
                pid: 7,
                uid: 1000,
                user: "alice".into(),
                command: "app".into(),
                slots: 4,
                busy: 3,
                buffered: 0,
                served: 0,
            }],
            processes_hidden: false,
            counters: QueueCounters {
                delivered,
                queue_full,
                ..Default::default()
            },
        }
    }

    fn sample(at: Instant, queues: Vec<QueueState>) -> Sample {
        Sample {
            at,
            state: ServiceState {
                version: "0.1.0".into(),
                pid: 42,
                listeners: vec![ListenerState {
                    address: "127.0.0.1:8080".into(),
                    connections: 3,
                }],
                queues,
                ..Default::default()
            },
            metrics: None,
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let t0 = Instant::now();
        let mut m = Model::default();
        assert!(
            m.update(sample(t0, vec![queue("a", 10, 1, 0)]), None)
                .is_none()
        );
        let t1 = t0 + Duration::from_secs(2);
        let v = m
            .update(sample(t1, vec![queue("a", 30, 5, 7)]), None)
            .expect("two samples");
        assert_eq!(v.interval, Duration::from_secs(2));
        let q = &v.queues[0];
        assert_eq!(q.served, 10.0);
        assert_eq!(q.refused, 2.0);
        assert_eq!(q.refused_by, vec![("QueueFull".to_owned(), 2.0)]);
        assert_eq!(q.arrivals, 12.0);
        assert_eq!(q.depth_history, vec![0, 7]);
        assert_eq!(
            q.workers,
            Some(Workers {
                processes: 1,
                slots: 4,
                free: 1
            })
        );
        assert_eq!(v.ports[0].connections, 3);
    }

    #[test]
    fn a_new_queue_counts_from_zero_and_a_recreated_one_never_goes_negative() {
        let t0 = Instant::now();
        let mut m = Model::default();
        m.update(sample(t0, vec![queue("a", 100, 0, 0)]), None);
        let v = m
            .update(
                sample(
                    t0 + Duration::from_secs(1),
                    vec![queue("a", 3, 0, 0), queue("b", 5, 0, 0)],
                ),
                None,
            )
            .expect("two samples");
        assert_eq!(v.queues[0].served, 0.0);
        assert_eq!(v.queues[1].served, 5.0);
    }

    #[test]
    fn a_filter_keeps_matching_queues_and_hidden_processes_stay_unknown() {
        let t0 = Instant::now();
        let mut m = Model::default();
        let mut hidden = queue("other", 0, 0, 0);
        hidden.processes.clear();
        hidden.processes_hidden = true;
        m.update(
            sample(t0, vec![queue("mine", 0, 0, 0), hidden.clone()]),
            None,
        );
        let v = m
            .update(
                sample(
                    t0 + Duration::from_secs(1),
                    vec![queue("mine", 0, 0, 0), hidden],
                ),
                Some("oth"),
            )
            .expect("two samples");
        assert_eq!(v.queues.len(), 1);
        assert_eq!(v.queues[0].workers, None);
    }

    #[test]
    fn history_is_bounded_and_goes_with_its_queue() {
        let t0 = Instant::now();
        let mut m = Model::default();
        for i in 0..(HISTORY as u64 + 10) {
            m.update(
                sample(t0 + Duration::from_secs(i), vec![queue("a", 0, 0, i)]),
                None,
            );
        }
        assert_eq!(m.history["a"].len(), HISTORY);
        assert_eq!(m.history["a"].back(), Some(&(HISTORY as u64 + 9)));
        m.update(sample(t0 + Duration::from_secs(1000), vec![]), None);
        assert!(m.history.is_empty());
    }

    #[test]
    fn with_the_daemons_counters_every_reason_and_the_latencies_of_the_interval() {
        let hist = |counts: Vec<u64>| Histogram {
            bounds_us: vec![1_000, 10_000, 100_000],
            count: counts.iter().sum(),
            counts,
            sum_us: 0,
        };
        let counted = |arrivals, full, wait: Vec<u64>| Metrics {
            queues: vec![QueueMetrics {
                name: "~uid:1000".into(),
                owner_uid: 1000,
                arrivals,
                refused: [("QueueFull".to_owned(), full), ("Disabled".to_owned(), 1)].into(),
                wait: hist(wait),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut m = Model::default();
        let mut first = sample(t0, vec![queue("~unnamed", 10, 0, 0)]);
        first.metrics = Some(counted(20, 3, vec![100, 0, 0, 0]));
        m.update(first, None);
        let mut second = sample(
            t0 + Duration::from_secs(1),
            vec![queue("~unnamed", 20, 0, 0)],
        );
        // This second: 10 waited under 10 ms, 1 under 100 ms.
        second.metrics = Some(counted(35, 8, vec![100, 10, 1, 0]));
        let v = m.update(second, None).expect("two samples");
        let q = &v.queues[0];
        assert_eq!(q.arrivals, 15.0);
        assert_eq!(q.refused_by, vec![("QueueFull".to_owned(), 5.0)]);
        assert_eq!(q.refused, 5.0);
        assert_eq!(q.wait.p50, Some(Duration::from_millis(10)));
        assert_eq!(q.wait.p99, Some(Duration::from_millis(100)));
        assert_eq!(q.app, Latency::default());
    }

    #[test]
    fn sparklines_scale_to_their_maximum() {
        assert_eq!(sparkline(&[], 4), "    ");
        assert_eq!(sparkline(&[0, 0], 3), "   ");
        assert_eq!(sparkline(&[0, 1, 4, 8], 4), " ▁▄█");
        assert_eq!(sparkline(&[8, 8, 8, 8, 8], 3), "███");
    }
}
