//! A stream's request body as an upstream reads it.

use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use tokio::time::{Instant, Sleep};

/// A request body for an upstream, read from the stream as the upstream takes it (its
/// window opened as it goes), under the `EntityBody` gap timer.
pub(super) struct InBody {
    pub(super) recv: RecvStream,
    pub(super) gap: Option<Duration>,
    pub(super) timer: std::pin::Pin<Box<Sleep>>,
}

impl http_body::Body for InBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match this.recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = this.recv.flow_control().release_capacity(data.len());
                if let Some(gap) = this.gap {
                    this.timer.as_mut().reset(Instant::now() + gap);
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.gap.is_some() && this.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(std::io::ErrorKind::TimedOut.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
