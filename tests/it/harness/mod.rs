//! What the end-to-end tests share: a daemon on its own control socket, loopback address and
//! folder, started from configuration text ([`Daemon::builder`]); apps started from the
//! example binaries; a control client (the SDK's, made blocking) and a worker speaking the
//! wire by hand; raw HTTP on loopback; this test binary run again as a helper process, as
//! another account or alone with a limit of its own; and an upstream server to forward to.
//!
//! Every process a test starts is killed when its handle drops, so a failing assertion
//! leaves nothing behind; every folder is removed the same way.

// A test binary exports nothing: `pub` here means "for the test modules".
#![allow(unreachable_pub)]

mod control;
mod daemon;
mod http;
mod process;
mod upstream;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use control::{Ctl, WireWorker, try_call};
pub use daemon::{App, Daemon, Proc, TempDir, example_bin, hello_on_free_port, portshare_bin};
pub use http::{
    Closed, Ending, assert_closed, assert_framed_once, connect, connect_small, ending,
    expect_continue, find, get, header_value, http_raw, pattern, port_free, read_head,
    read_response, read_until_close, try_get,
};
pub use process::{
    alone_in_a_process, as_uid, can_switch_uid, copy_executable, have_prlimit, have_python,
    only_test, python, run_to_exit, strip_ansi, vm_rss_kib,
};
pub use upstream::{AnyListener, EchoServer, Echoed, Exchange, Scripted, daemon_with_upstream};

/// A TCP port of 127.0.0.1 that nothing holds when asked, never the same twice in one test
/// run, and below the kernel's ephemeral range: a port from `bind(0)` is one the kernel
/// also gives to outgoing connections, so a concurrent test's client could take it between
/// this call and the daemon's bind. Callers that race another program still retry.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;

    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    if ephemeral_low <= low + 1_000 {
        // A machine whose ephemeral range starts low: the kernel's pick is all there is.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
    }
    let span = u64::from(ephemeral_low - low);
    let random = RandomState::new();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for attempt in 0u64..10_000 {
        let port = low + (random.hash_one(attempt) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port of 127.0.0.1 between {low} and {ephemeral_low}")
}

/// The vectors of the specification's file `name`, from `../shared/spec` beside the
/// workspace or from `$PORTSHARE_VECTORS`. `None` (with a note) when the file is missing,
/// which fails the test under `CI=true`.
pub fn spec_vectors(name: &str) -> Option<Vec<serde_json::Value>> {
    let dir = match std::env::var_os("PORTSHARE_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/spec"),
    };
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("vector file is JSON")),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{}: {e}; CI must run the vectors", path.display())
        }
        Err(e) => {
            eprintln!("skipping {name}: {}: {e}", path.display());
            None
        }
    }
}

/// Polls `f` until it returns true, for at most `secs` seconds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}
