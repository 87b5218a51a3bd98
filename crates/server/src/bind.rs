//! Binding the daemon's listening sockets, with failures told the way HTTP.sys tells them.
//!
//! [`listen`] opens one listening TCP socket per address. Its failures come back as a
//! [`BindError`] carrying the Win32 code HTTP.sys would return for the same situation
//! ([`BindError::win32`]) and a one-line message for the operator. When the address is
//! taken, [`find_holder`] names the program holding it, found through `/proc`.
//! [`check_local`] tells whether an IP address belongs to this machine at all.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use portshare_proto::Win32Error;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The listen backlog [`listen`] uses when given zero or less.
pub(crate) const DEFAULT_BACKLOG: i32 = 1024;

/// Why a listener could not be bound, mapped to the Win32 code HTTP.sys returns.
#[derive(Debug)]
pub(crate) enum BindError {
    /// `EADDRINUSE`: another socket holds the address; `ERROR_SHARING_VIOLATION` (32).
    InUse {
        /// The address asked for.
        addr: SocketAddr,
        /// Who holds it, as far as `/proc` tells.
        holder: Holder,
    },
    /// `EADDRNOTAVAIL`: the IP is not one of this machine's; `ERROR_INVALID_NETNAME` (1214).
    NotLocal {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// `EACCES`/`EPERM`, usually a privileged port without `CAP_NET_BIND_SERVICE`;
    /// `ERROR_ACCESS_DENIED` (5).
    Denied {
        /// The address asked for.
        addr: SocketAddr,
        /// `net.ipv4.ip_unprivileged_port_start` (which also governs IPv6), if readable.
        unprivileged_port_start: Option<u32>,
    },
    /// IPv6 is unavailable on this host: no `AF_INET6` sockets, or not even `::1`/`::` can be
    /// bound. The caller may degrade to IPv4 with a warning. `ERROR_INVALID_NETNAME` (1214).
    NoIpv6 {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Anything else; `ERROR_GEN_FAILURE` (31).
    Other {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
}

impl BindError {
    /// The address that failed, on `InUse` (the one failure whose holder can be named).
    pub(crate) fn in_use(&self) -> Option<SocketAddr> {
        match self {
            Self::InUse { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// Names who holds the address of an `InUse` failure, through `/proc` (see
    /// [`find_holder`]). Blocking and slow on a busy host: call it off the runtime threads
    /// and without the daemon's lock.
    pub(crate) fn name_holder(&mut self) {
        if let Self::InUse { addr, holder } = self {
            *holder = find_holder(*addr);
        }
    }

    /// The Win32 error HTTP.sys returns for this failure.
    pub(crate) fn win32(&self) -> Win32Error {
        match self {
            Self::InUse { .. } => Win32Error::SharingViolation,
            Self::NotLocal { .. } | Self::NoIpv6 { .. } => Win32Error::InvalidNetname,
            Self::Denied { .. } => Win32Error::AccessDenied,
            Self::Other { .. } => Win32Error::GenFailure,
        }
    }
}

/// Shows an address as `ip:port`, or as the bare IP when the port is 0 (any port).
struct Shown(SocketAddr);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.port() == 0 {
            self.0.ip().fmt(f)
        } else {
            self.0.fmt(f)
        }
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse { addr, holder } => match holder.pid {
                Some(pid) if pid == std::process::id() => {
                    write!(f, "{addr} is already held by this process: {holder}")
                }
                Some(_) => write!(f, "{addr} is held by another program: {holder}"),
                None => match &holder.user {
                    Some(user) if holder.gone => write!(
                        f,
                        "{addr} was held by a program run by {}, which let it go before it \
                         could be named: try again",
                        UserShown(user)
                    ),
                    Some(user) => write!(
                        f,
                        "{addr} is held by an unknown program (run by {}; its /proc entries are \
                         not readable by this user)",
                        UserShown(user)
                    ),
                    None => write!(
                        f,
                        "{addr} is held by an unknown program (it could not be found through /proc)"
                    ),
                },
            },
            Self::NotLocal { addr } => {
                write!(
                    f,
                    "{}: {} is not an address of this machine",
                    Shown(*addr),
                    addr.ip()
                )
            }
            Self::Denied {
                addr,
                unprivileged_port_start,
            } => {
                let port = u32::from(addr.port());
                match *unprivileged_port_start {
                    Some(start) if port >= start => write!(
                        f,
                        "{addr}: permission denied, although port {port} is not privileged here \
                         (net.ipv4.ip_unprivileged_port_start = {start}); a security policy such \
                         as SELinux, AppArmor or seccomp may forbid the bind"
                    ),
                    start => {
                        write!(f, "{addr}: permission denied: binding ports below ")?;
                        match start {
                            Some(start) => write!(
                                f,
                                "{start} (net.ipv4.ip_unprivileged_port_start = {start})"
                            )?,
                            None => write!(
                                f,
                                "1024 (the default of net.ipv4.ip_unprivileged_port_start)"
                            )?,
                        }
                        write!(
                            f,
                            " needs CAP_NET_BIND_SERVICE (e.g. `setcap cap_net_bind_service=+ep` \
                             on the binary, or `AmbientCapabilities=CAP_NET_BIND_SERVICE` in the \
                             systemd unit) or root"
                        )
                    }
                }
            }
            Self::NoIpv6 { addr } => {
                write!(f, "{}: IPv6 is not available on this host", Shown(*addr))
            }
            Self::Other { addr, source } => {
                write!(f, "cannot listen on {}: {source}", Shown(*addr))
            }
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Other { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The process holding an address, as far as `/proc` tells; `None` where it does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Holder {
    /// Its process id.
    pub(crate) pid: Option<u32>,
    /// Its command line, arguments joined by spaces.
    pub(crate) command: Option<String>,
    /// Its user: the name from `/etc/passwd`, else `uid N`.
    pub(crate) user: Option<String>,
    /// The socket closed between the failed bind and the search for its process.
    pub(crate) gone: bool,
}

/// Shows a [`Holder::user`] as `user alice`, or as `uid N` when no name was found.
struct UserShown<'a>(&'a str);

impl fmt::Display for UserShown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.starts_with("uid ") {
            f.write_str(self.0)
        } else {
            write!(f, "user {}", self.0)
        }
    }
}

impl fmt::Display for Holder {
    /// `PID 1234 (nginx: master process /usr/sbin/nginx) user alice`, leaving out what is
    /// unknown; `unknown` when nothing is known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(pid) = self.pid {
            write!(f, "PID {pid}")?;
            sep = " ";
        }
        if let Some(command) = &self.command {
            write!(f, "{sep}({command})")?;
            sep = " ";
        }
        if let Some(user) = &self.user {
            write!(f, "{sep}{}", UserShown(user))?;
            sep = " ";
        }
        if sep.is_empty() {
            f.write_str("unknown")?;
        }
        Ok(())
    }
}

/// Binds a listening TCP socket on `addr` and hands it to tokio.
///
/// `SO_REUSEADDR` is on, so connections left in `TIME_WAIT` do not block a rebind;
/// `SO_REUSEPORT` never is, so a second daemon cannot silently share the port. IPv6 sockets are
/// `IPV6_V6ONLY`, so `0.0.0.0:P` and `[::]:P` are two listeners that coexist, as in HTTP.sys.
/// A `backlog` of zero or less means [`DEFAULT_BACKLOG`].
///
/// Must run inside a tokio runtime with IO enabled; outside any runtime it returns
/// [`BindError::Other`]. When the address is taken, the holder is left unnamed:
/// [`BindError::name_holder`] looks it up, later and off the lock.
pub(crate) fn listen(addr: SocketAddr, backlog: i32) -> Result<tokio::net::TcpListener, BindError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(BindError::Other {
            addr,
            source: io::Error::other("bind::listen must be called inside a tokio runtime"),
        });
    }
    let backlog = if backlog > 0 {
        backlog
    } else {
        DEFAULT_BACKLOG
    };
    let socket = new_socket(addr)?;
    let fail = |e| classify(addr, e);
    // On Windows SO_REUSEADDR would let another socket steal the port; elsewhere it only
    // means TIME_WAIT does not count.
    #[cfg(not(windows))]
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&SockAddr::from(addr)).map_err(fail)?;
    // listen() too can say EADDRINUSE, when another SO_REUSEADDR socket bound the same
    // address first and is not listening yet.
    socket.listen(backlog).map_err(fail)?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(fail)
}

/// Whether this machine owns `ip`, found by binding a TCP socket to `(ip, 0)` and dropping it.
///
/// Returns [`BindError::NotLocal`] when it does not, [`BindError::NoIpv6`] for an IPv6 address
/// on a host without IPv6. The errors' `addr` has port 0.
pub(crate) fn check_local(ip: IpAddr) -> Result<(), BindError> {
    let addr = SocketAddr::new(ip, 0);
    let socket = new_socket(addr)?;
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|e| classify(addr, e))
}

/// A TCP socket of `addr`'s family; for IPv6, a failure that says the family is missing is
/// [`BindError::NoIpv6`].
fn new_socket(addr: SocketAddr) -> Result<Socket, BindError> {
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| {
        if addr.is_ipv6() && (is_no_family(&e) || e.kind() == io::ErrorKind::Unsupported) {
            BindError::NoIpv6 { addr }
        } else {
            BindError::Other { addr, source: e }
        }
    })
}

/// Whether `e` is `EAFNOSUPPORT`.
fn is_no_family(e: &io::Error) -> bool {
    #[cfg(unix)]
    let code = libc::EAFNOSUPPORT;
    #[cfg(not(unix))]
    let code = 10047; // WSAEAFNOSUPPORT
    e.raw_os_error() == Some(code)
}

/// Maps a failure to bind or listen on `addr` to its [`BindError`].
fn classify(addr: SocketAddr, e: io::Error) -> BindError {
    let ipv6_basics = match addr.ip() {
        IpAddr::V6(ip) => ip.is_loopback() || ip.is_unspecified(),
        IpAddr::V4(_) => false,
    };
    match e.kind() {
        // Who holds it is asked later, by `name_holder`: a scan of /proc is slow and the
        // caller may hold the daemon's lock.
        io::ErrorKind::AddrInUse => BindError::InUse {
            addr,
            holder: Holder::default(),
        },
        // A host with working IPv6 always owns `::1` and `::`.
        io::ErrorKind::AddrNotAvailable if ipv6_basics => BindError::NoIpv6 { addr },
        io::ErrorKind::AddrNotAvailable => BindError::NotLocal { addr },
        io::ErrorKind::PermissionDenied => BindError::Denied {
            addr,
            unprivileged_port_start: read_number("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
        },
        _ if addr.is_ipv6() && is_no_family(&e) => BindError::NoIpv6 { addr },
        _ => BindError::Other { addr, source: e },
    }
}

/// A file holding one decimal number, as under `/proc/sys`.
fn read_number(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Finds the process holding a TCP socket bound to `addr` (or to a wildcard covering it).
///
/// Listening sockets in `/proc/net/tcp` and `/proc/net/tcp6` whose port matches and whose IP is
/// `addr`'s, a wildcard, or covered by `addr` being a wildcard, are looked up in every
/// `/proc/[pid]/fd`; failing a listener, any other socket bound to such an address. The first
/// process found is named. Fields stay `None` where unknown: when another user's process holds
/// the socket, only its user is known (from the socket's owner); off Linux nothing is.
pub(crate) fn find_holder(addr: SocketAddr) -> Holder {
    #[cfg(target_os = "linux")]
    {
        crate::procfs::find_holder(addr)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = addr;
        Holder::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LOCALHOST6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    #[tokio::test]
    async fn second_listen_on_same_addr_names_this_process() {
        let first = listen(SocketAddr::new(LOCALHOST, 0), DEFAULT_BACKLOG).unwrap();
        let addr = first.local_addr().unwrap();
        assert_eq!(addr.ip(), LOCALHOST);
        assert_ne!(addr.port(), 0);

        let mut err = listen(addr, DEFAULT_BACKLOG).unwrap_err();
        assert_eq!(err.in_use(), Some(addr));
        err.name_holder();
        let BindError::InUse {
            addr: err_addr,
            holder,
        } = &err
        else {
            panic!("expected InUse, got {err:?}");
        };
        assert_eq!(*err_addr, addr);
        assert_eq!(
            (err.win32().code(), err.win32().name()),
            (32, "ERROR_SHARING_VIOLATION")
        );
        if cfg!(target_os = "linux") {
            assert_eq!(holder.pid, Some(std::process::id()), "{err}");
            let exe = std::env::current_exe().unwrap();
            let exe = exe.file_name().unwrap().to_str().unwrap();
            let command = holder.command.as_deref().unwrap_or_default();
            assert!(command.contains(exe), "{command:?} does not name {exe:?}");
            assert!(holder.user.is_some(), "{holder:?}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("{addr} is already held by this process: PID ")));
            println!("{message}");
        }
        drop(first);
        // Once closed, the address binds again at once (SO_REUSEADDR).
        listen(addr, DEFAULT_BACKLOG).unwrap();
    }

    #[tokio::test]
    async fn listener_accepts() {
        let listener = listen(SocketAddr::new(LOCALHOST, 0), 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        let (_, peer) = accepted.unwrap();
        assert_eq!(peer, connected.unwrap().local_addr().unwrap());
        let sock = socket2::SockRef::from(&listener);
        assert!(sock.reuse_address().unwrap());
    }

    #[test]
    fn listen_outside_a_runtime_is_an_error_not_a_panic() {
        let err = listen(SocketAddr::new(LOCALHOST, 0), 0).unwrap_err();
        assert!(matches!(err, BindError::Other { .. }), "{err:?}");
    }

    #[test]
    fn codes_and_names() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let cases = [
            (
                BindError::InUse {
                    addr,
                    holder: Holder::default(),
                },
                32,
                "ERROR_SHARING_VIOLATION",
            ),
            (BindError::NotLocal { addr }, 1214, "ERROR_INVALID_NETNAME"),
            (
                BindError::Denied {
                    addr,
                    unprivileged_port_start: None,
                },
                5,
                "ERROR_ACCESS_DENIED",
            ),
            (BindError::NoIpv6 { addr }, 1214, "ERROR_INVALID_NETNAME"),
            (
                BindError::Other {
                    addr,
                    source: io::Error::other("x"),
                },
                31,
                "ERROR_GEN_FAILURE",
            ),
        ];
        for (err, code, name) in cases {
            assert_eq!(
                (err.win32().code(), err.win32().name()),
                (code, name),
                "{err:?}"
            );
            assert!(err.to_string().contains("127.0.0.1"), "{err}");
        }
    }

    #[test]
    fn messages() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let nginx = Holder {
            pid: Some(u32::MAX),
            command: Some("nginx: master process /usr/sbin/nginx".into()),
            user: Some("root".into()),
            ..Holder::default()
        };
        assert_eq!(
            BindError::InUse {
                addr,
                holder: nginx
            }
            .to_string(),
            "127.0.0.1:8080 is held by another program: PID 4294967295 \
             (nginx: master process /usr/sbin/nginx) user root"
        );
        let hidden = Holder {
            user: Some("uid 1001".into()),
            ..Holder::default()
        };
        assert_eq!(hidden.to_string(), "uid 1001");
        assert_eq!(
            BindError::InUse {
                addr,
                holder: hidden
            }
            .to_string(),
            "127.0.0.1:8080 is held by an unknown program (run by uid 1001; its /proc entries \
             are not readable by this user)"
        );
        let gone = Holder {
            user: Some("root".into()),
            gone: true,
            ..Holder::default()
        };
        assert_eq!(
            BindError::InUse { addr, holder: gone }.to_string(),
            "127.0.0.1:8080 was held by a program run by user root, which let it go before it \
             could be named: try again"
        );
        assert_eq!(Holder::default().to_string(), "unknown");
        assert_eq!(
            BindError::InUse {
                addr,
                holder: Holder::default()
            }
            .to_string(),
            "127.0.0.1:8080 is held by an unknown program (it could not be found through /proc)"
        );

        let low: SocketAddr = "[::1]:80".parse().unwrap();
        let denied = BindError::Denied {
            addr: low,
            unprivileged_port_start: Some(1024),
        };
        assert_eq!(
            denied.to_string(),
            "[::1]:80: permission denied: binding ports below 1024 \
             (net.ipv4.ip_unprivileged_port_start = 1024) needs CAP_NET_BIND_SERVICE (e.g. \
             `setcap cap_net_bind_service=+ep` on the binary, or \
             `AmbientCapabilities=CAP_NET_BIND_SERVICE` in the systemd unit) or root"
        );
        let unknown = BindError::Denied {
            addr: low,
            unprivileged_port_start: None,
        };
        assert!(
            unknown.to_string().contains("below 1024 (the default of"),
            "{unknown}"
        );
        let policy = BindError::Denied {
            addr,
            unprivileged_port_start: Some(1024),
        };
        assert!(
            policy.to_string().contains("not privileged here"),
            "{policy}"
        );

        let any_port = SocketAddr::new("192.0.2.1".parse().unwrap(), 0);
        assert_eq!(
            BindError::NotLocal { addr: any_port }.to_string(),
            "192.0.2.1: 192.0.2.1 is not an address of this machine"
        );
        assert_eq!(
            BindError::NotLocal { addr }.to_string(),
            "127.0.0.1:8080: 127.0.0.1 is not an address of this machine"
        );
        assert_eq!(
            BindError::NoIpv6 { addr: low }.to_string(),
            "[::1]:80: IPv6 is not available on this host"
        );
    }

    #[test]
    fn check_local_addresses() {
        check_local(LOCALHOST).unwrap();
        check_local(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).unwrap();
        let nonlocal_bind = read_number("/proc/sys/net/ipv4/ip_nonlocal_bind").unwrap_or(0);
        if nonlocal_bind != 0 {
            println!("skipped: net.ipv4.ip_nonlocal_bind is on, so every address binds");
            return;
        }
        // TEST-NET-1: never assigned to a real host. Binding sends nothing.
        let err = check_local(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).unwrap_err();
        assert!(matches!(err, BindError::NotLocal { .. }), "{err:?}");
        assert_eq!(
            (err.win32().code(), err.win32().name()),
            (1214, "ERROR_INVALID_NETNAME")
        );
    }

    #[tokio::test]
    async fn ipv6_loopback_and_v6only() {
        let listener = match listen(SocketAddr::new(LOCALHOST6, 0), DEFAULT_BACKLOG) {
            Ok(listener) => listener,
            Err(BindError::NoIpv6 { .. }) => {
                let err = check_local(LOCALHOST6).unwrap_err();
                assert!(matches!(err, BindError::NoIpv6 { .. }), "{err:?}");
                println!("skipped: this host has no IPv6");
                return;
            }
            Err(err) => panic!("{err}"),
        };
        check_local(LOCALHOST6).unwrap();
        assert_eq!(listener.local_addr().unwrap().ip(), LOCALHOST6);
        assert!(socket2::SockRef::from(&listener).only_v6().unwrap());
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_loopback_share_a_port() {
        if let Err(BindError::NoIpv6 { .. }) = check_local(LOCALHOST6) {
            println!("skipped: this host has no IPv6");
            return;
        }
        // The port is free on 127.0.0.1, but something else may hold it on ::1; try a few.
        for _ in 0..10 {
            let v4 = listen(SocketAddr::new(LOCALHOST, 0), DEFAULT_BACKLOG).unwrap();
            let port = v4.local_addr().unwrap().port();
            match listen(SocketAddr::new(LOCALHOST6, port), DEFAULT_BACKLOG) {
                Ok(v6) => {
                    assert_eq!(v6.local_addr().unwrap().port(), port);
                    assert!(socket2::SockRef::from(&v6).only_v6().unwrap());
                    return;
                }
                Err(BindError::InUse { .. }) => continue,
                Err(err) => panic!("{err}"),
            }
        }
        panic!("no port free on both 127.0.0.1 and ::1");
    }

    /// Whether this process runs as root or may bind privileged ports anyway.
    fn may_bind_privileged() -> Option<bool> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let uid: u32 = field("Uid:")?
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()?;
        let caps = u64::from_str_radix(&field("CapEff:")?, 16).ok()?;
        const CAP_NET_BIND_SERVICE: u32 = 10;
        Some(uid == 0 || caps & (1 << CAP_NET_BIND_SERVICE) != 0)
    }

    #[tokio::test]
    async fn privileged_port_is_denied() {
        let Some(start) = read_number("/proc/sys/net/ipv4/ip_unprivileged_port_start") else {
            println!("skipped: net.ipv4.ip_unprivileged_port_start is not readable");
            return;
        };
        if start <= 80 {
            println!("skipped: port 80 is unprivileged here (start = {start})");
            return;
        }
        match may_bind_privileged() {
            Some(false) => {}
            Some(true) => {
                println!("skipped: running as root or with CAP_NET_BIND_SERVICE");
                return;
            }
            None => {
                println!("skipped: cannot read this process's uid and capabilities");
                return;
            }
        }
        let err = listen(SocketAddr::new(LOCALHOST, 80), DEFAULT_BACKLOG).unwrap_err();
        assert!(
            matches!(err, BindError::Denied { unprivileged_port_start: Some(s), .. } if s == start),
            "{err:?}"
        );
        assert_eq!(
            (err.win32().code(), err.win32().name()),
            (5, "ERROR_ACCESS_DENIED")
        );
        assert!(err.to_string().contains("CAP_NET_BIND_SERVICE"), "{err}");
    }
}
