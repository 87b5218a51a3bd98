//! The open-loop plan: when each request is meant to leave ([`Schedule`]), and where it
//! goes when its time comes ([`Pool`]): an idle connection, a new one, or nowhere ("not
//! sent") once every connection is busy and the cap is reached. Neither waits for the
//! server: that is what keeps overload visible instead of slowing the arrivals down.

use std::time::Duration;

/// One step of the arrival rate: `rate` requests per second for `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
}

/// The intended send times, as offsets from the start: request `k` of a step leaves at the
/// step's start plus `k / rate`, whatever happened to the requests before it.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    steps: Vec<Step>,
    step: usize,
    k: u64,
    step_start: Duration,
}

impl Schedule {
    pub(crate) fn new(steps: Vec<Step>) -> Schedule {
        Schedule {
            steps,
            step: 0,
            k: 0,
            step_start: Duration::ZERO,
        }
    }

    /// The length of the whole plan.
    pub(crate) fn length(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }

    /// The next intended send time; `None` after the last step.
    pub(crate) fn next_time(&mut self) -> Option<Duration> {
        loop {
            let step = self.steps.get(self.step)?;
            if step.rate > 0.0 {
                // Computed from k, not accumulated, so no rounding drifts over a long step.
                let t = self.k as f64 / step.rate;
                if t < step.duration.as_secs_f64() {
                    self.k += 1;
                    return Some(self.step_start + Duration::from_secs_f64(t));
                }
            }
            self.step_start += step.duration;
            self.step += 1;
            self.k = 0;
        }
    }
}

/// Where a request whose time has come goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Place<T> {
    /// To this idle connection.
    Idle(T),
    /// To a new connection (now counted as open).
    Open,
    /// Nowhere: every connection is busy and the cap is reached.
    NotSent,
}

/// The connections of the generator, as the dispatcher sees them: how many are open, and
/// the handles of the idle ones (most recently idle first, so warm connections are reused).
#[derive(Debug)]
pub(crate) struct Pool<T> {
    cap: usize,
    open: usize,
    idle: Vec<T>,
}

impl<T> Pool<T> {
    pub(crate) fn new(cap: usize) -> Pool<T> {
        Pool {
            cap: cap.max(1),
            open: 0,
            idle: Vec::new(),
        }
    }

    /// Takes a place for one request; never waits.
    pub(crate) fn take(&mut self) -> Place<T> {
        if let Some(handle) = self.idle.pop() {
            Place::Idle(handle)
        } else if self.open < self.cap {
            self.open += 1;
            Place::Open
        } else {
            Place::NotSent
        }
    }

    /// A connection finished its request and can take another.
    pub(crate) fn idle(&mut self, handle: T) {
        self.idle.push(handle);
    }

    /// A connection closed (it was busy, so it holds no idle handle).
    pub(crate) fn closed(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    /// Connections open now, busy or idle.
    pub(crate) fn open(&self) -> usize {
        self.open
    }

    /// Takes the idle handles out, each counted as closed: for the end of the run.
    pub(crate) fn drain_idle(&mut self) -> Vec<T> {
        let idle = std::mem::take(&mut self.idle);
        self.open = self.open.saturating_sub(idle.len());
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn times_are_fixed_by_the_rate_alone() {
        let mut s = Schedule::new(vec![Step {
            rate: 4.0,
            duration: secs(1.0),
        }]);
        let times: Vec<_> = std::iter::from_fn(|| s.next_time()).collect();
        assert_eq!(times, [secs(0.0), secs(0.25), secs(0.5), secs(0.75)]);
    }

    #[test]
    fn steps_follow_each_other_and_a_zero_rate_is_a_pause() {
        let mut s = Schedule::new(vec![
            Step {
                rate: 2.0,
                duration: secs(1.0),
            },
            Step {
                rate: 0.0,
                duration: secs(2.0),
            },
            Step {
                rate: 1.0,
                duration: secs(2.0),
            },
        ]);
        assert_eq!(s.length(), secs(5.0));
        let times: Vec<_> = std::iter::from_fn(|| s.next_time()).collect();
        assert_eq!(times, [secs(0.0), secs(0.5), secs(3.0), secs(4.0)]);
    }

    #[test]
    fn a_long_step_keeps_its_count_and_does_not_drift() {
        let mut s = Schedule::new(vec![Step {
            rate: 1000.0,
            duration: secs(60.0),
        }]);
        let mut n = 0u64;
        let mut last = Duration::ZERO;
        while let Some(t) = s.next_time() {
            assert!(t >= last);
            last = t;
            n += 1;
        }
        assert_eq!(n, 60_000);
        assert!((last.as_secs_f64() - 59.999).abs() < 1e-9, "{last:?}");
    }

    #[test]
    fn not_sent_once_every_connection_is_busy() {
        let mut pool: Pool<u32> = Pool::new(2);
        assert_eq!(pool.take(), Place::Open);
        assert_eq!(pool.take(), Place::Open);
        // Both busy, cap reached: the request is not sent, and nothing waits.
        assert_eq!(pool.take(), Place::NotSent);
        assert_eq!(pool.take(), Place::NotSent);
        pool.idle(7);
        assert_eq!(pool.take(), Place::Idle(7));
        assert_eq!(pool.take(), Place::NotSent);
        // A closed connection frees its place for a new one.
        pool.closed();
        assert_eq!(pool.open(), 1);
        assert_eq!(pool.take(), Place::Open);
        assert_eq!(pool.take(), Place::NotSent);
    }

    #[test]
    fn an_open_loop_run_counts_every_request_once() {
        // A server that holds each request for 3 ticks, 1 request per tick, 2 connections:
        // the pool never waits, so 1 in 3 requests is not sent.
        let mut pool: Pool<u32> = Pool::new(2);
        let mut busy: Vec<(u32, u32)> = Vec::new(); // (tick it ends, connection)
        let mut next_id = 0;
        let (mut sent, mut not_sent) = (0, 0);
        for tick in 0..30 {
            busy.retain(|&(end, id)| {
                if end <= tick {
                    pool.idle(id);
                    false
                } else {
                    true
                }
            });
            match pool.take() {
                Place::Idle(id) => {
                    busy.push((tick + 3, id));
                    sent += 1;
                }
                Place::Open => {
                    busy.push((tick + 3, next_id));
                    next_id += 1;
                    sent += 1;
                }
                Place::NotSent => not_sent += 1,
            }
        }
        assert_eq!(sent + not_sent, 30);
        assert_eq!(not_sent, 10);
        assert_eq!(pool.open(), 2);
        assert!(pool.drain_idle().len() <= 2);
    }
}
