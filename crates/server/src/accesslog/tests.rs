//! The access log's unit tests.

use std::sync::mpsc::Receiver;

use super::*;
use crate::handoff::Msg;
use crate::head::{HeadLimits, Parsed, parse_head};
use crate::queue::Props;
use crate::testutil::{T, TempDir, at};

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn line<'a>(agent: &'a [u8], query: &'a [u8]) -> Line<'a> {
    Line {
        now: at(T),
        local: "192.0.2.1:8080".parse().expect("addr"),
        client: "192.0.2.10".parse().expect("addr"),
        method: b"GET",
        stem: b"/app/x",
        query,
        agent,
        referer: b"",
        status: Some(200),
        win32: 0,
        taken_ms: 12,
        queue: b"my queue",
    }
}

#[test]
fn w3c_line_and_escaping() {
    assert_eq!(
        line(b"curl/8.0", b"a=1&b=2").w3c(),
        "2024-05-01 12:00:01 192.0.2.1 GET /app/x a=1&b=2 8080 192.0.2.10 curl/8.0 - 200 0 12 \
         my+queue"
    );
    // A client's CR and LF cannot end the line or start a forged one.
    let hostile = b"Mozilla/5.0 (X)\r\n2024-05-01 12:00:00 10.0.0.1 GET /admin - 80 1.2.3.4";
    let text = Line {
        status: None,
        win32: WIN32_ABORTED,
        ..line(hostile, b"")
    }
    .w3c();
    assert!(!text.contains(['\r', '\n']), "{text}");
    assert!(
        text.contains(" Mozilla/5.0+(X)%0D%0A2024-05-01+12:00:00+10.0.0.1+GET+/admin+-+80+1.2.3.4 - - 1236 12 "),
        "{text}"
    );
    // One field per column, whatever the values hold.
    assert_eq!(text.split(' ').count(), FIELDS.len(), "{text}");
    let mut s = String::new();
    w3c_value(&mut s, b"\x00\x1f\x7f\xc3\xa9 %+");
    assert_eq!(s, "%00%1F%7F%C3%A9+%+");
}

#[test]
fn json_line_and_escaping() {
    let hostile = b"a \"b\"\r\n\\ \x01 caf\xc3\xa9 \xff";
    let text = line(hostile, b"").json();
    assert!(!text.contains(['\r', '\n']), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(v["cs(User-Agent)"], "a \"b\"\r\n\\ \u{1} café \u{fffd}");
    assert_eq!(v["date"], "2024-05-01");
    assert_eq!(v["time"], "12:00:01");
    assert_eq!(v["s-ip"], "192.0.2.1");
    assert_eq!(v["s-port"], 8080);
    assert_eq!(v["c-ip"], "192.0.2.10");
    assert_eq!(v["cs-uri-query"], serde_json::Value::Null);
    assert_eq!(v["sc-status"], 200);
    assert_eq!(v["sc-win32-status"], 0);
    assert_eq!(v["time-taken"], 12);
    assert_eq!(v["s-queuename"], "my queue");
    assert_eq!(v.as_object().map(|o| o.len()), Some(FIELDS.len()));
}

#[test]
fn queue_folder_names_stay_in_the_folder() {
    for (name, want) in [
        ("app", "app"),
        ("my.app-1_x", "my.app-1_x"),
        ("../../etc", "..%2F..%2Fetc"),
        ("a/b", "a%2Fb"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("line\nbreak", "line%0Abreak"),
        ("~unnamed 7", "%7Eunnamed%207"),
        ("café", "caf%C3%A9"),
    ] {
        assert_eq!(folder_name(name), want, "{name:?}");
    }
    let long = "é".repeat(260);
    let a = folder_name(&long);
    let b = folder_name(&format!("{}x", "é".repeat(259)));
    assert!(a.len() <= MAX_NAME + 17 && a.len() <= 255, "{a}");
    assert_ne!(a, b, "distinct names keep distinct folders");
    // Not cut inside a `%XX`.
    let cut = a.split('~').next().unwrap_or_default();
    assert!(cut.ends_with("%A9"), "{a}");
}

fn writer(dir: &TempDir, format: AccessLogFormat, rollover: AccessLogRollover) -> Writer {
    Writer {
        root: dir.0.clone(),
        format,
        rollover,
        max_size: 10_485_760,
        uid: me(),
        sets: HashMap::new(),
        dropped: Arc::default(),
        reported: 0,
    }
}

#[test]
fn rolls_over_by_day_and_by_hour() {
    let dir = TempDir::made("period");
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
    w.append(None, at(T), "one");
    w.append(None, at(T + 3600), "two");
    w.append(None, at(T + 86400), "three");
    w.flush();
    assert_eq!(dir.names(), ["u_ex240501.log", "u_ex240502.log"]);
    let first = dir.read("u_ex240501.log");
    assert!(first.starts_with("#Software: Microsoft HTTP API 2.0\n#Version: 1.0\n#Date: "));
    assert!(
        first.contains(
            "\n#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port c-ip \
             cs(User-Agent) cs(Referer) sc-status sc-win32-status time-taken s-queuename\n"
        ),
        "{first}"
    );
    assert!(first.ends_with("\none\ntwo\n"), "{first}");
    assert!(dir.read("u_ex240502.log").ends_with("\nthree\n"));

    let dir = TempDir::made("hourly");
    let mut w = writer(&dir, AccessLogFormat::Json, AccessLogRollover::Hourly);
    w.append(None, at(T), "{}");
    w.append(None, at(T + 3600), "{}");
    w.flush();
    assert_eq!(dir.names(), ["u_ex24050112.jsonl", "u_ex24050113.jsonl"]);
    assert_eq!(
        dir.read("u_ex24050112.jsonl"),
        "{}\n",
        "JSON files have no directives"
    );
    for name in dir.names() {
        let mode = std::fs::metadata(dir.0.join(&name)).map(|m| m.mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o640), "{name}");
    }
}

#[test]
fn rolls_over_by_size_and_continues_after_a_restart() {
    let dir = TempDir::made("size");
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Size);
    let text = "x".repeat(99);
    w.max_size = 1000;
    for _ in 0..20 {
        w.append(None, at(T), &text);
    }
    w.flush();
    let names = dir.names();
    assert!(names.len() >= 3, "{names:?}");
    for name in &names {
        let len = std::fs::metadata(dir.0.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len <= 1000, "{name}: {len}");
        assert!(dir.read(name).starts_with("#Software: "), "{name}");
    }
    let total: usize = names
        .iter()
        .map(|n| dir.read(n).matches(&text).count())
        .sum();
    assert_eq!(total, 20);
    assert_eq!(names[0], "u_extend1.log");
    // A new writer (a restart) appends to the last file while a line fits, else the
    // next number.
    let last = names.last().cloned().unwrap_or_default();
    drop(w);
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Size);
    w.max_size = 1000;
    w.append(None, at(T), "after");
    w.flush();
    let now = dir.names();
    let holder = now
        .iter()
        .find(|n| dir.read(n).contains("\nafter\n"))
        .cloned()
        .unwrap_or_default();
    assert!(holder == last || now.len() == names.len() + 1, "{now:?}");
    assert_eq!(w.dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn per_queue_sets_live_in_encoded_folders() {
    let dir = TempDir::made("perqueue");
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
    w.append(Some("../evil".into()), at(T), "a");
    w.append(Some("ok".into()), at(T), "b");
    w.flush();
    assert_eq!(dir.names(), ["..%2Fevil", "ok"]);
    let sub = dir.0.join("..%2Fevil");
    let mode = std::fs::metadata(&sub).map(|m| m.mode() & 0o777).ok();
    assert_eq!(mode, Some(0o750));
    assert!(
        std::fs::read_to_string(sub.join("u_ex240501.log")).is_ok_and(|t| t.ends_with("\na\n"))
    );
}

#[test]
fn open_files_stay_under_the_cap() {
    let dir = TempDir::made("cap");
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
    for i in 0..MAX_OPEN + 6 {
        w.append(Some(format!("q{i}")), at(T), "x");
    }
    let open = w.sets.values().filter(|s| s.current.is_some()).count();
    assert_eq!(open, MAX_OPEN);
    // The first queue's file was closed, not lost: its line is there.
    assert!(dir.read("q0/u_ex240501.log").ends_with("\nx\n"));
    w.append(Some("q0".into()), at(T), "y");
    w.flush();
    assert!(dir.read("q0/u_ex240501.log").ends_with("\nx\ny\n"));
    assert_eq!(w.dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_planted_symlink_is_not_followed() {
    let dir = TempDir::made("symlink");
    let outside = TempDir::made("symlink-target");
    let target = outside.0.join("victim");
    std::fs::write(&target, "precious\n").expect("victim");
    std::os::unix::fs::symlink(&target, dir.0.join("u_ex240501.log")).expect("symlink");
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
    w.append(None, at(T), "line");
    w.flush();
    assert_eq!(
        std::fs::read_to_string(&target).ok().as_deref(),
        Some("precious\n")
    );
    assert_eq!(w.dropped.load(Ordering::Relaxed), 1);
    // A FIFO does not hold the writer, and is not written either.
    let dir = TempDir::made("fifo");
    nix::unistd::mkfifo(&dir.0.join("u_ex240501.log"), nix::sys::stat::Mode::S_IRWXU)
        .expect("mkfifo");
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
    w.append(None, at(T), "line");
    assert_eq!(w.dropped.load(Ordering::Relaxed), 1);
    // A hard link to another file is refused.
    let dir = TempDir::made("hardlink");
    let other = dir.0.join("other");
    std::fs::write(&other, "other\n").expect("other");
    std::fs::hard_link(&other, dir.0.join("u_ex240501.log")).expect("link");
    let mut w = writer(&dir, AccessLogFormat::W3c, AccessLogRollover::Daily);
    w.append(None, at(T), "line");
    assert_eq!(
        std::fs::read_to_string(&other).ok().as_deref(),
        Some("other\n")
    );
}

#[test]
fn the_folder_must_be_the_daemons_own() {
    let dir = TempDir::made("folder");
    let uid = me();
    let made = dir.0.join("a").join("b");
    own_folder(&made, uid, true).expect("created");
    let mode = std::fs::metadata(&made).map(|m| m.mode() & 0o777).ok();
    assert_eq!(mode, Some(0o750));
    let open = dir.0.join("open");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let e = own_folder(&open, uid, true).expect_err("world-writable");
    assert!(e.to_string().contains("others may write"), "{e}");
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&made, &link).expect("symlink");
    let e = own_folder(&link, uid, true).expect_err("a symlink");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let file = dir.0.join("file");
    std::fs::write(&file, "").expect("file");
    assert!(own_folder(&file, uid, true).is_err());
    if uid == 0 {
        let theirs = dir.0.join("theirs");
        std::fs::create_dir(&theirs).expect("dir");
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let e = own_folder(&theirs, uid, true).expect_err("another account's");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }
}

impl Log {
    /// A log whose lines stay in the returned channel (`capacity` of them), with no
    /// writer thread.
    fn stalled(
        capacity: usize,
        format: AccessLogFormat,
        queues: Vec<String>,
    ) -> (Log, Receiver<Msg<Written>>) {
        let (lines, rx) = Handoff::stalled(capacity);
        let log = Log {
            lines,
            format,
            per_queue: false,
            queues,
        };
        (log, rx)
    }
}

fn request(log: &Arc<Log>, raw: &[u8]) -> Option<Arc<Request>> {
    let queue = Queue::new("q".into(), 0, Props::default(), None);
    let Ok(Parsed::Complete { head, .. }) = parse_head(raw, &HeadLimits::default()) else {
        panic!("a head");
    };
    Request::begin(
        log,
        &queue,
        "127.0.0.1".parse().expect("ip"),
        "127.0.0.1:80".parse().expect("addr"),
        &head,
        b"/a/b?c=d",
        Instant::now(),
    )
}

#[test]
fn dropped_lines_are_counted_and_never_wait() {
    // A log whose writer never reads: the backlog fills, and further lines are
    // dropped and counted without waiting.
    let (log, rx) = Log::stalled(4, AccessLogFormat::W3c, Vec::new());
    let log = Arc::new(log);
    let raw = b"GET /a/b?c=d HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n";
    for _ in 0..10 {
        let r = request(&log, raw).expect("logged");
        r.writing(b"HTTP/1.1 200 OK\r\n");
        end(Some(r), End::Written);
    }
    assert_eq!(log.dropped(), 6);
    let Ok(Msg::Line(Written { set, text, .. })) = rx.try_recv() else {
        panic!("a line");
    };
    assert_eq!(set, None);
    assert!(
        text.contains(" GET /a/b c=d 80 127.0.0.1 t - 200 0 "),
        "{text}"
    );
    assert!(text.ends_with(" q"), "{text}");
}

#[test]
fn status_and_win32_as_the_request_ends() {
    let (log, rx) = Log::stalled(16, AccessLogFormat::Json, Vec::new());
    let log = Arc::new(log);
    let raw = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n";
    let next = || match rx.try_recv() {
        Ok(Msg::Line(Written { text, .. })) => {
            serde_json::from_str::<serde_json::Value>(&text).expect("json")
        }
        _ => panic!("a line"),
    };
    // 100 Continue and 103 Early Hints are not the status; the final head is.
    let r = request(&log, raw).expect("logged");
    r.writing(b"HTTP/1.1 100 Continue\r\n\r\n");
    r.writing(b"HTTP/1.1 103 Early Hints\r\n\r\n");
    r.writing(b"HTTP/1.1 404 Not Found\r\n");
    r.writing(b"HTTP/1.1 500 Later\r\n");
    end(Some(r), End::Written);
    let v = next();
    assert_eq!(
        (v["sc-status"].clone(), v["sc-win32-status"].clone()),
        (404.into(), 0.into())
    );
    // A 503 page.
    let r = request(&log, raw).expect("logged");
    r.ended(Some(503), Reason::QueueFull);
    end(Some(r), End::Written);
    assert_eq!(next()["sc-status"], 503);
    // Refused without an answer (basic verbosity), timed out, client gone.
    for (reason, win32) in [
        (Reason::QueueFull, 1236),
        (Reason::TimerReqQueue, 121),
        (Reason::ClientReset, 64),
    ] {
        let r = request(&log, raw).expect("logged");
        r.ended(None, reason);
        end(Some(r), End::Reset);
        let v = next();
        assert_eq!(v["sc-status"], serde_json::Value::Null);
        assert_eq!(v["sc-win32-status"], win32, "{reason:?}");
    }
    // The last write failed.
    let r = request(&log, raw).expect("logged");
    r.writing(b"HTTP/1.1 200 OK\r\n");
    end(Some(r), End::Gone);
    assert_eq!(next()["sc-win32-status"], 64);
    // An HTTP/2 stream dropped before its response ended: its client went away.
    let r = request(&log, raw).expect("logged");
    r.status(200);
    drop(r);
    assert_eq!(next()["sc-win32-status"], 64);
}

#[test]
fn only_the_queues_asked_for() {
    let (log, _rx) = Log::stalled(16, AccessLogFormat::W3c, vec!["other".into()]);
    let log = Arc::new(log);
    assert!(request(&log, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
    let off = Arc::new(Log::off());
    assert!(request(&off, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
}
