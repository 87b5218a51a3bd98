//! Canonicalize + route, beside a plain `matchit` table on the same workload.
//!
//! Each run builds, per table size (10, 1,000 and 100,000 registrations), one deterministic
//! table of `http://...:80/` prefixes 1 to 4 segments deep: nine in ten under the `+` host,
//! one in ten under one of 64 explicit hosts (`hostK.example.com`). Requests are ~40-byte
//! origin-form paths, timed through [`RouteTable::dispatch`] (method check, URL
//! canonicalization, Host parsing, routing):
//!
//! - `hot_deep`: one path under a 4-segment prefix, repeated;
//! - `hot_shallow`: one path under a 1-segment prefix, repeated;
//! - `hot_miss`: one path whose first segment is not registered (404), repeated;
//! - `random_hit`: paths to prefixes drawn at random over the whole table, each iteration
//!   the next one; 65,536 of them at 100,000 registrations, so lookups miss the caches.
//!
//! Request paths sit back to back in one buffer and are taken in order, so the cache misses
//! measured are the table's: a server reads a path it has just received.
//!
//! The `matchit` rows run the same paths against a `matchit::Router` holding, for every
//! registered path `P/`, the routes `P`, `P/` and `P/{*rest}`. `matchit` has no host
//! categories, so it gets every registered path with its host dropped: it stands in for the
//! `+` prefixes, and the explicit hosts' paths only keep `random_hit` a hit in both. It
//! compares bytes, so its routes are lower case and each timed lookup first lower-cases the
//! path into a reused buffer, since HTTP.sys matches case-insensitively.
//!
//! Run with `cargo bench --bench router`; `cargo bench --bench router -- random_hit` runs
//! a subset.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use matchit::Router;
use portshare_router::{
    Dispatch, Endpoint, RequestHead, RouteTable, Scheme, UrlOptions, UrlPrefix, Version,
};

/// The table sizes measured.
const SIZES: [usize; 3] = [10, 1_000, 100_000];
/// The length request paths are padded to.
const PATH_LEN: usize = 40;
/// The number of distinct explicit host names.
const EXPLICIT_HOSTS: u8 = 64;
/// The Host header of requests to `+` prefixes: no explicit prefix serves it.
const DEFAULT_HOST: &str = "example.com";
/// A first segment the generator never produces: segment words have no `-`.
const MISSING_SEGMENT: &str = "no-such-app";
/// Words real URL prefixes are made of; the rest are random names.
const WORDS: [&str; 32] = [
    "api", "v1", "v2", "v3", "app", "admin", "auth", "billing", "cart", "catalog", "docs",
    "events", "files", "health", "images", "internal", "items", "login", "media", "metrics",
    "orders", "payments", "public", "reports", "search", "shop", "static", "status", "store",
    "tenants", "users", "webhooks",
];

/// A xorshift64 generator: deterministic tables without a `rand` dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// An index in `0..len`; `len` must not be 0.
    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.next() % len as u64).expect("an index below a usize fits in one")
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.index(100) < percent
    }
}

/// One generated registration.
struct Spec {
    /// The index of its explicit host in [`Fixture::hosts`], 0 for `+`.
    host: u8,
    /// The path, lower case, with leading and trailing `/`.
    path: String,
    /// The value registered.
    id: u32,
}

impl Spec {
    fn prefix(&self, hosts: &[String]) -> UrlPrefix {
        let host = match self.host {
            0 => "+",
            k => &hosts[usize::from(k)],
        };
        format!("http://{host}:80{}", self.path)
            .parse()
            .expect("generated prefixes are valid")
    }
}

/// Where a request must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// To this registration: a `+` prefix, the first category tried.
    Exactly(u32),
    /// To some registration: a request to an explicit host reaches a `+` prefix of its path
    /// when there is one, since the `+` category is tried first.
    Delivered,
    /// Nowhere: 404.
    NotFound,
}

/// Requests with their paths back to back in one buffer.
#[derive(Default)]
struct Requests {
    text: String,
    items: Vec<Item>,
}

/// One request of [`Requests`].
struct Item {
    /// Index in [`Fixture::hosts`] of its Host header.
    host: u8,
    /// Its path: `text[start..end]`.
    start: usize,
    end: usize,
    expect: Expect,
}

impl Requests {
    fn push(&mut self, host: u8, path: &str, expect: Expect) {
        let start = self.text.len();
        self.text.push_str(path);
        let end = self.text.len();
        self.items.push(Item {
            host,
            start,
            end,
            expect,
        });
    }

    /// A single request.
    fn one(host: u8, path: &str, expect: Expect) -> Requests {
        let mut r = Requests::default();
        r.push(host, path, expect);
        r
    }

    fn path(&self, item: &Item) -> &str {
        &self.text[item.start..item.end]
    }

    /// Hands out `(host index, path)` in order, wrapping around. The number of requests
    /// must be a power of two.
    fn cycle<'r>(&'r self) -> impl FnMut() -> (u8, &'r str) {
        assert!(self.items.len().is_power_of_two());
        let mask = self.items.len() - 1;
        let mut i = 0;
        move || {
            let item = &self.items[i];
            i = (i + 1) & mask;
            (item.host, self.path(item))
        }
    }
}

/// A table of one size, its `matchit` counterpart and the requests to time.
struct Fixture {
    table: RouteTable<u32>,
    matchit: Router<u32>,
    endpoint: Endpoint,
    opts: UrlOptions,
    /// Host headers: [`DEFAULT_HOST`], then the explicit hosts.
    hosts: Vec<String>,
    hot_deep: Requests,
    hot_shallow: Requests,
    hot_miss: Requests,
    random: Requests,
}

/// A segment word: a common word half of the time, else 3 to 10 lower-case letters and
/// digits starting with a letter (so never all digits, as request tails are).
fn word(rng: &mut XorShift) -> String {
    if rng.chance(50) {
        return WORDS[rng.index(WORDS.len())].to_owned();
    }
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = 3 + rng.index(8);
    let mut w = String::with_capacity(len);
    w.push(char::from(ALNUM[rng.index(26)]));
    for _ in 1..len {
        w.push(char::from(ALNUM[rng.index(ALNUM.len())]));
    }
    w
}

/// A spec `depth` segments deep, under `+` unless `explicit`.
fn spec(rng: &mut XorShift, depth: usize, explicit: bool, id: u32) -> Spec {
    let host = match explicit {
        true => 1 + u8::try_from(rng.index(EXPLICIT_HOSTS.into())).expect("below 64"),
        false => 0,
    };
    let mut path = String::from("/");
    for _ in 0..depth {
        path.push_str(&word(rng));
        path.push('/');
    }
    Spec { host, path, id }
}

/// `n` distinct registrations. The first is `+` and 1 segment deep, the second `+` and 4
/// deep, for the hot requests; the rest are 1 to 4 deep, one in ten on an explicit host.
fn generate(rng: &mut XorShift, hosts: &[String], n: usize) -> (RouteTable<u32>, Vec<Spec>) {
    let mut table = RouteTable::new();
    let mut specs = Vec::with_capacity(n);
    while specs.len() < n {
        let id = u32::try_from(specs.len()).expect("table sizes fit in u32");
        let s = match specs.len() {
            0 => spec(rng, 1, false, id),
            1 => spec(rng, 4, false, id),
            _ => {
                let depth = 1 + rng.index(4);
                let explicit = rng.chance(10);
                spec(rng, depth, explicit, id)
            }
        };
        // A duplicate is refused; draw another.
        if table.add(s.prefix(hosts), id).is_ok() {
            specs.push(s);
        }
    }
    (table, specs)
}

/// `prefix` followed by all-digit segments up to [`PATH_LEN`] bytes (at least one digit):
/// no registration is deeper along it than the one `prefix` names.
fn pad(rng: &mut XorShift, prefix: &str) -> String {
    let mut path = prefix.to_owned();
    loop {
        let len = PATH_LEN.saturating_sub(path.len()).clamp(1, 8);
        for _ in 0..len {
            path.push(char::from(b"0123456789"[rng.index(10)]));
        }
        if path.len() + 2 > PATH_LEN {
            return path;
        }
        path.push('/');
    }
}

/// Adds a request under `spec`'s prefix.
fn push_hit(requests: &mut Requests, rng: &mut XorShift, spec: &Spec) {
    let expect = match spec.host {
        0 => Expect::Exactly(spec.id),
        _ => Expect::Delivered,
    };
    requests.push(spec.host, &pad(rng, &spec.path), expect);
}

/// A router with `P`, `P/` and `P/{*rest}` for every registered path `P/`, hosts dropped.
/// A route that conflicts (the same path on two hosts) is skipped.
fn matchit_router(specs: &[Spec]) -> Router<u32> {
    let mut router = Router::new();
    for s in specs {
        let bare = s.path.trim_end_matches('/');
        for route in [
            bare.to_owned(),
            s.path.clone(),
            format!("{}{{*rest}}", s.path),
        ] {
            // Ignored: a conflict means the path is already routed.
            let _ = router.insert(route, s.id);
        }
    }
    router
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ n as u64);
        let hosts: Vec<String> = std::iter::once(DEFAULT_HOST.to_owned())
            .chain((0..EXPLICIT_HOSTS).map(|k| format!("host{k}.example.com")))
            .collect();
        let (table, specs) = generate(&mut rng, &hosts, n);
        let matchit = matchit_router(&specs);
        let mut hot_shallow = Requests::default();
        push_hit(&mut hot_shallow, &mut rng, &specs[0]);
        let mut hot_deep = Requests::default();
        push_hit(&mut hot_deep, &mut rng, &specs[1]);
        let miss = pad(&mut rng, &format!("/{MISSING_SEGMENT}/"));
        let hot_miss = Requests::one(0, &miss, Expect::NotFound);
        let mut random = Requests::default();
        let count = if n >= 100_000 { 65_536 } else { 4_096 };
        for _ in 0..count {
            let spec = &specs[rng.index(specs.len())];
            push_hit(&mut random, &mut rng, spec);
        }
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 80));
        let fixture = Fixture {
            table,
            matchit,
            endpoint: Endpoint::new(Scheme::Http, local),
            opts: UrlOptions::default(),
            hosts,
            hot_deep,
            hot_shallow,
            hot_miss,
            random,
        };
        fixture.check();
        fixture
    }

    /// Every request reaches its registration in the route table, and hits (or misses) in
    /// `matchit`: the benchmark times the intended work.
    fn check(&self) {
        let mut buf = String::new();
        let all = [
            &self.hot_deep,
            &self.hot_shallow,
            &self.hot_miss,
            &self.random,
        ];
        for requests in all {
            for item in &requests.items {
                let path = requests.path(item);
                let found = self.dispatch(item.host, path);
                let ok = match item.expect {
                    Expect::Exactly(id) => found == Some(id),
                    Expect::Delivered => found.is_some(),
                    Expect::NotFound => found.is_none(),
                };
                assert!(ok, "{path}: {found:?}, not {:?}", item.expect);
                let hit = at(&self.matchit, &mut buf, path).is_some();
                assert_eq!(hit, item.expect != Expect::NotFound, "matchit: {path}");
            }
        }
    }

    /// Canonicalizes and routes one request: the timed work of the `portshare` rows.
    #[inline]
    fn dispatch(&self, host: u8, path: &str) -> Option<u32> {
        let host = self.hosts[usize::from(host)].as_bytes();
        let head = RequestHead::new(b"GET", path.as_bytes(), Version::Http11, Some(host));
        match self.table.dispatch(&self.endpoint, &head, &self.opts) {
            Dispatch::Deliver(d) => Some(*d.registration().value()),
            _ => None,
        }
    }

    /// The four workloads, by benchmark name.
    fn workloads(&self) -> [(&'static str, &Requests); 4] {
        [
            ("hot_deep", &self.hot_deep),
            ("hot_shallow", &self.hot_shallow),
            ("hot_miss", &self.hot_miss),
            ("random_hit", &self.random),
        ]
    }
}

/// Lower-cases `path` into `buf` and looks it up: the timed work of the `matchit` rows.
#[inline]
fn at(router: &Router<u32>, buf: &mut String, path: &str) -> Option<u32> {
    buf.clear();
    buf.push_str(path);
    buf.make_ascii_lowercase();
    router.at(buf).ok().map(|m| *m.value)
}

/// The `portshare` rows for one table size.
fn bench_portshare(g: &mut BenchmarkGroup<'_, WallTime>, n: usize, f: &Fixture) {
    for (name, requests) in f.workloads() {
        g.bench_function(BenchmarkId::new(name, n), |b| {
            let mut next = requests.cycle();
            b.iter(|| {
                let (host, path) = black_box(next());
                f.dispatch(host, path)
            });
        });
    }
}

/// The `matchit` rows for one table size.
fn bench_matchit(g: &mut BenchmarkGroup<'_, WallTime>, n: usize, f: &Fixture) {
    let mut buf = String::with_capacity(2 * PATH_LEN);
    for (name, requests) in f.workloads() {
        g.bench_function(BenchmarkId::new(name, n), |b| {
            let mut next = requests.cycle();
            b.iter(|| {
                let (_, path) = black_box(next());
                at(&f.matchit, &mut buf, path)
            });
        });
    }
}

fn bench_router(c: &mut Criterion) {
    for n in SIZES {
        let fixture = Fixture::new(n);
        let mut g = c.benchmark_group("portshare");
        bench_portshare(&mut g, n, &fixture);
        g.finish();
        let mut g = c.benchmark_group("matchit");
        bench_matchit(&mut g, n, &fixture);
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_router
}
criterion_main!(benches);
