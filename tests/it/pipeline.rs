//! Pipelined upstream connections (`pipeline = N` on an upstream queue): requests from
//! many clients, one after another on few upstream connections, each answered with its own
//! response; requests with a body never on a pipe; requests a closing upstream left
//! unanswered sent again; the setting checked in the API and the configuration file.

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::*;

/// A daemon forwarding `/legacy/` on a free port to `up`, `pipeline` requests deep.
fn pipelined_daemon(tag: &str, up: &Scripted, pipeline: u32) -> (Daemon, u16) {
    let addr = up.addr.clone();
    Daemon::builder().tag(tag).spawn_on_free_port(move |port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n[[queue]]\nname = \"legacy\"\n\
             urls = [\"http://+:{port}/legacy/\"]\nupstream = \"{addr}\"\npipeline = {pipeline}\n"
        )
    })
}

/// The target of a request head.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).expect("a target")
}

/// Whether another request is already there behind this one: read past its head, or
/// waiting in the socket.
fn followed(x: &mut Exchange<'_>) -> bool {
    if !x.rest.is_empty() {
        return true;
    }
    x.s.set_nonblocking(true).expect("nonblocking");
    let mut one = [0u8; 1];
    let there = matches!(x.s.peek(&mut one), Ok(n) if n > 0);
    x.s.set_nonblocking(false).expect("blocking");
    there
}

/// Client `i`'s `n` GETs, one after another on one connection: each must be answered
/// with its own path.
fn own_answers(port: u16, i: usize, n: usize) -> Result<(), String> {
    let mut c = connect(port);
    let mut buf = Vec::new();
    for j in 0..n {
        let path = format!("/legacy/c{i}/r{j}");
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| format!("{path}: {e}"))?;
        let (status, head, body) = read_response(&mut c, &mut buf, false);
        if (status, &body[..]) != (200, path.as_bytes()) {
            return Err(format!("{path}: {head}{}", String::from_utf8_lossy(&body)));
        }
    }
    Ok(())
}

#[test]
fn pipelined_requests_each_get_their_own_answer() {
    // Answers a moment late, so that requests gather on each connection; the body names
    // the request it answers.
    let (piped, posts_followed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (p, f) = (piped.clone(), posts_followed.clone());
    let up = Scripted::start(move |x| {
        std::thread::sleep(Duration::from_millis(2));
        let body = x.body();
        if followed(x) {
            if x.head.starts_with("POST") {
                f.fetch_add(1, Ordering::Relaxed);
            }
            p.fetch_add(1, Ordering::Relaxed);
        }
        let mut text = target(&x.head).to_string();
        if !body.is_empty() {
            text.push(':');
            text.push_str(&String::from_utf8_lossy(&body));
        }
        if x.head.starts_with("HEAD") {
            // The length the GET would have, and no body.
            text.clear();
        }
        write!(
            x.s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            if x.head.starts_with("HEAD") {
                7
            } else {
                text.len()
            }
        )
        .expect("answer");
        true
    });
    let (_d, port) = pipelined_daemon("pipeline-own", &up, 4);
    let clients: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = connect(port);
                let mut buf = Vec::new();
                for j in 0..10 {
                    let path = format!("/legacy/c{i}/r{j}");
                    let (expect, head_only) = match j % 5 {
                        3 => {
                            let body = format!("b{i}-{j}");
                            write!(
                                c,
                                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .expect("send");
                            (format!("{path}:{body}"), false)
                        }
                        4 => {
                            write!(c, "HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
                            (String::new(), true)
                        }
                        _ => {
                            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
                            (path.clone(), false)
                        }
                    };
                    let (status, head, body) = read_response(&mut c, &mut buf, head_only);
                    assert_eq!(status, 200, "{path}: {head}");
                    assert_eq!(String::from_utf8_lossy(&body), expect, "{path}: {head}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client");
    }
    assert_eq!(
        up.heads().len(),
        240,
        "each request reached the upstream once"
    );
    assert!(
        piped.load(Ordering::Relaxed) > 0,
        "no request ever waited behind another on its connection"
    );
    assert_eq!(
        posts_followed.load(Ordering::Relaxed),
        0,
        "a request went on a connection behind a POST"
    );
}

#[test]
fn requests_left_on_a_pipe_its_upstream_closed_go_again() {
    // Every connection answers its first request, late, and closes with the others unread.
    let left = Arc::new(AtomicUsize::new(0));
    let l = left.clone();
    let up = Scripted::start(move |x| {
        std::thread::sleep(Duration::from_millis(5));
        if followed(x) {
            l.fetch_add(1, Ordering::Relaxed);
        }
        // In one write: closing with requests unread resets the connection, and the
        // kernel drops what it had not sent yet of an answer written in pieces (an answer
        // cut short is 502, rightly).
        let text = target(&x.head).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        x.s.write_all(answer.as_bytes()).expect("answer");
        false
    });
    let (d, port) = pipelined_daemon("pipeline-closed", &up, 8);
    let clients: Vec<_> = (0..8)
        .map(|i| std::thread::spawn(move || own_answers(port, i, 3)))
        .collect();
    for c in clients {
        if let Err(e) = c.join().expect("a client") {
            panic!("{e}\ndaemon log:\n{}", d.log());
        }
    }
    assert!(
        left.load(Ordering::Relaxed) > 0,
        "no connection closed with requests left on it"
    );
}

#[test]
fn a_client_that_does_not_read_holds_up_no_one_else() {
    // /legacy/big is far more than the sockets and the pipe hold; the rest is small.
    let up = Scripted::start(|x| {
        let path = target(&x.head).to_string();
        if path == "/legacy/big" {
            // A first piece the sockets hold, a pause while the other clients' requests
            // join this connection behind it, then far more than the sockets and the
            // pipe hold.
            let chunk = vec![b'x'; 1 << 20];
            let _ = write!(
                x.s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                256 << 20
            );
            if x.s.write_all(&chunk[..64 << 10]).is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(700));
            if x.s.write_all(&chunk[64 << 10..]).is_err() {
                return false;
            }
            for _ in 1..256 {
                if x.s.write_all(&chunk).is_err() {
                    return false;
                }
            }
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
        write!(
            x.s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
            path.len()
        )
        .expect("answer");
        true
    });
    let (_d, port) = pipelined_daemon("pipeline-slow", &up, 8);
    let mut stalled = connect(port);
    stalled
        .write_all(b"GET /legacy/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for i in 0..6 {
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let _ = done.send(own_answers(port, i, 3));
        });
    }
    drop(done_tx);
    for _ in 0..6 {
        let answered = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("every other client answered while one does not read");
        if let Err(e) = answered {
            panic!("{e}");
        }
    }
    drop(stalled);
}

#[test]
fn pipeline_is_for_upstream_queues_and_bounded() {
    let (d, _port) = Daemon::builder()
        .tag("pipeline-api")
        .spawn_on_free_port(|_| "iplisten = [\"127.0.0.1\"]\n".to_string());
    let mut ctl = d.ctl();
    for (spec, why) in [
        (
            serde_json::json!({ "name": "plain", "mode": "create", "pipeline": 4 }),
            "upstream queues only",
        ),
        (
            serde_json::json!({ "name": "f0", "mode": "create", "upstream": "127.0.0.1:9", "pipeline": 0 }),
            "expected 1",
        ),
        (
            serde_json::json!({ "name": "f65", "mode": "create", "upstream": "127.0.0.1:9", "pipeline": 65 }),
            "expected 1",
        ),
    ] {
        let (status, body) = ctl.call("POST", "/v1/queues", Some(spec.clone()));
        assert_eq!(
            (status, body["code"].as_u64()),
            (400, Some(87)),
            "{spec}: {body}"
        );
        assert!(body.to_string().contains(why), "{spec}: {body}");
    }
    let up = ctl.create_queue(serde_json::json!({
        "name": "fwd", "mode": "create", "upstream": "127.0.0.1:9", "pipeline": 64
    }));
    assert!(up.is_object(), "{up}");
    // The configuration file is checked alike, the key named.
    let dir = TempDir::new("pipeline-config");
    for (queue, why) in [
        (
            "urls = [\"http://+:8080/p/\"]\npipeline = 2\n",
            "upstream queues only",
        ),
        (
            "urls = [\"http://+:8080/p/\"]\nupstream = \"127.0.0.1:9\"\npipeline = 65\n",
            "expected 1",
        ),
    ] {
        let file = dir.0.join("bad.toml");
        std::fs::write(&file, format!("[[queue]]\nname = \"q\"\n{queue}")).expect("write");
        let out = Command::new(portshare_bin())
            .args(["check-config", &file.display().to_string()])
            .output()
            .expect("portshare runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("pipeline") && err.contains(why), "{err}");
    }
}
