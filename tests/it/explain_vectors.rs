//! Runs every routing vector through `portshare explain --json`, and checks the command's
//! interface: text output, usage errors, raw and hex targets.
//!
//! The vectors are read from `../shared/spec` beside the workspace or from
//! `PORTSHARE_VECTORS`; missing vectors fail the test under `CI=true`.

use std::process::{Command, Output};

use crate::harness::{portshare_bin, spec_vectors};
use serde_json::Value;

fn portshare(args: &[&str]) -> Output {
    Command::new(portshare_bin())
        .args(args)
        .output()
        .expect("portshare runs")
}

fn explain_json(args: &[&str]) -> Value {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    let out = portshare(&all);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_routing_vector_through_the_cli() {
    let Some(vectors) = spec_vectors("routing-vectors.json") else {
        return;
    };
    let mut failures = Vec::new();
    let mut ran = 0;
    for v in &vectors {
        let id = v["id"].as_str().expect("id");
        let code = v["expect_registration_error"]["code"].as_str();
        if v.get("environment").is_some()
            || matches!(
                code,
                Some("ERROR_SHARING_VIOLATION" | "ERROR_INVALID_NETNAME")
            )
        {
            continue;
        }
        ran += 1;
        let req = &v["request"];
        let raw = req["raw_target"].as_str().expect("raw_target");
        let target: Vec<u8> = match req["raw_target_encoding"].as_str() {
            Some("latin1") => raw.chars().map(|c| u32::from(c) as u8).collect(),
            _ => raw.as_bytes().to_vec(),
        };
        let ip = req["local_ip"].as_str().expect("local_ip");
        let port = req["local_port"].as_u64().expect("local_port");
        let local = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let mut args: Vec<String> = vec!["--local".into(), local];
        for r in v["reservations"].as_array().into_iter().flatten() {
            args.extend(["--reserve".into(), r.as_str().expect("reservation").into()]);
        }
        for r in v["registrations"].as_array().expect("registrations") {
            args.extend([
                "--register".into(),
                r.as_str().expect("registration").into(),
            ]);
        }
        if req["scheme"].as_str() == Some("https") {
            args.push("--tls".into());
        }
        if let Some(h) = req["host_header"].as_str() {
            args.extend(["--host".into(), h.into()]);
        }
        if let Some(m) = req["method"].as_str() {
            args.extend(["--method".into(), m.into()]);
        }
        if let Some(version) = req["http_version"].as_str() {
            args.extend(["--http-version".into(), version.into()]);
        }
        args.extend(["--target-hex".into(), hex(&target)]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = explain_json(&args);

        let expect = &v["expect"];
        let mut check = |key: &str, want: &Value| {
            if got[key] != *want {
                failures.push(format!("{id}: {key}: got {}, want {want}", got[key]));
            }
        };
        check("winner", &expect["winner"]);
        check("status", &expect["status"]);
        for key in ["reason", "cooked_path", "cooked_url", "connection"] {
            if let Some(want) = expect.get(key) {
                check(key, want);
            }
        }
        if expect.get("connection").is_none() {
            check("connection", &Value::Null);
        }
        let errors: Vec<(u64, String, u64)> = got["registration_errors"]
            .as_array()
            .expect("registration_errors")
            .iter()
            .map(|e| {
                (
                    e["index"].as_u64().expect("index"),
                    e["code"].as_str().expect("code").to_owned(),
                    e["win32"].as_u64().expect("win32"),
                )
            })
            .collect();
        let want: Vec<(u64, String, u64)> = v
            .get("expect_registration_error")
            .map(|e| {
                vec![(
                    e["index"].as_u64().expect("index"),
                    e["code"].as_str().expect("code").to_owned(),
                    e["win32"].as_u64().expect("win32"),
                )]
            })
            .unwrap_or_default();
        if errors != want {
            failures.push(format!(
                "{id}: registration_errors {errors:?}, want {want:?}"
            ));
        }
    }
    assert!(ran > 0, "no vector ran");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn json_has_every_key_even_when_refused() {
    let got = explain_json(&["/"]);
    for key in [
        "winner",
        "status",
        "reason",
        "cooked_path",
        "cooked_url",
        "connection",
        "registration_errors",
        "reservation_errors",
        "trace",
    ] {
        assert!(got.get(key).is_some(), "missing {key}: {got}");
    }
    assert_eq!(got["connection"], "refused");
    assert_eq!(got["cooked_path"], "/");
}

#[test]
fn registration_errors_are_reported_and_the_rest_apply() {
    let got = explain_json(&[
        "--register",
        "http://+:80/app",
        "--register",
        "http://+:80/app/",
        "--register",
        "http://+:80/APP/",
        "--reserve",
        "http://0.0.0.0:80/",
        "--host",
        "h",
        "/app/x",
    ]);
    assert_eq!(got["winner"], "http://+:80/app/");
    let errors = got["registration_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        (errors[0]["index"].as_u64(), errors[0]["win32"].as_u64()),
        (Some(0), Some(87))
    );
    assert_eq!(errors[1]["code"], "ERROR_ALREADY_EXISTS");
    assert_eq!(got["reservation_errors"][0]["code"], "ERROR_NOT_SUPPORTED");
}

#[test]
fn trace_names_each_candidate() {
    let got = explain_json(&[
        "--register",
        "http://+:80/a/",
        "--register",
        "http://example.com:80/a/b/",
        "--register",
        "http://*:80/",
        "--host",
        "example.com",
        "/a/b/c",
    ]);
    assert_eq!(got["trace"][0]["category"], "strong");
    assert_eq!(got["trace"][0]["candidates"][0]["outcome"], "won");
    assert_eq!(got["trace"][1]["candidates"][0]["outcome"], "not reached");
    assert_eq!(got["trace"][3]["candidates"][0]["prefix"], "http://*:80/");
}

#[test]
fn empty_host_differs_from_no_host() {
    let base = ["--register", "http://+:80/"];
    let none = explain_json(&[base[0], base[1], "/"]);
    let empty = explain_json(&[base[0], base[1], "--host", "", "/"]);
    assert_eq!(
        (none["status"].as_u64(), empty["status"].as_u64()),
        (Some(400), Some(400))
    );
    let old = explain_json(&[base[0], base[1], "--http-version", "1.0", "--host", "", "/"]);
    assert_eq!(old["winner"], "http://+:80/");
    assert_eq!(old["cooked_url"], "http://127.0.0.1:80/");
}

#[test]
fn raw_latin1_target_is_refused_and_hex_matches_raw() {
    let latin1 = explain_json(&[
        "--register",
        "http://+:80/",
        "--host",
        "h",
        "--target-hex",
        "2fe9",
    ]);
    assert_eq!(
        (latin1["status"].as_u64(), latin1["reason"].as_str()),
        (Some(400), Some("URL"))
    );
    assert_eq!(latin1["cooked_path"], Value::Null);
    let escaped = explain_json(&["--register", "http://+:80/", "--host", "h", "/%E9"]);
    assert_eq!(escaped["cooked_path"], "/é");
}

#[test]
fn versions_and_methods() {
    let v2 = explain_json(&[
        "--register",
        "http://+:80/",
        "--host",
        "h",
        "--http-version",
        "2.0",
        "/",
    ]);
    assert_eq!(
        (v2["status"].as_u64(), v2["reason"].as_str()),
        (Some(505), Some("Version_N/S"))
    );
    let verb = explain_json(&[
        "--register",
        "http://+:80/",
        "--host",
        "h",
        "--method",
        "GE(T",
        "/",
    ]);
    assert_eq!(verb["reason"], "Verb");
    let odd = explain_json(&[
        "--register",
        "http://+:80/",
        "--host",
        "h",
        "--method",
        "xyzzy",
        "/",
    ]);
    assert_eq!(odd["winner"], "http://+:80/");
}

#[test]
fn ipv6_local_address() {
    let got = explain_json(&[
        "--register",
        "http://[::1]:8080/",
        "--local",
        "[::1]:8080",
        "--host",
        "x",
        "/",
    ]);
    assert_eq!(got["winner"], "http://[::1]:8080/");
    assert_eq!(got["cooked_url"], "http://x:8080/");
}

#[test]
fn text_output_reads_for_people() {
    let out = portshare(&[
        "explain",
        "--register",
        "http://+:80/app1/",
        "--register",
        "http://+:80/app2/",
        "--host",
        "example.com",
        "/app1/../app2/x",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("-> delivered to http://+:80/app2/"), "{text}");
    assert!(text.contains("cooked path: /app2/x"), "{text}");
    assert!(text.contains("path mismatch  http://+:80/app1/"), "{text}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["explain"][..],
        &["explain", "--local", "nonsense", "/"],
        &["explain", "--target-hex", "2"],
        &["explain", "--target-hex", "zz"],
        &["frobnicate"],
    ] {
        let out = portshare(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn version_flag() {
    let out = portshare(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("portshare "));
}
