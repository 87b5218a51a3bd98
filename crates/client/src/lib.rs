//! The Portshare application SDK: claim URL prefixes on the Portshare daemon and serve their
//! requests with any tower service, an axum `Router` included.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use portshare_client::{Body, Queue, service_fn};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hello = service_fn(|req: Request<Body>| async move {
//!     let text = format!("hello from {}\n", req.uri().path());
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
//! });
//! let running = Queue::builder("hello")
//!     .url("http://+:8080/hello/")
//!     .workers(2)
//!     .serve(hello)
//!     .await?;
//! for warning in running.warnings() {
//!     eprintln!("warning: {warning}");
//! }
//! tokio::signal::ctrl_c().await?;
//! running.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! [`QueueBuilder::serve`] opens a control connection to the daemon's Unix socket, creates
//! or opens the named request queue and registers each URL prefix on it: these live as long
//! as that connection, so a process that dies leaves no stale routes. Then it attaches
//! workers, each a connection of its own that the daemon upgrades to the
//! [worker wire](portshare_proto::wire). A worker declares how many requests it holds at
//! once (its slots); the daemon sends it no more, and queues the rest.
//!
//! Each request runs as a task calling a clone of the service. The service sees the path
//! as routing cooked it (decoded, dot-segments resolved, re-encoded; always under the
//! prefix that won) with the query as the client sent it, and headers under the reserved
//! `portshare-` prefix that clients cannot forge, named in [`portshare_proto::header`]:
//! the raw URL, the client and local addresses, the prefix that won and its UrlContext.
//! The response goes back as the service produces it, with no framing headers added: the
//! daemon chooses `Content-Length` or chunked for the client. Responses of many requests
//! leave in one write.
//!
//! A daemon that is not running yet when [`QueueBuilder::serve`] starts is waited for, with
//! a log line saying so, for as long as [`QueueBuilder::wait_for_daemon`] allows (by
//! default, without limit). When the daemon restarts, the SDK reconnects (pausing 100 ms,
//! doubling up to 2 s) and sets everything up again; a worker connection lost on its own is
//! reattached the same way. [`Running::shutdown`] drains: the daemon stops sending, the requests in hand are
//! answered, then the connections close.
//!
//! A service error, a response body error or a panic resets the request's stream: the
//! daemon aborts the client's connection, and the worker goes on with its other requests.
//!
//! # WebSockets and other upgrades
//!
//! A request without a body that offers to upgrade its connection (`Connection: upgrade`,
//! `Upgrade: websocket`) is served through hyper's own HTTP/1 server over an in-memory
//! pipe (one with a body is served as any other, and cannot be upgraded), so it carries
//! hyper's `OnUpgrade` and axum's `WebSocketUpgrade` (or `hyper::upgrade::on`) works as it
//! does behind hyper. When the service answers `101`, the daemon makes the
//! client's connection opaque and the SDK relays its bytes both ways until both sides
//! close. This needs version 2 of the worker wire, which the SDK offers and every daemon
//! with opaque connections speaks; the socket keeps its slot while it is open (see
//! [`QueueBuilder::slots`]), and an open socket holds a drain back like a request in hand,
//! until it closes or the [shutdown timeout](QueueBuilder::shutdown_timeout) aborts it.
//! The protocol is in the repository's `docs/worker-protocol.md`.
//!
//! # The control API
//!
//! [`Control`] is a connection to the daemon's control socket, for anything else the
//! [control API](portshare_proto::control) does: reading the state, reservations, the
//! listen list, queue properties. It is the client `portshare` itself uses. A refusal comes
//! back as [`Error::Api`], whose [`ApiError`] says what it is with predicates
//! ([`ApiError::is_access_denied`] and the like) over the named [`Win32Error`] codes.

mod body;
mod control;
mod error;
mod queue;
mod running;
mod service;
mod worker;

pub use body::Body;
pub use control::Control;
pub use error::{BodyError, Error};
pub use portshare_proto::Win32Error;
pub use portshare_proto::control::{ApiError, Verbosity};
pub use queue::{Queue, QueueBuilder};
pub use running::Running;
pub use service::{ServiceFn, service_fn};

/// `%XX` for a byte, upper-case hex.
fn percent(b: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

#[cfg(test)]
mod tests;
