//! The SDK against a fake daemon: control requests, the upgrade, and the worker wire as
//! the daemon speaks it.

mod fake;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use portshare_proto::wire::{self, Frame, INITIAL_WINDOW, ResetCode};
use tokio::sync::{Barrier, Semaphore, mpsc};
use tower_service::Service;

use self::fake::{Behaviour, Fake, within};
use crate::error::BoxError;
use crate::{Body, Error, Queue, QueueBuilder, service_fn};

type AppResponse = Response<BoxBody<Bytes, BoxError>>;

/// The application under test; what it does depends on the path.
#[derive(Clone)]
struct App {
    /// Paths of requests that reached a waiting point.
    started: mpsc::UnboundedSender<String>,
    /// Paths of requests whose task was dropped before answering.
    dropped: mpsc::UnboundedSender<String>,
    /// `/app/gate` waits for a permit.
    gate: Arc<Semaphore>,
    /// `/app/barrier` waits until this many requests are in hand.
    barrier: Arc<Barrier>,
}

struct Probes {
    started: mpsc::UnboundedReceiver<String>,
    dropped: mpsc::UnboundedReceiver<String>,
    gate: Arc<Semaphore>,
}

fn app(barrier: usize) -> (App, Probes) {
    let (started, started_rx) = mpsc::unbounded_channel();
    let (dropped, dropped_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let app = App {
        started,
        dropped,
        gate: gate.clone(),
        barrier: Arc::new(Barrier::new(barrier)),
    };
    let probes = Probes {
        started: started_rx,
        dropped: dropped_rx,
        gate,
    };
    (app, probes)
}

struct DropSignal(mpsc::UnboundedSender<String>, String);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(self.1.clone());
    }
}

fn text(s: impl Into<Bytes>) -> AppResponse {
    Response::new(Full::new(s.into()).map_err(|e| match e {}).boxed())
}

impl App {
    async fn handle(self, req: Request<Body>) -> Result<AppResponse, BoxError> {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/app/echo" => Ok(Response::new(req.into_body().map_err(Into::into).boxed())),
            "/app/empty" => {
                let mut r = Response::new(Empty::new().map_err(|e| match e {}).boxed());
                *r.status_mut() = StatusCode::NO_CONTENT;
                Ok(r)
            }
            "/app/fail" => Err("failing on purpose".into()),
            "/app/large" => Ok(text(vec![b'l'; 100_000])),
            "/app/huge-head" => {
                let mut r = text("never sent");
                let value = "v".repeat(wire::MAX_RESPONSE_HEAD);
                r.headers_mut().insert("x-huge", value.parse()?);
                Ok(r)
            }
            "/app/panic" => panic!("panicking on purpose"),
            "/app/hang" => {
                let _signal = DropSignal(self.dropped.clone(), path.clone());
                let _ = self.started.send(path);
                std::future::pending().await
            }
            "/app/gate" => {
                let _ = self.started.send(path);
                self.gate.acquire().await?.forget();
                Ok(text("released\n"))
            }
            "/app/barrier" => {
                self.barrier.wait().await;
                Ok(text(req.uri().query().unwrap_or("").to_owned()))
            }
            _ => {
                let ctx = req
                    .headers()
                    .get("portshare-url-context")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                let body = req.into_body().collect().await?.to_bytes();
                Ok(text(format!(
                    "{} {} ctx={ctx} body={}",
                    "ok",
                    path,
                    body.len()
                )))
            }
        }
    }
}

impl Service<Request<Body>> for App {
    type Response = AppResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<AppResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.clone().handle(req))
    }
}

/// Shuts `running` down as a daemon sees it: each worker connection sends its drain frame,
/// and the daemon, holding no request of it, closes it.
async fn shut_down(running: crate::Running, wires: Vec<fake::Wire>) {
    let shutdown = tokio::spawn(running.shutdown());
    for mut wire in wires {
        while wire.frame().await != Frame::Drain {}
    }
    within(shutdown).await.unwrap().unwrap();
}

fn builder(fake: &Fake) -> QueueBuilder {
    Queue::builder("my app")
        .url_with_context("http://+:8080/App/", 7)
        .control(&fake.path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_attaches_and_answers_a_get() {
    let mut fake = Fake::start(Behaviour {
        warnings: vec!["nothing listens on 10.0.0.1:8080".into()],
        ..Behaviour::default()
    });
    let (app, _probes) = app(1);
    let running = within(builder(&fake).slots(8).length(50).serve(app))
        .await
        .unwrap();
    assert_eq!(running.urls(), ["http://+:8080/app/"]);
    assert_eq!(running.warnings(), ["nothing listens on 10.0.0.1:8080"]);

    let seen = fake.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/queues")
    );
    assert_eq!(
        seen[0].json(),
        serde_json::json!({"name": "my app", "mode": "open_or_create", "length": 50})
    );
    assert_eq!(seen[1].path, "/v1/queues/my%20app/urls");
    assert_eq!(
        seen[1].json(),
        serde_json::json!({"url": "http://+:8080/App/", "context": 7})
    );
    assert_eq!(seen[2].path, "/v1/queues/my%20app/attach");
    // Every version the SDK speaks; the fake daemon, like one from before version 2,
    // answers `portshare-worker/1`.
    assert_eq!(
        seen[2].header("upgrade"),
        Some("portshare-worker/2, portshare-worker/1")
    );
    assert_eq!(seen[2].header("connection"), Some("Upgrade"));
    assert_eq!(seen[2].header("portshare-slots"), Some("8"));
    assert_eq!(seen[2].header("host"), Some("portshare"));

    let mut wire = fake.worker().await;
    wire.request(
        1,
        true,
        "GET",
        "/app/x?y=1",
        &[("Host", "a"), ("portshare-url-context", "7")],
    )
    .await;
    // The head and the whole body of a ready response leave together, END on the data.
    let Frame::Head {
        stream: 1,
        end: false,
        payload,
    } = wire.frame().await
    else {
        panic!("expected a head");
    };
    assert_eq!(wire::ResponseHead::decode(payload).unwrap().status, 200);
    let Frame::Data {
        stream: 1,
        end: true,
        data,
    } = wire.frame().await
    else {
        panic!("expected the body");
    };
    assert_eq!(&data[..], b"ok /app/x ctx=7 body=0");

    // An empty body is a head marked END and nothing else.
    wire.request(3, true, "GET", "/app/empty", &[]).await;
    let answer = wire.answer(3).await;
    assert_eq!(answer.head.status, 204);
    assert!(answer.head_end && answer.body.is_empty());

    // A request http cannot represent is answered 400 by the SDK itself.
    wire.request(5, true, "BAD METHOD", "/app/x", &[]).await;
    let answer = wire.answer(5).await;
    assert_eq!((answer.head.status, answer.head_end), (400, true));

    // A header http cannot hold is skipped, not fatal.
    wire.request(
        7,
        true,
        "GET",
        "/app/y",
        &[("bad name", "v"), ("portshare-url-context", "7")],
    )
    .await;
    assert_eq!(wire.answer(7).await.body, b"ok /app/y ctx=7 body=0");

    shut_down(running, vec![wire]).await;
}

/// The daemon's side of an echoed body.
#[derive(Default)]
struct Echo {
    /// Request body bytes the worker will still take.
    credit: usize,
    /// Response body bytes the worker may still send.
    window: usize,
    /// Window frames received.
    grants: usize,
    head: Option<wire::ResponseHead>,
    echoed: Vec<u8>,
    ended: bool,
}

impl Echo {
    /// Takes a frame from the worker; returns the credit to grant for response bytes.
    fn take(&mut self, frame: Frame) -> Option<u32> {
        match frame {
            Frame::Window { stream: 1, credit } => {
                self.credit += credit as usize;
                self.grants += 1;
                None
            }
            Frame::Head {
                stream: 1,
                payload,
                end: false,
            } => {
                self.head = Some(wire::ResponseHead::decode(payload).unwrap());
                None
            }
            Frame::Data {
                stream: 1,
                data,
                end,
            } => {
                assert!(
                    data.len() <= self.window,
                    "a data frame of {} bytes with {} of window left",
                    data.len(),
                    self.window
                );
                self.window -= data.len();
                self.echoed.extend_from_slice(&data);
                self.ended = end;
                (!data.is_empty()).then(|| {
                    self.window += data.len();
                    data.len() as u32
                })
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A large body whose length is known leaves with a `content-length`, so the daemon can
/// frame it for the client without chunks (a small one leaves whole with its head and
/// gets none: see `holds_as_many_requests_as_slots_and_answers_them_all`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_of_known_length_gets_its_content_length() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    let mut wire = fake.worker().await;
    wire.request(2, true, "GET", "/app/large", &[]).await;
    let answers = wire.answers(&[2]).await;
    assert_eq!(answers[0].head.status, 200);
    assert_eq!(answers[0].header("content-length"), Some(&b"100000"[..]));
    assert_eq!(answers[0].body, vec![b'l'; 100_000]);
    shut_down(running, vec![wire]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_large_body_both_ways_within_the_windows() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    let mut wire = fake.worker().await;

    let total = 3 * INITIAL_WINDOW as usize + 12_345;
    let sent: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let len = total.to_string();
    wire.request(1, false, "POST", "/app/echo", &[("content-length", &len)])
        .await;
    let mut echo = Echo {
        credit: INITIAL_WINDOW as usize,
        window: INITIAL_WINDOW as usize,
        ..Echo::default()
    };
    let mut offset = 0;
    while !echo.ended {
        if offset < total && echo.credit > 0 {
            let n = echo.credit.min(32 * 1024).min(total - offset);
            let chunk = &sent[offset..offset + n];
            offset += n;
            echo.credit -= n;
            wire.send(|b| wire::encode_data(b, 1, offset == total, chunk))
                .await;
        } else {
            let frame = wire.frame().await;
            if let Some(n) = echo.take(frame) {
                wire.send(|b| wire::encode_window(b, 1, n)).await;
            }
        }
    }
    let (head, echoed, grants) = (echo.head, echo.echoed, echo.grants);
    assert_eq!(head.expect("a head").status, 200);
    assert!(echoed == sent, "the echo differs");
    assert!(
        grants >= 3,
        "the body's credit came back in {grants} window frames"
    );
    shut_down(running, vec![wire]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credit_of_a_body_nobody_reads_comes_back() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    let mut wire = fake.worker().await;

    // The app answers /app/empty without reading the body.
    wire.request(1, false, "POST", "/app/empty", &[]).await;
    let window = INITIAL_WINDOW as usize;
    wire.send(|b| wire::encode_data(b, 1, false, &vec![b'x'; window]))
        .await;
    // The answer, and the window's credit of the body dropped unread, in either order (the
    // app lets go of the request when it likes). Both are waited for, as the daemon would
    // wait: a body whose end had arrived before the drop would need no credit back at all.
    let (mut answered, mut granted) = (false, 0);
    while !answered || granted < window {
        match wire.frame().await {
            Frame::Window { stream: 1, credit } => granted += credit as usize,
            Frame::Head {
                stream: 1,
                end: true,
                payload,
            } => {
                assert_eq!(wire::ResponseHead::decode(payload).unwrap().status, 204);
                answered = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(granted, window);
    // The rest of the body arrives after the body was dropped: discarded, credit returned.
    wire.send(|b| wire::encode_data(b, 1, false, &[b'y'; 1000]))
        .await;
    wire.send(|b| wire::encode_data(b, 1, true, b"")).await;
    while granted < window + 1000 {
        match wire.frame().await {
            Frame::Window { stream: 1, credit } => granted += credit as usize,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(granted, window + 1000);
    shut_down(running, vec![wire]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_as_many_requests_as_slots_and_answers_them_all() {
    const SLOTS: u32 = 64;
    let mut fake = Fake::start(Behaviour::default());
    // Every request waits until all of them are in hand.
    let (app, _probes) = app(SLOTS as usize);
    let running = within(builder(&fake).slots(SLOTS).serve(app))
        .await
        .unwrap();
    let mut wire = fake.worker().await;
    let streams: Vec<u32> = (1..=SLOTS).map(|i| i * 2).collect();
    let heads: Vec<_> = streams
        .iter()
        .map(|s| {
            (
                *s,
                fake::request_head("GET", &format!("/app/barrier?{s}"), &[]),
            )
        })
        .collect();
    wire.send(|b| {
        for (stream, head) in &heads {
            head.encode(b, *stream, true);
        }
    })
    .await;
    let answers = wire.answers(&streams).await;
    for (stream, answer) in streams.iter().zip(&answers) {
        assert_eq!(answer.head.status, 200);
        assert_eq!(answer.body, stream.to_string().as_bytes());
        assert_eq!(
            answer.header("content-length"),
            None,
            "no framing headers added"
        );
    }
    shut_down(running, vec![wire]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_drops_the_service_future_and_silences_the_stream() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, mut probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    let mut wire = fake.worker().await;

    wire.request(1, false, "POST", "/app/hang", &[]).await;
    assert_eq!(within(probes.started.recv()).await.unwrap(), "/app/hang");
    wire.send(|b| wire::encode_reset(b, 1, ResetCode::Cancel))
        .await;
    assert_eq!(within(probes.dropped.recv()).await.unwrap(), "/app/hang");
    // Nothing more on stream 1: the next frame is stream 3's.
    wire.request(3, true, "GET", "/app/after", &[]).await;
    match wire.frame().await {
        Frame::Head { stream: 3, .. } => {}
        other => panic!("unexpected {other:?}"),
    }
    shut_down(running, vec![wire]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_panics_reset_the_stream_and_the_worker_goes_on() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    let mut wire = fake.worker().await;

    wire.request(1, true, "GET", "/app/fail", &[]).await;
    assert_eq!(
        wire.frame().await,
        Frame::Reset {
            stream: 1,
            code: ResetCode::Abort
        }
    );
    wire.request(3, true, "GET", "/app/panic", &[]).await;
    assert_eq!(
        wire.frame().await,
        Frame::Reset {
            stream: 3,
            code: ResetCode::Abort
        }
    );
    wire.request(5, true, "GET", "/app/still-here", &[]).await;
    assert_eq!(wire.answer(5).await.head.status, 200);
    shut_down(running, vec![wire]).await;
}

/// A head the daemon would refuse is never sent: the request fails as a service error does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_over_the_wires_cap_is_not_sent() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    let mut wire = fake.worker().await;

    wire.request(1, true, "GET", "/app/huge-head", &[]).await;
    assert_eq!(
        wire.frame().await,
        Frame::Reset {
            stream: 1,
            code: ResetCode::Abort
        }
    );
    wire.request(3, true, "GET", "/app/still-here", &[]).await;
    assert_eq!(wire.answer(3).await.head.status, 200);
    shut_down(running, vec![wire]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_closes() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, mut probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    let mut wire = fake.worker().await;

    wire.request(1, true, "GET", "/app/gate", &[]).await;
    assert_eq!(within(probes.started.recv()).await.unwrap(), "/app/gate");
    let shutdown = tokio::spawn(running.shutdown());
    assert_eq!(wire.frame().await, Frame::Drain);
    // A request the daemon sent before it read the drain is still served.
    wire.request(3, true, "GET", "/app/late", &[]).await;
    assert_eq!(wire.answer(3).await.head.status, 200);
    probes.gate.add_permits(1);
    assert_eq!(wire.answer(1).await.body, b"released\n");
    // Nothing in hand: the worker waits for the daemon's close, however long it takes to
    // come (within the shutdown timeout), instead of guessing when nothing more is coming.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        !shutdown.is_finished(),
        "the worker left before the daemon closed"
    );
    drop(wire);
    within(shutdown).await.unwrap().unwrap();
    fake.control_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_url_is_an_api_error_and_nothing_stays_registered() {
    let mut fake = Fake::start(Behaviour {
        taken: Some("/taken/".into()),
        ..Behaviour::default()
    });
    let (app, _probes) = app(1);
    let err = within(builder(&fake).url("http://+:8080/taken/").serve(app))
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert_eq!(err.code(), Some(183));
    assert!(!err.is_access_denied());
    assert_eq!(
        err.to_string(),
        "http://+:8080/taken/ is registered by another queue (183 ERROR_ALREADY_EXISTS)"
    );
    // Both URLs went in one batch, which names the one refused.
    assert_eq!(err.api().and_then(|a| a.index), Some(1));
    let urls = fake
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with("/urls"));
    assert_eq!(urls.count(), 1);
    fake.control_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_are_registered_in_one_request() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(
        builder(&fake)
            .url("http://+:8080/b/")
            .url("http://+:8081/c/")
            .serve(app),
    )
    .await
    .unwrap();
    assert_eq!(
        running.urls(),
        ["http://+:8080/app/", "http://+:8080/b/", "http://+:8081/c/"]
    );
    let seen = fake.seen();
    let urls: Vec<_> = seen.iter().filter(|s| s.path.ends_with("/urls")).collect();
    assert_eq!(urls.len(), 1, "{seen:?}");
    assert_eq!(
        urls[0].json(),
        serde_json::json!({"urls": [
            {"url": "http://+:8080/App/", "context": 7},
            {"url": "http://+:8080/b/", "context": 0},
            {"url": "http://+:8081/c/", "context": 0},
        ]})
    );
    let wire = fake.worker().await;
    shut_down(running, vec![wire]).await;
}

#[tokio::test]
async fn no_daemon_is_a_connect_error_naming_the_socket() {
    let path = std::env::temp_dir().join("portshare-client-nobody-here.sock");
    let err = Queue::builder("q")
        .control(&path)
        .wait_for_daemon(std::time::Duration::ZERO)
        .serve(service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&*path.to_string_lossy()), "{message}");
    assert!(message.contains("PORTSHARE_CONTROL"), "{message}");
    // A bounded wait ends in the same error.
    let err = within(
        Queue::builder("q")
            .control(&path)
            .wait_for_daemon(std::time::Duration::from_millis(300))
            .serve(service_fn(|_req: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            })),
    )
    .await
    .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_a_daemon_started_after_it() {
    let mut fake = Fake::start(Behaviour::default());
    // The daemon's socket is not there yet: serve waits for it, as after a restart.
    let away = fake.path.with_extension("away");
    std::fs::rename(&fake.path, &away).expect("hide the socket");
    let (app, _probes) = app(1);
    let serving = tokio::spawn(builder(&fake).serve(app));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!serving.is_finished(), "serve gave up without a daemon");
    assert!(fake.seen().is_empty());
    std::fs::rename(&away, &fake.path).expect("the daemon comes");
    let running = within(serving).await.expect("the task").expect("serving");
    assert_eq!(running.urls(), ["http://+:8080/app/"]);
    let _worker = fake.worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_sets_up_again_after_the_daemon_restarts() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(builder(&fake).workers(2).serve(app)).await.unwrap();
    let first = (fake.worker().await, fake.worker().await);
    fake.kill_controls();
    drop(first);

    let mut wire = fake.worker().await;
    let _second = fake.worker().await;
    let paths: Vec<String> = fake.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths.iter().filter(|p| *p == "/v1/queues").count(),
        2,
        "{paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| p.ends_with("/urls")).count(),
        2,
        "{paths:?}"
    );
    wire.request(1, true, "GET", "/app/again", &[]).await;
    assert_eq!(wire.answer(1).await.head.status, 200);
    shut_down(running, vec![wire, _second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_is_reattached() {
    let mut fake = Fake::start(Behaviour::default());
    let (app, _probes) = app(1);
    let running = within(builder(&fake).serve(app)).await.unwrap();
    drop(fake.worker().await);
    let mut wire = fake.worker().await;
    let attaches = fake
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/attach"))
        .count();
    assert_eq!(attaches, 2);
    wire.request(1, true, "GET", "/app/x", &[]).await;
    assert_eq!(wire.answer(1).await.head.status, 200);
    shut_down(running, vec![wire]).await;
}

/// A service whose `poll_ready` fails.
#[derive(Clone)]
struct Broken;

impl Service<Request<Body>> for Broken {
    type Response = Response<Empty<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("broken for good".into()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        unreachable!("never ready")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_fails_for_good_ends_wait() {
    let mut fake = Fake::start(Behaviour::default());
    let running = within(builder(&fake).serve(Broken)).await.unwrap();
    let mut wire = fake.worker().await;
    wire.request(1, true, "GET", "/app/x", &[]).await;
    assert_eq!(
        wire.frame().await,
        Frame::Reset {
            stream: 1,
            code: ResetCode::Abort
        }
    );
    assert_eq!(wire.frame().await, Frame::Drain);
    // The daemon closes a drained worker that holds no request.
    drop(wire);
    let err = within(running.wait()).await.unwrap_err();
    assert!(matches!(err, Error::Service(_)), "{err:?}");
    assert_eq!(err.to_string(), "the service failed: broken for good");
}

/// A service that accepts upgrades through hyper's `OnUpgrade` and echoes the bytes.
async fn upgrade_echo(mut req: Request<Body>) -> Result<Response<Empty<Bytes>>, Infallible> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(on) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        return Ok(r);
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = io.shutdown().await;
    });
    let mut r = Response::new(Empty::new());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("echo"),
    );
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    Ok(r)
}

const OFFER: &[(&str, &str)] = &[
    ("host", "x"),
    ("connection", "upgrade"),
    ("upgrade", "echo"),
];

/// On version 2, a request that offers to upgrade reaches the service with hyper's
/// `OnUpgrade`; its `101` goes out as a head, and the stream carries the bytes both ways
/// within the windows, half-closed by `END` each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_version_2_is_served_through_hyper_and_relayed() {
    let mut fake = Fake::start(Behaviour {
        wire_version: 2,
        ..Behaviour::default()
    });
    let running = within(builder(&fake).serve(service_fn(upgrade_echo)))
        .await
        .unwrap();
    let mut wire = fake.worker().await;
    wire.request(1, true, "GET", "/app/ws", OFFER).await;
    let Frame::Head {
        stream: 1,
        end: false,
        payload,
    } = wire.frame().await
    else {
        panic!("no 101 head");
    };
    let head = wire::ResponseHead::decode(payload).unwrap();
    assert_eq!(head.status, 101);
    assert!(
        head.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(b"upgrade") && &v[..] == b"echo")
    );
    wire.send(|b| wire::encode_data(b, 1, false, b"hello"))
        .await;
    let mut echoed = Vec::new();
    while echoed.len() < 5 {
        match wire.frame().await {
            Frame::Data {
                stream: 1, data, ..
            } => echoed.extend_from_slice(&data),
            Frame::Window { stream: 1, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(echoed, b"hello");
    // The client half-closes; the application's echo ends, and so does its half.
    wire.send(|b| wire::encode_data(b, 1, true, b"")).await;
    loop {
        match wire.frame().await {
            Frame::Data {
                stream: 1,
                end: true,
                data,
            } => {
                assert!(data.is_empty());
                break;
            }
            Frame::Window { stream: 1, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    // Plain requests go on as before.
    wire.request(3, true, "GET", "/app/plain", &[("host", "x")])
        .await;
    assert_eq!(wire.answer(3).await.head.status, 426);
    shut_down(running, vec![wire]).await;
}

/// On version 1 (a daemon without opaque streams), the same request is a plain one: the
/// service finds no `OnUpgrade`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_version_1_is_a_plain_request() {
    let mut fake = Fake::start(Behaviour::default());
    let running = within(builder(&fake).serve(service_fn(upgrade_echo)))
        .await
        .unwrap();
    let mut wire = fake.worker().await;
    wire.request(1, true, "GET", "/app/ws", OFFER).await;
    assert_eq!(wire.answer(1).await.head.status, 426);
    shut_down(running, vec![wire]).await;
}
