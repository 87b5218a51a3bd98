//! Timers (spec §5): one type for a timer's length, which carries HTTP.sys's rule that a
//! timer set to 65535 seconds (MAXUSHORT) or more never fires; the service's timers, the
//! `[timers]` table of the configuration; and a queue's own, which resolve against the
//! service's when they are used.
//!
//! A queue's timer that is `0` in the control API, or left out of the configuration file,
//! is the service's (spec §5: "0 means inherit"). It is looked up when a request needs it,
//! never copied into the queue: a reload that changes the service's value reaches every
//! queue that inherits it, and a key removed from a queue's table goes back to the
//! service's value.
//!
//! This module owns the never-fires rule and the deadlines it gives, the service timers'
//! defaults and ranges, and inheritance. It must not decide what happens when a timer fires
//! (the connection and the queue do, and log it), nor hold any state of its own: a reload
//! swaps the service timers with the rest of the settings.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use portshare_proto::control::QueueProps;
use serde::Deserialize;
use tokio::time::Instant;

/// How long something may take. A timer of 65535 seconds or more never fires: HTTP.sys
/// turns a timer off when it is set to the largest value of its type. In the configuration
/// file a timer is a number of seconds, fractions allowed.
///
/// # Examples
///
/// ```
/// use portshare_server::Timer;
///
/// assert!(!Timer::from_secs(65534).never_fires());
/// assert!(Timer::from_secs(65535).never_fires());
/// assert_eq!(Timer::from_secs_f64(2.5), Some(Timer::from_millis(2500)));
/// assert_eq!(Timer::from_secs_f64(-1.0), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer(Duration);

impl Timer {
    /// The shortest timer that never fires: 65535 seconds.
    pub const NEVER: Timer = Timer(Duration::from_secs(65535));

    /// The most seconds the configuration file gives a timer (HTTP.sys's ULONG of
    /// milliseconds).
    pub const MAX_SECS: u64 = 4_294_967;

    /// A timer of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Timer {
        Timer(Duration::from_secs(secs))
    }

    /// A timer of `ms` milliseconds, as the control API gives them.
    pub const fn from_millis(ms: u64) -> Timer {
        Timer(Duration::from_millis(ms))
    }

    /// A timer of `secs` seconds; `None` for a number that is no length of time (negative,
    /// infinite or not a number).
    pub fn from_secs_f64(secs: f64) -> Option<Timer> {
        Duration::try_from_secs_f64(secs).ok().map(Timer)
    }

    /// Its length. One that [never fires](Timer::never_fires) still has one.
    pub const fn duration(self) -> Duration {
        self.0
    }

    /// Its length in milliseconds, as the control API shows it.
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// Zero long: for a queue's timer, the service's.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Whether it is set to 65535 seconds or more, which turns it off.
    pub fn never_fires(self) -> bool {
        self >= Timer::NEVER
    }

    /// Its length while it is armed; `None` for one that never fires.
    pub(crate) fn armed(self) -> Option<Duration> {
        (!self.never_fires()).then_some(self.0)
    }

    /// When it fires if started at `start`; `None` for one that never fires.
    pub(crate) fn deadline(self, start: Instant) -> Option<Instant> {
        self.armed().map(|d| start + d)
    }

    /// When it fires if started at `start`, as an instant to wait until: a century away
    /// for one that never fires.
    pub(crate) fn fires_at(self, start: Instant) -> Instant {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        self.deadline(start).unwrap_or(start + CENTURY)
    }

    /// Runs `fut` for at most this long: its output, or `None` when the timer fired first.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `fut`.
    pub(crate) async fn within<F: Future>(self, fut: F) -> Option<F::Output> {
        match self.armed() {
            Some(d) => tokio::time::timeout(d, fut).await.ok(),
            None => Some(fut.await),
        }
    }

    /// Deserializes a number of seconds, saying what is wrong with one that is no length
    /// of time as `key = value: expected`.
    fn deserialize_seconds<'de, D: serde::Deserializer<'de>>(
        d: D,
        key: Option<&str>,
        expected: &str,
    ) -> Result<Timer, D::Error> {
        let secs = d.deserialize_any(SecondsVisitor)?;
        Timer::from_secs_f64(secs).ok_or_else(|| {
            let message = match key {
                Some(key) => format!("{key} = {secs}: expected {expected}"),
                None => format!("{secs}: expected {expected}"),
            };
            serde::de::Error::custom(message)
        })
    }
}

/// In seconds, as the configuration file writes it: `120`, `2.5`.
impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.as_secs_f64(), f)
    }
}

/// A number of seconds, whole or not.
impl<'de> Deserialize<'de> for Timer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timer, D::Error> {
        Timer::deserialize_seconds(d, None, QUEUE_RANGE)
    }
}

/// Reads a number of seconds, integer or not, as it is written.
struct SecondsVisitor;

impl serde::de::Visitor<'_> for SecondsVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of seconds")
    }

    fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
}

/// What the service's timers may be.
const SERVICE_RANGE: &str = "seconds above 0 and at most 4294967";

/// What a queue's timers may be in the configuration file (0: the service's).
const QUEUE_RANGE: &str = "seconds from 0 to 4294967";

/// `MinSendRate` set to this (MAXULONG) checks nothing.
pub(crate) const NO_MIN_SEND_RATE: u32 = u32::MAX;

/// The service's timers, with HTTP.sys's defaults: the `[timers]` table of the
/// configuration, in seconds. HeaderWait and IdleConnection apply until a request is
/// routed; the others are the defaults of queues that set none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// Time to receive a request head (`HeaderWait`). Default 120 s.
    #[serde(deserialize_with = "service_keys::header_wait")]
    pub header_wait: Timer,
    /// Time an idle keep-alive connection stays open (`IdleConnection`). Default 120 s.
    #[serde(deserialize_with = "service_keys::idle_connection")]
    pub idle_connection: Timer,
    /// Longest gap while receiving a request body (`EntityBody`), for queues that set none.
    /// Default 120 s.
    #[serde(deserialize_with = "service_keys::entity_body")]
    pub entity_body: Timer,
    /// Time to read and discard the rest of a body the application did not read, so the
    /// connection can carry the next request (`DrainEntityBody`), for queues that set none.
    /// Default 120 s.
    #[serde(deserialize_with = "service_keys::drain_entity_body")]
    pub drain_entity_body: Timer,
    /// The request-queue timer of queues that set none (`RequestQueue`). Default 120 s.
    #[serde(deserialize_with = "service_keys::request_queue")]
    pub request_queue: Timer,
    /// The slowest a client may take a response, in bytes per second (`MinSendRate`), for
    /// queues that set none; 4294967295 (MAXULONG) turns the check off. Default 150.
    pub min_send_rate: u32,
    /// On SIGTERM, how long requests in progress and waiting in queues may take to finish
    /// before the daemon closes what is left (not an HTTP.sys timer). Default 30 s.
    #[serde(deserialize_with = "service_keys::shutdown")]
    pub shutdown: Timer,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            header_wait: Timer::from_secs(120),
            idle_connection: Timer::from_secs(120),
            entity_body: Timer::from_secs(120),
            drain_entity_body: Timer::from_secs(120),
            request_queue: Timer::from_secs(120),
            min_send_rate: 150,
            shutdown: Timer::from_secs(30),
        }
    }
}

impl Timers {
    /// Checks the ranges: each timer above 0 and at most [`Timer::MAX_SECS`], a
    /// `min_send_rate` of at least 1. The error names the key (without its table) and says
    /// what it may hold.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, t) in [
            ("header_wait", self.header_wait),
            ("idle_connection", self.idle_connection),
            ("entity_body", self.entity_body),
            ("drain_entity_body", self.drain_entity_body),
            ("request_queue", self.request_queue),
            ("shutdown", self.shutdown),
        ] {
            if t.is_zero() || t > Timer::from_secs(Timer::MAX_SECS) {
                return Err((key, format!("timers.{key} = {t}: expected {SERVICE_RANGE}")));
            }
        }
        if self.min_send_rate == 0 {
            return Err((
                "min_send_rate",
                "timers.min_send_rate = 0: expected bytes per second from 1 to 4294967295".into(),
            ));
        }
        Ok(())
    }
}

/// The deserializers of the `[timers]` keys: each names its key when its number is no
/// length of time (a negative one, say), as [`Timers::check`] does for one out of range. A
/// value's deserializer is not told its key, hence one function per key.
mod service_keys {
    macro_rules! keys {
        ($($key:ident)*) => {$(
            pub(super) fn $key<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<super::Timer, D::Error> {
                let key = concat!("timers.", stringify!($key));
                super::Timer::deserialize_seconds(d, Some(key), super::SERVICE_RANGE)
            }
        )*};
    }

    keys!(header_wait idle_connection entity_body drain_entity_body request_queue shutdown);
}

/// A queue's own timers; `None` takes the service's when used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueTimers {
    /// `RequestQueue`: the longest a request waits for a worker.
    pub(crate) request_queue: Option<Timer>,
    pub(crate) entity_body: Option<Timer>,
    pub(crate) drain_entity_body: Option<Timer>,
    /// Bytes per second.
    pub(crate) min_send_rate: Option<u32>,
}

impl QueueTimers {
    /// Sets the timers `p` names, in the control API's units; 0 goes back to the service's.
    pub(crate) fn set(&mut self, p: &QueueProps) {
        let own = |ms: u64| (ms > 0).then(|| Timer::from_millis(ms));
        if let Some(ms) = p.queue_timer_ms {
            self.request_queue = own(ms);
        }
        if let Some(ms) = p.entity_body_ms {
            self.entity_body = own(ms);
        }
        if let Some(ms) = p.drain_entity_body_ms {
            self.drain_entity_body = own(ms);
        }
        if let Some(rate) = p.min_send_rate {
            self.min_send_rate = (rate > 0).then_some(rate);
        }
    }

    /// The request-queue timer in force: the queue's, else the service's.
    pub(crate) fn request_queue(&self, service: &Timers) -> Timer {
        self.request_queue.unwrap_or(service.request_queue)
    }

    /// The timers a request of this queue runs under once routed.
    pub(crate) fn resolve(&self, service: &Timers) -> RequestTimers {
        RequestTimers {
            entity_body: self.entity_body.unwrap_or(service.entity_body),
            drain_entity_body: self.drain_entity_body.unwrap_or(service.drain_entity_body),
            min_send_rate: self.min_send_rate.unwrap_or(service.min_send_rate),
        }
    }
}

/// The timers of a request in hand: the service's until it is routed, then its queue's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestTimers {
    pub(crate) entity_body: Timer,
    pub(crate) drain_entity_body: Timer,
    min_send_rate: u32,
}

impl RequestTimers {
    /// The service's, for a request not routed yet.
    pub(crate) fn service(service: &Timers) -> RequestTimers {
        QueueTimers::default().resolve(service)
    }

    /// `MinSendRate` in bytes per second; `None` when it is turned off (4294967295).
    pub(crate) fn min_send_rate(&self) -> Option<u32> {
        (self.min_send_rate != NO_MIN_SEND_RATE).then_some(self.min_send_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_five_thousand_five_hundred_thirty_five_seconds_never_fire() {
        let start = Instant::now();
        for (t, fires) in [
            (Timer::from_secs(0), true),
            (Timer::from_secs(65534), true),
            (Timer::from_millis(65_534_999), true),
            (Timer::from_secs(65535), false),
            (Timer::NEVER, false),
            (Timer::from_secs(Timer::MAX_SECS), false),
        ] {
            assert_eq!(t.never_fires(), !fires, "{t}");
            assert_eq!(t.armed().is_some(), fires, "{t}");
            assert_eq!(t.deadline(start), fires.then(|| start + t.duration()));
            assert!(t.fires_at(start) >= start + t.duration().min(Timer::NEVER.duration()));
        }
    }

    #[tokio::test]
    async fn within_runs_out_or_gives_the_output() {
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(Timer::from_millis(10).within(slow).await, None);
        assert_eq!(Timer::from_secs(60).within(async { 1 }).await, Some(1));
        assert_eq!(Timer::NEVER.within(async { 2 }).await, Some(2));
    }

    #[test]
    fn seconds_as_the_file_writes_them() {
        #[derive(Deserialize)]
        struct T {
            t: Timer,
        }
        let t = |text: &str| toml::from_str::<T>(text).map(|t| t.t);
        assert_eq!(t("t = 120").ok(), Some(Timer::from_secs(120)));
        assert_eq!(t("t = 2.5").ok(), Some(Timer::from_millis(2500)));
        assert_eq!(t("t = 0").ok(), Some(Timer::from_secs(0)));
        for bad in ["t = -1", "t = nan", "t = inf", "t = \"x\"", "t = 1e300"] {
            assert!(t(bad).is_err(), "{bad}");
        }
        let e = t("t = -1").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("-1: expected seconds from 0 to 4294967"), "{e}");
        assert_eq!(Timer::from_millis(2500).to_string(), "2.5");
        assert_eq!(Timer::from_secs(120).to_string(), "120");
    }

    #[test]
    fn queue_timers_inherit_the_services_when_used() {
        let mut service = Timers::default();
        let mut q = QueueTimers::default();
        q.set(&QueueProps {
            queue_timer_ms: Some(1500),
            entity_body_ms: Some(3000),
            min_send_rate: Some(1000),
            ..QueueProps::default()
        });
        let r = q.resolve(&service);
        assert_eq!(
            (r.entity_body, r.drain_entity_body, r.min_send_rate()),
            (Timer::from_secs(3), Timer::from_secs(120), Some(1000))
        );
        assert_eq!(q.request_queue(&service), Timer::from_millis(1500));
        // The service's changes reach what the queue inherits, and only that.
        service.drain_entity_body = Timer::from_secs(7);
        service.request_queue = Timer::from_secs(9);
        service.min_send_rate = NO_MIN_SEND_RATE;
        let r = q.resolve(&service);
        assert_eq!(r.drain_entity_body, Timer::from_secs(7));
        assert_eq!(r.min_send_rate(), Some(1000));
        assert_eq!(q.request_queue(&service), Timer::from_millis(1500));
        // 0 goes back to the service's.
        q.set(&QueueProps {
            queue_timer_ms: Some(0),
            entity_body_ms: Some(0),
            min_send_rate: Some(0),
            ..QueueProps::default()
        });
        assert_eq!(q, QueueTimers::default());
        assert_eq!(q.request_queue(&service), Timer::from_secs(9));
        assert_eq!(q.resolve(&service).min_send_rate(), None);
    }
}
