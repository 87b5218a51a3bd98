//! `portshare show`: what a running daemon holds, in the shapes of `netsh http show`.

use std::fmt::Write as _;
use std::process::ExitCode;

use portshare_proto::control::{
    AccessEntry, AccountKind, IpListenList, QueueState, ReservationInfo, ServiceState, Source,
    StateFilter, UrlAclList, Verbosity, path,
};
use portshare_proto::text::{count, printable};
use serde::de::DeserializeOwned;

use crate::client::{Client, ControlArg};

/// Arguments of `portshare show`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    what: What,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Listeners, bind failures, queues with their URLs and processes, reservations
    /// (`netsh http show servicestate`).
    Servicestate {
        /// Print the daemon's JSON state view.
        #[arg(long)]
        json: bool,
        /// Only this queue and its URLs.
        #[arg(long, value_name = "NAME")]
        queue: Option<String>,
        /// Only URLs on this port, the queues holding them, and the port's sockets and
        /// reservations.
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Only URLs beginning with this text (as `show servicestate` prints them), the
        /// queues holding them, and the reservations beginning with it.
        #[arg(long, value_name = "PREFIX")]
        url: Option<String>,
    },
    /// URL reservations (`netsh http show urlacl`).
    Urlacl {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// The IP listen list (`netsh http show iplisten`).
    Iplisten {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Certificate bindings (`netsh http show sslcert`).
    Sslcert {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// One sample of the counters: per queue, site and port (`typeperf`).
    Counters {
        /// Print the daemon's JSON answer (`GET /v1/metrics`).
        #[arg(long)]
        json: bool,
        /// Only this queue (`~uid:N` for an account's unnamed queues).
        #[arg(long, value_name = "NAME")]
        queue: Option<String>,
    },
}

pub(crate) fn run(args: Args) -> ExitCode {
    let client = args.control.client();
    match args.what {
        What::Servicestate {
            json,
            queue,
            port,
            url,
        } => show(
            &client,
            "show servicestate",
            &StateFilter { queue, port, url }.path(),
            json,
            servicestate_text,
        ),
        What::Urlacl { json } => show(&client, "show urlacl", path::URLACL, json, urlacl_text),
        What::Iplisten { json } => show(
            &client,
            "show iplisten",
            path::IPLISTEN,
            json,
            iplisten_text,
        ),
        What::Sslcert { json } => sslcert(&client, json),
        What::Counters { json, queue } => crate::counters::run(&client, json, queue.as_deref()),
    }
}

/// `show sslcert` (also `sslcert show`).
pub(crate) fn sslcert(client: &Client, json: bool) -> ExitCode {
    show(
        client,
        "show sslcert",
        path::SSLCERT,
        json,
        crate::sslcert::list_text,
    )
}

/// Fetches `target` and prints it as pretty JSON or through `render`.
fn show<T: DeserializeOwned>(
    client: &Client,
    verb: &str,
    target: &str,
    json: bool,
    render: fn(&T) -> String,
) -> ExitCode {
    let out = if json {
        // The daemon's JSON as it is, in its order, fields this build does not know included.
        client.get_json_text(target).map(|v| pretty(&v) + "\n")
    } else {
        client.get::<T>(target).map(|v| render(&v))
    };
    match out {
        Ok(text) => {
            crate::print(&text);
            ExitCode::SUCCESS
        }
        Err(e) => e.report(verb),
    }
}

/// `show servicestate`: the daemon, its sockets, each queue, the reservations.
pub(crate) fn servicestate_text(s: &ServiceState) -> String {
    let mut out = String::new();
    let title = "Snapshot of Portshare service state";
    let _ = writeln!(out, "{title}\n{}\n", "-".repeat(title.len()));
    let _ = writeln!(out, "Version: {}", s.version);
    let pid = match s.pid {
        0 => "unknown".to_owned(),
        pid => pid.to_string(),
    };
    let _ = writeln!(out, "Process ID: {pid}");
    let list = if s.iplisten.is_empty() {
        "(empty: every address, 0.0.0.0 and ::)".to_owned()
    } else {
        s.iplisten.join(", ")
    };
    let _ = writeln!(out, "IP listen list: {list}");
    if let Some(f) = &s.filter {
        let mut shown = Vec::new();
        if let Some(q) = &f.queue {
            shown.push(format!("queue {}", printable(q)));
        }
        if let Some(p) = f.port {
            shown.push(format!("port {p}"));
        }
        if let Some(u) = &f.url {
            shown.push(format!("URLs beginning {}", printable(u)));
        }
        let _ = writeln!(out, "Shown: {} (a filtered view)", shown.join(", "));
    }
    if s.access_log_dropped > 0 {
        let _ = writeln!(
            out,
            "Access log lines dropped: {} (a slow or full disk, or a file the daemon could not \
             use: see its log)",
            s.access_log_dropped
        );
    }
    if let Some(b) = &s.budget {
        let _ = writeln!(
            out,
            "\nDescriptor budget (open-file limit {}):",
            b.open_files
        );
        let _ = writeln!(
            out,
            "    Client connections: {} of {}",
            b.clients.open, b.clients.max
        );
        let _ = writeln!(
            out,
            "    Control connections: {} of {} (the last {} for administrators)",
            b.control.open, b.control.max, b.control_admin
        );
        let _ = writeln!(
            out,
            "    Upstream connections: {} of {} (at most {} for one account's queues)",
            b.upstream.open,
            b.upstream.max,
            (b.upstream.max / 4).max(1)
        );
        let _ = writeln!(
            out,
            "    Listening sockets: {} of {}",
            b.listeners.open, b.listeners.max
        );
    }

    let _ = writeln!(out, "\nListeners:");
    if s.listeners.is_empty() && s.filter.is_some() {
        let _ = writeln!(out, "    (none shown)");
    } else if s.listeners.is_empty() {
        let _ = match s.prefixes.len() {
            0 => writeln!(out, "    (none: no URL is registered)"),
            n => writeln!(
                out,
                "    (none: {} registered, but no address {} is bound; the reason is under each \
                 URL below)",
                count(n as u64, "URL is", "URLs are"),
                if n == 1 { "it needs" } else { "they need" },
            ),
        };
    }
    for l in &s.listeners {
        let _ = writeln!(
            out,
            "    {}, open connections: {}",
            l.address, l.connections
        );
    }

    let _ = writeln!(out, "\nBind failures:");
    if s.bind_failures.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for f in &s.bind_failures {
        let _ = writeln!(out, "    {}\n        {}", f.address, f.error);
    }

    // What the daemon holds of workers' responses, not yet written to clients.
    let b = &s.buffers;
    let _ = writeln!(out, "\nWorker response buffers:");
    let _ = writeln!(
        out,
        "    Held (bytes): {}, peak: {}, bound now: {}",
        b.bytes, b.peak, b.bound
    );
    let _ = writeln!(
        out,
        "    Shared bound: {}; per worker connection: at most {}, always {}",
        b.shared_bound, b.worker_bound, b.worker_floor
    );

    let _ = writeln!(out, "\nRequest queues:");
    if s.queues.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for (i, q) in s.queues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        queue_text(&mut out, s, q);
    }
    // A prefix whose queue the view does not list: not expected, but never hidden.
    let orphans: Vec<_> = s
        .prefixes
        .iter()
        .filter(|p| !s.queues.iter().any(|q| q.name == p.queue))
        .collect();
    if !orphans.is_empty() {
        let _ = writeln!(out, "\nRegistered URLs of queues not listed:");
        for p in orphans {
            let _ = writeln!(out, "    {} (queue {})", p.url, p.queue);
        }
    }

    let _ = writeln!(out, "\nURL reservations (taking part in routing):");
    if s.reservations.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for r in &s.reservations {
        let _ = writeln!(out, "    {r}");
    }
    out
}

/// One entry of a queue's access list: `user alice: attach, register`.
pub(crate) fn access_line(a: &AccessEntry) -> String {
    let kind = match a.kind {
        AccountKind::User => "user",
        AccountKind::Group => "group",
    };
    let rights: Vec<&str> = [(a.attach, "attach"), (a.register, "register")]
        .into_iter()
        .filter_map(|(on, r)| on.then_some(r))
        .collect();
    format!("{kind} {}: {}", printable(&a.name), rights.join(", "))
}

fn queue_text(out: &mut String, s: &ServiceState, q: &QueueState) {
    let _ = writeln!(out, "    Request queue name: {}", printable(&q.name));
    let mut state = if q.enabled { "Active" } else { "Disabled" }.to_owned();
    if q.lingering {
        let _ = write!(
            state,
            ", lingering (no process holds it; kept {} ms in all)",
            q.linger_ms
        );
    }
    let _ = writeln!(out, "        State: {state}");
    let owner = if q.owner_user.is_empty() {
        format!("uid:{}", q.owner_uid)
    } else {
        q.owner_user.clone()
    };
    if q.config {
        let _ = writeln!(
            out,
            "        Owner: the daemon, {} (uid {}): declared in the configuration file",
            printable(&owner),
            q.owner_uid
        );
    } else {
        let _ = writeln!(
            out,
            "        Owner: {} (uid {})",
            printable(&owner),
            q.owner_uid
        );
    }
    if !q.access.is_empty() {
        let _ = writeln!(out, "        Access:");
    }
    for a in &q.access {
        let _ = writeln!(out, "            {}", access_line(a));
    }
    let _ = writeln!(
        out,
        "        Request queue 503 verbosity level: {}",
        verbosity_name(q.verbosity)
    );
    let _ = writeln!(out, "        Max requests: {}", q.length);
    let _ = writeln!(out, "        Requests waiting: {}", q.depth);
    let _ = writeln!(out, "        Requests in flight: {}", q.in_flight);
    let _ = writeln!(out, "        Opaque connections: {}", q.opaque);
    let _ = writeln!(
        out,
        "        Oldest waiting request age (ms): {}",
        q.oldest_wait_ms
    );
    // netsh prints a URL group's 0 for "the service's value"; this prints the value in force
    // and whose it is.
    let l = &q.limits;
    let service = s.service_timers;
    let timer = |own: u64, service: Option<u64>| match (own, service) {
        (0, Some(v)) => format!("{} (service)", secs(v)),
        (0, None) => "0 (the service's)".to_owned(),
        (v, _) => format!("{} (queue)", secs(v)),
    };
    let queue_timer = if l.request_queue_ms == 0 && service.is_none() {
        // A daemon that does not say whose it is: the value in force, as it reports it.
        secs(q.queue_timer_ms)
    } else {
        timer(l.request_queue_ms, service.map(|t| t.request_queue_ms))
    };
    let _ = writeln!(out, "        Request queue timeout (secs): {queue_timer}");
    let _ = writeln!(
        out,
        "        Entity body timeout (secs): {}",
        timer(l.entity_body_ms, service.map(|t| t.entity_body_ms))
    );
    let _ = writeln!(
        out,
        "        Drain entity body timeout (secs): {}",
        timer(
            l.drain_entity_body_ms,
            service.map(|t| t.drain_entity_body_ms)
        )
    );
    let rate = |r: u32| match r {
        u32::MAX => "not checked (4294967295)".to_owned(),
        r => r.to_string(),
    };
    let min_send_rate = match (l.min_send_rate, service) {
        (0, Some(t)) => format!("{} (service)", rate(t.min_send_rate)),
        (0, None) => "0 (the service's)".to_owned(),
        (r, _) => format!("{} (queue)", rate(r)),
    };
    let _ = writeln!(
        out,
        "        Minimum send rate (bytes/sec): {min_send_rate}"
    );
    let max = match (l.max_connections, service) {
        (0, Some(t)) => format!(
            "no limit of its own (service: {})",
            if t.max_connections >= u64::from(u32::MAX) {
                "no limit".to_owned()
            } else {
                t.max_connections.to_string()
            }
        ),
        (0, None) => "no limit of its own".to_owned(),
        (n, _) => format!("{n} (queue)"),
    };
    let _ = writeln!(out, "        Max connections: {max}");
    let _ = writeln!(out, "        Max opaque connections: {}", l.max_opaque);
    let _ = writeln!(out, "        Connections: {}", q.connections);
    let _ = writeln!(out, "        Linger time (ms): {}", q.linger_ms);
    if let Some(up) = &q.upstream {
        let state = if q.held {
            "held (requests wait until it is ready)"
        } else {
            "ready"
        };
        let _ = writeln!(out, "        Upstream: {up}, {state}");
    }
    if let Some(why) = &q.upstream_refused {
        let _ = writeln!(out, "        Upstream refused: {why}");
    }
    if let Some(port) = q.https_redirect {
        let _ = writeln!(out, "        Redirects to https, port: {port}");
    }
    let c = &q.counters;
    let _ = writeln!(out, "        Counters:");
    for (name, value) in [
        ("Delivered", c.delivered),
        ("Refused, queue full", c.queue_full),
        ("Refused, queue disabled", c.disabled),
        ("Timed out waiting", c.timed_out),
        ("Abandoned", c.abandoned),
        ("Refused, connection limit", c.conn_limit),
    ] {
        let _ = writeln!(out, "            {name}: {value}");
    }
    let _ = writeln!(out, "        Number of registered URLs: {}", q.urls.len());
    if !q.urls.is_empty() {
        let _ = writeln!(out, "        Registered URLs:");
    }
    for url in &q.urls {
        let prefix = s.prefixes.iter().find(|p| &p.url == url);
        match prefix.and_then(|p| p.warning.as_deref()) {
            Some(warning) => {
                let _ = writeln!(out, "            {url}  [NOT LISTENING]");
                let _ = writeln!(out, "                {warning}");
            }
            None => {
                let _ = writeln!(out, "            {url}");
            }
        }
    }
    if q.processes_hidden {
        let _ = writeln!(
            out,
            "        Processes attached: shown to its owner, its grantees and administrators"
        );
    } else {
        let _ = writeln!(
            out,
            "        Number of active processes attached: {}",
            q.processes.len()
        );
    }
    if !q.processes.is_empty() {
        let _ = writeln!(out, "        Processes:");
    }
    for p in &q.processes {
        let user = if p.user.is_empty() {
            format!("uid:{}", p.uid)
        } else {
            p.user.clone()
        };
        let _ = writeln!(
            out,
            "            ID: {}, user: {}, slots: {}, busy: {}, buffered bytes: {}",
            p.pid,
            printable(&user),
            p.slots,
            p.busy,
            p.buffered
        );
        let _ = writeln!(
            out,
            "                Command line: {}",
            printable(&p.command)
        );
    }
}

/// `show urlacl`: netsh's layout, one block per reservation.
pub(crate) fn urlacl_text(list: &UrlAclList) -> String {
    let mut out = String::from("URL Reservations:\n-----------------\n\n");
    if list.reservations.is_empty() {
        let _ = writeln!(
            out,
            "    (no explicit reservations: root and the admin group hold every URL; others \
             may register\n    only http://localhost or loopback addresses above port 1024)\n"
        );
    }
    for r in &list.reservations {
        out.push_str(&reservation_text(r));
    }
    match &list.admin_group {
        Some(group) => {
            let _ = writeln!(
                out,
                "Admin group: {group} (its members hold the implicit root reservations, as \
                 root does)"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Admin group: (none: only root holds the implicit root reservations)"
            );
        }
    }
    out
}

/// One reservation, as `show urlacl` and `urlacl add` print it.
pub(crate) fn reservation_text(r: &ReservationInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "    Reserved URL            : {}", r.url);
    for e in &r.entries {
        let kind = match e.kind {
            AccountKind::User => "User",
            AccountKind::Group => "Group",
        };
        let _ = writeln!(out, "        {kind}: {}", e.name);
        let _ = writeln!(out, "            Listen: {}", yes_no(e.listen));
        let _ = writeln!(out, "            Delegate: {}", yes_no(e.delegate));
    }
    let _ = writeln!(out, "        Source: {}\n", source_name(r.source));
    out
}

/// `show iplisten`: netsh's heading, then the addresses.
pub(crate) fn iplisten_text(list: &IpListenList) -> String {
    let title = "IP addresses present in the IP listen list:";
    let mut out = format!("{title}\n{}\n\n", "-".repeat(title.len()));
    if list.addresses.is_empty() {
        let _ = writeln!(
            out,
            "    (none: the daemon listens on every address, 0.0.0.0 and ::)"
        );
    }
    let width = list
        .addresses
        .iter()
        .map(|a| a.address.len())
        .max()
        .unwrap_or(0);
    for a in &list.addresses {
        let _ = writeln!(
            out,
            "    {:<width$}  ({})",
            a.address,
            source_name(a.source)
        );
    }
    if !list.overridden_by.is_empty() {
        let _ = writeln!(
            out,
            "\nOverridden: the daemon was started with --iplisten {}; it listens there, and \
             the list\nabove applies once it restarts without --iplisten.",
            list.overridden_by.join(" --iplisten ")
        );
    }
    out.push('\n');
    out
}

/// Indents valid JSON text as `serde_json`'s pretty printer does, keeping its key order
/// (a `Value` would sort the keys).
fn pretty(json: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    }
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    if c == '\\' {
                        out.extend(chars.next());
                    } else if c == '"' {
                        break;
                    }
                }
            }
            '{' | '[' => {
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.next_if_eq(&close).is_some() {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

pub(crate) fn source_name(s: Source) -> &'static str {
    match s {
        Source::Config => "config",
        Source::State => "state",
    }
}

/// netsh's capitalised names.
fn verbosity_name(v: Verbosity) -> &'static str {
    match v {
        Verbosity::Basic => "Basic",
        Verbosity::Limited => "Limited",
        Verbosity::Full => "Full",
    }
}

/// Milliseconds as seconds, with decimals only when needed.
fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
            .trim_end_matches('0')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use portshare_proto::Win32Error;
    use portshare_proto::control::{
        AclEntry, ApiError, BindFailure, BudgetShare, BufferGauge, DescriptorBudget, IpListenEntry,
        ListenerState, PrefixState, ProcessState, QueueCounters, QueueLimits, ServiceTimers,
    };

    use super::*;

    fn state() -> ServiceState {
        ServiceState {
            version: "0.1.0".into(),
            pid: 4242,
            iplisten: vec!["127.0.0.1".into()],
            listeners: vec![ListenerState {
                address: "127.0.0.1:8080".into(),
                connections: 2,
            }],
            bind_failures: vec![BindFailure {
                address: "127.0.0.1:80".into(),
                error: ApiError::new(
                    Win32Error::SharingViolation,
                    "127.0.0.1:80 is held by PID 77 (nginx: master), user root",
                ),
            }],
            prefixes: vec![
                PrefixState {
                    url: "http://+:8080/app/".into(),
                    queue: "app".into(),
                    context: 0,
                    listening: vec!["127.0.0.1:8080".into()],
                    warning: None,
                },
                PrefixState {
                    url: "http://10.9.9.9:8080/x/".into(),
                    queue: "app".into(),
                    context: 0,
                    listening: vec![],
                    warning: Some("10.9.9.9 is not in the IP listen list".into()),
                },
            ],
            reservations: vec!["http://+:80/reserved/".into()],
            queues: vec![QueueState {
                name: "app".into(),
                owner_uid: 1000,
                owner_user: "alice".into(),
                length: 1000,
                verbosity: Verbosity::Limited,
                enabled: false,
                linger_ms: 5000,
                queue_timer_ms: 1500,
                limits: QueueLimits {
                    max_opaque: 10000,
                    request_queue_ms: 1500,
                    ..QueueLimits::default()
                },
                connections: 0,
                lingering: true,
                config: false,
                access: Vec::new(),
                upstream: None,
                held: false,
                upstream_refused: None,
                https_redirect: None,
                depth: 3,
                oldest_wait_ms: 250,
                in_flight: 1,
                opaque: 1,
                urls: vec![
                    "http://+:8080/app/".into(),
                    "http://10.9.9.9:8080/x/".into(),
                ],
                processes: vec![ProcessState {
                    pid: 2668,
                    uid: 1000,
                    user: "alice".into(),
                    command: "/usr/bin/hello --name app".into(),
                    slots: 64,
                    busy: 1,
                    buffered: 4096,
                    served: 0,
                }],
                processes_hidden: false,
                counters: QueueCounters {
                    delivered: 10,
                    queue_full: 1,
                    disabled: 2,
                    timed_out: 3,
                    abandoned: 4,
                    conn_limit: 5,
                },
            }],
            budget: Some(DescriptorBudget {
                open_files: 65536,
                clients: BudgetShare {
                    max: 44992,
                    open: 2,
                },
                control: BudgetShare { max: 8192, open: 5 },
                control_admin: 512,
                upstream: BudgetShare { max: 8192, open: 0 },
                listeners: BudgetShare { max: 2080, open: 1 },
                reserve: 4160,
            }),
            buffers: BufferGauge {
                bytes: 4096,
                peak: 300000,
                bound: 17104896,
                shared_bound: 16777216,
                worker_bound: 4194304,
                worker_floor: 327680,
            },
            url_limits: None,
            service_timers: Some(ServiceTimers {
                request_queue_ms: 120_000,
                entity_body_ms: 120_000,
                drain_entity_body_ms: 60_000,
                min_send_rate: 150,
                max_connections: 44992,
            }),
            access_log_dropped: 7,
            filter: None,
        }
    }

    #[test]
    fn servicestate_reads_like_netsh() {
        let text = servicestate_text(&state());
        let expected = "\
Snapshot of Portshare service state
-----------------------------------

Version: 0.1.0
Process ID: 4242
IP listen list: 127.0.0.1
Access log lines dropped: 7 (a slow or full disk, or a file the daemon could not use: see its log)

Descriptor budget (open-file limit 65536):
    Client connections: 2 of 44992
    Control connections: 5 of 8192 (the last 512 for administrators)
    Upstream connections: 0 of 8192 (at most 2048 for one account's queues)
    Listening sockets: 1 of 2080

Listeners:
    127.0.0.1:8080, open connections: 2

Bind failures:
    127.0.0.1:80
        127.0.0.1:80 is held by PID 77 (nginx: master), user root (32 ERROR_SHARING_VIOLATION)

Worker response buffers:
    Held (bytes): 4096, peak: 300000, bound now: 17104896
    Shared bound: 16777216; per worker connection: at most 4194304, always 327680

Request queues:
    Request queue name: app
        State: Disabled, lingering (no process holds it; kept 5000 ms in all)
        Owner: alice (uid 1000)
        Request queue 503 verbosity level: Limited
        Max requests: 1000
        Requests waiting: 3
        Requests in flight: 1
        Opaque connections: 1
        Oldest waiting request age (ms): 250
        Request queue timeout (secs): 1.5 (queue)
        Entity body timeout (secs): 120 (service)
        Drain entity body timeout (secs): 60 (service)
        Minimum send rate (bytes/sec): 150 (service)
        Max connections: no limit of its own (service: 44992)
        Max opaque connections: 10000
        Connections: 0
        Linger time (ms): 5000
        Counters:
            Delivered: 10
            Refused, queue full: 1
            Refused, queue disabled: 2
            Timed out waiting: 3
            Abandoned: 4
            Refused, connection limit: 5
        Number of registered URLs: 2
        Registered URLs:
            http://+:8080/app/
            http://10.9.9.9:8080/x/  [NOT LISTENING]
                10.9.9.9 is not in the IP listen list
        Number of active processes attached: 1
        Processes:
            ID: 2668, user: alice, slots: 64, busy: 1, buffered bytes: 4096
                Command line: /usr/bin/hello --name app

URL reservations (taking part in routing):
    http://+:80/reserved/
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_filtered_servicestate_says_so() {
        let mut s = state();
        s.listeners.clear();
        s.filter = Some(StateFilter {
            queue: Some("app".into()),
            port: Some(8080),
            url: Some("http://+:8080/a".into()),
        });
        let text = servicestate_text(&s);
        assert!(
            text.contains(
                "Shown: queue app, port 8080, URLs beginning http://+:8080/a (a filtered view)\n"
            ),
            "{text}"
        );
        assert!(text.contains("Listeners:\n    (none shown)\n"), "{text}");
        assert!(!servicestate_text(&state()).contains("Shown:"));
    }

    #[test]
    fn servicestate_says_why_registered_urls_have_no_listener() {
        let mut s = state();
        s.listeners.clear();
        let text = servicestate_text(&s);
        assert!(
            text.contains(
                "Listeners:\n    (none: 2 URLs are registered, but no address they need is \
                 bound; the reason is under each URL below)\n"
            ),
            "{text}"
        );
        s.prefixes.truncate(1);
        let text = servicestate_text(&s);
        assert!(
            text.contains("(none: 1 URL is registered, but no address it needs is bound;"),
            "{text}"
        );
    }

    #[test]
    fn servicestate_of_an_idle_daemon_keeps_every_section() {
        let text = servicestate_text(&ServiceState {
            version: "0.1.0".into(),
            ..ServiceState::default()
        });
        for line in [
            "Process ID: unknown",
            "IP listen list: (empty: every address, 0.0.0.0 and ::)",
            "Listeners:\n    (none: no URL is registered)",
            "Bind failures:\n    (none)",
            "Request queues:\n    (none)",
            "URL reservations (taking part in routing):\n    (none)",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn servicestate_without_user_names_shows_uids() {
        let mut s = state();
        s.queues[0].owner_user.clear();
        s.queues[0].processes[0].user.clear();
        s.queues[0].enabled = true;
        s.queues[0].lingering = false;
        s.queues[0].upstream = Some("unix:/run/legacy.sock".into());
        let text = servicestate_text(&s);
        assert!(text.contains("        State: Active\n"), "{text}");
        assert!(text.contains("Owner: uid:1000 (uid 1000)"), "{text}");
        assert!(text.contains("ID: 2668, user: uid:1000,"), "{text}");
        assert!(
            text.contains("        Upstream: unix:/run/legacy.sock, ready\n"),
            "{text}"
        );
        s.queues[0].held = true;
        let text = servicestate_text(&s);
        assert!(
            text.contains(
                "        Upstream: unix:/run/legacy.sock, held (requests wait until it is ready)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn urlacl_reads_like_netsh() {
        let list = UrlAclList {
            reservations: vec![ReservationInfo {
                url: "http://+:80/app/".into(),
                entries: vec![
                    AclEntry {
                        kind: AccountKind::User,
                        name: "alice".into(),
                        listen: true,
                        delegate: false,
                    },
                    AclEntry {
                        kind: AccountKind::Group,
                        name: "web".into(),
                        listen: true,
                        delegate: true,
                    },
                ],
                source: Source::Config,
                warnings: vec![],
            }],
            admin_group: Some("portshare-admin".into()),
        };
        let expected = "\
URL Reservations:
-----------------

    Reserved URL            : http://+:80/app/
        User: alice
            Listen: Yes
            Delegate: No
        Group: web
            Listen: Yes
            Delegate: Yes
        Source: config

Admin group: portshare-admin (its members hold the implicit root reservations, as root does)
";
        assert_eq!(urlacl_text(&list), expected);
    }

    #[test]
    fn urlacl_empty() {
        let text = urlacl_text(&UrlAclList::default());
        assert!(text.contains("(no explicit reservations"), "{text}");
        assert!(text.contains("Admin group: (none"), "{text}");
    }

    #[test]
    fn iplisten_reads_like_netsh() {
        let list = IpListenList {
            addresses: vec![
                IpListenEntry {
                    address: "127.0.0.1".into(),
                    source: Source::Config,
                },
                IpListenEntry {
                    address: "::1".into(),
                    source: Source::State,
                },
            ],
            overridden_by: vec![],
            warnings: vec![],
        };
        let expected = "\
IP addresses present in the IP listen list:
-------------------------------------------

    127.0.0.1  (config)
    ::1        (state)

";
        assert_eq!(iplisten_text(&list), expected);
    }

    #[test]
    fn iplisten_empty_and_overridden() {
        let text = iplisten_text(&IpListenList {
            addresses: vec![],
            overridden_by: vec!["127.0.0.1".into(), "::1".into()],
            warnings: vec![],
        });
        assert!(
            text.contains("    (none: the daemon listens on every address, 0.0.0.0 and ::)"),
            "{text}"
        );
        assert!(
            text.contains("started with --iplisten 127.0.0.1 --iplisten ::1;"),
            "{text}"
        );
    }

    #[test]
    fn pretty_json_keeps_the_order_and_matches_serde() {
        let raw = r#" {"z": [1, {"b":"x\"]}","a":[]}], "a" :{}, "s":"\\", "n":null}"#;
        assert_eq!(
            pretty(raw),
            "{\n  \"z\": [\n    1,\n    {\n      \"b\": \"x\\\"]}\",\n      \"a\": []\n    }\n  ],\n  \
             \"a\": {},\n  \"s\": \"\\\\\",\n  \"n\": null\n}"
        );
        let sorted = serde_json::to_string(&state()).expect("JSON");
        let value: serde_json::Value = serde_json::from_str(&sorted).expect("JSON");
        let pretty_value = format!("{value:#}");
        let compact_value = value.to_string();
        assert_eq!(pretty(&compact_value), pretty_value);
    }

    #[test]
    fn seconds() {
        for (ms, text) in [(0, "0"), (120_000, "120"), (1500, "1.5"), (1, "0.001")] {
            assert_eq!(secs(ms), text, "{ms}");
        }
    }
}
