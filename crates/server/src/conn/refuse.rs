//! Refusals: what a connection answers when a request is not served, and the error-log
//! line each one writes (spec §6.3, §7).
//!
//! This module owns the choice between an error page and a reset for each way a request
//! can be refused, and [`Conn::log`], through which every error-log line of a connection
//! goes (timers that fire are logged by their callers through it too). It must not write
//! anything but the daemon's own pages to the client, nor decide when a request fails:
//! its callers do.

use portshare_router::{Reason, Rejection, Version};

use super::admit::Refused;
use super::{Conn, Next};
use crate::errlog::Entry;
use crate::head::Head;
use crate::pages::{self, Detail};
use crate::queue::Queue;

impl Conn {
    /// Writes an error-log line for the request in hand: from `head` when the caller has
    /// it, else from what the connection kept of it.
    pub(super) fn log(
        &self,
        head: Option<&Head<'_>>,
        status: Option<u16>,
        reason: Reason,
        queue: Option<&str>,
    ) {
        if let Some(a) = &self.access {
            a.ended(status, reason);
        }
        let current = self.current.as_ref();
        Entry {
            client: self.peer,
            local: self.local,
            version: head
                .map(|h| h.version())
                .or(current.map(|c| c.version))
                .map(Version::as_str),
            method: head.map(|h| h.method()).or(current.map(|c| &c.method[..])),
            uri: head.map(|h| h.target()).or(current.map(|c| &c.target[..])),
            status,
            reason,
            queue,
        }
        .emit(&self.settings.errlog);
    }

    /// The queue or its worker let the request go: the connection is reset, and logged.
    pub(super) fn abandoned(&self, head: Option<&Head<'_>>, queue: &Queue) -> Next {
        self.log(
            head,
            None,
            Reason::ConnectionAbandonedByReqQueue,
            Some(queue.name()),
        );
        Next::Abort
    }

    /// Writes the daemon's page for `rejection`, with the `Server` header its
    /// `DisableServerHeader` allows.
    fn page(&mut self, rejection: Rejection, detail: Detail, retry: Option<u64>) {
        let server = self.settings.server_header.own();
        pages::error_page(self.wr.tail(), rejection, detail, retry, server);
    }

    /// A request refused before it reached a queue, for its head or by routing: the page
    /// for `rejection` (with `Retry-After: retry`, if any), logged, and the connection
    /// closed. `head` is `None` for a head that did not parse.
    pub(super) fn rejected(
        &mut self,
        head: Option<&Head<'_>>,
        rejection: Rejection,
        retry: Option<u64>,
    ) -> Next {
        self.log(head, Some(rejection.status), rejection.reason, None);
        self.page(rejection, Detail::Standard, retry);
        Next::Close
    }

    /// A request body the client framed wrongly (a bad chunk size, say): 400 `BadRequest`
    /// while no response has begun, else the connection is reset.
    pub(super) fn bad_body(&mut self, responding: bool, queue: &Queue) -> Next {
        if responding {
            self.wr.clear();
            self.log(None, None, Reason::BadRequest, Some(queue.name()));
            return Next::Abort;
        }
        self.bad_request(queue)
    }

    /// A request of `queue` that cannot be served as it is: 400 `BadRequest`.
    pub(super) fn bad_request(&mut self, queue: &Queue) -> Next {
        let rejection = Rejection {
            status: 400,
            reason: Reason::BadRequest,
        };
        self.log(None, Some(400), Reason::BadRequest, Some(queue.name()));
        self.page(rejection, Detail::Standard, None);
        Next::Close
    }

    /// An upstream that cannot be reached (503 `N/A`), or that another account than the
    /// queue owner serves (502 `Upstream_Owner`), by [`crate::owner::rejection`].
    pub(super) fn unreachable(&mut self, queue: &Queue, e: &std::io::Error) -> Next {
        let rejection = crate::owner::rejection(e);
        self.log(
            None,
            Some(rejection.status),
            rejection.reason,
            Some(queue.name()),
        );
        self.page(rejection, Detail::Standard, Some(1));
        Next::Close
    }

    /// A request routed to `queue` that got no slot: the page its refusal calls for and
    /// the connection closed, or no answer (the connection closed, or reset), logged.
    pub(super) fn refused(&mut self, head: &Head<'_>, queue: &Queue, refused: Refused) -> Next {
        let (status, reason) = refused.logged();
        self.log(Some(head), status, reason, Some(queue.name()));
        match refused.page() {
            Some((rejection, detail, retry)) => {
                self.page(rejection, detail, retry);
                Next::Close
            }
            None if refused == Refused::TimedOut => Next::Close,
            None => Next::Abort,
        }
    }
}
