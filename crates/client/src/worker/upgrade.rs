//! Requests that ask to upgrade their connection (WebSocket), on version 2 of the wire.
//!
//! A service written for hyper, such as an axum app using `WebSocketUpgrade`, accepts an
//! upgrade through hyper's `OnUpgrade` request extension, which only hyper's own server
//! connection makes. So such a request is served by hyper itself, in memory: its head is
//! sent by a hyper client connection over one end of a [`duplex`] pipe, a hyper server
//! connection on the other end calls the service, and the client end reads the response.
//! A response other than `101` is relayed as any other. On `101`, its head goes to the
//! daemon and the stream becomes opaque: the application's bytes, read from the upgraded
//! client end, go to the daemon as data frames within the stream's credit, and the
//! daemon's data frames (the client's bytes) are written to it, each granted back once
//! written. `END` either way is a half-close.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portshare_proto::wire::{self, MAX_PAYLOAD, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::respond::{Guard, header_fields, send};
use super::{Conn, Stream};
use crate::Body;
use crate::error::BoxError;
use crate::service::{AppBody, AppService};

/// Room in each direction of the in-memory pipe.
const PIPE: usize = 64 * 1024;

/// The opaque bytes of a stream from the daemon, and whether they are the last.
pub(super) type Opaque = mpsc::UnboundedReceiver<(Bytes, bool)>;

/// Whether a request head offers to upgrade: the daemon passes `Upgrade` (and
/// `Connection: upgrade`) only then.
pub(super) fn offered(headers: &[(Bytes, Bytes)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case(b"upgrade") && !v.is_empty())
}

/// A task that ends when its owner does.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves a request that offers to upgrade through hyper, as the module describes.
pub(super) async fn respond<S, B>(
    service: S,
    req: Request<Body>,
    stream: Arc<Stream>,
    conn: Arc<Conn>,
    from_daemon: Opaque,
) where
    S: AppService<B>,
    B: AppBody,
{
    let mut guard = Guard::new(&stream, &conn);
    match serve(service, req, &stream, &conn, from_daemon).await {
        Ok(()) => guard.answered = true,
        Err(e) => tracing::warn!(stream = stream.id, error = %e, "the upgrade failed"),
    }
}

async fn serve<S, B>(
    service: S,
    req: Request<Body>,
    stream: &Stream,
    conn: &Conn,
    from_daemon: Opaque,
) -> Result<(), BoxError>
where
    S: AppService<B>,
    B: AppBody,
{
    let (ours, theirs) = duplex(PIPE);
    let app = hyper::service::service_fn(move |r: Request<Incoming>| {
        let mut service = service.clone();
        async move {
            // A concrete error type: hyper's bounds and a boxed error of the service's
            // own make a future the compiler cannot prove `Send`.
            let failed = |e: S::Error| std::io::Error::other(e.into());
            poll_fn(|cx| service.poll_ready(cx)).await.map_err(failed)?;
            // The request has no body (the daemon sent its head marked END).
            service.call(r.map(|_| Body::empty())).await.map_err(failed)
        }
    });
    let server = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(theirs), app)
        .with_upgrades();
    let _server = Owned(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::debug!(error = %e, "in-memory connection to the service ended");
        }
    }));
    let (mut sender, client) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(ours)).await?;
    let _client = Owned(tokio::spawn(async move {
        let _ = client.with_upgrades().await;
    }));
    let response = sender.send_request(req.map(|_| Empty::new())).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return send(stream, conn, response).await;
    }
    let (parts, body) = response.into_parts();
    let id = stream.id;
    stream.send(conn, |buf| {
        ResponseHead::encode_parts(buf, id, false, 101, header_fields(&parts));
    });
    let upgraded = hyper::upgrade::on(http::Response::from_parts(parts, body)).await?;
    pump(TokioIo::new(upgraded), stream, conn, from_daemon).await
}

/// Moves bytes between the upgraded connection and the stream until both directions
/// have ended.
async fn pump<T>(
    io: T,
    stream: &Stream,
    conn: &Conn,
    mut from_daemon: Opaque,
) -> Result<(), BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let id = stream.id;
    let to_daemon = async {
        let mut buf = BytesMut::with_capacity(PIPE);
        loop {
            buf.reserve(PIPE);
            if rd.read_buf(&mut buf).await? == 0 {
                stream.send(conn, |out| wire::encode_data(out, id, true, &[]));
                return Ok::<_, BoxError>(());
            }
            while !buf.is_empty() {
                let n = stream.credit(buf.len().min(MAX_PAYLOAD)).await;
                let chunk = buf.split_to(n);
                stream.send(conn, |out| wire::encode_data(out, id, false, &chunk));
            }
        }
    };
    let from = async {
        // Once the application has closed its end, what the client still sends (the
        // last frames of a closing handshake, say) is granted back and dropped.
        let mut open = true;
        while let Some((data, end)) = from_daemon.recv().await {
            if open && !data.is_empty() && wr.write_all(&data).await.is_err() {
                tracing::debug!(stream = id, "the application closed its end of the upgrade");
                open = false;
            }
            if end {
                if open {
                    let _ = wr.shutdown().await;
                }
                return Ok::<_, BoxError>(());
            }
            if !data.is_empty() {
                stream.grant(conn, data.len());
            }
        }
        Err("the stream was reset".into())
    };
    tokio::try_join!(to_daemon, from)?;
    if stream.reset.load(Ordering::Acquire) {
        return Err("the stream was reset".into());
    }
    Ok(())
}
