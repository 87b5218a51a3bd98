//! An ordinary axum `Router` behind Portshare: the SDK serves any tower service.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/axum_app http://+:8080/axum/
//! curl http://127.0.0.1:8080/axum/hello/world
//! curl -d 'some text' http://127.0.0.1:8080/axum/echo
//! curl http://127.0.0.1:8080/axum/whoami
//! ```
//!
//! The application sees the whole path as routing cooked it (`/axum/hello/world`), so the
//! routes sit under the prefix's path. Routing matched the prefix case-insensitively, as
//! HTTP.sys does, but axum's routes are case-sensitive: `/AXUM/hello/x` reaches this process
//! and gets axum's 404.
//!
//! Prints `ready` once registered; SIGTERM or SIGINT drains and exits 0.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Parser;
use portshare_client::Queue;
use portshare_proto::header;

/// An axum application on a Portshare prefix.
#[derive(Parser)]
struct Args {
    /// The daemon's control socket. Default: $PORTSHARE_CONTROL, else the per-user socket
    /// if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// The URL prefix to register.
    #[arg(value_name = "PREFIX", default_value = "http://+:8080/axum/")]
    prefix: String,
}

fn router(base: &str) -> Router {
    let index = format!(
        "axum behind portshare: try GET {base}hello/NAME, POST {base}echo, GET {base}whoami\n"
    );
    let mut router = Router::new()
        .route(base, get(move || std::future::ready(index.clone())))
        .route(&format!("{base}hello/{{name}}"), get(hello))
        .route(&format!("{base}echo"), post(echo))
        .route(&format!("{base}whoami"), get(whoami));
    // `/axum` without its slash is routed to `/axum/` too.
    if base.len() > 1 {
        router = router.route(
            base.trim_end_matches('/'),
            get(|| async { "axum behind portshare\n" }),
        );
    }
    router
}

async fn hello(Path(name): Path<String>) -> String {
    format!("hello, {name}\n")
}

async fn echo(body: Bytes) -> Bytes {
    body
}

/// The metadata the daemon put on the request.
async fn whoami(headers: HeaderMap) -> Json<serde_json::Value> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Json(serde_json::json!({
        "client": get(header::CLIENT_ADDR),
        "local": get(header::LOCAL_ADDR),
        "prefix": get(header::URL_PREFIX),
        "raw_url": get(header::RAW_URL),
        "request_id": get(header::REQUEST_ID),
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logs();
    let app = router(&common::prefix_path(&args.prefix));
    let builder = Queue::builder("axum_app").url(&args.prefix).workers(2);
    common::run_until_stopped(common::with_control(builder, args.control).serve(app).await).await
}
