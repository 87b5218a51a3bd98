//! A deliberately slow application, for watching queues fill: one worker connection holding
//! at most SLOTS requests, each answered after a delay with `name=NAME path=PATH`, a
//! fraction of them with status 500.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/slow_worker --delay-ms 500 --workers 2 --queue-length 4 \
//!     --verbosity limited http://+:8080/slow/
//! # more than 2 + 4 requests at once: the rest get 503
//! ```
//!
//! Prints `ready` once registered; SIGTERM or SIGINT drains and exits 0.

mod common;

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use portshare_client::{Body, Queue, Verbosity, service_fn};

/// Answers requests slowly, a few at a time.
#[derive(Parser)]
struct Args {
    /// The daemon's control socket. Default: $PORTSHARE_CONTROL, else the per-user socket
    /// if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// The name to answer with, and the queue's name.
    #[arg(long, default_value = "slow")]
    name: String,
    /// How long each request takes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    delay_ms: u64,
    /// How many requests are in hand at once (the slots of the one worker connection).
    #[arg(long = "workers", value_name = "SLOTS", default_value_t = 1)]
    slots: u32,
    /// The most requests waiting in the queue. Default: the daemon's, 1000.
    #[arg(long, value_name = "N")]
    queue_length: Option<u32>,
    /// How a full queue answers: basic (reset), limited (503) or full (503 with a reason).
    #[arg(long)]
    verbosity: Option<Verbosity>,
    /// The fraction of requests answered 500, spread evenly (0.25 fails every fourth).
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = fraction)]
    fail_rate: f64,
    /// URL prefixes to register, such as http://+:8080/slow/.
    #[arg(value_name = "PREFIX", required = true)]
    prefixes: Vec<String>,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

struct Slow {
    name: String,
    delay: Duration,
    fail_rate: f64,
    /// Requests seen so far.
    count: AtomicU64,
}

impl Slow {
    async fn answer(&self, req: Request<Body>) -> Response<Full<Bytes>> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        // Request n fails when n * rate crosses an integer: exactly the rate, evenly spread.
        let fails = (n as f64 * self.fail_rate).floor() > ((n - 1) as f64 * self.fail_rate).floor();
        tokio::time::sleep(self.delay).await;
        let body = format!("name={} path={}\n", self.name, req.uri().path());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        if fails {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logs();
    let mut builder = Queue::builder(args.name.clone())
        .workers(1)
        .slots(args.slots);
    if let Some(length) = args.queue_length {
        builder = builder.length(length);
    }
    if let Some(verbosity) = args.verbosity {
        builder = builder.verbosity(verbosity);
    }
    for prefix in &args.prefixes {
        builder = builder.url(prefix);
    }
    let slow = Arc::new(Slow {
        name: args.name,
        delay: Duration::from_millis(args.delay_ms),
        fail_rate: args.fail_rate,
        count: AtomicU64::new(0),
    });
    let service = service_fn(move |req: Request<Body>| {
        let slow = slow.clone();
        async move { Ok::<_, Infallible>(slow.answer(req).await) }
    });
    common::run_until_stopped(
        common::with_control(builder, args.control)
            .serve(service)
            .await,
    )
    .await
}
