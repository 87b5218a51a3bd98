//! Answers every request with one line saying who answered and why:
//! `name=NAME prefix=PREFIX path=PATH`, where PREFIX is the registration that won, as given
//! on the command line, and PATH the request's path as routing cooked it.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/hello --name one http://+:8080/app/ http://+:8080/app/deeper/
//! curl http://127.0.0.1:8080/app/deeper/x   # name=one prefix=http://+:8080/app/deeper/ path=/app/deeper/x
//! ```
//!
//! Prints `ready` once every prefix is registered; a refused registration prints the
//! daemon's error (with its Win32 code) and exits 1. SIGTERM or SIGINT drains and exits 0.

mod common;

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use portshare_client::{Body, Queue, service_fn};
use portshare_proto::header;

/// Answers every request with who answered it.
#[derive(Parser)]
struct Args {
    /// The daemon's control socket. Default: $PORTSHARE_CONTROL, else the per-user socket
    /// if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// The name to answer with.
    #[arg(long)]
    name: String,
    /// The queue to serve. Default: the name.
    #[arg(long, value_name = "Q")]
    queue: Option<String>,
    /// Answer every request with exactly this text instead (no newline added).
    #[arg(long, value_name = "TEXT", conflicts_with = "body_file")]
    body: Option<String>,
    /// Answer every request with this file's bytes instead, read once at start (for
    /// bodies too large for an argument).
    #[arg(long, value_name = "PATH")]
    body_file: Option<PathBuf>,
    /// Worker connections.
    #[arg(long, value_name = "N", default_value_t = 1)]
    workers: usize,
    /// Requests each worker holds at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    slots: u32,
    /// Runtime threads. Default: one per CPU.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Keep the queue, its URLs and waiting requests this long after the app exits, for
    /// the next process that opens it by name.
    #[arg(long, value_name = "MS")]
    linger_ms: Option<u64>,
    /// Answer with the request's headers, one `name: value` line each, after the usual line.
    #[arg(long)]
    echo_headers: bool,
    /// Read each request's body to its end before answering, as a server taking uploads
    /// would. Without it, the body is left unread.
    #[arg(long)]
    read_body: bool,
    /// URL prefixes to register, such as http://+:8080/app/.
    #[arg(value_name = "PREFIX", required = true)]
    prefixes: Vec<String>,
}

/// What every answer needs.
struct Hello {
    name: String,
    prefixes: Vec<String>,
    /// `--body` or `--body-file`, when given.
    body: Option<Bytes>,
    echo_headers: bool,
}

impl Hello {
    fn answer(&self, req: &Request<Body>) -> Response<Full<Bytes>> {
        let body = match &self.body {
            Some(body) => body.clone(),
            None => {
                let mut text = format!(
                    "name={} prefix={} path={}\n",
                    self.name,
                    self.prefix(req),
                    req.uri().path()
                );
                if self.echo_headers {
                    for (name, value) in req.headers() {
                        text.push_str(&format!(
                            "{name}: {}\n",
                            String::from_utf8_lossy(value.as_bytes())
                        ));
                    }
                }
                Bytes::from(text)
            }
        };
        let mut response = Response::new(Full::new(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }

    /// The prefix that won, as given on the command line: each was registered with its
    /// position as UrlContext. Another process serving the same queue registers its own;
    /// for those, the daemon's `portshare-url-prefix` is the next best thing.
    fn prefix<'a>(&'a self, req: &'a Request<Body>) -> &'a str {
        let context = req
            .headers()
            .get(header::URL_CONTEXT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        context
            .and_then(|i| self.prefixes.get(i))
            .map(String::as_str)
            .or_else(|| {
                let registered = req.headers().get(header::URL_PREFIX)?;
                registered.to_str().ok()
            })
            .unwrap_or("-")
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logs();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let queue = args.queue.unwrap_or_else(|| args.name.clone());
    let mut builder = Queue::builder(queue)
        .workers(args.workers)
        .slots(args.slots);
    if let Some(ms) = args.linger_ms {
        builder = builder.linger(std::time::Duration::from_millis(ms));
    }
    for (i, prefix) in args.prefixes.iter().enumerate() {
        builder = builder.url_with_context(prefix, i as u64);
    }
    let body = match (args.body, args.body_file) {
        (Some(text), _) => Some(Bytes::from(text)),
        (None, Some(path)) => match std::fs::read(&path) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        (None, None) => None,
    };
    let hello = Arc::new(Hello {
        name: args.name,
        prefixes: args.prefixes,
        body,
        echo_headers: args.echo_headers,
    });
    let read_body = args.read_body;
    let service = service_fn(move |req: Request<Body>| {
        let hello = hello.clone();
        async move {
            let answer = hello.answer(&req);
            if read_body {
                // Read to its end and dropped; one that breaks off still gets its answer.
                let _ = req.into_body().collect().await;
            }
            Ok::<_, Infallible>(answer)
        }
    });
    common::run_until_stopped(
        common::with_control(builder, args.control)
            .serve(service)
            .await,
    )
    .await
}
