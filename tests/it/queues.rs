//! Request queues end to end: a full queue answered by its 503 verbosity (a reset, a 503
//! with Retry-After, the cause named), a disabled queue, the queue timer, a lingering queue
//! that keeps requests across an app restart, and a worker never handed more requests than
//! its slots.

use std::io::Write;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::*;
use serde_json::json;

/// A queue of length 1 with no worker attached: the first request waits, the second finds
/// the queue full.
fn full_queue(verbosity: &str) -> (Daemon, Ctl, u16) {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(
        json!({ "name": "full", "length": 1, "verbosity": verbosity, "queue_timer_ms": 10000 }),
    );
    let port = free_port();
    let (status, body) = ctl.add_url("full", &format!("http://+:{port}/"));
    assert_eq!(status, 201, "{body}");
    (d, ctl, port)
}

fn fill_one(port: u16) -> std::net::TcpStream {
    let mut waiting = connect(port);
    waiting
        .write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    waiting
}

#[test]
fn full_queue_basic_resets_the_connection() {
    let (d, _ctl, port) = full_queue("basic");
    let _waiting = fill_one(port);
    assert!(eventually(5, || d.state()["queues"][0]["depth"] == 1));
    assert_eq!(
        ending(port, b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ending::Reset
    );
    assert_eq!(d.state()["queues"][0]["counters"]["queue_full"], 1);
    assert!(
        d.log().contains("GET /second - - QueueFull full"),
        "{}",
        d.log()
    );
}

#[test]
fn full_queue_limited_answers_503_with_retry_after() {
    let (d, _ctl, port) = full_queue("limited");
    let _waiting = fill_one(port);
    assert!(eventually(5, || d.state()["queues"][0]["depth"] == 1));
    let (status, head, body) = get(port, "x", "/second");
    assert_eq!(status, 503);
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    assert!(head.contains("Content-Type: text/html; charset=us-ascii"));
    assert!(head.contains("Retry-After: "), "{head}");
    assert!(body.contains("<h2>Service Unavailable</h2>"), "{body}");
    assert!(d.log().contains("GET /second 503 - QueueFull full"));
}

#[test]
fn full_queue_full_verbosity_names_the_cause() {
    let (d, _ctl, port) = full_queue("full");
    let _waiting = fill_one(port);
    assert!(eventually(5, || d.state()["queues"][0]["depth"] == 1));
    let (status, head, body) = get(port, "x", "/second");
    assert_eq!(status, 503);
    assert!(head.contains("Queue Full"), "{head}");
    assert!(body.contains("Queue Full"), "{body}");
    assert!(head.contains("Retry-After: "));
}

#[test]
fn disabled_queue_answers_503_by_verbosity() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "off", "verbosity": "limited", "enabled": false }));
    let port = free_port();
    assert_eq!(ctl.add_url("off", &format!("http://+:{port}/")).0, 201);
    let (status, head, _) = get(port, "x", "/");
    assert_eq!(status, 503);
    assert!(head.contains("Retry-After: "));
    assert!(d.log().contains(" 503 - Disabled off"), "{}", d.log());
    let (status, _) = ctl.call(
        "PATCH",
        "/v1/queues/off",
        Some(json!({ "verbosity": "basic" })),
    );
    assert_eq!(status, 200);
    assert_eq!(
        ending(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ending::Reset
    );
}

#[test]
fn queue_timer_closes_without_a_response() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "t", "queue_timer_ms": 300 }));
    let port = free_port();
    assert_eq!(ctl.add_url("t", &format!("http://+:{port}/")).0, 201);
    assert_eq!(
        ending(port, b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ending::Closed
    );
    assert!(
        d.log().contains("GET /late - - Timer_ReqQueue t"),
        "{}",
        d.log()
    );
    assert_eq!(d.state()["queues"][0]["counters"]["timed_out"], 1);
}

#[test]
fn a_lingering_queue_keeps_requests_across_an_app_restart() {
    let d = Daemon::start();
    let port = free_port();
    let prefix = format!("http://+:{port}/l/");
    let mut first = d.hello(
        "l1",
        &[&prefix],
        &["--queue", "linger", "--linger-ms", "10000"],
    );
    assert_eq!(get(port, "x", "/l/a").0, 200);
    first.proc.kill();
    // The app is gone; requests wait in the lingering queue.
    assert!(
        eventually(5, || d.state()["queues"][0]["lingering"] == true),
        "{}",
        d.state()
    );
    let waiting: Vec<_> = (0..3)
        .map(|i| std::thread::spawn(move || get(port, "x", &format!("/l/w{i}"))))
        .collect();
    assert!(
        eventually(5, || d.state()["queues"][0]["depth"] == 3),
        "{}",
        d.state()
    );
    let _second = d.hello(
        "l2",
        &[&prefix],
        &["--queue", "linger", "--linger-ms", "10000"],
    );
    for w in waiting {
        let (status, _, body) = w.join().expect("client");
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("name=l2 "), "{body}");
    }
}

/// A worker gets no more requests than the slots it declared: the rest wait in the queue,
/// and go to the worker as its slots free.
#[test]
fn a_worker_never_holds_more_than_its_slots() {
    let d = Daemon::start();
    let port = free_port();
    let prefix = format!("http://+:{port}/s/");
    let _slow = App::start(
        &d.control,
        "slow_worker",
        "slots",
        &[&prefix],
        &["--delay-ms", "1500", "--workers", "2"],
    );
    let clients: Vec<_> = (0..5)
        .map(|i| std::thread::spawn(move || get(port, "x", &format!("/s/{i}"))))
        .collect();
    assert!(
        eventually(5, || {
            let q = &d.state()["queues"][0];
            q["in_flight"] == 2 && q["depth"] == 3
        }),
        "{}",
        d.state()
    );
    // Never more than two at once, until every request is answered.
    while !clients.iter().all(JoinHandle::is_finished) {
        let q = &d.state()["queues"][0];
        assert!(q["in_flight"].as_u64().unwrap_or(0) <= 2, "{q}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in clients {
        let (status, _, body) = c.join().expect("client");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(d.state()["queues"][0]["counters"]["delivered"], 5);
}
