//! A fake daemon: answers the control API on a Unix socket in the temp directory, upgrades
//! attach requests and hands the worker sockets to the test, which plays the daemon's side
//! of the wire.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use portshare_proto::Win32Error;
use portshare_proto::control::{
    AddUrl, AddUrlBatch, ApiError, QueueInfo, UrlAdded, UrlsAdded, Verbosity,
};
use portshare_proto::wire::{self, Frame, RequestHead, ResponseHead, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long any single expectation may take before the test fails.
pub(super) const PATIENCE: Duration = Duration::from_secs(5);

/// A control request the fake received.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Seen {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What the fake says to URL registrations.
#[derive(Debug, Default)]
pub(super) struct Behaviour {
    /// Warnings put on every `UrlAdded`.
    pub(super) warnings: Vec<String>,
    /// URLs containing this are refused with 183.
    pub(super) taken: Option<String>,
    /// The version of the wire the attach answers with; 0 is 1, as a daemon from before
    /// version 2 answers.
    pub(super) wire_version: u32,
}

struct State {
    behaviour: Behaviour,
    seen: Mutex<Vec<Seen>>,
    workers: mpsc::UnboundedSender<Wire>,
    control_closed: mpsc::UnboundedSender<()>,
}

pub(super) struct Fake {
    pub(super) path: PathBuf,
    state: Arc<State>,
    workers: mpsc::UnboundedReceiver<Wire>,
    control_closed: mpsc::UnboundedReceiver<()>,
    kill: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Fake {
    pub(super) fn start(behaviour: Behaviour) -> Fake {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "portshare-client-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the fake control socket");
        let (workers_tx, workers) = mpsc::unbounded_channel();
        let (closed_tx, control_closed) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            behaviour,
            seen: Mutex::new(Vec::new()),
            workers: workers_tx,
            control_closed: closed_tx,
        });
        let (kill, kill_rx) = watch::channel(0);
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((io, _)) = listener.accept().await else {
                        return;
                    };
                    // Only kills from now on apply to this connection.
                    let mut kill = kill_rx.clone();
                    kill.mark_unchanged();
                    tokio::spawn(connection(io, state.clone(), kill));
                }
            }
        });
        Fake {
            path,
            state,
            workers,
            control_closed,
            kill,
            accept,
        }
    }

    /// The control requests so far.
    pub(super) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The next worker that attaches.
    pub(super) async fn worker(&mut self) -> Wire {
        within(self.workers.recv())
            .await
            .expect("the fake is running")
    }

    /// Waits until a control connection is closed by the client.
    pub(super) async fn control_closed(&mut self) {
        within(self.control_closed.recv())
            .await
            .expect("the fake is running");
    }

    /// Closes every control connection, as a daemon that goes away does. (The test drops
    /// its worker sockets itself.)
    pub(super) fn kill_controls(&self) {
        self.kill.send_modify(|n| *n += 1);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Awaits `f`, failing the test after [`PATIENCE`].
pub(super) async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("timed out waiting")
}

async fn connection(mut io: UnixStream, state: Arc<State>, mut kill: watch::Receiver<u64>) {
    let mut buf = BytesMut::new();
    loop {
        let req = tokio::select! {
            r = read_request(&mut io, &mut buf) => r,
            _ = kill.changed() => return,
        };
        let Some(req) = req else {
            let _ = state.control_closed.send(());
            return;
        };
        state.seen.lock().unwrap().push(req.clone());
        let answer = if req.method != "POST" {
            json(
                404,
                &ApiError::new(Win32Error::FileNotFound, "no such endpoint"),
            )
        } else if req.path == "/v1/queues" {
            let spec = req.json();
            json(
                200,
                &QueueInfo {
                    name: spec["name"].as_str().unwrap_or("unnamed").to_owned(),
                    created: true,
                    length: 1000,
                    verbosity: Verbosity::Basic,
                    enabled: true,
                    linger_ms: 0,
                    queue_timer_ms: 120_000,
                    limits: Default::default(),
                    upstream: None,
                    held: false,
                    urls: Vec::new(),
                    access: Vec::new(),
                },
            )
        } else if req.path.ends_with("/urls") && req.json().get("urls").is_some() {
            let batch: AddUrlBatch = serde_json::from_slice(&req.body).expect("an AddUrlBatch");
            let taken = state.behaviour.taken.as_deref();
            match batch
                .urls
                .iter()
                .position(|a| taken.is_some_and(|t| a.url.contains(t)))
            {
                Some(i) => json(
                    409,
                    &ApiError::new(
                        Win32Error::AlreadyExists,
                        format!("{} is registered by another queue", batch.urls[i].url),
                    )
                    .at(i),
                ),
                None => json(
                    200,
                    &UrlsAdded {
                        urls: batch
                            .urls
                            .iter()
                            .map(|add| UrlAdded {
                                url: add.url.to_ascii_lowercase(),
                                listening: vec!["127.0.0.1:8080".into()],
                                warnings: state.behaviour.warnings.clone(),
                            })
                            .collect(),
                    },
                ),
            }
        } else if req.path.ends_with("/urls") {
            let add: AddUrl = serde_json::from_slice(&req.body).expect("an AddUrl");
            match &state.behaviour.taken {
                Some(taken) if add.url.contains(taken.as_str()) => json(
                    409,
                    &ApiError::new(
                        Win32Error::AlreadyExists,
                        format!("{} is registered by another queue", add.url),
                    ),
                ),
                _ => json(
                    200,
                    &UrlAdded {
                        url: add.url.to_ascii_lowercase(),
                        listening: vec!["127.0.0.1:8080".into()],
                        warnings: state.behaviour.warnings.clone(),
                    },
                ),
            }
        } else if req.path.ends_with("/attach") {
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                 Upgrade: portshare-worker/{}\r\n\r\n",
                state.behaviour.wire_version.max(1)
            );
            io.write_all(head.as_bytes()).await.unwrap();
            let _ = state.workers.send(Wire { io, buf });
            return;
        } else {
            json(
                404,
                &ApiError::new(Win32Error::FileNotFound, "no such endpoint"),
            )
        };
        if io.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn json<T: serde::Serialize>(status: u16, value: &T) -> Vec<u8> {
    let body = serde_json::to_vec(value).unwrap();
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Reads one HTTP/1.1 request; `None` at end of stream.
async fn read_request(io: &mut UnixStream, buf: &mut BytesMut) -> Option<Seen> {
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if io.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let head = String::from_utf8(buf.split_to(head_len).to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut line = lines.next().unwrap().split(' ');
    let method = line.next().unwrap().to_owned();
    let path = line.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    while buf.len() < len {
        if io.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    let body = buf.split_to(len).to_vec();
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// The daemon's end of a worker connection.
pub(super) struct Wire {
    io: UnixStream,
    buf: BytesMut,
}

/// A whole response as the daemon would collect it.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) head: ResponseHead,
    /// Whether the head itself carried `END`.
    pub(super) head_end: bool,
    pub(super) body: Vec<u8>,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> Option<&[u8]> {
        self.head
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &v[..])
    }
}

impl Wire {
    pub(super) async fn send(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        let mut out = BytesMut::new();
        encode(&mut out);
        self.io.write_all(&out).await.unwrap();
    }

    /// Sends a request head.
    pub(super) async fn request(
        &mut self,
        stream: u32,
        end: bool,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) {
        let head = request_head(method, target, headers);
        self.send(|b| head.encode(b, stream, end)).await;
    }

    /// The next frame.
    pub(super) async fn frame(&mut self) -> Frame {
        within(async {
            loop {
                if let Some(frame) = wire::decode(&mut self.buf).unwrap() {
                    return frame;
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the worker closed the connection");
            }
        })
        .await
    }

    /// Collects the responses of `streams`, granting credit for all body bytes received.
    /// Panics on a reset.
    pub(super) async fn answers(&mut self, streams: &[u32]) -> Vec<Answer> {
        let mut open: Vec<Option<Answer>> = streams.iter().map(|_| None).collect();
        let mut done = 0;
        while done < streams.len() {
            let frame = self.frame().await;
            let (stream, end) = match &frame {
                Frame::Head { stream, end, .. } | Frame::Data { stream, end, .. } => {
                    (*stream, *end)
                }
                Frame::Window { .. } => continue,
                other => panic!("unexpected frame {other:?}"),
            };
            let i = streams
                .iter()
                .position(|s| *s == stream)
                .unwrap_or_else(|| panic!("a frame for stream {stream}"));
            match frame {
                Frame::Head { payload, .. } => {
                    assert!(open[i].is_none(), "two heads on stream {stream}");
                    open[i] = Some(Answer {
                        head: ResponseHead::decode(payload).unwrap(),
                        head_end: end,
                        body: Vec::new(),
                    });
                }
                Frame::Data { data, .. } => {
                    let answer = open[i].as_mut().expect("data after the head");
                    answer.body.extend_from_slice(&data);
                    if !data.is_empty() {
                        let n = data.len() as u32;
                        self.send(|b| wire::encode_window(b, stream, n)).await;
                    }
                }
                _ => unreachable!(),
            }
            if end {
                done += 1;
            }
        }
        open.into_iter().map(|a| a.unwrap()).collect()
    }

    /// The one response to `stream`.
    pub(super) async fn answer(&mut self, stream: u32) -> Answer {
        self.answers(&[stream]).await.pop().unwrap()
    }
}

pub(super) fn request_head(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        method: Bytes::copy_from_slice(method.as_bytes()),
        target: Bytes::copy_from_slice(target.as_bytes()),
        version: Version::Http11,
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::copy_from_slice(n.as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect(),
    }
}
