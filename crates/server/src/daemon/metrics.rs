//! The counters' sample (`GET /v1/metrics`, the scrape listener), as each caller may see
//! it: the rules of the state view (`view`): every queue's counters for everyone, the
//! processes attached to a queue only for administrators, the queue's owner and the
//! accounts on its access list. Copies the queues out under the lock and reads their
//! counters after it; changes nothing.

use portshare_proto::control::Metrics;

use super::*;

impl Daemon {
    /// `GET /v1/metrics`, as `viewer` may see it.
    pub(crate) fn metrics(&self, viewer: &Session) -> Metrics {
        let queues: Vec<(Arc<Queue>, bool)> = {
            let st = self.lock();
            let admin = self.is_admin(&st, &viewer.peer);
            st.queues
                .values()
                .map(|e| (e.queue.clone(), admin || e.rights_of(viewer).any()))
                .collect()
        };
        crate::metrics::read::sample(&self.shared.metrics, queues.iter().map(|(q, s)| (q, *s)))
    }

    /// `[metrics] listen` of the configuration in force.
    pub(crate) fn metrics_listen(&self) -> Option<SocketAddr> {
        self.lock().config.metrics.listen
    }

    /// Every queue's counters and processes: for the scrape listener, which the operator
    /// opened.
    pub(crate) fn metrics_all(&self) -> Metrics {
        let queues: Vec<Arc<Queue>> = self
            .lock()
            .queues
            .values()
            .map(|e| e.queue.clone())
            .collect();
        crate::metrics::read::sample(&self.shared.metrics, queues.iter().map(|q| (q, true)))
    }
}
