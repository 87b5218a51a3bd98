//! Applications and the daemon coming and going: a worker killed in the middle of a request
//! aborts that connection alone, a worker told to drain (SIGTERM) finishes the request in
//! hand and its registrations go, and an application registers again by itself when the
//! daemon restarts.

use std::io::{Read, Write};

use crate::harness::*;

#[test]
fn a_worker_killed_mid_request_aborts_only_that_connection() {
    let d = Daemon::start();
    let port = free_port();
    let prefix = format!("http://+:{port}/slow/");
    let mut slow = App::start(
        &d.control,
        "slow_worker",
        "slow",
        &[&prefix],
        &["--delay-ms", "60000", "--workers", "4"],
    );
    let mut c = connect(port);
    c.write_all(b"GET /slow/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(
        eventually(5, || d.state()["queues"][0]["in_flight"] == 1),
        "{}",
        d.state()
    );
    slow.proc.kill();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected an aborted connection, got {other:?}"),
    }
    assert!(
        eventually(5, || d
            .log()
            .contains("GET /slow/1 - - Connection_Abandoned_By_ReqQueue slow")),
        "{}",
        d.log()
    );
    // The daemon carries on.
    let _b = d.hello("after", &[&format!("http://+:{port}/ok/")], &[]);
    assert_eq!(get(port, "x", "/ok/").0, 200);
}

#[test]
fn a_worker_drains_on_sigterm_and_its_registration_goes() {
    let d = Daemon::start();
    let (mut app, port) = hello_on_free_port(&d, "drained", &["/d/"], &[]);
    assert_eq!(get(port, "x", "/d/1").0, 200);
    let status = app.proc.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "hello did not exit 0 on SIGTERM: {status:?}\n{}",
        app.proc.log_text()
    );
    assert!(
        eventually(5, || d.state()["prefixes"]
            .as_array()
            .is_some_and(|p| p.is_empty())),
        "registration still there: {}",
        d.state()
    );
    assert!(d.state()["queues"].as_array().is_some_and(|q| q.is_empty()));
    assert!(eventually(5, || port_free(port)), "port not released");
}

#[test]
fn a_draining_worker_finishes_the_request_in_hand() {
    let d = Daemon::start();
    let port = free_port();
    let mut slow = App::start(
        &d.control,
        "slow_worker",
        "slowdrain",
        &[&format!("http://+:{port}/s/")],
        &["--delay-ms", "5000"],
    );
    let client = std::thread::spawn(move || get(port, "x", "/s/held"));
    assert!(
        eventually(10, || d.state()["queues"][0]["in_flight"] == 1),
        "{}",
        d.state()
    );
    // Still in hand when the worker is told to drain.
    assert!(!client.is_finished());
    let status = slow.proc.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "slow_worker did not exit 0: {status:?}\n{}",
        slow.proc.log_text()
    );
    let (code, _, body) = client.join().expect("client");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "name=slowdrain path=/s/held\n");
    assert!(
        eventually(5, || d.state()["prefixes"]
            .as_array()
            .is_some_and(|p| p.is_empty())),
        "{}",
        d.state()
    );
}

#[test]
fn an_app_reregisters_by_itself_when_the_daemon_restarts() {
    let mut d = Daemon::start();
    let (mut app, port) = hello_on_free_port(&d, "phoenix", &["/p/"], &[]);
    let (status, _, body) = get(port, "x", "/p/1");
    assert_eq!(status, 200);
    assert!(body.starts_with("name=phoenix "), "{body}");

    d.proc.kill();
    assert!(
        eventually(5, || try_get(port, "x", "/p/2").is_none()),
        "the port still answers with the daemon gone"
    );
    let control = d.control.clone();
    let d = d.restart();
    assert_eq!(d.control, control);

    let mut last = None;
    let back = eventually(15, || {
        last = try_get(port, "x", "/p/3");
        matches!(&last, Some((200, _)))
    });
    assert!(
        back,
        "hello did not come back on the new daemon (last answer {last:?})\napp log:\n{}\ndaemon log:\n{}",
        app.proc.log_text(),
        d.log()
    );
    let (_, body) = last.expect("an answer");
    assert_eq!(
        body,
        format!("name=phoenix prefix=http://+:{port}/p/ path=/p/3\n")
    );
    assert!(
        matches!(app.proc.child.try_wait(), Ok(None)),
        "the app exited"
    );
    let state = d.state();
    assert_eq!(state["queues"][0]["name"], "phoenix", "{state}");
    assert_eq!(
        state["queues"][0]["processes"][0]["pid"],
        app.proc.child.id(),
        "{state}"
    );
}
