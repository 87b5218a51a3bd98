//! One port, two applications, one command: starts a Portshare daemon on a private control
//! socket, then serves `http://+:PORT/app1/` and `http://+:PORT/app2/` from this process
//! through the SDK, and prints what to try.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/shared_port --port 8080
//! ```
//!
//! The daemon is `portshare` from `PORTSHARE_BIN`, else the one built beside this example
//! (`target/release/portshare` for `target/release/examples/shared_port`). Ctrl-C stops the
//! applications and the daemon.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::Full;
use portshare_client::{Body, Queue, Running, service_fn};

/// Two applications sharing one port through a daemon started for the occasion.
#[derive(Parser)]
struct Args {
    /// The port both applications share.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The address the daemon listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    iplisten: String,
}

/// The daemon child process and its scratch directory, stopped and removed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    control: PathBuf,
}

impl Daemon {
    fn start(iplisten: &str) -> Result<Daemon, String> {
        let bin = daemon_binary()?;
        let dir =
            std::env::temp_dir().join(format!("portshare-shared-port-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let control = dir.join("control.sock");
        let child = Command::new(&bin)
            .arg("serve")
            .arg("--control")
            .arg(&control)
            .arg("--iplisten")
            .arg(iplisten)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Daemon {
            child,
            dir,
            control,
        })
    }

    /// Waits until the control socket accepts connections.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::UnixStream::connect(&self.control).await.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the daemon exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err("the daemon did not open its control socket within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `PORTSHARE_BIN`, else `portshare` in the directory above this executable's.
fn daemon_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PORTSHARE_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("portshare"))
        .filter(|bin| bin.exists())
        .ok_or("no portshare binary beside this example: build it (cargo build --release) or set PORTSHARE_BIN")?;
    Ok(bin)
}

/// Serves `http://+:PORT/NAME/` with a one-line answer.
async fn app(daemon: &Daemon, name: &'static str, port: u16) -> Result<Running, String> {
    let service = service_fn(move |req: Request<Body>| {
        let text = format!("hello from {name}: {} {}\n", req.method(), req.uri());
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
            text,
        )))))
    });
    Queue::builder(name)
        .url(format!("http://+:{port}/{name}/"))
        .control(&daemon.control)
        .serve(service)
        .await
        .map_err(|e| format!("{name}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logs();
    let mut daemon = match Daemon::start(&args.iplisten) {
        Ok(daemon) => daemon,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = async {
        daemon.ready().await?;
        let app1 = app(&daemon, "app1", args.port).await?;
        let app2 = app(&daemon, "app2", args.port).await?;
        Ok::<_, String>((app1, app2))
    };
    let (app1, app2) = match started.await {
        Ok(apps) => apps,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host = if args.iplisten.contains(':') {
        format!("[{}]", args.iplisten)
    } else {
        args.iplisten.clone()
    };
    let exe = daemon_binary().unwrap_or_else(|_| "portshare".into());
    println!("Two applications share port {}. Try:", args.port);
    println!("  curl http://{host}:{}/app1/hello", args.port);
    println!("  curl http://{host}:{}/app2/hello", args.port);
    println!(
        "  curl http://{host}:{}/other/     # nobody registered it: 404",
        args.port
    );
    println!(
        "  {} show servicestate --control {}",
        exe.display(),
        daemon.control.display()
    );
    common::announce(&[&app1, &app2]);
    if let Err(e) = common::stop_signal().await {
        eprintln!("error: cannot wait for signals: {e}");
    }
    let (r1, r2) = tokio::join!(app1.shutdown(), app2.shutdown());
    drop(daemon);
    match r1.and(r2) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
