//! The services the SDK serves, and [`service_fn`] to make one of an async function.

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use crate::Body;
use crate::error::BoxError;

/// What [`QueueBuilder::serve`](crate::QueueBuilder::serve) accepts, named once for the
/// code that runs it: a cloneable, sendable service from `Request<Body>` to `Response<B>`.
pub(crate) trait AppService<B>:
    Service<Request<Body>, Response = Response<B>, Error: Into<BoxError>, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> AppService<B> for S
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}

/// The response bodies an [`AppService`] may produce.
pub(crate) trait AppBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> AppBody for B
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// Makes a service of an async function from request to response, like
/// `tower::service_fn` but without the tower dependency.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use portshare_client::{Body, service_fn};
///
/// let hello = service_fn(|req: Request<Body>| async move {
///     let text = format!("hello from {}\n", req.uri().path());
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
/// });
/// # let _ = hello;
/// ```
pub fn service_fn<F>(f: F) -> ServiceFn<F> {
    ServiceFn { f }
}

/// The service [`service_fn`] makes.
#[derive(Clone, Copy)]
pub struct ServiceFn<F> {
    f: F,
}

impl<F> fmt::Debug for ServiceFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceFn")
    }
}

impl<F, Fut, B, E> Service<Request<Body>> for ServiceFn<F>
where
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<B>, E>>,
{
    type Response = Response<B>;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Fut {
        (self.f)(req)
    }
}
