//! The counters' recording path (`crates/server/src/metrics`): what one served request
//! adds to the daemon's work for its counters (an arrival, a slot taken and given back
//! with three histograms, a site's request and bytes; the clock read twice).
//!
//! - `metrics/request`: one thread;
//! - `metrics/request_2_threads`: two threads recording into the same queue and site at
//!   once, reported per request: the cost when connections of one queue contend.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portshare_server::bench::Recorder;

fn recording(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    let r = Recorder::default();
    g.bench_function("request", |b| b.iter(|| r.request()));
    g.bench_function("request_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            r.request();
                        }
                    });
                }
            });
            // Per request, of the 2 × iters recorded.
            start.elapsed().checked_div(2).unwrap_or(Duration::ZERO)
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = recording
}
criterion_main!(benches);
