//! HTTP.sys's limits, timers and error-log reasons, each provoked through a real socket:
//! the answer the client gets (status, page, or none), what happens to its connection, and
//! the one httperr line the daemon writes for it (found by the client's port).
//!
//! One daemon serves every case, with one-second timers and queues forwarding to a small
//! upstream server in this process whose behaviour each path picks: `ok` reads the body and
//! answers, `noread` answers without reading it, `slow` answers after three seconds, `big`
//! sends 64 MiB, `die` closes without answering. The cases run side by side.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The daemon, its port and its error-log folder.
struct Lab {
    daemon: Daemon,
    port: u16,
    errlog: PathBuf,
}

/// One httperr line, split into its fields (spec §7.2).
#[derive(Debug)]
struct Line {
    fields: Vec<String>,
}

impl Line {
    fn version(&self) -> &str {
        &self.fields[6]
    }
    fn method(&self) -> &str {
        &self.fields[7]
    }
    fn uri(&self) -> &str {
        &self.fields[8]
    }
    fn status(&self) -> &str {
        &self.fields[9]
    }
    fn reason(&self) -> &str {
        &self.fields[11]
    }
    fn queue(&self) -> &str {
        &self.fields[12]
    }
}

/// The line for the connection from local port `client`, waiting for it at most 10 s.
fn line_for(folder: &Path, client: u16) -> Line {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = Vec::new();
        if let Ok(dir) = std::fs::read_dir(folder) {
            for entry in dir.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                for l in text.lines().filter(|l| !l.starts_with('#')) {
                    let fields: Vec<String> = l.split(' ').map(str::to_owned).collect();
                    if fields.len() == 13 && fields[3] == client.to_string() {
                        found.push(Line { fields });
                    }
                }
            }
        }
        if found.len() > 1 {
            panic!("more than one line for client port {client}: {found:?}");
        }
        if let Some(line) = found.pop() {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no httperr line for client port {client} in {}",
            folder.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The upstream server: one thread per connection, behaviour by the path's last segment.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || serve_upstream(conn));
        }
    });
    port
}

fn serve_upstream(mut c: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until_head_end(&mut c, &mut buf) else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n");
        let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        match last {
            "noread" => {
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                return;
            }
            "die" => return,
            "slow" => std::thread::sleep(Duration::from_secs(3)),
            _ => {}
        }
        // Read the whole body before answering: a chunked one too, or its chunks would be
        // read as the next request and answered, a response nobody asked for.
        let length = loop {
            let whole = if chunked {
                match chunked_length(&buf) {
                    Ok(whole) => whole,
                    Err(()) => return,
                }
            } else {
                (buf.len() >= length).then_some(length)
            };
            if let Some(length) = whole {
                break length;
            }
            let mut chunk = [0u8; 65536];
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..length);
        if last == "big" {
            let size = 64 << 20;
            if write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").is_err() {
                return;
            }
            let chunk = vec![b'x'; 65536];
            for _ in 0..size / chunk.len() {
                if c.write_all(&chunk).is_err() {
                    return;
                }
            }
            continue;
        }
        if c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// The length of the chunked body `buf` starts with, trailers included, once it is all
/// there; `Err` when it is not chunked coding.
fn chunked_length(buf: &[u8]) -> Result<Option<usize>, ()> {
    let mut at = 0;
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| ())?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ())?;
        at += eol + 2;
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                let Some(eol) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        let end = at
            .checked_add(size)
            .and_then(|n| n.checked_add(2))
            .ok_or(())?;
        if buf.len() < end {
            return Ok(None);
        }
        at = end;
    }
}

/// Reads until the buffer holds a whole head; its length with the blank line.
fn read_until_head_end(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Starts a daemon (folder `tag`) on the listen list and the configuration `config(port)`
/// gives for a free port; its error log is in `Daemon::errlog_folder`.
fn start_on_free_port(tag: &str, config: impl Fn(u16) -> String) -> (Daemon, u16) {
    Daemon::builder()
        .tag(tag)
        .iplisten_from_config()
        .spawn_on_free_port(|port| format!("iplisten = [\"127.0.0.1\"]\n\n{}", config(port)))
}

fn lab() -> Lab {
    let up = upstream();
    let (daemon, port) = start_on_free_port("limits", |port| {
        let queue = |name: &str, extra: &str| {
            format!(
                "[[queue]]\nname = \"{name}\"\nurls = [\"http://+:{port}/{name}/\"]\n\
                 upstream = \"127.0.0.1:{up}\"\nverbosity = \"limited\"\n{extra}\n"
            )
        };
        format!(
            "[limits]\nmax_request_bytes = 65536\n\n\
             [timers]\nheader_wait = 1\nidle_connection = 1\nentity_body = 1\n\
             drain_entity_body = 1\nrequest_queue = 1\n\n\
             [[urlacl]]\nurl = \"http://+:{port}/reserved/\"\nusers = [\"uid:0\"]\n\n\
             {app}{fast}{one}{tiny}{off}{limited}",
            app = queue("app", ""),
            fast = queue("fast", "min_send_rate = 10000000"),
            one = queue("one", "connections = 1"),
            tiny = queue(
                "tiny",
                "connections = 1\nlength = 1\nrequest_queue_timer = 20"
            ),
            off = queue("off", "enabled = false"),
            limited = queue("limited", "max_connections = 1"),
        )
    });
    let errlog = daemon.errlog_folder();
    Lab {
        daemon,
        port,
        errlog,
    }
}

impl Lab {
    fn connect(&self) -> (TcpStream, u16) {
        let c = connect(self.port);
        c.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let local = c.local_addr().expect("address").port();
        (c, local)
    }

    /// Waits until queue `name`'s state shows `value` for `key` (`depth`, `in_flight`).
    fn wait_queue(&self, name: &str, key: &str, value: u64) {
        let at = || {
            let state = self.daemon.state();
            state["queues"]
                .as_array()
                .and_then(|qs| qs.iter().find(|q| q["name"] == name))
                .map(|q| q[key].clone())
        };
        assert!(
            eventually(10, || at().is_some_and(|v| v == value)),
            "queue {name}: {key} is {:?}, not {value}",
            at()
        );
    }

    fn line(&self, client: u16) -> Line {
        line_for(&self.errlog, client)
    }

    /// Sends `request` on a new connection; expects an error page with `status` and the
    /// connection closed after it, and returns the httperr line.
    fn refused(&self, request: &[u8], status: u16, reason: &str) -> Line {
        let (mut c, local) = self.connect();
        // The daemon may answer and close before it has read everything.
        let _ = c.write_all(request);
        let (head, _) = read_until_close(&mut c, reason).head_and_rest();
        let first = head.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&format!("HTTP/1.1 {status} ")),
            "{reason}: got {first:?}"
        );
        assert!(
            head.contains("\r\nConnection: close\r\n"),
            "{reason}: {head}"
        );
        assert!(
            head.contains("\r\nContent-Type: text/html; charset=us-ascii\r\n"),
            "{reason}: {head}"
        );
        let line = self.line(local);
        assert_eq!(line.status(), status.to_string(), "{reason}: {line:?}");
        assert_eq!(line.reason(), reason, "{line:?}");
        line
    }
}

/// Reads one whole response (Content-Length framed) from a kept-alive connection.
fn read_one(c: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let (status, head, body) = read_response(c, &mut buf, false);
    assert!(buf.is_empty(), "bytes after the response");
    format!("{status} {}{}", head, String::from_utf8_lossy(&body))
}

/// Expects the daemon to close the connection without sending anything.
fn closed_silently(c: &mut TcpStream, why: &str) {
    let (head, rest) = read_until_close(c, why).head_and_rest();
    assert!(
        head.is_empty() && rest.is_empty(),
        "{why}: expected no response, got {head:?}"
    );
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

// ---- the request head (spec §3.4, §4) ----

fn head_refusals(lab: &Lab) {
    let long_target = format!("/app/{}", "a".repeat(17000));
    let long_field = format!("X-Long: {}\r\n", "b".repeat(20000));
    let many_fields: String = (0..6)
        .map(|i| format!("X-{i}: {}\r\n", "c".repeat(12000)))
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a space inside the target",
            b"GET /app/a b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "a separator in the method",
            b"G(T /app/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "Verb",
        ),
        (
            "HTTP/2.0 in a text request line",
            b"GET /app/ HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(),
            505,
            "Version_N/S",
        ),
        (
            "a control byte in the target",
            b"GET /app/\x01 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "URL",
        ),
        (
            "a target above MaxFieldLength",
            format!("GET {long_target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
            "URL_Length",
        ),
        (
            "a field above MaxFieldLength",
            format!("GET /app/ HTTP/1.1\r\nHost: x\r\n{long_field}\r\n").into_bytes(),
            400,
            "FieldLength",
        ),
        (
            "a head above MaxRequestBytes",
            format!("GET /app/ HTTP/1.1\r\nHost: x\r\n{many_fields}\r\n").into_bytes(),
            400,
            "RequestLength",
        ),
        (
            "a header line without a colon",
            b"GET /app/ HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_vec(),
            400,
            "Header",
        ),
        (
            "a continuation line (obs-fold)",
            b"GET /app/ HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n".to_vec(),
            400,
            "Header",
        ),
        (
            "a CR not followed by LF",
            b"GET /app/ HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_vec(),
            400,
            "Invalid_CR/LF",
        ),
        (
            "a Content-Length that is not a number",
            b"POST /app/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n".to_vec(),
            400,
            "Number",
        ),
        (
            "two different Content-Length values",
            b"POST /app/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
            "Header",
        ),
        (
            "Content-Length and Transfer-Encoding together",
            b"POST /app/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
            "Header",
        ),
        (
            "a Transfer-Encoding other than chunked",
            b"POST /app/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
            "N/I",
        ),
        (
            "chunked twice",
            b"POST /app/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
                .to_vec(),
            501,
            "N/I",
        ),
        (
            "a POST with no length",
            b"POST /app/ok HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            411,
            "LengthRequired",
        ),
        (
            "a second Host",
            b"GET /app/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(),
            400,
            "Hostname",
        ),
    ];
    for (what, request, status, reason) in cases {
        let line = lab.refused(&request, status, reason);
        assert_eq!(line.queue(), "-", "{what}: {line:?}");
    }
}

/// What HTTP.sys lets through, each answered by the application.
fn tolerated(lab: &Lab) {
    for (what, request) in [
        ("LF-only line ends", &b"GET /app/ok HTTP/1.1\nHost: x\n\n"[..]),
        ("spaces after the version", b"GET /app/ok HTTP/1.1  \r\nHost: x\r\n\r\n"),
        ("HTTP/1.5 as 1.x", b"GET /app/ok HTTP/1.5\r\nHost: x\r\n\r\n"),
        ("an unknown verb", b"XYZZY /app/ok HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("a lower-case verb", b"get /app/ok HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "a chunked body",
            b"POST /app/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let (mut c, local) = lab.connect();
        c.write_all(request).expect("write");
        let answer = read_one(&mut c);
        assert!(answer.starts_with("200 "), "{what}: {answer}");
        // Still open for the next request, and nothing logged.
        c.write_all(&get("/app/ok")).expect("write");
        assert!(read_one(&mut c).starts_with("200 "), "{what}");
        drop(c);
        // The daemon's log carries each httperr line as it happens (the files are
        // written out later).
        std::thread::sleep(Duration::from_millis(300));
        let client = format!(" 127.0.0.1 {local} 127.0.0.1 ");
        assert!(!lab.daemon.log().contains(&client), "{what}: logged");
    }
}

// ---- routing (spec §2.5, §3.1) ----

fn routing_refusals(lab: &Lab) {
    let line = lab.refused(b"GET /app/x HTTP/1.1\r\nHost: \r\n\r\n", 400, "Hostname");
    assert_eq!(
        (line.version(), line.method(), line.uri()),
        ("HTTP/1.1", "GET", "/app/x")
    );
    let line = lab.refused(&get("/app/../../etc"), 400, "URL");
    assert_eq!(line.uri(), "/app/../../etc");
    // UrlSegmentMaxLength (260 characters after decoding) and UrlSegmentMaxCount (255).
    let long_segment = format!("/app/{}", "%41".repeat(261));
    let line = lab.refused(&get(&long_segment), 400, "URL");
    assert_eq!(line.uri(), long_segment);
    let just_fits = format!("/app/{}", "%41".repeat(260));
    assert_eq!(
        try_get(lab.port, "localhost", &just_fits).map(|(s, _)| s),
        Some(200)
    );
    lab.refused(&get(&"/a".repeat(256)), 400, "URL");
    assert_eq!(
        try_get(lab.port, "localhost", &format!("/app{}", "/a".repeat(254))).map(|(s, _)| s),
        Some(200)
    );
    let line = lab.refused(&get("/nobody/here"), 404, "NotFound");
    assert_eq!((line.method(), line.uri()), ("GET", "/nobody/here"));
    // A reservation that wins routing, with nobody registered under it.
    let line = lab.refused(&get("/reserved/x"), 503, "N/A");
    assert_eq!(line.queue(), "-");
}

// ---- queues (spec §4, §6) ----

fn queue_refusals(lab: &Lab) {
    let line = lab.refused(&get("/off/ok"), 503, "Disabled");
    assert_eq!(line.queue(), "off");

    // `tiny` has one upstream connection and room for one waiting request.
    let (mut busy, _) = lab.connect();
    busy.write_all(&get("/tiny/slow")).expect("write");
    lab.wait_queue("tiny", "in_flight", 1);
    let (mut waiting, _) = lab.connect();
    waiting.write_all(&get("/tiny/ok")).expect("write");
    lab.wait_queue("tiny", "depth", 1);
    let line = lab.refused(&get("/tiny/ok"), 503, "QueueFull");
    assert_eq!(line.queue(), "tiny");
    assert!(read_one(&mut busy).starts_with("200 "));
    assert!(read_one(&mut waiting).starts_with("200 "));

    // `limited` holds one client connection at a time.
    let (mut first, _) = lab.connect();
    first.write_all(&get("/limited/ok")).expect("write");
    assert!(read_one(&mut first).starts_with("200 "));
    let line = lab.refused(&get("/limited/ok"), 503, "ConnLimit");
    assert_eq!((line.method(), line.queue()), ("GET", "limited"));
    // The first connection keeps its place; once it closes, another gets one.
    first.write_all(&get("/limited/ok")).expect("write");
    assert!(read_one(&mut first).starts_with("200 "));
    drop(first);
    assert!(eventually(10, || try_get(
        lab.port,
        "localhost",
        "/limited/ok"
    )
    .is_some_and(|(s, _)| s == 200)));
}

// ---- timers (spec §5) ----

fn header_wait(lab: &Lab) {
    // Part of a head, then nothing.
    let (mut c, local) = lab.connect();
    c.write_all(b"GET /app/ok HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    closed_silently(&mut c, "HeaderWait");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.method(), line.queue()),
        ("-", "Timer_HeaderWait", "-", "-")
    );
    // Nothing at all on a new connection.
    let (mut c, local) = lab.connect();
    closed_silently(&mut c, "HeaderWait, silent client");
    assert_eq!(lab.line(local).reason(), "Timer_HeaderWait");
}

fn idle_connection(lab: &Lab) {
    let (mut c, local) = lab.connect();
    c.write_all(&get("/app/ok")).expect("write");
    assert!(read_one(&mut c).starts_with("200 "));
    closed_silently(&mut c, "IdleConnection");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.uri()),
        ("-", "Timer_ConnectionIdle", "-")
    );
}

fn entity_body(lab: &Lab) {
    // Half a body, then nothing, while the application waits for the rest.
    let (mut c, local) = lab.connect();
    c.write_all(b"POST /app/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .expect("write");
    closed_silently(&mut c, "EntityBody");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.queue()),
        ("-", "Timer_EntityBody", "app")
    );
    // The request was in progress: the line names it.
    assert_eq!((line.method(), line.uri()), ("POST", "/app/ok"));
}

fn drain_entity_body(lab: &Lab) {
    // The application answers without reading the body; the rest never comes.
    let (mut c, local) = lab.connect();
    c.write_all(b"POST /app/noread HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nhello")
        .expect("write");
    assert!(read_one(&mut c).starts_with("200 "));
    closed_silently(&mut c, "DrainEntityBody");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.queue()),
        ("-", "Timer_EntityBody", "app")
    );
}

fn request_queue(lab: &Lab) {
    // `one` has a single upstream connection: a second request waits, and its timer fires.
    let (mut busy, _) = lab.connect();
    busy.write_all(&get("/one/slow")).expect("write");
    lab.wait_queue("one", "in_flight", 1);
    let (mut c, local) = lab.connect();
    c.write_all(&get("/one/ok")).expect("write");
    closed_silently(&mut c, "RequestQueue");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.method(), line.queue()),
        ("-", "Timer_ReqQueue", "GET", "one")
    );
    assert!(read_one(&mut busy).starts_with("200 "));
}

fn min_send_rate(lab: &Lab) {
    // `fast` wants 10 MB/s; this client reads nothing until the daemon gives up.
    let (mut c, local) = lab.connect();
    c.write_all(&get("/fast/big")).expect("write");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.queue()),
        ("-", "Timer_MinBytesPerSecond", "fast")
    );
    let (head, body) = read_until_close(&mut c, "MinSendRate").head_and_rest();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.len() < 64 << 20, "the whole body arrived");
}

// ---- connections that end early (spec §7.3) ----

fn client_reset(lab: &Lab) {
    let (mut c, local) = lab.connect();
    c.write_all(b"POST /app/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .expect("write");
    std::thread::sleep(Duration::from_millis(200));
    c.shutdown(Shutdown::Write).expect("half-close");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.queue()),
        ("-", "Client_Reset", "app")
    );
}

fn connection_dropped(lab: &Lab) {
    // The client leaves while a large response is on its way.
    let (mut c, local) = lab.connect();
    c.write_all(&get("/app/big")).expect("write");
    let mut some = [0u8; 65536];
    let _ = c.read(&mut some).expect("the response starts");
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.queue()),
        ("-", "Connection_Dropped", "app")
    );
}

fn abandoned(lab: &Lab) {
    // The upstream closes without answering.
    let (mut c, local) = lab.connect();
    c.write_all(&get("/app/die")).expect("write");
    let (head, _) = read_until_close(&mut c, "abandoned").head_and_rest();
    assert!(head.is_empty(), "{head}");
    let line = lab.line(local);
    assert_eq!(
        (line.status(), line.reason(), line.queue()),
        ("-", "Connection_Abandoned_By_ReqQueue", "app")
    );
}

fn bad_chunk_size(lab: &Lab) {
    // Handed to the application, then a chunk size that is not hex.
    let line = lab.refused(
        b"POST /app/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
        "BadRequest",
    );
    assert_eq!(line.queue(), "app");
}

/// One case: panics on failure.
type Case = fn(&Lab);

#[test]
fn every_limit_timer_and_reason_through_a_socket() {
    let lab = lab();
    let cases: [(&str, Case); 15] = [
        ("head refusals", head_refusals),
        ("tolerated", tolerated),
        ("routing refusals", routing_refusals),
        ("queue refusals", queue_refusals),
        ("HeaderWait", header_wait),
        ("IdleConnection", idle_connection),
        ("EntityBody", entity_body),
        ("DrainEntityBody", drain_entity_body),
        ("RequestQueue", request_queue),
        ("MinSendRate", min_send_rate),
        ("Client_Reset", client_reset),
        ("Connection_Dropped", connection_dropped),
        ("Connection_Abandoned_By_ReqQueue", abandoned),
        ("bad chunk size", bad_chunk_size),
        ("still serving", |lab| {
            assert_eq!(
                try_get(lab.port, "localhost", "/app/ok").map(|(s, _)| s),
                Some(200)
            );
        }),
    ];
    let failed: Vec<String> = std::thread::scope(|s| {
        let running: Vec<_> = cases
            .iter()
            .map(|(name, case)| (name, s.spawn(|| case(&lab))))
            .collect();
        running
            .into_iter()
            .filter_map(|(name, t)| {
                t.join().err().map(|e| {
                    let why = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    format!("{name}: {why}")
                })
            })
            .collect()
    });
    assert!(
        failed.is_empty(),
        "{}\n--- daemon log ---\n{}",
        failed.join("\n"),
        lab.daemon.log()
    );
}

#[test]
fn at_max_connections_the_next_client_waits_for_a_place() {
    // The test holds 1024 connections, the daemon as many: it raises its process's limit on
    // open files (which the daemons of the tests beside it would inherit), in a process of
    // its own.
    if !alone_in_a_process(
        module_path!(),
        "at_max_connections_the_next_client_waits_for_a_place",
    ) {
        return;
    }
    raise_open_files(4096);
    let up = upstream();
    let (d, port) = start_on_free_port("maxconn", |port| {
        format!(
            "[limits]\nmax_connections = 1024\n\n\
             [[queue]]\nname = \"app\"\nurls = [\"http://+:{port}/app/\"]\nupstream = \"127.0.0.1:{up}\"\n"
        )
    });

    let mut held: Vec<TcpStream> = Vec::new();
    for i in 0..1024 {
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", d.log()));
        c.write_all(&get("/app/ok")).expect("write");
        held.push(c);
    }
    // Every held connection is served (and so accepted) before the next one knocks.
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        assert!(read_one(c).starts_with("200 "));
    }
    // The 1025th connects (the kernel's backlog takes it) but is not served...
    let mut next = connect(port);
    next.write_all(&get("/app/ok")).expect("write");
    next.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let waited = next.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "served above max_connections: {waited:?}"
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
    // ...until a place frees up; nothing it sent was lost.
    drop(held.pop());
    next.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = byte[..0].to_vec();
    let (status, _, body) = read_response(&mut next, &mut buf, false);
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
}

/// Raises this process's soft limit on open files to at least `want` (within the hard one).
fn raise_open_files(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        assert!(
            hard >= want,
            "the hard limit on open files ({hard}) is below {want}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    }
}
