//! `portshare explain`: one routing decision, evaluated offline and explained; with
//! `--live`, over a running daemon's registrations and reservations, naming who owns each.

use portshare_proto::text::{count, printable};
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use portshare_proto::control::{ProcessState, ServiceState, path};
use portshare_router::{
    Endpoint, Explanation, RequestHead, RouteTable, Scheme, UrlOptions, UrlPrefix, Verdict,
    Version, Win32Error,
};
use serde_json::{Value, json};

/// Arguments of `portshare explain`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Take the registrations and reservations of the running daemon (its state view)
    /// instead of --register and --reserve, and name each candidate's queue and processes.
    #[arg(long, conflicts_with_all = ["register", "reserve"])]
    live: bool,
    /// The daemon's control socket, with --live. Default: $PORTSHARE_CONTROL, else the
    /// per-user socket if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH", requires = "live")]
    control: Option<PathBuf>,
    /// Register a URL prefix (in order; one that fails is reported and the rest apply).
    #[arg(long = "register", value_name = "PREFIX")]
    register: Vec<String>,
    /// Reserve a URL prefix; reservations apply before registrations.
    #[arg(long = "reserve", value_name = "PREFIX")]
    reserve: Vec<String>,
    /// The connection's local address; IPv6 as `[::1]:80`. Default: 127.0.0.1 on the port
    /// of an absolute target (`http://h:8080/x`; 80 for http, 443 for https), else 80.
    #[arg(long, value_name = "IP:PORT")]
    local: Option<SocketAddr>,
    /// The connection is TLS (an https endpoint). Default: an `https://` absolute target.
    #[arg(long)]
    tls: bool,
    /// The Host header's value; without it the request has no Host header.
    #[arg(long, value_name = "VALUE")]
    host: Option<OsString>,
    /// The request method.
    #[arg(long, value_name = "M", default_value = "GET")]
    method: OsString,
    /// The HTTP version of the request line: 1.0, 1.1, or HTTP/x.y.
    #[arg(long = "http-version", value_name = "V", default_value = "1.1")]
    http_version: String,
    /// TARGET is given in hex, for bytes an argument cannot carry.
    #[arg(long = "target-hex")]
    target_hex: bool,
    /// The raw request-target: origin-form, absolute-form or '*', taken as bytes.
    #[arg(value_name = "TARGET", allow_hyphen_values = true)]
    target: OsString,
}

/// A registration or reservation that did not apply.
struct Failure<'a> {
    index: usize,
    prefix: &'a str,
    code: Win32Error,
    message: String,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let target = match target_bytes(args) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let live = if args.live {
        let control = crate::client::ControlArg {
            control: args.control.clone(),
        };
        let client = control.client();
        match client.get::<ServiceState>(path::STATE) {
            Ok(state) => Some(Live::new(state, client.path())),
            Err(e) => return e.report("explain"),
        }
    } else {
        None
    };
    crate::print(&evaluate(args, &target, live.as_ref()));
    ExitCode::SUCCESS
}

/// Builds the table (from the flags, or from the daemon's state) and explains the request;
/// the output, text or JSON.
fn evaluate(args: &Args, target: &[u8], live: Option<&Live>) -> String {
    let (register, reserve) = match live {
        Some(live) => (
            live.state.prefixes.iter().map(|p| p.url.clone()).collect(),
            live.state.reservations.clone(),
        ),
        None => (args.register.clone(), args.reserve.clone()),
    };
    let mut table = RouteTable::new();
    let reservation_errors = apply(&reserve, |p| {
        table.reserve(p).map_err(|e| (e.win32(), e.to_string()))
    });
    let registration_errors = apply(&register, |p| {
        let text = p.as_str().to_owned();
        table.add(p, text).map_err(|e| (e.win32(), e.to_string()))
    });

    let conn = Connection::of(args, target);
    let scheme = conn.scheme;
    let endpoint = Endpoint::new(scheme, conn.local);
    let version = if args.http_version.starts_with("HTTP/") {
        args.http_version.clone()
    } else {
        format!("HTTP/{}", args.http_version)
    };
    let host = args.host.as_ref().map(|h| os_bytes(h));
    let method = os_bytes(&args.method);
    // A live daemon's own limits, else HTTP.sys's defaults.
    let mut opts = UrlOptions::default();
    if let Some(l) = live.and_then(|l| l.state.url_limits) {
        opts.segment_max_length(l.segment_max_length as usize)
            .segment_max_count(l.segment_max_count as usize)
            .max_url_length(l.max_url_length as usize);
    }

    let report = match Version::parse(version.as_bytes()) {
        Ok(version) => {
            let head = RequestHead::new(&method, target, version, host.as_deref());
            let why = table.explain(&endpoint, &head, &opts);
            Report::from_explanation(&why)
        }
        // The request line itself is refused, unless nothing listens to read it.
        Err(rejection) => {
            let listens = table.listens(scheme, conn.local.port());
            Report {
                winner: None,
                status: listens.then_some(rejection.status),
                reason: listens.then_some(rejection.reason.as_str()),
                refused: !listens,
                cooked_path: opts.canonicalize(target).ok().map(|t| t.path().to_owned()),
                cooked_url: None,
                trace: Vec::new(),
            }
        }
    };

    if args.json {
        let mut v = report.json(&registration_errors, &reservation_errors, live);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("assumed".into(), json!(conn.assumed));
        }
        v.to_string() + "\n"
    } else {
        report.text(
            args,
            &conn,
            target,
            &registration_errors,
            &reservation_errors,
            live,
        )
    }
}

/// The connection a request is explained on: what the flags say, else what an absolute
/// target implies, else the defaults, each default named in `assumed`.
struct Connection {
    scheme: Scheme,
    local: SocketAddr,
    /// What was not given and taken from the target or a default, for the operator.
    assumed: Vec<String>,
}

impl Connection {
    fn of(args: &Args, target: &[u8]) -> Connection {
        let authority = absolute_authority(target);
        let mut assumed = Vec::new();
        let tls = args.tls || authority.as_ref().is_some_and(|a| a.https);
        if tls && !args.tls {
            assumed.push("TLS, from the target's https scheme (--tls)".to_owned());
        }
        let scheme = if tls { Scheme::Https } else { Scheme::Http };
        let local = match (args.local, &authority) {
            (Some(local), _) => local,
            (None, Some(a)) => {
                let port = a.port.unwrap_or(if tls { 443 } else { 80 });
                let from = if a.port.is_some() {
                    "the target's port"
                } else {
                    "the scheme's default port"
                };
                assumed.push(format!("local address 127.0.0.1:{port}, {from} (--local)"));
                SocketAddr::from(([127, 0, 0, 1], port))
            }
            (None, None) => {
                assumed.push("local address 127.0.0.1:80 (--local)".to_owned());
                SocketAddr::from(([127, 0, 0, 1], 80))
            }
        };
        match (&args.host, &authority) {
            (Some(_), _) => {}
            (None, Some(_)) => assumed.push(
                "no Host header; routing takes the host from the target's authority (--host)"
                    .to_owned(),
            ),
            (None, None) => assumed.push("no Host header (--host)".to_owned()),
        }
        Connection {
            scheme,
            local,
            assumed,
        }
    }
}

/// The scheme and port of an absolute-form target (`http://h:8080/x`).
struct Authority {
    https: bool,
    /// `None` when the authority has no port, or one that is not a number.
    port: Option<u16>,
}

fn absolute_authority(target: &[u8]) -> Option<Authority> {
    let lower = |n: usize| target.get(..n).map(<[u8]>::to_ascii_lowercase);
    let (https, rest) = if lower(7).as_deref() == Some(b"http://") {
        (false, &target[7..])
    } else if lower(8).as_deref() == Some(b"https://") {
        (true, &target[8..])
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // After an IPv6 literal's bracket, or after the last colon of a name.
    let after_host = match authority.iter().rposition(|&b| b == b']') {
        Some(close) => &authority[close + 1..],
        None => authority
            .iter()
            .rposition(|&b| b == b':')
            .map_or(&b""[..], |c| &authority[c..]),
    };
    let port = after_host
        .strip_prefix(b":")
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|p| p.parse::<u16>().ok());
    Some(Authority { https, port })
}

/// Parses and applies each prefix in order, collecting the ones that fail.
fn apply<'a>(
    prefixes: &'a [String],
    mut add: impl FnMut(UrlPrefix) -> Result<(), (Win32Error, String)>,
) -> Vec<Failure<'a>> {
    let mut failures = Vec::new();
    for (index, prefix) in prefixes.iter().enumerate() {
        let result = prefix
            .parse::<UrlPrefix>()
            .map_err(|e| (e.win32(), e.to_string()))
            .and_then(&mut add);
        if let Err((code, message)) = result {
            failures.push(Failure {
                index,
                prefix,
                code,
                message,
            });
        }
    }
    failures
}

/// A running daemon's state, and who owns each of its prefixes.
struct Live {
    state: ServiceState,
    /// The control socket it came from.
    control: PathBuf,
}

impl Live {
    fn new(state: ServiceState, control: &std::path::Path) -> Live {
        Live {
            state,
            control: control.to_owned(),
        }
    }

    /// The queue holding a registered prefix, and the processes attached to it.
    fn owner(&self, prefix: &str) -> Option<(&str, &[ProcessState])> {
        // The table was built from these very strings, and a trace names a prefix as it
        // was registered.
        let queue = &self.state.prefixes.iter().find(|p| p.url == prefix)?.queue;
        let processes = self
            .state
            .queues
            .iter()
            .find(|q| &q.name == queue)
            .map_or(&[][..], |q| &q.processes[..]);
        Some((queue, processes))
    }

    /// The JSON keys a live trace candidate gains.
    fn json(&self, c: &TraceLine) -> (Value, Value) {
        if c.kind != "registration" {
            return (Value::Null, json!([]));
        }
        match self.owner(&c.prefix) {
            Some((queue, processes)) => {
                let processes: Vec<Value> = processes
                    .iter()
                    .map(|p| {
                        json!({"pid": p.pid, "uid": p.uid, "user": p.user, "command": p.command})
                    })
                    .collect();
                (json!(queue), json!(processes))
            }
            None => (Value::Null, json!([])),
        }
    }

    /// The indented line under a registration in the text trace.
    fn text(&self, c: &TraceLine) -> Option<String> {
        if c.kind != "registration" {
            return None;
        }
        let (queue, processes) = self.owner(&c.prefix)?;
        let mut line = format!("queue {}", printable(queue));
        if processes.is_empty() {
            line.push_str(", no process attached");
        }
        for (i, p) in processes.iter().enumerate() {
            let user = if p.user.is_empty() {
                format!("uid:{}", p.uid)
            } else {
                p.user.clone()
            };
            line.push_str(if i == 0 { ", " } else { "; " });
            line.push_str(&format!(
                "PID {} ({}): {}",
                p.pid,
                printable(&user),
                printable(&p.command)
            ));
        }
        Some(line)
    }
}

/// What the evaluation found, in the terms both outputs use.
struct Report {
    winner: Option<String>,
    status: Option<u16>,
    reason: Option<&'static str>,
    refused: bool,
    cooked_path: Option<String>,
    cooked_url: Option<String>,
    trace: Vec<(&'static str, Vec<TraceLine>)>,
}

/// One candidate of the trace.
struct TraceLine {
    prefix: String,
    kind: &'static str,
    outcome: &'static str,
}

impl Report {
    fn from_explanation(why: &Explanation<'_, '_, String>) -> Report {
        let (winner, status, reason, refused) = match why.verdict() {
            Verdict::Deliver(reg) => (Some(reg.value().clone()), None, None, false),
            Verdict::Reject(r) => (None, Some(r.status), Some(r.reason.as_str()), false),
            _ => (None, None, None, true),
        };
        let trace = why
            .trace()
            .iter()
            .map(|cat| {
                let candidates = cat
                    .candidates
                    .iter()
                    .map(|c| {
                        let kind = if c.registration.is_some() {
                            "registration"
                        } else {
                            "reservation"
                        };
                        TraceLine {
                            prefix: c.prefix.as_str().to_owned(),
                            kind,
                            outcome: c.outcome.as_str(),
                        }
                    })
                    .collect();
                (cat.category.as_str(), candidates)
            })
            .collect();
        Report {
            winner,
            status,
            reason,
            refused,
            cooked_path: why.target().map(|t| t.path().to_owned()),
            cooked_url: why.cooked_url().map(str::to_owned),
            trace,
        }
    }

    fn json(
        &self,
        registrations: &[Failure<'_>],
        reservations: &[Failure<'_>],
        live: Option<&Live>,
    ) -> Value {
        let errors = |failures: &[Failure<'_>]| -> Vec<Value> {
            failures
                .iter()
                .map(|f| {
                    json!({
                        "index": f.index,
                        "prefix": f.prefix,
                        "code": f.code.name(),
                        "win32": f.code.code(),
                        "message": f.message,
                    })
                })
                .collect()
        };
        let trace: Vec<Value> = self
            .trace
            .iter()
            .map(|(category, candidates)| {
                let candidates: Vec<Value> = candidates
                    .iter()
                    .map(|c| {
                        let mut v =
                            json!({"prefix": c.prefix, "kind": c.kind, "outcome": c.outcome});
                        if let (Some(live), Some(obj)) = (live, v.as_object_mut()) {
                            let (queue, processes) = live.json(c);
                            obj.insert("queue".into(), queue);
                            obj.insert("processes".into(), processes);
                        }
                        v
                    })
                    .collect();
                json!({"category": category, "candidates": candidates})
            })
            .collect();
        json!({
            "winner": self.winner,
            "status": self.status,
            "reason": self.reason,
            "cooked_path": self.cooked_path,
            "cooked_url": self.cooked_url,
            "connection": self.refused.then_some("refused"),
            "registration_errors": errors(registrations),
            "reservation_errors": errors(reservations),
            "trace": trace,
        })
    }

    fn text(
        &self,
        args: &Args,
        conn: &Connection,
        target: &[u8],
        registrations: &[Failure<'_>],
        reservations: &[Failure<'_>],
        live: Option<&Live>,
    ) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let host = match &args.host {
            Some(h) => format!(
                "Host: {}",
                String::from_utf8_lossy(&os_bytes(h)).escape_debug()
            ),
            None => "no Host header".to_owned(),
        };
        let _ = writeln!(
            out,
            "{} {} HTTP/{}  ({host}; {} connection to {})",
            String::from_utf8_lossy(&os_bytes(&args.method)),
            target.escape_ascii(),
            args.http_version.trim_start_matches("HTTP/"),
            conn.scheme,
            display_local(conn.local),
        );
        if !conn.assumed.is_empty() {
            let _ = writeln!(out, "   assumed: {}", conn.assumed.join("; "));
        }
        if let Some(live) = live {
            let _ = writeln!(
                out,
                "   live: {} and {} of the daemon at {} (PID {})",
                count(
                    live.state.prefixes.len() as u64,
                    "registration",
                    "registrations"
                ),
                count(
                    live.state.reservations.len() as u64,
                    "reservation",
                    "reservations"
                ),
                live.control.display(),
                live.state.pid
            );
        }
        match (&self.winner, self.status, self.refused) {
            (Some(w), _, _) => {
                let owner = live
                    .and_then(|l| l.owner(w))
                    .map(|(queue, _)| format!(" (queue {queue})"))
                    .unwrap_or_default();
                let _ = writeln!(out, "-> delivered to {w}{owner}");
            }
            (None, Some(status), _) => {
                let _ = writeln!(
                    out,
                    "-> answered by the service: {status} {} (httperr reason {})",
                    status_text(status),
                    self.reason.unwrap_or("-")
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "-> connection refused: nothing is registered for {} on port {}",
                    conn.scheme,
                    conn.local.port()
                );
            }
        }
        if let Some(p) = &self.cooked_path {
            let _ = writeln!(out, "   cooked path: {p}");
        }
        if let Some(u) = &self.cooked_url {
            let _ = writeln!(out, "   cooked URL:  {u}");
        }
        if !self.trace.is_empty() {
            let _ = writeln!(out, "\ntrace (categories in precedence order):");
            for (category, candidates) in &self.trace {
                let _ = writeln!(out, "  {category}");
                if candidates.is_empty() {
                    let _ = writeln!(out, "    (no candidates)");
                }
                for c in candidates {
                    let _ = writeln!(out, "    {:<14} {} ({})", c.outcome, c.prefix, c.kind);
                    if let Some(owner) = live.and_then(|l| l.text(c)) {
                        let _ = writeln!(out, "    {:<14} {owner}", "");
                    }
                }
            }
        }
        for (what, failures) in [
            ("registration", registrations),
            ("reservation", reservations),
        ] {
            for f in failures {
                let _ = writeln!(
                    out,
                    "\n{what} #{} {} failed: {} ({}): {}",
                    f.index,
                    f.prefix,
                    f.code.name(),
                    f.code.code(),
                    f.message
                );
            }
        }
        out
    }
}

fn display_local(local: SocketAddr) -> String {
    match local.ip() {
        IpAddr::V4(_) => local.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]:{}", local.port()),
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        414 => "Request URL Too Long",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn target_bytes(args: &Args) -> Result<Vec<u8>, String> {
    let raw = os_bytes(&args.target);
    if !args.target_hex {
        return Ok(raw);
    }
    let hex: Vec<u8> = raw
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !hex.len().is_multiple_of(2) {
        return Err("--target-hex needs an even number of hex digits".into());
    }
    hex.chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "--target-hex: {:?} is not a hex byte",
                        pair.escape_ascii().to_string()
                    )
                })
        })
        .collect()
}

#[cfg(unix)]
fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use portshare_proto::control::{PrefixState, QueueCounters, QueueState, Verbosity};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        let mut all = vec!["explain"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).expect("arguments parse").args
    }

    fn queue(name: &str, pids: &[u32]) -> QueueState {
        QueueState {
            name: name.into(),
            owner_uid: 0,
            owner_user: "root".into(),
            length: 1000,
            verbosity: Verbosity::Basic,
            enabled: true,
            linger_ms: 0,
            queue_timer_ms: 120_000,
            limits: Default::default(),
            connections: 0,
            lingering: false,
            config: false,
            access: vec![],
            upstream: None,
            held: false,
            upstream_refused: None,
            https_redirect: None,
            depth: 0,
            oldest_wait_ms: 0,
            in_flight: 0,
            opaque: 0,
            urls: vec![],
            processes: pids
                .iter()
                .map(|&pid| ProcessState {
                    pid,
                    uid: 1000,
                    user: "alice".into(),
                    command: format!("/bin/app{pid}"),
                    slots: 1,
                    busy: 0,
                    buffered: 0,
                    served: 0,
                })
                .collect(),
            processes_hidden: false,
            counters: QueueCounters::default(),
        }
    }

    fn live() -> Live {
        let prefix = |url: &str, queue: &str| PrefixState {
            url: url.into(),
            queue: queue.into(),
            context: 0,
            listening: vec![],
            warning: None,
        };
        let state = ServiceState {
            version: "0.1.0".into(),
            pid: 99,
            prefixes: vec![
                prefix("http://+:8080/app/", "a"),
                // Named in the trace as registered, case and all.
                prefix("http://+:8080/App/Deep/", "b"),
                prefix("http://localhost:8080/", "idle"),
            ],
            reservations: vec!["http://+:8080/app/reserved/".into()],
            queues: vec![queue("a", &[11, 12]), queue("b", &[21]), queue("idle", &[])],
            ..ServiceState::default()
        };
        Live::new(state, std::path::Path::new("/run/test.sock"))
    }

    #[test]
    fn live_judges_with_the_daemons_url_limits() {
        let mut live = live();
        let target = "/app/a/b/c/d";
        let a = args(&[
            "--live",
            "--json",
            "--local",
            "127.0.0.1:8080",
            "--host",
            "h",
            target,
        ]);
        let status = |live: &Live| -> Value {
            let out = evaluate(&a, target.as_bytes(), Some(live));
            serde_json::from_str::<Value>(&out).expect("JSON")["status"].clone()
        };
        assert_eq!(
            status(&live),
            Value::Null,
            "HTTP.sys's defaults let it through"
        );
        live.state.url_limits = Some(portshare_proto::control::UrlLimits {
            segment_max_length: 260,
            segment_max_count: 3,
            max_url_length: 16384,
        });
        assert_eq!(status(&live), 400);
    }

    #[test]
    fn live_json_names_queue_and_processes() {
        let live = live();
        let a = args(&[
            "--live",
            "--json",
            "--local",
            "127.0.0.1:8080",
            "--host",
            "h",
            "/app/deep/x",
        ]);
        let out = evaluate(&a, b"/app/deep/x", Some(&live));
        let v: Value = serde_json::from_str(&out).expect("JSON");
        let deep = v["winner"].as_str().expect("a winner");
        assert_eq!(live.owner(deep).map(|(q, _)| q), Some("b"));
        let strong = &v["trace"][0]["candidates"];
        let find = |prefix: &str| {
            strong
                .as_array()
                .expect("candidates")
                .iter()
                .find(|c| {
                    c["prefix"]
                        .as_str()
                        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
                })
                .unwrap_or_else(|| panic!("{prefix} in {strong}"))
                .clone()
        };
        let won = find("http://+:8080/app/deep/");
        assert_eq!(won["outcome"], "won");
        assert_eq!(won["queue"], "b");
        assert_eq!(won["processes"][0]["pid"], 21);
        assert_eq!(won["processes"][0]["user"], "alice");
        assert_eq!(won["processes"][0]["command"], "/bin/app21");
        let shorter = find("http://+:8080/app/");
        assert_eq!(shorter["queue"], "a");
        assert_eq!(shorter["processes"].as_array().map(Vec::len), Some(2));
        let reserved = find("http://+:8080/app/reserved/");
        assert_eq!(reserved["kind"], "reservation");
        assert_eq!(reserved["queue"], Value::Null);
        assert_eq!(reserved["processes"], json!([]));
        assert_eq!(v["registration_errors"], json!([]));
        assert_eq!(v["reservation_errors"], json!([]));
    }

    #[test]
    fn live_text_adds_an_owner_line_under_each_registration() {
        let live = live();
        let a = args(&[
            "--live",
            "--local",
            "127.0.0.1:8080",
            "--host",
            "localhost",
            "/other",
        ]);
        let out = evaluate(&a, b"/other", Some(&live));
        assert!(
            out.contains("   live: 3 registrations and 1 reservation of the daemon at /run/test.sock (PID 99)\n"),
            "{out}"
        );
        assert!(
            out.contains("-> delivered to http://localhost:8080/ (queue idle)\n"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "\n    {:<14} queue a, PID 11 (alice): /bin/app11; PID 12 (alice): /bin/app12\n",
                ""
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "\n    {:<14} queue idle, no process attached\n",
                ""
            )),
            "{out}"
        );
    }

    #[test]
    fn an_absolute_target_gives_port_and_scheme() {
        let a = args(&["--register", "http://+:8080/x/", "http://h:8080/x/y"]);
        let out = evaluate(&a, b"http://h:8080/x/y", None);
        assert!(
            out.starts_with("GET http://h:8080/x/y HTTP/1.1  (no Host header; http connection to 127.0.0.1:8080)\n"),
            "{out}"
        );
        assert!(out.contains("-> delivered to http://+:8080/x/\n"), "{out}");
        assert!(
            out.contains("   assumed: local address 127.0.0.1:8080, the target's port (--local); no Host header; routing takes the host from the target's authority (--host)\n"),
            "{out}"
        );
        let a = args(&["--json", "--register", "https://+:443/", "HTTPS://[::1]/"]);
        let v: Value = serde_json::from_str(&evaluate(&a, b"HTTPS://[::1]/", None)).expect("JSON");
        assert_eq!(v["winner"], "https://+:443/", "{v}");
        assert_eq!(
            v["assumed"][0],
            "TLS, from the target's https scheme (--tls)"
        );
        assert!(
            v["assumed"][1]
                .as_str()
                .is_some_and(|s| s.contains(":443, the scheme's"))
        );
        // What the flags say wins, and is not listed as assumed.
        let a = args(&[
            "--json",
            "--local",
            "127.0.0.1:80",
            "--host",
            "h",
            "--register",
            "http://+:80/",
            "http://h:8080/",
        ]);
        let v: Value = serde_json::from_str(&evaluate(&a, b"http://h:8080/", None)).expect("JSON");
        assert_eq!(v["winner"], "http://+:80/", "{v}");
        assert_eq!(v["assumed"], json!([]));
    }

    #[test]
    fn an_origin_target_names_the_defaults() {
        let a = args(&["--register", "http://+:80/", "/"]);
        let out = evaluate(&a, b"/", None);
        assert!(
            out.contains(
                "   assumed: local address 127.0.0.1:80 (--local); no Host header (--host)\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn offline_json_has_no_live_keys() {
        let a = args(&[
            "--json",
            "--register",
            "http://+:80/a/",
            "--host",
            "h",
            "/a/",
        ]);
        let out = evaluate(&a, b"/a/", None);
        let v: Value = serde_json::from_str(&out).expect("JSON");
        let keys: Vec<&String> = v["trace"][0]["candidates"][0]
            .as_object()
            .expect("a candidate")
            .keys()
            .collect();
        assert_eq!(keys, ["kind", "outcome", "prefix"]);
    }
}
