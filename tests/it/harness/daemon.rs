//! The processes under test: a daemon in a folder of its own, started from configuration
//! text by [`DaemonBuilder`], and apps started from the example binaries.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::control::Ctl;
use super::free_port;

/// A fresh folder under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portshare-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// [`TempDir::new`], with mode 0755 whatever the umask: every account may reach what
    /// it holds (a control socket, a copy of this binary).
    pub fn open_to_all(tag: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new(tag);
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `portshare` binary under test.
pub fn portshare_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portshare"))
}

/// An example binary, built by `cargo test` next to the test executables.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-xxxx → target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile folder");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds the examples",
        bin.display()
    );
    bin
}

/// A child process killed on drop; its stderr goes to a file kept for failure messages.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (at most 10 s) for the exit.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A daemon under test: `portshare serve --control DIR/control.sock --config
/// DIR/portshare.toml --threads 2`, on the listen list its [`DaemonBuilder`] gave.
pub struct Daemon {
    pub proc: Proc,
    pub control: PathBuf,
    pub dir: TempDir,
    /// The configuration file, `DIR/portshare.toml`.
    pub config: PathBuf,
    settings: Settings,
}

/// How to start a [`Daemon`]. The configuration file is the test's text between two lines
/// the harness owns: `state_file` first, in the daemon's folder, and an `[errlog]` table
/// last, writing to `DIR/httperr` (see [`DaemonBuilder::errlog_folder`]). So the text
/// holds top-level keys before its tables, and neither `state_file` nor `[errlog]`.
///
/// ```ignore
/// let d = Daemon::builder()
///     .tag("limits")
///     .config("[timers]\nheader_wait = 1\n")
///     .spawn();
/// ```
pub struct DaemonBuilder {
    dir: Option<TempDir>,
    /// Start on the configuration file already in `dir` (a restart).
    keep_config: bool,
    settings: Settings,
}

/// What a daemon is started with, kept for restarts and rewrites of its configuration.
#[derive(Clone)]
struct Settings {
    tag: String,
    config: String,
    /// `--iplisten IP`; `None`: the configuration's `iplisten`.
    iplisten: Option<String>,
    errlog: Errlog,
    wrapper: Vec<String>,
    /// `--threads N`.
    threads: usize,
}

#[derive(Clone)]
enum Errlog {
    /// `DIR/httperr`.
    InDir,
    At(PathBuf),
    Off,
}

impl Settings {
    /// The configuration file's text around `config`.
    fn file_text(&self, dir: &Path, config: &str) -> String {
        let mut text = format!(
            "state_file = {:?}\n{config}",
            dir.join("state.toml").display().to_string()
        );
        if !text.ends_with('\n') {
            text.push('\n');
        }
        match &self.errlog {
            Errlog::InDir => text.push_str(&format!(
                "\n[errlog]\nfolder = {:?}\n",
                dir.join("httperr").display().to_string()
            )),
            Errlog::At(folder) => text.push_str(&format!(
                "\n[errlog]\nfolder = {:?}\n",
                folder.display().to_string()
            )),
            Errlog::Off => text.push_str("\n[errlog]\nenabled = false\n"),
        }
        text
    }
}

impl DaemonBuilder {
    /// Names the daemon's folder: `portshare-test-TAG-PID-N` in the temp dir. The default:
    /// `daemon`.
    pub fn tag(mut self, tag: &str) -> DaemonBuilder {
        tag.clone_into(&mut self.settings.tag);
        self
    }

    /// The test's part of the configuration file: top-level keys first, then tables,
    /// without `state_file` or `[errlog]`. The default: nothing.
    pub fn config(mut self, toml: impl Into<String>) -> DaemonBuilder {
        self.settings.config = toml.into();
        self
    }

    /// Starts with `--iplisten IP`, whatever the configuration says. The default: 127.0.0.1.
    pub fn iplisten(mut self, ip: &str) -> DaemonBuilder {
        self.settings.iplisten = Some(ip.to_owned());
        self
    }

    /// Starts without `--iplisten`: the configuration's `iplisten` applies (and reloads may
    /// change it). The configuration must have one: a test daemon never listens on every
    /// address.
    pub fn iplisten_from_config(mut self) -> DaemonBuilder {
        self.settings.iplisten = None;
        self
    }

    /// Writes the error log into `folder` rather than `DIR/httperr`.
    pub fn errlog_folder(mut self, folder: &Path) -> DaemonBuilder {
        self.settings.errlog = Errlog::At(folder.to_owned());
        self
    }

    /// Writes no error log.
    pub fn errlog_off(mut self) -> DaemonBuilder {
        self.settings.errlog = Errlog::Off;
        self
    }

    /// Starts the daemon through `command`, which runs the rest of its command line (such as
    /// `prlimit --nofile=256:256 --`).
    pub fn wrapper(mut self, command: &[&str]) -> DaemonBuilder {
        self.settings.wrapper = command.iter().map(|&a| a.to_owned()).collect();
        self
    }

    /// Runs the daemon's runtime on `n` threads. The default: 2.
    pub fn threads(mut self, n: usize) -> DaemonBuilder {
        self.settings.threads = n;
        self
    }

    /// Uses `dir` as the daemon's folder, instead of a new one.
    pub fn dir(mut self, dir: TempDir) -> DaemonBuilder {
        self.dir = Some(dir);
        self
    }

    /// Writes the configuration, starts the daemon and waits until it answers on its
    /// control socket.
    pub fn spawn(self) -> Daemon {
        let DaemonBuilder {
            dir,
            keep_config,
            settings,
        } = self;
        let dir = dir.unwrap_or_else(|| TempDir::new(&settings.tag));
        let config = dir.0.join("portshare.toml");
        if !keep_config {
            std::fs::write(&config, settings.file_text(&dir.0, &settings.config))
                .expect("write the configuration");
        }
        if settings.iplisten.is_none() {
            let text = std::fs::read_to_string(&config).unwrap_or_default();
            assert!(
                text.lines().any(|l| l.trim_start().starts_with("iplisten")),
                "a test daemon without --iplisten needs a listen list in its configuration:\n{text}"
            );
        }
        let control = dir.0.join("control.sock");
        let log = dir.0.join(format!("daemon-{}.log", free_port()));
        let mut cmd = match settings.wrapper.as_slice() {
            [] => Command::new(portshare_bin()),
            [program, args @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(portshare_bin());
                cmd
            }
        };
        cmd.arg("serve")
            .arg("--control")
            .arg(&control)
            .arg("--config")
            .arg(&config)
            .args(["--threads", &settings.threads.to_string()]);
        if let Some(ip) = &settings.iplisten {
            cmd.args(["--iplisten", ip]);
        }
        cmd.env("PORTSHARE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("start portshare serve");
        let d = Daemon {
            proc: Proc { child, log },
            control,
            dir,
            config,
            settings,
        };
        d.wait_ready();
        d
    }

    /// Starts a daemon on the configuration `config(port)` gives for a free port of
    /// 127.0.0.1, in a new folder; tries another port when that one was taken before the
    /// daemon could bind it.
    pub fn spawn_on_free_port(self, config: impl Fn(u16) -> String) -> (Daemon, u16) {
        assert!(self.dir.is_none(), "each try takes a folder of its own");
        for _ in 0..5 {
            let port = free_port();
            let daemon = DaemonBuilder {
                dir: None,
                keep_config: false,
                settings: self.settings.clone(),
            }
            .config(config(port))
            .spawn();
            if daemon.state()["bind_failures"]
                .as_array()
                .is_none_or(|f| f.is_empty())
            {
                return (daemon, port);
            }
        }
        panic!("no free port the daemon could bind");
    }
}

impl Daemon {
    /// A daemon on `--iplisten 127.0.0.1`, in a new folder, with nothing configured.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            dir: None,
            keep_config: false,
            settings: Settings {
                tag: "daemon".to_owned(),
                config: String::new(),
                iplisten: Some("127.0.0.1".to_owned()),
                errlog: Errlog::InDir,
                wrapper: Vec::new(),
                threads: 2,
            },
        }
    }

    /// `Daemon::builder().spawn()`.
    pub fn start() -> Daemon {
        Daemon::builder().spawn()
    }

    /// Kills the daemon and returns what starts it again in the same folder (so on the same
    /// control socket and state file), on the configuration file as it is now.
    pub fn into_builder(self) -> DaemonBuilder {
        let Daemon {
            mut proc,
            dir,
            settings,
            ..
        } = self;
        proc.kill();
        DaemonBuilder {
            dir: Some(dir),
            keep_config: true,
            settings,
        }
    }

    /// Kills the daemon and starts another in the same folder.
    pub fn restart(self) -> Daemon {
        self.into_builder().spawn()
    }

    /// The configuration file's text with `toml` as the test's part (see [`DaemonBuilder`]).
    pub fn config_text(&self, toml: &str) -> String {
        self.settings.file_text(&self.dir.0, toml)
    }

    /// Rewrites the configuration file with `toml` as the test's part, for a reload.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config, self.config_text(toml)).expect("write the configuration");
    }

    /// Where the error log goes: `DIR/httperr` unless the builder said otherwise.
    pub fn errlog_folder(&self) -> PathBuf {
        match &self.settings.errlog {
            Errlog::At(folder) => folder.clone(),
            Errlog::InDir | Errlog::Off => self.dir.0.join("httperr"),
        }
    }

    /// Every httperr file written so far, in the order of their numbers.
    pub fn errlog_text(&self) -> String {
        let mut files: Vec<_> = std::fs::read_dir(self.errlog_folder())
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("httperr"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        });
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Waits until the daemon answers on its control socket, which it does only once its
    /// configuration is applied (the socket itself exists a moment earlier).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.control).is_ok() {
                let (status, body) = self.ctl().call("GET", "/v1/state", None);
                assert_eq!(status, 200, "{body}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not come up:\n{}", self.proc.log_text());
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// A new control connection (a session of its own).
    pub fn ctl(&self) -> Ctl {
        Ctl::connect(&self.control)
    }

    /// Starts the `hello` example against this daemon and waits for `ready`.
    pub fn hello(&self, name: &str, prefixes: &[&str], extra: &[&str]) -> App {
        App::start(&self.control, "hello", name, prefixes, extra)
    }

    /// The state view.
    pub fn state(&self) -> serde_json::Value {
        let (status, body) = self.ctl().call("GET", "/v1/state", None);
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// An app process started from an example binary.
pub struct App {
    pub proc: Proc,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl App {
    pub fn start(
        control: &Path,
        example: &str,
        name: &str,
        prefixes: &[&str],
        extra: &[&str],
    ) -> App {
        let app = App::spawn(control, example, name, prefixes, extra);
        app.expect_ready()
    }

    pub fn spawn(
        control: &Path,
        example: &str,
        name: &str,
        prefixes: &[&str],
        extra: &[&str],
    ) -> App {
        App::spawn_via(&[], &example_bin(example), control, name, prefixes, extra)
    }

    /// Starts `program` (an example binary) through `wrapper` (such as `setpriv ...`).
    pub fn spawn_via(
        wrapper: &[String],
        program: &Path,
        control: &Path,
        name: &str,
        prefixes: &[&str],
        extra: &[&str],
    ) -> App {
        let example = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = control
            .parent()
            .expect("control folder")
            .join(format!("{example}-{name}-{}.log", free_port()));
        let mut cmd = match wrapper {
            [] => Command::new(program),
            [first, args @ ..] => {
                let mut cmd = Command::new(first);
                cmd.args(args).arg(program);
                cmd
            }
        };
        cmd.arg("--control").arg(control);
        if !name.is_empty() {
            cmd.args(["--name", name]);
        }
        cmd.args(extra)
            .args(prefixes)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("start example");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        App {
            proc: Proc { child, log },
            stdout,
        }
    }

    /// Waits for the `ready` line; panics with the app's stderr if it exits first.
    pub fn expect_ready(mut self) -> App {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap_or(0);
        assert!(
            n > 0 && line.trim() == "ready",
            "app did not print ready (got {line:?}):\n{}",
            self.proc.log_text()
        );
        self
    }

    /// Waits for the app to exit and returns its code and stderr.
    pub fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return (status.code(), self.proc.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("app did not exit:\n{}", self.proc.log_text());
    }
}

/// Starts `hello` with `paths` on a free port of 127.0.0.1, trying another port when
/// something else took the first meanwhile (ERROR_SHARING_VIOLATION).
pub fn hello_on_free_port(d: &Daemon, name: &str, paths: &[&str], extra: &[&str]) -> (App, u16) {
    for _ in 0..5 {
        let port = free_port();
        let prefixes: Vec<String> = paths
            .iter()
            .map(|p| format!("http://+:{port}{p}"))
            .collect();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let mut app = App::spawn(&d.control, "hello", name, &refs, extra);
        let mut line = String::new();
        let _ = app.stdout.read_line(&mut line);
        if line.trim() == "ready" {
            return (app, port);
        }
        let log = app.proc.log_text();
        assert!(
            log.contains("ERROR_SHARING_VIOLATION"),
            "hello failed:\n{log}"
        );
    }
    panic!("no free port after 5 tries");
}
