//! Queue ownership as a local attacker tries it: other accounts on the control socket
//! (`setpriv` with numeric ids, so no user is created on the host), opening, attaching to
//! and registering on queues that are not theirs.
//!
//! An HTTP.sys queue carries its creator's security descriptor (spec §6.5): a named queue
//! opens for its owner and the accounts it granted, an unnamed one for nobody else, and an
//! administrator does not silently join another account's queue. Every test here failed
//! before queues had access lists.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::*;
use bytes::BytesMut;
use portshare_proto::wire::{self, Frame, ResponseHead};
use serde_json::{Value, json};

/// The unprivileged accounts the tests act as.
pub(crate) const OWNER: u32 = 65534;
const GRANTEE: u32 = 65533;
const STRANGER: u32 = 65532;

const PROBE_CONTROL: &str = "PORTSHARE_ACCESS_PROBE";
const PROBE_SCRIPT: &str = "PORTSHARE_ACCESS_SCRIPT";

/// A control client in a process of its own, as whichever account `setpriv` made it. It
/// runs the steps of `$PORTSHARE_ACCESS_SCRIPT` on one control connection and prints
/// `RESULT {json}` for each, then `DONE`, then holds everything open (queues, URLs,
/// workers) until its standard input closes. The steps:
///
/// - `{"call": [METHOD, PATH, BODY]}`: a control request; the result is its status and body;
/// - `{"attach": QUEUE, "answer": TEXT}`: a worker on a connection of its own, answering
///   every request `200` with TEXT; the result is the attach's status (101 when attached);
/// - `{"wait_control": true}`: connects again until the daemon answers (for a restart).
///
/// Does nothing in a normal run.
#[test]
fn access_probe() {
    let Some(control) = std::env::var_os(PROBE_CONTROL) else {
        return;
    };
    let control = PathBuf::from(control);
    let script: Vec<Value> =
        serde_json::from_str(&std::env::var(PROBE_SCRIPT).expect("script")).expect("JSON");
    let say = |what: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{what}");
        let _ = out.flush();
    };
    let mut ctl = None;
    let mut workers = Vec::new();
    for step in script {
        if step.get("wait_control").is_some() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while UnixStream::connect(&control).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            ctl = None;
            say(r#"RESULT {"status":0}"#);
        } else if let Some(call) = step.get("call") {
            let ctl = ctl.get_or_insert_with(|| Ctl::connect(&control));
            let body = (!call[2].is_null()).then(|| call[2].clone());
            let (status, body) = ctl.call(
                call[0].as_str().expect("method"),
                call[1].as_str().expect("path"),
                body,
            );
            say(&format!(
                "RESULT {}",
                json!({ "status": status, "body": body })
            ));
        } else if let Some(queue) = step.get("attach") {
            let answer = step["answer"].as_str().expect("answer").to_owned();
            let queue = queue.as_str().expect("queue");
            match attach(&control, queue) {
                Ok((sock, pre)) => {
                    workers.push(std::thread::spawn(move || serve(sock, &pre, &answer)));
                    say(r#"RESULT {"status":101}"#);
                }
                Err((status, body)) => say(&format!(
                    "RESULT {}",
                    json!({ "status": status, "body": body })
                )),
            }
        }
    }
    say("DONE");
    // Hold until the test lets go, at most two minutes.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(120));
    drop(ctl);
}

/// `POST /v1/queues/QUEUE/attach` on a new connection: the socket and the bytes after the
/// 101, or the refusal.
fn attach(control: &Path, queue: &str) -> Result<(UnixStream, Vec<u8>), (u16, Value)> {
    let mut sock = UnixStream::connect(control).expect("connect to the control socket");
    write!(
        sock,
        "POST {} HTTP/1.1\r\nHost: portshare\r\nConnection: upgrade\r\nUpgrade: {}\r\n\
         {}: 4\r\nContent-Length: 0\r\n\r\n",
        portshare_proto::control::path::queue(queue, "/attach"),
        wire::UPGRADE_PROTOCOL,
        wire::SLOTS_HEADER
    )
    .expect("attach");
    let mut pre = Vec::new();
    let (status, _, body) = read_response(&mut sock, &mut pre, false);
    if status == 101 {
        Ok((sock, pre))
    } else {
        Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}

/// Answers every request on a worker connection with `answer`, until it closes.
fn serve(mut sock: UnixStream, pre: &[u8], answer: &str) {
    let mut input = BytesMut::from(pre);
    let mut chunk = vec![0u8; 16 * 1024];
    let length = answer.len().to_string();
    loop {
        while let Ok(Some(frame)) = wire::decode(&mut input) {
            if let Frame::Head { stream, .. } = frame {
                let mut out = BytesMut::new();
                ResponseHead::encode_parts(
                    &mut out,
                    stream,
                    false,
                    200,
                    [(&b"content-length"[..], length.as_bytes())],
                );
                wire::encode_data(&mut out, stream, true, answer.as_bytes());
                if sock.write_all(&out).is_err() {
                    return;
                }
            }
        }
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A running `access_probe` and what its steps answered.
pub(crate) struct Probe {
    child: Child,
    results: Vec<Value>,
}

impl Probe {
    /// The status and body of step `i`.
    pub(crate) fn result(&self, i: usize) -> (u16, &Value) {
        let r = &self.results[i];
        (r["status"].as_u64().unwrap_or(0) as u16, &r["body"])
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where probes go: the daemon's control socket, a folder for their logs, and the probe
/// binary where every account may run it.
#[derive(Clone)]
pub(crate) struct Site {
    control: PathBuf,
    dir: PathBuf,
    exe: PathBuf,
}

/// A daemon whose folder (and so its control socket and the probe binary copied into it)
/// every account can reach.
pub(crate) fn open_daemon(config: &str) -> (Daemon, Site) {
    let dir = TempDir::open_to_all("access");
    // The test binary, where every uid may run it.
    let exe = dir.0.join("probe");
    std::fs::copy(std::env::current_exe().expect("test binary"), &exe).expect("copy probe");
    let d = Daemon::builder()
        .dir(dir)
        .config(format!("iplisten = [\"127.0.0.1\"]\n{config}"))
        .iplisten_from_config()
        .spawn();
    let site = Site {
        control: d.control.clone(),
        dir: d.dir.0.clone(),
        exe,
    };
    (d, site)
}

/// Runs `script` in a probe process as `uid` (`None`: as this test's own user) and waits for
/// its results. `None` when this machine cannot switch uids (outside CI only).
pub(crate) fn probe(site: &Site, uid: Option<u32>, script: Value, extra: &[&str]) -> Option<Probe> {
    let exe = &site.exe;
    // A copy of the binary can be busy for an instant after it is written: retry then.
    for _ in 0..50 {
        let mut cmd = match uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid",
                    &uid.to_string(),
                    "--regid",
                    &uid.to_string(),
                    "--clear-groups",
                ])
                .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let log = site.dir.join(format!("probe-{}.log", free_port()));
        cmd.args(only_test(module_path!(), "access_probe"))
            .args(extra)
            .env(PROBE_CONTROL, &site.control)
            .env(PROBE_SCRIPT, script.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "setpriv missing under CI: {e}"
                );
                eprintln!("skipped: setpriv not available ({e})");
                return None;
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut results = Vec::new();
        let mut done = false;
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            if let Some(at) = line.find("RESULT ") {
                results.push(serde_json::from_str(&line[at + 7..]).expect("result JSON"));
            } else if line.contains("DONE") {
                done = true;
                break;
            }
        }
        if done {
            return Some(Probe { child, results });
        }
        let _ = child.kill();
        let _ = child.wait();
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        if err.contains("Text file busy") {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if uid.is_some() && err.contains("setpriv") {
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv failed under CI: {err}"
            );
            eprintln!("skipped: cannot switch uid here ({err})");
            return None;
        }
        panic!("the probe failed:\n{err}");
    }
    panic!("{} stayed busy", exe.display());
}

pub(crate) fn call(method: &str, path: &str, body: Value) -> Value {
    json!({ "call": [method, path, body] })
}

/// The queue named `name` in a state view.
fn queue<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    state["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == name))
}

fn urls_of(state: &Value, name: &str) -> Vec<String> {
    queue(state, name).map_or_else(Vec::new, |q| {
        q["urls"]
            .as_array()
            .expect("urls")
            .iter()
            .map(|u| u.as_str().expect("url").to_owned())
            .collect()
    })
}

/// Who answers `GET target` on `port`: the body, or the status when it is not 200.
fn answer(port: u16, host: &str, target: &str) -> String {
    match try_get(port, host, target) {
        Some((200, body)) => body,
        Some((status, _)) => status.to_string(),
        None => "refused".into(),
    }
}

#[test]
fn root_does_not_adopt_another_accounts_queue() {
    let (d, site) = open_daemon("");
    let port = free_port();
    let mine = format!("http://localhost:{port}/mine/");
    let Some(owner) = probe(
        &site,
        Some(OWNER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "one" })),
            call("POST", "/v1/queues/one/urls", json!({ "url": mine })),
            { "attach": "one", "answer": "owner-worker" },
        ]),
        &[],
    ) else {
        return;
    };
    assert_eq!(owner.result(0).0, 201, "{:?}", owner.results);
    assert_eq!(owner.result(1).0, 201, "{:?}", owner.results);
    assert_eq!(owner.result(2).0, 101, "{:?}", owner.results);

    // Root's app asks for the same name: refused, naming the owner, and nothing of root's
    // reaches the other account's worker.
    let app = App::spawn(
        &d.control,
        "hello",
        "one",
        &[&format!("http://+:{port}/app/")],
        &[],
    );
    let (code, log) = app.wait_exit();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("ERROR_ACCESS_DENIED") && log.contains(&format!("(uid {OWNER})")),
        "{log}"
    );
    for i in 0..10 {
        let got = answer(port, "127.0.0.1", &format!("/app/{i}"));
        assert!(
            !got.contains("owner-worker"),
            "root's request reached uid {OWNER}: {got}"
        );
    }
    assert_eq!(answer(port, "localhost", "/mine/x"), "owner-worker");
    let state = d.state();
    let one = queue(&state, "one").expect("queue one");
    assert_eq!(one["owner_uid"], OWNER);
    assert_eq!(urls_of(&state, "one"), vec![mine.clone()]);

    // Root may look, disable and delete; it may not open.
    let mut ctl = d.ctl();
    let (status, body) = ctl.call(
        "POST",
        "/v1/queues",
        Some(json!({ "name": "one", "mode": "open" })),
    );
    assert_eq!((status, body["code"].as_u64()), (403, Some(5)), "{body}");
    let (status, body) = ctl.call("PATCH", "/v1/queues/one", Some(json!({ "enabled": false })));
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(port, "localhost", "/mine/x"), "refused");
    let (status, body) = ctl.call("DELETE", "/v1/queues/one", None);
    assert_eq!(status, 204, "{body}");
    assert!(queue(&d.state(), "one").is_none());
    drop(owner);
}

#[test]
fn a_183_names_the_queue_but_shows_its_processes_only_to_those_who_may_see_them() {
    let (d, site) = open_daemon("");
    let (app, port) = hello_on_free_port(&d, "held", &["/held/"], &[]);
    let url = format!("http://+:{port}/held/");
    let pid = app.proc.child.id();
    // Another account asks for the same prefix: 183 before any ACL check (spec §1.3), the
    // queue named, its processes not.
    let Some(stranger) = probe(
        &site,
        Some(STRANGER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "strange" })),
            call("POST", "/v1/queues/strange/urls", json!({ "url": url })),
        ]),
        &[],
    ) else {
        return;
    };
    let (status, body) = stranger.result(1);
    assert_eq!((status, body["code"].as_u64()), (409, Some(183)), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("on queue \"held\""), "{message}");
    assert!(
        message.contains("its processes are shown to its owner, its grantees and administrators"),
        "{message}"
    );
    assert!(!message.contains(&format!("PID {pid}")), "{message}");
    // An administrator is shown them.
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "admins" }));
    let (status, body) = ctl.add_url("admins", &url);
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("served by PID {pid} (")),
        "{message}"
    );
    drop(stranger);
}

#[test]
fn a_denial_for_a_lost_localhost_exemption_says_so() {
    let (d, site) = open_daemon("");
    let port = free_port();
    let local = format!("http://localhost:{port}/");
    // Any reservation on the port takes the exemption away (spec §9.3), even one for
    // another account and another path.
    let (status, body) = d.ctl().call(
        "POST",
        "/v1/urlacl",
        Some(json!({
            "url": format!("http://+:{port}/other/"),
            "users": [format!("uid:{GRANTEE}")],
            "listen": true,
            "delegate": false,
        })),
    );
    assert!(status == 200 || status == 201, "{body}");
    let Some(owner) = probe(
        &site,
        Some(OWNER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "exempt" })),
            call("POST", "/v1/queues/exempt/urls", json!({ "url": local })),
        ]),
        &[],
    ) else {
        return;
    };
    let (status, body) = owner.result(1);
    assert_eq!((status, body["code"].as_u64()), (403, Some(5)), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "the localhost exemption does not apply, because the reservation \
             http://+:{port}/other/ is on the same scheme and port"
        )),
        "{message}"
    );
    drop(owner);
}

#[test]
fn unnamed_queues_are_their_creators_alone() {
    let (d, site) = open_daemon("");
    let mut ctl = d.ctl();
    let created = ctl.create_queue(json!({}));
    let name = created["name"].as_str().expect("name").to_owned();
    assert!(
        name.len() == 33
            && name.starts_with('~')
            && name[1..].bytes().all(|b| b.is_ascii_hexdigit()),
        "an unnamed queue's name must be unguessable: {name}"
    );
    assert_ne!(ctl.create_queue(json!({}))["name"], created["name"]);
    // Nobody may take a name of that namespace first.
    for spec in [
        json!({ "name": "~1.2" }),
        json!({ "name": "~1.2", "mode": "open" }),
        json!({ "name": name, "mode": "open" }),
    ] {
        let (status, body) = ctl.call("POST", "/v1/queues", Some(spec));
        assert_eq!((status, body["code"].as_u64()), (400, Some(87)), "{body}");
    }
    let port = free_port();
    let (status, body) = ctl.add_url(&name, &format!("http://127.0.0.1:{port}/anon/"));
    assert_eq!(status, 201, "{body}");
    // Another process, of the same account or another, can neither open nor attach.
    for uid in [None, Some(OWNER)] {
        let Some(p) = probe(
            &site,
            uid,
            json!([
                call("POST", "/v1/queues", json!({ "name": name, "mode": "open_or_create" })),
                { "attach": name, "answer": "intruder" },
                call("POST", &portshare_proto::control::path::queue(&name, "/urls"),
                     json!({ "url": format!("http://127.0.0.1:{port}/anon/more/") })),
            ]),
            &[],
        ) else {
            return;
        };
        assert_eq!(p.result(0).1["code"], 87, "{:?}", p.results);
        assert_eq!(p.result(1).1["code"], 5, "{:?}", p.results);
        assert_eq!(p.result(2).1["code"], 5, "{:?}", p.results);
    }
}

#[test]
fn config_names_belong_to_the_daemon_and_reloads_never_adopt() {
    let port = free_port();
    let base = format!(
        "[[queue]]\nname = \"legacy\"\nurls = [\"http://127.0.0.1:{port}/legacy/\"]\n\
         owner = \"uid:{OWNER}\"\n"
    );
    let (d, site) = open_daemon(&base);
    let file = d.config.clone();
    let text = std::fs::read_to_string(&file).expect("config");
    let Some(squatter) = probe(
        &site,
        Some(STRANGER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "legacy", "mode": "create" })),
            call("POST", "/v1/queues", json!({ "name": "legacy" })),
            call("POST", "/v1/queues", json!({ "name": "later" })),
            { "attach": "later", "answer": "squatter" },
        ]),
        &[],
    ) else {
        return;
    };
    assert_eq!(squatter.result(0).1["code"], 183, "{:?}", squatter.results);
    assert_eq!(squatter.result(1).1["code"], 5, "{:?}", squatter.results);
    assert!(
        squatter.result(1).1["message"]
            .as_str()
            .is_some_and(|m| m.contains("configuration")),
        "{:?}",
        squatter.results
    );
    assert_eq!(squatter.result(2).0, 201, "{:?}", squatter.results);
    assert_eq!(squatter.result(3).0, 101, "{:?}", squatter.results);

    // The configuration's `owner` is granted the queue: it attaches and is served.
    let Some(granted) = probe(
        &site,
        Some(OWNER),
        json!([{ "attach": "legacy", "answer": "legacy-worker" }]),
        &[],
    ) else {
        return;
    };
    assert_eq!(granted.result(0).0, 101, "{:?}", granted.results);
    assert_eq!(answer(port, "x", "/legacy/a"), "legacy-worker");

    // A reload that declares the squatted name reports it and adopts nothing; the rest of
    // the reload applies, twice over.
    let with_later = format!(
        "{text}\n[[queue]]\nname = \"later\"\nurls = [\"http://127.0.0.1:{port}/later/\"]\n\
         [[queue]]\nname = \"other\"\nurls = [\"http://127.0.0.1:{port}/other/\"]\n"
    );
    std::fs::write(&file, &with_later).expect("config");
    for _ in 0..2 {
        let (status, report) = d.ctl().call("POST", "/v1/reload", None);
        assert_eq!(status, 200, "{report}");
        let warnings = report["warnings"].to_string();
        assert!(
            warnings.contains("later") && warnings.contains(&format!("(uid {STRANGER})")),
            "{report}"
        );
        let state = d.state();
        assert!(urls_of(&state, "later").is_empty(), "{state}");
        assert_eq!(
            queue(&state, "later").expect("later")["owner_uid"],
            STRANGER
        );
        assert_eq!(urls_of(&state, "other").len(), 1, "{state}");
        assert_ne!(answer(port, "x", "/later/x"), "squatter");
    }
    // Taking the entry out again is a reload like any other.
    let without = format!(
        "{text}\n[[queue]]\nname = \"other\"\nurls = [\"http://127.0.0.1:{port}/other/\", \
         \"http://127.0.0.1:{port}/other2/\"]\n"
    );
    std::fs::write(&file, &without).expect("config");
    let (status, report) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(urls_of(&d.state(), "other").len(), 2);
    assert!(
        queue(&d.state(), "later").is_some(),
        "the squatter's queue stays its own"
    );
    // Once the squatter is gone, the next reload creates the configuration's queue.
    drop(squatter);
    assert!(eventually(10, || queue(&d.state(), "later").is_none()));
    std::fs::write(&file, &with_later).expect("config");
    let (status, report) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{report}");
    let state = d.state();
    assert_eq!(queue(&state, "later").expect("later")["config"], true);
    assert_eq!(urls_of(&state, "later").len(), 1);
    drop(granted);
}

#[test]
fn grants_let_accounts_in_and_revoking_puts_them_out() {
    let (d, site) = open_daemon("");
    let port = free_port();
    let Some(owner) = probe(
        &site,
        Some(OWNER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "shared" })),
            call("POST", "/v1/queues/shared/urls",
                 json!({ "url": format!("http://localhost:{port}/shared/") })),
            { "attach": "shared", "answer": "owner" },
            call("POST", "/v1/queues/shared/access", json!({ "entries": [
                { "kind": "user", "name": format!("uid:{GRANTEE}"), "attach": true },
            ]})),
        ]),
        &[],
    ) else {
        return;
    };
    assert_eq!(owner.result(3).0, 200, "{:?}", owner.results);
    assert_eq!(
        owner.result(3).1["access"][0]["name"],
        format!("uid:{GRANTEE}")
    );
    let register = |url: &str| {
        call(
            "POST",
            "/v1/queues/shared/urls",
            json!({ "url": format!("http://localhost:{port}{url}") }),
        )
    };
    let Some(grantee) = probe(
        &site,
        Some(GRANTEE),
        json!([
            call("POST", "/v1/queues", json!({ "name": "shared" })),
            { "attach": "shared", "answer": "grantee" },
            register("/grantee/"),
            call("PATCH", "/v1/queues/shared", json!({ "length": 5 })),
            call("POST", "/v1/queues/shared/access", json!({ "entries": [
                { "kind": "user", "name": format!("uid:{STRANGER}"), "attach": true },
            ]})),
            call("GET", "/v1/state", Value::Null),
        ]),
        &[],
    ) else {
        return;
    };
    assert_eq!(grantee.result(0).0, 200, "{:?}", grantee.results);
    assert_eq!(grantee.result(1).0, 101, "{:?}", grantee.results);
    for i in 2..5 {
        assert_eq!(
            grantee.result(i).1["code"],
            5,
            "step {i}: {:?}",
            grantee.results
        );
    }
    // A grantee sees the processes it shares the queue with.
    let seen = queue(grantee.result(5).1, "shared").expect("shared");
    assert_eq!(seen["processes_hidden"], false);
    assert!(
        seen["processes"]
            .as_array()
            .is_some_and(|ps| !ps.is_empty()),
        "{seen}"
    );
    let Some(stranger) = probe(
        &site,
        Some(STRANGER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "shared" })),
            { "attach": "shared", "answer": "stranger" },
            call("GET", "/v1/state", Value::Null),
        ]),
        &[],
    ) else {
        return;
    };
    assert_eq!(stranger.result(0).1["code"], 5, "{:?}", stranger.results);
    assert_eq!(stranger.result(1).1["code"], 5, "{:?}", stranger.results);
    // Anyone sees queues and URLs; only those concerned see who serves them.
    let seen = queue(stranger.result(2).1, "shared").expect("shared");
    assert_eq!(seen["processes_hidden"], true, "{seen}");
    assert_eq!(seen["processes"], json!([]));
    assert_eq!(seen["urls"].as_array().map(Vec::len), Some(1));

    // Both workers serve the queue.
    assert!(eventually(10, || {
        queue(&d.state(), "shared").expect("shared")["processes"]
            .as_array()
            .is_some_and(|ps| ps.len() == 2)
    }));
    let mut answered = std::collections::BTreeSet::new();
    for i in 0..40 {
        answered.insert(answer(port, "localhost", &format!("/shared/{i}")));
        if answered.len() == 2 {
            break;
        }
    }
    assert!(
        answered.contains("owner") && answered.contains("grantee"),
        "{answered:?}"
    );

    // Register too, then an administrator takes both rights away again: the grantee's
    // worker is detached and its URL goes.
    let mut root = d.ctl();
    let grant = |attach: bool, register: bool| {
        json!({ "entries": [{ "kind": "user", "name": format!("uid:{GRANTEE}"),
                              "attach": attach, "register": register }] })
    };
    let (status, body) = root.call("POST", "/v1/queues/shared/access", Some(grant(true, true)));
    assert_eq!(status, 200, "{body}");
    let out = Command::new(portshare_bin())
        .args(["show", "servicestate", "--control"])
        .arg(&d.control)
        .output()
        .expect("portshare show servicestate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("user uid:{GRANTEE}: attach, register")),
        "{text}"
    );
    let Some(registrant) = probe(
        &site,
        Some(GRANTEE),
        json!([
            call("POST", "/v1/queues", json!({ "name": "shared" })),
            register("/grantee/"),
        ]),
        &[],
    ) else {
        return;
    };
    assert_eq!(registrant.result(1).0, 201, "{:?}", registrant.results);
    assert_eq!(urls_of(&d.state(), "shared").len(), 2);
    let out = Command::new(portshare_bin())
        .args(["queue", "revoke", "shared", "--user"])
        .arg(format!("uid:{GRANTEE}"))
        .arg("--control")
        .arg(&d.control)
        .output()
        .expect("portshare queue revoke");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("(its owner alone)"), "{text}");
    assert_eq!(urls_of(&d.state(), "shared").len(), 1);
    let mut state = Value::Null;
    assert!(
        eventually(10, || {
            state = d.state();
            queue(&state, "shared").expect("shared")["processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["uid"] == OWNER))
        }),
        "the grantee's worker is still attached: {state}"
    );
    for i in 0..20 {
        assert_eq!(answer(port, "localhost", &format!("/shared/{i}")), "owner");
    }
    // Root itself was never let in by granting others.
    let (status, body) = root.call(
        "POST",
        "/v1/queues",
        Some(json!({ "name": "shared", "mode": "open" })),
    );
    assert_eq!(status, 403, "{body}");
    drop((owner, grantee, stranger, registrant));
}

#[test]
fn queue_names_and_command_lines_cannot_reach_a_terminal_raw() {
    let (d, site) = open_daemon("");
    let mut ctl = d.ctl();
    for name in [
        "evil\u{1b}[2J",
        "bell\u{7}",
        "rtl\u{202e}gpj.exe",
        "zw\u{200b}j",
        "nl\n",
    ] {
        let (status, body) = ctl.call("POST", "/v1/queues", Some(json!({ "name": name })));
        assert_eq!(
            (status, body["code"].as_u64()),
            (400, Some(87)),
            "{name:?}: {body}"
        );
    }
    // A command line with an escape sequence in it, attached to a queue.
    let Some(p) = probe(
        &site,
        Some(OWNER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "cmd" })),
            { "attach": "cmd", "answer": "x" },
        ]),
        &["\u{1b}]0;owned\u{7}\u{1b}[2J"],
    ) else {
        return;
    };
    assert_eq!(p.result(1).0, 101, "{:?}", p.results);
    let out = Command::new(portshare_bin())
        .args(["show", "servicestate", "--control"])
        .arg(&d.control)
        .output()
        .expect("portshare show servicestate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}]0;owned\\u{7}"), "{text}");
    let state = d.state();
    let command = &queue(&state, "cmd").expect("cmd")["processes"][0]["command"];
    assert!(
        command.as_str().is_some_and(|c| !c.contains('\u{1b}')),
        "{command}"
    );
}

#[test]
fn a_squatter_after_a_restart_never_receives_the_apps_traffic() {
    let (d, site) = open_daemon("");
    let port = free_port();
    let app = d.hello("app", &[&format!("http://+:{port}/app/")], &[]);
    let first = answer(port, "x", "/app/1");
    assert!(first.starts_with("name=app"), "{first}");
    // The daemon goes; a squatter waits for the new one and grabs the name first (or
    // finds the app back in it), while the SDK registers again by itself.
    let stopped = d.into_builder();
    let squat = json!([
        { "wait_control": true },
        call("POST", "/v1/queues", json!({ "name": "app" })),
        { "attach": "app", "answer": "squatter" },
        call("POST", "/v1/queues/app/urls",
             json!({ "url": format!("http://localhost:{port}/sq/") })),
    ]);
    let (tx, rx) = mpsc::channel();
    let waiting = site.clone();
    let waiter = std::thread::spawn(move || {
        let p = probe(&waiting, Some(OWNER), squat, &[]);
        let _ = tx.send(());
        p
    });
    let d = stopped.spawn();
    let _ = rx.recv_timeout(Duration::from_secs(30));
    let Some(squatter) = waiter.join().expect("probe thread") else {
        return;
    };
    let won = squatter.result(1).0 == 201;
    // Whoever came first, the app's requests never reach the other account.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut served = 0;
    while Instant::now() < deadline {
        let got = answer(port, "x", "/app/2");
        assert!(
            !got.contains("squatter"),
            "the app's request reached uid {OWNER}: {got}"
        );
        served += usize::from(got.starts_with("name=app"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = d.state();
    if won {
        assert_eq!(queue(&state, "app").expect("app")["owner_uid"], OWNER);
        assert!(
            !urls_of(&state, "app").iter().any(|u| u.contains("/app/")),
            "{state}"
        );
        assert_eq!(served, 0);
    } else {
        assert_eq!(squatter.result(1).1["code"], 5, "{:?}", squatter.results);
        assert!(served > 0);
    }
    println!(
        "restart: the squatter {} the name",
        if won { "took" } else { "did not take" }
    );
    drop((app, squatter));
}

#[test]
fn a_url_belongs_to_the_connection_that_added_it() {
    let (d, _site) = open_daemon("");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/mine/");
    let mut holder = d.ctl();
    holder.create_queue(json!({ "name": "q" }));
    // The same prefix twice on one connection: 183, as HttpAddUrl answers.
    assert_eq!(holder.add_url("q", &url).0, 201);
    let (status, body) = holder.add_url("q", &url);
    assert_eq!((status, body["code"].as_u64()), (409, Some(183)), "{body}");
    // The queue's owner may add a URL on a connection that never opened the queue; the URL
    // goes when that connection does, and the queue keeps the rest.
    let other = format!("http://127.0.0.1:{port}/other/");
    let mut passer_by = d.ctl();
    assert_eq!(passer_by.add_url("q", &other).0, 201);
    assert_eq!(urls_of(&d.state(), "q").len(), 2);
    drop(passer_by);
    assert!(
        eventually(10, || urls_of(&d.state(), "q") == vec![url.clone()]),
        "{}",
        d.state()
    );
    assert_eq!(answer(port, "x", "/other/x"), "404");
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
    // Only root (or the configuration) makes the daemon connect to another host; a
    // loopback port or Unix socket must be served by the queue owner, which
    // `upstream_owner` checks.
    let (status, body) = ctl.call(
        "POST",
        "/v1/queues",
        Some(json!({ "name": "theirs", "upstream": "192.0.2.1:80" })),
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
