//! URL ACLs against a running daemon, with real Unix identities: every vector of
//! `urlacl-vectors.json`, each caller a process running under its own uid and groups
//! (`setpriv`, numeric ids, so no user is created on the host).
//!
//! Accounts of the vectors become `uid:N` (users) and `gid:N` (groups: those some caller
//! belongs to); `Everyone` stays `Everyone`; an administrator caller is a uid in the
//! daemon's admin group. Ports keep their relations: each port of a vector becomes a free
//! port on the same side of 1024, so the localhost exemption decides as it would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};

use crate::harness::{Ctl, Daemon, TempDir, only_test};
use serde_json::{Value, json};

/// The admin group the test daemons name.
const ADMIN_GID: u32 = 63_000;
/// The uid administrators run as (a member of `ADMIN_GID`).
const ADMIN_UID: u32 = 62_000;

fn vectors_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PORTSHARE_VECTORS") {
        return Some(Path::new(&p).join("urlacl-vectors.json"));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/urlacl-vectors.json");
    p.exists().then_some(p)
}

/// Numeric identities for the names of one vector set.
struct Ids {
    users: BTreeMap<String, u32>,
    groups: BTreeMap<String, u32>,
}

impl Ids {
    fn of(vectors: &[Value]) -> Ids {
        let mut groups = BTreeMap::new();
        for v in vectors {
            let caller_groups = v["registration"]["caller_groups"]
                .as_array()
                .into_iter()
                .chain(v["reservation_request"]["caller_groups"].as_array())
                .flatten();
            for g in caller_groups.filter_map(Value::as_str) {
                let next = 61_000 + groups.len() as u32;
                groups.entry(g.to_owned()).or_insert(next);
            }
        }
        Ids {
            users: BTreeMap::new(),
            groups,
        }
    }

    fn user(&mut self, name: &str) -> u32 {
        let next = 60_000 + self.users.len() as u32;
        *self.users.entry(name.to_owned()).or_insert(next)
    }

    /// How a reservation names an account.
    fn account(&mut self, name: &str) -> (bool, String) {
        if name.eq_ignore_ascii_case("everyone") {
            return (false, "Everyone".into());
        }
        match self.groups.get(name) {
            Some(gid) => (true, format!("gid:{gid}")),
            None => (false, format!("uid:{}", self.user(name))),
        }
    }
}

/// Maps the ports of a vector to free ports on the same side of 1024.
#[derive(Default)]
struct Ports(BTreeMap<u16, u16>);

impl Ports {
    fn map(&mut self, port: u16) -> u16 {
        if let Some(&p) = self.0.get(&port) {
            return p;
        }
        let taken: Vec<u16> = self.0.values().copied().collect();
        let free = if port <= 1024 {
            // Tests running side by side take turns through the range, so two never pick
            // the same port between asking and binding.
            static NEXT: AtomicU16 = AtomicU16::new(0);
            (0..124)
                .map(|_| 1023 - NEXT.fetch_add(1, Ordering::Relaxed) % 124)
                .find(|p| {
                    !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
                })
                .expect("a free port below 1024")
        } else {
            loop {
                let p = crate::harness::free_port();
                if p > 1024 && !taken.contains(&p) {
                    break p;
                }
            }
        };
        self.0.insert(port, free);
        free
    }

    /// `url` with its port mapped.
    fn url(&mut self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("scheme");
        let slash = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(slash);
        let colon = authority.rfind(':').expect("port");
        let port: u16 = authority[colon + 1..].parse().expect("port number");
        format!(
            "{scheme}://{}:{}{path}",
            &authority[..colon],
            self.map(port)
        )
    }

    /// The vector's governing text with the ports mapped.
    fn governing(&mut self, text: &str) -> String {
        match text.strip_prefix("implicit ") {
            Some(url) => format!("implicit {}", self.url(url)),
            None => self.url(text),
        }
    }
}

/// The identity a caller of a vector runs as: uid, gid, supplementary groups.
fn caller_of(ids: &mut Ids, request: &Value) -> (u32, u32, Vec<u32>) {
    if request["caller_is_admin"].as_bool() == Some(true) {
        return (ADMIN_UID, ADMIN_UID, vec![ADMIN_GID]);
    }
    let uid = ids.user(request["caller"].as_str().expect("caller"));
    let groups = request["caller_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|g| !g.eq_ignore_ascii_case("everyone"))
        .map(|g| ids.groups[g])
        .collect();
    (uid, uid, groups)
}

/// Runs the `acl_probe` of this test binary as `uid`, with `ops`; returns its result lines.
fn run_as(
    dir: &Path,
    control: &Path,
    who: (u32, u32, Vec<u32>),
    ops: &Value,
) -> Option<Vec<Value>> {
    let exe = dir.join("acl-probe");
    if !exe.exists() {
        std::fs::copy(std::env::current_exe().expect("test binary"), &exe).expect("copy");
    }
    let (uid, gid, groups) = who;
    // A test thread forking while the copy was open for writing keeps it open in its
    // child until that child execs: running the copy meanwhile fails with ETXTBSY.
    for _ in 0..50 {
        match probe(&exe, control, uid, gid, &groups, ops) {
            Probe::Busy => std::thread::sleep(std::time::Duration::from_millis(20)),
            Probe::Done(r) => return r,
        }
    }
    panic!("{} stayed busy", exe.display());
}

enum Probe {
    Busy,
    Done(Option<Vec<Value>>),
}

fn probe(exe: &Path, control: &Path, uid: u32, gid: u32, groups: &[u32], ops: &Value) -> Probe {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.args(["--groups", &list.join(",")]);
    }
    let out = cmd
        .arg(exe)
        .args(only_test(module_path!(), "acl_probe"))
        .env("PORTSHARE_ACL_PROBE", control)
        .env("PORTSHARE_ACL_OPS", ops.to_string())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            let results: Vec<Value> = stdout
                .lines()
                .filter_map(|l| l.find("RESULT ").map(|i| &l[i + "RESULT ".len()..]))
                .map(|l| serde_json::from_str(l).expect("probe output"))
                .collect();
            let expected = ops.as_array().map_or(0, Vec::len);
            assert_eq!(
                results.len(),
                expected,
                "probe output:\n{stdout}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            Probe::Done(Some(results))
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            if err.contains("Text file busy") {
                return Probe::Busy;
            }
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv failed under CI: {err}"
            );
            eprintln!("skipped: cannot switch uid here ({err})");
            Probe::Done(None)
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv missing under CI: {e}"
            );
            eprintln!("skipped: setpriv not available ({e})");
            Probe::Done(None)
        }
    }
}

/// A reservation to configure: URL, accounts (is a group, `uid:N`/`gid:N`/`Everyone`),
/// listen, delegate.
type Reserve = (String, Vec<(bool, String)>, bool, bool);

/// A daemon whose configuration holds `reservations` and names the admin group.
fn daemon_with(reservations: &[Reserve]) -> Daemon {
    let mut config = format!("admin_group = \"gid:{ADMIN_GID}\"\n");
    for (url, accounts, listen, delegate) in reservations {
        let users: Vec<&String> = accounts.iter().filter(|a| !a.0).map(|a| &a.1).collect();
        let groups: Vec<&String> = accounts.iter().filter(|a| a.0).map(|a| &a.1).collect();
        config.push_str(&format!(
            "[[urlacl]]\nurl = {url:?}\nusers = {users:?}\ngroups = {groups:?}\nlisten = {listen}\ndelegate = {delegate}\n"
        ));
    }
    // The probe binary is copied into the folder: every uid must reach it and the socket.
    Daemon::builder()
        .dir(TempDir::open_to_all("acl"))
        .config(config)
        .errlog_off()
        .spawn()
}

#[test]
fn every_urlacl_vector_against_the_daemon() {
    let Some(path) = vectors_path() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "urlacl-vectors.json not found under CI (set PORTSHARE_VECTORS)"
        );
        eprintln!("skipped: no urlacl-vectors.json");
        return;
    };
    let text = std::fs::read_to_string(&path).expect("vectors");
    let vectors: Vec<Value> = serde_json::from_str(&text).expect("vector JSON");
    let mut ids = Ids::of(&vectors);
    let mut failures = Vec::new();
    let mut ran = 0;
    for v in &vectors {
        let id = v["id"].as_str().unwrap_or("?");
        if v.get("environment").is_some_and(|e| !e.is_null()) {
            continue;
        }
        let mut ports = Ports::default();
        // One reservation per URL; rights may differ per account, so accounts with other
        // rights than the first get a reservation of their own only if the URL differs.
        let mut reservations = Vec::new();
        for r in v["reservations"].as_array().into_iter().flatten() {
            let url = ports.url(r["url"].as_str().expect("url"));
            let users = r["users"].as_array().expect("users");
            let listen = users[0]["listen"].as_bool().unwrap_or(true);
            let delegate = users[0]["delegate"].as_bool().unwrap_or(false);
            assert!(
                users.iter().all(|u| u["listen"].as_bool() == Some(listen)
                    && u["delegate"].as_bool() == Some(delegate)),
                "{id}: accounts with different rights on one URL"
            );
            let accounts = users
                .iter()
                .map(|u| ids.account(u["account"].as_str().expect("account")))
                .collect();
            reservations.push((url, accounts, listen, delegate));
        }
        let d = daemon_with(&reservations);
        let (who, op) = match v["operation"].as_str() {
            Some("register") => {
                let r = &v["registration"];
                let prefix = ports.url(r["prefix"].as_str().expect("prefix"));
                (
                    caller_of(&mut ids, r),
                    json!({ "op": "register", "url": prefix }),
                )
            }
            Some("add_reservation") => {
                let r = &v["reservation_request"];
                let url = ports.url(r["url"].as_str().expect("url"));
                let mut users = Vec::new();
                let mut groups = Vec::new();
                for name in r["for_users"].as_array().into_iter().flatten() {
                    match ids.account(name.as_str().expect("name")) {
                        (true, g) => groups.push(g),
                        (false, u) => users.push(u),
                    }
                }
                (
                    caller_of(&mut ids, r),
                    json!({ "op": "reserve", "url": url, "users": users, "groups": groups }),
                )
            }
            other => panic!("{id}: unknown operation {other:?}"),
        };
        let Some(results) = run_as(&d.dir.0, &d.control, who, &json!([op])) else {
            return;
        };
        ran += 1;
        let got = &results[0];
        let expect = &v["expect"];
        let allowed = expect["allowed"].as_bool().expect("allowed");
        let status = got["status"].as_u64().unwrap_or(0);
        let ok = if allowed {
            status == 201
        } else {
            let code = got["body"]["code"].as_u64();
            let mut fine = code == expect["win32"].as_u64();
            if expect["win32"].as_u64() == Some(5)
                && let Some(g) = expect["governing_reservation"].as_str()
            {
                let g = ports.governing(g);
                let message = got["body"]["message"].as_str().unwrap_or("");
                fine &= message.contains(&format!("governing reservation {g} "));
            }
            fine
        };
        if !ok {
            failures.push(format!("{id} ({}): got {got}", v["rule"]));
        }
    }
    assert!(ran > 0, "no vector ran");
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Delegation, removals by another user, and the admin group, end to end.
#[test]
fn delegates_reserve_and_only_owners_remove() {
    let alice = (60_101, 60_101, vec![]);
    let bob = (60_102, 60_102, vec![]);
    let admin = (ADMIN_UID, ADMIN_UID, vec![ADMIN_GID]);
    let p = Ports::default().map(80);
    let d = daemon_with(&[(
        format!("http://+:{p}/team/"),
        vec![(false, "uid:60101".into())],
        true,
        true,
    )]);
    let (dir, control) = (d.dir.0.clone(), d.control.clone());
    let team = format!("http://+:{p}/team/");
    let sub = format!("http://+:{p}/team/bob/");
    // Alice delegates a part of her reservation to bob, who registers there.
    let Some(r) = run_as(
        &dir,
        &control,
        alice.clone(),
        &json!([{ "op": "reserve", "url": sub, "users": ["uid:60102"] }]),
    ) else {
        return;
    };
    assert_eq!(r[0]["status"], 201, "{r:?}");
    // Bob may not reserve (no delegate right), may register under his reservation, not
    // beside it.
    let r = run_as(
        &dir,
        &control,
        bob.clone(),
        &json!([
            { "op": "reserve", "url": format!("{sub}x/"), "users": ["uid:60102"] },
            { "op": "register", "url": format!("{sub}app/") },
            { "op": "register", "url": format!("http://+:{p}/team/other/") },
        ]),
    )
    .expect("probe");
    assert_eq!(r[0]["body"]["code"], 5, "{r:?}");
    assert_eq!(r[1]["status"], 201, "{r:?}");
    assert_eq!(r[2]["body"]["code"], 5, "{r:?}");
    assert!(
        r[2]["body"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("governing reservation {team} "))),
        "{r:?}"
    );
    // The state file keeps alice's delegation; bob may not remove it, alice may.
    let state = std::fs::read_to_string(dir.join("state.toml")).expect("state file");
    assert!(state.contains(&sub), "{state}");
    let r = run_as(
        &dir,
        &control,
        bob,
        &json!([{ "op": "unreserve", "url": sub }]),
    )
    .expect("probe");
    assert_eq!(r[0]["body"]["code"], 5, "{r:?}");
    // A registration belongs to its creator: another uid cannot remove it, root can.
    let mut root = Ctl::connect(&control);
    root.create_queue(json!({ "name": "rootq" }));
    let (status, _) = root.add_url("rootq", &format!("http://+:{p}/root/"));
    assert_eq!(status, 201);
    let r = run_as(
        &dir,
        &control,
        alice.clone(),
        &json!([
            { "op": "remove", "queue": "rootq", "url": format!("http://+:{p}/root/") },
            // Any spelling of the reserved URL names it.
            { "op": "unreserve", "url": sub.replace("/team/bob/", "/Team/BOB/") },
            // A duplicate is 183 before the ACL is asked, even for a caller it would deny
            // (spec §1.3).
            { "op": "register", "url": format!("http://+:{p}/root/") },
        ]),
    )
    .expect("probe");
    assert_eq!(r[0]["body"]["code"], 5, "{r:?}");
    assert_eq!(r[1]["status"], 204, "{r:?}");
    assert_eq!(r[2]["body"]["code"], 183, "{r:?}");
    // The admin group registers anywhere; the configuration's reservation is not the CLI's
    // to delete.
    let r = run_as(
        &dir,
        &control,
        admin,
        &json!([
            { "op": "register", "url": format!("http://+:{p}/") },
            { "op": "unreserve", "url": team },
        ]),
    )
    .expect("probe");
    assert_eq!(r[0]["status"], 201, "{r:?}");
    assert_eq!(r[1]["body"]["code"], 5, "{r:?}");
}

/// The caller's side: runs the operations in `PORTSHARE_ACL_OPS` on one control
/// connection and prints one `RESULT {status, body}` line each. Does nothing in a normal run.
#[test]
fn acl_probe() {
    let Some(control) = std::env::var_os("PORTSHARE_ACL_PROBE") else {
        return;
    };
    let ops: Vec<Value> =
        serde_json::from_str(&std::env::var("PORTSHARE_ACL_OPS").expect("ops")).expect("ops JSON");
    let mut ctl = Ctl::connect(Path::new(&control));
    let mut queue = false;
    for op in ops {
        let url = op["url"].as_str().unwrap_or_default().to_owned();
        let (status, body) = match op["op"].as_str() {
            Some("register") => {
                if !queue {
                    let (status, body) = ctl.call(
                        "POST",
                        "/v1/queues",
                        Some(json!({ "name": format!("q{}", std::process::id()) })),
                    );
                    assert!(status == 201, "create queue: {status} {body}");
                    queue = true;
                }
                let name = format!("q{}", std::process::id());
                ctl.call(
                    "POST",
                    &format!("/v1/queues/{name}/urls"),
                    Some(json!({ "url": url })),
                )
            }
            Some("reserve") => ctl.call(
                "POST",
                "/v1/urlacl",
                Some(json!({
                    "url": url,
                    "users": op.get("users").cloned().unwrap_or(json!([])),
                    "groups": op.get("groups").cloned().unwrap_or(json!([])),
                })),
            ),
            Some("unreserve") => ctl.call("DELETE", "/v1/urlacl", Some(json!({ "url": url }))),
            Some("remove") => ctl.call(
                "DELETE",
                &format!("/v1/queues/{}/urls", op["queue"].as_str().expect("queue")),
                Some(json!({ "url": url })),
            ),
            other => panic!("unknown op {other:?}"),
        };
        println!("RESULT {}", json!({ "status": status, "body": body }));
    }
}
