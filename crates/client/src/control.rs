//! The control connection ([`Control`]: HTTP/1.1 and JSON over the daemon's Unix socket)
//! and the upgrade that turns a fresh connection into a worker.

use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::task::Poll;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use portshare_proto::control::{
    AddUrl, AddUrlBatch, ApiError, QueueInfo, QueueSpec, RemoveUrl, RemoveUrlBatch, ServiceState,
    SetReady, StateFilter, UrlAdded, UrlsAdded, path,
};
use portshare_proto::wire;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::error::Error;

type Io = TokioIo<UnixStream>;

/// The largest answer read: the state of a busy daemon is large, but not this large.
const MAX_ANSWER: usize = 64 << 20;

/// hyper's half of a control connection that does the I/O.
type Conn = Pin<Box<Connection<Io, Full<Bytes>>>>;

/// A connection to the daemon's control socket, speaking the
/// [control API](portshare_proto::control): HTTP/1.1 and JSON. The CLI drives one, and
/// [`QueueBuilder::serve`](crate::QueueBuilder::serve) registers through one.
///
/// A connection is a session: the queues it creates and the URLs it adds last as long as
/// it stays open (or a queue's linger time after), so keep it open while they are needed
/// and drop it to let them go. Requests go one at a time.
///
/// # Examples
///
/// ```no_run
/// use http::Method;
/// use portshare_client::Control;
/// use portshare_proto::control::{RemoveReservation, path};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut control = Control::connect_default().await?;
/// let state = control.state().await?;
/// println!("{} queues, {} prefixes", state.queues.len(), state.prefixes.len());
///
/// let gone = RemoveReservation { url: "http://+:8080/old/".into() };
/// match control.call::<(), _>(Method::DELETE, path::URLACL, Some(&gone)).await {
///     Ok(()) => println!("deleted"),
///     Err(e) if e.api().is_some_and(|a| a.is_file_not_found()) => println!("not reserved"),
///     Err(e) => return Err(e.into()),
/// }
/// # Ok(())
/// # }
/// ```
pub struct Control {
    sender: SendRequest<Full<Bytes>>,
    /// The connection's I/O, driven while a request is out or [`closed`](Control::closed)
    /// is awaited; `None` once it has ended.
    conn: Option<Conn>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl Control {
    /// Connects to the control socket at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when nothing listens there, [`Error::Http`] when the connection
    /// cannot be set up.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Control, Error> {
        let io = connect(path.as_ref()).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| http_error("control connection", e))?;
        Ok(Control {
            sender,
            conn: Some(Box::pin(conn)),
        })
    }

    /// Connects to the socket a client finds by default: `PORTSHARE_CONTROL`, else the
    /// per-user socket if it exists, else the system one (see
    /// [`control_socket_for_client`](portshare_proto::control_socket_for_client)).
    ///
    /// # Errors
    ///
    /// As [`connect`](Control::connect).
    pub async fn connect_default() -> Result<Control, Error> {
        Control::connect(default_socket()).await
    }

    /// `method path`, with `body` as JSON when there is one (`None::<&()>` for none): the
    /// daemon's answer, whatever its status. For answers that are not 2xx to come back as
    /// errors, use [`call`](Control::call).
    ///
    /// # Errors
    ///
    /// [`Error::Request`] when `body` does not encode or `path` is not a path,
    /// [`Error::Http`] when the connection fails, [`Error::Protocol`] when the daemon
    /// closes it before it answers or answers more than 64 MiB.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a request cancelled after it was sent may leave its answer on the
    /// connection. Drop the connection after a cancelled request (a timeout, say).
    pub async fn send<B: Serialize + ?Sized>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response<Bytes>, Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "portshare");
        let body = match body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b).map_err(|e| Error::Request(e.into()))?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Request(e.into()))?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(closed_early("control request", Ok(())));
        };
        let sender = &mut self.sender;
        let exchange = async move {
            let failed = |e| http_error("control request", e);
            sender.ready().await.map_err(failed)?;
            let (parts, body) = sender.send_request(req).await.map_err(failed)?.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => failed(*e),
                    Err(_) => Error::Protocol(format!(
                        "control request: an answer over {} MiB",
                        MAX_ANSWER >> 20
                    )),
                })?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        let mut exchange = pin!(exchange);
        // The connection makes progress only while polled; it ends when the daemon closes it.
        let ended = tokio::select! {
            biased;
            r = &mut exchange => return r,
            ended = conn => ended,
        };
        self.conn = None;
        // The daemon may have answered just before it closed the connection (as it does
        // when it refuses one): the whole answer is then in hand, ready at the first poll.
        let answered = std::future::poll_fn(|cx| Poll::Ready(exchange.as_mut().poll(cx))).await;
        // A failure hyper saw in the answer is handed to the request, not the connection.
        match (answered, ended) {
            (Poll::Ready(Ok(answer)), _) => Ok(answer),
            (Poll::Ready(Err(e)), Ok(())) => Err(e),
            (_, ended) => Err(closed_early("control request", ended)),
        }
    }

    /// `method path`, with `body` as JSON when there is one (`None::<&()>` for none); the
    /// 2xx answer's JSON decoded as `T`. An empty answer (such as a 204) decodes as JSON
    /// `null`, so ask for `()` there.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] when the daemon refuses the request, [`Error::Protocol`] when it
    /// answers something else than `T` or fails without saying why, and those of
    /// [`send`](Control::send).
    ///
    /// # Cancel safety
    ///
    /// As [`send`](Control::send).
    pub async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let answer = self.send(method, path, body).await?;
        decode(answer.status(), answer.body())
    }

    /// `GET path`, the answer decoded as `T`: [`call`](Control::call) without a body.
    ///
    /// # Errors
    ///
    /// As [`call`](Control::call).
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, Error> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `GET /v1/state`: what the daemon holds.
    ///
    /// # Errors
    ///
    /// As [`call`](Control::call).
    pub async fn state(&mut self) -> Result<ServiceState, Error> {
        self.get(path::STATE).await
    }

    /// `POST /v1/queues`: creates or opens a queue, held by this connection.
    ///
    /// # Errors
    ///
    /// As [`call`](Control::call); [`Error::Api`] with 183 `ERROR_ALREADY_EXISTS` for a
    /// name in use when creating, 2 `ERROR_FILE_NOT_FOUND` for a name not in use when
    /// opening, 5 `ERROR_ACCESS_DENIED` for another account's queue.
    pub async fn create_queue(&mut self, spec: &QueueSpec) -> Result<QueueInfo, Error> {
        self.call(Method::POST, path::QUEUES, Some(spec)).await
    }

    /// `POST /v1/queues/{queue}/urls`: registers a URL prefix on a queue this connection
    /// holds.
    ///
    /// # Errors
    ///
    /// As [`call`](Control::call); [`Error::Api`] with 183 `ERROR_ALREADY_EXISTS` for a
    /// prefix another queue holds, 5 `ERROR_ACCESS_DENIED` for one outside the caller's
    /// reservations, 32 `ERROR_SHARING_VIOLATION` for a port another program has bound.
    pub async fn add_url(&mut self, queue: &str, url: &AddUrl) -> Result<UrlAdded, Error> {
        self.call(Method::POST, &path::queue(queue, path::URLS), Some(url))
            .await
    }

    /// `POST /v1/queues/{queue}/urls` with every URL of `urls` in one request: all
    /// registered, or none, the route table changed once (see
    /// [`AddUrlBatch`]). One URL goes in the single form, which every daemon
    /// understands; none sends nothing.
    ///
    /// # Errors
    ///
    /// As [`add_url`](Control::add_url); for several URLs, the [`ApiError`]'s
    /// [`index`](ApiError::index) names the one that failed (none of them is registered),
    /// or is absent when the batch was refused whole (more than [`AddUrlBatch::MAX`] URLs,
    /// a queue the caller may not use).
    pub async fn add_urls(&mut self, queue: &str, urls: &[AddUrl]) -> Result<Vec<UrlAdded>, Error> {
        match urls {
            [] => Ok(Vec::new()),
            [one] => self.add_url(queue, one).await.map(|a| vec![a]),
            _ => {
                let batch = AddUrlBatch {
                    urls: urls.to_vec(),
                };
                let added: UrlsAdded = self
                    .call(Method::POST, &path::queue(queue, path::URLS), Some(&batch))
                    .await?;
                Ok(added.urls)
            }
        }
    }

    /// `DELETE /v1/queues/{queue}/urls` for every URL of `urls` in one request: all removed,
    /// or none, the route table changed once (see [`RemoveUrlBatch`]). One URL goes in the
    /// single form, which every daemon understands; none sends nothing.
    ///
    /// # Errors
    ///
    /// As [`call`](Control::call); [`Error::Api`] with 2 `ERROR_FILE_NOT_FOUND` for a URL
    /// the queue does not hold, 5 for one the caller may not remove; for several URLs the
    /// [`ApiError`]'s [`index`](ApiError::index) names the one refused.
    pub async fn remove_urls(&mut self, queue: &str, urls: &[String]) -> Result<(), Error> {
        let path = path::queue(queue, path::URLS);
        match urls {
            [] => Ok(()),
            [one] => {
                let one = RemoveUrl { url: one.clone() };
                self.call(Method::DELETE, &path, Some(&one)).await
            }
            _ => {
                let batch = RemoveUrlBatch {
                    urls: urls
                        .iter()
                        .map(|url| RemoveUrl { url: url.clone() })
                        .collect(),
                };
                self.call(Method::DELETE, &path, Some(&batch)).await
            }
        }
    }

    /// `GET /v1/state` narrowed by `filter` (see [`StateFilter`]).
    ///
    /// # Errors
    ///
    /// As [`call`](Control::call); [`Error::Api`] with 87 `ERROR_INVALID_PARAMETER` for a
    /// filter the daemon does not know (an older daemon ignores the filter and answers the
    /// whole view, without [`ServiceState::filter`]).
    pub async fn state_filtered(&mut self, filter: &StateFilter) -> Result<ServiceState, Error> {
        self.get(&filter.path()).await
    }

    /// `POST /v1/queues/{name}/ready`: declares the held upstream queue `queue` ready (its
    /// waiting requests go to the upstream) or holds it again. Only its owner may.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with ERROR_ACCESS_DENIED for anyone but the owner,
    /// ERROR_INVALID_PARAMETER for a queue without an upstream.
    pub async fn set_ready(&mut self, queue: &str, ready: bool) -> Result<QueueInfo, Error> {
        self.call(
            Method::POST,
            &path::queue(queue, path::READY),
            Some(&SetReady { ready }),
        )
        .await
    }

    /// Resolves when the daemon closes the connection, or it fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn closed(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control connection failed");
        }
        self.conn = None;
    }
}

/// The socket a client connects to when told none.
pub(crate) fn default_socket() -> PathBuf {
    portshare_proto::control_socket_for_client(|k| std::env::var_os(k), Path::exists)
}

/// Opens a new connection to the control socket and upgrades it to a worker of `queue`
/// holding `slots` requests at once, offering every version of the wire the SDK speaks.
/// Returns the socket, the wire bytes that came with the `101` answer, and the version the
/// daemon chose.
pub(crate) async fn attach(
    path: &Path,
    queue: &str,
    slots: u32,
) -> Result<(UnixStream, Bytes, u32), Error> {
    let io = connect(path).await?;
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| http_error("attach", e))?;
    let mut conn = pin!(conn.with_upgrades());
    let req = Request::builder()
        .method(Method::POST)
        .uri(path::queue(queue, path::ATTACH))
        .header(HOST, "portshare")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, wire::offer())
        .header(wire::SLOTS_HEADER, slots)
        .header(CONTENT_LENGTH, 0)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Request(e.into()))?;
    // On a 101 the connection hands its socket to the upgrade and ends, possibly before
    // the response is picked up: keep its result instead of taking the end for a failure.
    let mut conn_ended = None;
    let response = {
        let send = sender.send_request(req);
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => break r.map_err(|e| http_error("attach", e))?,
                r = &mut conn, if conn_ended.is_none() => conn_ended = Some(r),
            }
        }
    };
    // With the sender gone, the connection ends once this exchange is over.
    drop(sender);
    let ended = async {
        match conn_ended {
            Some(r) => r,
            None => conn.await,
        }
    };
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let (body, _) = tokio::join!(response.into_body().collect(), ended);
        let body = body.map_err(|e| http_error("attach", e))?.to_bytes();
        return Err(refusal(status, &body));
    }
    // A daemon from before the negotiation answers `portshare-worker/1`, as it was asked
    // for among others.
    let version = response
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| wire::chosen(v, wire::VERSIONS))
        .ok_or_else(|| {
            Error::Protocol("attach: the daemon chose no version of the wire offered".into())
        })?;
    let (upgraded, ended) = tokio::join!(hyper::upgrade::on(response), ended);
    ended.map_err(|e| http_error("attach", e))?;
    let upgraded = upgraded.map_err(|e| http_error("attach", e))?;
    let parts = upgraded
        .downcast::<Io>()
        .map_err(|_| Error::Protocol("attach: the upgraded connection is not the socket".into()))?;
    Ok((parts.io.into_inner(), parts.read_buf, version))
}

async fn connect(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path)
        .await
        .map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })
}

/// Reads an answer: `T` on 2xx (an empty body as JSON `null`), else the daemon's
/// [`ApiError`].
fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, Error> {
    if !status.is_success() {
        return Err(refusal(status, body));
    }
    let json = if body.is_empty() { b"null" } else { body };
    serde_json::from_slice(json).map_err(|e| {
        Error::Protocol(format!(
            "unreadable answer ({e}): {}",
            String::from_utf8_lossy(body)
        ))
    })
}

fn refusal(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => Error::Api(e),
        Err(_) => Error::Protocol(format!(
            "answered {status} without an error body: {}",
            String::from_utf8_lossy(body)
        )),
    }
}

fn http_error(context: &'static str, source: hyper::Error) -> Error {
    Error::Http { context, source }
}

fn closed_early(what: &'static str, r: Result<(), hyper::Error>) -> Error {
    match r {
        Ok(()) => Error::Protocol(format!("{what}: the daemon closed the connection")),
        Err(e) => http_error(what, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_win32_code() {
        let body = br#"{"code":183,"name":"ERROR_ALREADY_EXISTS","message":"taken"}"#;
        let e = decode::<UrlAdded>(StatusCode::CONFLICT, body).unwrap_err();
        assert!(e.is_already_exists());
        assert_eq!(e.to_string(), "taken (183 ERROR_ALREADY_EXISTS)");
        let e = decode::<UrlAdded>(StatusCode::BAD_GATEWAY, b"nope").unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
    }

    #[test]
    fn empty_answers_decode_as_null() {
        decode::<()>(StatusCode::NO_CONTENT, b"").unwrap();
        assert_eq!(decode::<Option<u32>>(StatusCode::OK, b"").unwrap(), None);
        let e = decode::<UrlAdded>(StatusCode::OK, b"").unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
    }

    /// A temporary socket's path, removed when dropped (the server may never have accepted,
    /// when the test ends first).
    struct Sock(PathBuf);

    impl Drop for Sock {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    impl AsRef<Path> for Sock {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    /// A daemon on a temporary socket that reads one request, writes `answer` and closes
    /// the connection at once, as the daemon does when it refuses one; it returns what it
    /// read.
    async fn one_shot(answer: &'static [u8]) -> (Sock, tokio::task::JoinHandle<Vec<u8>>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "portshare-control-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let cleanup = path.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = std::fs::remove_file(&cleanup);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            s.shutdown().await.unwrap();
            req
        });
        (Sock(path), server)
    }

    /// Also the regression case of an answer that comes with the connection's end: the
    /// connection may be seen ending before the answer is picked up, which must not lose it.
    #[tokio::test]
    async fn send_gives_any_status_and_call_the_refusal() {
        let (path, server) = one_shot(
            b"HTTP/1.1 409 Conflict\r\ncontent-length: 57\r\n\r\n\
              {\"code\":183,\"name\":\"ERROR_ALREADY_EXISTS\",\"message\":\"m\"}\n",
        )
        .await;
        let mut control = Control::connect(&path).await.unwrap();
        let answer = control
            .send(Method::GET, path::STATE, None::<&()>)
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::CONFLICT);
        assert!(answer.body().starts_with(b"{\"code\":183"));
        let req = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(req.starts_with("GET /v1/state HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("host: portshare\r\n"),
            "{req}"
        );

        let (path, _server) = one_shot(
            b"HTTP/1.1 409 Conflict\r\ncontent-length: 57\r\n\r\n\
              {\"code\":183,\"name\":\"ERROR_ALREADY_EXISTS\",\"message\":\"m\"}\n",
        )
        .await;
        let mut control = Control::connect(&path).await.unwrap();
        let spec = QueueSpec::default();
        let e = control.create_queue(&spec).await.unwrap_err();
        assert!(e.is_already_exists(), "{e:?}");
        assert_eq!(e.win32(), Some(portshare_proto::Win32Error::AlreadyExists));
    }

    #[tokio::test]
    async fn a_broken_answer_keeps_the_hyper_error_as_its_source() {
        let (path, _server) = one_shot(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let mut control = Control::connect(&path).await.unwrap();
        let e = control.state().await.unwrap_err();
        assert!(matches!(e, Error::Http { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("portshare daemon: control request: "),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("a source");
        let hyper = source
            .downcast_ref::<hyper::Error>()
            .expect("a hyper::Error");
        assert!(hyper.is_parse(), "{hyper:?}");
    }

    #[tokio::test]
    async fn requests_that_cannot_be_made() {
        let (path, _server) = one_shot(b"").await;
        let mut control = Control::connect(&path).await.unwrap();
        let e = control
            .send(Method::GET, "not a path", None::<&()>)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Request(_)), "{e:?}");
        // A map with keys that are not strings does not encode as JSON.
        let body = std::collections::HashMap::from([((1, 2), 3)]);
        let e = control
            .send(Method::POST, path::QUEUES, Some(&body))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Request(_)), "{e:?}");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            source.downcast_ref::<serde_json::Error>().is_some(),
            "{e:?}"
        );
    }
}
