//! The control socket: HTTP/1.1 and JSON over a Unix socket (see
//! [`portshare_proto::control`] for the API), one session per connection.
//!
//! Each connection takes a place in the descriptor budget's control share as it is accepted
//! (see [`crate::quota`]); one that finds none (the share spent, or its user at
//! `control.max_connections_per_uid`) has its first request answered with the reason and is
//! closed. A connection whose session has not opened a queue must send each request, and
//! its body, within `control.request_wait` of connecting or of the last answer, else it is
//! closed; one holding a queue lives as long as it stays open.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portshare_proto::Win32Error;
use portshare_proto::control::path as paths;
use portshare_proto::control::{
    AddReservation, AddUrl, AddUrlBatch, ApiError, GrantAccess, IpListenChange, QueueProps,
    QueueSpec, RemoveReservation, RemoveUrl, RemoveUrlBatch, SetReady, StateFilter, UrlsAdded,
};
use portshare_proto::sslcert::{AddSslCert, DeleteSslCert};
use portshare_proto::wire::{self, SLOTS_HEADER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};

use crate::Error;
use crate::accept::{self, Failure, Throttle};
use crate::daemon::{Daemon, Session};
use crate::identity::{self, Identity};
use crate::quota::{Place, Refusal};
use crate::worker::{Peer, WorkerConn};

/// Largest control request body.
const MAX_BODY: usize = 1 << 20;

/// Most slots one worker may declare.
const MAX_SLOTS: u32 = 65536;

/// Binds the control socket: its folder is created, a stale socket file replaced, and the
/// socket made connectable by every local user (the URL ACLs and queue owners are the gate).
pub(crate) fn bind(path: &Path, mode: u32) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::bind(format!("cannot create {}", dir.display())).with(e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::bind(format!(
                "another daemon is already listening on {}; give this one its own --control",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            Error::bind(format!("cannot remove the stale socket {}", path.display())).with(e)
        })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::bind(format!("cannot listen on {}", path.display())).with(e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Error::bind(format!("cannot open {} to local users", path.display())).with(e)
    })?;
    Ok(listener)
}

/// Accepts control connections until the task is dropped.
///
/// Each connection takes its place in the control share as it is accepted (see
/// [`crate::quota`]), before anything is read from it; one that finds no place is refused.
pub(crate) async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let accept_warn = Throttle::default();
    let refusals = Refusals::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                let failure = Failure::of(&error);
                if failure == Failure::Peer {
                    tracing::debug!(%error, "control socket: the connection failed");
                    continue;
                }
                let mut shed = 0;
                if failure == Failure::Descriptors {
                    while shed < accept::SHED_BURST {
                        let accepted = daemon
                            .shared
                            .spare
                            .shed(async { listener.accept().await.map(drop) });
                        if !matches!(accepted, Some(Ok(()))) {
                            break;
                        }
                        shed += 1;
                    }
                }
                if let Some(held_back) = accept_warn.pass() {
                    tracing::warn!(
                        %error,
                        shed,
                        held_back,
                        "control socket: cannot accept connections; pausing"
                    );
                }
                tokio::time::sleep(accept::PAUSE).await;
                continue;
            }
        };
        let Some((id, pid, who)) = identify(&daemon, &stream) else {
            continue;
        };
        match daemon.admit(id, &who) {
            Ok(place) => {
                tokio::spawn(connection(daemon.clone(), stream, id, pid, who, place));
            }
            Err(refusal) => refusals.refuse(&daemon, stream, &who, refusal),
        }
    }
}

/// The session id, pid and identity of a new control connection.
fn identify(daemon: &Daemon, stream: &UnixStream) -> Option<(u64, u32, Identity)> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "control connection without peer credentials");
            return None;
        }
    };
    let pid = cred.pid().map_or(0, |p| p.max(0) as u32);
    Some((
        daemon.next_id(),
        pid,
        Identity::of_peer(pid, cred.uid(), cred.gid()),
    ))
}

/// Serves one admitted control connection: its session lasts as long as the connection.
/// Until the session opens a queue, each request must come within `control.request_wait`
/// of connecting or of the last answer, and each request body within that time too.
async fn connection(
    daemon: Arc<Daemon>,
    stream: UnixStream,
    id: u64,
    pid: u32,
    who: Identity,
    place: Place,
) {
    let uid = who.uid;
    // The user and group databases and /proc are read on the blocking pool, not a runtime
    // thread.
    let id_of = who.clone();
    let (user, command, known_as) = tokio::task::spawn_blocking(move || {
        let known_as = id_of.caller(false);
        (identity::display_user(uid), command_line(pid), known_as)
    })
    .await
    .unwrap_or_else(|_| {
        // The lookups panicked: the ids alone.
        let known_as = portshare_router::Caller::new(format!("uid:{uid}"));
        (format!("uid:{uid}"), "unknown".to_owned(), known_as)
    });
    let session = Arc::new(Session {
        id,
        known_as,
        peer: Peer {
            pid,
            uid,
            identity: who,
            user,
            command,
        },
    });
    let place = Arc::new(place);
    let activity = Arc::new(Activity::new());
    let service = {
        let daemon = daemon.clone();
        let session = session.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let daemon = daemon.clone();
            let session = session.clone();
            let place = place.clone();
            let busy = activity.begin();
            async move {
                let reply = handle(&daemon, &session, &place, &busy, req).await;
                drop(busy);
                Ok::<_, Infallible>(reply)
            }
        })
    };
    // No hyper timer, so no header or idle timeout of hyper's (which would close a session
    // holding queues after 30 s idle): the wait below is the only one.
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    loop {
        let wait = daemon.request_wait();
        let deadline = match activity.idle_since() {
            Some(since) => since + wait,
            None => tokio::time::Instant::now() + wait,
        };
        tokio::select! {
            ended = &mut conn => {
                if let Err(error) = ended {
                    tracing::debug!(pid, %error, "control connection");
                }
                break;
            }
            () = tokio::time::sleep_until(deadline), if !activity.holds() => {
                if !activity.holds() && activity.idle_since().is_some_and(|t| t.elapsed() >= wait) {
                    tracing::debug!(pid, uid, ?wait, "control connection silent: closed");
                    break;
                }
            }
        }
    }
    daemon.end_session(&session);
}

/// When a control connection last finished a request, and whether its session has opened a
/// queue (after which it lives as long as the connection, however quiet).
#[derive(Debug)]
struct Activity {
    /// Requests being handled.
    busy: AtomicU32,
    /// When the last request was answered, or the connection accepted.
    since: Mutex<tokio::time::Instant>,
    holds: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            busy: AtomicU32::new(0),
            since: Mutex::new(tokio::time::Instant::now()),
            holds: AtomicBool::new(false),
        }
    }

    /// Counts a request until the returned guard drops.
    fn begin(self: &Arc<Activity>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Since when the connection has been idle; `None` while a request is being handled.
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        (self.busy.load(Ordering::Acquire) == 0)
            .then(|| *self.since.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn holds(&self) -> bool {
        self.holds.load(Ordering::Acquire)
    }
}

/// One request being handled on a control connection.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Busy {
    /// The session has opened a queue.
    fn holds_queue(&self) {
        self.0.holds.store(true, Ordering::Release);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most refused connections answered at once; beyond it, a refused connection is closed
/// without an answer. Each holds a descriptor of the daemon's own share for at most
/// `REFUSAL_WAIT`.
const REFUSING: usize = 16;

/// How long a refused connection may take to send the request its refusal answers.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Control connections refused for want of a place.
#[derive(Debug)]
struct Refusals {
    answering: Arc<tokio::sync::Semaphore>,
    warn: Throttle,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals {
            answering: Arc::new(tokio::sync::Semaphore::new(REFUSING)),
            warn: Throttle::default(),
        }
    }
}

impl Refusals {
    /// Refuses `stream`: its first request is answered with the refusal (so the CLI and the
    /// SDK can say why) when few others are being answered, else it is closed at once.
    fn refuse(&self, daemon: &Daemon, stream: UnixStream, who: &Identity, refusal: Refusal) {
        if let Some(held_back) = self.warn.pass() {
            tracing::warn!(
                uid = who.uid,
                open = daemon.quota.open(),
                held_back,
                reason = %refusal.message,
                "control connection refused"
            );
        }
        let Ok(permit) = self.answering.clone().try_acquire_owned() else {
            return;
        };
        let err = ApiError::new(refusal.error, refusal.message);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let reply = error(&err);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(REFUSAL_WAIT, conn).await;
            drop(permit);
        });
    }
}

/// A process's command line from /proc, or `unknown`.
pub(crate) fn command_line(pid: u32) -> String {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) if !raw.is_empty() => {
            let words: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            words.join(" ")
        }
        _ => "unknown".to_owned(),
    }
}

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, value: &impl Serialize) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A refusal, with the status its Win32 code maps to.
fn error(e: &ApiError) -> Reply {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    json(status, e)
}

fn bad(message: impl Into<String>) -> Reply {
    error(&ApiError::new(Win32Error::InvalidParameter, message))
}

/// Largest `POST /v1/sslcert` body: the PEM files' bytes, and room for their JSON escapes
/// and names. The daemon holds the PEM itself to `MAX_ADD_BYTES` once decoded.
const MAX_SSLCERT_BODY: usize = portshare_proto::sslcert::MAX_ADD_BYTES / 4 * 5;

/// Reads a JSON request body, which must come within `wait`.
async fn body<T: DeserializeOwned>(req: Request<Incoming>, wait: Duration) -> Result<T, Reply> {
    body_within(req, wait, MAX_BODY).await
}

/// Largest `POST /v1/queues/{name}/urls` body: a full batch at 512 bytes a URL on
/// average, JSON included.
const MAX_URLS_BODY: usize = AddUrlBatch::MAX * 512;

/// Reads a JSON request body of at most `max` bytes, which must come within `wait`. A
/// body announced longer is refused before any of it is read.
async fn body_within<T: DeserializeOwned>(
    req: Request<Incoming>,
    wait: Duration,
    max: usize,
) -> Result<T, Reply> {
    let bytes = raw_body(req, wait, max).await?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("bad JSON body: {e}")))
}

/// The bytes of a request body of at most `max` bytes, which must come within `wait`.
async fn raw_body(req: Request<Incoming>, wait: Duration, max: usize) -> Result<Bytes, Reply> {
    use hyper::body::Body as _;
    let announced = req.body().size_hint().lower();
    if announced > max as u64 {
        return Err(bad(format!(
            "the request body is {announced} bytes; this request takes at most {max}"
        )));
    }
    let collect = Limited::new(req.into_body(), max).collect();
    Ok(tokio::time::timeout(wait, collect)
        .await
        .map_err(|_| bad(format!("the request body did not come within {wait:?}")))?
        .map_err(|e| bad(format!("cannot read the request body: {e}")))?
        .to_bytes())
}

/// What `POST /v1/queues/{name}/urls` carries: one URL, or a batch.
enum UrlsBody<O, B> {
    One(O),
    Batch(B),
}

/// Reads the body of `POST` and `DELETE /v1/queues/{name}/urls`: an object with `urls` is a batch, any other
/// one URL, each checked as strictly as its own type (unknown fields refused).
async fn urls_body<O: DeserializeOwned, B: DeserializeOwned>(
    req: Request<Incoming>,
    wait: Duration,
) -> Result<UrlsBody<O, B>, Reply> {
    let bytes = raw_body(req, wait, MAX_URLS_BODY).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("bad JSON body: {e}")))?;
    let batch = value.get("urls").is_some();
    let parsed = if batch {
        serde_json::from_value(value).map(UrlsBody::Batch)
    } else {
        serde_json::from_value(value).map(UrlsBody::One)
    };
    parsed.map_err(|e| bad(format!("bad JSON body: {e}")))
}

/// Runs a control-plane operation on the blocking pool, never on a runtime thread: it may
/// wait on the user and group databases (NSS), on `/proc` or on the state file, and a client
/// connection must never wait behind it, also with `--threads 1`.
async fn blocking<T: Send + 'static>(
    daemon: &Arc<Daemon>,
    session: &Session,
    op: impl FnOnce(&Arc<Daemon>, &Session) -> T + Send + 'static,
) -> T {
    let (daemon, session) = (daemon.clone(), session.clone());
    let task = tokio::task::spawn_blocking(move || op(&daemon, &session));
    match task.await {
        Ok(out) => out,
        // The operation panicked: that is a bug, and the connection answers nothing more.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn handle(
    daemon: &Arc<Daemon>,
    session: &Session,
    place: &Arc<Place>,
    busy: &Busy,
    req: Request<Incoming>,
) -> Reply {
    let wait = daemon.request_wait();
    let path = req.uri().path().to_owned();
    // Leading slashes beyond the first are ignored, as they always were.
    let slashes = path.len() - path.trim_start_matches('/').len();
    let route = &path[slashes.saturating_sub(1)..];
    let method = req.method().clone();
    match (&method, route) {
        (&Method::GET, paths::STATE) => {
            let filter = match StateFilter::parse(req.uri().query().unwrap_or("")) {
                Ok(f) => f,
                Err(e) => return bad(e),
            };
            json(
                StatusCode::OK,
                &blocking(daemon, session, move |d, s| d.state(s, &filter)).await,
            )
        }
        (&Method::GET, paths::METRICS) => json(
            StatusCode::OK,
            &blocking(daemon, session, |d, s| d.metrics(s)).await,
        ),
        (&Method::GET, paths::URLACL) => json(
            StatusCode::OK,
            &blocking(daemon, session, |d, _| d.urlacl_list()).await,
        ),
        (&Method::POST, paths::URLACL) => {
            let add: AddReservation = match body(req, wait).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            match blocking(daemon, session, move |d, s| d.urlacl_add(s, &add)).await {
                Ok(info) => json(StatusCode::CREATED, &info),
                Err(e) => error(&e),
            }
        }
        (&Method::DELETE, paths::URLACL) => {
            let rm: RemoveReservation = match body(req, wait).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            match blocking(daemon, session, move |d, s| d.urlacl_remove(s, &rm)).await {
                Ok(()) => no_content(),
                Err(e) => error(&e),
            }
        }
        (&Method::GET, paths::SSLCERT) => json(
            StatusCode::OK,
            &blocking(daemon, session, |d, _| d.sslcert_list()).await,
        ),
        (&Method::POST, paths::SSLCERT) => {
            let add: AddSslCert = match body_within(req, wait, MAX_SSLCERT_BODY).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            match blocking(daemon, session, move |d, s| d.sslcert_add(s, &add)).await {
                Ok(info) => json(StatusCode::CREATED, &info),
                Err(e) => error(&e),
            }
        }
        (&Method::DELETE, paths::SSLCERT) => {
            let rm: DeleteSslCert = match body(req, wait).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            match blocking(daemon, session, move |d, s| d.sslcert_delete(s, &rm)).await {
                Ok(()) => no_content(),
                Err(e) => error(&e),
            }
        }
        (&Method::GET, paths::IPLISTEN) => json(
            StatusCode::OK,
            &blocking(daemon, session, |d, _| d.iplisten_list()).await,
        ),
        (&Method::POST | &Method::DELETE, paths::IPLISTEN) => {
            let change: IpListenChange = match body(req, wait).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let add = method == Method::POST;
            match blocking(daemon, session, move |d, s| {
                d.iplisten_change(s, &change, add)
            })
            .await
            {
                Ok(list) if add => json(StatusCode::CREATED, &list),
                Ok(list) => json(StatusCode::OK, &list),
                Err(e) => error(&e),
            }
        }
        (&Method::POST, paths::RELOAD) => {
            match blocking(daemon, session, |d, s| d.reload_for(s)).await {
                Ok(report) => json(StatusCode::OK, &report),
                Err(e) => error(&e),
            }
        }
        (&Method::POST, paths::QUEUES) => {
            let spec: QueueSpec = match body(req, wait).await {
                Ok(s) => s,
                Err(r) => return r,
            };
            match blocking(daemon, session, move |d, s| {
                d.open_queue(s, &spec, None, None)
            })
            .await
            {
                Ok(info) => {
                    busy.holds_queue();
                    let status = if info.created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    json(status, &info)
                }
                Err(e) => error(&e),
            }
        }
        (_, route) => {
            let Some((segment, rest)) = paths::split_queue(route) else {
                return not_found(&method, &path);
            };
            let Some(name) = paths::decode_name(segment) else {
                return bad("the queue name in the path is not valid percent-encoded UTF-8");
            };
            match (&method, rest) {
                (&Method::PATCH, "") => {
                    let props: QueueProps = match body(req, wait).await {
                        Ok(p) => p,
                        Err(r) => return r,
                    };
                    match blocking(daemon, session, move |d, s| d.set_props(s, &name, &props)).await
                    {
                        Ok(info) => json(StatusCode::OK, &info),
                        Err(e) => error(&e),
                    }
                }
                (&Method::DELETE, "") => {
                    match blocking(daemon, session, move |d, s| d.close_queue(s, &name)).await {
                        Ok(()) => no_content(),
                        Err(e) => error(&e),
                    }
                }
                (&Method::POST, paths::URLS) => {
                    match urls_body::<AddUrl, AddUrlBatch>(req, wait).await {
                        Err(r) => r,
                        Ok(UrlsBody::One(add)) => {
                            let now = daemon.try_add_url_now(session, &name, &add);
                            let added = match now {
                                Some(added) => added,
                                None => {
                                    blocking(daemon, session, move |d, s| d.add_url(s, &name, &add))
                                        .await
                                }
                            };
                            match added {
                                Ok(added) => json(StatusCode::CREATED, &added),
                                Err(e) => error(&e),
                            }
                        }
                        Ok(UrlsBody::Batch(batch)) => {
                            match blocking(daemon, session, move |d, s| {
                                d.add_url_batch(s, &name, &batch)
                            })
                            .await
                            {
                                Ok(urls) => json(StatusCode::CREATED, &UrlsAdded { urls }),
                                Err(e) => error(&e),
                            }
                        }
                    }
                }
                (&Method::DELETE, paths::URLS) => {
                    let removed = match urls_body::<RemoveUrl, RemoveUrlBatch>(req, wait).await {
                        Err(r) => return r,
                        Ok(UrlsBody::One(rm)) => {
                            blocking(daemon, session, move |d, s| d.remove_url(s, &name, &rm.url))
                                .await
                        }
                        Ok(UrlsBody::Batch(batch)) => {
                            blocking(daemon, session, move |d, s| {
                                d.remove_url_batch(s, &name, &batch)
                            })
                            .await
                        }
                    };
                    match removed {
                        Ok(()) => no_content(),
                        Err(e) => error(&e),
                    }
                }
                (&Method::POST, paths::ACCESS) => {
                    let grant: GrantAccess = match body(req, wait).await {
                        Ok(g) => g,
                        Err(r) => return r,
                    };
                    match blocking(daemon, session, move |d, s| d.set_access(s, &name, &grant))
                        .await
                    {
                        Ok(info) => json(StatusCode::OK, &info),
                        Err(e) => error(&e),
                    }
                }
                (&Method::POST, paths::READY) => {
                    let set: SetReady = match body(req, wait).await {
                        Ok(s) => s,
                        Err(r) => return r,
                    };
                    match blocking(daemon, session, move |d, s| {
                        d.set_ready(s, &name, set.ready)
                    })
                    .await
                    {
                        Ok(info) => json(StatusCode::OK, &info),
                        Err(e) => error(&e),
                    }
                }
                (&Method::POST, paths::ATTACH) => attach(daemon, session, place, &name, req),
                _ => not_found(&method, &path),
            }
        }
    }
}

fn no_content() -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn not_found(method: &Method, path: &str) -> Reply {
    error(&ApiError::new(
        Win32Error::FileNotFound,
        format!("no control endpoint {method} {path}"),
    ))
}

/// `POST /v1/queues/{name}/attach` with `Upgrade`: the connection becomes a worker.
fn attach(
    daemon: &Arc<Daemon>,
    session: &Session,
    place: &Arc<Place>,
    name: &str,
    req: Request<Incoming>,
) -> Reply {
    // The highest version of the wire both sides speak; several `Upgrade` fields are one
    // list.
    let offered = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let Some(version) = wire::negotiate(&offered, wire::VERSIONS) else {
        let mut r = bad(format!(
            "attach needs `Upgrade: {}` (one or more of these versions of the worker wire, \
             which this daemon speaks)",
            wire::offer()
        ));
        if let Ok(v) = header::HeaderValue::from_str(&wire::offer()) {
            r.headers_mut().insert(header::UPGRADE, v);
        }
        return r;
    };
    let slots = match req
        .headers()
        .get(SLOTS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u32>())
    {
        Some(Ok(n)) if (1..=MAX_SLOTS).contains(&n) => n,
        _ => {
            return bad(format!(
                "attach needs `{SLOTS_HEADER}: N` with N from 1 to {MAX_SLOTS}"
            ));
        }
    };
    let queue = match daemon.attachable(session, name) {
        Ok(q) => q,
        Err(e) => return error(&e),
    };
    let worker = WorkerConn::new(
        daemon.next_id(),
        session.peer.clone(),
        &daemon.shared.buffers,
        version,
    );
    tracing::info!(
        queue = name,
        pid = session.peer.pid,
        slots,
        version,
        worker = worker.id,
        "worker attached"
    );
    // The worker keeps the connection's place in the control share.
    let place = place.clone();
    tokio::spawn(async move {
        let _place = place;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "worker upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<UnixStream>>() else {
            tracing::warn!("worker upgrade: unexpected transport");
            return;
        };
        worker
            .run(parts.io.into_inner(), parts.read_buf, queue, slots)
            .await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    let chosen = format!("{}/{version}", wire::PROTOCOL_NAME);
    r.headers_mut().insert(
        header::UPGRADE,
        header::HeaderValue::from_str(&chosen)
            .unwrap_or(header::HeaderValue::from_static(wire::UPGRADE_PROTOCOL)),
    );
    r
}
