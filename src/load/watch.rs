//! The daemon's view of the run: once a second, `GET /v1/state` on the control socket, and
//! from it the target queue's depth, counters and each process's served count. The queue is
//! the one named, else the one the URL routes to by the daemon's own prefixes (the router
//! crate decides, as the daemon does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use portshare_client::Control;
use portshare_proto::control::ServiceState;
use portshare_router::{Endpoint, RequestHead, RouteTable, Scheme, UrlOptions, Version};

use super::record::Sample;

/// How long a sample may take before it is given up.
const WAIT: Duration = Duration::from_millis(800);

/// The control socket and what it found.
#[derive(Debug)]
pub(crate) struct Watch {
    path: PathBuf,
    /// The queue, once named or found.
    pub(crate) queue: Option<String>,
    /// Why there is no sample, when there is none.
    pub(crate) problem: Option<String>,
    local: SocketAddr,
    host: String,
    target: String,
}

impl Watch {
    pub(crate) fn new(
        path: PathBuf,
        queue: Option<String>,
        local: SocketAddr,
        host: String,
        target: String,
    ) -> Watch {
        Watch {
            path,
            queue,
            problem: None,
            local,
            host,
            target,
        }
    }

    /// The control socket's path.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// One sample, or `None` (the reason kept in `problem`).
    pub(crate) async fn sample(&mut self) -> Option<Sample> {
        let state = match tokio::time::timeout(WAIT, state(&self.path)).await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                self.problem = Some(e);
                return None;
            }
            Err(_) => {
                self.problem = Some("the daemon did not answer within 800 ms".to_owned());
                return None;
            }
        };
        let name = match &self.queue {
            Some(q) => q.clone(),
            None => match route(&state, self.local, &self.host, &self.target) {
                Some(q) => {
                    self.queue = Some(q.clone());
                    q
                }
                None => {
                    self.problem = Some(format!(
                        "no queue of the daemon takes http://{}{} (--queue names one)",
                        self.host, self.target
                    ));
                    return None;
                }
            },
        };
        let Some(q) = state.queues.iter().find(|q| q.name == name) else {
            self.problem = Some(format!("the daemon has no queue {name}"));
            return None;
        };
        self.problem = None;
        Some(Sample {
            depth: q.depth,
            length: q.length,
            counters: q.counters.clone(),
            served: q.processes.iter().map(|p| (p.pid, p.served)).collect(),
        })
    }
}

async fn state(path: &std::path::Path) -> Result<ServiceState, String> {
    // The SDK's error names the socket and what to do.
    let mut control = Control::connect(path).await.map_err(|e| e.to_string())?;
    control
        .state()
        .await
        .map_err(|e| format!("GET /v1/state: {e}"))
}

/// The queue a GET of `target` with Host `host`, arriving at `local` over http, goes to
/// under the daemon's registrations and reservations.
pub(crate) fn route(
    state: &ServiceState,
    local: SocketAddr,
    host: &str,
    target: &str,
) -> Option<String> {
    let mut table = RouteTable::new();
    for url in &state.reservations {
        if let Ok(prefix) = url.parse() {
            let _ = table.reserve(prefix);
        }
    }
    for p in &state.prefixes {
        if let Ok(prefix) = p.url.parse() {
            let _ = table.add(prefix, p.queue.clone());
        }
    }
    let endpoint = Endpoint::new(Scheme::Http, local);
    let head = RequestHead::new(
        b"GET",
        target.as_bytes(),
        Version::Http11,
        Some(host.as_bytes()),
    );
    let dispatch = table.dispatch(&endpoint, &head, &UrlOptions::default());
    dispatch
        .delivery()
        .map(|d| d.registration().value().clone())
}

#[cfg(test)]
mod tests {
    use portshare_proto::control::PrefixState;

    use super::*;

    fn prefix(url: &str, queue: &str) -> PrefixState {
        PrefixState {
            url: url.to_owned(),
            queue: queue.to_owned(),
            context: 0,
            listening: vec![],
            warning: None,
        }
    }

    #[test]
    fn the_url_finds_its_queue_by_the_daemons_rules() {
        let state = ServiceState {
            prefixes: vec![
                prefix("http://+:8080/", "root"),
                prefix("http://+:8080/slow/", "slow"),
                prefix("http://other:8080/slow/", "named"),
            ],
            ..ServiceState::default()
        };
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("address");
        let r = |host, target| route(&state, local, host, target);
        assert_eq!(r("127.0.0.1:8080", "/slow/x").as_deref(), Some("slow"));
        assert_eq!(r("127.0.0.1:8080", "/SLOW").as_deref(), Some("slow"));
        assert_eq!(r("127.0.0.1:8080", "/slowly").as_deref(), Some("root"));
        // The strong wildcard wins over the explicit host, as in HTTP.sys.
        assert_eq!(r("other:8080", "/slow/").as_deref(), Some("slow"));
        let other: SocketAddr = "127.0.0.1:9090".parse().expect("address");
        assert_eq!(route(&state, other, "h", "/slow/"), None);
    }
}
