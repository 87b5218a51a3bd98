//! The route table's change path: what one registration, or its removal, costs the daemon
//! at 10, 1,000 and 100,000 registrations, published as a control request publishes it.
//!
//! - `changes/add_remove/N`: on a table of N registrations (`http://+:80/tenantK/app/`),
//!   one URL added and published, then removed and published: two control requests, the
//!   table's size unchanged. The daemon's two copies (`crates/server/src/daemon/routes.rs`):
//!   each change is made on the copy connections do not read, published by a swap, and
//!   replayed on the other copy at the next change.
//! - `changes/add_remove_cloned/N`: the same with one table cloned whole for each
//!   publish, as the daemon did before: the cost that grew with the table.
//!
//! - `changes/acl_decision/N`: the registration decision (`UrlAcl::check_register`) for a
//!   user holding one of N reservations (`http://+:80/userK/`, one user each), for a URL
//!   below theirs: it looks up the URL's path prefixes, not every reservation.
//!
//! Run with `cargo bench --bench changes`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portshare_router::{Account, Ace, Caller, Reservation, RouteTable, UrlAcl, UrlPrefix};
use portshare_server::bench_changes::Changes;

/// The table sizes measured.
const SIZES: [u32; 3] = [10, 1_000, 100_000];

fn tenant(n: u32) -> UrlPrefix {
    UrlPrefix::parse(&format!("http://+:80/tenant{n}/app/")).expect("a valid prefix")
}

fn changes(c: &mut Criterion) {
    let mut g = c.benchmark_group("changes");
    for n in SIZES {
        let extra = tenant(u32::MAX);
        let mut two = Changes::default();
        for k in 0..n {
            two.add(tenant(k), k).expect("add");
        }
        two.publish();
        g.bench_with_input(BenchmarkId::new("add_remove", n), &n, |b, _| {
            b.iter(|| {
                two.add(extra.clone(), 0).expect("add");
                two.publish();
                two.remove(&extra).expect("remove");
                two.publish();
            });
        });
        assert_eq!(two.published().len(), n as usize);

        let mut one: RouteTable<u32> = RouteTable::new();
        for k in 0..n {
            one.add(tenant(k), k).expect("add");
        }
        let shared = ArcSwap::from_pointee(one.clone());
        g.bench_with_input(BenchmarkId::new("add_remove_cloned", n), &n, |b, _| {
            b.iter(|| {
                one.add(extra.clone(), 0).expect("add");
                shared.store(Arc::new(one.clone()));
                one.remove(&extra).expect("remove");
                shared.store(Arc::new(one.clone()));
            });
        });
        black_box(shared.load().len());
    }
    for n in [10u32, 1_000, 10_000] {
        let mut acl = UrlAcl::new();
        for k in 0..n {
            let prefix = UrlPrefix::parse(&format!("http://+:80/user{k}/")).expect("prefix");
            let ace = Ace::new(Account::User(format!("user{k}")), true, false);
            acl.insert(Reservation::new(prefix, vec![ace]))
                .expect("reserve");
        }
        let k = n / 2;
        let caller = Caller::new(format!("user{k}"));
        let url = UrlPrefix::parse(&format!("http://+:80/user{k}/app/v1/")).expect("prefix");
        assert!(acl.check_register(&url, &caller).is_ok());
        g.bench_with_input(BenchmarkId::new("acl_decision", n), &n, |b, _| {
            b.iter(|| black_box(acl.check_register(black_box(&url), &caller).is_ok()));
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = changes
}
criterion_main!(benches);
