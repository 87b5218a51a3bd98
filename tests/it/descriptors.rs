//! The descriptor budget and the control-connection caps against a running daemon: many
//! uids holding control connections open cannot starve another user's application, nor
//! keep root out; a command refused at its user's cap says why; a silent control
//! connection is closed; an accept loop out of descriptors sheds connections and recovers.
//!
//! The daemons run under a small open-file limit (`prlimit`), the other uids through
//! `setpriv` with numeric ids; the connections are held by this test binary again, running
//! only `hog` as each uid.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    App, Ctl, Daemon, TempDir, as_uid, can_switch_uid, connect, copy_executable, eventually,
    example_bin, free_port, have_prlimit, have_python, only_test, read_until_close, try_call,
    try_get,
};
use crate::upstream_owner::{SESSION, py};
use serde_json::{Value, json};

/// The uids that hold control connections, and the uid of the application that must go on
/// answering.
const HOGS: [u32; 3] = [65534, 65533, 65532];
const APP_UID: u32 = 65531;

/// Requests sent to the application while the connections are held.
const REQUESTS: usize = 200;

/// A daemon limited to `nofile` open files (else the test's limit), with `control` as its
/// `[control]` table.
fn daemon(nofile: Option<u64>, control: &str) -> Daemon {
    let builder = Daemon::builder()
        .tag("fd")
        .config(format!("[control]\n{control}\n"));
    match nofile {
        Some(n) => builder
            .wrapper(&["prlimit", &format!("--nofile={n}:{n}"), "--"])
            .spawn(),
        None => builder.spawn(),
    }
}

/// The `hello` example as `APP_UID`, on a loopback prefix of a free port (the localhost
/// exemption lets any user register it).
fn app_of_another_user(d: &Daemon) -> (App, u16) {
    let exe = d.dir.0.join("hello");
    copy_executable(&example_bin("hello"), &exe);
    for _ in 0..5 {
        let port = free_port();
        let prefix = format!("http://127.0.0.1:{port}/v/");
        let mut app = App::spawn_via(
            &as_uid(APP_UID),
            &exe,
            &d.control,
            "victim",
            &[&prefix],
            &[],
        );
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut app.stdout, &mut line);
        if line.trim() == "ready" {
            return (app, port);
        }
        let log = app.proc.log_text();
        assert!(
            log.contains("ERROR_SHARING_VIOLATION"),
            "hello failed:\n{log}"
        );
    }
    panic!("no free port after 5 tries");
}

/// A `hog` process: this test binary as `uid`, holding control connections until its stdin
/// closes.
struct Hog {
    child: Child,
}

impl Hog {
    fn start(d: &Daemon, uid: u32, count: usize, queues: bool) -> Hog {
        let exe = d.dir.0.join("hog");
        if !exe.exists() {
            copy_executable(&std::env::current_exe().expect("test binary"), &exe);
        }
        let wrapper = as_uid(uid);
        let child = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(&exe)
            .args(only_test(module_path!(), "hog"))
            .env("PORTSHARE_HOG", &d.control)
            .env("PORTSHARE_HOG_COUNT", count.to_string())
            .env("PORTSHARE_HOG_QUEUES", if queues { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a hog");
        Hog { child }
    }

    /// Waits for the hog's report: once it is out, the hog holds what it could get.
    fn report(&mut self) -> Value {
        let out = self.child.stdout.as_mut().expect("piped stdout");
        let mut reader = std::io::BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("hog output");
            assert!(n > 0, "the hog ended without a report");
            // The test harness may print its own words before the report on the line.
            if let Some(at) = line.find("HOG ") {
                return serde_json::from_str(line[at + 4..].trim()).expect("hog report");
            }
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `REQUESTS` requests to the application, one connection each, within a minute;
/// returns how many were answered 200 and each one's time.
fn load(port: u16) -> (usize, Vec<Duration>) {
    let until = Instant::now() + Duration::from_secs(60);
    let mut ok = 0;
    let mut times = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        if Instant::now() >= until {
            break;
        }
        let start = Instant::now();
        if let Some((200, body)) = try_get(port, "localhost", &format!("/v/{i}"))
            && body.contains(&format!("path=/v/{i}"))
        {
            ok += 1;
        }
        times.push(start.elapsed());
    }
    (ok, times)
}

fn print_times(what: &str, mut times: Vec<Duration>) {
    times.sort();
    if times.is_empty() {
        return;
    }
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{what}: {} requests, median {:?}, p99 {:?}",
        times.len(),
        at(0.5),
        at(0.99)
    );
}

/// `portshare show servicestate` as root, within 20 s.
fn servicestate(control: &Path) -> (bool, String) {
    let mut child = Command::new(crate::harness::portshare_bin())
        .args(["show", "servicestate", "--control"])
        .arg(control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portshare show");
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            return (out.status.success(), text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (false, "portshare show did not finish within 20 s".into())
}

#[test]
fn per_uid_caps_hold_and_another_users_app_answers_every_request() {
    if !have_prlimit() || !can_switch_uid() {
        return;
    }
    let d = daemon(
        Some(1024),
        "request_wait = 60\nmax_connections_per_uid = 6\nmax_sessions_per_uid = 2\nmax_queues_per_uid = 3",
    );
    let (_app, port) = app_of_another_user(&d);
    // Twice the per-uid cap from each uid, the first connections creating queues.
    let mut hogs: Vec<Hog> = HOGS
        .iter()
        .map(|&uid| Hog::start(&d, uid, 12, true))
        .collect();
    let reports: Vec<Value> = hogs.iter_mut().map(Hog::report).collect();
    for (uid, r) in HOGS.iter().zip(&reports) {
        assert_eq!(r["held"], 6, "uid {uid}: {r}");
        // Queues: three, then the queue cap; two let go; then one more session may hold a
        // queue, and a third may not.
        let q = r["queues"].as_array().expect("queues");
        let kinds: Vec<&str> = q.iter().filter_map(Value::as_str).collect();
        assert_eq!(
            kinds,
            [
                "201",
                "201",
                "201",
                "429 1816 max_queues_per_uid",
                "204",
                "204",
                "201",
                "429 1816 max_sessions_per_uid"
            ],
            "uid {uid}: {r}"
        );
        let refused = r["refused"].as_object().expect("refused");
        let answered = refused.get("429 1816").and_then(Value::as_u64).unwrap_or(0);
        let closed = refused.get("closed").and_then(Value::as_u64).unwrap_or(0);
        assert_eq!(answered + closed, 6, "uid {uid}: {r}");
    }

    let (ok, times) = load(port);
    assert_eq!(ok, REQUESTS, "the other user's application missed requests");
    print_times("caps held", times);

    let (shown, text) = servicestate(&d.control);
    assert!(shown, "{text}");
    assert!(
        text.contains("Descriptor budget (open-file limit 1024):"),
        "{text}"
    );
    let state = d.state();
    let budget = &state["budget"];
    assert_eq!(budget["control"]["max"], 128, "{budget}");
    assert_eq!(budget["control_admin"], 8, "{budget}");
    // 18 held by the hogs, 2 by the application, this one: nothing else is open.
    assert!(budget["control"]["open"].as_u64() >= Some(21), "{budget}");
    let owned = |uid: u32| {
        state["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .filter(|q| q["owner_uid"] == uid)
            .count()
    };
    for uid in HOGS {
        assert_eq!(owned(uid), 2, "uid {uid}");
    }
    drop(hogs);
    // Their places come back: the caps count what is open, not what was.
    assert!(eventually(10, || {
        d.state()["budget"]["control"]["open"].as_u64() <= Some(3)
    }));
    let mut again = Hog::start(&d, HOGS[0], 3, false);
    assert_eq!(again.report()["held"], 3);
}

/// The daemon answers a connection over its user's cap with the reason and closes it at
/// once; `portshare` (on the SDK's client) must still print that reason, not a closed
/// connection.
#[test]
fn a_command_refused_at_its_users_cap_says_why() {
    if !can_switch_uid() {
        return;
    }
    let d = daemon(None, "max_connections_per_uid = 2");
    let mut hog = Hog::start(&d, HOGS[0], 2, false);
    assert_eq!(hog.report()["held"], 2);
    let exe = d.dir.0.join("portshare");
    copy_executable(&crate::harness::portshare_bin(), &exe);
    let wrapper = as_uid(HOGS[0]);
    for _ in 0..5 {
        let out = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(&exe)
            .args(["show", "urlacl", "--control"])
            .arg(&d.control)
            .output()
            .expect("run portshare show");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("portshare show urlacl: uid "), "{err}");
        assert!(err.contains("(control.max_connections_per_uid)"), "{err}");
        assert!(err.contains("(1816 ERROR_NOT_ENOUGH_QUOTA)"), "{err}");
    }
}

#[test]
fn a_flood_of_control_connections_leaves_room_for_apps_and_administrators() {
    if !have_prlimit() || !can_switch_uid() {
        return;
    }
    // 256 descriptors: 32 control places, the last 8 for administrators. The uids have
    // no cap of their own below the share.
    let d = daemon(Some(256), "request_wait = 60");
    let (_app, port) = app_of_another_user(&d);
    let mut hogs: Vec<Hog> = HOGS
        .iter()
        .map(|&uid| Hog::start(&d, uid, 100, false))
        .collect();
    let reports: Vec<Value> = hogs.iter_mut().map(Hog::report).collect();
    let held: u64 = reports.iter().filter_map(|r| r["held"].as_u64()).sum();
    // 24 places for users, 2 of them the application's; root's own connections, while
    // open, take from the same places.
    assert!((18..=22).contains(&held), "{reports:?}");
    for r in &reports {
        let refused = r["refused"].as_object().expect("refused");
        for kind in refused.keys() {
            assert!(kind == "503 4" || kind == "closed", "{r}");
        }
    }

    let (ok, times) = load(port);
    assert_eq!(ok, REQUESTS, "the other user's application missed requests");
    print_times("control share spent", times);

    let (shown, text) = servicestate(&d.control);
    assert!(shown, "{text}");
    assert!(
        text.contains("Control connections: ") && text.contains("(the last 8 for administrators)"),
        "{text}"
    );
    // Anyone else is refused, and told why.
    let mut late = Hog::start(&d, 65530, 1, false);
    let r = late.report();
    assert_eq!(r["held"], 0, "{r}");
    let why = r["messages"][0].as_str().unwrap_or("");
    assert!(
        why.contains("kept for administrators") || r["refused"]["closed"] == 1,
        "{r}"
    );
    assert!(
        d.log().contains("control connection refused"),
        "{}",
        d.log()
    );
    drop(hogs);
}

#[test]
fn client_connections_stop_at_their_share() {
    if !have_prlimit() {
        return;
    }
    // 256 descriptors: 112 client connections.
    let d = daemon(Some(256), "");
    let (_app, port) = crate::harness::hello_on_free_port(&d, "c", &["/c/"], &[]);
    let idle: Vec<_> = (0..120).map(|_| connect(port)).collect();
    assert!(eventually(10, || {
        d.state()["budget"]["clients"]["open"] == 112
    }));
    let state = d.state();
    assert_eq!(
        state["budget"]["clients"]["max"], 112,
        "{}",
        state["budget"]
    );
    // The rest wait in the backlog and are served once places come free.
    drop(idle);
    assert!(eventually(10, || try_get(port, "h", "/c/")
        .is_some_and(|(s, _)| s == 200)));
}

#[test]
fn listening_sockets_stop_at_their_share() {
    if !have_prlimit() {
        return;
    }
    // 256 descriptors: 40 listening sockets.
    let d = daemon(Some(256), "");
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "ports" }));
    let mut bound = 0;
    let mut refusal = Value::Null;
    for _ in 0..60 {
        let (status, body) = ctl.add_url("ports", &format!("http://127.0.0.1:{}/", free_port()));
        match status {
            201 => bound += 1,
            // Another program took the port meanwhile.
            409 if body["code"] == 32 => {}
            _ => {
                refusal = body;
                break;
            }
        }
    }
    assert_eq!(bound, 40);
    assert_eq!(refusal["code"], 4, "{refusal}");
    assert_eq!(refusal["name"], "ERROR_TOO_MANY_OPEN_FILES", "{refusal}");
    assert_eq!(d.state()["budget"]["listeners"]["open"], 40);
}

#[test]
fn a_silent_control_connection_is_closed() {
    let d = daemon(None, "request_wait = 0.5");
    let closed_within = |s: &mut UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        matches!(s.read(&mut byte), Ok(0))
    };

    // Nothing sent: closed once the wait is over, not before.
    let start = Instant::now();
    let mut silent = UnixStream::connect(&d.control).expect("connect");
    assert!(
        closed_within(&mut silent),
        "a silent connection stayed open"
    );
    assert!(start.elapsed() >= Duration::from_millis(450));

    // One request, then silence.
    let mut once = UnixStream::connect(&d.control).expect("connect");
    let (status, _) = try_call(&mut once, "GET", "/v1/state", None).expect("state");
    assert_eq!(status, 200);
    assert!(closed_within(&mut once), "an idle connection stayed open");

    // A body that never comes.
    let mut slow = UnixStream::connect(&d.control).expect("connect");
    slow.write_all(b"POST /v1/queues HTTP/1.1\r\nHost: p\r\nContent-Length: 20\r\n\r\n{")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let text = read_until_close(&mut slow, "a body that never comes").text();
    assert!(text.contains("did not come within"), "{text}");

    // A session holding a queue lives as long as its connection.
    let mut holder = UnixStream::connect(&d.control).expect("connect");
    let (status, body) = try_call(
        &mut holder,
        "POST",
        "/v1/queues",
        Some(json!({ "name": "kept" })),
    )
    .expect("create");
    assert_eq!(status, 201, "{body}");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = try_call(&mut holder, "GET", "/v1/state", None).expect("still open");
    assert_eq!(status, 200);
    assert!(
        body["queues"]
            .as_array()
            .is_some_and(|q| q.iter().any(|q| q["name"] == "kept"))
    );

    // And so does an application: its session holds a queue, its worker is attached.
    let (_app, port) = crate::harness::hello_on_free_port(&d, "w", &["/w/"], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(try_get(port, "h", "/w/").map(|(s, _)| s), Some(200));
}

#[test]
fn out_of_descriptors_the_accept_loops_shed_and_recover() {
    if !have_prlimit() {
        return;
    }
    let d = Daemon::start();
    let (_app, port) = crate::harness::hello_on_free_port(&d, "e", &["/e/"], &[]);
    assert_eq!(try_get(port, "h", "/e/").map(|(s, _)| s), Some(200));
    // An httperr file is open, as on a daemon that has served a while (the writer opening
    // its first file would take the descriptor the spare gives up).
    assert_eq!(try_get(port, "h", "/none/").map(|(s, _)| s), Some(404));
    let httperr = d.errlog_folder().join("httperr1.log");
    assert!(eventually(10, || httperr.exists()));
    let pid = d.proc.child.id();
    let before = limit_of(pid);
    // The lowest descriptor number free in the daemon, once the connections of the test's
    // first request are gone: with the limit there, every new descriptor fails with
    // EMFILE, except one in the spare's place below it.
    let fds = || -> std::collections::BTreeSet<u64> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the daemon's descriptors")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    };
    let mut open = fds();
    assert!(eventually(10, || {
        std::thread::sleep(Duration::from_millis(200));
        let now = fds();
        std::mem::replace(&mut open, now) == open
    }));
    let lowest_free = (0..).find(|n| !open.contains(n)).expect("a free number");
    set_limit(pid, &format!("{lowest_free}:{}", before.1));

    // Each connection is closed at once instead of hanging in the backlog.
    for _ in 0..20 {
        let mut c = connect(port);
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = c.write_all(b"GET /e/ HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}\n{}", d.log()),
        }
    }
    // So is a control connection.
    let mut ctl = UnixStream::connect(&d.control).expect("connect");
    ctl.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let r = try_call(&mut ctl, "GET", "/v1/state", None);
    assert!(r.is_err(), "{r:?}\n{}", d.log());

    set_limit(pid, &format!("{}:{}", before.0, before.1));
    assert!(eventually(10, || try_get(port, "h", "/e/")
        .is_some_and(|(s, _)| s == 200)));
    let log = d.log();
    assert!(log.contains("Connections_Refused"), "{log}");
    assert!(eventually(10, || {
        std::fs::read_to_string(&httperr)
            .is_ok_and(|t| t.matches("Connections_Refused").count() >= 20)
    }));
    // Two accept loops, twenty refusals: the warnings are held back, not one per refusal.
    let warnings = log.matches("cannot accept").count();
    assert!((1..=4).contains(&warnings), "{warnings} warnings:\n{log}");
    assert_eq!(d.state()["pid"], pid);
}

fn limit_of(pid: u32) -> (String, String) {
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            "--nofile",
            "--raw",
            "--noheadings",
        ])
        .args(["--output", "SOFT,HARD"])
        .output()
        .expect("prlimit");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace().map(str::to_owned);
    (
        words.next().expect("soft limit"),
        words.next().expect("hard limit"),
    )
}

fn set_limit(pid: u32, nofile: &str) {
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={nofile}")])
        .status()
        .expect("prlimit")
        .success();
    assert!(ok, "prlimit --nofile={nofile} failed");
}

/// The other uids' side: holds up to `PORTSHARE_HOG_COUNT` control connections, the first
/// ones creating queues when `PORTSHARE_HOG_QUEUES` is 1, prints a report and keeps them
/// until stdin closes. Does nothing in a normal run.
#[test]
fn hog() {
    let Some(control) = std::env::var_os("PORTSHARE_HOG") else {
        return;
    };
    let control = Path::new(&control);
    let count: usize = std::env::var("PORTSHARE_HOG_COUNT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let queues = std::env::var("PORTSHARE_HOG_QUEUES").as_deref() == Ok("1");
    let until = Instant::now() + Duration::from_secs(30);
    let mut held: Vec<UnixStream> = Vec::new();
    let mut refused: std::collections::BTreeMap<String, u64> = Default::default();
    let mut messages: Vec<String> = Vec::new();
    let mut steps: Vec<String> = Vec::new();
    let open = || {
        let s = UnixStream::connect(control).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(s)
    };
    let kind = |r: &Result<(u16, Value), String>| match r {
        Ok((status, body)) if body["code"].is_u64() => {
            let message = body["message"].as_str().unwrap_or("");
            let key = ["max_queues_per_uid", "max_sessions_per_uid"]
                .into_iter()
                .find(|k| message.contains(k))
                .map(|k| format!(" {k}"))
                .unwrap_or_default();
            format!("{status} {}{key}", body["code"])
        }
        Ok((status, _)) => status.to_string(),
        Err(_) => "closed".to_owned(),
    };
    if queues {
        // Three connections: the first creates queues up to the cap and lets two go, the
        // second holds one more, the third may not.
        let mut conns: Vec<UnixStream> = (0..3).filter_map(|_| open()).collect();
        assert_eq!(conns.len(), 3, "connect");
        let mut names = Vec::new();
        for _ in 0..4 {
            let r = try_call(&mut conns[0], "POST", "/v1/queues", Some(json!({})));
            if let Ok((201, body)) = &r {
                names.push(body["name"].as_str().unwrap_or("").to_owned());
            }
            steps.push(kind(&r));
        }
        for name in names.iter().take(2) {
            let path = format!("/v1/queues/{}", name.replace('~', "%7E"));
            steps.push(kind(&try_call(&mut conns[0], "DELETE", &path, None)));
        }
        for c in &mut conns[1..] {
            steps.push(kind(&try_call(c, "POST", "/v1/queues", Some(json!({})))));
        }
        held.extend(conns);
    }
    let tried = |held: &Vec<UnixStream>, refused: &std::collections::BTreeMap<String, u64>| {
        held.len() + refused.values().sum::<u64>() as usize
    };
    while tried(&held, &refused) < count && Instant::now() < until {
        let Some(mut s) = open() else {
            *refused.entry("connect".into()).or_default() += 1;
            continue;
        };
        let r = try_call(&mut s, "GET", "/v1/state", None);
        match &r {
            Ok((200, _)) => held.push(s),
            _ => {
                if let Ok((_, body)) = &r {
                    messages.push(body["message"].as_str().unwrap_or("").to_owned());
                }
                *refused.entry(kind(&r)).or_default() += 1;
            }
        }
    }
    let report = json!({
        "held": held.len(),
        "refused": refused,
        "queues": steps,
        "messages": messages,
    });
    println!("HOG {report}");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
}

/// No user grows the daemon without bound by registering URLs: the queues one user owns
/// hold at most `control.max_urls_per_uid`; the next is refused with 1816 naming the cap,
/// and a URL removed makes room again. Administrators have no cap.
#[test]
fn urls_stop_at_their_users_cap() {
    const UID: u32 = 60_311;
    if !can_switch_uid() || !have_python() {
        return;
    }
    let port = free_port();
    let d = Daemon::builder()
        .dir(TempDir::open_to_all("url-cap"))
        .config(format!(
            "[control]\nmax_urls_per_uid = 3\n\n\
             [[urlacl]]\nurl = \"http://+:{port}/\"\nusers = [\"uid:{UID}\"]\n"
        ))
        .spawn();
    let url = |n: u32| format!("http://+:{port}/u{n}/");
    let urls = "/v1/queues/capped/urls";
    let mut calls = vec![json!(["POST", "/v1/queues", { "name": "capped" }])];
    calls.extend((0..4).map(|n| json!(["POST", urls, { "url": url(n) }])));
    calls.push(json!(["DELETE", urls, { "url": url(0) }]));
    calls.push(json!(["POST", urls, { "url": url(4) }]));
    let control = d.control.to_string_lossy().into_owned();
    let (_session, lines) = py(
        Some(UID),
        SESSION,
        &[&control, &Value::Array(calls).to_string()],
    );
    let results: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .collect();
    let statuses: Vec<&str> = results.iter().map(|r| &r[..3]).collect();
    assert_eq!(
        statuses,
        ["201", "201", "201", "201", "429", "204", "201"],
        "{results:#?}"
    );
    assert!(
        results[4].contains("1816") && results[4].contains("max_urls_per_uid"),
        "{}",
        results[4]
    );
    // Root, an administrator, registers past it (on a port the reservation leaves free).
    let other = free_port();
    let mut root = Ctl::connect(&d.control);
    root.create_queue(json!({ "name": "roots" }));
    for n in 0..5 {
        let (status, body) = root.add_url("roots", &format!("http://+:{other}/r{n}/"));
        assert_eq!(status, 201, "{body}");
    }
}
