//! What every client connection reads: the route table, the settings in force, the count
//! of open connections and the stop signal. The control plane (`daemon`) writes these; the
//! data plane (`conn`, `queue`, `worker`, `upstream`) only reads them, and imports nothing
//! of the control plane.
//!
//! Each is swapped or counted without a lock: connections load the route table and the
//! settings from [`ArcSwap`] snapshots that a change replaces whole, so a lookup never waits
//! for a registration, a reload or another connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use portshare_router::{RouteTable, UrlOptions};
use tokio::sync::Notify;

use crate::accept::Spare;
use crate::accesslog;
use crate::budget::Budget;
use crate::config::{Config, Timers};
use crate::errlog;
use crate::flow::Buffers;
use crate::head::HeadLimits;
use crate::pages::ServerHeader;
use crate::queue::Queue;
use crate::upstream;

/// What every client connection reads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<RouteTable<Arc<Destination>>>,
    /// Limits, timers and the error log; a reload swaps in new ones, which apply from each
    /// connection's next request.
    pub(crate) settings: ArcSwap<Settings>,
    pub(crate) request_ids: AtomicU64,
    /// Open client connections, against `limits.max_connections`.
    pub(crate) connections: Connections,
    /// Set when the daemon begins to stop: connections finish the request in hand and close.
    pub(crate) stopping: AtomicBool,
    /// Woken when `stopping` is set.
    pub(crate) stop: Notify,
    /// The descriptor budget.
    pub(crate) budget: Budget,
    /// Upstream connections open, against the budget's upstream share.
    pub(crate) upstreams: Arc<upstream::Share>,
    /// The accept loops' spare descriptor.
    pub(crate) spare: Spare,
    /// What the daemon holds of workers' responses, over all worker connections.
    pub(crate) buffers: Arc<Buffers>,
    /// The certificate bindings; a reload swaps in new ones for new handshakes, and
    /// established sessions keep theirs.
    pub(crate) tls: ArcSwap<crate::tls::Bindings>,
    /// The ACME HTTP-01 challenges pending, answered before routing.
    pub(crate) challenges: ArcSwap<crate::challenge::Challenges>,
    /// The counters and their registries.
    pub(crate) metrics: crate::metrics::Service,
}

impl Shared {
    /// No routes yet, `settings` in force.
    pub(crate) fn new(settings: Settings, budget: Budget) -> Arc<Shared> {
        Arc::new(Shared {
            table: ArcSwap::from_pointee(RouteTable::new()),
            settings: ArcSwap::from_pointee(settings),
            request_ids: AtomicU64::new(1),
            connections: Connections::default(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            budget,
            upstreams: upstream::Share::new(budget.upstream),
            spare: Spare::new(),
            buffers: Arc::default(),
            tls: ArcSwap::from_pointee(crate::tls::Bindings::empty()),
            challenges: ArcSwap::from_pointee(crate::challenge::Challenges::default()),
            metrics: crate::metrics::Service::default(),
        })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// `MaxConnections` in force: the configured value, at most the budget's client share.
    pub(crate) fn max_connections(&self) -> u64 {
        self.settings
            .load()
            .max_connections
            .min(self.budget.clients)
    }

    /// A place for one more client connection, once fewer than `max_connections` are open.
    pub(crate) async fn place(self: &Arc<Shared>) -> Place {
        self.connections.reserve(|| self.max_connections()).await;
        Place(self.clone())
    }
}

/// One open client connection, counted until dropped.
pub(crate) struct Place(Arc<Shared>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.connections.release();
    }
}

/// The count of open client connections, and the wake-up of accept loops waiting at the
/// service-wide limit (`MaxConnections`: at the limit, no connection is accepted until one
/// closes).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: AtomicU64,
    freed: Notify,
}

impl Connections {
    /// Takes a place for one more connection, waiting while `max` are open.
    pub(crate) async fn reserve(&self, max: impl Fn() -> u64) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let open = self.open.load(Ordering::Acquire);
            if open < max() {
                if self
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            freed.await;
        }
    }

    /// Gives back a place taken by [`Connections::reserve`].
    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// Wakes the accept loops, to look at the limit again after a reload.
    pub(crate) fn recheck(&self) {
        self.freed.notify_waiters();
    }

    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }
}

/// The configuration the data path reads.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) url_opts: UrlOptions,
    pub(crate) head_limits: HeadLimits,
    pub(crate) timers: Timers,
    /// `MaxConnections`.
    pub(crate) max_connections: u64,
    /// `DisableServerHeader`.
    pub(crate) server_header: ServerHeader,
    /// The httperr files, written out when the last connection using them lets go.
    pub(crate) errlog: Arc<errlog::Log>,
    /// The access log files; off until the daemon opens them (`Daemon::load`).
    pub(crate) access: Arc<accesslog::Log>,
    /// The `[[listener]]` addresses whose connections start with a PROXY header.
    pub(crate) proxy_listeners: Vec<std::net::SocketAddr>,
    /// `[[trusted_proxy]]`: peers whose forwarding headers are believed.
    pub(crate) trusted: crate::trust::Trusted,
}

impl Settings {
    pub(crate) fn new(config: &Config, errlog: Arc<errlog::Log>) -> Settings {
        let l = config.limits;
        let mut head_limits = HeadLimits::default();
        head_limits
            .max_request_bytes(l.max_request_bytes)
            .max_field_length(l.max_field_length);
        let mut url_opts = UrlOptions::default();
        url_opts
            .segment_max_length(l.url_segment_max_length)
            .segment_max_count(l.url_segment_max_count)
            .max_url_length(head_limits.field_length());
        Settings {
            url_opts,
            head_limits,
            timers: config.timers,
            max_connections: l.max_connections,
            server_header: ServerHeader::from_registry(l.disable_server_header),
            errlog,
            access: Arc::new(accesslog::Log::off()),
            proxy_listeners: config
                .listeners
                .iter()
                .filter(|l| l.proxy_protocol)
                .map(|l| l.address)
                .collect(),
            trusted: crate::trust::Trusted::new(
                config
                    .trusted_proxies
                    .iter()
                    .flat_map(|t| t.ranges.iter().map(String::as_str)),
            ),
        }
    }
}

/// Where a registration's requests go: the value of each route in the table, so what a
/// connection learns from routing.
#[derive(Debug)]
pub(crate) struct Destination {
    pub(crate) queue: Arc<Queue>,
    /// The prefix, shared with the route table; as registered (`as_str`) for
    /// `portshare-url-prefix`.
    pub(crate) prefix: Arc<portshare_router::UrlPrefix>,
    pub(crate) context: u64,
    /// The counters of the prefix's scheme, host and port.
    pub(crate) site: Arc<crate::metrics::SiteCounters>,
}

/// What connections share, for tests of the data path: no routes, default settings, no
/// error-log files.
#[cfg(test)]
pub(crate) fn test_shared() -> Arc<Shared> {
    let errlog = Arc::new(errlog::Log::open(&crate::config::ErrLogConfig {
        enabled: false,
        ..Default::default()
    }));
    let budget = Budget::of(1024).expect("1024 descriptors are enough");
    Shared::new(Settings::new(&Config::default(), errlog), budget)
}
