//! The access log end to end: the real daemon writes a line per request routed to a queue
//! (served, refused by its queue), in W3C or JSON, for the service or per queue, rolls
//! files over by size, never follows a symbolic link planted where a file will be opened,
//! and refuses a folder that is not its own.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::harness::*;

const FIELDS: &str = "#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port c-ip \
                      cs(User-Agent) cs(Referer) sc-status sc-win32-status time-taken s-queuename";

/// `[access_log]` with `folder` and `extra`, and a disabled queue `name` (503 with a page)
/// on `/off/` of `port`.
fn config(port: u16, folder: &Path, extra: &str, name: &str) -> String {
    format!(
        "[access_log]\nenabled = true\nfolder = {:?}\n{extra}\n\n\
         [[queue]]\nname = {name:?}\nurls = [\"http://+:{port}/off/\"]\nenabled = false\n\
         verbosity = \"limited\"\n",
        folder.display().to_string()
    )
}

/// The files of `folder` whose names start with `u_ex`, sorted.
fn log_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("u_ex"))
    });
    files.sort();
    files
}

/// The lines (not directives) of every log file in `folder`.
fn lines(folder: &Path) -> Vec<String> {
    log_files(folder)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits until `folder` holds `n` lines, and returns them.
fn wait_lines(d: &Daemon, folder: &Path, n: usize) -> Vec<String> {
    assert!(
        eventually(10, || lines(folder).len() >= n),
        "{} lines in {}, expected {n}:\n{:#?}\ndaemon log:\n{}",
        lines(folder).len(),
        folder.display(),
        lines(folder),
        d.log()
    );
    lines(folder)
}

#[test]
fn w3c_lines_for_served_and_refused_requests() {
    let logs = TempDir::new("access-w3c");
    let folder = logs.0.join("access");
    let (d, port) = Daemon::builder()
        .tag("access")
        .spawn_on_free_port(|port| config(port, &folder, "", "off"));
    let _app = d.hello("app", &[&format!("http://+:{port}/app/")], &[]);

    // Served, with a query and a hostile User-Agent: spaces, a tab, bytes beyond ASCII,
    // and what would look like a second line's fields.
    let mut req = b"GET /app/x?a=1&b=2 HTTP/1.1\r\nHost: h\r\nUser-Agent: Evil 1.0\t".to_vec();
    req.extend_from_slice(b"\xff 2026-01-01 00:00:00 10.0.0.1 GET /admin - 80\r\n");
    req.extend_from_slice(b"Referer: http://r.example/p\r\nConnection: close\r\n\r\n");
    let (status, _, _) = http_raw(port, &req);
    assert_eq!(status, 200);
    // Refused by its queue: 503 with a page.
    let (status, _, _) = get(port, "h", "/off/y");
    assert_eq!(status, 503);
    // Refused before routing (no prefix): the error log's, not the access log's.
    let (status, _, _) = get(port, "h", "/nothing");
    assert_eq!(status, 404);

    let got = wait_lines(&d, &folder, 2);
    assert_eq!(got.len(), 2, "{got:#?}");
    let files = log_files(&folder);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(
        name.len() == "u_exYYMMDD.log".len() && name.ends_with(".log"),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap_or_default();
    assert!(text.starts_with("#Software: "), "{text}");
    assert!(text.contains("\n#Version: 1.0\n#Date: "), "{text}");
    assert!(text.contains(&format!("\n{FIELDS}\n")), "{text}");
    let mode = std::fs::metadata(&files[0]).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o640));
    let mode = std::fs::metadata(&folder).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o750));

    let served: Vec<&str> = got[0].split(' ').collect();
    assert_eq!(served.len(), 14, "one value per field: {served:?}");
    let port_text = port.to_string();
    assert_eq!(
        &served[2..],
        [
            "127.0.0.1",
            "GET",
            "/app/x",
            "a=1&b=2",
            port_text.as_str(),
            "127.0.0.1",
            "Evil+1.0%09%FF+2026-01-01+00:00:00+10.0.0.1+GET+/admin+-+80",
            "http://r.example/p",
            "200",
            "0",
            served[12],
            "app",
        ]
    );
    assert!(served[12].parse::<u64>().is_ok(), "time-taken: {served:?}");
    // UTC date and time.
    assert!(served[0].len() == 10 && served[1].len() == 8, "{served:?}");

    let refused: Vec<&str> = got[1].split(' ').collect();
    assert_eq!(
        [refused[3], refused[4], refused[5], refused[8], refused[9]],
        ["GET", "/off/y", "-", "-", "-"]
    );
    assert_eq!([refused[10], refused[11], refused[13]], ["503", "0", "off"]);
    assert_eq!(d.state()["access_log_dropped"], 0);
}

#[test]
fn json_lines_per_queue_with_a_hostile_queue_name() {
    let logs = TempDir::new("access-json");
    let folder = logs.0.join("access");
    let hostile = "../../escaped q";
    let (d, port) = Daemon::builder()
        .tag("access-json")
        .spawn_on_free_port(|port| {
            config(
                port,
                &folder,
                "format = \"json\"\nper_queue = true\n",
                hostile,
            )
        });
    let (status, _, _) = http_raw(
        port,
        b"GET /off/a%20b?q=\"x\" HTTP/1.1\r\nHost: h\r\nUser-Agent: \"quoted\" \\ agent\r\n\r\n",
    );
    assert_eq!(status, 503);
    let sub = folder.join("..%2F..%2Fescaped%20q");
    let got = wait_lines(&d, &sub, 1);
    let files = log_files(&sub);
    assert!(
        files.len() == 1 && files[0].extension().is_some_and(|e| e == "jsonl"),
        "{files:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&got[0]).expect("a JSON object per line");
    assert_eq!(v["cs-method"], "GET");
    assert_eq!(v["cs-uri-stem"], "/off/a%20b");
    assert_eq!(v["cs-uri-query"], "q=\"x\"");
    assert_eq!(v["cs(User-Agent)"], "\"quoted\" \\ agent");
    assert_eq!(v["cs(Referer)"], serde_json::Value::Null);
    assert_eq!(v["sc-status"], 503);
    assert_eq!(v["s-port"], port);
    assert_eq!(v["s-queuename"], hostile);
    // Nothing outside the folder, and only the queue's folder in it.
    let names: Vec<_> = std::fs::read_dir(&folder)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(!logs.0.join("escaped q").exists());
    assert!(!Path::new("/tmp/escaped q").exists());
}

#[test]
fn a_symlink_planted_for_a_log_file_is_not_followed() {
    let logs = TempDir::new("access-symlink");
    let folder = logs.0.join("access");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&folder)
        .expect("folder");
    // The file the daemon will open first, pointing at a file it must not write.
    let victim = logs.0.join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    std::os::unix::fs::symlink(&victim, folder.join("u_extend1.log")).expect("symlink");
    let (d, port) = Daemon::builder()
        .tag("access-symlink")
        .spawn_on_free_port(|port| config(port, &folder, "rollover = \"size\"\n", "off"));
    let (status, _, _) = get(port, "h", "/off/");
    assert_eq!(status, 503);
    assert!(
        eventually(10, || d.state()["access_log_dropped"] == 1),
        "state: {}\nlog:\n{}",
        d.state()["access_log_dropped"],
        d.log()
    );
    assert!(
        d.log().contains("cannot write the access log"),
        "{}",
        d.log()
    );
    assert_eq!(
        std::fs::read_to_string(&victim).ok().as_deref(),
        Some("precious\n")
    );
}

#[test]
fn files_roll_over_by_size() {
    let logs = TempDir::new("access-size");
    let folder = logs.0.join("access");
    let (d, port) = Daemon::builder()
        .tag("access-size")
        .spawn_on_free_port(|port| {
            config(
                port,
                &folder,
                "rollover = \"size\"\nmax_size = 1048576\n",
                "off",
            )
        });
    // Lines of about 8 KiB: 1 MiB holds some 127 of them.
    let agent = "a".repeat(8000);
    let request = format!("GET /off/ HTTP/1.1\r\nHost: h\r\nUser-Agent: {agent}\r\n\r\n");
    let n = 140;
    for _ in 0..n {
        let (status, _, _) = http_raw(port, request.as_bytes());
        assert_eq!(status, 503);
    }
    wait_lines(&d, &folder, n);
    let files = log_files(&folder);
    let names: Vec<_> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["u_extend1.log", "u_extend2.log"]);
    for f in &files {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(u64::MAX);
        assert!(len <= 1_048_576, "{}: {len}", f.display());
        let text = std::fs::read_to_string(f).unwrap_or_default();
        assert!(text.starts_with("#Software: "), "{}", f.display());
    }
}

#[test]
fn a_folder_that_is_not_the_daemons_own_is_refused() {
    let logs = TempDir::new("access-owner");
    let d = Daemon::builder().tag("access-owner").spawn();
    let reload = |folder: &Path| {
        d.write_config(&format!(
            "[access_log]\nenabled = true\nfolder = {:?}\n",
            folder.display().to_string()
        ));
        d.ctl().call("POST", "/v1/reload", None)
    };
    // Writable by others.
    let open = logs.0.join("open");
    std::fs::create_dir(&open).expect("folder");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (status, body) = reload(&open);
    assert_eq!(status, 422, "{body}");
    let message = body.to_string();
    assert!(
        message.contains("access_log.folder") && message.contains("others may write"),
        "{message}"
    );
    // Another account's.
    if nix::unistd::geteuid().is_root() {
        let theirs = logs.0.join("theirs");
        std::fs::create_dir(&theirs).expect("folder");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let (status, body) = reload(&theirs);
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains("owned by uid 65534"), "{body}");
        // The same folder refused at start: the daemon does not start.
        let bad = logs.0.join("bad.toml");
        std::fs::write(
            &bad,
            d.config_text(&format!(
                "[access_log]\nenabled = true\nfolder = {:?}\n",
                theirs.display().to_string()
            )),
        )
        .expect("config");
        let mut cmd = std::process::Command::new(portshare_bin());
        cmd.arg("serve")
            .arg("--control")
            .arg(logs.0.join("other.sock"))
            .arg("--config")
            .arg(&bad)
            .args(["--iplisten", "127.0.0.1"]);
        let (code, _, err) = run_to_exit(cmd, &logs.0, 20);
        assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
        assert!(err.contains("owned by uid 65534"), "{err}");
        // And `check-config` says so too.
        let out = std::process::Command::new(portshare_bin())
            .arg("check-config")
            .arg(&bad)
            .output()
            .expect("check-config runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("access_log.folder") && err.contains("owned by uid 65534"),
            "{err}"
        );
    }
    // A folder of its own is taken, and made if missing.
    let own = logs.0.join("own").join("access");
    let (status, body) = reload(&own);
    assert_eq!(status, 200, "{body}");
    assert!(own.is_dir());
}

#[test]
fn a_request_the_queue_timer_ends_is_logged_with_its_time() {
    let logs = TempDir::new("access-timer");
    let folder = logs.0.join("access");
    let (d, port) = Daemon::builder()
        .tag("access-timer")
        .spawn_on_free_port(|port| {
            format!(
                "{}\n[[queue]]\nname = \"idle\"\nurls = [\"http://+:{port}/idle/\"]\n\
                 request_queue_timer = 1\n",
                config(port, &folder, "", "off")
            )
        });
    // No worker: the request waits for the queue's timer, then the connection closes
    // without an answer.
    let mut c = connect(port);
    c.write_all(b"GET /idle/x HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    let closed = read_until_close(&mut c, "the request-queue timer");
    assert!(closed.text().is_empty(), "{}", closed.describe());
    let got = wait_lines(&d, &folder, 1);
    let f: Vec<&str> = got[0].split(' ').collect();
    assert_eq!([f[4], f[10], f[11], f[13]], ["/idle/x", "-", "121", "idle"]);
    // From the request's first byte to the end: at least the timer's second.
    let taken: u64 = f[12].parse().expect("time-taken");
    assert!(taken >= 1000, "{got:?}");
}

#[test]
fn a_reload_turns_the_log_on_and_changes_its_format() {
    let logs = TempDir::new("access-reload");
    let folder = logs.0.join("access");
    let text = |port: u16, extra: &str| {
        config(port, &folder, extra, "off").replacen("enabled = true\n", "", 1)
    };
    let (d, port) = Daemon::builder()
        .tag("access-reload")
        .spawn_on_free_port(|port| text(port, "enabled = false\n"));
    let (status, _, _) = get(port, "h", "/off/1");
    assert_eq!(status, 503);
    assert!(!folder.exists(), "off by default: no folder, no file");
    for (round, extra, ext) in [
        (2, "enabled = true\n", "log"),
        (3, "enabled = true\nformat = \"json\"\n", "jsonl"),
    ] {
        d.write_config(&text(port, extra));
        let (status, body) = d.ctl().call("POST", "/v1/reload", None);
        assert_eq!(status, 200, "{body}");
        assert!(body.to_string().contains("access log settings"), "{body}");
        let (status, _, _) = get(port, "h", &format!("/off/{round}"));
        assert_eq!(status, 503);
        let found = || {
            log_files(&folder).iter().any(|p| {
                p.extension().is_some_and(|e| e == ext)
                    && std::fs::read_to_string(p)
                        .is_ok_and(|t| t.contains(&format!("/off/{round}")))
            })
        };
        assert!(
            eventually(10, found),
            "round {round}: {:?}",
            log_files(&folder)
        );
    }
    // Nothing of the request made while the log was off.
    assert!(!lines(&folder).iter().any(|l| l.contains("/off/1")));
}

#[test]
fn a_client_gone_before_its_response_is_logged_64() {
    use bytes::Bytes;
    use portshare_proto::wire::{self, ResponseHead};

    let logs = TempDir::new("access-gone");
    let folder = logs.0.join("access");
    let (d, port) = Daemon::builder()
        .tag("access-gone")
        .spawn_on_free_port(|port| config(port, &folder, "", "off"));
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({"name": "w"}));
    let (status, body) = ctl.add_url("w", &format!("http://+:{port}/w/"));
    assert_eq!(status, 201, "{body}");
    let mut worker = WireWorker::attach(&d.control, "w", 8);
    let mut c = connect(port);
    c.write_all(b"GET /w/x HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    let stream = worker.next_head();
    // The client goes (a reset), then the worker answers.
    socket2::SockRef::from(&c)
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("linger");
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let head = ResponseHead {
        status: 200,
        headers: vec![(
            Bytes::from_static(b"content-type"),
            Bytes::from_static(b"text/plain"),
        )],
    };
    worker
        .send(|o| {
            head.encode(o, stream, false);
            wire::encode_data(o, stream, true, &[b'x'; 1000]);
        })
        .expect("respond");
    let got = wait_lines(&d, &folder, 1);
    let f: Vec<&str> = got[0].split(' ').collect();
    assert_eq!(
        [f[4], f[10], f[11], f[13]],
        ["/w/x", "200", "64", "w"],
        "{got:?}"
    );
}
