//! The upstream exchange: a request forwarded to an upstream server over HTTP/1.1 with the
//! daemon's forwarding headers, its body pumped from the client, the response relayed back.
//!
//! This module owns the request an upstream gets and the pumping of both bodies. It must not
//! touch the upstream's connections (`crate::upstream` keeps and reuses them) or the
//! response's framing ([`encode`](super::encode)).

use bytes::Bytes;
use http_body_util::BodyExt;
use portshare_proto::header;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::encode::Response;
use super::headers::{app_headers, routed_host};
use super::tls_info::TlsInfo;
use super::to_worker::Origin;
use super::{Conn, Facts, Next, poll_once};
use crate::body::BodyIn;
use crate::head::Head;
use crate::queue::Queue;
use crate::upstream::{UpBody, Upstream};

/// The request an upstream gets, for either protocol: `head`'s headers as the application
/// gets them ([`app_headers`], with the `authority` routing used), `target` as routing
/// cooked it, the forwarding headers for a client at `peer` over `proto` (`http` or
/// `https`), and the daemon's metadata.
#[allow(clippy::too_many_arguments)]
pub(crate) fn upstream_request(
    head: &Head<'_>,
    authority: Option<&[u8]>,
    target: &[u8],
    peer: std::net::SocketAddr,
    from: Origin<'_>,
    tls: Option<&TlsInfo>,
    binding: &crate::shared::Destination,
    id: u64,
) -> http::request::Builder {
    let proto = from
        .proto
        .unwrap_or(if tls.is_some() { "https" } else { "http" });
    let mut req = http::Request::builder()
        .method(head.method())
        .uri(target)
        .version(http::Version::HTTP_11);
    for (name, value) in app_headers(head, authority) {
        req = req.header(name, value);
    }
    let client = peer.ip();
    let host = routed_host(head, authority).map(String::from_utf8_lossy);
    let mut forwarded = match client {
        std::net::IpAddr::V4(a) => format!("for={a};proto={proto}"),
        std::net::IpAddr::V6(a) => format!("for=\"[{a}]\";proto={proto}"),
    };
    if let Some(h) = &host {
        forwarded.push_str(";host=\"");
        forwarded.extend(h.chars().filter(|c| *c != '"' && *c != '\\'));
        forwarded.push('"');
        req = req.header("x-forwarded-host", h.as_ref());
    }
    if let Some(tls) = tls {
        req = req.header(header::TLS, tls.header.as_ref());
        if let Some(cert) = &tls.client_cert {
            req = req.header(header::CLIENT_CERT, cert.as_ref());
        }
    }
    req.header("forwarded", forwarded)
        .header("x-forwarded-for", client.to_string())
        .header("x-forwarded-proto", proto)
        .header(header::RAW_URL, head.target())
        .header(header::CLIENT_ADDR, from.peer)
        .header(header::LOCAL_ADDR, from.local)
        .header(header::URL_PREFIX, &binding.prefix)
        .header(header::URL_CONTEXT, binding.context)
        .header(header::REQUEST_ID, id)
}

impl Conn {
    /// The request an upstream gets; `authority` is that of an absolute-form target
    /// routing used (see [`app_headers`]).
    pub(super) fn upstream_request(
        &self,
        head: &Head<'_>,
        authority: Option<&[u8]>,
        binding: &crate::shared::Destination,
        id: u64,
    ) -> http::request::Builder {
        let from = Origin {
            peer: &self.peer_text,
            local: &self.local_text,
            proto: self.proto,
        };
        upstream_request(
            head,
            authority,
            &self.scratch,
            self.peer,
            from,
            self.tls.as_deref(),
            binding,
            id,
        )
    }

    /// Forwards the request to an upstream server and relays its response.
    pub(super) async fn exchange_upstream(
        &mut self,
        req: http::request::Builder,
        up: &Upstream,
        body: &mut BodyIn,
        facts: Facts,
        queue: &Queue,
    ) -> Next {
        let mut sender = match up.connection(&self.shared.upstreams).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(queue = queue.name(), upstream = %up.address, error = %e, "upstream failed");
                return self.unreachable(queue, &e);
            }
        };
        let (tx, up_body): (Option<mpsc::Sender<Bytes>>, UpBody) = if body.is_done() {
            (
                None,
                http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
            )
        } else {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            (Some(tx), ChannelBody(rx).boxed())
        };
        // What the `http` crate takes for no request (a method it cannot hold, say).
        let Ok(req) = req.body(up_body) else {
            return self.bad_request(queue);
        };
        let mut tx = tx;
        let mut body_until = self.timers.entity_body.fires_at(Instant::now());
        let response = sender.send_request(req);
        tokio::pin!(response);
        let resp = loop {
            // Pump the body while waiting for the response head.
            match self.feed(body, &mut tx).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(()) => return self.bad_body(false, queue),
            }
            // The response head, or more of the body while the upstream reads it. The
            // response future loses nothing when it loses: it is pinned outside the loop and
            // polled again; a read of more body that loses has read nothing.
            tokio::select! {
                r = &mut response => break r,
                r = self.more_body(&mut body_until, queue), if tx.is_some() => {
                    if let Err(next) = r {
                        return next;
                    }
                }
            }
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(queue = queue.name(), upstream = %up.address, error = %e, "upstream failed");
                return self.abandoned(None, queue);
            }
        };
        let (parts, mut incoming) = resp.into_parts();
        let mut out = Response::new(facts);
        out.close |= self.shared.stopping();
        let end = http_body::Body::is_end_stream(&incoming);
        let hint = http_body::Body::size_hint(&incoming).exact();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        if !out.head(&mut self.wr, parts.status.as_u16(), headers, end, hint) {
            return Next::Abort;
        }
        while !out.finished {
            // Keep feeding the request body while the response streams.
            match self.feed(body, &mut tx).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(()) => return self.bad_body(true, queue),
            }
            // Write out only when the next frame is not already here: a small response
            // leaves in one write, head and body together.
            let next = {
                let mut frame = std::pin::pin!(incoming.frame());
                match poll_once(frame.as_mut()).await {
                    Some(f) => f,
                    None => {
                        if !self.send(queue).await {
                            return Next::Abort;
                        }
                        if tx.is_none() {
                            frame.await
                        } else {
                            // The upstream may want more body before it says more. The
                            // loser is dropped: polling for a frame takes none until one
                            // is ready, and a read of more body that loses read nothing.
                            tokio::select! {
                                f = frame => f,
                                r = self.more_body(&mut body_until, queue) => match r {
                                    Ok(()) => continue,
                                    Err(next) => return next,
                                },
                            }
                        }
                    }
                }
            };
            match next {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        let end = http_body::Body::is_end_stream(&incoming);
                        if !out.data(&mut self.wr, &data, end) {
                            return Next::Abort;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(queue = queue.name(), upstream = %up.address, error = %e, "upstream body failed");
                    return self.abandoned(None, queue);
                }
                None => {
                    if !out.data(&mut self.wr, &[], true) {
                        return Next::Abort;
                    }
                }
            }
        }
        drop(tx);
        if !self.send(queue).await {
            return Next::Abort;
        }
        if body.is_done() {
            up.put_back(sender, &self.shared.upstreams);
        }
        if out.close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Moves body bytes already read from the client on to an upstream request. `Ok(true)`
    /// when it moved some (or finished the body), `Err` when the client framed it wrongly.
    async fn feed(
        &mut self,
        body: &mut BodyIn,
        tx: &mut Option<mpsc::Sender<Bytes>>,
    ) -> Result<bool, ()> {
        let Some(sink) = tx else {
            return Ok(false);
        };
        if self.rd.is_empty() {
            return Ok(false);
        }
        let (data, done) = body.take(&mut self.rd, 64 * 1024).map_err(|_| ())?;
        if (!data.is_empty() && sink.send(data).await.is_err()) || done {
            *tx = None;
        }
        Ok(true)
    }
}

/// A request body fed from a channel, for upstream requests.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}
