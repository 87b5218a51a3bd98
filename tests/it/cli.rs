//! The operator commands end to end: `show`, `urlacl`, `iplisten`, `queue`, `reload`,
//! `check-config` and `explain --live`, run as the real binary against a real daemon on its
//! own control socket and loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::*;
use serde_json::{Value, json};

/// `portshare ARGS --control SOCKET`.
fn cli(control: &Path, args: &[&str]) -> Output {
    Command::new(portshare_bin())
        .args(args)
        .arg("--control")
        .arg(control)
        .env_remove("PORTSHARE_CONTROL")
        .output()
        .expect("portshare runs")
}

/// `portshare ARGS` without a control socket (offline commands, usage errors).
fn offline(args: &[&str]) -> Output {
    Command::new(portshare_bin())
        .args(args)
        .output()
        .expect("portshare runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the command and insists on exit 0; its stdout.
fn ok(control: &Path, args: &[&str]) -> String {
    let out = cli(control, args);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs the command and insists on exit 1 with `portshare VERB: ...`; its stderr.
fn fails(control: &Path, args: &[&str], verb: &str) -> String {
    let out = cli(control, args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail:\n{}{err}",
        stdout(&out)
    );
    assert!(err.starts_with(&format!("portshare {verb}: ")), "{err}");
    err
}

fn json_of(control: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(control, args)).expect("the output is JSON")
}

/// A daemon on `--iplisten 127.0.0.1` whose configuration holds `toml` (top-level keys
/// first, then tables) and opens the control socket to every account. Returns the daemon
/// and the file's path.
fn daemon_with(toml: &str) -> (Daemon, PathBuf) {
    let d = Daemon::builder()
        .tag("cli")
        .config(cli_config(toml))
        .spawn();
    let config = d.config.clone();
    (d, config)
}

/// `toml`, and the control socket open to every account.
fn cli_config(toml: &str) -> String {
    format!("{toml}\n[control]\nmode = \"0666\"\n")
}

#[test]
fn show_servicestate_text_and_json() {
    let (d, _) = daemon_with("");
    let (a, port) = hello_on_free_port(&d, "alpha", &["/a/"], &[]);
    // 127.0.0.2 is this machine's but not in the listen list: registered, nothing listens.
    let b = d.hello(
        "beta",
        &[
            &format!("http://+:{port}/b/"),
            &format!("http://127.0.0.2:{port}/far/"),
        ],
        &["--slots", "3"],
    );
    let (status, _, _) = get(port, "example.com", "/a/1");
    assert_eq!(status, 200);

    let text = ok(&d.control, &["show", "servicestate"]);
    let daemon_pid = d.proc.child.id();
    for want in [
        "Snapshot of Portshare service state\n-----------------------------------\n".to_owned(),
        format!("Process ID: {daemon_pid}\n"),
        "IP listen list: 127.0.0.1\n".to_owned(),
        format!("Listeners:\n    127.0.0.1:{port}, open connections: "),
        "Bind failures:\n    (none)\n".to_owned(),
        "    Request queue name: alpha\n        State: Active\n        Owner: ".to_owned(),
        "        Request queue 503 verbosity level: Basic\n        Max requests: 1000\n".to_owned(),
        // A queue's 0 is the service's value: shown as the value in force, and whose.
        "        Request queue timeout (secs): 120 (service)\n        Entity body timeout \
         (secs): 120 (service)\n        Drain entity body timeout (secs): 120 (service)\n        \
         Minimum send rate (bytes/sec): 150 (service)\n        Max connections: no limit of its \
         own (service: "
            .to_owned(),
        "            Delivered: 1\n".to_owned(),
        format!("        Registered URLs:\n            http://+:{port}/a/\n"),
        format!("            http://127.0.0.2:{port}/far/  [NOT LISTENING]\n                "),
        "        Number of active processes attached: 1\n".to_owned(),
        format!("            ID: {}, user: ", a.proc.child.id()),
        format!("            ID: {}, user: ", b.proc.child.id()),
        ", slots: 3, busy: 0, buffered bytes: 0\n                Command line: ".to_owned(),
        "Worker response buffers:\n    Held (bytes): 0, peak: ".to_owned(),
        "URL reservations (taking part in routing):\n    (none)\n".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} in\n{text}");
    }
    // Every process line names a user, never an empty one.
    assert!(!text.contains("user: ,"), "{text}");
    assert!(!text.contains("Owner:  ("), "{text}");

    let state = json_of(&d.control, &["show", "servicestate", "--json"]);
    assert_eq!(state["pid"], daemon_pid);
    assert_eq!(state["iplisten"], json!(["127.0.0.1"]));
    let queues = state["queues"].as_array().expect("queues");
    let names: Vec<&str> = queues.iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    for q in queues {
        assert!(!q["owner_user"].as_str().unwrap_or("").is_empty(), "{q}");
        assert!(
            !q["processes"][0]["user"].as_str().unwrap_or("").is_empty(),
            "{q}"
        );
        assert!(q["oldest_wait_ms"].is_u64(), "{q}");
    }
    let far = state["prefixes"]
        .as_array()
        .expect("prefixes")
        .iter()
        .find(|p| p["url"] == format!("http://127.0.0.2:{port}/far/"))
        .expect("the 127.0.0.2 prefix");
    assert!(far["warning"].is_string(), "{far}");
    assert_eq!(far["listening"], json!([]));
    assert_eq!(state["bind_failures"], json!([]));
    // Two apps attached: the shared bound and a floor for each.
    let b = &state["buffers"];
    assert_eq!(
        b["bound"].as_u64(),
        Some(b["shared_bound"].as_u64().unwrap_or(0) + 2 * b["worker_floor"].as_u64().unwrap_or(0)),
        "{b}"
    );
    assert_eq!(b["bytes"], 0, "{b}");
    // The JSON is pretty-printed.
    assert!(ok(&d.control, &["show", "servicestate", "--json"]).starts_with("{\n  \""));
}

#[test]
fn urlacl_add_show_delete() {
    let port = free_port();
    let (d, _) = daemon_with(&format!(
        "admin_group = \"root\"\n\n[[urlacl]]\nurl = \"http://+:{port}/cfg/\"\n\
         users = [\"uid:4242\"]\ngroups = [\"gid:4242\"]\nlisten = true\ndelegate = false\n"
    ));

    let text = ok(&d.control, &["show", "urlacl"]);
    let cfg = format!(
        "    Reserved URL            : http://+:{port}/cfg/\n\
         \x20       User: uid:4242\n            Listen: Yes\n            Delegate: No\n\
         \x20       Group: gid:4242\n            Listen: Yes\n            Delegate: No\n\
         \x20       Source: config\n"
    );
    assert!(
        text.starts_with("URL Reservations:\n-----------------\n\n"),
        "{text}"
    );
    assert!(text.contains(&cfg), "{cfg:?} in\n{text}");
    assert!(text.contains("Admin group: root "), "{text}");

    let cli_url = format!("http://+:{port}/cli/");
    let added = ok(
        &d.control,
        &[
            "urlacl",
            "add",
            &cli_url,
            "--user",
            "uid:4243",
            "--group",
            "gid:4243",
            "--delegate",
            "yes",
        ],
    );
    assert!(
        added.starts_with("URL reservation successfully added\n\n"),
        "{added}"
    );
    assert!(
        added.contains(&format!(
            "    Reserved URL            : {cli_url}\n        User: uid:4243\n            \
             Listen: Yes\n            Delegate: Yes\n        Group: gid:4243\n"
        )),
        "{added}"
    );
    assert!(added.contains("        Source: state\n"), "{added}");

    let list = json_of(&d.control, &["show", "urlacl", "--json"]);
    assert_eq!(list["admin_group"], "root");
    let reservations = list["reservations"].as_array().expect("reservations");
    let urls: Vec<(&str, &str)> = reservations
        .iter()
        .map(|r| {
            (
                r["url"].as_str().unwrap_or(""),
                r["source"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let cfg_url = format!("http://+:{port}/cfg/");
    assert_eq!(
        urls,
        [(cfg_url.as_str(), "config"), (cli_url.as_str(), "state")]
    );
    assert_eq!(
        reservations[1]["entries"][0],
        json!({"kind": "user", "name": "uid:4243", "listen": true, "delegate": true})
    );
    // Reservations take part in routing: the state view lists them.
    let state = json_of(&d.control, &["show", "servicestate", "--json"]);
    assert_eq!(state["reservations"], json!([cfg_url, cli_url]));
    let text = ok(&d.control, &["show", "servicestate"]);
    assert!(
        text.contains(&format!(
            "URL reservations (taking part in routing):\n    {cfg_url}\n    {cli_url}\n"
        )),
        "{text}"
    );
    // Kept in the state file, like HTTP.sys's registry values.
    let saved = std::fs::read_to_string(d.dir.0.join("state.toml")).unwrap_or_default();
    assert!(saved.contains(&cli_url), "state file:\n{saved}");

    let err = fails(
        &d.control,
        &["urlacl", "add", &cli_url, "--user", "uid:1"],
        "urlacl add",
    );
    assert!(err.contains("(183 ERROR_ALREADY_EXISTS)"), "{err}");
    // The configuration's entries change by editing the file, never by the CLI.
    fails(&d.control, &["urlacl", "delete", &cfg_url], "urlacl delete");

    let deleted = ok(&d.control, &["urlacl", "delete", &cli_url]);
    assert_eq!(deleted, "URL reservation successfully deleted\n");
    let text = ok(&d.control, &["show", "urlacl"]);
    assert!(!text.contains("/cli/"), "{text}");
    assert!(text.contains(&cfg), "{text}");
    fails(&d.control, &["urlacl", "delete", &cli_url], "urlacl delete");
}

#[test]
fn iplisten_add_show_delete() {
    let (d, _) = daemon_with("");
    let text = ok(&d.control, &["show", "iplisten"]);
    assert!(
        text.starts_with(
            "IP addresses present in the IP listen list:\n\
             -------------------------------------------\n\n\
             \x20   (none: the daemon listens on every address, 0.0.0.0 and ::)\n"
        ),
        "{text}"
    );
    // Started with --iplisten: the stored list is shown, and said not to apply.
    assert!(
        text.contains("Overridden: the daemon was started with --iplisten 127.0.0.1;"),
        "{text}"
    );

    let added = ok(&d.control, &["iplisten", "add", "127.0.0.1"]);
    assert!(
        added.starts_with(
            "IP address successfully added\n\n\
             IP addresses present in the IP listen list:\n\
             -------------------------------------------\n\n\
             \x20   127.0.0.1  (state)\n"
        ),
        "{added}"
    );
    let list = json_of(&d.control, &["show", "iplisten", "--json"]);
    assert_eq!(
        list,
        json!({
            "addresses": [{"address": "127.0.0.1", "source": "state"}],
            "overridden_by": ["127.0.0.1"],
        })
    );
    // The daemon still listens where --iplisten says.
    let state = json_of(&d.control, &["show", "servicestate", "--json"]);
    assert_eq!(state["iplisten"], json!(["127.0.0.1"]));

    let deleted = ok(&d.control, &["iplisten", "delete", "127.0.0.1"]);
    assert!(
        deleted.starts_with("IP address successfully deleted\n\n"),
        "{deleted}"
    );
    assert!(deleted.contains("(none: the daemon listens on every address"));
    let list = json_of(&d.control, &["show", "iplisten", "--json"]);
    assert_eq!(list["addresses"], json!([]));
    fails(
        &d.control,
        &["iplisten", "delete", "127.0.0.1"],
        "iplisten delete",
    );
}

#[test]
fn iplisten_entries_of_the_configuration_stay() {
    let (d, _) = daemon_with("iplisten = [\"127.0.0.1\"]\n");
    let text = ok(&d.control, &["show", "iplisten"]);
    assert!(text.contains("    127.0.0.1  (config)\n"), "{text}");
    fails(
        &d.control,
        &["iplisten", "delete", "127.0.0.1"],
        "iplisten delete",
    );
    let list = json_of(&d.control, &["show", "iplisten", "--json"]);
    assert_eq!(
        list["addresses"],
        json!([{"address": "127.0.0.1", "source": "config"}])
    );
}

#[test]
fn queue_disable_and_enable() {
    let (d, _) = daemon_with("");
    let port = free_port();
    let _slow = App::start(
        &d.control,
        "slow_worker",
        "qd",
        &[&format!("http://+:{port}/")],
        &["--delay-ms", "1", "--verbosity", "limited"],
    );
    let _basic = d.hello("qb", &[&format!("http://+:{port}/basic/")], &[]);
    assert_eq!(get(port, "x", "/1").0, 200);

    let out = ok(&d.control, &["queue", "disable", "qd"]);
    assert_eq!(
        out,
        "Request queue qd: Disabled\n    New requests are refused by its 503 verbosity \
         (limited: 503 Service Unavailable).\n"
    );
    assert_eq!(get(port, "x", "/2").0, 503);
    let text = ok(&d.control, &["show", "servicestate"]);
    assert!(
        text.contains("    Request queue name: qd\n        State: Disabled\n"),
        "{text}"
    );
    assert!(
        text.contains("            Refused, queue disabled: 1\n"),
        "{text}"
    );

    // Basic verbosity: no answer at all.
    let out = ok(&d.control, &["queue", "disable", "qb"]);
    assert!(out.contains("(basic: the connection is reset)"), "{out}");
    let how = ending(port, b"GET /basic/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(how, Ending::Reset);

    assert_eq!(
        ok(&d.control, &["queue", "enable", "qd"]),
        "Request queue qd: Active\n"
    );
    assert_eq!(
        ok(&d.control, &["queue", "enable", "qb"]),
        "Request queue qb: Active\n"
    );
    assert_eq!(get(port, "x", "/3").0, 200);
    assert_eq!(get(port, "x", "/basic/3").0, 200);
    let state = json_of(&d.control, &["show", "servicestate", "--json"]);
    assert_eq!(state["queues"][1]["enabled"], true, "{state}");

    fails(
        &d.control,
        &["queue", "disable", "no-such-queue"],
        "queue disable",
    );
}

#[test]
fn reload_applies_the_file_and_refuses_a_bad_one() {
    let port = free_port();
    let one = format!("[[urlacl]]\nurl = \"http://+:{port}/one/\"\nusers = [\"uid:4242\"]\n");
    let (d, config) = daemon_with(&one);
    let out = ok(&d.control, &["reload"]);
    assert!(
        out.starts_with(&format!("Reloaded {}\n", config.display())),
        "{out}"
    );
    assert!(out.contains("    No changes.\n"), "{out}");

    let two =
        format!("{one}\n[[urlacl]]\nurl = \"http://+:{port}/two/\"\ngroups = [\"gid:4242\"]\n");
    d.write_config(&cli_config(&two));
    let out = ok(&d.control, &["reload"]);
    assert!(out.contains("    Changes:\n        "), "{out}");
    assert!(out.contains("/two/"), "{out}");
    let text = ok(&d.control, &["show", "urlacl"]);
    assert!(
        text.contains(&format!("Reserved URL            : http://+:{port}/two/\n")),
        "{text}"
    );

    // A file that does not parse changes nothing, and says where it is wrong.
    std::fs::write(&config, "[limits]\nmax_request_bytes = \"lots\"\n").expect("write");
    let err = fails(&d.control, &["reload"], "reload");
    assert!(err.contains("line 2"), "{err}");
    let text = ok(&d.control, &["show", "urlacl"]);
    assert!(text.contains("/two/"), "{text}");

    // SIGHUP does what `portshare reload` does.
    d.write_config(&cli_config(&one));
    let hup = Command::new("kill")
        .args(["-HUP", &d.proc.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    assert!(
        eventually(10, || !stdout(&cli(&d.control, &["show", "urlacl"]))
            .contains("/two/")),
        "SIGHUP did not reload:\n{}",
        d.log()
    );
}

#[test]
fn check_config_good_and_bad() {
    let dir = TempDir::new("check-config");
    let good = dir.0.join("good.toml");
    std::fs::write(
        &good,
        r#"iplisten = ["127.0.0.1"]
admin_group = "portshare-admin"
state_file = "/var/lib/portshare/state.toml"

[control]
socket = "/run/portshare/control.sock"
mode = "0666"

[[urlacl]]
url = "http://+:80/app/"
users = ["alice", "uid:1001"]
groups = ["web", "gid:1002"]
listen = true
delegate = false

[limits]
max_request_bytes = 16384

[timers]
request_queue = 120

[errlog]
enabled = false

[[queue]]
name = "legacy"
urls = ["http://+:8080/legacy/"]
verbosity = "limited"
upstream = "127.0.0.1:9000"
"#,
    )
    .expect("write");
    let out = offline(&["check-config", &good.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}: ok\n", good.display()));

    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "iplisten = [\"127.0.0.1\"]\n\n[limits]\nmax_request_bytes = \"lots\"\n",
    )
    .expect("write");
    let out = offline(&["check-config", &bad.display().to_string()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("portshare check-config: "), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("max_request_bytes"), "{err}");
    assert_eq!(stdout(&out), "");

    let unknown = dir.0.join("unknown.toml");
    std::fs::write(&unknown, "[limits]\nmax_requests_bytes = 1\n").expect("write");
    let out = offline(&["check-config", &unknown.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("max_requests_bytes"),
        "{}",
        stderr(&out)
    );

    let missing = dir.0.join("missing.toml");
    let out = offline(&["check-config", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn explain_live_names_the_owner() {
    let (d, _) = daemon_with("");
    let (a, port) = hello_on_free_port(&d, "a", &["/app/"], &[]);
    let b = d.hello(
        "b",
        &[
            &format!("http://+:{port}/app/deep/"),
            &format!("http://localhost:{port}/"),
        ],
        &[],
    );
    let reserved = format!("http://+:{port}/app/reserved/");
    ok(
        &d.control,
        &["urlacl", "add", &reserved, "--user", "uid:4242"],
    );
    let local = format!("127.0.0.1:{port}");

    let text = ok(
        &d.control,
        &[
            "explain",
            "--live",
            "--local",
            &local,
            "--host",
            "example.com",
            "/app/deep/x",
        ],
    );
    let (a_pid, b_pid) = (a.proc.child.id(), b.proc.child.id());
    for want in [
        format!(
            "   live: 3 registrations and 1 reservation of the daemon at {} (PID {})\n",
            d.control.display(),
            d.proc.child.id()
        ),
        format!("-> delivered to http://+:{port}/app/deep/ (queue b)\n"),
        format!("    won            http://+:{port}/app/deep/ (registration)\n"),
        format!("                   queue b, PID {b_pid} ("),
        format!("    shorter        http://+:{port}/app/ (registration)\n"),
        format!("                   queue a, PID {a_pid} ("),
        format!("    path mismatch  {reserved} (reservation)\n    "),
    ] {
        assert!(text.contains(&want), "{want:?} in\n{text}");
    }

    let got = json_of(
        &d.control,
        &[
            "explain",
            "--live",
            "--json",
            "--local",
            &local,
            "--host",
            "example.com",
            "/app/deep/x",
        ],
    );
    assert_eq!(got["winner"], format!("http://+:{port}/app/deep/"));
    let candidate = |category: usize, prefix: String| {
        got["trace"][category]["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .find(|c| c["prefix"] == prefix)
            .unwrap_or_else(|| panic!("{prefix} in {got}"))
            .clone()
    };
    let won = candidate(0, format!("http://+:{port}/app/deep/"));
    assert_eq!(won["outcome"], "won");
    assert_eq!(won["queue"], "b");
    assert_eq!(won["processes"][0]["pid"], b_pid);
    assert!(
        won["processes"][0]["command"]
            .as_str()
            .is_some_and(|c| c.contains("hello")),
        "{won}"
    );
    let explicit = candidate(1, format!("http://localhost:{port}/"));
    assert_eq!(explicit["queue"], "b");
    assert_eq!(explicit["outcome"], "not reached");
    let reservation = candidate(0, reserved.clone());
    assert_eq!(reservation["kind"], "reservation");
    assert_eq!(reservation["queue"], Value::Null);
    assert_eq!(reservation["processes"], json!([]));

    // What --live predicts is what the daemon does.
    for (host, target) in [
        ("example.com", "/app/x"),
        ("example.com", "/app/deep/y"),
        ("localhost", "/elsewhere"),
        ("example.com", "/app/reserved/z"),
        ("example.com", "/nothing"),
    ] {
        let why = json_of(
            &d.control,
            &[
                "explain", "--live", "--json", "--local", &local, "--host", host, target,
            ],
        );
        let (status, _, body) = get(port, host, target);
        match why["winner"].as_str() {
            Some(winner) => {
                assert_eq!(status, 200, "{host} {target}: {why}");
                assert!(
                    body.contains(&format!("prefix={winner} ")),
                    "{host} {target}: {body} vs {why}"
                );
            }
            None => assert_eq!(
                Some(u64::from(status)),
                why["status"].as_u64(),
                "{host} {target}: {why}"
            ),
        }
    }

    // --live takes the table from the daemon, never from the flags.
    let out = cli(
        &d.control,
        &["explain", "--live", "--register", "http://+:80/", "/"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_missing_daemon_is_named_and_usage_errors_exit_2() {
    let dir = TempDir::new("cli-nodaemon");
    let control = dir.0.join("control.sock");
    for (args, verb) in [
        (&["show", "servicestate"][..], "show servicestate"),
        (&["show", "urlacl", "--json"], "show urlacl"),
        (&["show", "iplisten"], "show iplisten"),
        (
            &["urlacl", "add", "http://+:80/a/", "--user", "x"],
            "urlacl add",
        ),
        (&["urlacl", "delete", "http://+:80/a/"], "urlacl delete"),
        (&["iplisten", "add", "::1"], "iplisten add"),
        (&["iplisten", "delete", "::1"], "iplisten delete"),
        (&["queue", "enable", "q"], "queue enable"),
        (&["queue", "disable", "q"], "queue disable"),
        (&["reload"], "reload"),
        (&["explain", "--live", "/"], "explain"),
    ] {
        let err = fails(&control, args, verb);
        assert!(
            err.contains(&format!(
                "cannot reach the daemon at {}: ",
                control.display()
            )),
            "{err}"
        );
    }
    for args in [
        &["urlacl", "add", "http://+:80/a/"][..],
        &[
            "urlacl",
            "add",
            "http://+:80/a/",
            "--user",
            "x",
            "--listen",
            "maybe",
        ],
        &["iplisten", "add", "127.0.0.1:80"],
        &["iplisten", "add", "localhost"],
        &["queue", "pause", "q"],
        &["queue", "enable"],
        &["explain", "--control", "/x", "/"],
        &["reload", "now"],
    ] {
        let out = offline(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_user_without_rights_is_told_what_to_do() {
    use std::os::unix::process::CommandExt;
    if !is_root() {
        eprintln!("skipping: needs root to run the CLI as another user");
        return;
    }
    let cfg = format!("http://+:{}/cfg/", free_port());
    let (d, _) = daemon_with(&format!(
        "[[urlacl]]\nurl = \"{cfg}\"\nusers = [\"uid:4242\"]\n"
    ));
    let (_app, port) = hello_on_free_port(&d, "roots", &["/"], &[]);
    let as_nobody = |args: &[&str]| {
        Command::new(portshare_bin())
            .args(args)
            .arg("--control")
            .arg(&d.control)
            .uid(65534)
            .gid(65534)
            .output()
    };
    // The binary may sit where nobody may run it (a private home): nothing to test then.
    let probe = match as_nobody(&["--version"]) {
        Ok(out) if out.status.success() => out,
        other => {
            eprintln!(
                "skipping: uid 65534 cannot run {:?}: {other:?}",
                portshare_bin()
            );
            return;
        }
    };
    drop(probe);
    let out = as_nobody(&["show", "servicestate"]).expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));

    let url = format!("http://+:{port}/mine/");
    let out = as_nobody(&["urlacl", "add", &url, "--user", "uid:65534"]).expect("runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("portshare urlacl add: "), "{err}");
    assert!(err.contains("(5 ERROR_ACCESS_DENIED)"), "{err}");
    assert!(
        err.contains(
            "hint: run as root or a member of the admin group, or ask for a reservation: \
             portshare urlacl add"
        ),
        "{err}"
    );
    for (args, verb) in [
        (&["queue", "disable", "roots"][..], "queue disable"),
        (&["iplisten", "add", "::1"], "iplisten add"),
        (&["reload"], "reload"),
    ] {
        let out = as_nobody(args).expect("runs");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with(&format!("portshare {verb}: ")), "{err}");
        assert!(
            err.ends_with(
                "(5 ERROR_ACCESS_DENIED)\nhint: run as root or a member of the admin group\n"
            ),
            "{err}"
        );
    }
    // Root is refused only what no one may do (here: change the configuration's entries),
    // and gets no "run as root" hint.
    let err = fails(&d.control, &["urlacl", "delete", &cfg], "urlacl delete");
    assert!(err.contains("(5 ERROR_ACCESS_DENIED)"), "{err}");
    assert!(!err.contains("hint:"), "{err}");
    assert_eq!(get(port, "x", "/").0, 200, "the queue is still enabled");
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn servicestate_names_who_holds_an_address() {
    // No --iplisten: the file's list applies, and a reload may widen it.
    let d = Daemon::builder()
        .tag("cli-holder")
        .config(cli_config("iplisten = [\"127.0.0.1\"]\n"))
        .iplisten_from_config()
        .spawn();
    let (_app, port) = hello_on_free_port(&d, "held", &["/"], &[]);
    let holder = std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2");
    d.write_config(&cli_config("iplisten = [\"127.0.0.1\", \"127.0.0.2\"]\n"));
    let out = ok(&d.control, &["reload"]);
    let address = format!("127.0.0.2:{port}");
    assert!(out.contains("    Warnings:\n        "), "{out}");
    assert!(out.contains(&address), "{out}");

    let text = ok(&d.control, &["show", "servicestate"]);
    let me = format!("PID {}", std::process::id());
    let failures = text
        .split_once("Bind failures:\n")
        .and_then(|(_, rest)| rest.split_once("\n\n"))
        .map(|(block, _)| block)
        .unwrap_or_default();
    assert!(
        failures.starts_with(&format!("    {address}\n        ")),
        "{text}"
    );
    assert!(failures.contains(&me), "{me} in\n{text}");
    assert!(failures.ends_with("(32 ERROR_SHARING_VIOLATION)"), "{text}");
    let state = json_of(&d.control, &["show", "servicestate", "--json"]);
    assert_eq!(state["bind_failures"][0]["address"], address);
    assert_eq!(state["bind_failures"][0]["error"]["code"], 32);
    drop(holder);
}

#[test]
fn show_servicestate_json_lists_the_listener_prefix_queue_and_process() {
    let d = Daemon::start();
    let (app, port) = hello_on_free_port(&d, "shown", &["/s/"], &[]);
    let mut cmd = Command::new(portshare_bin());
    cmd.args(["show", "servicestate", "--json", "--control"])
        .arg(&d.control);
    let (code, stdout, stderr) = run_to_exit(cmd, &d.dir.0, 20);
    assert_eq!(code, Some(0), "{stderr}");
    let state: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    let address = format!("127.0.0.1:{port}");
    assert!(
        state["listeners"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["address"] == address.as_str())),
        "{state}"
    );
    let prefix = format!("http://+:{port}/s/");
    assert!(
        state["prefixes"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| {
                p["url"]
                    .as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(&prefix))
                    && p["queue"] == "shown"
            })),
        "{state}"
    );
    let queue = state["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "shown"))
        .unwrap_or_else(|| panic!("no queue `shown`: {state}"));
    assert_eq!(queue["processes"][0]["pid"], app.proc.child.id(), "{state}");
    assert!(
        queue["processes"][0]["command"]
            .as_str()
            .is_some_and(|c| c.contains("hello")),
        "{state}"
    );
    assert!(
        queue["urls"].as_array().is_some_and(|u| u
            .iter()
            .any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(&prefix)))),
        "{state}"
    );
}
