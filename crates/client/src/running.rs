//! A served queue and the task that keeps it served: restarting workers, reconnecting
//! after a daemon restart, draining on shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use portshare_proto::control::{AddUrl, QueueSpec, UrlAdded};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{self, JoinError, JoinHandle, JoinSet};

use crate::control::{self, Control};
use crate::error::{BoxError, Error};
use crate::service::{AppBody, AppService};
use crate::worker;

/// The first pause before reconnecting or reattaching; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// A queue being served. Dropping it stops serving at once, without draining; call
/// [`shutdown`](Running::shutdown) to finish the requests in hand first.
#[derive(Debug)]
pub struct Running {
    urls: Vec<String>,
    warnings: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    pub(crate) async fn start<S, B>(setup: Arc<Setup>, service: S) -> Result<Running, Error>
    where
        S: AppService<B>,
        B: AppBody,
    {
        let (control, added) = setup.register_waiting().await?;
        let workers = setup.attach_all().await?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(supervise(setup, service, control, workers, stopped));
        Ok(Running {
            urls: added.iter().map(|a| a.url.clone()).collect(),
            warnings: added.into_iter().flat_map(|a| a.warnings).collect(),
            stop: Some(stop),
            task,
        })
    }

    /// The registered prefixes in the daemon's canonical form, in registration order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// What the daemon said about the registrations, such as a prefix no listener serves.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Stops serving gracefully: each worker tells the daemon to send no more requests,
    /// the requests in hand are answered (for up to the
    /// [shutdown timeout](crate::QueueBuilder::shutdown_timeout), then aborted), and the
    /// control connection closes, which removes the registrations.
    ///
    /// # Errors
    ///
    /// [`Error::Service`] when the service had already failed.
    ///
    /// # Cancel safety
    ///
    /// Cancelling it stops serving at once, as dropping the `Running` does.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Serves until the service fails for good; as long as it does not, this never returns.
    /// Losing the daemon is not a failure: the queue is set up again when it comes back.
    ///
    /// # Errors
    ///
    /// [`Error::Service`] when the service's `poll_ready` failed; the requests in hand are
    /// finished first, as by [`shutdown`](Running::shutdown).
    ///
    /// # Cancel safety
    ///
    /// Cancelling it stops serving at once, as dropping the `Running` does.
    pub async fn wait(mut self) -> Result<(), Error> {
        self.join().await
    }

    async fn join(&mut self) -> Result<(), Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(Error::Io(std::io::Error::other(format!(
                "the task serving the queue failed: {e}"
            )))),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What to serve and how, fixed for the life of a [`Running`].
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) path: PathBuf,
    pub(crate) spec: QueueSpec,
    pub(crate) name: String,
    pub(crate) urls: Vec<AddUrl>,
    pub(crate) workers: usize,
    pub(crate) slots: u32,
    pub(crate) shutdown_timeout: Duration,
    /// How long the first registration waits for a daemon not running yet; `None`: no
    /// limit.
    pub(crate) wait_for_daemon: Option<Duration>,
}

/// A worker connection: the socket, the wire bytes that came with the `101`, and the
/// version of the wire agreed.
type Attached = (UnixStream, Bytes, u32);

impl Setup {
    /// Opens a control connection, creates or opens the queue and registers the URLs.
    async fn register(&self) -> Result<(Control, Vec<UrlAdded>), Error> {
        let mut control = Control::connect(&self.path).await?;
        control.create_queue(&self.spec).await?;
        // One request for all of them: the daemon changes its route table once.
        let added = control.add_urls(&self.name, &self.urls).await?;
        Ok((control, added))
    }

    /// [`register`](Setup::register), waiting for a daemon that is not running yet, at
    /// most `wait_for_daemon`.
    async fn register_waiting(&self) -> Result<(Control, Vec<UrlAdded>), Error> {
        let deadline = self.wait_for_daemon.map(|d| Instant::now() + d);
        let mut delay = FIRST_RETRY;
        let mut waited = false;
        loop {
            let e = match self.register().await {
                Ok(r) => {
                    if waited {
                        tracing::info!(queue = %self.name, "the daemon is there");
                    }
                    return Ok(r);
                }
                Err(e) if absent(&e) => e,
                Err(e) => return Err(e),
            };
            let pause = match deadline {
                None => delay,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => delay.min(left),
                    _ => return Err(e),
                },
            };
            if !waited {
                waited = true;
                tracing::info!(
                    queue = %self.name,
                    control = %self.path.display(),
                    limit = ?self.wait_for_daemon,
                    "waiting for the portshare daemon (start it with `portshare serve`)"
                );
            }
            tokio::time::sleep(pause).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    async fn attach_all(&self) -> Result<Vec<Attached>, Error> {
        let mut attached = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            attached.push(control::attach(&self.path, &self.name, self.slots).await?);
        }
        Ok(attached)
    }
}

async fn supervise<S, B>(
    setup: Arc<Setup>,
    service: S,
    mut control: Control,
    attached: Vec<Attached>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), Error>
where
    S: AppService<B>,
    B: AppBody,
{
    let (fatal_tx, mut fatal) = mpsc::unbounded_channel();
    let (drain, drain_rx) = watch::channel(false);
    let mut pool = Pool {
        setup: setup.clone(),
        service,
        tasks: JoinSet::new(),
        index: HashMap::new(),
        failures: vec![0; setup.workers],
        drain: drain_rx,
        fatal: fatal_tx,
    };
    pool.start_all(attached);
    let result = loop {
        tokio::select! {
            // Sent by `shutdown`; dropped along with `Running`, which aborts this task anyway.
            _ = &mut stop => break Ok(()),
            Some(e) = fatal.recv() => break Err(Error::Service(e)),
            () = control.closed() => {
                tracing::warn!(queue = %setup.name, "lost the daemon's control connection; reconnecting");
                pool.abort_all().await;
                let Some((new_control, attached)) = reconnect(&setup, &mut stop).await else {
                    return Ok(());
                };
                control = new_control;
                pool.start_all(attached);
            }
            Some(ended) = pool.tasks.join_next_with_id() => pool.ended(ended),
        }
    };
    drain.send_replace(true);
    let finish = async {
        while let Some(ended) = pool.tasks.join_next_with_id().await {
            pool.ended(ended);
        }
    };
    if tokio::time::timeout(setup.shutdown_timeout, finish)
        .await
        .is_err()
    {
        tracing::warn!(queue = %setup.name, "shutdown timeout: aborting the requests in flight");
    }
    pool.abort_all().await;
    // Closing the control connection removes the registrations.
    drop(control);
    result
}

/// True when `e` says no daemon listens on the socket (yet): no socket file, or nobody
/// accepting on it.
fn absent(e: &Error) -> bool {
    matches!(e, Error::Connect { source, .. } if matches!(
        source.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    ))
}

/// Connects again after the daemon went away, with growing pauses, until it works or
/// `stop` fires (`None`).
async fn reconnect(
    setup: &Setup,
    stop: &mut oneshot::Receiver<()>,
) -> Option<(Control, Vec<Attached>)> {
    let mut delay = FIRST_RETRY;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = &mut *stop => return None,
        }
        let attempt = async {
            let (control, added) = setup.register().await?;
            let attached = setup.attach_all().await?;
            Ok::<_, Error>((control, added, attached))
        };
        tokio::select! {
            r = attempt => match r {
                Ok((control, added, attached)) => {
                    tracing::info!(queue = %setup.name, "reconnected to the daemon");
                    for warning in added.iter().flat_map(|a| &a.warnings) {
                        tracing::warn!(queue = %setup.name, "{warning}");
                    }
                    return Some((control, attached));
                }
                Err(e) => {
                    delay = (delay * 2).min(MAX_RETRY);
                    tracing::warn!(
                        queue = %setup.name, error = %e, retry_in = ?delay, "reconnecting failed"
                    );
                }
            },
            _ = &mut *stop => return None,
        }
    }
}

/// The worker connections, each restarted when it ends unless the queue is draining.
struct Pool<S> {
    setup: Arc<Setup>,
    service: S,
    tasks: JoinSet<End>,
    /// Which worker each task is.
    index: HashMap<task::Id, usize>,
    /// Failed attempts in a row, per worker.
    failures: Vec<u32>,
    drain: watch::Receiver<bool>,
    fatal: mpsc::UnboundedSender<BoxError>,
}

/// How a worker task ended.
enum End {
    /// It drained and closed.
    Drained,
    /// The queue started draining before it attached.
    Stopped,
    /// Attaching failed.
    AttachFailed(Error),
    /// The connection was lost after this long.
    Lost(Error, Duration),
}

enum Start {
    Attached(Attached),
    After(Duration),
}

impl<S> Pool<S> {
    fn start_all<B: AppBody>(&mut self, attached: Vec<Attached>)
    where
        S: AppService<B>,
    {
        for (index, io) in attached.into_iter().enumerate() {
            self.failures[index] = 0;
            self.start(index, Start::Attached(io));
        }
    }

    fn start<B: AppBody>(&mut self, index: usize, start: Start)
    where
        S: AppService<B>,
    {
        let setup = self.setup.clone();
        let service = self.service.clone();
        let mut drain = self.drain.clone();
        let fatal = self.fatal.clone();
        let task = self.tasks.spawn(async move {
            let (io, pre, version) = match start {
                Start::Attached(io) => io,
                Start::After(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = drain.wait_for(|d| *d) => return End::Stopped,
                    }
                    match control::attach(&setup.path, &setup.name, setup.slots).await {
                        Ok(io) => io,
                        Err(e) => return End::AttachFailed(e),
                    }
                }
            };
            let since = Instant::now();
            match worker::run(io, pre, version, service, drain, fatal).await {
                Ok(()) => End::Drained,
                Err(e) => End::Lost(e, since.elapsed()),
            }
        });
        self.index.insert(task.id(), index);
    }

    /// Restarts a worker that ended, after a pause that grows while it keeps failing.
    fn ended<B: AppBody>(&mut self, ended: Result<(task::Id, End), JoinError>)
    where
        S: AppService<B>,
    {
        let (id, end) = match ended {
            Ok((id, end)) => (id, Ok(end)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(index) = self.index.remove(&id) else {
            return;
        };
        let failures = &mut self.failures[index];
        match end {
            Ok(End::Drained | End::Stopped) => return,
            Ok(End::Lost(e, ran)) => {
                if ran > MAX_RETRY {
                    *failures = 0;
                }
                tracing::warn!(queue = %self.setup.name, worker = index, error = %e, "worker connection lost");
            }
            Ok(End::AttachFailed(e)) => {
                tracing::warn!(queue = %self.setup.name, worker = index, error = %e, "attaching a worker failed");
            }
            Err(e) => {
                tracing::error!(queue = %self.setup.name, worker = index, error = %e, "worker task failed");
            }
        }
        let delay = FIRST_RETRY
            .saturating_mul(1 << (*failures).min(5))
            .min(MAX_RETRY);
        *failures += 1;
        self.start(index, Start::After(delay));
    }

    async fn abort_all(&mut self) {
        self.tasks.shutdown().await;
        self.index.clear();
    }
}
