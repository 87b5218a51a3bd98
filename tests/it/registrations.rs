//! Registrations end to end: a port bound with the first URL on it and let go with the
//! last, beside another server on another loopback address; a port another program holds,
//! an address this machine does not own, one outside the listen list, a foreign entry in the
//! listen list; duplicates refused with 183, a URL removed by any spelling of it, and
//! registrations that go with their app or stay with a quiet control session.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::*;
use serde_json::json;

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

/// A port let go binds again at once: its listener closes on a runtime thread a moment
/// after the last registration goes, and a registration meanwhile waits for that instead
/// of finding the port held (by the daemon itself). Here a batch, refused as a whole (its
/// second URL repeats the first) after binding its port, and a registration on the same
/// port right after, 300 times, while clients keep the daemon's threads busy.
#[test]
fn a_port_let_go_binds_again_at_once() {
    let d = Daemon::start();
    let (_app, busy) = hello_on_free_port(&d, "busy", &["/"], &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = try_get(busy, "x", "/");
                }
            })
        })
        .collect();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "again" }));
    let port = free_port();
    let mut refused = Vec::new();
    for i in 0..300 {
        let urls = json!({ "urls": [
            { "url": format!("http://+:{port}/{i}/a/") },
            { "url": format!("http://+:{port}/{i}/a/") },
        ] });
        let (_, body) = ctl.call("POST", "/v1/queues/again/urls", Some(urls));
        assert_eq!(body["code"], 183, "{body}");
        let (status, body) = ctl.add_url("again", &format!("http://+:{port}/{i}/"));
        if status != 201 {
            refused.push(body);
        }
        let (status, _) = ctl.call(
            "DELETE",
            "/v1/queues/again/urls",
            Some(json!({ "url": format!("http://+:{port}/{i}/") })),
        );
        assert!(status == 204 || status == 404);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
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
    // It names who holds the prefix: the queue, and (the test runs as root, who may see
    // them) its process.
    assert!(
        stderr.contains(&format!(
            "http://+:{port}/dup/ is already registered on queue \"a\", served by PID {} (",
            _a.proc.child.id()
        )),
        "{stderr}"
    );
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

/// Sessions have no idle timeout: an app that registers and then says nothing on its
/// control connection keeps its registrations. The only timer on a control connection is
/// `control.request_wait` (hyper is given no timer, so it has no header timeout of its own):
/// here 0.5 s, and the session stays quiet for six times that.
#[test]
fn a_quiet_control_session_keeps_its_registrations() {
    let d = Daemon::builder()
        .tag("quiet")
        .config("[control]\nrequest_wait = 0.5\n")
        .spawn();
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({ "name": "quiet" }));
    let port = free_port();
    assert_eq!(ctl.add_url("quiet", &format!("http://+:{port}/")).0, 201);
    std::thread::sleep(Duration::from_secs(3));
    let state = d.state();
    assert_eq!(
        state["prefixes"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    let (status, body) = ctl.call("GET", "/v1/state", None);
    assert_eq!(status, 200, "{body}");
}
