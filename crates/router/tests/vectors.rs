//! Runs the specification's test vectors (`routing-vectors.json`, `urlacl-vectors.json`)
//! against the crate.
//!
//! The vectors live in `../shared/spec` beside the workspace, or wherever
//! `PORTSHARE_VECTORS` points. Without them the test passes with a note, except under
//! `CI=true`, where it fails. Vectors that need a machine (an `environment` key, a port held
//! by another program, an address the host does not own) belong to the daemon's tests.

use std::net::SocketAddr;
use std::path::PathBuf;

use portshare_router::{
    Account, Ace, Caller, Dispatch, Endpoint, RequestHead, Reservation, RouteTable, Scheme, UrlAcl,
    UrlOptions, UrlPrefix, Verdict, Version, Win32Error,
};
use serde_json::Value;

fn vectors(name: &str) -> Option<Vec<Value>> {
    let dir = match std::env::var_os("PORTSHARE_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec"),
    };
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("vector file is JSON")),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{}: {e}; CI must run the vectors", path.display())
        }
        Err(e) => {
            eprintln!("skipping {name}: {}: {e}", path.display());
            None
        }
    }
}

/// Vectors whose outcome depends on the machine, for the daemon's tests.
fn needs_machine(v: &Value) -> bool {
    v.get("environment").is_some()
        || matches!(
            v["expect_registration_error"]["code"].as_str(),
            Some("ERROR_SHARING_VIOLATION" | "ERROR_INVALID_NETNAME")
        )
}

fn target_bytes(request: &Value) -> Vec<u8> {
    let raw = request["raw_target"].as_str().expect("raw_target");
    match request["raw_target_encoding"].as_str() {
        Some("latin1") => raw
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin1 target"))
            .collect(),
        _ => raw.as_bytes().to_vec(),
    }
}

#[test]
fn routing_vectors() {
    let Some(vectors) = vectors("routing-vectors.json") else {
        return;
    };
    let opts = UrlOptions::default();
    let mut ran = 0;
    let mut failures = Vec::new();
    for v in &vectors {
        let id = v["id"].as_str().expect("id");
        if needs_machine(v) {
            continue;
        }
        ran += 1;
        let mut table = RouteTable::new();
        for r in v["reservations"].as_array().into_iter().flatten() {
            let prefix: UrlPrefix = r
                .as_str()
                .expect("reservation")
                .parse()
                .expect("reservation parses");
            table.reserve(prefix).expect("reservation applies");
        }
        let mut errors = Vec::new();
        for (i, r) in v["registrations"]
            .as_array()
            .expect("registrations")
            .iter()
            .enumerate()
        {
            let s = r.as_str().expect("registration");
            let result = s
                .parse::<UrlPrefix>()
                .map_err(|e| e.win32())
                .and_then(|p| table.add(p, s.to_owned()).map_err(|e| e.win32()));
            if let Err(code) = result {
                errors.push((i, code));
            }
        }
        let want_errors: Vec<(usize, Win32Error)> = match v.get("expect_registration_error") {
            Some(e) => vec![(
                e["index"].as_u64().expect("index") as usize,
                Win32Error::from_name(e["code"].as_str().expect("code")).expect("known code"),
            )],
            None => Vec::new(),
        };
        if errors != want_errors {
            failures.push(format!(
                "{id}: registration errors {errors:?}, want {want_errors:?}"
            ));
            continue;
        }

        let req = &v["request"];
        let scheme = match req["scheme"].as_str() {
            Some("https") => Scheme::Https,
            _ => Scheme::Http,
        };
        let ip: std::net::IpAddr = req["local_ip"]
            .as_str()
            .expect("local_ip")
            .parse()
            .expect("ip");
        let port = req["local_port"].as_u64().expect("local_port") as u16;
        let endpoint = Endpoint::new(scheme, SocketAddr::new(ip, port));
        let target = target_bytes(req);
        let host = req["host_header"].as_str().map(str::as_bytes);
        let method = req["method"].as_str().unwrap_or("GET");
        let version = match req["http_version"].as_str().unwrap_or("1.1") {
            "1.0" => Version::Http10,
            _ => Version::Http11,
        };
        let head = RequestHead::new(method.as_bytes(), &target, version, host);

        let expect = &v["expect"];
        let dispatch = table.dispatch(&endpoint, &head, &opts);
        let (winner, status, reason, refused) = match &dispatch {
            Dispatch::Deliver(d) => (Some(d.registration().value().clone()), None, None, false),
            Dispatch::Reject(r) => (
                None,
                Some(u64::from(r.status)),
                Some(r.reason.as_str()),
                false,
            ),
            Dispatch::Refused => (None, None, None, true),
            _ => unreachable!(),
        };
        let mut check = |what: &str, ok: bool, got: String| {
            if !ok {
                failures.push(format!("{id}: {what}: got {got}; rule: {}", v["rule"]));
            }
        };
        check(
            "winner",
            expect["winner"].as_str() == winner.as_deref(),
            format!("{winner:?}"),
        );
        check(
            "status",
            expect["status"].as_u64() == status,
            format!("{status:?}"),
        );
        if let Some(want) = expect.get("reason").and_then(Value::as_str) {
            check("reason", Some(want) == reason, format!("{reason:?}"));
        }
        match expect.get("connection").and_then(Value::as_str) {
            Some("refused") => check("connection", refused, format!("{dispatch:?}")),
            Some(other) => check("connection", false, format!("unexpected {other}")),
            None => check("connection", !refused, "refused".into()),
        }
        let why = table.explain(&endpoint, &head, &opts);
        if let Some(want) = expect.get("cooked_path").and_then(Value::as_str) {
            let got = why.target().map(|t| t.path().to_owned());
            check(
                "cooked_path",
                got.as_deref() == Some(want),
                format!("{got:?}"),
            );
        }
        if let Some(want) = expect.get("cooked_url").and_then(Value::as_str) {
            let got = why.cooked_url();
            check("cooked_url", got == Some(want), format!("{got:?}"));
        }
        let agrees = match (why.verdict(), &dispatch) {
            (Verdict::Deliver(a), Dispatch::Deliver(b)) => a.value() == b.registration().value(),
            (Verdict::Reject(a), Dispatch::Reject(b)) => a == b,
            (Verdict::Refused, Dispatch::Refused) => true,
            _ => false,
        };
        check(
            "explain agrees with dispatch",
            agrees,
            format!("{:?}", why.verdict()),
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ran > 0, "no routing vector ran");
}

#[test]
fn urlacl_vectors() {
    let Some(vectors) = vectors("urlacl-vectors.json") else {
        return;
    };
    let mut failures = Vec::new();
    for v in &vectors {
        let id = v["id"].as_str().expect("id");
        let mut acl = UrlAcl::new();
        for r in v["reservations"].as_array().expect("reservations") {
            let prefix: UrlPrefix = r["url"].as_str().expect("url").parse().expect("url parses");
            let aces = r["users"]
                .as_array()
                .expect("users")
                .iter()
                .map(|u| {
                    Ace::new(
                        Account::Name(u["account"].as_str().expect("account").to_owned()),
                        u["listen"].as_bool().unwrap_or(true),
                        u["delegate"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            acl.insert(Reservation::new(prefix, aces))
                .expect("reservation applies");
        }
        let (request, url_key) = match v["operation"].as_str() {
            Some("register") => (&v["registration"], "prefix"),
            Some("add_reservation") => (&v["reservation_request"], "url"),
            other => panic!("{id}: unknown operation {other:?}"),
        };
        let mut caller = Caller::new(request["caller"].as_str().expect("caller"))
            .admin(request["caller_is_admin"].as_bool().unwrap_or(false));
        for g in request["caller_groups"].as_array().into_iter().flatten() {
            caller = caller.group(g.as_str().expect("group"));
        }
        let url = request[url_key].as_str().expect("url");
        let got: Result<Option<String>, (Win32Error, Option<String>)> =
            match url.parse::<UrlPrefix>() {
                Err(e) => Err((e.win32(), None)),
                Ok(prefix) => {
                    let result = if url_key == "prefix" {
                        acl.check_register(&prefix, &caller)
                    } else {
                        acl.check_reserve(&prefix, &caller)
                    };
                    result
                        .map(|g| g.describe())
                        .map_err(|e| (e.win32(), e.governing().map(str::to_owned)))
                }
            };
        let expect = &v["expect"];
        let want_governing = expect["governing_reservation"].as_str().map(str::to_owned);
        let want = if expect["allowed"].as_bool() == Some(true) {
            Ok(want_governing)
        } else {
            let code =
                Win32Error::from_name(expect["error"].as_str().expect("error")).expect("code");
            assert_eq!(
                Some(u64::from(code.code())),
                expect["win32"].as_u64(),
                "{id}: code table"
            );
            Err((code, want_governing))
        };
        if got != want {
            failures.push(format!(
                "{id}: got {got:?}, want {want:?}; rule: {}",
                v["rule"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
