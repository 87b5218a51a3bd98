//! `portshare top`: on a pseudo-terminal (the full-screen view, `q` quits and the terminal
//! is given back) and as plain lines on a pipe.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{Winsize, openpty};

use crate::harness::*;

/// Sends GETs to `port` until `stop` is set, at most for 30 s.
fn traffic(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let (status, _, _) = get(port, "127.0.0.1", "/top/x");
            assert_eq!(status, 200);
            sent += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    })
}

#[test]
fn on_a_terminal_it_draws_the_queues_and_q_gives_the_terminal_back() {
    let d = Daemon::start();
    let (_app, port) = hello_on_free_port(&d, "topq", &["/top/"], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = traffic(port, stop.clone());

    let size = Winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("a pseudo-terminal");
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
    let mut child = Command::new(portshare_bin())
        .args(["top", "--interval", "0.2", "--control"])
        .arg(&d.control)
        .env("TERM", "xterm-256color")
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .expect("portshare top starts");
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let mut master = master.try_clone().expect("dup the terminal");
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child has closed its end.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || strip_ansi(&String::from_utf8_lossy(&screen.lock().expect("screen")));
    let drawn = eventually(20, || {
        let t = text();
        t.contains("topq") && t.contains("Srv/s") && t.contains(&format!("127.0.0.1:{port}"))
    });
    stop.store(true, Ordering::Relaxed);
    assert!(sender.join().expect("traffic") > 0);
    assert!(drawn, "top never drew the queue:\n{}", text());

    master.write_all(b"q").expect("type q");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("top did not quit on q:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "top failed: {status:?}\n{}", text());
    drop(master);
    let _ = reader.join();
    let raw = String::from_utf8_lossy(&screen.lock().expect("screen")).into_owned();
    // The alternate screen was entered and left again.
    assert!(raw.contains("\u{1b}[?1049h"), "no alternate screen");
    assert!(
        raw.contains("\u{1b}[?1049l"),
        "the terminal was not given back"
    );
}

#[test]
fn on_a_pipe_it_prints_a_line_per_queue_and_port_each_refresh() {
    let d = Daemon::start();
    let (_app, port) = hello_on_free_port(&d, "topline", &["/top/"], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = traffic(port, stop.clone());
    let out = Command::new(portshare_bin())
        .args(["top", "--interval", "0.5", "--count", "3", "--control"])
        .arg(&d.control)
        .output()
        .expect("portshare top runs");
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("traffic");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains('\u{1b}'), "escape codes on a pipe: {text:?}");
    let queue_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" queue=topline "))
        .collect();
    assert_eq!(queue_lines.len(), 3, "{text}");
    assert!(
        queue_lines.iter().any(|l| !l.contains(" served/s=0.0 ")),
        "no request counted:\n{text}"
    );
    // The daemon's counters give the interval's latencies.
    assert!(
        queue_lines
            .iter()
            .any(|l| !l.contains(" wait_p50_ms=- ") && !l.contains(" app_p99_ms=- ")),
        "no latency:\n{text}"
    );
    for l in &queue_lines {
        assert!(l.contains(" workers=1 slots="), "{l}");
        assert!(l.contains(" depth=0 "), "{l}");
    }
    let port_line = format!(" port=127.0.0.1:{port} connections=");
    assert_eq!(text.matches(&port_line).count(), 3, "{text}");
}

#[test]
fn without_a_daemon_it_says_so_and_fails() {
    let dir = TempDir::new("top");
    let out = Command::new(portshare_bin())
        .args(["top", "--count", "1", "--control"])
        .arg(dir.0.join("nothing.sock"))
        .output()
        .expect("portshare top runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("portshare top: cannot reach the daemon"),
        "{err}"
    );
}
