//! Stopping the daemon with SIGTERM: no new connections, idle ones closed, requests in
//! progress finished with `Connection: close`, workers told; what is still unfinished when
//! the shutdown timer runs out is answered or logged, never dropped in silence.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

/// A daemon with `timers.shutdown = grace`, its error log in its folder.
fn daemon(grace: u32) -> (Daemon, PathBuf) {
    let dir = TempDir::new("shutdown");
    let folder = dir.0.join("httperr");
    let config = dir.0.join("portshare.toml");
    std::fs::write(
        &config,
        format!(
            "iplisten = [\"127.0.0.1\"]\nstate_file = {:?}\n\n[timers]\nshutdown = {grace}\n\n\
             [errlog]\nfolder = {:?}\n",
            dir.0.join("state.toml").display().to_string(),
            folder.display().to_string()
        ),
    )
    .expect("write the configuration");
    let config = config.to_str().expect("utf-8 path").to_owned();
    (Daemon::start_in(dir, &["--config", &config]), folder)
}

fn slow_app(d: &Daemon, port: u16, delay_ms: &str, slots: &str) -> App {
    App::start(
        &d.control,
        "slow_worker",
        "slow",
        &[&format!("http://+:{port}/slow/")],
        &["--delay-ms", delay_ms, "--workers", slots],
    )
}

/// Everything the daemon sends until it closes: the text, and whether it ended in a reset.
fn rest(c: &mut TcpStream) -> (String, bool) {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => return (String::from_utf8_lossy(&all).into_owned(), false),
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&all).into_owned(), true);
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

fn errlog_text(folder: &std::path::Path) -> String {
    std::fs::read_to_string(folder.join("httperr1.log")).unwrap_or_default()
}

#[test]
fn sigterm_finishes_requests_in_progress_and_closes_the_rest() {
    let (mut d, folder) = daemon(30);
    let port = free_port();
    // Slow enough that the signal surely comes while the request is in hand.
    let _app = slow_app(&d, port, "5000", "4");
    let _quick = d.hello("quick", &[&format!("http://+:{port}/quick/")], &[]);

    // An idle keep-alive connection, served once.
    let mut idle = connect(port);
    idle.write_all(b"GET /quick/idle HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut idle, &mut buf, false);
    assert_eq!(status, 200, "{head}");

    // A request in the application's hands when the signal comes.
    let mut busy = connect(port);
    busy.write_all(b"GET /slow/busy HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let slow_in_flight = || {
        d.state()["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == "slow"))
            .is_some_and(|q| q["in_flight"] == 1)
    };
    assert!(eventually(5, slow_in_flight));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &d.proc.child.id().to_string()])
        .status();

    // The idle connection closes at once, without a byte.
    let (text, _) = rest(&mut idle);
    assert_eq!(text, "", "idle connection");
    // New connections are refused once the listener is gone.
    assert!(eventually(5, || TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1)
    )
    .is_err()));
    // The request in progress gets its whole answer, and the connection closes after it.
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut busy, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("path=/slow/busy"));
    assert_eq!(rest(&mut busy), (String::new(), false));

    let exit = d.proc.terminate();
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", d.log());
    assert!(d.log().contains("waiting up to 30 s"), "{}", d.log());
    // Nothing was refused, timed out or cut short.
    let log = errlog_text(&folder);
    assert!(log.lines().all(|l| l.starts_with('#')), "{log}");
}

#[test]
fn at_the_shutdown_timer_what_is_left_is_answered_or_logged() {
    let (mut d, folder) = daemon(1);
    let port = free_port();
    let _app = slow_app(&d, port, "60000", "1");

    // One request in the application's hands, one waiting in the queue behind it.
    let mut held = connect(port);
    held.write_all(b"GET /slow/held HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(eventually(5, || d.state()["queues"][0]["in_flight"] == 1));
    let mut waiting = connect(port);
    waiting
        .write_all(b"GET /slow/waiting HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(eventually(5, || d.state()["queues"][0]["depth"] == 1));
    let (held_port, waiting_port) = (
        held.local_addr().expect("address").port(),
        waiting.local_addr().expect("address").port(),
    );

    let exit = d.proc.terminate();
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", d.log());

    // The waiting request is told it was not served...
    let (text, _) = rest(&mut waiting);
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nRetry-After: "), "{text}");
    // ...the one in hand is cut off without a response...
    let (text, _) = rest(&mut held);
    assert_eq!(text, "");
    // ...and both are in the error log.
    let log = errlog_text(&folder);
    let line = |port: u16| {
        log.lines()
            .find(|l| l.split(' ').nth(3) == Some(&port.to_string()))
            .unwrap_or_else(|| panic!("no line for {port}:\n{log}"))
            .to_owned()
    };
    assert!(
        line(waiting_port).ends_with(" GET /slow/waiting 503 - AppShutdown slow"),
        "{log}"
    );
    assert!(
        line(held_port).ends_with(" GET /slow/held - - Connection_Abandoned_By_ReqQueue slow"),
        "{log}"
    );
    assert!(d.log().contains("still busy after 1 s"), "{}", d.log());
}
