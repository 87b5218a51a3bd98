//! The scale lab: registers many URLs on one queue over one control connection, one
//! request each, then removes them the same way, and prints the time each step of them
//! took and, given the daemon's PID, its resident memory.
//!
//! ```sh
//! cargo build --release --bin portshare --example registrations
//! target/release/portshare serve --iplisten 127.0.0.1 --control /tmp/ps.sock &
//! target/release/examples/registrations --control /tmp/ps.sock --pid $! \
//!     --count 100000 --port 8080
//! ```
//!
//! The URLs are `http://+:PORT/tenantN/app/`, as a host of many tenants registers them.
//! `--batch N` sends N of them a request (`POST` and `DELETE /v1/queues/{name}/urls` with a
//! list).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use portshare_client::Control;
use portshare_proto::control::{AddUrl, QueueSpec};

/// Registers and removes many URLs, timing each step.
#[derive(Parser)]
struct Args {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// The daemon's PID, for its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// How many URLs.
    #[arg(long, default_value_t = 100_000)]
    count: u32,
    /// Report after every STEP of them.
    #[arg(long, default_value_t = 10_000)]
    step: u32,
    /// The port of the URLs.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The queue's name.
    #[arg(long, default_value = "tenants")]
    queue: String,
    /// Keep the URLs registered and wait for Ctrl-C instead of removing them.
    #[arg(long)]
    keep: bool,
    /// Put each URL on a queue of its own (QUEUE-N), created just before it: COUNT queues.
    #[arg(long, conflicts_with = "batch")]
    queue_each: bool,
    /// Register and remove this many URLs a request (a batch) instead of one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registrations: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), portshare_client::Error> {
    let mut control = Control::connect(&args.control).await?;
    let queue = |n: u32| match args.queue_each {
        true => format!("{}-{n}", args.queue),
        false => args.queue.clone(),
    };
    let create = |n: u32| QueueSpec {
        name: Some(queue(n)),
        ..QueueSpec::default()
    };
    if !args.queue_each {
        control.create_queue(&create(0)).await?;
    }
    let rss_before = rss_kib(args.pid);
    let url = |n: u32| format!("http://+:{}/tenant{n}/app/", args.port);

    println!("add: registrations so far | seconds for the last step | µs each | RSS MiB");
    let mut report = Report::new(args, rss_before);
    for first in (0..args.count).step_by(args.batch as usize) {
        let end = (first + args.batch).min(args.count);
        if args.queue_each {
            control.create_queue(&create(first)).await?;
        }
        let adds: Vec<AddUrl> = (first..end)
            .map(|n| AddUrl {
                url: url(n),
                context: u64::from(n),
            })
            .collect();
        control.add_urls(&queue(first), &adds).await?;
        report.done(end - first, end);
    }
    let added = report.total();

    if args.keep {
        println!("{} URLs registered; Ctrl-C ends", args.count);
        let _ = tokio::signal::ctrl_c().await;
        return Ok(());
    }

    println!("remove: registrations left | seconds for the last step | µs each | RSS MiB");
    let mut report = Report::new(args, rss_before);
    for first in (0..args.count).step_by(args.batch as usize) {
        let end = (first + args.batch).min(args.count);
        let urls: Vec<String> = (first..end).map(url).collect();
        control.remove_urls(&queue(first), &urls).await?;
        report.done(end - first, args.count - end);
    }
    let removed = report.total();
    println!(
        "{} URLs: added in {:.2} s, removed in {:.2} s",
        args.count,
        added.as_secs_f64(),
        removed.as_secs_f64()
    );
    Ok(())
}

/// Times each step of a run.
struct Report {
    step: u32,
    pid: Option<u32>,
    rss_before: Option<u64>,
    start: Instant,
    last: Instant,
    done: u32,
    last_done: u32,
}

impl Report {
    fn new(args: &Args, rss_before: Option<u64>) -> Report {
        let now = Instant::now();
        Report {
            step: args.step.max(1),
            pid: args.pid,
            rss_before,
            start: now,
            last: now,
            done: 0,
            last_done: 0,
        }
    }

    /// `more` done; `mark` is what the line shows (the count so far, or left). A line each
    /// time the count passes a multiple of the step.
    fn done(&mut self, more: u32, mark: u32) {
        let before = self.done;
        self.done += more;
        if self.done / self.step == before / self.step {
            return;
        }
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        let rss = match (rss_kib(self.pid), self.rss_before) {
            (Some(now), Some(before)) => format!(
                "{:.1} (+{:.1})",
                now as f64 / 1024.0,
                now.saturating_sub(before) as f64 / 1024.0
            ),
            _ => "-".to_owned(),
        };
        let since = self.done - self.last_done;
        self.last_done = self.done;
        println!(
            "{mark:>8} | {:>7.3} | {:>7.1} | {rss}",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / f64::from(since)
        );
    }

    fn total(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
