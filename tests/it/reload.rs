//! Reload: the configuration file applied again (`POST /v1/reload` and SIGHUP) without a
//! failed request, a bad file refused with its line while the daemon keeps serving, and
//! the listen list rebound where it changed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Daemon, connect, eventually, hello_on_free_port, read_response, try_get};
use serde_json::json;

/// The test's part of a configuration listening on `ip`, plus `extra` tables.
fn config(ip: &str, extra: &str) -> String {
    format!("iplisten = [\"{ip}\"]\n\n{extra}")
}

/// A daemon on `config(ip, extra)`, on the listen list of its file.
fn start(ip: &str, extra: &str) -> (Daemon, PathBuf) {
    let d = Daemon::builder()
        .tag("reload")
        .config(config(ip, extra))
        .iplisten_from_config()
        .spawn();
    let path = d.config.clone();
    (d, path)
}

fn reload(d: &Daemon) -> (u16, serde_json::Value) {
    d.ctl().call("POST", "/v1/reload", None)
}

/// Sends SIGHUP to the daemon, whose PID its state view gives.
fn sighup(d: &Daemon) {
    let pid = d.state()["pid"].as_u64().expect("pid");
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -HUP {pid}");
}

/// `GET /hello/` on `ip:port`, keep-alive off; `None` when refused or broken.
fn get_at(ip: [u8; 4], port: u16) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /hello/x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(raw.get(9..12)?).parse().ok()
}

#[test]
fn reloads_under_load_fail_no_request() {
    let (d, _) = start("127.0.0.1", "");
    let (_app, port) = hello_on_free_port(&d, "app", &["/hello/"], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Two clients: one on a keep-alive connection, one with a connection per request.
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut kept: Option<TcpStream> = None;
                let mut buf = Vec::new();
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let good = if i == 0 {
                        let s = kept.get_or_insert_with(|| connect(port));
                        s.write_all(b"GET /hello/k HTTP/1.1\r\nHost: example.com\r\n\r\n")
                            .is_ok()
                            && read_response(s, &mut buf, false).0 == 200
                    } else {
                        try_get(port, "example.com", "/hello/c").is_some_and(|(s, _)| s == 200)
                    };
                    let counter = if good { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let variants = [
        "[timers]\nheader_wait = 60\n",
        "[[urlacl]]\nurl = \"http://+:8123/team/\"\nusers = [\"uid:4321\"]\n",
        "[limits]\nmax_request_bytes = 32768\n\n[[queue]]\nname = \"held\"\nlength = 10\n",
        "[[queue]]\nname = \"held\"\nlength = 20\nenabled = false\n",
        "",
    ];
    for (round, extra) in variants.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(150));
        d.write_config(&config("127.0.0.1", extra));
        let (status, body) = reload(&d);
        assert_eq!(status, 200, "reload {round}: {body}");
    }
    // A reload by signal, too: one more "reloaded" line than the API's.
    std::thread::sleep(Duration::from_millis(150));
    let reloads = || d.log().matches("reloaded ").count();
    let before = reloads();
    sighup(&d);
    assert!(eventually(10, || reloads() > before), "{}", d.log());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 50, "only {ok} requests went through");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}

#[test]
fn reload_reports_what_changed() {
    let (d, _) = start("127.0.0.1", "");
    d.write_config(&config(
        "127.0.0.1",
        "[timers]\nentity_body = 30\n\n[[urlacl]]\nurl = \"http://+:8123/team/\"\nusers = [\"uid:4321\"]\n\n[[queue]]\nname = \"held\"\n",
    ));
    let (status, body) = reload(&d);
    assert_eq!(status, 200, "{body}");
    let changes = body["changes"].to_string();
    for what in [
        "timers",
        "reservation added: http://+:8123/team/",
        "queue \\\"held\\\" created",
    ] {
        assert!(changes.contains(what), "{what} in {changes}");
    }
    let state = d.state();
    assert!(
        state["reservations"].to_string().contains("8123/team/"),
        "{state}"
    );
    assert!(state["queues"].to_string().contains("\"held\""), "{state}");
    // Nothing changed: nothing reported.
    let (_, body) = reload(&d);
    assert_eq!(body["changes"], json!([]), "{body}");
}

#[test]
fn a_bad_file_is_refused_with_its_line_and_the_daemon_keeps_serving() {
    let (d, path) = start("127.0.0.1", "[timers]\nheader_wait = 30\n");
    let (_app, port) = hello_on_free_port(&d, "app", &["/hello/"], &[]);
    let good = std::fs::read_to_string(&path).expect("config");
    // A value out of range.
    std::fs::write(&path, good.replace("header_wait = 30", "header_wait = -1")).expect("bad");
    let line = std::fs::read_to_string(&path)
        .expect("config")
        .lines()
        .position(|l| l.contains("header_wait"))
        .expect("line")
        + 1;
    let (status, body) = reload(&d);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], 13, "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(&format!("line {line}")), "{message}");
    assert!(message.contains("timers.header_wait"), "{message}");
    assert!(
        message.contains("keeps its current configuration"),
        "{message}"
    );
    assert_eq!(get_at([127, 0, 0, 1], port), Some(200));
    // A file that does not parse, by signal: refused in the log, still serving.
    std::fs::write(&path, format!("{good}\n[timers\n")).expect("bad");
    sighup(&d);
    assert!(
        eventually(10, || d.log().contains("reload refused")),
        "{}",
        d.log()
    );
    assert_eq!(get_at([127, 0, 0, 1], port), Some(200));
    assert_eq!(d.state()["iplisten"], json!(["127.0.0.1"]));
}

#[test]
fn the_listen_list_is_rebound_where_it_changed() {
    let (d, _) = start("127.0.0.1", "");
    let (_app, port) = hello_on_free_port(&d, "app", &["/hello/"], &[]);
    assert_eq!(get_at([127, 0, 0, 1], port), Some(200));
    d.write_config(&config("127.0.0.2", ""));
    let (status, body) = reload(&d);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["changes"]
            .to_string()
            .contains("listen list: 127.0.0.1 -> 127.0.0.2"),
        "{body}"
    );
    assert_eq!(get_at([127, 0, 0, 2], port), Some(200));
    assert_eq!(
        get_at([127, 0, 0, 1], port),
        None,
        "127.0.0.1 still listens"
    );
    let listeners = d.state()["listeners"].to_string();
    assert!(
        listeners.contains(&format!("127.0.0.2:{port}")),
        "{listeners}"
    );
    assert!(
        !listeners.contains(&format!("127.0.0.1:{port}")),
        "{listeners}"
    );
    // And back.
    d.write_config(&config("127.0.0.1", ""));
    assert_eq!(reload(&d).0, 200);
    assert_eq!(get_at([127, 0, 0, 1], port), Some(200));
    assert_eq!(get_at([127, 0, 0, 2], port), None);
}

#[test]
fn a_held_port_is_named_and_taken_on_reload_once_free() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let queue = format!(
        "[[queue]]\nname = \"legacy\"\nurls = [\"http://+:{port}/legacy/\"]\nverbosity = \"full\"\n"
    );
    let (d, _path) = start("127.0.0.1", &queue);
    // The daemon started; the URL waits, and the state view names who holds the port.
    let state = d.state();
    let failures = state["bind_failures"].to_string();
    assert!(failures.contains(&format!("127.0.0.1:{port}")), "{state}");
    assert!(
        failures.contains(&std::process::id().to_string()),
        "{failures}"
    );
    assert!(d.log().contains("legacy"), "{}", d.log());
    drop(holder);
    let (status, body) = reload(&d);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["changes"].to_string().contains("/legacy/ added"),
        "{body}"
    );
    // No worker: the queue answers by its verbosity once the wait is over, or holds the
    // request; either way the port listens now.
    let state = d.state();
    assert!(
        state["listeners"]
            .to_string()
            .contains(&format!("127.0.0.1:{port}")),
        "{state}"
    );
    assert_eq!(state["bind_failures"], json!([]), "{state}");
}

/// Reloads from the API and from SIGHUP at once, while the file flips between two listen
/// lists: each reload runs whole before the next begins, so the daemon ends listening on
/// exactly the last file's addresses, with no address left failed.
#[test]
fn reloads_from_signals_and_the_api_take_turns() {
    let (d, path) = start("127.0.0.1", "");
    let (_app, port) = hello_on_free_port(&d, "app", &["/hello/"], &[]);
    let one = d.config_text(&config("127.0.0.1", ""));
    let both = d.config_text("iplisten = [\"127.0.0.1\", \"127.0.0.3\"]\n");
    let d = Arc::new(d);
    let api: Vec<_> = (0..4)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || {
                for _ in 0..6 {
                    assert_eq!(reload(&d).0, 200);
                }
            })
        })
        .collect();
    for i in 0..12 {
        std::fs::write(&path, if i % 2 == 0 { &both } else { &one }).expect("config");
        sighup(&d);
        std::thread::sleep(Duration::from_millis(15));
    }
    for t in api {
        t.join().expect("reload thread");
    }
    std::fs::write(&path, &both).expect("config");
    assert_eq!(reload(&d).0, 200);
    let mut state = serde_json::Value::Null;
    assert!(
        eventually(10, || {
            state = d.state();
            let mut listening: Vec<String> = state["listeners"]
                .as_array()
                .expect("listeners")
                .iter()
                .map(|l| l["address"].as_str().expect("address").to_owned())
                .collect();
            listening.sort();
            listening == [format!("127.0.0.1:{port}"), format!("127.0.0.3:{port}")]
                && state["bind_failures"].as_array().is_some_and(Vec::is_empty)
        }),
        "{state}"
    );
    assert_eq!(get_at([127, 0, 0, 3], port), Some(200));
    assert_eq!(get_at([127, 0, 0, 1], port), Some(200));
}

/// A queue's timers resolve against the service's when used (spec §5: 0 or absent
/// inherits): a queue that sets no request-queue timer follows `timers.request_queue`
/// across a reload, one whose `request_queue_timer` or `entity_body` key is removed goes
/// back to the service's, and a waiting request gets the timer the state shows.
#[test]
fn a_reload_reaches_the_timers_queues_inherit() {
    let port = crate::harness::free_port();
    let text = |service: u32, own: &str| {
        format!(
            "[timers]\nrequest_queue = {service}\n\n\
             [[queue]]\nname = \"inherits\"\nurls = [\"http://+:{port}/inherits/\"]\n\n\
             [[queue]]\nname = \"own\"\n{own}\n"
        )
    };
    let (d, path) = start(
        "127.0.0.1",
        &text(60, "request_queue_timer = 5\nentity_body = 7\n"),
    );
    let dir = path.parent().expect("dir").to_owned();
    let timers = |d: &Daemon, name: &str| {
        let state = d.state();
        let q = state["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no queue {name} in {state}"));
        (
            q["queue_timer_ms"].as_u64().expect("queue_timer_ms"),
            q["limits"]["entity_body_ms"]
                .as_u64()
                .expect("entity_body_ms"),
        )
    };
    assert_eq!(timers(&d, "inherits"), (60_000, 0));
    assert_eq!(timers(&d, "own"), (5_000, 7_000));
    std::fs::write(&path, d.config_text(&config("127.0.0.1", &text(1, "")))).expect("config");
    let (status, body) = reload(&d);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        timers(&d, "inherits"),
        (1_000, 0),
        "the service's new value"
    );
    assert_eq!(timers(&d, "own"), (1_000, 0), "keys removed: the service's");
    // No worker: a request waits for the one second the state shows, then is let go
    // (the client gives up after 30 s, well before the old 60).
    let end = crate::harness::ending(
        port,
        b"GET /inherits/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(end, crate::harness::Ending::Closed);
    let logged = || {
        std::fs::read_dir(dir.join("httperr")).is_ok_and(|rd| {
            rd.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("Timer_ReqQueue inherits"))
            })
        })
    };
    assert!(eventually(10, logged), "no Timer_ReqQueue line");
}
