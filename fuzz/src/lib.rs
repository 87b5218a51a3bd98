//! Fuzz targets for Portshare's parsers: each is a function of the input bytes that panics
//! when an invariant fails, so any coverage-guided fuzzer (and a plain test) can drive it.
//!
//! - [`canon`]: URL canonicalization, with the invariants of a cooked path and idempotence.
//! - [`prefix`]: the UrlPrefix grammar (Display parses back to an equal prefix), then the
//!   lines as registrations, removals and reservations on a [`RouteTable`], and a request
//!   dispatched through it, checked against the table's literal oracle (`explain`).
//! - [`head`]: the HTTP/1 request-head parser, fed whole and cut at every length (or at a
//!   sample of lengths for long inputs): an answer once given never changes.
//!
//! The binaries in `src/bin` hand these to AFL++ when built by `cargo afl`, and replay files
//! through them otherwise (see [`replay`]).

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use portshare_router::{
    Dispatch, Endpoint, Host, RequestHead, RequestHost, RouteTable, Scheme, TargetForm, UrlError,
    UrlOptions, UrlPrefix, Verdict, Version, encode_path,
};
use portshare_server::{Body, HeadError, HeadLimits, Parsed, parse_head};

/// Canonicalizes `data` as a request-target under the defaults and a few other option sets,
/// and checks what every successful result must satisfy.
///
/// # Panics
///
/// When an invariant fails: the cooked path starts with `/` (or is `*`), holds no `//`, no
/// `.` or `..` segment, no `\` and no control character, keeps the segment limits, and
/// canonicalizes again to itself, both as it is (when it holds nothing a request line
/// would read differently) and after [`encode_path`]. The options also agree with each
/// other where they should.
pub fn canon(data: &[u8]) {
    let default = Variant::new(|_| {});
    let first = default.check(data);

    let no_percent_u = Variant::new(|o| {
        o.percent_u(false);
    });
    let second = no_percent_u.check(data);
    // %u only matters where a "%u" is written.
    if !data.windows(2).any(|w| w.eq_ignore_ascii_case(b"%u")) {
        assert_eq!(
            first, second,
            "percent_u(false) changed a target without %u"
        );
    }

    let strict = Variant::new(|o| {
        o.code_page(None);
    });
    let third = strict.check(data);
    // Without a code page the answer is the same, or Undecodable where the code page was used.
    assert!(
        third == first || third == Err(UrlError::Undecodable),
        "code_page(None) gave {third:?} where the defaults gave {first:?}",
    );

    let mut lax = Variant::new(|o| {
        o.allow_restricted_chars(true);
    });
    lax.restricted_allowed = true;
    let fourth = lax.check(data);
    // Allowing control characters can only turn Restricted into something else.
    if first != Err(UrlError::Restricted) {
        assert_eq!(
            first, fourth,
            "allow_restricted_chars(true) changed the answer"
        );
    }

    let mut code_page_first = Variant::new(|o| {
        o.favor_utf8(false);
    });
    code_page_first.utf8_round_trip = false;
    let _ = code_page_first.check(data);

    let mut tight = Variant::new(|o| {
        o.segment_max_length(3).segment_max_count(4);
    });
    (tight.segment_max_length, tight.segment_max_count) = (3, 4);
    let sixth = tight.check(data);
    // Smaller limits can only refuse more.
    if sixth.is_ok() {
        assert_eq!(sixth, first, "smaller segment limits changed the answer");
    }
}

/// Parses `data` (read as UTF-8, lossily) line by line as URL prefixes, checks each, then
/// plays the lines on a [`RouteTable`] and dispatches the last line as a request.
///
/// A line is added; `-` before it removes it, `!` reserves it, `~` unreserves it. The last
/// line is the request: `target` or `target host` (HTTP/1.0 without a host), arriving on the
/// scheme and port of the last prefix that parsed, at its address when it is an IP prefix.
///
/// # Panics
///
/// When a prefix's Display form does not parse back to an equal prefix with the same
/// Display and hash, when the table's answers disagree with each other (`check_add` and
/// `add`, `get`, `len`), when `dispatch` and the literal `explain` disagree, when a delivery
/// goes to a prefix that does not cover the path, or when removing everything does not
/// leave an empty table.
pub fn prefix(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let request = lines.pop().unwrap_or_default();
    for line in lines.iter().chain([&request]) {
        let line = line.trim_start_matches(['-', '!', '~']);
        if let Ok(p) = UrlPrefix::parse(line) {
            check_prefix(line, &p);
        }
    }

    let mut table: RouteTable<usize> = RouteTable::new();
    let mut site = (Scheme::Http, 80, IpAddr::V4(Ipv4Addr::LOCALHOST));
    for (i, line) in lines.iter().enumerate() {
        let (op, spec) = match line.as_bytes().first() {
            Some(op @ (b'-' | b'!' | b'~')) => (*op, &line[1..]),
            _ => (b'+', *line),
        };
        let Ok(p) = UrlPrefix::parse(spec) else {
            continue;
        };
        site.0 = p.scheme();
        site.1 = p.port();
        if let Host::Ip(ip) = p.host() {
            site.2 = *ip;
        }
        play(&mut table, op, p, i);
    }

    let endpoint = Endpoint::new(site.0, SocketAddr::new(site.2, site.1));
    let (target, host) = match request.split_once(' ') {
        Some((t, h)) => (t, Some(h.as_bytes())),
        None => (request, None),
    };
    let version = if host.is_some() {
        Version::Http11
    } else {
        Version::Http10
    };
    let head = RequestHead::new(b"GET", target.as_bytes(), version, host);
    check_dispatch(&table, &endpoint, &head);

    // Every registration is reachable at its own path, on its own site.
    let prefixes: Vec<UrlPrefix> = table.iter().map(|r| r.prefix().clone()).collect();
    for p in &prefixes {
        check_reachable(&table, p);
    }

    for p in &prefixes {
        let reg = table.remove(p).expect("a listed registration removes");
        assert_eq!(reg.prefix(), p);
    }
    let reserved: Vec<UrlPrefix> = table.reservations().cloned().collect();
    for p in &reserved {
        table.unreserve(p).expect("a listed reservation unreserves");
    }
    assert!(table.is_empty(), "registrations left: {table:?}");
    assert_eq!(
        table.reservations().count(),
        0,
        "reservations left: {table:?}"
    );
    assert_eq!(table.ports().count(), 0, "ports left: {table:?}");
    assert!(!table.listens(site.0, site.1));
}

/// Parses `data` as a request head under the default limits and two small ones, whole and
/// cut at every length (up to [`SWEEP_ALL_UP_TO`] bytes; past that at a sample of lengths:
/// the first bytes, both sides of each line end and of the limits, and evenly spaced cuts).
///
/// # Panics
///
/// When an answer changes as bytes are added (a refusal or a complete head, once given,
/// must be the answer for every longer buffer), or when a complete head breaks what the
/// parser documents (token method, no control bytes in the target, checked headers,
/// consistent body framing, sizes within the limits).
pub fn head(data: &[u8]) {
    check_head(data, &HeadLimits::default());
    let mut small = HeadLimits::default();
    small.max_request_bytes(48).max_field_length(20);
    check_head(data, &small);
    // A field limit above the request limit: the target rule (414 past MaxRequestBytes) and
    // the lowered field limit meet here.
    let mut lopsided = HeadLimits::default();
    lopsided.max_request_bytes(40).max_field_length(1000);
    check_head(data, &lopsided);
}

/// Inputs up to this length are parsed at every prefix length; longer ones at a sample.
pub const SWEEP_ALL_UP_TO: usize = 1024;

/// The `main` of a target binary built without AFL: runs `target` on each file named on the
/// command line (every file of a directory), or on standard input when none is named.
pub fn replay(target: fn(&[u8])) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        let mut input = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut input) {
            eprintln!("cannot read standard input: {e}");
            return ExitCode::FAILURE;
        }
        target(&input);
        eprintln!("ok: 1 input");
        return ExitCode::SUCCESS;
    }
    let mut count = 0;
    for arg in &args {
        match replay_path(Path::new(arg), target) {
            Ok(n) => count += n,
            Err(e) => {
                eprintln!("{arg}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("ok: {count} inputs");
    ExitCode::SUCCESS
}

/// Runs `target` on a file, or on every file under a directory; returns how many.
pub fn replay_path(path: &Path, target: fn(&[u8])) -> std::io::Result<usize> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        let mut count = 0;
        for entry in entries {
            count += replay_path(&entry, target)?;
        }
        return Ok(count);
    }
    let input = std::fs::read(path)?;
    eprintln!("{}", path.display());
    target(&input);
    Ok(1)
}

/// One set of URL options and what it implies for the checks.
struct Variant {
    opts: UrlOptions,
    /// The segment limits set (the options do not show theirs).
    segment_max_length: usize,
    segment_max_count: usize,
    /// `encode_path` then canonicalize gives back the path; not when the code page is tried
    /// first, since the encoded UTF-8 bytes are then read as the code page.
    utf8_round_trip: bool,
    /// Control characters may be in a cooked path.
    restricted_allowed: bool,
}

impl Variant {
    fn new(set: impl FnOnce(&mut UrlOptions)) -> Variant {
        let mut opts = UrlOptions::default();
        set(&mut opts);
        Variant {
            opts,
            segment_max_length: 260,
            segment_max_count: 255,
            utf8_round_trip: true,
            restricted_allowed: false,
        }
    }

    /// Canonicalizes `raw` and checks the result; returns the cooked path or the error.
    fn check(&self, raw: &[u8]) -> Result<String, UrlError> {
        let target = self.opts.canonicalize(raw)?;
        assert_eq!(target.raw(), raw);
        let path = target.path();

        // The query is everything after the first '?', never decoded.
        let question = raw.iter().position(|&b| b == b'?');
        match target.query() {
            Some(q) => assert_eq!(question, Some(raw.len() - q.len() - 1), "query {q:?}"),
            None => assert_eq!(question, None, "a '?' but no query"),
        }

        match target.form() {
            TargetForm::Asterisk => {
                assert_eq!(raw, b"*");
                assert_eq!((path, target.routing_path()), ("*", "/"));
                return Ok(path.to_owned());
            }
            TargetForm::Origin => assert_eq!(raw.first(), Some(&b'/')),
            TargetForm::Absolute { authority } => {
                assert!(!authority.is_empty());
                assert!(!authority.contains(&b'/') && !authority.contains(&b'?'));
                let after = [&b"http://"[..], b"https://"]
                    .iter()
                    .find(|s| {
                        raw.get(..s.len())
                            .is_some_and(|r| r.eq_ignore_ascii_case(s))
                    })
                    .map(|s| &raw[s.len()..]);
                assert!(
                    after.is_some_and(|a| a.starts_with(authority)),
                    "absolute {raw:?}"
                );
            }
            _ => panic!("a new target form: {:?}", target.form()),
        }
        assert_eq!(target.routing_path(), path);
        self.check_cooked(path);

        // Idempotence. The URL limit is lifted: encoding can make the path longer.
        let mut again = self.opts.clone();
        again.max_url_length(usize::MAX);
        // As it is, when a request line would carry it unchanged.
        if !path
            .bytes()
            .any(|b| b == b'%' || b == b'?' || b <= b' ' || b == 0x7F)
        {
            let second = again
                .canonicalize(path.as_bytes())
                .unwrap_or_else(|e| panic!("cooked path {path:?} refused: {e:?}"));
            assert_eq!(second.path(), path, "canonicalizing is not idempotent");
            assert_eq!(second.query(), None);
            assert!(
                matches!(second.into_path(), Cow::Borrowed(_)),
                "a cooked path was copied when canonicalized again: {path:?}",
            );
        }
        // As encode_path writes it for a request line.
        if self.utf8_round_trip {
            let encoded = encode_path(path);
            let second = again
                .canonicalize(encoded.as_bytes())
                .unwrap_or_else(|e| panic!("encoded {encoded:?} of {path:?} refused: {e:?}"));
            assert_eq!(second.path(), path, "encode_path does not round-trip");
        }
        Ok(path.to_owned())
    }

    /// What every cooked path (not `*`) must look like.
    fn check_cooked(&self, path: &str) {
        assert!(path.starts_with('/'), "cooked path {path:?}");
        assert!(!path.contains("//"), "cooked path {path:?} has '//'");
        assert!(!path.contains('\\'), "cooked path {path:?} has '\\'");
        let mut segments = 0;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            assert!(
                seg != "." && seg != "..",
                "cooked path {path:?} has a dot segment"
            );
            segments += 1;
            let units: usize = seg.chars().map(char::len_utf16).sum();
            assert!(
                units <= self.segment_max_length,
                "segment too long in {path:?}"
            );
        }
        assert!(
            segments <= self.segment_max_count,
            "too many segments in {path:?}"
        );
        if !self.restricted_allowed {
            assert!(
                !path.chars().any(is_restricted),
                "cooked path {path:?} has a control character"
            );
        }
    }
}

/// U+0000–U+001F and U+007F–U+009F, as HTTP.sys restricts them.
fn is_restricted(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}')
}

fn hash_of(p: &UrlPrefix) -> u64 {
    let mut h = DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

fn check_prefix(line: &str, p: &UrlPrefix) {
    assert_eq!(p.as_str(), line);
    let path = p.path();
    assert!(
        path.starts_with('/') && path.ends_with('/'),
        "path {path:?}"
    );
    assert!(p.port() >= 1);
    assert_eq!(p.category(), p.host().category());

    let shown = p.to_string();
    let q = UrlPrefix::parse(&shown)
        .unwrap_or_else(|e| panic!("{line:?} shows as {shown:?}, which is refused: {e}"));
    assert_eq!(
        &q, p,
        "{line:?} shows as {shown:?}, which is another prefix"
    );
    assert_eq!(q.to_string(), shown, "Display is not a fixed point");
    assert_eq!(q.path(), path);
    assert_eq!(
        (q.scheme(), q.port(), q.category()),
        (p.scheme(), p.port(), p.category())
    );
    assert_eq!(q.host().to_string(), p.host().to_string());
    assert_eq!(hash_of(&q), hash_of(p), "equal prefixes hash differently");

    // A prefix path is already canonical: a request for it cooks to it.
    match UrlOptions::default().canonicalize(encode_path(path).as_bytes()) {
        Ok(t) => assert_eq!(t.path(), path, "prefix path is not canonical"),
        Err(UrlError::SegmentTooLong | UrlError::TooManySegments | UrlError::TooLong) => {}
        Err(e) => panic!("prefix path {path:?} is refused as a request path: {e:?}"),
    }
}

fn play(table: &mut RouteTable<usize>, op: u8, p: UrlPrefix, value: usize) {
    let before = table.len();
    match op {
        b'-' => {
            let had = table.get(&p).map(|r| *r.value());
            match table.remove(&p) {
                Ok(reg) => {
                    assert_eq!(Some(*reg.value()), had);
                    assert_eq!(table.len(), before - 1);
                    assert!(table.get(&p).is_none());
                }
                Err(_) => {
                    assert_eq!(had, None, "remove refused a registered prefix");
                    assert_eq!(table.len(), before);
                }
            }
        }
        b'!' => {
            let was = table.is_reserved(&p);
            assert_eq!(table.reserve(p.clone()).is_ok(), !was);
            assert!(table.is_reserved(&p));
            assert_eq!(table.len(), before);
        }
        b'~' => {
            let was = table.is_reserved(&p);
            assert_eq!(table.unreserve(&p).is_ok(), was);
            assert!(!table.is_reserved(&p));
            assert_eq!(table.len(), before);
        }
        _ => {
            let allowed = table.check_add(&p).is_ok();
            let (scheme, port) = (p.scheme(), p.port());
            let added = table.add(p.clone(), value).is_ok();
            assert_eq!(added, allowed, "check_add and add disagree");
            if added {
                assert_eq!(table.len(), before + 1);
                assert_eq!(table.get(&p).map(|r| *r.value()), Some(value));
                assert!(table.listens(scheme, port));
            } else {
                assert_eq!(table.len(), before);
            }
        }
    }
}

/// Dispatches and checks the answer against `explain` (the literal algorithm) and against
/// canonicalization; returns whether it was delivered.
fn check_dispatch(table: &RouteTable<usize>, endpoint: &Endpoint, head: &RequestHead<'_>) -> bool {
    let opts = UrlOptions::default();
    let got = table.dispatch(endpoint, head, &opts);
    let why = table.explain(endpoint, head, &opts);
    let listens = table.listens(endpoint.scheme, endpoint.local.port());
    match (&got, why.verdict()) {
        (Dispatch::Deliver(d), Verdict::Deliver(r)) => {
            assert!(
                std::ptr::eq(d.registration(), *r),
                "dispatch and explain disagree"
            );
        }
        (Dispatch::Reject(a), Verdict::Reject(b)) => assert_eq!(a, b),
        (Dispatch::Refused, Verdict::Refused) => {}
        (a, b) => panic!("dispatch gave {a:?}, explain {b:?}"),
    }
    assert_eq!(matches!(got, Dispatch::Refused), !listens);
    if listens && let Err(e) = opts.canonicalize(head.target) {
        assert_eq!(
            got.rejection(),
            Some(e.rejection()),
            "a bad URL was not refused"
        );
    }
    let Dispatch::Deliver(d) = got else {
        return false;
    };
    let p = d.registration().prefix();
    assert_eq!(
        (p.scheme(), p.port()),
        (endpoint.scheme, endpoint.local.port())
    );
    let path = d.target().routing_path();
    if path.is_ascii() && p.path().is_ascii() {
        let covered = format!("{}/", path.to_ascii_uppercase());
        assert!(
            covered.starts_with(&p.path().to_ascii_uppercase()),
            "{path:?} delivered to {p}",
        );
    }
    let url = d.cooked_url(endpoint);
    assert!(
        url.starts_with(endpoint.scheme.as_str()),
        "cooked URL {url:?}"
    );
    true
}

/// A request for `p`'s own path, on `p`'s own site, is not answered 404 or refused.
fn check_reachable(table: &RouteTable<usize>, p: &UrlPrefix) {
    let (ip, host) = match p.host() {
        Host::Ip(ip) => (*ip, p.host().to_string()),
        Host::Name(n) => (IpAddr::V4(Ipv4Addr::LOCALHOST), n.to_string()),
        _ => (IpAddr::V4(Ipv4Addr::LOCALHOST), "reach.test".to_owned()),
    };
    if RequestHost::parse(host.as_bytes()).is_err() {
        return;
    }
    let target = encode_path(p.path());
    if UrlOptions::default()
        .canonicalize(target.as_bytes())
        .is_err()
    {
        return;
    }
    let endpoint = Endpoint::new(p.scheme(), SocketAddr::new(ip, p.port()));
    let head = RequestHead::new(
        b"GET",
        target.as_bytes(),
        Version::Http11,
        Some(host.as_bytes()),
    );
    let delivered = check_dispatch(table, &endpoint, &head);
    if !delivered {
        let why = table.explain(&endpoint, &head, &UrlOptions::default());
        match why.verdict() {
            // A reservation of a longer or stronger prefix answers 503.
            Verdict::Reject(r) if r.status == 503 => {}
            v => panic!("{p} is not reachable at {target:?} with host {host:?}: {v:?}"),
        }
    }
}

fn check_head(buf: &[u8], limits: &HeadLimits) {
    let whole = parse_head(buf, limits);
    check_answer(buf, limits, &whole);
    let mut verdict: Option<(usize, Result<Parsed<'_>, HeadError>)> = None;
    for k in cut_points(buf, limits) {
        let answer = parse_head(&buf[..k], limits);
        check_answer(&buf[..k], limits, &answer);
        match &verdict {
            Some((at, given)) => assert_eq!(
                &answer, given,
                "the answer given at {at} bytes changed at {k} bytes ({limits:?})"
            ),
            None if answer != Ok(Parsed::Partial) => verdict = Some((k, answer)),
            None => {}
        }
    }
    if let Some((at, given)) = verdict {
        assert_eq!(
            whole,
            given,
            "the answer given at {at} bytes changed at {} bytes ({limits:?})",
            buf.len()
        );
    }
    if let Ok(Parsed::Complete { len, .. }) = whole {
        // Exactly the head is enough, and bytes after it change nothing.
        assert_eq!(parse_head(&buf[..len], limits), whole);
    }
}

/// The lengths to cut `buf` at, ascending; all of them for short inputs.
fn cut_points(buf: &[u8], limits: &HeadLimits) -> Vec<usize> {
    let n = buf.len();
    if n <= SWEEP_ALL_UP_TO {
        return (0..n).collect();
    }
    let mut points: Vec<usize> = (0..=64).collect();
    let line_ends = buf
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .take(256);
    for i in line_ends {
        points.extend([i, i + 1, i + 2]);
    }
    for limit in [limits.request_bytes(), limits.field_length()] {
        points.extend(limit.saturating_sub(2)..limit + 3);
    }
    points.extend((1..64).map(|i| i * n / 64));
    points.retain(|&k| k < n);
    points.sort_unstable();
    points.dedup();
    points
}

fn check_answer(buf: &[u8], limits: &HeadLimits, answer: &Result<Parsed<'_>, HeadError>) {
    let max = limits.request_bytes();
    let field = limits.field_length();
    match answer {
        Ok(Parsed::Partial) => {
            // Only a request-target may keep a head partial past MaxRequestBytes, and only
            // up to MaxFieldLength: buffering stays bounded.
            assert!(
                buf.len() <= max + field + 2,
                "partial at {} bytes",
                buf.len()
            );
        }
        Ok(Parsed::Complete { head, len }) => {
            let len = *len;
            assert!(len <= buf.len() && len <= max, "head of {len} bytes");
            assert_eq!(buf[len - 1], b'\n');
            let method = head.method();
            assert!(!method.is_empty() && method.iter().all(|&b| is_tchar(b)));
            let target = head.target();
            assert!(!target.is_empty() && target.len() <= field);
            assert!(
                !target.iter().any(|&b| b <= b' ' || b == 0x7F),
                "target {target:?}"
            );
            for (name, value) in head.headers() {
                assert!(
                    !name.is_empty() && name.iter().all(|&b| is_tchar(b)),
                    "{name:?}"
                );
                assert!(
                    !value.iter().any(|&b| b == b'\r' || b == b'\n'),
                    "{value:?}"
                );
                assert!(!value.starts_with(b" ") && !value.starts_with(b"\t"));
                assert!(!value.ends_with(b" ") && !value.ends_with(b"\t"));
                assert!(name.len() + value.len() <= field, "field over the limit");
                assert!(head.joined(name).is_some());
                assert!(head.header(name).is_some());
            }
            assert_eq!(head.host(), head.header(b"host"));
            match head.body() {
                Body::Length(_) => {
                    assert!(head.header(b"content-length").is_some());
                    assert!(head.header(b"transfer-encoding").is_none());
                }
                Body::Chunked => assert!(head.header(b"content-length").is_none()),
                Body::None => {
                    assert!(head.header(b"content-length").is_none());
                    assert!(head.header(b"transfer-encoding").is_none());
                }
                other => panic!("a new body kind: {other:?}"),
            }
            if head.expect_continue() {
                assert_eq!(head.version(), Version::Http11);
            }
            let routing = head.request_head();
            assert_eq!((routing.method, routing.target), (method, target));
            assert_eq!(
                (routing.version, routing.host),
                (head.version(), head.host())
            );
            let _ = format!("{head:?}");
        }
        Err(e) => {
            let status = e.rejection().status;
            assert!(
                matches!(status, 400 | 411 | 414 | 501 | 505),
                "status {status} for {e}"
            );
            assert!(!e.to_string().is_empty());
        }
        Ok(other) => panic!("a new answer: {other:?}"),
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
