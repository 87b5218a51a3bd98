//! The control socket: HTTP/1.1 and JSON over a Unix socket (see
//! [`portshare_proto::control`] for the API), one session per connection.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portshare_proto::control::{
    AddReservation, AddUrl, ApiError, IpListenChange, QueueProps, QueueSpec, RemoveReservation,
    RemoveUrl,
};
use portshare_proto::wire::{SLOTS_HEADER, UPGRADE_PROTOCOL};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};

use crate::daemon::{Daemon, Session};
use crate::identity::{self, Identity};
use crate::worker::{Peer, WorkerConn};

/// Largest control request body.
const MAX_BODY: usize = 1 << 20;

/// Most slots one worker may declare.
const MAX_SLOTS: u32 = 65536;

/// Binds the control socket: its folder is created, a stale socket file replaced, and the
/// socket made connectable by every local user (the URL ACLs and queue owners are the gate).
pub(crate) fn bind(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another daemon is already listening on {}; give this one its own --control",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot open {} to local users: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts control connections until the task is dropped.
pub(crate) async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let Some(session) = session_of(&daemon, &stream) else {
                return;
            };
            let session = Arc::new(session);
            let service = {
                let daemon = daemon.clone();
                let session = session.clone();
                hyper::service::service_fn(move |req| {
                    let daemon = daemon.clone();
                    let session = session.clone();
                    async move { Ok::<_, Infallible>(handle(&daemon, &session, req).await) }
                })
            };
            // No timer, so no header or idle timeout (hyper's header timeout would close an
            // idle session after 30 s): a session lives as long as its connection.
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(pid = session.peer.pid, "control connection: {e}");
            }
            daemon.end_session(&session);
        });
    }
}

fn session_of(daemon: &Daemon, stream: &UnixStream) -> Option<Session> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("control connection without peer credentials: {e}");
            return None;
        }
    };
    let pid = cred.pid().map_or(0, |p| p.max(0) as u32);
    Some(Session {
        id: daemon.next_id(),
        peer: Peer {
            pid,
            uid: cred.uid(),
            identity: Identity::of_peer(pid, cred.uid(), cred.gid()),
            user: identity::display_user(cred.uid()),
            command: command_line(pid),
        },
    })
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

fn error(e: &ApiError) -> Reply {
    let status = match e.code {
        2 | 6 => StatusCode::NOT_FOUND,
        13 => StatusCode::UNPROCESSABLE_ENTITY,
        5 => StatusCode::FORBIDDEN,
        32 | 183 => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    json(status, e)
}

fn bad(message: impl Into<String>) -> Reply {
    error(&ApiError {
        code: 87,
        name: "ERROR_INVALID_PARAMETER".into(),
        message: message.into(),
    })
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Reply> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| bad(format!("cannot read the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("bad JSON body: {e}")))
}

/// Decodes a `%XX`-encoded path segment.
fn decode_segment(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn handle(daemon: &Arc<Daemon>, session: &Session, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "state"]) => json(StatusCode::OK, &daemon.state()),
        (&Method::GET, ["v1", "urlacl"]) => json(StatusCode::OK, &daemon.urlacl_list()),
        (&Method::POST, ["v1", "urlacl"]) => {
            let add: AddReservation = match body(req).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            match daemon.urlacl_add(session, &add) {
                Ok(info) => json(StatusCode::CREATED, &info),
                Err(e) => error(&e),
            }
        }
        (&Method::DELETE, ["v1", "urlacl"]) => {
            let rm: RemoveReservation = match body(req).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            match daemon.urlacl_remove(session, &rm) {
                Ok(()) => no_content(),
                Err(e) => error(&e),
            }
        }
        (&Method::GET, ["v1", "iplisten"]) => json(StatusCode::OK, &daemon.iplisten_list()),
        (&Method::POST | &Method::DELETE, ["v1", "iplisten"]) => {
            let change: IpListenChange = match body(req).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let add = method == Method::POST;
            match daemon.iplisten_change(session, &change, add).await {
                Ok(list) if add => json(StatusCode::CREATED, &list),
                Ok(list) => json(StatusCode::OK, &list),
                Err(e) => error(&e),
            }
        }
        (&Method::POST, ["v1", "reload"]) => match daemon.reload_for(session).await {
            Ok(report) => json(StatusCode::OK, &report),
            Err(e) => error(&e),
        },
        (&Method::POST, ["v1", "queues"]) => {
            let spec: QueueSpec = match body(req).await {
                Ok(s) => s,
                Err(r) => return r,
            };
            match daemon.open_queue(session, &spec, None, None) {
                Ok(info) => {
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
        (_, ["v1", "queues", name, rest @ ..]) => {
            let Some(name) = decode_segment(name) else {
                return bad("the queue name in the path is not valid percent-encoded UTF-8");
            };
            match (&method, rest) {
                (&Method::PATCH, []) => {
                    let props: QueueProps = match body(req).await {
                        Ok(p) => p,
                        Err(r) => return r,
                    };
                    match daemon.set_props(session, &name, &props) {
                        Ok(info) => json(StatusCode::OK, &info),
                        Err(e) => error(&e),
                    }
                }
                (&Method::DELETE, []) => match daemon.close_queue(session, &name) {
                    Ok(()) => no_content(),
                    Err(e) => error(&e),
                },
                (&Method::POST, ["urls"]) => {
                    let add: AddUrl = match body(req).await {
                        Ok(a) => a,
                        Err(r) => return r,
                    };
                    match daemon.add_url(session, &name, &add) {
                        Ok(added) => json(StatusCode::CREATED, &added),
                        Err(e) => error(&e),
                    }
                }
                (&Method::DELETE, ["urls"]) => {
                    let rm: RemoveUrl = match body(req).await {
                        Ok(r) => r,
                        Err(r) => return r,
                    };
                    match daemon.remove_url(session, &name, &rm.url) {
                        Ok(()) => no_content(),
                        Err(e) => error(&e),
                    }
                }
                (&Method::POST, ["attach"]) => attach(daemon, session, &name, req),
                _ => not_found(&method, &path),
            }
        }
        _ => not_found(&method, &path),
    }
}

fn no_content() -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn not_found(method: &Method, path: &str) -> Reply {
    error(&ApiError {
        code: 2,
        name: "ERROR_FILE_NOT_FOUND".into(),
        message: format!("no control endpoint {method} {path}"),
    })
}

/// `POST /v1/queues/{name}/attach` with `Upgrade`: the connection becomes a worker.
fn attach(daemon: &Arc<Daemon>, session: &Session, name: &str, req: Request<Incoming>) -> Reply {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case(UPGRADE_PROTOCOL))
        });
    if !upgrade {
        return bad(format!("attach needs `Upgrade: {UPGRADE_PROTOCOL}`"));
    }
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
    );
    tracing::info!(
        queue = name,
        pid = session.peer.pid,
        slots,
        "worker {} attached",
        worker.id
    );
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("worker upgrade failed: {e}");
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
    r.headers_mut().insert(
        header::UPGRADE,
        header::HeaderValue::from_static(UPGRADE_PROTOCOL),
    );
    r
}
