//! Request queues (spec §6): a bounded FIFO of requests waiting for a worker slot, the
//! slots the attached workers declared, the request-queue timer, and the answers of a full
//! or disabled queue.
//!
//! A request that finds a free slot takes it at once and never enters the FIFO. Otherwise
//! it waits, holding only a [`Ticket`]: its body stays in the client's socket. A slot is a
//! [`Slot`] value; dropping it gives the slot back, which hands it straight to the oldest
//! waiting request, so the queue is exact however a request ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portshare_proto::control::{QueueCounters, QueueLimits, QueueProps, Verbosity};
use portshare_router::Reason;
use tokio::sync::oneshot;

use crate::metrics::QueueCounters as Recorded;
use crate::timers::{QueueTimers, Timer, Timers};
use crate::upstream::Upstream;
use crate::worker::WorkerConn;

/// Where a slot sends its request.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// An attached worker, over the worker wire.
    Worker(Arc<WorkerConn>),
    /// An upstream server the daemon connects to.
    Upstream(Arc<Upstream>),
}

/// The settable properties of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Props {
    pub(crate) length: u32,
    pub(crate) verbosity: Verbosity,
    pub(crate) enabled: bool,
    pub(crate) linger: Duration,
    /// Its own timers; those it does not set are the service's, looked up when used.
    pub(crate) timers: QueueTimers,
    /// Most client connections; 0 for no limit.
    pub(crate) max_connections: u32,
    /// Most opaque connections at once.
    pub(crate) max_opaque: u32,
}

impl Default for Props {
    fn default() -> Props {
        Props {
            length: 1000,
            verbosity: Verbosity::Basic,
            enabled: true,
            linger: Duration::ZERO,
            timers: QueueTimers::default(),
            max_connections: 0,
            max_opaque: QueueProps::DEFAULT_MAX_OPAQUE,
        }
    }
}

impl Props {
    /// Applies the properties present in `p`, once [`QueueProps::validate`] finds them all
    /// in range.
    pub(crate) fn apply(&mut self, p: &QueueProps) -> Result<(), String> {
        p.validate().map_err(|e| e.message)?;
        if let Some(len) = p.length {
            self.length = len;
        }
        if let Some(v) = p.verbosity {
            self.verbosity = v;
        }
        if let Some(e) = p.enabled {
            self.enabled = e;
        }
        if let Some(ms) = p.linger_ms {
            self.linger = Duration::from_millis(ms);
        }
        self.timers.set(p);
        if let Some(v) = p.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = p.max_opaque {
            self.max_opaque = v;
        }
        Ok(())
    }

    /// The queue's timers and connection limit as the control API shows them: 0 for the
    /// service's value, or for no limit.
    pub(crate) fn limits(&self) -> QueueLimits {
        let ms = |t: Option<Timer>| t.map_or(0, Timer::as_millis);
        QueueLimits {
            entity_body_ms: ms(self.timers.entity_body),
            drain_entity_body_ms: ms(self.timers.drain_entity_body),
            min_send_rate: self.timers.min_send_rate.unwrap_or(0),
            max_connections: self.max_connections,
            max_opaque: self.max_opaque,
            request_queue_ms: ms(self.timers.request_queue),
        }
    }
}

/// A request queue.
#[derive(Debug)]
pub(crate) struct Queue {
    name: String,
    owner_uid: u32,
    upstream: Option<Arc<Upstream>>,
    inner: Mutex<Inner>,
    delivered: AtomicU64,
    queue_full: AtomicU64,
    disabled: AtomicU64,
    timed_out: AtomicU64,
    abandoned: AtomicU64,
    conn_limit: AtomicU64,
    /// Client connections counted against `max_connections` now.
    connections: AtomicU64,
    /// `Props::max_connections`, read without the lock.
    max_connections: AtomicU32,
    /// The https port requests are redirected to; 0 for a queue that serves them.
    https_redirect: AtomicU32,
    /// Opaque connections open now, against `max_opaque`.
    opaque: AtomicU64,
    /// `Props::max_opaque`, read without the lock.
    max_opaque: AtomicU32,
    /// What `crate::metrics` publishes of it (shared by an owner's unnamed queues).
    recorded: Arc<Recorded>,
}

/// An opaque connection counted against its queue's `max_opaque` until dropped.
#[derive(Debug)]
pub(crate) struct Opaque(Arc<Queue>);

impl Drop for Opaque {
    fn drop(&mut self) {
        self.0.opaque.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection counted against its queue's connection limit until dropped.
#[derive(Debug)]
pub(crate) struct Counted(Arc<Queue>);

impl Counted {
    pub(crate) fn queue(&self) -> &Arc<Queue> {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Inner {
    props: Props,
    pending: VecDeque<Waiter>,
    seats: Vec<Seat>,
    /// Where the next search for a free slot starts, so requests spread across workers.
    cursor: usize,
    next_waiter: u64,
    closed: bool,
    /// When the drain rate was last sampled, and `delivered` then.
    rate_mark: (Instant, u64),
    /// Requests per second leaving the queue, from the last sample.
    rate: f64,
}

/// One attached worker (or the upstream) and its free slots.
#[derive(Debug)]
struct Seat {
    id: u64,
    target: Target,
    free: u32,
    slots: u32,
    /// Requests it finished (slots given back).
    served: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    since: Instant,
    tx: oneshot::Sender<Result<Slot, Closed>>,
}

/// The queue closed while a request waited in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed;

/// What [`Queue::admit`] decided.
#[derive(Debug)]
pub(crate) enum Admit {
    /// A slot was free.
    Now(Slot),
    /// The request waits in the FIFO.
    Wait(Ticket),
    /// The FIFO is full: answer by the verbosity, with this `Retry-After`.
    Full(Verbosity, u64),
    /// The queue is disabled: answer by the verbosity.
    Disabled(Verbosity, u64),
    /// The queue is closing.
    Closed,
}

/// A worker slot held by one request; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    queue: Arc<Queue>,
    seat: u64,
    target: Target,
    live: bool,
    timers: QueueTimers,
    /// When the request arrived, and when it got the slot.
    arrived: Instant,
    taken: Instant,
}

impl Slot {
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// The queue's timers as the slot was given.
    pub(crate) fn timers(&self) -> QueueTimers {
        self.timers
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.live {
            self.queue.recorded.done(self.arrived, self.taken);
            self.queue.release(self.seat, self.target.clone(), true);
        }
    }
}

/// A request's place in the FIFO.
#[derive(Debug)]
pub(crate) struct Ticket {
    queue: Arc<Queue>,
    id: u64,
    timer: Timer,
    rx: oneshot::Receiver<Result<Slot, Closed>>,
    /// The queue answered (a slot, or its closing), which it does only after taking the
    /// request out of the FIFO.
    answered: bool,
}

/// Why a waiting request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missed {
    /// The request-queue timer fired.
    TimedOut,
    /// The queue closed.
    Closed,
}

impl Ticket {
    /// Waits for a slot, at most the queue's timer.
    pub(crate) async fn wait(mut self) -> Result<Slot, Missed> {
        let got = self.timer.within(&mut self.rx).await;
        self.answered = got.is_some();
        match got {
            Some(Ok(Ok(slot))) => Ok(slot),
            Some(Ok(Err(Closed)) | Err(_)) => Err(Missed::Closed),
            None => {
                self.queue.timed_out.fetch_add(1, Ordering::Relaxed);
                self.queue.recorded.refused(Reason::TimerReqQueue);
                Err(Missed::TimedOut)
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Gone before its turn (timer, client left): leave the FIFO. A slot sent meanwhile
        // is dropped with the receiver and goes back to the queue.
        self.rx.close();
        let mut inner = self.queue.lock();
        if let Some(i) = inner.pending.iter().position(|w| w.id == self.id) {
            inner.pending.remove(i);
        }
    }
}

impl Queue {
    #[cfg(test)]
    pub(crate) fn new(
        name: String,
        owner_uid: u32,
        props: Props,
        upstream: Option<Arc<Upstream>>,
    ) -> Arc<Queue> {
        let recorded = Recorded::new(name.clone(), owner_uid);
        Queue::with_counters(name, owner_uid, props, upstream, recorded)
    }

    /// A queue whose counters are `recorded`.
    pub(crate) fn with_counters(
        name: String,
        owner_uid: u32,
        props: Props,
        upstream: Option<Arc<Upstream>>,
        recorded: Arc<Recorded>,
    ) -> Arc<Queue> {
        let max = props.max_connections;
        let max_opaque = props.max_opaque;
        Arc::new(Queue {
            name,
            owner_uid,
            upstream,
            inner: Mutex::new(Inner {
                props,
                pending: VecDeque::new(),
                seats: Vec::new(),
                cursor: 0,
                next_waiter: 0,
                closed: false,
                rate_mark: (Instant::now(), 0),
                rate: 0.0,
            }),
            delivered: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            disabled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            conn_limit: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            max_connections: AtomicU32::new(max),
            https_redirect: AtomicU32::new(0),
            opaque: AtomicU64::new(0),
            max_opaque: AtomicU32::new(max_opaque),
            recorded,
        })
    }

    /// Its counters, as `crate::metrics` publishes them.
    pub(crate) fn metrics(&self) -> &Arc<Recorded> {
        &self.recorded
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated in a way that
        // matters more than stopping the daemon would; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    /// The https port this queue's requests are redirected to, if it redirects them.
    pub(crate) fn https_redirect(&self) -> Option<u16> {
        match self.https_redirect.load(Ordering::Relaxed) {
            0 => None,
            port => u16::try_from(port).ok(),
        }
    }

    /// Makes the queue answer its requests with a redirect to https on `port` (or serve
    /// them again, with `None`).
    pub(crate) fn set_https_redirect(&self, port: Option<u16>) {
        self.https_redirect
            .store(port.map_or(0, u32::from), Ordering::Relaxed);
    }

    /// The upstream, for a queue that forwards.
    pub(crate) fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }

    pub(crate) fn props(&self) -> Props {
        self.lock().props
    }

    pub(crate) fn set_props(&self, p: &QueueProps) -> Result<Props, String> {
        let mut inner = self.lock();
        let mut props = inner.props;
        props.apply(p)?;
        inner.props = props;
        self.max_connections
            .store(props.max_connections, Ordering::Relaxed);
        self.max_opaque.store(props.max_opaque, Ordering::Relaxed);
        Ok(props)
    }

    /// Counts an opaque connection against `max_opaque`; `None` when the queue holds as
    /// many as it may.
    pub(crate) fn count_opaque(self: &Arc<Queue>) -> Option<Opaque> {
        let max = u64::from(self.max_opaque.load(Ordering::Relaxed));
        let prev = self.opaque.fetch_add(1, Ordering::Relaxed);
        if prev >= max {
            self.opaque.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Opaque(self.clone()))
    }

    /// Opaque connections open now.
    pub(crate) fn opaque(&self) -> u64 {
        self.opaque.load(Ordering::Relaxed)
    }

    /// Counts a client connection against the connection limit; `None` (counted as a
    /// `ConnLimit` refusal) when the queue holds as many as it may.
    pub(crate) fn count_connection(self: &Arc<Queue>) -> Option<Counted> {
        let max = u64::from(self.max_connections.load(Ordering::Relaxed));
        let prev = self.connections.fetch_add(1, Ordering::Relaxed);
        if max > 0 && prev >= max {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            self.conn_limit.fetch_add(1, Ordering::Relaxed);
            self.recorded.refused(Reason::ConnLimit);
            return None;
        }
        Some(Counted(self.clone()))
    }

    /// Client connections counted now.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The 503 verbosity and `Retry-After` for a refusal outside `admit`, under the
    /// `service` timers in force.
    pub(crate) fn refusal(&self, service: &Timers) -> (Verbosity, u64) {
        let mut inner = self.lock();
        let timer = inner.props.timers.request_queue(service);
        let retry = self.retry_after(&mut inner, timer);
        (inner.props.verbosity, retry)
    }

    /// Asks for a slot for one request, under the `service` timers in force: a request
    /// that waits does so for the queue's request-queue timer, else the service's.
    pub(crate) fn admit(self: &Arc<Queue>, service: &Timers) -> Admit {
        let mut inner = self.lock();
        if inner.closed {
            return Admit::Closed;
        }
        let timer = inner.props.timers.request_queue(service);
        self.recorded.arrival();
        if !inner.props.enabled {
            self.disabled.fetch_add(1, Ordering::Relaxed);
            self.recorded.refused(Reason::Disabled);
            let retry = self.retry_after(&mut inner, timer);
            return Admit::Disabled(inner.props.verbosity, retry);
        }
        if inner.pending.is_empty()
            && let Some(slot) = self.take_free(&mut inner)
        {
            return Admit::Now(slot);
        }
        if inner.pending.len() >= inner.props.length as usize {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
            self.recorded.refused(Reason::QueueFull);
            let retry = self.retry_after(&mut inner, timer);
            return Admit::Full(inner.props.verbosity, retry);
        }
        let (tx, rx) = oneshot::channel();
        let id = inner.next_waiter;
        inner.next_waiter += 1;
        inner.pending.push_back(Waiter {
            id,
            since: Instant::now(),
            tx,
        });
        Admit::Wait(Ticket {
            queue: self.clone(),
            id,
            timer,
            rx,
            answered: false,
        })
    }

    fn take_free(self: &Arc<Queue>, inner: &mut Inner) -> Option<Slot> {
        let n = inner.seats.len();
        for k in 0..n {
            let i = (inner.cursor + k) % n;
            let seat = &mut inner.seats[i];
            if seat.free > 0 {
                seat.free -= 1;
                let now = Instant::now();
                let slot = Slot {
                    queue: self.clone(),
                    seat: seat.id,
                    target: seat.target.clone(),
                    live: true,
                    timers: inner.props.timers,
                    arrived: now,
                    taken: now,
                };
                inner.cursor = (i + 1) % n;
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.recorded.taken(now, now);
                return Some(slot);
            }
        }
        None
    }

    /// A slot came back (`served`: from a request that held it): the oldest waiting
    /// request takes it, else the seat keeps it.
    fn release(self: &Arc<Queue>, seat: u64, target: Target, served: bool) {
        let mut inner = self.lock();
        // Gone when the worker left or stopped taking requests: the slot goes with it.
        let Some(at) = inner.seats.iter().position(|s| s.id == seat) else {
            return;
        };
        inner.seats[at].served += u64::from(served);
        while let Some(w) = inner.pending.pop_front() {
            let now = Instant::now();
            let slot = Slot {
                queue: self.clone(),
                seat,
                target: target.clone(),
                live: true,
                timers: inner.props.timers,
                arrived: w.since,
                taken: now,
            };
            match w.tx.send(Ok(slot)) {
                Ok(()) => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    self.recorded.taken(w.since, now);
                    return;
                }
                // The waiter gave up meanwhile; the next one may take the slot.
                Err(Ok(mut slot)) => slot.live = false,
                Err(Err(_)) => {}
            }
        }
        let s = &mut inner.seats[at];
        s.free = (s.free + 1).min(s.slots);
    }

    /// Adds a worker (or the upstream) with `slots` slots; waiting requests take them at once.
    pub(crate) fn attach(self: &Arc<Queue>, id: u64, target: Target, slots: u32) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.seats.push(Seat {
            id,
            target: target.clone(),
            free: 0,
            slots,
            served: 0,
        });
        drop(inner);
        for _ in 0..slots {
            self.release(id, target.clone(), false);
        }
        true
    }

    /// Takes a worker out: it gets no new requests. Requests it holds finish or fail on
    /// their own; their slots are not reused.
    pub(crate) fn detach(&self, id: u64) {
        let mut inner = self.lock();
        inner.seats.retain(|s| s.id != id);
        if inner.cursor >= inner.seats.len() {
            inner.cursor = 0;
        }
    }

    /// Closes the queue: waiting requests are abandoned, workers told to go.
    pub(crate) fn close(&self) {
        let (pending, seats) = {
            let mut inner = self.lock();
            inner.closed = true;
            (
                std::mem::take(&mut inner.pending),
                std::mem::take(&mut inner.seats),
            )
        };
        for w in pending {
            if w.tx.send(Err(Closed)).is_ok() {
                self.abandoned.fetch_add(1, Ordering::Relaxed);
                self.recorded.refused(Reason::ConnectionAbandonedByReqQueue);
            }
        }
        for s in seats {
            if let Target::Worker(w) = s.target {
                w.shutdown();
            }
        }
    }

    /// Counts a request abandoned because its worker went away.
    pub(crate) fn count_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        self.recorded.refused(Reason::ConnectionAbandonedByReqQueue);
    }

    /// Seconds a refused client should wait: the queue's depth over its recent drain rate,
    /// else its request-queue `timer`; at least 1.
    fn retry_after(&self, inner: &mut Inner, timer: Timer) -> u64 {
        let now = Instant::now();
        let delivered = self.delivered.load(Ordering::Relaxed);
        let (at, then) = inner.rate_mark;
        let span = now.duration_since(at).as_secs_f64();
        if span >= 1.0 {
            inner.rate = (delivered - then) as f64 / span;
            inner.rate_mark = (now, delivered);
        }
        let depth = inner.pending.len() as f64 + 1.0;
        let secs = if inner.rate > 0.0 {
            (depth / inner.rate).ceil()
        } else {
            timer.duration().as_secs_f64().ceil()
        };
        (secs as u64).clamp(1, 3600)
    }

    /// Requests waiting, requests in the workers' hands, and the oldest wait.
    pub(crate) fn depth(&self) -> (u64, u64, Option<Duration>) {
        let inner = self.lock();
        let busy: u64 = inner
            .seats
            .iter()
            .map(|s| u64::from(s.slots - s.free))
            .sum();
        let oldest = inner.pending.front().map(|w| w.since.elapsed());
        (inner.pending.len() as u64, busy, oldest)
    }

    /// Each seat's target, slots and busy slots.
    pub(crate) fn seats(&self) -> Vec<(Target, u32, u32)> {
        self.lock()
            .seats
            .iter()
            .map(|s| (s.target.clone(), s.slots, s.slots - s.free))
            .collect()
    }

    /// Each seat's target, slots, busy slots and requests served.
    pub(crate) fn seats_served(&self) -> Vec<(Target, u32, u32, u64)> {
        self.lock()
            .seats
            .iter()
            .map(|s| (s.target.clone(), s.slots, s.slots - s.free, s.served))
            .collect()
    }

    pub(crate) fn counters(&self) -> QueueCounters {
        QueueCounters {
            delivered: self.delivered.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            disabled: self.disabled.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            conn_limit: self.conn_limit.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(props: &QueueProps) -> Arc<Queue> {
        let mut p = Props::default();
        p.apply(props).expect("valid properties");
        Queue::new("q".into(), 0, p, None)
    }

    #[test]
    fn a_connection_limit_counts_connections_until_they_go() {
        let q = queue(&QueueProps {
            max_connections: Some(2),
            ..QueueProps::default()
        });
        let a = q.count_connection().expect("first");
        let b = q.count_connection().expect("second");
        assert!(q.count_connection().is_none());
        assert_eq!((q.connections(), q.counters().conn_limit), (2, 1));
        drop(a);
        let _c = q.count_connection().expect("a place came free");
        drop(b);
        assert_eq!(q.connections(), 1);
        // 0 lifts the limit.
        q.set_props(&QueueProps {
            max_connections: Some(0),
            ..QueueProps::default()
        })
        .expect("set");
        let many: Vec<_> = (0..100).filter_map(|_| q.count_connection()).collect();
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn queue_timers_inherit_at_zero() {
        let mut p = Props::default();
        p.apply(&QueueProps {
            entity_body_ms: Some(1500),
            min_send_rate: Some(1000),
            ..QueueProps::default()
        })
        .expect("valid");
        assert_eq!(p.timers.entity_body, Some(Timer::from_millis(1500)));
        assert_eq!(p.timers.drain_entity_body, None);
        assert_eq!(p.timers.min_send_rate, Some(1000));
        p.apply(&QueueProps {
            entity_body_ms: Some(0),
            min_send_rate: Some(0),
            ..QueueProps::default()
        })
        .expect("valid");
        assert_eq!(p.timers, QueueTimers::default());
    }

    #[test]
    fn a_request_waits_for_the_queue_timer_in_force() {
        let q = queue(&QueueProps::default());
        let service = Timers {
            request_queue: Timer::from_secs(7),
            ..Timers::default()
        };
        let Admit::Wait(ticket) = q.admit(&service) else {
            panic!("no worker: the request waits");
        };
        assert_eq!(ticket.timer, Timer::from_secs(7));
        // 0 is the service's too; a value of its own wins.
        q.set_props(&QueueProps {
            queue_timer_ms: Some(0),
            ..QueueProps::default()
        })
        .expect("0 inherits");
        let Admit::Wait(ticket) = q.admit(&service) else {
            panic!("waits");
        };
        assert_eq!(ticket.timer, Timer::from_secs(7));
        q.set_props(&QueueProps {
            queue_timer_ms: Some(300),
            ..QueueProps::default()
        })
        .expect("its own");
        let Admit::Wait(ticket) = q.admit(&service) else {
            panic!("waits");
        };
        assert_eq!(ticket.timer, Timer::from_millis(300));
        // Out of range: refused, and nothing changes.
        let e = q.set_props(&QueueProps {
            length: Some(0),
            queue_timer_ms: Some(5),
            ..QueueProps::default()
        });
        assert_eq!(e, Err("length = 0: expected 1 to 2147483647".into()));
        assert_eq!(
            q.props().timers.request_queue,
            Some(Timer::from_millis(300))
        );
    }
}
