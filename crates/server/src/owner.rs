//! Whose an upstream is. A queue an account other than root created over the API forwards
//! only to a server that account runs: on every new connection to the queue's upstream the
//! daemon finds the account at the other end and refuses the connection when it is not the
//! queue owner's. A port can change hands between two connections, so one check at creation
//! would prove nothing.
//!
//! - `unix:PATH`: the peer credentials of the connected socket (`SO_PEERCRED`: the process
//!   that called `listen()` on it).
//! - A loopback `IP:port`: the server side of *that* connection, looked up by its addresses
//!   through sock_diag ([`crate::sockdiag`], microseconds), else found in `/proc/net/tcp`
//!   (or `/proc/net/tcp6`, where a `::` socket serves IPv4 clients at IPv4-mapped
//!   addresses), and its owner (the account that created the listening socket).
//!
//! Two uids never pass for an account other than root: the overflow uid 65534 (a socket
//! owned by an account this user namespace cannot name) and uid 0 (a socket root or
//! systemd created, which the account may merely have been handed). This module owns the
//! lookups and the verdict; the upstream pool ([`crate::upstream`]) calls it, and the
//! connection answers the refusal (502 `Upstream_Owner`, see [`rejection`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use portshare_router::{Reason, Rejection};

use crate::bind::Holder;

/// The uid the kernel shows for an account outside the reader's user namespace.
pub(crate) const OVERFLOW_UID: u32 = 65534;

/// How long to look for the server side of a fresh loopback connection. The kernel lists
/// it once the server has the handshake's last ACK, which on loopback is almost always
/// before `connect` returns. The look ends sooner when the client's side is no longer
/// established: the server closed or reset the connection, and nothing will appear.
const FIND_FOR: Duration = Duration::from_millis(200);

/// An upstream served by another account than the queue owner's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotOwner {
    /// What was found at the other end.
    pub(crate) found: Found,
    /// The queue owner's uid.
    pub(crate) owner: u32,
    /// The process serving it, when `/proc` names it.
    pub(crate) holder: Option<Holder>,
}

/// Who is at the other end of an upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A socket owned by this uid.
    Uid(u32),
    /// No server side of the connection in `/proc/net/tcp*` (it closed at once, say).
    Nothing,
}

impl fmt::Display for NotOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.found {
            Found::Uid(OVERFLOW_UID) => write!(
                f,
                "served by the overflow uid {OVERFLOW_UID} (an account outside this user \
                 namespace)"
            )?,
            Found::Uid(0) => f.write_str("served by a socket root owns (uid 0)")?,
            Found::Uid(uid) => write!(f, "served by uid {uid}")?,
            Found::Nothing => f.write_str(
                "its server side could not be found in /proc (closed or reset at once)",
            )?,
        }
        if let Some(Holder { pid: Some(pid), .. }) = &self.holder {
            write!(f, ", PID {pid}")?;
            if let Some(command) = &self.holder.as_ref().and_then(|h| h.command.clone()) {
                write!(f, " ({command})")?;
            }
        }
        write!(
            f,
            ", not by the queue owner (uid {}): requests get 502 until the owner serves it",
            self.owner
        )
    }
}

impl std::error::Error for NotOwner {}

/// The verdict on a socket owned by `found`, for a queue of `owner` (never root: root's
/// queues are not checked).
pub(crate) fn judge(owner: u32, found: Found) -> Result<(), NotOwner> {
    match found {
        Found::Uid(uid) if uid == owner && uid != OVERFLOW_UID && uid != 0 => Ok(()),
        found => Err(NotOwner {
            found,
            owner,
            holder: None,
        }),
    }
}

/// Checks the peer of a Unix stream the daemon just connected.
pub(crate) async fn check_unix(stream: &tokio::net::UnixStream, owner: u32) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let Err(mut refused) = judge(owner, Found::Uid(cred.uid())) else {
        return Ok(());
    };
    if let Some(pid) = cred.pid().and_then(|p| u32::try_from(p).ok()) {
        let uid = cred.uid();
        refused.holder = lookups::run(move || name_process(pid, uid))
            .await
            .ok()
            .flatten();
    }
    Err(io::Error::new(io::ErrorKind::PermissionDenied, refused))
}

/// Checks the server side of a loopback TCP connection the daemon just opened. The lookup
/// reads `/proc` on the lookup threads.
pub(crate) async fn check_tcp(stream: &tokio::net::TcpStream, owner: u32) -> io::Result<()> {
    let client = stream.local_addr()?;
    let server = stream.peer_addr()?;
    let verdict = lookups::run(move || check_tcp_blocking(server, client, owner)).await?;
    verdict.map_err(|refused| io::Error::new(io::ErrorKind::PermissionDenied, refused))
}

fn check_tcp_blocking(server: SocketAddr, client: SocketAddr, owner: u32) -> Result<(), NotOwner> {
    let started = std::time::Instant::now();
    let entry = loop {
        match server_side(server, client) {
            (Some(entry), _) => break Some(entry),
            (None, true) if started.elapsed() < FIND_FOR => {
                std::thread::sleep(Duration::from_millis(2))
            }
            (None, _) => break None,
        }
    };
    let found = entry.map_or(Found::Nothing, |(uid, _)| Found::Uid(uid));
    judge(owner, found).map_err(|mut refused| {
        refused.holder = entry.and_then(|(uid, inode)| name_socket(inode, uid, server));
        refused
    })
}

/// The threads that read `/proc` for this module. A lookup is slow (a read of every TCP
/// socket, or of every process's descriptors) and an account decides how many happen: each
/// new connection to its upstream makes one, and a server that closes or resets every
/// connection at once makes the daemon open connection after connection. So the lookups
/// run on a few threads of their own, never on the blocking pool the control plane needs,
/// and those waiting beyond a bound wait as tasks, holding no thread.
mod lookups {
    use std::io;
    use std::panic::AssertUnwindSafe;
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
    use std::sync::{Arc, Mutex, OnceLock};

    use tokio::sync::{Semaphore, oneshot};

    /// Threads reading `/proc`.
    pub(super) const THREADS: usize = 2;
    /// Lookups handed to the threads at once, running or queued.
    const QUEUED: usize = 64;

    type Job = Box<dyn FnOnce() + Send>;

    #[derive(Debug)]
    struct Pool {
        permits: Semaphore,
        jobs: SyncSender<Job>,
    }

    static POOL: OnceLock<io::Result<Pool>> = OnceLock::new();

    fn start() -> io::Result<Pool> {
        let (jobs, queue) = sync_channel::<Job>(QUEUED);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..THREADS {
            let queue: Arc<Mutex<Receiver<Job>>> = queue.clone();
            std::thread::Builder::new()
                .name(format!("portshare-owner-{i}"))
                .spawn(move || {
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A lookup that panics loses its answer, not the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Pool {
            permits: Semaphore::new(QUEUED),
            jobs,
        })
    }

    /// Runs `f` on a lookup thread, waiting (as a task) for a place when `QUEUED` are
    /// handed over already.
    pub(super) async fn run<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let pool = POOL
            .get_or_init(start)
            .as_ref()
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        let _place = pool
            .permits
            .acquire()
            .await
            .map_err(|_| io::Error::other("the owner lookups are closed"))?;
        let (tx, rx) = oneshot::channel();
        pool.jobs
            .try_send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("the owner lookup threads are gone"))?;
        rx.await
            .map_err(|_| io::Error::other("an owner lookup failed"))
    }
}

/// The uid and inode of the server side of `client`'s connection to `server`, and whether
/// the client's side is still established: through sock_diag on this lookup thread's own
/// netlink socket, else (no `inet_diag` in the kernel) from `/proc/net/tcp*`.
#[cfg(target_os = "linux")]
fn server_side(server: SocketAddr, client: SocketAddr) -> (Option<(u32, u64)>, bool) {
    use std::cell::RefCell;

    use crate::procfs::{TCP_ESTABLISHED, is_owned_connection};
    use crate::sockdiag::Diag;

    thread_local! {
        /// `None` once opening one failed: this kernel has no sock_diag for TCP.
        static DIAG: RefCell<Option<io::Result<Diag>>> = const { RefCell::new(None) };
    }
    let by_diag = DIAG.with(|diag| {
        let mut diag = diag.borrow_mut();
        let d = diag.get_or_insert_with(Diag::open).as_mut().ok()?;
        let theirs = d.find(server, client).ok()?;
        let ours = d.find(client, server).ok()?;
        Some((
            theirs.filter(is_owned_connection).map(|e| (e.uid, e.inode)),
            ours.is_some_and(|e| e.state == TCP_ESTABLISHED),
        ))
    });
    by_diag.unwrap_or_else(|| {
        let c = crate::procfs::connection(server, client);
        (c.server.map(|e| (e.uid, e.inode)), c.client_open)
    })
}

#[cfg(not(target_os = "linux"))]
fn server_side(_: SocketAddr, _: SocketAddr) -> (Option<(u32, u64)>, bool) {
    (None, false)
}

#[cfg(target_os = "linux")]
fn name_process(pid: u32, uid: u32) -> Option<Holder> {
    Some(crate::procfs::process(pid, uid))
}

#[cfg(not(target_os = "linux"))]
fn name_process(_: u32, _: u32) -> Option<Holder> {
    None
}

#[cfg(target_os = "linux")]
fn name_socket(inode: u64, uid: u32, server: SocketAddr) -> Option<Holder> {
    Some(crate::procfs::serving(inode, uid, server))
}

#[cfg(not(target_os = "linux"))]
fn name_socket(_: u64, _: u32, _: SocketAddr) -> Option<Holder> {
    None
}

/// The refusal an upstream connection failure `e` calls for: 502 `Upstream_Owner` when the
/// upstream is not the queue owner's, else 503 `N/A` (the upstream cannot be reached).
pub(crate) fn rejection(e: &io::Error) -> Rejection {
    if not_owner(e).is_some() {
        Rejection {
            status: 502,
            reason: Reason::UpstreamOwner,
        }
    } else {
        Rejection {
            status: 503,
            reason: Reason::NotAvailable,
        }
    }
}

/// The ownership refusal inside `e`, if that is what it is.
pub(crate) fn not_owner(e: &io::Error) -> Option<&NotOwner> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NotOwner>())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_the_owner_passes_and_never_root_or_overflow() {
        assert!(judge(1001, Found::Uid(1001)).is_ok());
        for found in [
            Found::Uid(1002),
            Found::Uid(0),
            Found::Uid(OVERFLOW_UID),
            Found::Nothing,
        ] {
            let e = judge(1001, found).unwrap_err();
            assert_eq!(e.found, found);
        }
        // An owner that is the overflow uid proves nothing either.
        assert!(judge(OVERFLOW_UID, Found::Uid(OVERFLOW_UID)).is_err());
    }

    #[test]
    fn refusals_say_who_serves_and_what_follows() {
        let mut e = judge(1001, Found::Uid(1002)).unwrap_err();
        e.holder = Some(Holder {
            pid: Some(42),
            command: Some("python3 -m http.server".into()),
            user: Some("uid 1002".into()),
            ..Holder::default()
        });
        assert_eq!(
            e.to_string(),
            "served by uid 1002, PID 42 (python3 -m http.server), not by the queue owner \
             (uid 1001): requests get 502 until the owner serves it"
        );
        let io = io::Error::new(io::ErrorKind::PermissionDenied, e);
        assert_eq!(rejection(&io).status, 502);
        assert_eq!(rejection(&io).reason.as_str(), "Upstream_Owner");
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(rejection(&refused).status, 503);
        assert!(not_owner(&refused).is_none());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_loopback_connection_is_served_by_this_process_uid() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let e = check_tcp(&stream, me.wrapping_add(1)).await.unwrap_err();
        let refused = not_owner(&e).unwrap();
        assert_eq!(refused.found, Found::Uid(me));
        assert_eq!(
            refused.holder.as_ref().and_then(|h| h.pid),
            Some(std::process::id())
        );
        if me != 0 {
            check_tcp(&stream, me).await.unwrap();
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_dual_stack_listener_serves_ipv4_at_mapped_addresses() {
        let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let port = listener.local_addr().unwrap().port();
        let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return; // a v6only default
        };
        let me = nix::unistd::geteuid().as_raw();
        let e = check_tcp(&stream, me.wrapping_add(1)).await.unwrap_err();
        assert_eq!(not_owner(&e).unwrap().found, Found::Uid(me));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_unix_peer_is_its_listener() {
        let dir = std::env::temp_dir().join(format!("portshare-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let e = check_unix(&stream, me.wrapping_add(1)).await.unwrap_err();
        let refused = not_owner(&e).unwrap();
        assert_eq!(refused.found, Found::Uid(me));
        assert_eq!(
            refused.holder.as_ref().and_then(|h| h.pid),
            Some(std::process::id())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
