//! Routing end to end: which application a request reaches, by HTTP.sys's precedence
//! (strong wildcard, explicit host, weak wildcard; the longest path within each), after the
//! target is canonicalized; and the routing vectors that need the machine (a foreign
//! listener on the port), run against a daemon with their ports remapped to free ones.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::*;
use serde_json::{Value, json};

#[test]
fn two_apps_share_a_port_by_precedence() {
    let d = Daemon::start();
    let (_a, port) = hello_on_free_port(&d, "a", &["/app/"], &[]);
    let _b = d.hello(
        "b",
        &[
            &format!("http://+:{port}/app/deep/"),
            &format!("http://localhost:{port}/"),
        ],
        &[],
    );

    let (s, _, body) = get(port, "example.com", "/app/x");
    assert_eq!(
        (s, body.as_str()),
        (
            200,
            format!("name=a prefix=http://+:{port}/app/ path=/app/x\n").as_str()
        )
    );
    // Longest prefix wins across apps.
    let (s, _, body) = get(port, "example.com", "/app/deep/y");
    assert_eq!(s, 200);
    assert!(body.starts_with("name=b "), "{body}");
    // Strong wildcard (+) beats the explicit host, whatever the path length.
    let (_, _, body) = get(port, "localhost", "/app/z");
    assert!(body.starts_with("name=a "), "{body}");
    // ...and the explicit host takes what + does not claim.
    let (_, _, body) = get(port, "localhost", "/other");
    assert!(
        body.starts_with("name=b prefix=http://localhost:"),
        "{body}"
    );
    // Canonicalization happens before routing: the app never sees a path outside its prefix.
    let (_, _, body) = get(port, "example.com", "/app/deep/%2e%2e/q");
    assert!(
        body.starts_with("name=a ") && body.ends_with("path=/app/q\n"),
        "{body}"
    );
    let (s, _, _) = get(port, "example.com", "/nothing");
    assert_eq!(s, 404);
}

/// The port of a URL or authority (`http://h:8080/x`, `[::1]:80`), where the digits are.
fn port_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host_end = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.rfind(':')?
    };
    let rest = &authority[host_end..];
    let digits = rest.strip_prefix(':')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (start + host_end + 1, end))
}

/// `url` with its port replaced when the map has it.
fn remap(url: &str, ports: &[(u16, u16)]) -> String {
    let Some((a, b)) = port_span(url) else {
        return url.to_owned();
    };
    let Ok(port) = url[a..b].parse::<u16>() else {
        return url.to_owned();
    };
    match ports.iter().find(|(from, _)| *from == port) {
        Some((_, to)) => format!("{}{to}{}", &url[..a], &url[b..]),
        None => url.to_owned(),
    }
}

/// A foreign (non-portshare) server: answers every connection with `foreign`.
struct Foreign {
    port: u16,
    server: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Foreign {
    fn start(ip: IpAddr) -> Foreign {
        let listener = TcpListener::bind((ip, 0)).expect("bind the foreign listener");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let server = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while find(&buf, b"\r\n\r\n").is_none() {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nforeign",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Foreign {
            port,
            server: Some(server),
            stop,
        }
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn target_bytes(raw: &str, encoding: Option<&str>) -> Vec<u8> {
    match encoding {
        Some("latin1") => raw
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin1 target"))
            .collect(),
        Some(other) => panic!("unknown raw_target_encoding {other:?}"),
        None => raw.as_bytes().to_vec(),
    }
}

/// Runs one vector that needs the machine; a description of each failure.
fn run_environment_vector(v: &Value) -> Vec<String> {
    let id = v["id"].as_str().expect("id");
    let req = &v["request"];
    let local_ip: IpAddr = req["local_ip"]
        .as_str()
        .expect("local_ip")
        .parse()
        .expect("local_ip is an IP");
    assert!(
        local_ip.is_loopback(),
        "{id}: local_ip {local_ip} is not loopback"
    );

    // The environment first: every key must be one this harness knows how to set up.
    let mut ports: Vec<(u16, u16)> = Vec::new();
    let mut foreign: Option<Foreign> = None;
    for (key, value) in v["environment"].as_object().expect("environment object") {
        match key.as_str() {
            "foreign_listener_on_port" => {
                let literal =
                    u16::try_from(value.as_u64().expect("a port number")).expect("a port number");
                let f = Foreign::start(local_ip);
                ports.push((literal, f.port));
                foreign = Some(f);
            }
            other => panic!(
                "{id}: unknown environment key {other:?} ({value}): this harness cannot set it up"
            ),
        }
    }
    // Every other literal port gets a free one of its own, consistently.
    let registrations: Vec<&str> = v["registrations"]
        .as_array()
        .expect("registrations")
        .iter()
        .map(|r| r.as_str().expect("registration"))
        .collect();
    let literal_local = u16::try_from(req["local_port"].as_u64().expect("local_port"))
        .expect("local_port is a port");
    let mut literal_ports: Vec<u16> = registrations
        .iter()
        .filter_map(|r| port_span(r).and_then(|(a, b)| r[a..b].parse().ok()))
        .collect();
    literal_ports.push(literal_local);
    for p in literal_ports {
        if !ports.iter().any(|(from, _)| *from == p) {
            ports.push((p, free_port()));
        }
    }
    assert!(
        v.get("reservations")
            .and_then(Value::as_array)
            .is_none_or(|r| r.is_empty()),
        "{id}: reservations in an environment vector are not supported by this harness"
    );

    let iplisten = local_ip.to_string();
    let d = Daemon::builder().iplisten(&iplisten).spawn();
    let mut ctl = d.ctl();
    let mut failures = Vec::new();
    let want = v.get("expect_registration_error");
    let want_index = want.map(|e| e["index"].as_u64().expect("index") as usize);
    let mut registered: Vec<Option<String>> = Vec::new();
    for (i, r) in registrations.iter().enumerate() {
        let url = remap(r, &ports);
        ctl.create_queue(json!({ "name": format!("v{i}"), "queue_timer_ms": 60000 }));
        let (status, body) = ctl.add_url(&format!("v{i}"), &url);
        if Some(i) == want_index {
            let e = want.expect("expected error");
            let code = e["win32"].as_u64().expect("win32");
            let name = e["code"].as_str().expect("code");
            if status < 400 || body["code"].as_u64() != Some(code) || body["name"] != name {
                failures.push(format!(
                    "{id}: registration {i} ({url}): want {code} {name}, got {status} {body}"
                ));
            }
            if foreign.is_some() && name == "ERROR_SHARING_VIOLATION" {
                let msg = body["message"].as_str().unwrap_or_default();
                let pid = format!("PID {}", std::process::id());
                if !msg.contains(&pid) {
                    failures.push(format!(
                        "{id}: the message should name the holder ({pid}): {msg:?}"
                    ));
                }
            }
            registered.push(None);
        } else {
            if status != 201 {
                failures.push(format!(
                    "{id}: registration {i} ({url}) should succeed: {status} {body}"
                ));
            }
            registered.push(Some(url));
        }
    }

    // The request, with its ports remapped the same way.
    let port = ports
        .iter()
        .find(|(from, _)| *from == literal_local)
        .map(|(_, to)| *to)
        .expect("local port mapped");
    let host = req["host_header"].as_str().map(|h| remap(h, &ports));
    let raw = req["raw_target"].as_str().expect("raw_target");
    let raw = if raw.contains("://") {
        remap(raw, &ports)
    } else {
        raw.to_owned()
    };
    let target = target_bytes(&raw, req["raw_target_encoding"].as_str());
    let method = req["method"].as_str().unwrap_or("GET");
    let version = req["http_version"].as_str().unwrap_or("1.1");
    let mut request = Vec::new();
    request.extend_from_slice(format!("{method} ").as_bytes());
    request.extend_from_slice(&target);
    request.extend_from_slice(format!(" HTTP/{version}\r\n").as_bytes());
    if let Some(h) = &host {
        request.extend_from_slice(format!("Host: {h}\r\n").as_bytes());
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");

    let expect = &v["expect"];
    let addr = SocketAddr::new(local_ip, port);
    match expect.get("connection").and_then(Value::as_str) {
        Some("foreign_listener") => match TcpStream::connect(addr) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                s.write_all(&request).expect("send");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                if !out.ends_with(b"\r\n\r\nforeign") {
                    failures.push(format!(
                        "{id}: the foreign listener should answer, got {:?}",
                        String::from_utf8_lossy(&out)
                    ));
                }
            }
            Err(e) => failures.push(format!("{id}: cannot reach the foreign listener: {e}")),
        },
        Some("refused") => {
            if TcpStream::connect(addr).is_ok() {
                failures.push(format!("{id}: {addr} should refuse connections"));
            }
        }
        Some(other) => panic!("{id}: unknown expect.connection {other:?}"),
        None => {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(&request).expect("send");
            if let Some(status) = expect["status"].as_u64() {
                let mut buf = Vec::new();
                let (got, head, _) = read_response(&mut s, &mut buf, method == "HEAD");
                if u64::from(got) != status {
                    failures.push(format!("{id}: status {got}, want {status}: {head}"));
                }
            } else if let Some(winner) = expect["winner"].as_str() {
                // No worker is attached: the request waits in the winner's queue.
                let index = registrations
                    .iter()
                    .position(|r| *r == winner)
                    .expect("the winner is one of the registrations");
                let queue = format!("v{index}");
                let waiting = eventually(5, || {
                    d.state()["queues"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|q| q["name"] == queue.as_str() && q["depth"] == 1)
                });
                if !waiting {
                    failures.push(format!(
                        "{id}: the request did not reach {winner} ({queue}): {}",
                        d.state()
                    ));
                }
            }
        }
    }
    drop(foreign);
    failures
}

#[test]
fn machine_dependent_routing_vectors() {
    let Some(vectors) = spec_vectors("routing-vectors.json") else {
        return;
    };
    let mut ran = 0;
    let mut failures = Vec::new();
    for v in vectors.iter().filter(|v| v.get("environment").is_some()) {
        ran += 1;
        failures.extend(run_environment_vector(v));
    }
    assert!(
        failures.is_empty(),
        "{} failures in {ran} vectors:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if ran == 0 {
        eprintln!("note: no routing vector with an environment key");
    }
}

#[test]
fn the_vector_harness_remaps_ports_consistently() {
    let ports = [(8080, 40001), (80, 40002)];
    assert_eq!(
        remap("http://localhost:8080/a/", &ports),
        "http://localhost:40001/a/"
    );
    assert_eq!(remap("http://[::1]:80/", &ports), "http://[::1]:40002/");
    assert_eq!(remap("http://+:8081/", &ports), "http://+:8081/");
    assert_eq!(remap("localhost:8080", &ports), "localhost:40001");
    assert_eq!(remap("localhost", &ports), "localhost");
    assert_eq!(remap("http://h:8080", &ports), "http://h:40001");
}
