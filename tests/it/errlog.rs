//! The httperr files end to end: the real daemon writes `httperrN.log` in the configured
//! folder, writes out on shutdown, takes the next number on restart, and still serves when
//! the folder cannot be used.

use std::path::Path;

use crate::harness::*;

const DIRECTIVES: &str = "#Software: Microsoft HTTP API 2.0\n#Version: 1.0\n#Date: ";
const FIELDS: &str = "\n#Fields: date time c-ip c-port s-ip s-port cs-version cs-method cs-uri \
                      sc-status s-siteid s-reason s-queuename\n";

/// Starts a daemon in `dir` whose configuration puts the error log in `folder`.
fn daemon_logging_to(dir: TempDir, folder: &Path) -> Daemon {
    Daemon::builder()
        .dir(dir)
        .config("iplisten = [\"127.0.0.1\"]\n")
        .errlog_folder(folder)
        .spawn()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Checks the directive block at the top of a file.
fn assert_directives(text: &str) {
    assert!(text.starts_with(DIRECTIVES), "{text}");
    let date = &text[DIRECTIVES.len()..];
    // YYYY-MM-DD hh:mm:ss
    let stamp = date.get(..19).unwrap_or_default();
    assert!(
        stamp.len() == 19
            && stamp.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b' ',
                13 | 16 => b == b':',
                _ => b.is_ascii_digit(),
            }),
        "{text}"
    );
    assert!(date[19..].starts_with(FIELDS), "{text}");
}

#[test]
fn refusals_go_to_httperr_files() {
    let dir = TempDir::new("errlog");
    let folder = dir.0.join("logs").join("httperr");
    let file1 = folder.join("httperr1.log");
    let d = daemon_logging_to(dir, &folder);
    let (app, port) = hello_on_free_port(&d, "app", &["/app/"], &[]);

    // A 404 (no prefix matches) is written out within a second, while the daemon runs.
    let (s, _, _) = get(port, "example.com", "/nothing");
    assert_eq!(s, 404);
    let not_found = format!(" 127.0.0.1 {port} HTTP/1.1 GET /nothing 404 - NotFound -\n");
    assert!(
        eventually(5, || read(&file1).contains(&not_found)),
        "no NotFound line in {}:\n{}\ndaemon log:\n{}",
        file1.display(),
        read(&file1),
        d.log()
    );
    let text = read(&file1);
    assert_directives(&text);
    // The tracing target still gets the line.
    assert!(
        d.log().contains(&not_found[..not_found.len() - 1]),
        "{}",
        d.log()
    );

    // A 400 just before SIGTERM is written out by the shutdown. (A head that does not parse
    // is logged without version, method and URL.)
    let (s, _, _) = http_raw(
        port,
        b"GET /app/x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    );
    assert_eq!(s, 400);
    drop(app);
    let mut d = d;
    assert!(d.proc.terminate().is_some_and(|s| s.success()));
    let text = read(&file1);
    assert!(
        text.contains(&format!(" 127.0.0.1 {port} - - - 400 - Header -\n")),
        "{text}"
    );
    assert_eq!(text.matches("#Software:").count(), 1, "{text}");

    // A restart takes the next number and leaves the old file alone.
    let d = d.restart();
    let (_app, port) = hello_on_free_port(&d, "app", &["/app/"], &[]);
    let (s, _, _) = get(port, "example.com", "/elsewhere");
    assert_eq!(s, 404);
    let file2 = folder.join("httperr2.log");
    assert!(
        eventually(5, || read(&file2)
            .contains(" GET /elsewhere 404 - NotFound -\n")),
        "{}",
        read(&file2)
    );
    assert_directives(&read(&file2));
    assert_eq!(read(&file1), text);
}

#[test]
fn an_unusable_folder_only_costs_a_warning() {
    let dir = TempDir::new("errlog-bad");
    // Nothing can create a folder under a regular file, not even root.
    let blocker = dir.0.join("not-a-folder");
    std::fs::write(&blocker, "").expect("write a file");
    let folder = blocker.join("httperr");
    let d = daemon_logging_to(dir, &folder);
    let log = d.log();
    assert!(
        log.contains("WARN") && log.contains(&folder.display().to_string()),
        "{log}"
    );
    let (_app, port) = hello_on_free_port(&d, "app", &["/app/"], &[]);
    let (s, _, _) = get(port, "example.com", "/nothing");
    assert_eq!(s, 404);
    assert!(
        eventually(5, || d.log().contains("GET /nothing 404 - NotFound -")),
        "{}",
        d.log()
    );
    assert_eq!(d.log().matches("WARN").count(), 1, "{}", d.log());
}
