//! The open-loop plan: when each request is meant to leave ([`Schedule`]), and where it
//! goes when its time comes ([`Pool`]): an idle connection, a new one, or nowhere ("not
//! sent") once every connection is busy and the cap is reached. Neither waits for the
//! server: that is what keeps overload visible instead of slowing the arrivals down.

use std::collections::VecDeque;
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

    /// Every connection busy and the cap reached: a request would not be sent now.
    fn saturated(&self) -> bool {
        self.idle.is_empty() && self.open >= self.cap
    }

    /// Takes the idle handles out, each counted as closed: for the end of the run.
    pub(crate) fn drain_idle(&mut self) -> Vec<T> {
        let idle = std::mem::take(&mut self.idle);
        self.open = self.open.saturating_sub(idle.len());
        idle
    }
}

/// How long a request whose time has come may wait for a connection to come free before
/// it counts as not sent, when every connection is busy and the cap is reached: the
/// runtime's timer tick, the lateness a dispatcher woken by that timer always had.
pub(crate) const SLACK: Duration = Duration::from_millis(1);

/// One thread's share of the plan, as its dispatcher and its connections see it together:
/// its requests (every `shards`-th of the schedule), those whose time has come and that
/// no connection has taken yet, the connections ([`Pool`]) and what was offered each
/// second.
///
/// A connection back from a response takes a request whose time has come itself
/// ([`Lane::claim`]), the newest first, so a request is late only when the connections
/// were all busy at its time; one that finds none is parked in the pool, and the
/// dispatcher hands it the next request at its time ([`Lane::place`]), or opens a new
/// connection below the cap. A request still untaken [`SLACK`] after its time while every
/// connection is busy and the cap is reached counts not sent: it never waits longer.
#[derive(Debug)]
pub(crate) struct Lane<T> {
    schedule: Schedule,
    shards: usize,
    /// The next request whose time has not come; `None` once the plan is over.
    upcoming: Option<Duration>,
    /// Requests whose time has come, not yet taken or counted not sent, oldest first.
    due: VecDeque<Duration>,
    pool: Pool<T>,
    /// Per second of intended time: requests sent, and not sent.
    offered: Vec<(u64, u64)>,
}

impl<T> Lane<T> {
    /// Shard `shard` of `shards` (requests `shard`, `shard + shards`... of the schedule),
    /// with at most `cap` connections.
    pub(crate) fn new(mut schedule: Schedule, (shard, shards): (usize, usize), cap: usize) -> Self {
        for _ in 0..shard {
            let _ = schedule.next_time();
        }
        let upcoming = schedule.next_time();
        Lane {
            schedule,
            shards: shards.max(1),
            upcoming,
            due: VecDeque::new(),
            pool: Pool::new(cap),
            offered: Vec::new(),
        }
    }

    /// Takes the newest request whose time has come by `now` (an offset from the start),
    /// for a connection back from a response; `None` when there is none.
    pub(crate) fn claim(&mut self, now: Duration) -> Option<Duration> {
        self.refresh(now);
        let at = self.due.pop_back()?;
        self.count(at, true);
        Some(at)
    }

    /// Where the oldest request whose time has come by `now` goes: an idle connection, a
    /// new one, or `None` when none is due or every connection is busy (it may still be
    /// claimed within [`SLACK`]). For the dispatcher, in a loop.
    pub(crate) fn place(&mut self, now: Duration) -> Option<(Place<T>, Duration)> {
        self.refresh(now);
        let &at = self.due.front()?;
        match self.pool.take() {
            Place::NotSent => None,
            place => {
                self.due.pop_front();
                self.count(at, true);
                Some((place, at))
            }
        }
    }

    /// Puts back a request [`Lane::place`] gave out, whose connection turned out to be gone.
    pub(crate) fn put_back(&mut self, at: Duration) {
        self.due.push_front(at);
        if let Some(s) = self.offered.get_mut(at.as_secs() as usize) {
            s.0 = s.0.saturating_sub(1);
        }
    }

    /// When the dispatcher should look again: the next request's time, or when the oldest
    /// waiting one runs out of slack. `None` once nothing is left to judge.
    pub(crate) fn wake_at(&self) -> Option<Duration> {
        let expiry = self.due.front().map(|&t| t + SLACK);
        match (self.upcoming, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Nothing is left to offer or judge: the plan is over.
    pub(crate) fn over(&self) -> bool {
        self.upcoming.is_none() && self.due.is_empty()
    }

    /// Ends the plan early: no more requests are offered (those already due may still be
    /// taken or judged).
    pub(crate) fn stop(&mut self) {
        self.upcoming = None;
    }

    /// A connection that found nothing to take: idle until handed a request.
    pub(crate) fn park(&mut self, handle: T) {
        self.pool.idle(handle);
    }

    /// A connection closed (it was busy, so it holds no idle handle).
    pub(crate) fn closed(&mut self) {
        self.pool.closed();
    }

    /// Connections open now, busy or idle.
    pub(crate) fn open(&self) -> usize {
        self.pool.open()
    }

    /// The idle connections' handles, each counted as closed: for the end of the run.
    pub(crate) fn drain_idle(&mut self) -> Vec<T> {
        self.pool.drain_idle()
    }

    /// Per second of intended time, the requests sent and not sent.
    pub(crate) fn offered(&self) -> &[(u64, u64)] {
        &self.offered
    }

    /// Moves the requests whose time has come by `now` into `due`, and counts not sent the
    /// ones past their slack while every connection is busy and the cap is reached.
    fn refresh(&mut self, now: Duration) {
        while let Some(at) = self.upcoming.filter(|&at| at <= now) {
            self.due.push_back(at);
            for _ in 1..self.shards {
                let _ = self.schedule.next_time();
            }
            self.upcoming = self.schedule.next_time();
        }
        if !self.pool.saturated() {
            return;
        }
        while let Some(&at) = self.due.front() {
            if at + SLACK > now {
                break;
            }
            self.due.pop_front();
            self.count(at, false);
        }
    }

    fn count(&mut self, at: Duration, sent: bool) {
        let second = at.as_secs() as usize;
        if self.offered.len() <= second {
            self.offered.resize(second + 1, (0, 0));
        }
        let s = &mut self.offered[second];
        if sent {
            s.0 += 1;
        } else {
            s.1 += 1;
        }
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

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn lane(rate: f64, cap: usize) -> Lane<u32> {
        Lane::new(
            Schedule::new(vec![Step {
                rate,
                duration: secs(1.0),
            }]),
            (0, 1),
            cap,
        )
    }

    #[test]
    fn a_lane_takes_every_nth_request() {
        let mut l: Lane<u32> = Lane::new(
            Schedule::new(vec![Step {
                rate: 10.0,
                duration: secs(1.0),
            }]),
            (1, 3),
            4,
        );
        let mut times = Vec::new();
        while let Some(at) = l.wake_at() {
            while let Some((place, at)) = l.place(at) {
                assert_eq!(place, Place::Open);
                times.push(at);
            }
        }
        assert_eq!(times, [ms(100), ms(400), ms(700)]);
        assert_eq!(l.offered(), [(3, 0)]);
    }

    #[test]
    fn a_free_connection_takes_the_newest_due_request() {
        let us = Duration::from_micros;
        // 10000/s: one request each 100 µs, one connection.
        let mut l = lane(10_000.0, 1);
        assert_eq!(l.place(us(0)), Some((Place::Open, us(0))));
        // Nothing due yet at 50 µs.
        assert_eq!(l.claim(us(50)), None);
        assert_eq!(l.wake_at(), Some(us(100)));
        // Back at 350 µs: the newest due goes first, the older ones wait their slack.
        assert_eq!(l.claim(us(350)), Some(us(300)));
        assert_eq!(l.claim(us(360)), Some(us(200)));
        // Busy until 1150 µs: the 100 µs one ran out of slack and is not sent.
        assert_eq!(l.place(us(1150)), None);
        assert_eq!(l.claim(us(1150)), Some(us(1100)));
        assert_eq!(l.offered(), [(4, 1)]);
    }

    #[test]
    fn a_request_waits_for_no_busy_connection_beyond_its_slack() {
        let mut l = lane(1000.0, 1);
        assert_eq!(l.place(ms(0)), Some((Place::Open, ms(0))));
        // Busy until 10 ms: requests 1..=9 ms are past their slack, 10 is not.
        assert_eq!(l.place(ms(10)), None);
        assert_eq!(l.wake_at(), Some(ms(11)));
        assert_eq!(l.claim(ms(10)), Some(ms(10)));
        assert_eq!(l.claim(ms(10)), None);
        assert_eq!(l.offered(), [(2, 9)]);
    }

    #[test]
    fn an_idle_connection_is_handed_a_late_request_rather_than_none() {
        // While a connection is parked no request is not sent, however late the
        // dispatcher looks.
        let mut l = lane(1000.0, 2);
        assert_eq!(l.place(ms(0)), Some((Place::Open, ms(0))));
        assert_eq!(l.claim(Duration::from_micros(100)), None);
        l.park(7);
        assert_eq!(l.place(ms(5)), Some((Place::Idle(7), ms(1))));
        assert_eq!(l.place(ms(5)), Some((Place::Open, ms(2))));
        // Both busy now: 3 and 4 ms are past their slack at 5 ms, 5 is not.
        assert_eq!(l.place(ms(5)), None);
        assert_eq!(l.claim(ms(5)), Some(ms(5)));
        assert_eq!(l.offered(), [(4, 2)]);
        l.put_back(ms(5));
        assert_eq!(l.offered(), [(3, 2)]);
    }

    #[test]
    fn the_lane_ends_when_every_request_is_judged() {
        let mut l = lane(4.0, 1);
        assert_eq!(l.place(ms(0)), Some((Place::Open, ms(0))));
        // Busy to the end: the rest run out of slack, and then nothing is left.
        assert_eq!(l.place(secs(2.0)), None);
        assert_eq!(l.wake_at(), None);
        assert_eq!(l.offered(), [(1, 3)]);
        let mut stopped = lane(4.0, 1);
        stopped.stop();
        assert_eq!(stopped.wake_at(), None);
        assert_eq!(stopped.claim(secs(2.0)), None);
    }
}
