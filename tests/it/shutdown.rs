//! Stopping the daemon with SIGTERM: no new connections, idle ones closed, requests in
//! progress finished with `Connection: close`, workers told; what is still unfinished when
//! the shutdown timer runs out is answered or logged, never dropped in silence.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::*;

/// A daemon with `timers.shutdown = grace`, on the listen list of its configuration.
fn daemon(grace: u32) -> Daemon {
    Daemon::builder()
        .tag("shutdown")
        .config(format!(
            "iplisten = [\"127.0.0.1\"]\n\n[timers]\nshutdown = {grace}\n"
        ))
        .iplisten_from_config()
        .spawn()
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

#[test]
fn sigterm_finishes_requests_in_progress_and_closes_the_rest() {
    let mut d = daemon(30);
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
    let text = read_until_close(&mut idle, "the idle connection").text();
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
    let end = read_until_close(&mut busy, "after the answer");
    assert!(end.bytes.is_empty() && !end.reset, "{end:?}");

    let exit = d.proc.terminate();
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", d.log());
    let log = strip_ansi(&d.log());
    assert!(
        log.contains("waiting for the requests of open connections")
            && log.contains("grace_secs=30"),
        "{log}"
    );
    // Nothing was refused, timed out or cut short.
    let log = d.errlog_text();
    assert!(log.lines().all(|l| l.starts_with('#')), "{log}");
}

#[test]
fn at_the_shutdown_timer_what_is_left_is_answered_or_logged() {
    let mut d = daemon(1);
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
    let text = read_until_close(&mut waiting, "the waiting request").text();
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nRetry-After: "), "{text}");
    // ...the one in hand is cut off without a response...
    let text = read_until_close(&mut held, "the request in hand").text();
    assert_eq!(text, "");
    // ...and both are in the error log.
    let log = d.errlog_text();
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
    let log = strip_ansi(&d.log());
    assert!(
        log.contains("still busy at the shutdown timer") && log.contains("grace_secs=1"),
        "{log}"
    );
}
