//! `portshare explain`: one routing decision, evaluated offline and explained.

use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

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
    /// Register a URL prefix (in order; one that fails is reported and the rest apply).
    #[arg(long = "register", value_name = "PREFIX")]
    register: Vec<String>,
    /// Reserve a URL prefix; reservations apply before registrations.
    #[arg(long = "reserve", value_name = "PREFIX")]
    reserve: Vec<String>,
    /// The connection's local address; IPv6 as `[::1]:80`.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:80")]
    local: SocketAddr,
    /// The connection is TLS (an https endpoint).
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
    let mut table = RouteTable::new();
    let reservation_errors = apply(&args.reserve, |p| {
        table.reserve(p).map_err(|e| (e.win32(), e.to_string()))
    });
    let registration_errors = apply(&args.register, |p| {
        let text = p.as_str().to_owned();
        table.add(p, text).map_err(|e| (e.win32(), e.to_string()))
    });

    let scheme = if args.tls {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let endpoint = Endpoint::new(scheme, args.local);
    let version = if args.http_version.starts_with("HTTP/") {
        args.http_version.clone()
    } else {
        format!("HTTP/{}", args.http_version)
    };
    let host = args.host.as_ref().map(|h| os_bytes(h));
    let method = os_bytes(&args.method);
    let opts = UrlOptions::default();

    let report = match Version::parse(version.as_bytes()) {
        Ok(version) => {
            let head = RequestHead::new(&method, &target, version, host.as_deref());
            let why = table.explain(&endpoint, &head, &opts);
            Report::from_explanation(&why)
        }
        // The request line itself is refused, unless nothing listens to read it.
        Err(rejection) => {
            let listens = table.listens(scheme, args.local.port());
            Report {
                winner: None,
                status: listens.then_some(rejection.status),
                reason: listens.then_some(rejection.reason.as_str()),
                refused: !listens,
                cooked_path: opts.canonicalize(&target).ok().map(|t| t.path().to_owned()),
                cooked_url: None,
                trace: Vec::new(),
            }
        }
    };

    let out = if args.json {
        report
            .json(&registration_errors, &reservation_errors)
            .to_string()
            + "\n"
    } else {
        report.text(
            args,
            &endpoint,
            &target,
            &registration_errors,
            &reservation_errors,
        )
    };
    // A closed stdout (a pipe to `head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
    ExitCode::SUCCESS
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

    fn json(&self, registrations: &[Failure<'_>], reservations: &[Failure<'_>]) -> Value {
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
                    .map(|c| json!({"prefix": c.prefix, "kind": c.kind, "outcome": c.outcome}))
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
        endpoint: &Endpoint,
        target: &[u8],
        registrations: &[Failure<'_>],
        reservations: &[Failure<'_>],
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
            endpoint.scheme,
            display_local(endpoint.local),
        );
        match (&self.winner, self.status, self.refused) {
            (Some(w), _, _) => {
                let _ = writeln!(out, "-> delivered to {w}");
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
                    endpoint.scheme,
                    endpoint.local.port()
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
