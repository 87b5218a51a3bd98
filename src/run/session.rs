//! `portshare run`'s control session: the held queue and its URLs, which the daemon keeps
//! exactly as long as this connection is open.

use std::path::PathBuf;
use std::time::Duration;

use portshare_client::{Control, Error};
use portshare_proto::control::{AddUrl, QueueSpec};

/// The first pause before trying the daemon again; it doubles up to [`MAX_RETRY`], as the
/// SDK's reconnection does.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// What to ask of the daemon, each time a session opens.
#[derive(Debug)]
pub(super) struct Setup {
    pub(super) path: PathBuf,
    pub(super) spec: QueueSpec,
    pub(super) urls: Vec<String>,
    /// Fail at once when no daemon listens, instead of waiting for one.
    pub(super) no_wait: bool,
}

/// An open session: the queue exists and holds its URLs.
#[derive(Debug)]
pub(super) struct Session {
    control: Control,
    /// The queue's name (made up by the daemon for an unnamed queue).
    pub(super) queue: String,
}

/// Why a session could not be opened.
#[derive(Debug)]
pub(super) enum Failure {
    /// No daemon, and `--no-wait`.
    NoDaemon(Error),
    /// The queue was refused.
    Queue(Error),
    /// A URL was refused.
    Url(String, Error),
}

impl Failure {
    /// The message and what to do about it, for run's stderr.
    pub(super) fn report(&self) -> String {
        let (what, e) = match self {
            Failure::NoDaemon(e) if absent(e) => {
                return format!(
                    "{e}\nhint: start it with `portshare serve`, or leave out --no-wait to wait \
                     for it"
                );
            }
            Failure::NoDaemon(e) => return e.to_string(),
            Failure::Queue(e) => ("cannot create the queue".to_owned(), e),
            Failure::Url(url, e) => (format!("cannot register {url}"), e),
        };
        let hint = match (self, e.api()) {
            (_, Some(a)) if a.is_sharing_violation() => {
                "another program holds the port (named above): stop it, or choose another port"
            }
            (Failure::Url(..), Some(a)) if a.is_already_exists() => {
                "another queue holds this URL (see `portshare show servicestate`): stop that \
                 application or choose another URL"
            }
            (Failure::Url(..), Some(a)) if a.is_access_denied() => {
                "ask an administrator for a reservation: portshare urlacl add URL --user NAME"
            }
            (Failure::Queue(_), Some(a)) if a.is_already_exists() => {
                "a queue of that name exists: choose another --name, or leave it out"
            }
            (Failure::Queue(_), Some(a)) if a.is_access_denied() => {
                "this daemon does not let this user forward to an application it starts: \
                 is it older than this command? run as root, or ask an administrator"
            }
            _ => "",
        };
        if hint.is_empty() {
            format!("{what}: {e}")
        } else {
            format!("{what}: {e}\nhint: {hint}")
        }
    }
}

impl Setup {
    /// Connects, waiting for the daemon unless `no_wait` (saying once that it waits), then
    /// creates the held queue and registers every URL.
    pub(super) async fn open(&self, announced: &mut bool) -> Result<Session, Failure> {
        let mut control = self.connect(announced).await?;
        let info = control
            .create_queue(&self.spec)
            .await
            .map_err(Failure::Queue)?;
        // Every URL in one request: all registered, or none.
        let adds: Vec<AddUrl> = self
            .urls
            .iter()
            .map(|url| AddUrl {
                url: url.clone(),
                context: 0,
            })
            .collect();
        match control.add_urls(&info.name, &adds).await {
            Ok(added) => {
                for (url, added) in self.urls.iter().zip(added) {
                    for w in added.warnings {
                        eprintln!("portshare run: {url}: {w}");
                    }
                }
            }
            Err(e) => {
                // The URL refused: the only one, or the one the batch names; all of them
                // when the batch was refused whole.
                let url = match (self.urls.as_slice(), e.api().and_then(|a| a.index)) {
                    ([one], _) => one.clone(),
                    (urls, Some(i)) => urls.get(i).cloned().unwrap_or_else(|| urls.join(", ")),
                    (urls, None) => urls.join(", "),
                };
                return Err(Failure::Url(url, e));
            }
        }
        Ok(Session {
            control,
            queue: info.name,
        })
    }

    async fn connect(&self, announced: &mut bool) -> Result<Control, Failure> {
        let mut delay = FIRST_RETRY;
        loop {
            match Control::connect(&self.path).await {
                Ok(c) => return Ok(c),
                Err(e @ Error::Connect { .. }) if self.no_wait => {
                    return Err(Failure::NoDaemon(e));
                }
                Err(e) if absent(&e) => {
                    if !*announced {
                        *announced = true;
                        eprintln!(
                            "portshare run: waiting for the portshare daemon at {} (start it \
                             with `portshare serve`, or pass --no-wait)",
                            self.path.display()
                        );
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
                Err(e) => return Err(Failure::NoDaemon(e)),
            }
        }
    }
}

/// True when `e` says no daemon listens on the socket (yet): no socket file, or nobody
/// accepting on it.
fn absent(e: &Error) -> bool {
    matches!(e, Error::Connect { source, .. } if matches!(
        source.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    ))
}

impl Session {
    /// Declares the queue ready (its requests go to the application) or holds it again.
    pub(super) async fn set_ready(&mut self, ready: bool) -> Result<(), Error> {
        self.control.set_ready(&self.queue, ready).await.map(drop)
    }

    /// Resolves when the daemon closes the session (it stopped or restarted). Cancel safe.
    pub(super) async fn closed(&mut self) {
        self.control.closed().await;
    }
}
