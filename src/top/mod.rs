//! `portshare top`: the queues of a running daemon, live. Once per interval it reads the
//! daemon's state view and counters (`GET /v1/state` and `/v1/metrics`: what the caller
//! may see of them, as `show servicestate`) and shows per queue the arrivals, services and
//! refusals (by reason) per second, the depth with its recent history, the oldest waiting
//! request, the interval's p50 and p99 of time waiting and time in the application, the
//! workers and their free slots, and the connections of each listening address. On a terminal it is a full-screen view (`tui`);
//! otherwise, or with `--plain`, it prints lines (`plain`).

mod model;
mod plain;
mod tui;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use portshare_proto::control::{Metrics, ServiceState, path};

use crate::client::ControlArg;
use model::{Model, Sample, View};

/// Arguments of `portshare top`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds between refreshes.
    #[arg(long, default_value = "1", value_parser = interval)]
    interval: Duration,
    /// Only queues whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    queue: Option<String>,
    /// Print lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Stop after this many refreshes (plain lines only; the first comes after one interval).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    control: ControlArg,
}

fn interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err("the interval is from 0.1 to 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(crate) fn run(args: Args) -> ExitCode {
    let client = args.control.client();
    let mut model = Model::default();
    let only = args.queue.clone();
    let mut sample = move || -> Result<Option<View>, String> {
        let state: ServiceState = client.get(path::STATE).map_err(|e| e.to_string())?;
        // A daemon without counters (an older one) still gives the state view's.
        let metrics: Option<Metrics> = client.get(path::METRICS).ok();
        Ok(model.update(
            Sample {
                at: Instant::now(),
                state,
                metrics,
            },
            only.as_deref(),
        ))
    };
    let terminal = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if terminal && !args.plain && args.count.is_none() {
        return match tui::run(args.interval, sample) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portshare top: the terminal failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    plain_loop(&args, &mut sample)
}

/// Prints a refresh per interval until `--count` is reached, or forever. A daemon that
/// cannot be reached is said on stderr, and the next interval tries again; with `--count`,
/// the command then fails.
fn plain_loop(args: &Args, sample: &mut impl FnMut() -> Result<Option<View>, String>) -> ExitCode {
    let mut printed = 0;
    let mut failed = false;
    let mut next = Instant::now();
    while args.count.is_none_or(|n| printed < n) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += args.interval;
        match sample() {
            Ok(Some(view)) => {
                crate::print(&plain::lines(&view, SystemTime::now()));
                printed += 1;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("portshare top: {e}");
                failed = true;
                if args.count.is_some() {
                    break;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
