//! `portshare serve` end to end: the real daemon, the example apps, raw sockets.

use std::io::{Read, Write};

use crate::harness::*;
use serde_json::json;

#[test]
fn two_apps_share_a_port_by_precedence() {
    let d = Daemon::start();
    let (_a, port) = hello_on_free_port(&d, "a", &["/app/"], &[]);
    let _b = d.hello(
        "b",
        &[
            &format!("http://+:{port}/app/deep/"),
            &format!("http://localhost:{port}/"),
        ],
        &[],
    );

    let (s, _, body) = get(port, "example.com", "/app/x");
    assert_eq!(
        (s, body.as_str()),
        (
            200,
            format!("name=a prefix=http://+:{port}/app/ path=/app/x\n").as_str()
        )
    );
    // Longest prefix wins across apps.
    let (s, _, body) = get(port, "example.com", "/app/deep/y");
    assert_eq!(s, 200);
    assert!(body.starts_with("name=b "), "{body}");
    // Strong wildcard (+) beats the explicit host, whatever the path length.
    let (_, _, body) = get(port, "localhost", "/app/z");
    assert!(body.starts_with("name=a "), "{body}");
    // ...and the explicit host takes what + does not claim.
    let (_, _, body) = get(port, "localhost", "/other");
    assert!(
        body.starts_with("name=b prefix=http://localhost:"),
        "{body}"
    );
    // Canonicalization happens before routing: the app never sees a path outside its prefix.
    let (_, _, body) = get(port, "example.com", "/app/deep/%2e%2e/q");
    assert!(
        body.starts_with("name=a ") && body.ends_with("path=/app/q\n"),
        "{body}"
    );
    let (s, _, _) = get(port, "example.com", "/nothing");
    assert_eq!(s, 404);
}

#[test]
fn ports_bind_lazily_and_close_with_the_last_registration() {
    let d = Daemon::start();
    let port = free_port();
    assert!(port_free(port));
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "lazy" }));
    assert!(port_free(port), "nothing registered yet, nothing bound");
    let (status, added) = ctl.add_url("lazy", &format!("http://+:{port}/a/"));
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["listening"], json!([format!("127.0.0.1:{port}")]));
    assert!(!port_free(port), "bound on the first registration");
    let (status, _) = ctl.add_url("lazy", &format!("http://+:{port}/b/"));
    assert_eq!(status, 201);
    let (status, _) = ctl.call(
        "DELETE",
        "/v1/queues/lazy/urls",
        Some(json!({ "url": format!("http://+:{port}/a/") })),
    );
    assert_eq!(status, 204);
    assert!(!port_free(port), "still one registration");
    let (status, _) = ctl.call(
        "DELETE",
        "/v1/queues/lazy/urls",
        Some(json!({ "url": format!("http://+:{port}/b/") })),
    );
    assert_eq!(status, 204);
    assert!(
        eventually(5, || port_free(port)),
        "released with the last registration"
    );
}

#[test]
fn coexists_with_a_server_on_another_loopback_address() {
    let port = free_port();
    // An unrelated server on 127.0.0.2, same port.
    let other = std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2");
    let server = std::thread::spawn(move || {
        let (mut s, _) = other.accept().expect("accept");
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nother");
    });
    let d = Daemon::builder().iplisten("127.0.0.1").spawn();
    let _app = d.hello("mine", &[&format!("http://+:{port}/")], &[]);
    let (s, _, body) = get(port, "x", "/hi");
    assert_eq!(s, 200);
    assert!(body.starts_with("name=mine "), "{body}");
    let mut c = std::net::TcpStream::connect(("127.0.0.2", port)).expect("connect 127.0.0.2");
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    assert!(out.ends_with("other"), "{out}");
    server.join().expect("other server");
}

#[test]
fn a_port_held_by_another_program_names_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "q" }));
    let (status, err) = ctl.add_url("q", &format!("http://+:{port}/"));
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["code"], 32);
    assert_eq!(err["name"], "ERROR_SHARING_VIOLATION");
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("PID {}", std::process::id())),
        "{msg}"
    );
    // The hello example reports the same, with its code, and exits 1.
    let app = App::spawn(
        &d.control,
        "hello",
        "h",
        &[&format!("http://+:{port}/x/")],
        &[],
    );
    let (code, stderr) = app.wait_exit();
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("32") && stderr.contains("ERROR_SHARING_VIOLATION"),
        "{stderr}"
    );
}

#[test]
fn an_address_this_machine_does_not_own_is_invalid_netname() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "q" }));
    // 192.0.2.0/24 is TEST-NET-1: never assigned here; the check binds, sends nothing.
    let (status, err) = ctl.add_url("q", "http://192.0.2.1:8080/");
    assert_eq!(err["code"], 1214, "{status} {err}");
    assert_eq!(err["name"], "ERROR_INVALID_NETNAME");
}

#[test]
fn an_address_outside_the_listen_list_registers_with_a_warning() {
    let d = Daemon::builder().iplisten("127.0.0.1").spawn();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "q" }));
    let port = free_port();
    let (status, added) = ctl.add_url("q", &format!("http://127.0.0.2:{port}/"));
    // 127.0.0.2 is this machine's (all of 127/8 is), but not in the list.
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["listening"], json!([]));
    assert!(
        added["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("nothing listens"),
        "{added}"
    );
    let state = d.state();
    assert!(
        state["prefixes"][0]["warning"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing listens")
    );
    assert!(d.log().contains("nothing listens"));
}

#[test]
fn duplicate_registrations_are_refused_with_183() {
    let d = Daemon::start();
    let (_a, port) = hello_on_free_port(&d, "a", &["/dup/"], &[]);
    let app = App::spawn(
        &d.control,
        "hello",
        "b",
        &[&format!("http://+:{port}/dup/")],
        &[],
    );
    let (code, stderr) = app.wait_exit();
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("183") && stderr.contains("ERROR_ALREADY_EXISTS"),
        "{stderr}"
    );
}

#[test]
fn registrations_go_when_the_app_is_killed() {
    let d = Daemon::start();
    let (mut app, port) = hello_on_free_port(&d, "k", &["/k/"], &[]);
    assert_eq!(get(port, "x", "/k/1").0, 200);
    app.proc.kill();
    assert!(
        eventually(5, || d.state()["prefixes"]
            .as_array()
            .is_some_and(|p| p.is_empty())),
        "registration still there: {}",
        d.state()
    );
    assert!(eventually(5, || port_free(port)), "port not released");
    assert!(d.state()["queues"].as_array().is_some_and(|q| q.is_empty()));
}

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

#[test]
fn spoofed_metadata_and_forwarding_headers_never_reach_an_app() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello(
        "echo",
        &[&format!("http://+:{port}/e/")],
        &["--echo-headers"],
    );
    let req = b"GET /e/x?q=1 HTTP/1.1\r\nHost: h\r\nPortshare-Client-Addr: 6.6.6.6:1\r\nportshare-url-prefix: evil\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Kept: yes\r\nConnection: close\r\n\r\n";
    let (status, _, body) = http_raw(port, req);
    let body = String::from_utf8_lossy(&body).to_lowercase();
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("6.6.6.6") && !body.contains("evil"),
        "{body}"
    );
    assert!(body.contains("x-kept: yes"), "{body}");
    assert!(body.contains("portshare-client-addr: 127.0.0.1:"), "{body}");
    assert!(
        body.contains(&format!("portshare-url-prefix: http://+:{port}/e/")),
        "{body}"
    );
    assert!(body.contains("portshare-raw-url: /e/x?q=1"), "{body}");
}

#[test]
fn a_repeated_header_reaches_the_app_once_with_its_values_joined() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello(
        "echo",
        &[&format!("http://+:{port}/e/")],
        &["--echo-headers"],
    );
    let req = b"GET /e/ HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nAccept: text/html\r\nx-a: 2\r\nX-A: 3\r\nConnection: close\r\n\r\n";
    let (status, _, body) = http_raw(port, req);
    let body = String::from_utf8_lossy(&body).to_lowercase();
    assert_eq!(status, 200, "{body}");
    let lines: Vec<&str> = body.lines().filter(|l| l.starts_with("x-a:")).collect();
    assert_eq!(lines, ["x-a: 1, 2, 3"], "{body}");
    assert!(body.contains("accept: text/html"), "{body}");
}

#[test]
fn a_url_is_removed_by_any_spelling_of_it() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "q" }));
    let (status, body) = ctl.add_url("q", &format!("http://+:{port}/app/"));
    assert_eq!(status, 201, "{body}");
    let (status, body) = ctl.call(
        "DELETE",
        "/v1/queues/q/urls",
        Some(json!({ "url": format!("http://+:{port}/APP/") })),
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(d.state()["prefixes"], json!([]));
}

#[test]
fn a_queue_belongs_to_its_uid() {
    let d = Daemon::start();
    let mut owner = d.ctl();
    owner.create_queue(json!({ "name": "mine" }));
    let uid = nobody_uid();
    // Another uid, through setpriv; the control socket is open to every local user. The
    // client is this test binary again, running only `uid_probe`.
    // A copy in the test's own folder, which that uid can reach wherever the checkout is.
    let exe = d.dir.0.join("uid-probe");
    copy_executable(&std::env::current_exe().expect("test binary"), &exe);
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
        ])
        .arg(&exe)
        .args(only_test(module_path!(), "uid_probe"))
        .env("PORTSHARE_UID_PROBE", &d.control)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv failed under CI: {err}"
            );
            eprintln!("skipped: cannot switch uid here ({err})");
            return;
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv missing under CI: {e}"
            );
            eprintln!("skipped: setpriv not available ({e})");
            return;
        }
    };
    assert!(out.contains("open: 403 "), "{out}");
    assert!(out.contains("\"code\":5"), "{out}");
    assert!(out.contains("patch: 403 "), "{out}");
    assert!(out.contains("upstream: 403 "), "{out}");
    assert!(out.contains("attach: 403 "), "{out}");
}

/// The other uid's side of `a_queue_belongs_to_its_uid`; does nothing in a normal run.
#[test]
fn uid_probe() {
    let Some(control) = std::env::var_os("PORTSHARE_UID_PROBE") else {
        return;
    };
    let mut ctl = Ctl::connect(std::path::Path::new(&control));
    let (status, body) = ctl.call(
        "POST",
        "/v1/queues",
        Some(json!({ "name": "mine", "mode": "open" })),
    );
    println!("open: {status} {body}");
    let (status, body) = ctl.call("PATCH", "/v1/queues/mine", Some(json!({ "length": 5 })));
    println!("patch: {status} {body}");
    // Only root (or the configuration) makes the daemon connect somewhere.
    let (status, body) = ctl.call(
        "POST",
        "/v1/queues",
        Some(json!({ "name": "theirs", "upstream": "127.0.0.1:9" })),
    );
    println!("upstream: {status} {body}");
    let mut raw = std::os::unix::net::UnixStream::connect(&control).expect("connect");
    raw.write_all(b"POST /v1/queues/mine/attach HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: portshare-worker/1\r\nportshare-slots: 1\r\nContent-Length: 0\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut raw, &mut buf, false);
    println!("attach: {status} {}", String::from_utf8_lossy(&body));
}

fn nobody_uid() -> u32 {
    65534
}

#[test]
fn pipelined_requests_are_answered_in_order_and_bodies_stream() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello("p", &[&format!("http://+:{port}/p/")], &[]);
    let mut c = connect(port);
    c.write_all(
        b"GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p/2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /p/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .expect("write");
    let mut buf = Vec::new();
    for n in 1..=3 {
        let (status, _, body) = read_response(&mut c, &mut buf, false);
        assert_eq!(status, 200);
        let body = String::from_utf8_lossy(&body).into_owned();
        assert!(body.ends_with(&format!("path=/p/{n}\n")), "{body}");
    }
}

#[test]
fn malformed_requests_get_http_sys_answers() {
    let d = Daemon::start();
    let port = free_port();
    let _app = d.hello("m", &[&format!("http://+:{port}/")], &[]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(20000)
    );
    for (request, status, heading, reason) in [
        (
            &b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"[..],
            505,
            "HTTP Version Not Supported",
            "Version_N/S",
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            400,
            "Bad Request - Invalid Hostname",
            "Hostname",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
            411,
            "Length Required",
            "LengthRequired",
        ),
        // The head passes MaxRequestBytes (16384) before its one field passes
        // MaxFieldLength.
        (
            big.as_bytes(),
            400,
            "Bad Request - Request Too Long",
            "RequestLength",
        ),
    ] {
        let (s, head, body) = http_raw(port, request);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(s, status, "{head}");
        assert!(body.contains(&format!("<h2>{heading}</h2>")), "{body}");
        assert!(head.contains("\r\nServer: portshare/"), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(
            eventually(5, || d.log().contains(&format!(" {status} - {reason} -"))),
            "no {reason} line in the error log:\n{}",
            d.log()
        );
    }
}

/// A listen-list entry this machine does not own (192.0.2.1, a documentation address) is
/// skipped with a warning instead of failing every registration on a new port (spec §8).
#[test]
fn a_foreign_listen_list_entry_is_skipped_not_fatal() {
    let d = Daemon::builder()
        .tag("foreign")
        .config("iplisten = [\"127.0.0.1\", \"192.0.2.1\"]\n")
        .iplisten_from_config()
        .spawn();
    let (_app, port) = hello_on_free_port(&d, "one", &["/a/"], &[]);
    let (status, _, body) = get(port, "x", "/a/x");
    assert_eq!(status, 200, "{body}");
    let state = d.state();
    assert_eq!(
        state["listeners"][0]["address"],
        format!("127.0.0.1:{port}"),
        "{state}"
    );
    assert!(
        d.log()
            .contains("192.0.2.1 is in the IP listen list but is no address of this machine"),
        "{}",
        d.log()
    );
}
