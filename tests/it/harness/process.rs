//! Processes beyond the daemon and its apps: this test binary run again (one test alone, as
//! another account, or in a process of its own), commands that must end by themselves, and
//! what the tests read of a process.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::{Proc, TempDir};
use super::free_port;

/// The command prefix that runs a program as `uid` (and gid `uid`, no supplementary
/// groups), with numeric ids so no user need exist.
pub fn as_uid(uid: u32) -> Vec<String> {
    [
        "setpriv",
        "--reuid",
        &uid.to_string(),
        "--regid",
        &uid.to_string(),
        "--clear-groups",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Whether this process may run programs as other uids through `setpriv`. Outside CI a
/// machine that cannot skips the tests that need it (false, with a note); under `CI` it
/// fails them.
pub fn can_switch_uid() -> bool {
    let ran = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "true",
        ])
        .output();
    match ran {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv failed under CI: {err}"
            );
            eprintln!("skipped: cannot switch uid here ({err})");
            false
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "setpriv missing under CI: {e}"
            );
            eprintln!("skipped: setpriv not available ({e})");
            false
        }
    }
}

/// The arguments that make this test binary, or a copy of it, run test `name` of `module`
/// alone, its output uncaptured: `module` is the caller's `module_path!()`, whose first part
/// is the binary's own name (`it::access`), which libtest's test paths leave out
/// (`access::access_probe`). A wrong path would run no test at all and pass.
pub fn only_test(module: &str, name: &str) -> Vec<String> {
    let path = match module.split_once("::") {
        Some((_, inner)) => format!("{inner}::{name}"),
        None => name.to_owned(),
    };
    ["--exact", &path, "--nocapture", "--test-threads", "1"]
        .map(str::to_owned)
        .to_vec()
}

/// For a test that changes what belongs to the whole process (such as its limit on open
/// files) or takes much of it: runs the test again, alone, in a process of its own, and
/// returns false; there, returns true. A test opens with
/// `if !alone_in_a_process(module_path!(), "its_name") { return; }`, so the tests beside it
/// keep this process as it was. The other process's output is printed here, and its
/// failure fails the test.
pub fn alone_in_a_process(module: &str, name: &str) -> bool {
    const ALONE: &str = "PORTSHARE_TEST_ALONE";
    let args = only_test(module, name);
    let path = args[1].clone();
    if std::env::var_os(ALONE).is_some_and(|v| v == path.as_str()) {
        return true;
    }
    let dir = TempDir::new("alone");
    let log = dir.0.join("output.log");
    let out = std::fs::File::create(&log).expect("output file");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(&args)
        .env(ALONE, &path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("output file"))
        .stderr(out)
        .spawn()
        .expect("run the test in a process of its own");
    let mut proc = Proc { child, log };
    // The test bounds its own waits; this bound only keeps a hang from lasting.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            proc.kill();
            panic!(
                "{path}, in a process of its own, did not end within 10 minutes:\n{}",
                proc.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = proc.log_text();
    println!("{text}");
    assert!(
        status.success(),
        "{path} failed in a process of its own ({status}; its output is above)"
    );
    assert!(
        text.contains("test result: ok. 1 passed"),
        "{path} did not run in the process of its own (a wrong name?)"
    );
    false
}

/// Runs a command that must end by itself within `secs`; its exit code, stdout and stderr.
pub fn run_to_exit(mut cmd: Command, dir: &Path, secs: u64) -> (Option<i32>, String, String) {
    let out = dir.join(format!("cmd-{}.out", free_port()));
    let err = dir.join(format!("cmd-{}.err", free_port()));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start the command");
    let mut proc = Proc {
        child,
        log: err.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the command did not exit by itself within {secs} s:\n{}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

/// Whether `prlimit` (util-linux) runs here; as [`can_switch_uid`] for CI.
pub fn have_prlimit() -> bool {
    match Command::new("prlimit").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "prlimit missing under CI: {other:?}"
            );
            eprintln!("skipped: prlimit not available ({other:?})");
            false
        }
    }
}

/// Copies `from` to `to` for other uids to run, and waits until it can be executed: a
/// test thread that forks while the copy is open for writing keeps it open in its child
/// until that child execs, and running the copy meanwhile fails with ETXTBSY.
pub fn copy_executable(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy the executable");
    for _ in 0..250 {
        match Command::new(to)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return,
        }
    }
    panic!("{} stayed busy", to.display());
}

/// The resident memory of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// `text` without its ANSI colour sequences (the daemon's log, a tool's output).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether `python3` runs here: outside CI a machine without it skips the tests that
/// start Python servers (false, with a note); under `CI` it fails them.
pub fn have_python() -> bool {
    match Command::new(python()).arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3 missing under CI: {other:?}"
            );
            eprintln!("skipped: python3 not available ({other:?})");
            false
        }
    }
}

/// A Python that every uid may run (not a per-user shim).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}
