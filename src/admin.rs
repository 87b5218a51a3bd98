//! The verbs that change a running daemon (`urlacl`, `iplisten`, `queue`, `reload`), and
//! `check-config`, which reads a configuration file the way the daemon will, offline.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use portshare_proto::control::{
    AccessEntry, AccountKind, AddReservation, GrantAccess, IpListenChange, IpListenList, QueueInfo,
    QueueProps, ReloadReport, RemoveReservation, ReservationInfo, Verbosity, path,
};

use portshare_proto::text::printable;

use crate::client::ControlArg;
use crate::show::{access_line, iplisten_text, reservation_text};

/// Arguments of `portshare urlacl`.
#[derive(Debug, clap::Args)]
pub(crate) struct UrlaclArgs {
    #[command(subcommand)]
    verb: UrlaclVerb,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Debug, clap::Subcommand)]
enum UrlaclVerb {
    /// Reserve a URL prefix for users or groups (`netsh http add urlacl`); kept in the
    /// daemon's state file.
    Add(UrlaclAdd),
    /// Remove a reservation added with `urlacl add` (`netsh http delete urlacl`).
    Delete {
        /// The reserved URL prefix, such as http://+:80/app/.
        #[arg(value_name = "URL")]
        url: String,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("who").required(true).multiple(true).args(["users", "groups"])
))]
struct UrlaclAdd {
    /// The URL prefix to reserve, such as http://+:80/app/.
    #[arg(value_name = "URL")]
    url: String,
    /// A user granted the rights: a name or uid:N (repeatable).
    #[arg(long = "user", value_name = "NAME")]
    users: Vec<String>,
    /// A group granted the rights, every member of it: a name or gid:N (repeatable).
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// May register URLs under the reservation.
    #[arg(long, value_enum, value_name = "yes|no", default_value_t = YesNo::Yes)]
    listen: YesNo,
    /// May add reservations under it.
    #[arg(long, value_enum, value_name = "yes|no", default_value_t = YesNo::No)]
    delegate: YesNo,
}

/// netsh's `yes|no` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum YesNo {
    Yes,
    No,
}

impl YesNo {
    fn get(self) -> bool {
        self == YesNo::Yes
    }
}

/// Arguments of `portshare iplisten`.
#[derive(Debug, clap::Args)]
pub(crate) struct IplistenArgs {
    #[command(subcommand)]
    verb: IplistenVerb,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Debug, clap::Subcommand)]
enum IplistenVerb {
    /// Add an address to the IP listen list (`netsh http add iplisten`); kept in the
    /// daemon's state file.
    Add {
        /// An IPv4 or IPv6 address, no port.
        #[arg(value_name = "ADDR")]
        address: IpAddr,
    },
    /// Remove an address added with `iplisten add` (`netsh http delete iplisten`).
    Delete {
        /// An IPv4 or IPv6 address, no port.
        #[arg(value_name = "ADDR")]
        address: IpAddr,
    },
}

/// Arguments of `portshare queue`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueueArgs {
    #[command(subcommand)]
    verb: QueueVerb,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Debug, clap::Subcommand)]
enum QueueVerb {
    /// Let a disabled queue take requests again.
    Enable {
        /// The queue's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Refuse the queue's new requests with 503 (or a reset, per its verbosity); waiting
    /// and running requests carry on.
    Disable {
        /// The queue's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Let other users or groups use the queue (its owner or an administrator): `attach`
    /// receives its requests, `register` adds URLs to it under the grantee's own URL ACLs.
    /// Sets the named accounts' rights, replacing what they had.
    Grant(QueueGrant),
    /// Take every right on the queue from the named users and groups: their workers are
    /// detached and the URLs their connections added go.
    Revoke(QueueAccounts),
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("who").required(true).multiple(true).args(["users", "groups"])
))]
struct QueueAccounts {
    /// The queue's name.
    #[arg(value_name = "NAME")]
    name: String,
    /// A user: a name or uid:N (repeatable).
    #[arg(long = "user", value_name = "NAME")]
    users: Vec<String>,
    /// A group, every member of it: a name or gid:N (repeatable).
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct QueueGrant {
    #[command(flatten)]
    accounts: QueueAccounts,
    /// May attach workers: receive the queue's requests.
    #[arg(long, value_enum, value_name = "yes|no", default_value_t = YesNo::Yes)]
    attach: YesNo,
    /// May add URLs to the queue.
    #[arg(long, value_enum, value_name = "yes|no", default_value_t = YesNo::No)]
    register: YesNo,
}

impl QueueAccounts {
    /// One access entry per account, each with the same rights.
    fn entries(&self, attach: bool, register: bool) -> Vec<AccessEntry> {
        let entry = |kind, name: &String| AccessEntry {
            kind,
            name: name.clone(),
            attach,
            register,
        };
        self.users
            .iter()
            .map(|u| entry(AccountKind::User, u))
            .chain(self.groups.iter().map(|g| entry(AccountKind::Group, g)))
            .collect()
    }
}

/// Arguments of `portshare reload`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReloadArgs {
    #[command(flatten)]
    control: ControlArg,
}

/// Arguments of `portshare check-config`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckConfigArgs {
    /// The configuration file to read. Default: the one `portshare serve` reads without
    /// --config, /etc/portshare/portshare.toml.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

pub(crate) fn urlacl(args: UrlaclArgs) -> ExitCode {
    let client = args.control.client();
    match args.verb {
        UrlaclVerb::Add(add) => {
            let body = AddReservation {
                url: add.url,
                users: add.users,
                groups: add.groups,
                listen: add.listen.get(),
                delegate: add.delegate.get(),
            };
            match client.call::<ReservationInfo>("POST", path::URLACL, Some(&body)) {
                Ok(info) => {
                    warn("urlacl add", &info.warnings);
                    done(&format!(
                        "URL reservation successfully added\n\n{}",
                        reservation_text(&info)
                    ))
                }
                Err(e) => e.report("urlacl add"),
            }
        }
        UrlaclVerb::Delete { url } => {
            let body = RemoveReservation { url };
            match client.call::<()>("DELETE", path::URLACL, Some(&body)) {
                Ok(()) => done("URL reservation successfully deleted\n"),
                Err(e) => e.report("urlacl delete"),
            }
        }
    }
}

pub(crate) fn iplisten(args: IplistenArgs) -> ExitCode {
    let client = args.control.client();
    let (method, address, verb, what) = match args.verb {
        IplistenVerb::Add { address } => ("POST", address, "iplisten add", "added"),
        IplistenVerb::Delete { address } => ("DELETE", address, "iplisten delete", "deleted"),
    };
    let body = IpListenChange {
        address: address.to_string(),
    };
    match client.call::<IpListenList>(method, path::IPLISTEN, Some(&body)) {
        Ok(list) => {
            warn(verb, &list.warnings);
            done(&format!(
                "IP address successfully {what}\n\n{}",
                iplisten_text(&list)
            ))
        }
        Err(e) => e.report(verb),
    }
}

pub(crate) fn queue(args: QueueArgs) -> ExitCode {
    let client = args.control.client();
    let (name, enabled, verb) = match args.verb {
        QueueVerb::Enable { name } => (name, true, "queue enable"),
        QueueVerb::Disable { name } => (name, false, "queue disable"),
        QueueVerb::Grant(g) => {
            let entries = g.accounts.entries(g.attach.get(), g.register.get());
            return set_access(&client, &g.accounts.name, entries, "queue grant");
        }
        QueueVerb::Revoke(r) => {
            let entries = r.entries(false, false);
            return set_access(&client, &r.name, entries, "queue revoke");
        }
    };
    let props = QueueProps {
        enabled: Some(enabled),
        ..QueueProps::default()
    };
    let target = path::queue(&name, "");
    match client.call::<QueueInfo>("PATCH", &target, Some(&props)) {
        Ok(info) => done(&queue_text(&info)),
        Err(e) => e.report(verb),
    }
}

/// `queue grant` and `queue revoke`: prints the access list after the change.
fn set_access(
    client: &crate::client::Client,
    name: &str,
    entries: Vec<AccessEntry>,
    verb: &str,
) -> ExitCode {
    let target = path::queue(name, path::ACCESS);
    match client.call::<QueueInfo>("POST", &target, Some(&GrantAccess { entries })) {
        Ok(info) => done(&access_text(&info)),
        Err(e) => e.report(verb),
    }
}

/// A queue's access list, one account a line.
fn access_text(q: &QueueInfo) -> String {
    let mut out = format!("Request queue {}: access\n", printable(&q.name));
    if q.access.is_empty() {
        out.push_str("    (its owner alone)\n");
    }
    for a in &q.access {
        let _ = writeln!(out, "    {}", access_line(a));
    }
    out
}

pub(crate) fn reload(args: ReloadArgs) -> ExitCode {
    let client = args.control.client();
    match client.call::<ReloadReport>("POST", path::RELOAD, None::<&()>) {
        Ok(report) => done(&reload_text(&report)),
        Err(e) => e.report("reload"),
    }
}

pub(crate) fn check_config(args: &CheckConfigArgs) -> ExitCode {
    let file = match &args.file {
        Some(file) => file.clone(),
        None => {
            let system = PathBuf::from(portshare_server::DEFAULT_CONFIG_FILE);
            if !system.exists() {
                return done(&format!(
                    "{}: no such file; `portshare serve` without --config runs on the \
                     built-in defaults, which are valid\n",
                    system.display()
                ));
            }
            system
        }
    };
    match portshare_server::Config::from_file(&file) {
        Ok(config) => {
            let files = match config.check_files() {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("portshare check-config: {e}");
                    return ExitCode::FAILURE;
                }
            };
            for w in config.warnings().into_iter().chain(files) {
                eprintln!("portshare check-config: warning: {w}");
            }
            done(&format!("{}: ok\n", file.display()))
        }
        Err(e) => {
            eprintln!("portshare check-config: {e}");
            ExitCode::FAILURE
        }
    }
}

/// netsh's `key=value` arguments (`urlacl add url=... user=...`, `iplisten add
/// ipaddress=...`) given to `urlacl` or `iplisten`: the command line to use instead, as a
/// message for a usage error. `None` when the arguments are not in that form.
pub(crate) fn netsh_hint(argv: &[std::ffi::OsString]) -> Option<String> {
    let args: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The command comes first: `portshare run -- app user=x` is not netsh's.
    if !matches!(
        args.first().map(String::as_str),
        Some("urlacl" | "iplisten")
    ) {
        return None;
    }
    let mut used = Vec::new();
    let mut line = vec!["portshare".to_owned()];
    for (i, arg) in args.iter().enumerate() {
        let netsh = arg
            .split_once('=')
            .filter(|_| i > 1)
            .and_then(|(key, value)| {
                let key = key.to_ascii_lowercase();
                let flag = match key.as_str() {
                    "url" | "ipaddress" => None,
                    "user" | "listen" | "delegate" => Some(format!("--{key}")),
                    "sddl" => return Some(Err(())),
                    _ => return None,
                };
                Some(Ok((flag, value.to_owned())))
            });
        match netsh {
            Some(Ok((flag, value))) => {
                used.push(arg.clone());
                line.extend(flag);
                line.push(value);
            }
            Some(Err(())) => {
                return Some(format!(
                    "portshare: `{arg}`: security descriptors (SDDL) are Windows'; name the \
                     accounts with --user NAME and --group NAME instead"
                ));
            }
            None => line.push(arg.clone()),
        }
    }
    if used.is_empty() {
        return None;
    }
    Some(format!(
        "portshare: {} {} netsh's form; here the URL or address comes alone and the rest \
         are flags:\n    {}",
        used.join(" "),
        if used.len() == 1 { "is" } else { "are" },
        line.join(" ")
    ))
}

/// Prints the daemon's warnings about a change it made, one a line on stderr.
fn warn(verb: &str, warnings: &[String]) {
    for w in warnings {
        eprintln!("portshare {verb}: warning: {w}");
    }
}

fn done(text: &str) -> ExitCode {
    crate::print(text);
    ExitCode::SUCCESS
}

/// What `queue enable|disable` prints: the queue's state after the change.
fn queue_text(q: &QueueInfo) -> String {
    if q.enabled {
        return format!("Request queue {}: Active\n", printable(&q.name));
    }
    let how = match q.verbosity {
        Verbosity::Basic => "basic: the connection is reset",
        Verbosity::Limited => "limited: 503 Service Unavailable",
        Verbosity::Full => "full: 503 naming the cause",
    };
    format!(
        "Request queue {}: Disabled\n    New requests are refused by its 503 verbosity ({how}).\n",
        printable(&q.name)
    )
}

/// What `reload` prints.
fn reload_text(r: &ReloadReport) -> String {
    let mut out = format!("Reloaded {}\n", r.config);
    if r.changes.is_empty() {
        out.push_str("    No changes.\n");
    } else {
        out.push_str("    Changes:\n");
        for c in &r.changes {
            let _ = writeln!(out, "        {c}");
        }
    }
    if !r.warnings.is_empty() {
        out.push_str("    Warnings:\n");
        for w in &r.warnings {
            let _ = writeln!(out, "        {w}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        verb: UrlaclVerb,
    }

    #[test]
    fn urlacl_add_defaults_are_netsh_defaults() {
        let cli =
            Cli::try_parse_from(["x", "add", "http://+:80/a/", "--user", "alice"]).expect("parses");
        let UrlaclVerb::Add(add) = cli.verb else {
            panic!("add");
        };
        assert_eq!((add.listen, add.delegate), (YesNo::Yes, YesNo::No));
        assert_eq!(add.users, ["alice"]);
    }

    #[test]
    fn urlacl_add_needs_someone() {
        let err = Cli::try_parse_from(["x", "add", "http://+:80/a/"]).expect_err("no one");
        assert_eq!(err.exit_code(), 2);
        let cli = Cli::try_parse_from([
            "x",
            "add",
            "http://+:80/a/",
            "--group",
            "web",
            "--group",
            "gid:7",
            "--listen",
            "no",
            "--delegate",
            "yes",
        ])
        .expect("groups alone will do");
        let UrlaclVerb::Add(add) = cli.verb else {
            panic!("add");
        };
        assert_eq!(add.groups, ["web", "gid:7"]);
        assert_eq!((add.listen, add.delegate), (YesNo::No, YesNo::Yes));
        assert!(
            Cli::try_parse_from(["x", "add", "u", "--user", "a", "--listen", "maybe"]).is_err()
        );
    }

    #[test]
    fn netsh_forms_get_the_command_line_to_use() {
        let hint = |args: &[&str]| {
            let argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            netsh_hint(&argv)
        };
        assert_eq!(
            hint(&[
                "portshare",
                "urlacl",
                "add",
                "url=http://+:80/app/",
                "user=alice",
                "listen=yes"
            ])
            .as_deref(),
            Some(
                "portshare: url=http://+:80/app/ user=alice listen=yes are netsh's form; here \
                 the URL or address comes alone and the rest are flags:\n    portshare urlacl \
                 add http://+:80/app/ --user alice --listen yes"
            )
        );
        assert_eq!(
            hint(&["portshare", "iplisten", "add", "ipaddress=10.0.0.1"]).as_deref(),
            Some(
                "portshare: ipaddress=10.0.0.1 is netsh's form; here the URL or address comes \
                 alone and the rest are flags:\n    portshare iplisten add 10.0.0.1"
            )
        );
        assert!(
            hint(&[
                "portshare",
                "urlacl",
                "add",
                "http://+:80/",
                "sddl=D:(A;;GX;;;WD)"
            ])
            .is_some_and(|h| h.contains("--user NAME and --group NAME"))
        );
        for fine in [
            &["portshare", "urlacl", "add", "http://+:80/", "--user", "a"][..],
            &["portshare", "show", "urlacl"],
            &[
                "portshare",
                "run",
                "--url",
                "http://+:80/",
                "--",
                "app",
                "user=x",
            ],
            &["portshare", "explain", "/a?user=x"],
        ] {
            assert_eq!(hint(fine), None, "{fine:?}");
        }
    }

    #[test]
    fn queue_after_a_change() {
        let mut q = QueueInfo {
            name: "app".into(),
            created: false,
            length: 1000,
            verbosity: Verbosity::Basic,
            enabled: false,
            linger_ms: 0,
            queue_timer_ms: 120_000,
            limits: Default::default(),
            upstream: None,
            held: false,
            urls: vec![],
            access: vec![],
        };
        assert_eq!(
            queue_text(&q),
            "Request queue app: Disabled\n    New requests are refused by its 503 verbosity \
             (basic: the connection is reset).\n"
        );
        q.enabled = true;
        assert_eq!(queue_text(&q), "Request queue app: Active\n");
    }

    #[test]
    fn reload_report() {
        let mut r = ReloadReport {
            config: "/etc/portshare/portshare.toml".into(),
            changes: vec![],
            warnings: vec![],
        };
        assert_eq!(
            reload_text(&r),
            "Reloaded /etc/portshare/portshare.toml\n    No changes.\n"
        );
        r.changes = vec!["urlacl: added http://+:80/a/".into()];
        r.warnings = vec!["cannot bind 10.0.0.1:80".into()];
        assert_eq!(
            reload_text(&r),
            "Reloaded /etc/portshare/portshare.toml\n    Changes:\n        urlacl: added \
             http://+:80/a/\n    Warnings:\n        cannot bind 10.0.0.1:80\n"
        );
    }
}
