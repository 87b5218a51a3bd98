//! Control-plane work that may block (the state file, the user and group databases, /proc)
//! runs off the runtime's threads: with `--threads 1`, a state-file write that cannot finish
//! leaves every client connection served.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_state_file_write_that_blocks_stalls_no_client() {
    let dir = TempDir::new("blocking");
    let state = dir.0.join("state.toml");
    let config = dir.0.join("portshare.toml");
    std::fs::write(
        &config,
        format!(
            "iplisten = [\"127.0.0.1\"]\nstate_file = {:?}\n[errlog]\nfolder = {:?}\n",
            state.display().to_string(),
            dir.0.join("httperr").display().to_string()
        ),
    )
    .expect("config");
    let control = dir.0.join("control.sock");
    let log = dir.0.join("daemon.log");
    let child = Command::new(portshare_bin())
        .args(["serve", "--threads", "1", "--control"])
        .arg(&control)
        .arg("--config")
        .arg(&config)
        .env("PORTSHARE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start portshare serve");
    let d = Daemon {
        proc: Proc { child, log },
        control,
        dir,
    };
    assert!(
        eventually(20, || std::os::unix::net::UnixStream::connect(&d.control)
            .is_ok()),
        "the daemon did not come up:\n{}",
        d.log()
    );
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
