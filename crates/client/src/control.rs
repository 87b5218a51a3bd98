//! The control connection (HTTP/1.1 and JSON over the daemon's Unix socket) and the
//! upgrade that turns a fresh connection into a worker.

use std::path::Path;
use std::pin::{Pin, pin};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use portshare_proto::control::{AddUrl, ApiError, QueueInfo, QueueSpec, UrlAdded, path};
use portshare_proto::wire;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::error::Error;

type Io = TokioIo<UnixStream>;

/// A control connection. What it registers lasts as long as it stays open.
pub(crate) struct Control {
    sender: SendRequest<Full<Bytes>>,
    conn: Pin<Box<Connection<Io, Full<Bytes>>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl Control {
    pub(crate) async fn connect(path: &Path) -> Result<Control, Error> {
        let io = connect(path).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| hyper_error("control connection", e))?;
        Ok(Control {
            sender,
            conn: Box::pin(conn),
        })
    }

    /// `POST /v1/queues`.
    pub(crate) async fn create_queue(&mut self, spec: &QueueSpec) -> Result<QueueInfo, Error> {
        self.call(Method::POST, path::QUEUES.into(), json(spec))
            .await
    }

    /// `POST /v1/queues/{name}/urls`.
    pub(crate) async fn add_url(&mut self, queue: &str, url: &AddUrl) -> Result<UrlAdded, Error> {
        self.call(Method::POST, path::queue(queue, path::URLS), json(url))
            .await
    }

    /// Resolves when the daemon closes the connection.
    pub(crate) async fn closed(&mut self) {
        if let Err(e) = (&mut self.conn).await {
            tracing::debug!(error = %e, "control connection failed");
        }
    }

    async fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: String,
        body: Bytes,
    ) -> Result<T, Error> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "portshare")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Error::Protocol(format!("building a control request: {e}")))?;
        let sender = &mut self.sender;
        let exchange = async move {
            sender.ready().await?;
            let (parts, body) = sender.send_request(req).await?.into_parts();
            Ok::<_, hyper::Error>((parts.status, body.collect().await?.to_bytes()))
        };
        // The connection makes progress only while polled; it ends when the daemon closes it.
        let (status, body) = tokio::select! {
            r = exchange => r.map_err(|e| hyper_error("control request", e))?,
            r = &mut self.conn => return Err(closed_early("control request", r)),
        };
        answer(status, &body)
    }
}

/// Opens a new connection to the control socket and upgrades it to a worker of `queue`
/// holding `slots` requests at once. Returns the socket and the wire bytes that came with
/// the `101` answer.
pub(crate) async fn attach(
    path: &Path,
    queue: &str,
    slots: u32,
) -> Result<(UnixStream, Bytes), Error> {
    let io = connect(path).await?;
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| hyper_error("attach", e))?;
    let mut conn = pin!(conn.with_upgrades());
    let req = Request::builder()
        .method(Method::POST)
        .uri(path::queue(queue, path::ATTACH))
        .header(HOST, "portshare")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, wire::UPGRADE_PROTOCOL)
        .header(wire::SLOTS_HEADER, slots)
        .header(CONTENT_LENGTH, 0)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Protocol(format!("building the attach request: {e}")))?;
    // On a 101 the connection hands its socket to the upgrade and ends, possibly before
    // the response is picked up: keep its result instead of taking the end for a failure.
    let mut conn_ended = None;
    let response = {
        let send = sender.send_request(req);
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => break r.map_err(|e| hyper_error("attach", e))?,
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
        let body = body.map_err(|e| hyper_error("attach", e))?.to_bytes();
        return Err(refusal(status, &body));
    }
    let (upgraded, ended) = tokio::join!(hyper::upgrade::on(response), ended);
    ended.map_err(|e| hyper_error("attach", e))?;
    let upgraded = upgraded.map_err(|e| hyper_error("attach", e))?;
    let parts = upgraded
        .downcast::<Io>()
        .map_err(|_| Error::Protocol("attach: the upgraded connection is not the socket".into()))?;
    Ok((parts.io.into_inner(), parts.read_buf))
}

async fn connect(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path)
        .await
        .map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })
}

fn json<T: serde::Serialize>(value: &T) -> Bytes {
    // The control types are plain structs of strings and numbers, which always serialize.
    Bytes::from(serde_json::to_vec(value).expect("control types serialize"))
}

/// Reads an answer: `T` on 2xx, else the daemon's [`ApiError`].
fn answer<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, Error> {
    if !status.is_success() {
        return Err(refusal(status, body));
    }
    serde_json::from_slice(body).map_err(|e| {
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

fn hyper_error(what: &str, e: hyper::Error) -> Error {
    Error::Protocol(format!("{what}: {e}"))
}

fn closed_early(what: &str, r: Result<(), hyper::Error>) -> Error {
    match r {
        Ok(()) => Error::Protocol(format!("{what}: the daemon closed the connection")),
        Err(e) => hyper_error(what, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_win32_code() {
        let body = br#"{"code":183,"name":"ERROR_ALREADY_EXISTS","message":"taken"}"#;
        let e = answer::<UrlAdded>(StatusCode::CONFLICT, body).unwrap_err();
        assert!(e.is_already_exists());
        assert_eq!(e.to_string(), "taken (183 ERROR_ALREADY_EXISTS)");
        let e = answer::<UrlAdded>(StatusCode::BAD_GATEWAY, b"nope").unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
    }
}
