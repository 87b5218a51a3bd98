//! The scrape listener's configuration (`[metrics]`).

use std::net::SocketAddr;

use serde::Deserialize;

/// `[metrics]`: where Prometheus and OpenMetrics scrapes are answered, if anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The address of the scrape listener (`GET /metrics`), such as `127.0.0.1:9180`; none
    /// by default. It shows every queue: keep it on loopback. Applies at start only.
    pub listen: Option<SocketAddr>,
}
