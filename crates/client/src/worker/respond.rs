//! The task behind each request: call the service, send its response back.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::Request;
use http::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use http::response::Parts;
use http_body::Body as _;
use portshare_proto::gather::KEEP_FROM;
use portshare_proto::wire::{self, MAX_PAYLOAD, MAX_RESPONSE_HEAD, ResetCode, ResponseHead};

use super::{Conn, Stream};
use crate::Body;
use crate::error::BoxError;
use crate::service::{AppBody, AppService};

/// Calls the service and sends its response. A service error, a body error or a panic
/// resets the stream with `Abort`, so the daemon aborts the client's connection.
pub(super) async fn respond<S, B>(
    mut service: S,
    req: Request<Body>,
    stream: Arc<Stream>,
    conn: Arc<Conn>,
) where
    S: AppService<B>,
    B: AppBody,
{
    let mut guard = Guard::new(&stream, &conn);
    if let Err(e) = poll_fn(|cx| service.poll_ready(cx)).await {
        let e = e.into();
        tracing::error!(error = %e, "the service can take no more requests");
        let _ = conn.fatal.send(e);
        return;
    }
    let response = match service.call(req).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(stream = stream.id, error = %e.into(), "the service failed");
            return;
        }
    };
    match send(&stream, &conn, response).await {
        Ok(()) => guard.answered = true,
        Err(e) => tracing::warn!(stream = stream.id, error = %e, "the response body failed"),
    }
}

/// Ends a request task however it ends, returning early, panicking or aborted: resets a
/// stream left unanswered and counts the task out.
pub(super) struct Guard<'a> {
    stream: &'a Stream,
    conn: &'a Conn,
    /// Set once the stream has been answered: nothing to reset then.
    pub(super) answered: bool,
}

impl<'a> Guard<'a> {
    pub(super) fn new(stream: &'a Stream, conn: &'a Conn) -> Guard<'a> {
        Guard {
            stream,
            conn,
            answered: false,
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let id = self.stream.id;
            self.stream.send(self.conn, |buf| {
                wire::encode_reset(buf, id, ResetCode::Abort)
            });
        }
        self.stream.done.store(true, Ordering::Release);
        self.conn.task_done();
    }
}

/// Sends a response: the head, then the body within the stream's credit. A body that is
/// complete at once leaves with its head in one batch; a body known to be empty leaves as a
/// head marked `END`. A head larger than the wire allows is an error, sent as nothing.
pub(super) async fn send<B: AppBody>(
    stream: &Stream,
    conn: &Conn,
    response: http::Response<B>,
) -> Result<(), BoxError> {
    let (mut parts, body) = response.into_parts();
    // A large body whose length is known gets it as Content-Length, so the daemon need not
    // chunk it for the client. (A small one leaves whole with its head, and the daemon
    // gives it its length itself.)
    if let Some(n) = body.size_hint().exact()
        && n >= KEEP_FROM as u64
        && !parts.headers.contains_key(CONTENT_LENGTH)
        && !parts.headers.contains_key(TRANSFER_ENCODING)
    {
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    let head_len = ResponseHead::payload_len(header_fields(&parts));
    if head_len > MAX_RESPONSE_HEAD {
        return Err(format!(
            "the response head takes {head_len} bytes, more than the {MAX_RESPONSE_HEAD} \
             the worker wire allows"
        )
        .into());
    }
    let mut body = pin!(body);
    let mut out = Out {
        stream,
        conn,
        head: Some(&parts),
    };
    if body.is_end_stream() || body.size_hint().exact() == Some(0) {
        out.finish();
        return Ok(());
    }
    // One poll without waiting: a body that is ready now goes out with the head, and the
    // head of one that is not goes out at once.
    let mut next = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
        Poll::Ready(frame) => Some(frame.map(|f| f.map_err(Into::into))),
        Poll::Pending => {
            out.head(false);
            None
        }
    };
    loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => poll_fn(|cx| body.as_mut().poll_frame(cx))
                .await
                .map(|f| f.map_err(Into::into)),
        };
        let Some(frame) = frame else {
            out.finish();
            return Ok(());
        };
        // The wire has no trailers: they are dropped.
        if let Ok(data) = frame?.into_data() {
            let end = body.is_end_stream();
            out.data(data, end).await;
            if end {
                return Ok(());
            }
        }
    }
}

/// The response's frames, with the head held back until the first body bytes can join it.
struct Out<'a> {
    stream: &'a Stream,
    conn: &'a Conn,
    head: Option<&'a Parts>,
}

impl Out<'_> {
    /// Sends the head if it has not gone yet.
    fn head(&mut self, end: bool) {
        if let Some(parts) = self.head.take() {
            let id = self.stream.id;
            self.stream
                .send(self.conn, |buf| encode_head(buf, id, parts, end));
        }
    }

    /// Ends the response: an `END` head when nothing was sent yet, else an empty `END` data
    /// frame.
    fn finish(&mut self) {
        if self.head.is_some() {
            self.head(true);
        } else {
            self.frame(Bytes::new(), true);
        }
    }

    /// Sends body bytes within the stream's credit, in frames of at most `MAX_PAYLOAD`.
    async fn data(&mut self, mut data: Bytes, end: bool) {
        if data.is_empty() {
            if end {
                self.finish();
            }
            return;
        }
        while !data.is_empty() {
            let want = data.len().min(MAX_PAYLOAD);
            let mut n = self.stream.take_credit(want);
            if n == 0 {
                self.head(false);
                n = self.stream.credit(want).await;
            }
            let chunk = data.split_to(n);
            self.frame(chunk, end && data.is_empty());
        }
    }

    /// Appends one data frame, behind the head if that is still waiting. A large payload
    /// is written from the body's own bytes, not copied.
    fn frame(&mut self, data: Bytes, end: bool) {
        let head = self.head.take();
        let id = self.stream.id;
        self.stream.gather(self.conn, |out| {
            if let Some(parts) = head {
                encode_head(out.tail(), id, parts, false);
            }
            wire::gather_data(out, id, end, data);
        });
    }
}

fn encode_head(buf: &mut BytesMut, stream: u32, parts: &Parts, end: bool) {
    ResponseHead::encode_parts(
        buf,
        stream,
        end,
        parts.status.as_u16(),
        header_fields(parts),
    );
}

pub(super) fn header_fields(parts: &Parts) -> impl Iterator<Item = (&[u8], &[u8])> {
    parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
}
