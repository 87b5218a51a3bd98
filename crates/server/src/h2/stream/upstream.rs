//! The upstream side of a stream: the request relayed to an upstream server over HTTP/1.1
//! ([`crate::relay`]), its body framed from the stream's DATA as the upstream takes it, and
//! the response relayed back as HEADERS and DATA under the same HTTP/2 flow control as a
//! worker's.

use super::*;

/// Request body bytes held for the upstream before the client is read again.
const BODY_AHEAD: usize = 64 * 1024;

impl Ctx<'_> {
    /// Answers 503 for an upstream that cannot be reached.
    fn not_available(&self, out: &mut Out, up: &Upstream, e: &std::io::Error) {
        up.warn_failed(self.queue.name(), e);
        let rejection = crate::owner::rejection(e);
        self.log(Some(rejection.status), rejection.reason);
        out.page(self.settings, rejection, Detail::Standard, Some(1));
    }

    /// Answers 502 for an upstream that failed before its response or sent a head the
    /// daemon refuses.
    fn bad_gateway(&self, out: &mut Out, up: &Upstream, why: &str) {
        up.warn_failed(self.queue.name(), &why);
        self.log(Some(502), Reason::BadGateway);
        let rejection = Rejection {
            status: 502,
            reason: Reason::BadGateway,
        };
        out.page(self.settings, rejection, Detail::Standard, None);
    }

    /// Forwards the request (its head in `req`) to an upstream server over HTTP/1.1,
    /// streaming the body in `framing`, and relays its response.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn to_upstream(
        &self,
        out: &mut Out,
        up: &Upstream,
        req: Vec<u8>,
        framing: ReqFraming,
        mut body: RecvStream,
        has_body: bool,
        idempotent: bool,
    ) {
        let share = self.link.shared.upstreams.clone();
        let mut c = match up.connection(&share).await {
            Ok(c) => c,
            Err(e) => return self.not_available(out, up, &e),
        };
        c.wr = req;
        c.sent = 0;
        // As on HTTP/1: once more on a new connection if a pooled one was closed.
        let mut retry = c.reused && !has_body && idempotent;
        let mut body_done = !has_body;
        let mut body_until = self.timers.entity_body.fires_at(Instant::now());
        // The head goes out at once; a failure shows at the first turn.
        c.push();
        let resp = loop {
            match relay::parse_response(&c.rd, self.head_method, &mut c.spare) {
                Ok(None) => {}
                Ok(Some(h)) if h.status == 101 => {
                    return self.bad_gateway(out, up, "101 over HTTP/2");
                }
                Ok(Some(h)) if h.status < 200 => {
                    // Interim responses are not relayed over HTTP/2 (the daemon sent its
                    // own 100 Continue).
                    let _ = c.rd.split_to(h.len);
                    h.recycle(&mut c.spare);
                    retry = false;
                    continue;
                }
                Ok(Some(h)) => break h,
                Err(e) => return self.bad_gateway(out, up, e.0),
            }
            match wait(
                &mut c,
                &mut body,
                out,
                body_done,
                body_until,
                relay::MAX_RESPONSE_HEAD + 1,
            )
            .await
            {
                Got::Upstream(Ok(Turn::Moved)) => {}
                Got::Upstream(Ok(Turn::Eof) | Err(_)) if retry && c.rd.is_empty() => {
                    retry = false;
                    let mut fresh = match up.connect(&share).await {
                        Ok(f) => f,
                        Err(e) => return self.not_available(out, up, &e),
                    };
                    std::mem::swap(&mut fresh.wr, &mut c.wr);
                    c = fresh;
                }
                // Closed with the request in hand on a new connection, as a worker may
                // leave; on a kept one, the request may not be sent again: 502.
                Got::Upstream(Ok(Turn::Eof) | Err(_)) if c.rd.is_empty() && !c.reused => {
                    up.warn_failed(self.queue.name(), &"closed before a response");
                    self.log(None, Reason::ConnectionAbandonedByReqQueue);
                    out.reset(h2::Reason::INTERNAL_ERROR);
                    return;
                }
                Got::Upstream(Ok(Turn::Eof)) => {
                    return self.bad_gateway(out, up, "closed before a response");
                }
                Got::Upstream(Err(e)) => return self.bad_gateway(out, up, &e.to_string()),
                Got::Client(from) => {
                    let mut request = (&mut body, &mut body_done, &mut body_until);
                    if !self.take_client(out, &mut c, framing, from, &mut request) {
                        return;
                    }
                }
            }
        };
        let status = resp.status;
        let end = matches!(resp.delimit, Delimit::None | Delimit::Framed(BodyIn::Done));
        // One Content-Length, normalized, judged as an application's.
        let mut num = itoa_buf();
        let mut delimit = resp.delimit.clone();
        let mut relay = Relay::default();
        let head = self.response_head(
            &mut relay,
            status,
            client_fields(&resp, &c.rd[..resp.len], &mut num),
            end,
            None,
        );
        let Some(head) = head else {
            return self.bad_gateway(out, up, "a response the client cannot be given");
        };
        let upstream_close = resp.close;
        let _ = c.rd.split_to(resp.len);
        resp.recycle(&mut c.spare);
        if !self.send_head(out, &mut relay, head, end) {
            return;
        }
        let mut ended = false;
        while !relay.finished {
            loop {
                let (data, done) = match relay::take_body(&mut delimit, &mut c.rd, usize::MAX) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(queue = self.queue.name(), upstream = %up.address, error = e, "upstream body failed");
                        self.log(None, Reason::ConnectionAbandonedByReqQueue);
                        out.reset(h2::Reason::INTERNAL_ERROR);
                        return;
                    }
                };
                if data.is_empty() && !done {
                    break;
                }
                match self.send_body(out, &mut relay, data, done).await {
                    Ok(()) => {}
                    Err(None) => {
                        out.reset(h2::Reason::INTERNAL_ERROR);
                        return;
                    }
                    Err(Some(f)) => {
                        self.failed(f);
                        out.reset(h2::Reason::CANCEL);
                        return;
                    }
                }
                if done {
                    break;
                }
            }
            if relay.finished {
                break;
            }
            if ended {
                if delimit == Delimit::Close
                    && self
                        .send_body(out, &mut relay, Bytes::new(), true)
                        .await
                        .is_ok()
                {
                    break;
                }
                tracing::debug!(queue = self.queue.name(), upstream = %up.address, "upstream closed mid-body");
                self.log(None, Reason::ConnectionAbandonedByReqQueue);
                out.reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            match wait(&mut c, &mut body, out, body_done, body_until, usize::MAX).await {
                Got::Upstream(Ok(Turn::Moved)) => {}
                Got::Upstream(Ok(Turn::Eof)) => ended = true,
                Got::Upstream(Err(e)) => {
                    tracing::debug!(queue = self.queue.name(), upstream = %up.address, error = %e, "upstream body failed");
                    self.log(None, Reason::ConnectionAbandonedByReqQueue);
                    out.reset(h2::Reason::INTERNAL_ERROR);
                    return;
                }
                Got::Client(from) => {
                    let mut request = (&mut body, &mut body_done, &mut body_until);
                    if !self.take_client(out, &mut c, framing, from, &mut request) {
                        return;
                    }
                }
            }
        }
        if body_done && c.pending() == 0 && c.rd.is_empty() && !upstream_close && !ended {
            up.put_back(c, &share);
        }
    }

    /// Takes what came from the client: a piece of the request body (or its end), framed
    /// for the upstream; the EntityBody gap passed, or the client's reset, which end the
    /// exchange (false, the stream reset or gone). `request` is the body, whether it is
    /// done, and when its EntityBody timer fires.
    fn take_client(
        &self,
        out: &mut Out,
        c: &mut UpConn,
        framing: ReqFraming,
        from: FromClient,
        (body, body_done, body_until): &mut (&mut RecvStream, &mut bool, &mut Instant),
    ) -> bool {
        match from {
            FromClient::Body(None) => {
                **body_done = true;
                relay::frame_body(c.room(), framing, &[], true);
                true
            }
            FromClient::Body(Some(Ok(data))) => {
                let _ = body.flow_control().release_capacity(data.len());
                **body_until = self.timers.entity_body.fires_at(Instant::now());
                **body_done = body.is_end_stream();
                relay::frame_body(c.room(), framing, &data, **body_done);
                true
            }
            FromClient::Body(Some(Err(_))) => {
                out.reset(h2::Reason::CANCEL);
                false
            }
            FromClient::Gap => {
                self.log(None, Reason::TimerEntityBody);
                out.reset(h2::Reason::CANCEL);
                false
            }
            FromClient::Reset => false,
        }
    }
}

/// What happened while an upstream exchange waited.
enum Got {
    /// The upstream connection turned.
    Upstream(std::io::Result<Turn>),
    /// Something came from the client.
    Client(FromClient),
}

/// What came from the client while an upstream exchange waited.
enum FromClient {
    /// A piece of the request body, its end, or the stream's failure.
    Body(Option<Result<Bytes, h2::Error>>),
    /// The EntityBody gap passed without body bytes.
    Gap,
    /// The client reset the stream.
    Reset,
}

/// Waits for the upstream (readable, or writable while request bytes wait), for more of
/// the request body while there is room for it, or for the client's reset.
async fn wait(
    c: &mut UpConn,
    body: &mut RecvStream,
    out: &mut Out,
    body_done: bool,
    body_until: Instant,
    limit: usize,
) -> Got {
    let want_body = !body_done && c.pending() < BODY_AHEAD;
    tokio::select! {
        r = c.io.ready(c.pending() > 0) => Got::Upstream(r.and_then(|()| c.turn(limit, limit == usize::MAX))),
        d = timeout_at(body_until, body.data()), if want_body => match d {
            Ok(d) => Got::Client(FromClient::Body(d)),
            Err(_) => Got::Client(FromClient::Gap),
        },
        () = out.client_reset() => Got::Client(FromClient::Reset),
    }
}
