//! Ten thousand idle connections, held cheaply while a normal client is served.

use std::io::{ErrorKind, Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{connect_timeout, daemon_connections, heavy, tail, under_ci};
use crate::harness::*;

/// Makes sure process `pid` may open `want` descriptors: raises its soft limit to its hard
/// one with `prlimit` (and the hard one too when allowed). False, with a note, when it
/// cannot be done outside CI; under CI=true it fails the test.
fn ensure_nofile(pid: u32, want: u64) -> bool {
    let limits = || -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut words = line["Max open files".len()..].split_whitespace();
        let num = |w: Option<&str>| match w? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        };
        Some((num(words.next())?, num(words.next())?))
    };
    let Some((soft, hard)) = limits() else {
        panic!("cannot read /proc/{pid}/limits");
    };
    if soft >= want {
        return true;
    }
    let target = if hard >= want {
        format!("{hard}:{hard}")
    } else {
        format!("{want}:{want}")
    };
    let ran = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={target}")])
        .status();
    let now = limits().map_or(0, |(s, _)| s);
    if now >= want {
        return true;
    }
    let why = format!(
        "process {pid} may open {now} descriptors, {want} are needed (prlimit: {ran:?}, hard limit {hard})"
    );
    assert!(!under_ci(), "{why}");
    println!("skipped: {why}");
    false
}

#[test]
fn ten_thousand_idle_connections_are_held_cheaply() {
    const N: usize = 10_000;
    const BATCH: usize = 500;
    let _turn = heavy();
    // This test raises its process's limit on open files (which the daemons of the tests
    // beside it would inherit) and holds ten thousand sockets: in a process of its own.
    if !alone_in_a_process(
        module_path!(),
        "ten_thousand_idle_connections_are_held_cheaply",
    ) {
        return;
    }
    let want = N as u64 + 256;
    if !ensure_nofile(std::process::id(), want) {
        return;
    }
    let mut d = Daemon::start();
    let pid = d.proc.child.id();
    if !ensure_nofile(pid, want) {
        return;
    }
    let (_app, port) = hello_on_free_port(&d, "idle", &["/idle/"], &[]);
    for i in 0..50 {
        assert_eq!(get(port, "x", &format!("/idle/warm{i}")).0, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = vm_rss_kib(pid);
    let started = Instant::now();
    let wall = started + Duration::from_secs(30);

    // Half send nothing at all.
    let mut silent = Vec::with_capacity(N / 2);
    while silent.len() < N / 2 {
        assert!(
            Instant::now() < wall,
            "only {} silent connections opened in 30 s",
            silent.len()
        );
        match connect_timeout(port) {
            Ok(s) => silent.push(s),
            Err(e) => panic!(
                "connection {} refused or failed: {e}\n{}",
                silent.len(),
                tail(&d.log(), 10)
            ),
        }
    }
    // The other half send one request each and stay, idle, on keep-alive (in batches the
    // queue can hold).
    let mut idle = Vec::with_capacity(N / 2);
    while idle.len() < N / 2 {
        assert!(
            Instant::now() < wall,
            "only {} keep-alive connections ready in 30 s",
            idle.len()
        );
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let k = idle.len() + batch.len();
            let mut s = connect_timeout(port)
                .unwrap_or_else(|e| panic!("keep-alive connection {k} refused or failed: {e}"));
            s.write_all(format!("GET /idle/k{k} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("write");
            batch.push(s);
        }
        for mut s in batch {
            let mut buf = Vec::new();
            let (status, head, _) = read_response(&mut s, &mut buf, false);
            assert_eq!(status, 200, "{head}");
            assert!(!head.contains("Connection: close"), "{head}");
            idle.push(s);
        }
    }
    let opened = started.elapsed();
    let mut held = 0;
    let counted = eventually(15, || {
        held = daemon_connections(&d);
        held >= N as u64
    });
    assert!(
        counted,
        "the daemon counts {held} connections, {N} are open"
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_rss_kib(pid);

    // None was refused or closed: every read would block.
    let mut ended = Vec::new();
    for (i, s) in silent.iter_mut().chain(idle.iter_mut()).enumerate() {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => ended.push(format!("connection {i}: {other:?}")),
        }
    }
    assert!(
        ended.is_empty(),
        "{} of {N} connections did not stay open: {:?}",
        ended.len(),
        &ended[..ended.len().min(10)]
    );
    // A normal client is still served while they are held.
    let (status, _, body) = get(port, "x", "/idle/normal");
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(d.proc.child.try_wait(), Ok(None)),
        "the daemon exited"
    );

    let per_conn = (after.saturating_sub(before) * 1024) / N as u64;
    println!(
        "idle connections: {N} opened and answered in {opened:?}; daemon VmRSS {before} KiB before, \
         {after} KiB after: {per_conn} bytes per connection"
    );
    drop(silent);
    drop(idle);
    let mut left = 0;
    assert!(
        eventually(10, || {
            left = daemon_connections(&d);
            left == 0
        }),
        "the daemon still counts {left} connections after they closed"
    );
    println!(
        "idle connections: {left} still counted by the daemon after closing; VmRSS now {} KiB; the test took {:?}",
        vm_rss_kib(pid),
        started.elapsed()
    );
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} bytes of daemon memory per idle connection, more than 16 KiB \
         (VmRSS {before} KiB before, {after} KiB with {N} connections)"
    );
}
