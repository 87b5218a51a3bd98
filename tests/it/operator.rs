//! What the daemon and the CLI tell the operator: a plain-text log that names arrivals and
//! departures, warnings where a change leaves URLs unreachable or names accounts that do
//! not exist, the same checks from `reload` and `check-config`, bind failures that go once
//! nothing needs them, a reload that compares with what is in force, a prompt and quiet
//! stop, and hints for netsh's spelling.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::*;

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

/// Runs the command, insists on exit 0; its stdout and stderr.
fn ok(control: &Path, args: &[&str]) -> (String, String) {
    let out = cli(control, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}):\n{stdout}{stderr}",
        out.status.code()
    );
    (stdout, stderr)
}

/// Whether a log line holds `name=value`, the value quoted (text) or not (numbers, and
/// values the daemon logs by their `Display`).
fn has_field(line: &str, name: &str, value: &str) -> bool {
    line.contains(&format!(" {name}={value}")) || line.contains(&format!(" {name}=\"{value}\""))
}

/// The lines of the daemon's log holding `what`.
fn lines_with(log: &str, what: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_log_is_plain_text_and_tells_arrivals_and_departures() {
    let d = Daemon::start();
    let (app, port) = hello_on_free_port(&d, "arrive", &["/a/"], &["--workers", "1"]);
    let pid = app.proc.child.id();
    drop(app);
    assert!(
        eventually(10, || d.log().contains("worker detached")
            && d.log().contains("unregistered")),
        "{}",
        d.log()
    );
    let log = d.log();
    // A file gets no colour codes.
    assert!(!log.contains('\x1b'), "{log:?}");
    // Leaving is told at the level and with the fields of arriving.
    let attached = lines_with(&log, "worker attached");
    let detached = lines_with(&log, "worker detached");
    for line in attached.iter().chain(&detached) {
        assert!(line.contains(" INFO "), "{line}");
        assert!(has_field(line, "queue", "arrive"), "{line}");
        assert!(has_field(line, "pid", &pid.to_string()), "{line}");
        for field in [" slots=", " version=", " worker="] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    assert_eq!((attached.len(), detached.len()), (1, 1), "{log}");
    // And so is a registration's end, with why.
    let gone = lines_with(&log, "unregistered");
    assert!(
        gone.iter().any(|l| l.contains(" INFO ")
            && has_field(l, "queue", "arrive")
            && has_field(l, "prefix", &format!("http://+:{port}/a/"))
            && l.contains(" reason=")),
        "{log}"
    );
}

#[test]
fn sigterm_on_an_idle_daemon_counts_no_connection() {
    let mut d = Daemon::start();
    // Listening sockets open, no client connected.
    let (_app, _port) = hello_on_free_port(&d, "idle", &["/"], &[]);
    let exit = d.proc.terminate();
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", d.log());
    let log = d.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains("waiting for the requests of open connections"),
        "{log}"
    );
}

#[test]
fn deleting_the_last_address_says_which_urls_stop_listening() {
    // The file's list holds only an address this machine does not have (never sent
    // anything); the state file's, 127.0.0.1.
    let d = Daemon::builder()
        .tag("operator-iplisten")
        .config("iplisten = [\"10.9.9.9\"]\n")
        .iplisten_from_config()
        .spawn();
    // Each change says again what is wrong with the list as it stands.
    let foreign = "portshare iplisten add: warning: 10.9.9.9 is in the IP listen list but is no \
                   address of this machine: it is skipped until a reload finds it here\n";
    let (_, stderr) = ok(&d.control, &["iplisten", "add", "127.0.0.1"]);
    assert_eq!(stderr, foreign);
    let (_app, port) = hello_on_free_port(&d, "site", &["/x/"], &[]);

    let (_, stderr) = ok(&d.control, &["iplisten", "delete", "127.0.0.1"]);
    let url = format!("http://+:{port}/x/");
    assert!(
        stderr.ends_with(&format!(
            "\nportshare iplisten delete: warning: {url} stops listening: the IP listen list \
             (10.9.9.9) holds no address of this machine; the registration stands, but clients \
             cannot reach it\n"
        )),
        "{stderr}"
    );
    assert!(
        d.log().contains(&format!("{url} stops listening")),
        "{}",
        d.log()
    );

    let (text, _) = ok(&d.control, &["show", "servicestate"]);
    assert!(
        text.contains(
            "Listeners:\n    (none: 1 URL is registered, but no address it needs is bound; \
             the reason is under each URL below)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "            {url}  [NOT LISTENING]\n                nothing listens for {url}: \
             the IP listen list (10.9.9.9) holds no address of this machine;"
        )),
        "{text}"
    );
}

#[test]
fn urlacl_add_for_accounts_that_do_not_exist_warns() {
    let d = Daemon::start();
    let port = free_port();
    let url = format!("http://+:{port}/ghost/");
    let (stdout, stderr) = ok(
        &d.control,
        &[
            "urlacl",
            "add",
            &url,
            "--user",
            "ghostuser-portshare",
            "--group",
            "ghostgroup-portshare",
        ],
    );
    assert!(
        stdout.starts_with("URL reservation successfully added"),
        "{stdout}"
    );
    assert_eq!(
        stderr,
        format!(
            "portshare urlacl add: warning: reservation {url}: no user ghostuser-portshare, no \
             group ghostgroup-portshare on this machine, so it grants them nothing\n"
        )
    );
    // An account that exists gets no warning.
    let url = format!("http://+:{port}/root/");
    let (_, stderr) = ok(&d.control, &["urlacl", "add", &url, "--user", "root"]);
    assert_eq!(stderr, "");
}

#[test]
fn reload_and_check_config_run_the_same_checks() {
    let d = Daemon::start();
    // The daemon listens on its --iplisten; the file's list is checked all the same.
    d.write_config(
        "admin_group = \"ghostgroup-portshare\"\niplisten = [\"127.0.0.1\", \"10.9.9.9\"]\n\n\
         [[urlacl]]\nurl = \"http://+:8123/g/\"\nusers = [\"ghostuser-portshare\"]\n",
    );
    let out = Command::new(portshare_bin())
        .arg("check-config")
        .arg(&d.config)
        .output()
        .expect("portshare runs");
    assert!(out.status.success(), "{out:?}");
    let offline = String::from_utf8_lossy(&out.stderr).into_owned();
    let (status, report) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{report}");
    let warnings: Vec<String> = report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_owned())
        .collect();
    let checks = [
        "admin_group \"ghostgroup-portshare\": no such group on this machine",
        "10.9.9.9 is in the IP listen list but is no address of this machine",
        "reservation http://+:8123/g/: no user ghostuser-portshare on this machine",
    ];
    for check in checks {
        assert!(
            offline.contains(&format!("portshare check-config: warning: {check}")),
            "{check} in\n{offline}"
        );
        assert!(
            warnings.iter().filter(|w| w.contains(check)).count() == 1,
            "{check} once in {warnings:?}"
        );
    }
}

#[test]
fn a_bind_failure_goes_when_nothing_needs_its_port() {
    let d = Daemon::start();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("address").port();
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({"name": "late"}));
    let (status, body) = ctl.add_url("late", &format!("http://+:{port}/late/"));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], 32, "{body}");
    // The caller was told who holds it; nothing registered needs the port, so the state
    // view keeps no failure for it.
    assert_eq!(d.state()["bind_failures"], serde_json::json!([]));
    drop(holder);
    // Once free, the same registration binds.
    let (status, body) = ctl.add_url("late", &format!("http://+:{port}/late/"));
    assert!(status == 200 || status == 201, "{body}");
    assert_eq!(d.state()["bind_failures"], serde_json::json!([]));
}

#[test]
fn a_reverted_restart_only_change_is_no_change() {
    let queue = |port: u16| format!("[[queue]]\nname = \"site\"\nhttps_redirect = {port}\n");
    let d = Daemon::builder()
        .tag("operator-revert")
        .config(queue(8443))
        .spawn();
    let reload = || {
        let (status, body) = d.ctl().call("POST", "/v1/reload", None);
        assert_eq!(status, 200, "{body}");
        body["warnings"].to_string()
    };
    d.write_config(&queue(8444));
    let warnings = reload();
    assert!(
        warnings.contains("https_redirect applies when the daemon restarts"),
        "{warnings}"
    );
    // Back to what is in force: nothing to wait for a restart.
    d.write_config(&queue(8443));
    let warnings = reload();
    assert!(!warnings.contains("https_redirect"), "{warnings}");
}

#[test]
fn netsh_spellings_get_the_command_line_to_use() {
    let out = Command::new(portshare_bin())
        .args(["urlacl", "add", "url=http://+:8080/app/", "user=alice"])
        .env_remove("PORTSHARE_CONTROL")
        .output()
        .expect("portshare runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with("\n    portshare urlacl add http://+:8080/app/ --user alice\n"),
        "{stderr}"
    );
}

#[test]
fn check_config_without_a_file_reads_the_default_one() {
    let out = Command::new(portshare_bin())
        .arg("check-config")
        .output()
        .expect("portshare runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a usage error: the file `serve` reads, whether it exists here or not.
    assert_ne!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("/etc/portshare/portshare.toml"), "{text}");
}
