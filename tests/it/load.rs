//! `portshare load`, the queue lab: against `slow_worker` behind a test daemon, its CSV
//! adds up, agrees with the daemon's counters, shows "not sent" when its connections are
//! too few, and its plot is an SVG document.

use std::path::Path;
use std::process::Command;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::harness::{
    App, Daemon, Scripted, TempDir, free_port, have_python, portshare_bin, python, run_to_exit,
};

/// The CSV's columns, as `portshare load` writes them.
const COLUMNS: [&str; 23] = [
    "second",
    "offered",
    "sent",
    "not_sent",
    "status_2xx",
    "status_503",
    "retry_after",
    "other_status",
    "resets",
    "timeouts",
    "errors",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "queue_depth",
    "queue_length",
    "delivered",
    "refused_queue_full",
    "refused_disabled",
    "refused_conn_limit",
    "queue_timed_out",
    "abandoned",
    "served_by_pid",
];

/// Runs `portshare load` to its end (bounded: it stops by itself after its plan and the
/// drain, which `--timeout` bounds); its stdout.
fn load(d: &Daemon, args: &[&str]) -> String {
    let mut cmd = Command::new(portshare_bin());
    cmd.arg("load").args(args).arg("--control").arg(&d.control);
    let (code, stdout, stderr) = run_to_exit(cmd, &d.dir.0, 60);
    assert_eq!(code, Some(0), "portshare load failed:\n{stdout}\n{stderr}");
    stdout
}

/// The number after `label` on the summary line that starts with it.
fn total(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(label).filter(|r| r.starts_with(' ')))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{summary}"))
}

/// The CSV as rows of named cells, after checking its header and widths.
fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("the CSV file");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(COLUMNS.join(",").as_str()), "{text}");
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.len(), COLUMNS.len(), "row {i}: {r:?}");
        assert_eq!(r[0], i.to_string(), "rows are seconds in order");
    }
    rows
}

/// The sum of a numeric column (empty cells, where the daemon was not reached, are 0).
fn column(rows: &[Vec<String>], name: &str) -> u64 {
    let at = COLUMNS.iter().position(|c| *c == name).expect("a column");
    rows.iter()
        .map(|r| {
            if r[at].is_empty() {
                0
            } else {
                r[at]
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}: {:?}", r[at]))
            }
        })
        .sum()
}

fn slow_worker(d: &Daemon, port: u16, extra: &[&str]) -> App {
    App::start(
        &d.control,
        "slow_worker",
        "lab",
        &[&format!("http://+:{port}/lab/")],
        extra,
    )
}

/// Twice the slow worker's capacity against a queue of 10 with `limited` verbosity: the
/// queue fills and the rest get 503. The CSV's rows sum to the summary's totals, every
/// sent request has one outcome, and its 2xx and 503 counts are the daemon's `delivered`
/// and `queue_full`.
///
/// The tolerance: after its plan, `portshare load` waits for every response (each bounded
/// by `--timeout`), so nothing is in flight when the daemon is asked; a request the client
/// gave up on (timeout) or whose connection broke (reset, error) may have been counted by
/// the daemon either way, so the counts may differ by at most those. With a 10 s timeout
/// and a 50 ms worker there are none, and the counts are equal.
#[test]
fn the_csv_adds_up_and_agrees_with_the_daemons_counters() {
    let d = Daemon::start();
    let port = free_port();
    // 2 slots of 50 ms: 40 requests a second.
    let _slow = slow_worker(
        &d,
        port,
        &[
            "--delay-ms",
            "50",
            "--workers",
            "2",
            "--queue-length",
            "10",
            "--verbosity",
            "limited",
        ],
    );
    let csv = d.dir.0.join("run.csv");
    let svg = d.dir.0.join("run.svg");
    let url = format!("http://127.0.0.1:{port}/lab/x");
    let out = load(
        &d,
        &[
            &url,
            "--rate",
            "80",
            "--duration",
            "3s",
            "--timeout",
            "10s",
            "--csv",
            csv.to_str().expect("a UTF-8 path"),
            "--plot",
            svg.to_str().expect("a UTF-8 path"),
        ],
    );

    let rows = read_csv(&csv);
    assert!(rows.len() >= 3, "{rows:?}");
    let offered = total(&out, "offered");
    assert_eq!(
        offered, 240,
        "open loop: 80/s for 3 s whatever the server does\n{out}"
    );
    for (col, label) in [
        ("offered", "offered"),
        ("sent", "sent"),
        ("not_sent", "not sent"),
        ("status_2xx", "2xx"),
        ("status_503", "503"),
        ("other_status", "other status"),
        ("resets", "resets"),
        ("timeouts", "timeouts"),
        ("errors", "errors"),
    ] {
        assert_eq!(column(&rows, col), total(&out, label), "{col}\n{out}");
    }
    let sent = column(&rows, "sent");
    let ok = column(&rows, "status_2xx");
    let unavailable = column(&rows, "status_503");
    let unseen = column(&rows, "timeouts") + column(&rows, "resets") + column(&rows, "errors");
    assert_eq!(
        sent,
        ok + unavailable + column(&rows, "other_status") + unseen,
        "every sent request has one outcome\n{out}"
    );
    assert!(ok > 0 && unavailable > 0, "the queue filled:\n{out}");
    assert_eq!(
        column(&rows, "retry_after"),
        unavailable,
        "every 503 carries Retry-After"
    );

    let q = &d.state()["queues"][0];
    let delivered = q["counters"]["delivered"].as_u64().expect("delivered");
    let full = q["counters"]["queue_full"].as_u64().expect("queue_full");
    assert!(
        ok.abs_diff(delivered) <= unseen,
        "2xx {ok}, delivered {delivered}\n{out}"
    );
    assert!(
        unavailable.abs_diff(full) <= unseen,
        "503 {unavailable}, full {full}\n{out}"
    );
    // The CSV's queue columns are the growth of the same counters, second by second.
    assert_eq!(column(&rows, "delivered"), delivered, "{q}");
    assert_eq!(column(&rows, "refused_queue_full"), full, "{q}");
    // One process served them all, and `served` counts what it was handed.
    let pid = q["processes"][0]["pid"].as_u64().expect("a process");
    assert_eq!(q["processes"][0]["served"].as_u64(), Some(delivered), "{q}");
    assert!(
        out.contains(&format!("PID {pid} served {delivered} (100.0 %)")),
        "{out}"
    );
    assert!(out.contains("queue lab (length 10): depth max "), "{out}");

    let picture = std::fs::read_to_string(&svg).expect("the SVG file");
    assert!(picture.trim_start().starts_with("<svg"), "{picture:.200}");
    assert!(picture.trim_end().ends_with("</svg>"));
    for caption in ["Arrival rate", "Outcomes", "Queue depth"] {
        assert!(picture.contains(caption), "{caption}");
    }
    if have_python() {
        let ok = Command::new(python())
            .args([
                "-c",
                "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])",
            ])
            .arg(&svg)
            .status()
            .expect("python");
        assert!(ok.success(), "the SVG is not well-formed XML");
    }
}

/// Two connections against a 200 ms worker cannot carry 50 requests a second: the
/// requests whose time comes while both are busy are counted "not sent", never delayed,
/// so all 100 are still offered on time.
#[test]
fn not_sent_when_every_connection_is_busy() {
    let d = Daemon::start();
    let port = free_port();
    let _slow = slow_worker(&d, port, &["--delay-ms", "200", "--workers", "4"]);
    let csv = d.dir.0.join("few.csv");
    let url = format!("http://127.0.0.1:{port}/lab/");
    let out = load(
        &d,
        &[
            &url,
            "--steps",
            "50:2s",
            "--connections",
            "2",
            "--csv",
            csv.to_str().expect("a UTF-8 path"),
        ],
    );
    let rows = read_csv(&csv);
    let (offered, sent, not_sent) = (
        column(&rows, "offered"),
        column(&rows, "sent"),
        column(&rows, "not_sent"),
    );
    assert_eq!(offered, 100, "{out}");
    assert_eq!(offered, sent + not_sent, "{out}");
    // Two connections of 200 ms carry at most 10 a second: about 20 of the 100.
    assert!(not_sent >= 60 && sent >= 2, "{out}");
    assert_eq!(column(&rows, "status_2xx"), sent, "{out}");
}

/// Mistakes are usage errors that say what to give, before any request.
#[test]
fn usage_errors_say_what_to_give() {
    let dir = TempDir::new("load-usage");
    for (args, says) in [
        (&["http://127.0.0.1:9/"][..], "give --rate R"),
        (
            &["https://127.0.0.1:9/", "--rate", "1"],
            "only http:// URLs",
        ),
        (&["http://127.0.0.1:9/", "--rate", "0"], "above 0"),
        (&["http://127.0.0.1:9/", "--steps", "10"], "RATE:DURATION"),
    ] {
        let mut cmd = Command::new(portshare_bin());
        cmd.arg("load").args(args);
        let (code, _, stderr) = run_to_exit(cmd, &dir.0, 10);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// The client reads each framing and counts each ending for what it is, against a server
/// answering by script in turn: a chunked 200, a 404 with a length, a 200 ended by closing
/// the connection, a 503 with `Retry-After`, and a 200 cut short by a close (a reset).
#[test]
fn each_answer_counts_as_what_it_is() {
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    let server = Scripted::start(move |x| {
        let (answer, goes_on): (&[u8], bool) = match counter.fetch_add(1, Ordering::SeqCst) % 5 {
            0 => (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n\r\n",
                true,
            ),
            1 => (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n",
                true,
            ),
            2 => (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end",
                false,
            ),
            3 => (
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            _ => (
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
                false,
            ),
        };
        let _ = x.s.write_all(answer);
        goes_on
    });
    let dir = TempDir::new("load-framing");
    let mut cmd = Command::new(portshare_bin());
    cmd.arg("load")
        .arg(format!("http://{}/x", server.addr))
        .args(["--rate", "25", "--duration", "1s", "--timeout", "5s"])
        .arg("--control")
        .arg(dir.0.join("no-daemon.sock"));
    let (code, out, stderr) = run_to_exit(cmd, &dir.0, 30);
    assert_eq!(code, Some(0), "{out}\n{stderr}");
    assert_eq!(n.load(Ordering::SeqCst), 25, "{out}");
    assert_eq!(total(&out, "2xx"), 10, "{out}");
    assert_eq!(total(&out, "other status"), 5, "{out}");
    assert_eq!(total(&out, "503"), 5, "{out}");
    assert!(out.contains("(5 with Retry-After)"), "{out}");
    assert_eq!(total(&out, "resets"), 5, "{out}");
    assert_eq!(total(&out, "errors") + total(&out, "timeouts"), 0, "{out}");
    assert!(out.contains("queue: not watched (cannot reach"), "{out}");
}
