//! Describing the queue to serve: [`Queue::builder`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use portshare_proto::control::{AddUrl, OpenMode, QueueProps, QueueSpec, Verbosity};
use tower_service::Service;

use crate::Body;
use crate::error::{BoxError, Error};
use crate::running::{Running, Setup};

/// A request queue on the daemon, served by this process. Describe it with
/// [`Queue::builder`], then [`serve`](QueueBuilder::serve) it.
#[derive(Debug)]
pub enum Queue {}

impl Queue {
    /// Starts describing the queue named `name`. The queue is opened if it exists (another
    /// process of the same user may serve it too, or it lingered after a restart), else
    /// created.
    pub fn builder(name: impl Into<String>) -> QueueBuilder {
        QueueBuilder {
            name: name.into(),
            urls: Vec::new(),
            workers: 1,
            slots: 64,
            props: QueueProps::default(),
            control: None,
            shutdown_timeout: Duration::from_secs(30),
            wait_for_daemon: None,
        }
    }
}

/// How to serve a queue: its URL prefixes, workers and properties.
#[derive(Debug, Clone)]
#[must_use]
pub struct QueueBuilder {
    name: String,
    urls: Vec<AddUrl>,
    workers: usize,
    slots: u32,
    props: QueueProps,
    control: Option<PathBuf>,
    shutdown_timeout: Duration,
    wait_for_daemon: Option<Duration>,
}

impl QueueBuilder {
    /// Registers a URL prefix such as `http://+:8080/app/`, with UrlContext 0.
    pub fn url(self, url: impl Into<String>) -> Self {
        self.url_with_context(url, 0)
    }

    /// Registers a URL prefix with a UrlContext: each request this prefix wins carries the
    /// value in its `portshare-url-context` header.
    pub fn url_with_context(mut self, url: impl Into<String>, context: u64) -> Self {
        self.urls.push(AddUrl {
            url: url.into(),
            context,
        });
        self
    }

    /// How many worker connections to attach (at least 1). Default: 1.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// How many requests each worker holds at once (at least 1); the daemon never sends
    /// a worker more. Default: 64. An upgraded connection (a WebSocket the service
    /// accepted) holds its slot for as long as it is open: an application serving many
    /// sockets needs as many slots.
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots.max(1);
        self
    }

    /// The most requests that may wait in the queue for a free slot. Default: the
    /// daemon's, 1000.
    pub fn length(mut self, length: u32) -> Self {
        self.props.length = Some(length);
        self
    }

    /// How a full or disabled queue answers. Default: the daemon's, [`Verbosity::Basic`].
    pub fn verbosity(mut self, verbosity: Verbosity) -> Self {
        self.props.verbosity = Some(verbosity);
        self
    }

    /// How long the queue, its URLs and its waiting requests outlive this process, for
    /// the next one that opens it by name. Default: the daemon's, zero.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.props.linger_ms = Some(millis(linger));
        self
    }

    /// The longest a request waits in the queue for a worker before its connection is
    /// closed. Default: the daemon's, 120 s.
    pub fn queue_timer(mut self, timer: Duration) -> Self {
        self.props.queue_timer_ms = Some(millis(timer));
        self
    }

    /// Whether the queue takes requests; a disabled queue answers 503. Default: the
    /// daemon's, enabled.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.props.enabled = Some(enabled);
        self
    }

    /// The daemon's control socket. Default: `PORTSHARE_CONTROL`, else the per-user socket
    /// if it exists, else the system one (see
    /// [`control_socket_for_client`](portshare_proto::control_socket_for_client)).
    pub fn control(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = Some(path.into());
        self
    }

    /// How long [`serve`](QueueBuilder::serve) waits for a daemon that is not running yet
    /// (no control socket, or nothing accepting on it), logging once that it waits and
    /// trying again with growing pauses (100 ms, doubling up to 2 s), as it does after a
    /// daemon restart. [`Duration::ZERO`] fails at once with [`Error::Connect`]. Default:
    /// no limit.
    pub fn wait_for_daemon(mut self, limit: Duration) -> Self {
        self.wait_for_daemon = Some(limit);
        self
    }

    /// How long [`Running::shutdown`] waits for requests in flight before it aborts them.
    /// Default: 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Creates or opens the queue, registers the URLs, attaches the workers and serves
    /// each request with a clone of `service`. Returns once all that is done; a daemon
    /// not started yet is waited for (see [`wait_for_daemon`](QueueBuilder::wait_for_daemon)).
    ///
    /// Any tower service from `http::Request<Body>` to `http::Response` fits, an axum
    /// `Router` among them. The serving goes on in background tasks, reconnecting when the
    /// daemon restarts, until [`Running::shutdown`] or until the `Running` is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the daemon is not there once the wait for it is over (or
    /// its socket cannot be reached at all, such as without the rights to), [`Error::Api`]
    /// when it refuses the
    /// queue, a URL or a worker (such as 183 for a prefix another queue holds), and
    /// [`Error::Http`], [`Error::Protocol`] or [`Error::Io`] when a connection fails.
    /// Nothing stays registered after an error.
    ///
    /// # Cancel safety
    ///
    /// Cancelling it closes what it opened, so nothing stays registered.
    pub async fn serve<S, B>(self, service: S) -> Result<Running, Error>
    where
        S: Service<Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = self.control.unwrap_or_else(crate::control::default_socket);
        let setup = Setup {
            path,
            spec: QueueSpec {
                name: Some(self.name.clone()),
                mode: OpenMode::OpenOrCreate,
                props: self.props,
                upstream: None,
                https_redirect: None,
                strip_prefix: false,
                ..QueueSpec::default()
            },
            name: self.name,
            urls: self.urls,
            workers: self.workers,
            slots: self.slots,
            shutdown_timeout: self.shutdown_timeout,
            wait_for_daemon: self.wait_for_daemon,
        };
        Running::start(Arc::new(setup), service).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
