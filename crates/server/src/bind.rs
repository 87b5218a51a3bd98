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
        procfs::find_holder(addr)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = addr;
        Holder::default()
    }
}

/// Reading `/proc` (Linux only). The parsers are pure and never panic on odd input.
#[cfg(target_os = "linux")]
mod procfs {
    use std::fs;
    use std::io::{BufRead, BufReader};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::Holder;

    /// `st` of a listening socket in `/proc/net/tcp`.
    pub(super) const TCP_LISTEN: u8 = 0x0A;

    /// Longest command line kept, in bytes; longer ones end in `…`.
    const MAX_COMMAND: usize = 256;

    /// One line of `/proc/net/tcp` or `/proc/net/tcp6`, the fields we use.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct SockEntry {
        /// `local_address`.
        pub(super) local: SocketAddr,
        /// `st`, the TCP state (`0A` is LISTEN).
        pub(super) state: u8,
        /// `uid`, the socket's owner.
        pub(super) uid: u32,
        /// `inode`, 0 for sockets no file refers to (`TIME_WAIT`).
        pub(super) inode: u64,
    }

    /// See [`super::find_holder`].
    pub(super) fn find_holder(addr: SocketAddr) -> Holder {
        let mut found = Vec::new();
        for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(file) = fs::File::open(path) else {
                continue;
            };
            found.extend(
                BufReader::new(file)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|line| parse_tcp_line(&line))
                    .filter(|entry| entry.inode != 0 && conflicts(entry.local, addr)),
            );
        }
        // Listeners first; sockets merely bound (without SO_REUSEADDR) also block a bind.
        found.sort_by_key(|entry| entry.state != TCP_LISTEN);
        let Some(first) = found.first() else {
            return Holder::default();
        };
        let inodes: Vec<u64> = found.iter().map(|entry| entry.inode).collect();
        let Some((pid, inode)) = find_pid(&inodes) else {
            return Holder {
                user: Some(user_name(first.uid)),
                ..Holder::default()
            };
        };
        let socket_uid = found
            .iter()
            .find(|entry| entry.inode == inode)
            .map_or(first.uid, |e| e.uid);
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| status_uid(&status))
            .unwrap_or(socket_uid);
        let command = fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|raw| cmdline_text(&raw))
            .or_else(|| {
                let comm = fs::read(format!("/proc/{pid}/comm")).ok()?;
                cmdline_text(&comm).map(|name| format!("[{name}]"))
            });
        Holder {
            pid: Some(pid),
            command,
            user: Some(user_name(uid)),
        }
    }

    /// The first process with a file descriptor on one of `inodes`, and that inode.
    fn find_pid(inodes: &[u64]) -> Option<(u32, u64)> {
        for proc_entry in fs::read_dir("/proc").ok()?.map_while(Result::ok) {
            let Some(pid) = proc_entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.map_while(Result::ok) {
                let Ok(target) = fs::read_link(fd.path()) else {
                    continue;
                };
                let Some(inode) = target.to_str().and_then(socket_inode) else {
                    continue;
                };
                if inodes.contains(&inode) {
                    return Some((pid, inode));
                }
            }
        }
        None
    }

    /// Parses one line of `/proc/net/tcp` or `/proc/net/tcp6`; `None` for the header and for
    /// anything malformed.
    ///
    /// `   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000  0 12345 …`
    pub(super) fn parse_tcp_line(line: &str) -> Option<SockEntry> {
        let mut fields = line.split_ascii_whitespace();
        let slot = fields.next()?;
        if !slot.strip_suffix(':')?.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let local = parse_sock_addr(fields.next()?)?;
        let _remote = fields.next()?;
        let state = fields.next()?;
        if state.len() != 2 {
            return None;
        }
        let state = parse_hex_u32(state)?.try_into().ok()?;
        // tx_queue:rx_queue, tr:tm->when, retrnsmt
        let mut fields = fields.skip(3);
        let uid = fields.next()?.parse().ok()?;
        let _timeout = fields.next()?;
        let inode = fields.next()?.parse().ok()?;
        Some(SockEntry {
            local,
            state,
            uid,
            inode,
        })
    }

    /// Parses `ADDR:PORT` as `/proc/net/tcp*` writes it: the address as 8 (IPv4) or 32 (IPv6)
    /// hex digits of 32-bit words in host byte order, the port as 4 hex digits.
    pub(super) fn parse_sock_addr(text: &str) -> Option<SocketAddr> {
        let (ip, port) = text.split_once(':')?;
        if port.len() != 4 {
            return None;
        }
        let port = u16::try_from(parse_hex_u32(port)?).ok()?;
        let ip = match ip.len() {
            8 => IpAddr::V4(Ipv4Addr::from(parse_hex_u32(ip)?.to_ne_bytes())),
            32 => {
                let mut octets = [0u8; 16];
                for (i, chunk) in octets.chunks_exact_mut(4).enumerate() {
                    let word = ip.get(i * 8..i * 8 + 8)?;
                    chunk.copy_from_slice(&parse_hex_u32(word)?.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    /// Up to 8 hex digits, and nothing else (no sign, no spaces).
    fn parse_hex_u32(text: &str) -> Option<u32> {
        if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(text, 16).ok()
    }

    /// Whether a socket bound to `held` keeps `want` from being bound: same port, and the same
    /// IP or a wildcard on either side. IPv4-mapped IPv6 addresses count as IPv4, and an IPv6
    /// wildcard may be dual-stack, so it covers IPv4 too.
    pub(super) fn conflicts(held: SocketAddr, want: SocketAddr) -> bool {
        if held.port() != want.port() {
            return false;
        }
        match (held.ip().to_canonical(), want.ip().to_canonical()) {
            (IpAddr::V4(h), IpAddr::V4(w)) => h == w || h.is_unspecified() || w.is_unspecified(),
            (IpAddr::V6(h), IpAddr::V6(w)) => h == w || h.is_unspecified() || w.is_unspecified(),
            (IpAddr::V6(h), IpAddr::V4(_)) => h.is_unspecified(),
            // Our IPv6 sockets are v6only.
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// The inode of a `/proc/[pid]/fd/*` link target `socket:[12345]`.
    pub(super) fn socket_inode(target: &str) -> Option<u64> {
        let digits = target.strip_prefix("socket:[")?.strip_suffix(']')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The real uid on the `Uid:` line of `/proc/[pid]/status`.
    pub(super) fn status_uid(status: &str) -> Option<u32> {
        let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
        line.split_ascii_whitespace().next()?.parse().ok()
    }

    /// `/proc/[pid]/cmdline` as one line: NULs and other control and format characters become
    /// spaces, the ends are trimmed, and it is cut at [`MAX_COMMAND`] bytes. `None` when empty.
    pub(super) fn cmdline_text(raw: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(raw);
        let text: String = text
            .chars()
            .map(|c| {
                if portshare_proto::text::is_hidden(c) {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if text.len() <= MAX_COMMAND {
            return Some(text.to_owned());
        }
        let mut cut = MAX_COMMAND;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        Some(format!("{}…", text[..cut].trim_end()))
    }

    /// The name of `uid` from `/etc/passwd`, else `uid N`.
    fn user_name(uid: u32) -> String {
        fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| passwd_name(&passwd, uid).map(str::to_owned))
            .unwrap_or_else(|| format!("uid {uid}"))
    }

    /// The first name for `uid` in an `/etc/passwd` text.
    pub(super) fn passwd_name(passwd: &str, uid: u32) -> Option<&str> {
        passwd.lines().find_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let line_uid: u32 = fields.next()?.trim().parse().ok()?;
            (line_uid == uid && !name.is_empty()).then_some(name)
        })
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

    #[cfg(target_os = "linux")]
    mod proc_parsing {
        use std::net::SocketAddr;

        use super::super::procfs::*;

        fn sa(text: &str) -> SocketAddr {
            text.parse().unwrap()
        }

        #[cfg(target_endian = "little")]
        #[test]
        fn tcp_lines() {
            let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 \
                      00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0";
            assert_eq!(
                parse_tcp_line(v4),
                Some(SockEntry {
                    local: sa("127.0.0.1:8080"),
                    state: TCP_LISTEN,
                    uid: 1000,
                    inode: 12345
                })
            );
            let any = "  12: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 \
                       00000000     0        0 548 1 00000000c2b109e5 100 0 0 10 0";
            assert_eq!(
                parse_tcp_line(any),
                Some(SockEntry {
                    local: sa("0.0.0.0:80"),
                    state: TCP_LISTEN,
                    uid: 0,
                    inode: 548
                })
            );
            let established = "   3: 0F02000A:C350 0100007F:1F90 01 00000000:00000000 \
                               02:000AFC6B 00000000  1000        0 777 2 0000000000000000 20 4 30 10 -1";
            let entry = parse_tcp_line(established).unwrap();
            assert_eq!((entry.local, entry.state), (sa("10.0.2.15:50000"), 0x01));
            let time_wait = "   4: 0100007F:1F90 0100007F:C351 06 00000000:00000000 \
                             03:00001770 00000000     0        0 0 3 0000000000000000";
            assert_eq!(parse_tcp_line(time_wait).unwrap().inode, 0);

            let loopback6 = "   0: 00000000000000000000000001000000:1F90 \
                             00000000000000000000000000000000:0000 0A 00000000:00000000 \
                             00:00000000 00000000  1000        0 23456 1 0000000000000000 100 0 0 10 0";
            assert_eq!(
                parse_tcp_line(loopback6),
                Some(SockEntry {
                    local: sa("[::1]:8080"),
                    state: TCP_LISTEN,
                    uid: 1000,
                    inode: 23456
                })
            );
            let any6 = "   1: 00000000000000000000000000000000:01BB \
                        00000000000000000000000000000000:0000 0A 00000000:00000000 \
                        00:00000000 00000000     0        0 34567 1 0000000000000000 100 0 0 10 0";
            assert_eq!(parse_tcp_line(any6).unwrap().local, sa("[::]:443"));
            let mapped = "   2: 0000000000000000FFFF00000100007F:1F90 \
                          00000000000000000000000000000000:0000 0A 00000000:00000000 \
                          00:00000000 00000000     0        0 45678 1 0000000000000000 100 0 0 10 0";
            assert_eq!(
                parse_tcp_line(mapped).unwrap().local,
                sa("[::ffff:127.0.0.1]:8080")
            );
            let global6 = "   3: B80D0120000000000000000001000000:0050 \
                           00000000000000000000000000000000:0000 0A 00000000:00000000 \
                           00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0";
            assert_eq!(
                parse_tcp_line(global6).unwrap().local,
                sa("[2001:db8::1]:80")
            );
        }

        #[test]
        fn malformed_tcp_lines() {
            let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                          retrnsmt   uid  timeout inode";
            let bad = [
                "",
                "   ",
                header,
                "0:",
                "   0: 0100007F:1F90",
                "   0: 0100007F:1F90 00000000:0000 0A",
                "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0",
                "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 x 0 1",
                "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 -1",
                "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 99999999999999999999999",
                "   x: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007F1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007F:1F9 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007F:1F900 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: +100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007G:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007F:+F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007F:1F90 00000000:0000 A 0:0 0:0 0 0 0 1",
                "   0: 0100007F:1F90 00000000:0000 0AA 0:0 0:0 0 0 0 1",
                "   0: 0100007F:1F90 00000000:0000 ZZ 0:0 0:0 0 0 0 1",
                "   0: 000000000000000000000000010000:1F90 0:0 0A 0:0 0:0 0 0 0 1",
                "   0: 0000000000000000000000000100000é:1F90 0:0 0A 0:0 0:0 0 0 0 1",
                "   0: ééééééééééééééééé:1F90 0:0 0A 0:0 0:0 0 0 0 1",
                "   0: 0000000000000000000000000100000:01F90 0:0 0A 0:0 0:0 0 0 0 1",
                "   0: :1F90 0:0 0A 0:0 0:0 0 0 0 1",
                "   0: 0100007F: 0:0 0A 0:0 0:0 0 0 0 1",
                "   0: \u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}:1F90 0:0 0A 0:0 0:0 0 0 0 1",
            ];
            for line in bad {
                assert_eq!(parse_tcp_line(line), None, "{line:?}");
            }
            // A short but well-formed line parses; what follows the inode is not needed.
            assert!(parse_tcp_line("0: 00000000:0050 0:0 0A 0:0 0:0 0 0 0 1").is_some());
        }

        #[test]
        fn which_sockets_conflict() {
            let yes = [
                ("127.0.0.1:80", "127.0.0.1:80"),
                ("0.0.0.0:80", "127.0.0.1:80"),
                ("127.0.0.1:80", "0.0.0.0:80"),
                ("[::]:80", "127.0.0.1:80"),
                ("[::]:80", "[::1]:80"),
                ("[::1]:80", "[::]:80"),
                ("[::1]:80", "[::1]:80"),
                ("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
                ("[::ffff:0.0.0.0]:80", "10.0.0.1:80"),
            ];
            let no = [
                ("127.0.0.1:80", "127.0.0.1:81"),
                ("127.0.0.2:80", "127.0.0.1:80"),
                ("0.0.0.0:80", "[::]:80"),
                ("127.0.0.1:80", "[::1]:80"),
                ("[::1]:80", "127.0.0.1:80"),
                ("[::1]:80", "[::2]:80"),
                ("[::ffff:127.0.0.2]:80", "127.0.0.1:80"),
            ];
            for (held, want) in yes {
                assert!(conflicts(sa(held), sa(want)), "{held} should block {want}");
            }
            for (held, want) in no {
                assert!(
                    !conflicts(sa(held), sa(want)),
                    "{held} should not block {want}"
                );
            }
        }

        #[test]
        fn fd_links() {
            assert_eq!(socket_inode("socket:[12345]"), Some(12345));
            for bad in [
                "socket:[]",
                "socket:[12a]",
                "socket:[-1]",
                "socket:[+1]",
                "socket:12345",
                "pipe:[12345]",
                "/dev/null",
                "socket:[99999999999999999999999]",
                "",
            ] {
                assert_eq!(socket_inode(bad), None, "{bad:?}");
            }
        }

        #[test]
        fn status_and_cmdline_and_passwd() {
            let status = "Name:\tnginx\nUmask:\t0022\nState:\tS (sleeping)\n\
                          Uid:\t33\t33\t33\t33\nGid:\t33\t33\t33\t33\n";
            assert_eq!(status_uid(status), Some(33));
            assert_eq!(status_uid("Name:\tx\n"), None);
            assert_eq!(status_uid("Uid:\n"), None);
            assert_eq!(status_uid("Uid:\tabc\t1\n"), None);

            assert_eq!(
                cmdline_text(b"/usr/bin/python3\0-m\0http.server\0").as_deref(),
                Some("/usr/bin/python3 -m http.server")
            );
            assert_eq!(
                cmdline_text(b"nginx: master process /usr/sbin/nginx\0\0\0\0").as_deref(),
                Some("nginx: master process /usr/sbin/nginx")
            );
            assert_eq!(
                cmdline_text(b"a\nb\x1b[31m\xff").as_deref(),
                Some("a b [31m\u{fffd}")
            );
            assert_eq!(
                cmdline_text("evil\u{202e}gpj.exe".as_bytes()).as_deref(),
                Some("evil gpj.exe")
            );
            assert_eq!(cmdline_text(b""), None);
            assert_eq!(cmdline_text(b"\0\0 \0"), None);
            let long = "é".repeat(300);
            let cut = cmdline_text(long.as_bytes()).unwrap();
            assert!(
                cut.ends_with('…') && cut.len() <= 256 + '…'.len_utf8(),
                "{cut}"
            );

            let passwd = "# comment\nroot:x:0:0:root:/root:/bin/bash\n\
                          bad line\nweird:x:notanumber:0::/:/bin/false\n\
                          :x:1000:1000::/:/bin/false\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
                          alias:x:1000:1000::/:/bin/sh\n";
            assert_eq!(passwd_name(passwd, 0), Some("root"));
            assert_eq!(passwd_name(passwd, 1000), Some("alice"));
            assert_eq!(passwd_name(passwd, 4242), None);
            assert_eq!(passwd_name("", 0), None);
        }

        #[test]
        fn find_holder_of_nothing_is_empty() {
            // Port 1 on 127.255.255.254 is surely not bound in the test environment.
            let holder = super::super::find_holder(sa("127.255.255.254:1"));
            assert_eq!(holder, super::super::Holder::default());
        }
    }
}
