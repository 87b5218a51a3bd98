//! A WebSocket echo behind Portshare: an axum app using `WebSocketUpgrade` as it would
//! behind hyper, unchanged.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/ws_echo http://+:8080/ws_echo/
//! curl http://127.0.0.1:8080/ws_echo/          # a page that talks to the socket
//! websocat ws://127.0.0.1:8080/ws_echo/ws      # or any WebSocket client
//! ```
//!
//! The daemon routes the upgrade request to this queue like any other; the SDK serves it
//! through hyper in memory so axum can accept it, and once the app answers `101` the
//! daemon relays the connection's bytes both ways (`docs/worker-protocol.md`, opaque
//! streams). Every text or binary message is sent back as it came.
//!
//! Prints `ready` once registered; SIGTERM or SIGINT drains and exits 0.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{Html, Response};
use axum::routing::get;
use clap::Parser;
use portshare_client::Queue;

/// A WebSocket echo on a Portshare prefix.
#[derive(Parser)]
struct Args {
    /// The daemon's control socket. Default: $PORTSHARE_CONTROL, else the per-user socket
    /// if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// The queue to serve.
    #[arg(long, value_name = "Q", default_value = "ws_echo")]
    name: String,
    /// Requests, open WebSockets among them, held at once: each socket keeps its slot
    /// while it lives.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    slots: u32,
    /// The URL prefix to register.
    #[arg(value_name = "PREFIX", default_value = "http://+:8080/ws_echo/")]
    prefix: String,
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ws_echo</title>
<p>Type a line: it goes to the socket and comes back.</p>
<input id="line" autofocus><pre id="log"></pre>
<script>
const log = (t) => document.getElementById("log").textContent += t + "\n";
const ws = new WebSocket(location.href.replace(/^http/, "ws").replace(/\/?$/, "/ws"));
ws.onopen = () => log("open");
ws.onmessage = (e) => log("< " + e.data);
ws.onclose = () => log("closed");
document.getElementById("line").onkeydown = (e) => {
  if (e.key === "Enter") { ws.send(e.target.value); log("> " + e.target.value); e.target.value = ""; }
};
</script>
"#;

fn router(base: &str) -> Router {
    Router::new()
        .route(base, get(|| async { Html(PAGE) }))
        .route(&format!("{base}ws"), get(upgrade))
}

async fn upgrade(ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(64 << 20).on_upgrade(echo)
}

/// Sends every message back until the client closes.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let back = match message {
            Message::Text(_) | Message::Binary(_) => message,
            // axum answers pings and a close itself; the next `recv` sends the answer to a
            // close and ends the loop.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        if socket.send(back).await.is_err() {
            break;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logs();
    let app = router(&common::prefix_path(&args.prefix));
    let builder = Queue::builder(args.name)
        .url(&args.prefix)
        .slots(args.slots);
    common::run_until_stopped(common::with_control(builder, args.control).serve(app).await).await
}
