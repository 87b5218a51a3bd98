//! Control-plane work that may block (the state file, the user and group databases, /proc)
//! runs off the runtime's threads and without the daemon's lock: with `--threads 1`, a
//! state-file write that cannot finish leaves every client connection served, and every
//! control operation that does not write the state file answered.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn a_state_file_write_that_blocks_stalls_no_client() {
    let d = Daemon::builder().tag("blocking").threads(1).spawn();
    let state = d.dir.0.join("state.toml");
    let (_app, port) = hello_on_free_port(&d, "app", &["/app/"], &[]);
    // The state file is written to `state.toml.new`, then renamed: a FIFO there blocks the
    // write until someone reads it.
    let fifo = state.with_extension("toml.new");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
    let reserve = Command::new(portshare_bin())
        .args(["urlacl", "add"])
        .arg(format!("http://+:{port}/reserved/"))
        .args(["--user", "root", "--control"])
        .arg(&d.control)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("portshare urlacl add");
    let mut reserve = Proc {
        child: reserve,
        log: d.dir.0.join("none"),
    };
    // The daemon is now stuck writing the state file: clients are served all the same.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(reserve.child.try_wait(), Ok(None)),
        "the reservation should be waiting for its state file"
    );
    let started = Instant::now();
    for i in 0..20 {
        let got = try_get(port, "x", &format!("/app/{i}"));
        assert!(
            got.as_ref()
                .is_some_and(|(s, b)| *s == 200 && b.starts_with("name=app")),
            "request {i} failed while the state file blocked: {got:?}\n{}",
            d.log()
        );
    }
    println!(
        "20 requests served in {:?} while a state-file write blocked",
        started.elapsed()
    );
    // Nor does it hold the daemon's lock: the state view answers and another application
    // registers, attaches and is served.
    let state = d.state();
    assert!(state["queues"].to_string().contains("\"app\""), "{state}");
    let (_other, other_port) = hello_on_free_port(&d, "other", &["/other/"], &[]);
    let (status, _, body) = get(other_port, "x", "/other/1");
    assert!(
        status == 200 && body.starts_with("name=other"),
        "{status} {body}"
    );
    // Let the write through: the reservation completes.
    let mut reader = std::fs::File::open(&fifo).expect("open the FIFO");
    let mut written = String::new();
    reader.read_to_string(&mut written).expect("read the state");
    assert!(written.contains("reserved"), "{written}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(s)) = reserve.child.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "urlacl add did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "urlacl add failed");
    reserve.kill();
}
