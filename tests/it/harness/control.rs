//! Talking to the daemon's control socket: the SDK's client made blocking ([`Ctl`]), one
//! raw request that may fail ([`try_call`]), and a worker speaking the wire by hand
//! ([`WireWorker`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use portshare_proto::control::path;
use portshare_proto::wire::{self, Frame};

use super::http::{find, read_response};

/// A control connection (a session of its own): the SDK's [`portshare_client::Control`],
/// blocking on a runtime of its own, answering each request with its status and JSON body.
pub struct Ctl {
    control: portshare_client::Control,
    /// Declared after `control`, so the connection drops before the runtime that drives it.
    runtime: tokio::runtime::Runtime,
}

impl Ctl {
    pub fn connect(path: &Path) -> Ctl {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the control connection");
        let control = runtime
            .block_on(portshare_client::Control::connect(path))
            .expect("connect to the control socket");
        Ctl { control, runtime }
    }

    /// One request; the status and the JSON body (`null` when empty).
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let Ctl { control, runtime } = self;
        let method = http::Method::from_bytes(method.as_bytes()).expect("a method");
        let exchange = control.send(method, path, body.as_ref());
        let answer = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), exchange).await })
            .expect("an answer within 30 s")
            .expect("control request");
        let json = if answer.body().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(answer.body()).expect("JSON body")
        };
        (answer.status().as_u16(), json)
    }

    pub fn create_queue(&mut self, spec: serde_json::Value) -> serde_json::Value {
        let (status, body) = self.call("POST", path::QUEUES, Some(spec));
        assert!(status == 201 || status == 200, "{status} {body}");
        body
    }

    pub fn add_url(&mut self, queue: &str, url: &str) -> (u16, serde_json::Value) {
        self.call(
            "POST",
            &path::queue(queue, path::URLS),
            Some(serde_json::json!({ "url": url })),
        )
    }
}

/// One control request that may fail: the status and JSON body, or why there is none
/// (the daemon closed the connection, or did not answer within the stream's timeout).
pub fn try_call(
    stream: &mut UnixStream,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: portshare\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line: {head}"))?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let raw = &buf[end + 4..end + 4 + length];
                let json = if raw.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(raw).map_err(|e| format!("body: {e}"))?
                };
                return Ok((status, json));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A worker speaking the worker wire by hand: attached to a queue over the control socket,
/// frames written and read as the test says.
pub struct WireWorker {
    pub sock: UnixStream,
    buf: BytesMut,
}

impl WireWorker {
    /// Attaches to queue `queue` with `slots` slots (the queue must exist and be this
    /// process's to attach to).
    pub fn attach(control: &Path, queue: &str, slots: u32) -> WireWorker {
        WireWorker::attach_offering(control, queue, slots, wire::UPGRADE_PROTOCOL)
            .unwrap_or_else(|(status, head)| panic!("attach: {status}\n{head}"))
    }

    /// Attaches offering `upgrade` as the `Upgrade` value (the versions of the wire it
    /// speaks): the worker once the daemon answered 101, else the status and head it got.
    pub fn attach_offering(
        control: &Path,
        queue: &str,
        slots: u32,
        upgrade: &str,
    ) -> Result<WireWorker, (u16, String)> {
        let mut sock = UnixStream::connect(control).expect("connect to the control socket");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            sock,
            "POST /v1/queues/{queue}/attach HTTP/1.1\r\nHost: portshare\r\n\
             Connection: upgrade\r\nUpgrade: {upgrade}\r\n{}: {slots}\r\nContent-Length: 0\r\n\r\n",
            wire::SLOTS_HEADER
        )
        .expect("attach");
        let mut pre = Vec::new();
        let (status, head, _) = read_response(&mut sock, &mut pre, false);
        if status != 101 {
            return Err((status, head));
        }
        Ok(WireWorker {
            sock,
            buf: BytesMut::from(&pre[..]),
        })
    }

    /// The next frame from the daemon; `None` once it has closed the connection (or the
    /// read timed out).
    pub fn frame(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(frame) = wire::decode(&mut self.buf).expect("the daemon's frames") {
                return Some(frame);
            }
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next request head's stream, skipping other frames.
    pub fn next_head(&mut self) -> u32 {
        loop {
            match self.frame() {
                Some(Frame::Head { stream, .. }) => return stream,
                Some(_) => {}
                None => panic!("the daemon closed the worker connection before a request"),
            }
        }
    }

    /// Writes what `encode` appends, in one write.
    pub fn send(&mut self, encode: impl FnOnce(&mut BytesMut)) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode(&mut out);
        self.sock.write_all(&out)
    }
}
