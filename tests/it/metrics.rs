//! Counters (spec §17): the scrape listener of `[metrics] listen` (Prometheus text and
//! OpenMetrics, parsed by Python's `prometheus_client`), `GET /v1/metrics` under the state
//! view's rules, `portshare show counters`, and the listener's bounds under a flood.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use serde_json::{Value, json};

/// A daemon with the scrape listener on a free port of 127.0.0.1, and that port.
fn daemon_with_scrapes() -> (Daemon, u16) {
    for _ in 0..5 {
        let port = free_port();
        let d = Daemon::builder()
            .tag("metrics")
            .config(format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))
            .spawn();
        if scrape_raw(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").is_some() {
            return (d, port);
        }
    }
    panic!("no free port for the scrape listener");
}

/// Sends `request` to the scrape listener and reads the answer to its end.
fn scrape_raw(port: u16, request: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8(out).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.to_owned(), body.to_owned()))
}

fn scrape(port: u16) -> String {
    let (head, body) =
        scrape_raw(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("a scrape");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// Whether Python's `prometheus_client` is here: outside CI a machine without it skips
/// (false, with a note); under `CI` it fails.
fn have_prometheus_client() -> bool {
    if !have_python() {
        return false;
    }
    let ok = Command::new(python())
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "python3-prometheus-client missing under CI"
    );
    if !ok {
        eprintln!("skipped: python3-prometheus-client not installed");
    }
    ok
}

/// The samples of `text` as `prometheus_client` parses them (`openmetrics`: its
/// OpenMetrics parser): `[name, {labels}, value]`.
fn parse(text: &str, openmetrics: bool) -> Vec<(String, Value, f64)> {
    let module = if openmetrics {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import sys, json\nfrom {module} import text_string_to_metric_families as p\n\
         print(json.dumps([[s.name, s.labels, s.value] for f in p(sys.stdin.read()) for s in f.samples]))"
    );
    let mut child = Command::new(python())
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "the parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).expect("JSON");
    v
}

/// The value of the sample `name` whose labels include `labels`; `None` when absent.
fn value(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[k] == *v))
        .map(|s| s.2)
}

#[test]
fn a_scrape_parses_and_its_numbers_agree_with_the_traffic_sent() {
    if !have_prometheus_client() {
        return;
    }
    let (d, mp) = daemon_with_scrapes();
    let (_app, port) = hello_on_free_port(&d, "app", &["/app/"], &[]);
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "off", "verbosity": "limited", "enabled": false }));
    assert_eq!(ctl.add_url("off", &format!("http://+:{port}/off/")).0, 201);
    for i in 0..5 {
        assert_eq!(get(port, "x", &format!("/app/{i}")).0, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(port, "x", "/off/").0, 503);
    }
    assert_eq!(get(port, "x", "/elsewhere").0, 404);
    let app = [("queue", "app")];
    let mut samples = Vec::new();
    // A slot goes back just after the response is written.
    let settled = eventually(10, || {
        samples = parse(&scrape(mp), false);
        value(&samples, "portshare_queue_completed_total", &app) == Some(5.0)
    });
    assert!(settled, "{samples:?}");
    let port_text = port.to_string();
    let site = [("scheme", "http"), ("host", "+"), ("port", &port_text)];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l: Vec<(&str, &str)> = site.to_vec();
        l.extend_from_slice(extra);
        l
    };
    for (name, labels, want) in [
        ("portshare_queue_arrivals_total", app.to_vec(), 5.0),
        (
            "portshare_queue_requests_total",
            vec![("queue", "app"), ("outcome", "delivered")],
            5.0,
        ),
        (
            "portshare_queue_requests_total",
            vec![("queue", "app"), ("outcome", "refused")],
            0.0,
        ),
        ("portshare_queue_wait_seconds_count", app.to_vec(), 5.0),
        ("portshare_queue_app_seconds_count", app.to_vec(), 5.0),
        (
            "portshare_queue_total_seconds_bucket",
            vec![("queue", "app"), ("le", "+Inf")],
            5.0,
        ),
        ("portshare_queue_depth", app.to_vec(), 0.0),
        (
            "portshare_queue_arrivals_total",
            vec![("queue", "off")],
            3.0,
        ),
        (
            "portshare_queue_refused_total",
            vec![("queue", "off"), ("reason", "Disabled")],
            3.0,
        ),
        (
            "portshare_queue_requests_total",
            vec![("queue", "off"), ("outcome", "refused")],
            3.0,
        ),
        ("portshare_refused_total", vec![("reason", "NotFound")], 1.0),
        ("portshare_refused_total", vec![("reason", "Disabled")], 3.0),
        (
            "portshare_site_requests_total",
            with(&[("method", "GET")]),
            8.0,
        ),
        (
            "portshare_site_requests_total",
            with(&[("method", "HEAD")]),
            0.0,
        ),
        (
            "portshare_tls_handshakes_total",
            vec![("result", "ok")],
            0.0,
        ),
    ] {
        assert_eq!(
            value(&samples, name, &labels),
            Some(want),
            "{name} {labels:?}: {samples:?}"
        );
    }
    // One process serves `app`: it served the five.
    let served: f64 = samples
        .iter()
        .filter(|(n, l, _)| n == "portshare_worker_served_total" && l["queue"] == "app")
        .map(|s| s.2)
        .sum();
    assert_eq!(served, 5.0);
    // Nine connections came to the port, none is open once the answers are read.
    let address = format!("127.0.0.1:{port}");
    let at = [("address", address.as_str()), ("scheme", "http")];
    assert_eq!(
        value(&samples, "portshare_port_accepted_total", &at),
        Some(9.0)
    );
    let bytes_out = value(&samples, "portshare_site_sent_bytes_total", &site).unwrap_or(0.0);
    assert!(bytes_out > 0.0, "{samples:?}");
    // The state view's counters agree.
    let state = d.state();
    let q = state["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "off"))
        .expect("off");
    assert_eq!(q["counters"]["disabled"], 3);
}

#[test]
fn openmetrics_is_answered_when_asked_for_and_parses() {
    if !have_prometheus_client() {
        return;
    }
    let (d, mp) = daemon_with_scrapes();
    let (_app, port) = hello_on_free_port(&d, "app", &["/"], &[]);
    assert_eq!(get(port, "x", "/").0, 200);
    let (head, body) = scrape_raw(
        mp,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    )
    .expect("a scrape");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let samples = parse(&body, true);
    assert_eq!(
        value(
            &samples,
            "portshare_queue_arrivals_total",
            &[("queue", "app")]
        ),
        Some(1.0)
    );
    // Anything but GET /metrics is refused.
    let (head, _) = scrape_raw(mp, "GET / HTTP/1.1\r\n\r\n").expect("an answer");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn a_hostile_queue_name_is_escaped_in_labels() {
    if !have_prometheus_client() {
        return;
    }
    let (d, mp) = daemon_with_scrapes();
    let hostile = "q\"} portshare_fake 1\n\\x{\"";
    let hostile = hostile.replace('\n', " ");
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": hostile }));
    let text = scrape(mp);
    assert!(
        !text.lines().any(|l| l.starts_with("portshare_fake")),
        "{text}"
    );
    let samples = parse(&text, false);
    assert_eq!(
        value(
            &samples,
            "portshare_queue_arrivals_total",
            &[("queue", hostile.as_str())]
        ),
        Some(0.0),
        "{samples:?}"
    );
}

#[test]
fn a_deleted_queue_s_series_go_with_it() {
    let (d, mp) = daemon_with_scrapes();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "brief" }));
    assert!(scrape(mp).contains("queue=\"brief\""));
    let (status, body) = ctl.call("DELETE", "/v1/queues/brief", None);
    assert_eq!(status, 204, "{body}");
    let text = scrape(mp);
    assert!(!text.contains("queue=\"brief\""), "{text}");
    // The control API's sample says the same.
    let (status, m) = ctl.call("GET", "/v1/metrics", None);
    assert_eq!(status, 200);
    assert!(
        m["queues"]
            .as_array()
            .is_some_and(|q| q.iter().all(|q| q["name"] != "brief")),
        "{m}"
    );
}

#[test]
fn unnamed_queues_count_under_their_owner() {
    let (d, mp) = daemon_with_scrapes();
    let mut a = d.ctl();
    let mut b = d.ctl();
    let one = a.create_queue(json!({}));
    let two = b.create_queue(json!({}));
    assert_ne!(one["name"], two["name"]);
    let text = scrape(mp);
    let arrivals: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("portshare_queue_arrivals_total{"))
        .collect();
    assert_eq!(
        arrivals,
        vec!["portshare_queue_arrivals_total{queue=\"~uid:0\"} 0"],
        "{text}"
    );
}

/// `GET /v1/metrics` as another account: every queue's counters, no processes of a queue
/// that is not its own.
#[test]
fn v1_metrics_hides_other_accounts_processes() {
    if !can_switch_uid() {
        return;
    }
    let d = Daemon::builder()
        .dir(TempDir::open_to_all("metrics-uid"))
        .spawn();
    let (_app, port) = hello_on_free_port(&d, "app", &["/"], &[]);
    assert_eq!(get(port, "x", "/").0, 200);
    let exe = d.dir.0.join("portshare-copy");
    copy_executable(&portshare_bin(), &exe);
    let show = |wrapper: &[String]| -> Value {
        let mut cmd = match wrapper {
            [] => Command::new(&exe),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
        };
        let out = cmd
            .args(["show", "counters", "--json", "--control"])
            .arg(&d.control)
            .output()
            .expect("show counters");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let app = |m: &Value| -> Value {
        m["queues"]
            .as_array()
            .and_then(|q| q.iter().find(|q| q["name"] == "app"))
            .cloned()
            .expect("app is shown")
    };
    let root = app(&show(&[]));
    assert_eq!(root["arrivals"], 1);
    assert_eq!(root["workers_hidden"], false);
    assert_eq!(root["workers"][0]["served"], 1, "{root}");
    let stranger = app(&show(&as_uid(65532)));
    assert_eq!(stranger["arrivals"], 1);
    assert_eq!(stranger["workers_hidden"], true);
    assert_eq!(stranger["workers"], json!([]), "{stranger}");
}

#[test]
fn show_counters_prints_one_sample() {
    let d = Daemon::start();
    let (_app, port) = hello_on_free_port(&d, "app", &["/"], &[]);
    for _ in 0..3 {
        assert_eq!(get(port, "x", "/").0, 200);
    }
    let run = |args: &[&str]| {
        let out = Command::new(portshare_bin())
            .args(["show", "counters", "--control"])
            .arg(&d.control)
            .args(args)
            .output()
            .expect("show counters");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&[]);
    assert!(ok, "{text}");
    let row = |text: &str, key: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(row(&text, "Arrivals").as_deref(), Some("3"), "{text}");
    assert_eq!(row(&text, "Delivered").as_deref(), Some("3"), "{text}");
    assert_eq!(
        row(&text, "CurrentQueueSize").as_deref(),
        Some("0"),
        "{text}"
    );
    for want in [
        "Request queue \"app\"",
        "served",
        &format!("Site http://+:{port}"),
        "AllRequests 3  GetRequests 3",
        &format!("127.0.0.1:{port} (http)"),
        "TLS handshakes: 0 done, 0 failed",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    let (ok, text) = run(&["--queue", "app"]);
    assert!(
        ok && text.contains("\"app\"") && !text.contains("Site "),
        "{text}"
    );
    let (ok, text) = run(&["--queue", "nope"]);
    assert!(!ok && text.contains("no queue named"), "{text}");
    let (ok, text) = run(&["--json", "--queue", "app"]);
    assert!(ok, "{text}");
    let m: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(m["queues"][0]["delivered"], 3);
    assert_eq!(m["queues"][0]["wait"]["count"], 3);
}

/// What the scrape listener holds stays bounded: a flood of idle connections is closed
/// beyond the cap or after the read wait, an endless head is cut at its limit, and scrapes
/// are answered again once the flood is gone.
#[test]
fn the_scrape_listener_is_bounded_under_a_flood() {
    let (d, mp) = daemon_with_scrapes();
    let pid = d.proc.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let before = fds();
    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], mp))) {
            // A slowloris: part of a head, never its end.
            let mut s = s;
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
            flood.push(s);
        }
    }
    // Accepted connections beyond the cap are closed at once: the daemon holds at most the
    // cap (16) of them, and a little more while it closes the rest.
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    assert!(during <= before + 16 + 8, "{before} → {during}");
    // Those it kept are closed after the read wait (5 s).
    let closed = eventually(15, || fds() <= before + 1);
    assert!(closed, "{before} → {}", fds());
    let ended = flood
        .iter_mut()
        .map(|s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut b = [0u8; 64];
            matches!(s.read(&mut b), Ok(0) | Err(_))
        })
        .filter(|&ended| ended)
        .count();
    assert_eq!(ended, flood.len());
    drop(flood);
    // An endless head is answered 431 at 8 KiB.
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], mp))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Exactly the cap, so nothing is left unread (which would reset the answer).
    let line = b"GET /metrics HTTP/1.1\r\n";
    let _ = s.write_all(line);
    let _ = s.write_all(&vec![b'a'; 8192 - line.len()]);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(scrape(mp).contains("portshare_uptime_seconds"));
}

/// `[metrics] listen` is read at start: a reload that changes it warns, and the listener
/// stays where it was.
#[test]
fn a_reload_that_moves_the_scrape_listener_says_it_needs_a_restart() {
    let (d, mp) = daemon_with_scrapes();
    d.write_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    ));
    let (status, report) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{report}");
    let warned = report["warnings"].as_array().is_some_and(|w| {
        w.iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("metrics.listen")))
    });
    assert!(warned, "{report}");
    assert!(scrape(mp).contains("portshare_uptime_seconds"));
}
