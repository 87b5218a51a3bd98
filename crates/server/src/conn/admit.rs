//! Routing and admission, the same for every protocol: a parsed request head routed by the
//! table, a slot taken in the winning queue (or waited for) and a stream opened on the
//! slot's worker; and, for a request that does not get that far, what it is answered and
//! what the error log says (spec §2, §6.3, §7).
//!
//! This module owns those decisions. HTTP/1 (the connection loop in `conn`) and HTTP/2
//! (`crate::h2`) both call it, and each writes the answer in its own framing. It must not
//! write to a client, nor count a connection against a queue (a connection of either
//! protocol does that itself, as it lives differently).

use std::sync::Arc;

use portshare_proto::control::Verbosity;
use portshare_router::{Dispatch, Endpoint, Reason, Rejection, TargetForm, encode_path};

use super::to_worker::Stream;
use crate::config::Timers;
use crate::head::Head;
use crate::pages::Detail;
use crate::queue::{Admit, Missed, Queue, Slot, Target};
use crate::shared::{Destination, Settings, Shared};
use crate::upstream::Upstream;

/// Where an admitted request goes: its slot's target, ready to take it.
pub(crate) enum Taken {
    /// A stream opened on the slot's worker connection.
    Worker(Stream),
    /// The queue's upstream.
    Upstream(Arc<Upstream>),
}

/// A request routed to a registration.
pub(crate) struct Routed<'h> {
    /// The registration's destination.
    pub(crate) binding: Arc<Destination>,
    /// The authority of an absolute-form target, when routing used it: the application
    /// gets it as its Host (spec §2.2, RFC 9112 §3.2.2).
    pub(crate) authority: Option<&'h [u8]>,
}

/// Routes `head` arriving on `endpoint`, and writes into `target` what the application
/// gets as its target: the cooked path re-encoded, then `?` and the raw query. `Err(None)`
/// when nobody takes the request and the connection is to close without an answer.
pub(crate) fn route<'h>(
    shared: &Shared,
    settings: &Settings,
    endpoint: &Endpoint,
    head: &Head<'h>,
    target: &mut Vec<u8>,
) -> Result<Routed<'h>, Option<Rejection>> {
    let table = shared.table.load();
    match table.dispatch(endpoint, &head.request_head(), &settings.url_opts) {
        Dispatch::Deliver(d) => {
            let binding = d.registration().value().clone();
            let authority = match d.target().form() {
                TargetForm::Absolute { authority } => Some(authority),
                _ => None,
            };
            target.clear();
            target.extend_from_slice(encode_path(d.target().path()).as_bytes());
            if let Some(q) = d.target().query() {
                target.push(b'?');
                target.extend_from_slice(q);
            }
            Ok(Routed { binding, authority })
        }
        Dispatch::Reject(r) => Err(Some(r)),
        _ => Err(None),
    }
}

/// Why an admitted request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue is full or disabled, or its connection limit is reached: a 503 or a
    /// reset, by the queue's verbosity, with this `Retry-After`.
    Unavailable(Reason, Verbosity, u64),
    /// The request-queue timer fired: no answer (`Timer_ReqQueue`).
    TimedOut,
    /// The daemon stopped before a worker took it: 503 `AppShutdown`.
    ShuttingDown,
    /// The queue, or the worker its slot named, let it go: a reset
    /// (`Connection_Abandoned_By_ReqQueue`).
    Abandoned,
}

impl Refused {
    /// The status and reason of the error-log line.
    pub(crate) fn logged(self) -> (Option<u16>, Reason) {
        match self {
            Refused::Unavailable(reason, verbosity, _) => {
                ((verbosity != Verbosity::Basic).then_some(503), reason)
            }
            Refused::TimedOut => (None, Reason::TimerReqQueue),
            Refused::ShuttingDown => (Some(503), Reason::AppShutdown),
            Refused::Abandoned => (None, Reason::ConnectionAbandonedByReqQueue),
        }
    }

    /// The daemon's page to answer with, its detail and `Retry-After`; `None` when the
    /// request gets no answer.
    pub(crate) fn page(self) -> Option<(Rejection, Detail, Option<u64>)> {
        match self {
            Refused::Unavailable(reason, verbosity, retry) => {
                let detail = match verbosity {
                    Verbosity::Basic => return None,
                    Verbosity::Limited => Detail::Standard,
                    _ => Detail::Cause,
                };
                Some((unavailable(reason), detail, Some(retry)))
            }
            Refused::ShuttingDown => {
                Some((unavailable(Reason::AppShutdown), Detail::Standard, Some(1)))
            }
            Refused::TimedOut | Refused::Abandoned => None,
        }
    }
}

fn unavailable(reason: Reason) -> Rejection {
    Rejection {
        status: 503,
        reason,
    }
}

/// Takes a slot in `queue` (waiting for one if the queue says so) and opens the request's
/// way to the slot's target. A worker can leave between giving its slot and the request
/// reaching it; then the request goes back for another slot.
///
/// # Cancel safety
///
/// Cancel safe: a wait given up leaves the queue's FIFO, and a slot dropped goes back.
pub(crate) async fn admit(
    shared: &Shared,
    queue: &Arc<Queue>,
    timers: &Timers,
) -> Result<(Slot, Taken), Refused> {
    let mut tries = 0;
    loop {
        let slot = match queue.admit(timers) {
            Admit::Now(slot) => slot,
            Admit::Wait(ticket) => match ticket.wait().await {
                Ok(slot) => slot,
                Err(Missed::TimedOut) => return Err(Refused::TimedOut),
                // The shutdown timer ran out before a worker took it.
                Err(Missed::Closed) if shared.stopping() => return Err(Refused::ShuttingDown),
                Err(Missed::Closed) => return Err(Refused::Abandoned),
            },
            Admit::Full(verbosity, retry) => {
                return Err(Refused::Unavailable(Reason::QueueFull, verbosity, retry));
            }
            Admit::Disabled(verbosity, retry) => {
                return Err(Refused::Unavailable(Reason::Disabled, verbosity, retry));
            }
            Admit::Closed => return Err(Refused::Abandoned),
        };
        let taken = match slot.target() {
            Target::Upstream(up) => Taken::Upstream(up.clone()),
            Target::Worker(worker) => match Stream::open(worker) {
                Some(stream) => Taken::Worker(stream),
                None if tries < 8 => {
                    tries += 1;
                    continue;
                }
                None => {
                    queue.count_abandoned();
                    return Err(Refused::Abandoned);
                }
            },
        };
        return Ok((slot, taken));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_says_what_http_sys_says() {
        let full = |v| Refused::Unavailable(Reason::QueueFull, v, 7);
        assert_eq!(full(Verbosity::Basic).logged(), (None, Reason::QueueFull));
        assert!(full(Verbosity::Basic).page().is_none());
        let (r, detail, retry) = full(Verbosity::Full).page().expect("a page");
        assert_eq!((r.status, detail, retry), (503, Detail::Cause, Some(7)));
        assert_eq!(
            full(Verbosity::Limited).page().map(|p| p.1),
            Some(Detail::Standard)
        );
        assert!(Refused::TimedOut.page().is_none());
        assert!(Refused::Abandoned.page().is_none());
        assert_eq!(
            Refused::ShuttingDown.logged(),
            (Some(503), Reason::AppShutdown)
        );
    }
}
