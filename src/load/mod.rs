//! `portshare load`, the queue lab: an open-loop HTTP/1.1 load generator that shows what a
//! request queue does under a given arrival rate.
//!
//! Requests are scheduled at fixed times by the rate (`plan`), whatever the server does, and
//! their latency is measured from that intended time, so a slow server cannot slow the
//! arrivals down and hide its queueing (no coordinated omission). A connection back from a
//! response takes the newest request whose time has come itself; at a request's time a
//! dispatcher hands it to a parked connection, or opens a new one below `--connections`;
//! a request that finds every connection busy and the cap reached, and none free within a
//! timer tick (1 ms), is counted "not sent": it never waits longer (`plan`). With
//! `--threads N`, each thread has every N-th request, its share of the connections and its
//! own dispatcher, on a current-thread runtime, so nothing crosses threads. Each connection (`conn`)
//! is a task speaking HTTP/1.1 with a parser of its own (`parse`). Outcomes and HDR
//! latency histograms are recorded per second of intended send time (`record`); once a
//! second the control socket is asked for the target queue's depth, counters and
//! per-process served counts (`watch`). At the end: a summary, `--csv`, `--plot` (`plot`).

mod conn;
mod parse;
mod plan;
mod plot;
mod record;
mod watch;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch as signal};
use tokio::time::Instant;

use self::conn::{Job, Target};
use self::plan::{Lane, Place, Schedule, Step};
use self::record::{QueueSecond, Recorder, Row, Sample};

/// Arguments of `portshare load`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The URL to load, `http://HOST:PORT/PATH` (the port may be left out), asked for with GET
    /// over HTTP/1.1 keep-alive.
    #[arg(value_name = "URL")]
    url: String,
    /// Requests per second, held for --duration.
    #[arg(long, value_name = "R", conflicts_with = "steps")]
    rate: Option<f64>,
    /// How long --rate is held: 30s, 500ms, 2m (a bare number is seconds). Default: 10s.
    #[arg(long, value_name = "D", value_parser = duration, conflicts_with = "steps")]
    duration: Option<Duration>,
    /// Stepped rates instead of --rate: RATE:DURATION,... such as 100:10s,200:10s,400:10s.
    #[arg(long, value_name = "STEPS", value_parser = steps)]
    steps: Option<Steps>,
    /// The most connections open at once; a request whose time comes while all are busy,
    /// and none comes free within 1 ms, is counted "not sent".
    #[arg(long, value_name = "N", default_value_t = 256)]
    connections: usize,
    /// How long a request may take, from when it is sent; then it counts as a timeout.
    #[arg(long, value_name = "D", value_parser = duration, default_value = "10s")]
    timeout: Duration,
    /// The queue to watch. Default: the one the URL routes to on the daemon.
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// The daemon's control socket, for the queue's side. Default: $PORTSHARE_CONTROL,
    /// else the per-user socket if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Write one row per second to this CSV file.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw the run into this file: SVG, or HTML when it ends in .html.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// The plot's title. Default: the URL and the rates.
    #[arg(long, value_name = "TEXT")]
    title: Option<String>,
    /// Threads of the generator, each with every N-th request and its share of the
    /// connections (so "not sent" is judged per thread).
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

/// Stepped rates, as given.
#[derive(Debug, Clone)]
pub(crate) struct Steps(Vec<Step>);

pub(crate) fn run(args: Args) -> ExitCode {
    match prepare(&args) {
        Ok(setup) => {
            // The sampler's runtime; the generator runs on threads of its own (`lab`).
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("portshare load: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(lab(args, setup))
        }
        Err(e) => {
            eprintln!("portshare load: {e}");
            ExitCode::from(2)
        }
    }
}

/// What the arguments come to.
#[derive(Debug)]
struct Setup {
    addr: SocketAddr,
    /// `host[:port]` as the Host field carries it.
    authority: String,
    /// The request target: path and query.
    target: String,
    steps: Vec<Step>,
    control: PathBuf,
}

fn prepare(args: &Args) -> Result<Setup, String> {
    let steps = match (&args.steps, args.rate) {
        (Some(s), _) => s.0.clone(),
        (None, Some(rate)) if rate.is_finite() && rate > 0.0 => vec![Step {
            rate,
            duration: args.duration.unwrap_or(Duration::from_secs(10)),
        }],
        (None, Some(rate)) => return Err(format!("--rate {rate}: give a rate above 0")),
        (None, None) => {
            return Err("give --rate R (and --duration, 10s by default), or --steps".to_owned());
        }
    };
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e| format!("{}: not a URL: {e}", args.url))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{}: only http:// URLs can be loaded (https is not spoken by the generator)",
            args.url
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{}: no host", args.url))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("{}: cannot resolve {host}: {e}", args.url))?
        .next()
        .ok_or_else(|| format!("{}: {host} has no address", args.url))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let control = args.control.clone().unwrap_or_else(|| {
        portshare_proto::control_socket_for_client(|k| std::env::var_os(k), Path::exists)
    });
    Ok(Setup {
        addr,
        authority: authority.as_str().to_owned(),
        target,
        steps,
        control,
    })
}

async fn lab(args: Args, setup: Setup) -> ExitCode {
    let schedule = Schedule::new(setup.steps.clone());
    let planned = schedule.length();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portshare-load\r\n\r\n",
        setup.target, setup.authority
    )
    .into_bytes();
    let mut watch = watch::Watch::new(
        setup.control.clone(),
        args.queue.clone(),
        setup.addr,
        setup.authority.clone(),
        setup.target.clone(),
    );
    // The baseline sample, before the first request.
    let baseline = watch.sample().await;
    let start = Instant::now();
    let (stop_tx, stop_rx) = signal::channel(false);
    let sampler = tokio::spawn(sample_each_second(watch, start, stop_rx));
    // Each thread is a current-thread runtime with its own dispatcher, every n-th request
    // of the schedule and its share of the connections, as wrk's threads have theirs: no
    // request or connection ever crosses threads.
    let shards = usize::from(args.threads).min(args.connections).max(1);
    // A recorder per thread, merged at the end: the threads never share a lock.
    let recorders: Vec<Arc<Recorder>> = (0..shards).map(|_| Arc::new(Recorder::new())).collect();
    let mut threads = Vec::with_capacity(shards);
    for (i, recorder) in recorders.iter().enumerate() {
        let connections = args.connections / shards + usize::from(i < args.connections % shards);
        let target = Arc::new(Target {
            addr: setup.addr,
            request: request.clone(),
            timeout: args.timeout,
            recorder: recorder.clone(),
            start,
            lane: Mutex::new(Lane::new(schedule.clone(), (i, shards), connections)),
            closed: Notify::new(),
        });
        let recorder = recorder.clone();
        let timeout = args.timeout;
        let thread = std::thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok::<bool, String>(runtime.block_on(dispatch(target, &recorder, timeout)))
            });
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!("portshare load: cannot start a thread: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let joined = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a thread panicked".to_owned()))
            })
            .collect::<Result<Vec<bool>, String>>()
    })
    .await;
    let interrupted = match joined {
        Ok(Ok(each)) => each.into_iter().any(|i| i),
        Ok(Err(e)) => {
            eprintln!("portshare load: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("portshare load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = stop_tx.send(true);
    let (watch, mut samples) = match sampler.await {
        Ok(done) => done,
        Err(_) => {
            eprintln!("portshare load: the control-socket sampler failed");
            return ExitCode::FAILURE;
        }
    };
    samples.insert(0, baseline);
    let elapsed = start.elapsed();

    let planned_seconds = planned.as_secs_f64().ceil() as usize;
    let (seconds, overall) = Recorder::finish_all(&recorders, planned_seconds);
    let queue: Vec<Option<QueueSecond>> = samples
        .windows(2)
        .map(|w| {
            w[1].as_ref()
                .map(|after| record::queue_second(w[0].as_ref(), after))
        })
        .collect();
    let rows = record::rows(&seconds, &queue);
    let first_last = (
        samples.iter().flatten().next(),
        samples.iter().flatten().last(),
    );
    let title = args.title.clone().unwrap_or_else(|| {
        format!(
            "portshare load {} ({})",
            args.url,
            describe_steps(&setup.steps)
        )
    });
    let mut code = ExitCode::SUCCESS;
    if let Some(path) = &args.csv
        && let Err(e) = std::fs::write(path, record::csv(&rows))
    {
        eprintln!("portshare load: cannot write {}: {e}", path.display());
        code = ExitCode::FAILURE;
    }
    if let Some(path) = &args.plot {
        let html = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
        let page = if html {
            plot::html(&rows, &title)
        } else {
            plot::svg(&rows, &title)
        };
        match page.map(|p| std::fs::write(path, p).map_err(|e| e.to_string())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                eprintln!("portshare load: cannot write {}: {e}", path.display());
                code = ExitCode::FAILURE;
            }
        }
    }
    crate::print(&summary(
        &args,
        &setup,
        &rows,
        &overall,
        elapsed,
        interrupted,
        &watch,
        first_last,
    ));
    code
}

/// Runs one thread's lane to its end (or Ctrl-C): at each request's time, if no connection
/// back from a response took it, hands it to a parked connection or opens a new one below
/// the cap; then waits for the connections to finish (each within `timeout`) and records
/// what was offered. True when interrupted.
async fn dispatch(target: Arc<Target>, recorder: &Recorder, timeout: Duration) -> bool {
    let start = target.start;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut interrupted = false;
    // One timer, moved as the next time changes.
    let timer = tokio::time::sleep_until(start);
    tokio::pin!(timer);
    loop {
        let Some(at) = target.lane().wake_at() else {
            break;
        };
        let due = start + at;
        if due > Instant::now() {
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                () = &mut timer => {}
                _ = &mut interrupt, if !interrupted => {
                    interrupted = true;
                    target.lane().stop();
                    continue;
                }
            }
        }
        let now = start.elapsed();
        loop {
            let placed = target.lane().place(now);
            match placed {
                Some((Place::Idle(h), at)) => {
                    if h.send(Some(Job::new(start, at))).is_err() {
                        // Its task is gone without a word (it cannot be, short of a bug):
                        // forget it, and the request goes to the next place.
                        let mut lane = target.lane();
                        lane.closed();
                        lane.put_back(at);
                    }
                }
                Some((Place::Open, at)) => {
                    tokio::spawn(conn::run(target.clone(), Job::new(start, at)));
                }
                Some((Place::NotSent, _)) | None => break,
            }
        }
    }
    // The end: parked connections are told to go; busy ones end within their timeout and
    // then close themselves, the plan being over.
    for h in target.lane().drain_idle() {
        let _ = h.send(None);
    }
    let deadline = Instant::now() + timeout + Duration::from_secs(2);
    while target.lane().open() > 0 {
        if tokio::time::timeout_at(deadline, target.closed.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    for (second, &(sent, not_sent)) in target.lane().offered().iter().enumerate() {
        if sent + not_sent > 0 {
            recorder.offered(second, sent, not_sent);
        }
    }
    interrupted
}

/// Samples the queue at each whole second after `start` until told to stop, then once
/// more (after the last responses): sample `k` closes second `k - 1`.
async fn sample_each_second(
    mut watch: watch::Watch,
    start: Instant,
    mut stop: signal::Receiver<bool>,
) -> (watch::Watch, Vec<Option<Sample>>) {
    let mut samples = Vec::new();
    let mut k = 1u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(start + Duration::from_secs(u64::from(k))) => {
                samples.push(watch.sample().await);
                k += 1;
            }
            _ = async { drop(stop.wait_for(|&s| s).await) } => {
                samples.push(watch.sample().await);
                return (watch, samples);
            }
        }
    }
}

/// The text printed at the end.
#[allow(clippy::too_many_arguments)]
fn summary(
    args: &Args,
    setup: &Setup,
    rows: &[Row],
    overall: &hdrhistogram::Histogram<u64>,
    elapsed: Duration,
    interrupted: bool,
    watch: &watch::Watch,
    (first, last): (Option<&Sample>, Option<&Sample>),
) -> String {
    let t = record::totals(rows);
    let plan: Duration = setup.steps.iter().map(|s| s.duration).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "portshare load {}: {}; at most {} connections{}",
        args.url,
        describe_steps(&setup.steps),
        args.connections,
        if interrupted { " (interrupted)" } else { "" }
    );
    let per_s = |n: u64| n as f64 / plan.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "  offered      {:>9}  ({:.1}/s)",
        t.offered,
        per_s(t.offered)
    );
    let _ = writeln!(
        out,
        "  sent         {:>9}  ({:.1}/s)",
        t.sent,
        per_s(t.sent)
    );
    let _ = writeln!(out, "  not sent     {:>9}", t.not_sent);
    let _ = writeln!(out, "  2xx          {:>9}  ({:.1}/s)", t.ok, per_s(t.ok));
    let _ = writeln!(
        out,
        "  503          {:>9}  ({} with Retry-After)",
        t.unavailable, t.retry_after
    );
    let _ = writeln!(out, "  other status {:>9}", t.other);
    let _ = writeln!(out, "  resets       {:>9}", t.resets);
    let _ = writeln!(out, "  timeouts     {:>9}", t.timeouts);
    let _ = writeln!(out, "  errors       {:>9}", t.errors);
    let _ = writeln!(
        out,
        "  unfinished   {:>9}",
        t.sent.saturating_sub(t.ended())
    );
    match record::percentiles(overall) {
        Some((p50, p99, max)) => {
            let p90 = overall.value_at_quantile(0.9) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "  latency (responses, from the intended send time): p50 {p50:.2} ms, \
                 p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
            );
        }
        None => {
            let _ = writeln!(out, "  latency: no response");
        }
    }
    let _ = writeln!(out, "  elapsed {:.1} s", elapsed.as_secs_f64());
    match (&watch.queue, first, last) {
        (Some(name), Some(first), Some(last)) => {
            let d = record::queue_second(Some(first), last);
            let max_depth = rows
                .iter()
                .filter_map(|r| r.queue.as_ref().map(|q| q.depth))
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "  queue {name} (length {}): depth max {max_depth}; delivered {}, refused \
                 full {}, disabled {}, connection limit {}; timed out {}, abandoned {}",
                last.length,
                d.delta.delivered,
                d.delta.queue_full,
                d.delta.disabled,
                d.delta.conn_limit,
                d.delta.timed_out,
                d.delta.abandoned
            );
            let total: u64 = d.served.iter().map(|p| p.1).sum();
            for (pid, n) in &d.served {
                let share = if total > 0 {
                    *n as f64 * 100.0 / total as f64
                } else {
                    0.0
                };
                let _ = writeln!(out, "    PID {pid} served {n} ({share:.1} %)");
            }
        }
        _ => {
            let why = watch
                .problem
                .clone()
                .unwrap_or_else(|| format!("no answer from {}", watch.path().display()));
            let _ = writeln!(out, "  queue: not watched ({why})");
        }
    }
    out
}

fn describe_steps(steps: &[Step]) -> String {
    let parts: Vec<String> = steps
        .iter()
        .map(|s| format!("{}/s for {}", s.rate, seconds_text(s.duration)))
        .collect();
    parts.join(", then ")
}

fn seconds_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// `30s`, `500ms`, `2m`, `1.5s`; a bare number is seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * scale <= 86_400.0 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!(
            "{text:?} is not a duration such as 30s, 500ms or 2m (above 0, at most a day)"
        )),
    }
}

/// `RATE:DURATION,...`.
fn steps(text: &str) -> Result<Steps, String> {
    let mut steps = Vec::new();
    for part in text.split(',') {
        let (rate, length) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?}: a step is RATE:DURATION, such as 100:10s"))?;
        let rate = match rate.trim().parse::<f64>() {
            Ok(r) if r.is_finite() && r >= 0.0 => r,
            _ => {
                return Err(format!(
                    "{part:?}: {rate:?} is not a rate (requests per second)"
                ));
            }
        };
        steps.push(Step {
            rate,
            duration: duration(length)?,
        });
    }
    if steps.iter().all(|s| s.rate == 0.0) {
        return Err("every step has a rate of 0".to_owned());
    }
    Ok(Steps(steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "-1s", "0", "NaNs", "1h", "100000m"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stepped_rates() {
        let s = steps("100:10s,0:1s,400:500ms").expect("steps").0;
        assert_eq!(
            s,
            [
                Step {
                    rate: 100.0,
                    duration: Duration::from_secs(10)
                },
                Step {
                    rate: 0.0,
                    duration: Duration::from_secs(1)
                },
                Step {
                    rate: 400.0,
                    duration: Duration::from_millis(500)
                },
            ]
        );
        for bad in ["100", "x:1s", "-5:1s", "100:1s,", "0:1s"] {
            assert!(steps(bad).is_err(), "{bad}");
        }
    }
}
