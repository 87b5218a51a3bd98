//! Reading `/proc` (Linux only): sockets in `/proc/net/tcp` and `/proc/net/tcp6`, the process
//! that holds one, its user and command line. The parsers are pure and never panic on odd input.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::bind::Holder;

/// `st` of a listening socket in `/proc/net/tcp`.
pub(crate) const TCP_LISTEN: u8 = 0x0A;

/// Longest command line kept, in bytes; longer ones end in `…`.
const MAX_COMMAND: usize = 256;

/// One line of `/proc/net/tcp` or `/proc/net/tcp6`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SockEntry {
    /// `local_address`.
    pub(crate) local: SocketAddr,
    /// `rem_address`: the peer of a connected socket, a wildcard otherwise.
    pub(crate) remote: SocketAddr,
    /// `st`, the TCP state (`0A` is LISTEN).
    pub(crate) state: u8,
    /// `uid`, the socket's owner.
    pub(crate) uid: u32,
    /// `inode`, 0 for sockets no file refers to (`TIME_WAIT`).
    pub(crate) inode: u64,
}

/// See [`crate::bind::find_holder`].
pub(crate) fn find_holder(addr: SocketAddr) -> Holder {
    let mut found = blocking_sockets(addr);
    // Listeners first; sockets merely bound (without SO_REUSEADDR) also block a bind.
    found.sort_by_key(|entry| entry.state != TCP_LISTEN);
    let Some(first) = found.first() else {
        return Holder::default();
    };
    let inodes: Vec<u64> = found.iter().map(|entry| entry.inode).collect();
    let Some((pid, inode)) = find_pid(&inodes) else {
        // No process has them: hidden from this user, or closed since the first look.
        let gone = !blocking_sockets(addr)
            .iter()
            .any(|entry| inodes.contains(&entry.inode));
        return Holder {
            user: Some(user_name(first.uid)),
            gone,
            ..Holder::default()
        };
    };
    let socket_uid = found
        .iter()
        .find(|entry| entry.inode == inode)
        .map_or(first.uid, |e| e.uid);
    process(pid, socket_uid)
}

/// The sockets of `/proc/net/tcp` and `tcp6` that a file refers to and that keep `addr`
/// from being bound.
fn blocking_sockets(addr: SocketAddr) -> Vec<SockEntry> {
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
    found
}

/// `st` of an established connection in `/proc/net/tcp`.
pub(crate) const TCP_ESTABLISHED: u8 = 0x01;
/// `st` of a socket in `FIN_WAIT2`.
const TCP_FIN_WAIT2: u8 = 0x05;
/// `st` of a socket in `TIME_WAIT`: no longer a socket of its owner's (uid 0, inode 0).
const TCP_TIME_WAIT: u8 = 0x06;
/// `st` of a closed socket.
const TCP_CLOSE: u8 = 0x07;

/// Both ends of a TCP connection on this host, as one read of `/proc/net/tcp*` found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connection {
    /// The server's socket, while it is its owner's: from the handshake (`SYN_RECV`)
    /// through the states of a close, not `TIME_WAIT`.
    pub(crate) server: Option<SockEntry>,
    /// Whether the client's socket is still established: `false` once the server has
    /// closed or reset the connection (or the client is not listed).
    pub(crate) client_open: bool,
}

/// The connection from `client` to `server` on this host: the socket whose local address is
/// `server` and whose peer is `client`, and the client's own. An IPv4 connection may be
/// served by an IPv6 socket, where both addresses show IPv4-mapped in `/proc/net/tcp6`.
pub(crate) fn connection(server: SocketAddr, client: SocketAddr) -> Connection {
    let mapped = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    let wanted: &[(&str, SocketAddr, SocketAddr)] = if server.is_ipv4() {
        &[
            ("/proc/net/tcp", server, client),
            ("/proc/net/tcp6", mapped(server), mapped(client)),
        ]
    } else {
        &[("/proc/net/tcp6", server, client)]
    };
    let mut found = Connection {
        server: None,
        client_open: false,
    };
    for &(path, server, client) in wanted {
        let Ok(file) = fs::File::open(path) else {
            continue;
        };
        for e in BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| parse_tcp_line(&line))
        {
            if e.local == server && e.remote == client && is_owned_connection(&e) {
                found.server.get_or_insert(e);
            } else if e.local == client && e.remote == server && e.state == TCP_ESTABLISHED {
                found.client_open = true;
            }
        }
        if found.server.is_some() {
            break;
        }
    }
    found
}

/// Whether a socket is a connection its owner holds (or held until it closed it): not
/// listening, not closed, not `TIME_WAIT`, and not the kernel's stand-in for a closed one
/// (a `FIN_WAIT2` owned by nobody and no file: uid 0, inode 0).
pub(crate) fn is_owned_connection(e: &SockEntry) -> bool {
    let stand_in = e.state == TCP_FIN_WAIT2 && e.uid == 0 && e.inode == 0;
    !matches!(e.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE) && !stand_in
}

/// The process serving the connection whose server side is the socket `inode` at `server`:
/// the one with a file descriptor on it, else (the server has not accepted it yet, and no
/// file refers to it) the one holding the listening socket at `server`.
pub(crate) fn serving(inode: u64, socket_uid: u32, server: SocketAddr) -> Holder {
    if let Some((pid, _)) = (inode != 0).then(|| find_pid(&[inode])).flatten() {
        return process(pid, socket_uid);
    }
    let listener = find_holder(server);
    if listener.pid.is_some() {
        return listener;
    }
    Holder {
        user: Some(user_name(socket_uid)),
        ..Holder::default()
    }
}

/// What `/proc/[pid]` tells of a process; `socket_uid` stands for its user when its status
/// cannot be read.
pub(crate) fn process(pid: u32, socket_uid: u32) -> Holder {
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
        gone: false,
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
pub(crate) fn parse_tcp_line(line: &str) -> Option<SockEntry> {
    let mut fields = line.split_ascii_whitespace();
    let slot = fields.next()?;
    if !slot.strip_suffix(':')?.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let local = parse_sock_addr(fields.next()?)?;
    let remote = parse_sock_addr(fields.next()?)?;
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
        remote,
        state,
        uid,
        inode,
    })
}

/// Parses `ADDR:PORT` as `/proc/net/tcp*` writes it: the address as 8 (IPv4) or 32 (IPv6)
/// hex digits of 32-bit words in host byte order, the port as 4 hex digits.
pub(crate) fn parse_sock_addr(text: &str) -> Option<SocketAddr> {
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
pub(crate) fn conflicts(held: SocketAddr, want: SocketAddr) -> bool {
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
pub(crate) fn socket_inode(target: &str) -> Option<u64> {
    let digits = target.strip_prefix("socket:[")?.strip_suffix(']')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The real uid on the `Uid:` line of `/proc/[pid]/status`.
pub(crate) fn status_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

/// `/proc/[pid]/cmdline` as one line: NULs and other control and format characters become
/// spaces, the ends are trimmed, and it is cut at [`MAX_COMMAND`] bytes. `None` when empty.
pub(crate) fn cmdline_text(raw: &[u8]) -> Option<String> {
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
pub(crate) fn passwd_name(passwd: &str, uid: u32) -> Option<&str> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use super::*;

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
                remote: sa("0.0.0.0:0"),
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
                remote: sa("0.0.0.0:0"),
                state: TCP_LISTEN,
                uid: 0,
                inode: 548
            })
        );
        let established = "   3: 0F02000A:C350 0100007F:1F90 01 00000000:00000000 \
                           02:000AFC6B 00000000  1000        0 777 2 0000000000000000 20 4 30 10 -1";
        let entry = parse_tcp_line(established).unwrap();
        assert_eq!(
            (entry.local, entry.remote, entry.state),
            (sa("10.0.2.15:50000"), sa("127.0.0.1:8080"), TCP_ESTABLISHED)
        );
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
                remote: sa("[::]:0"),
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
        assert!(parse_tcp_line("0: 00000000:0050 00000000:0000 0A 0:0 0:0 0 0 0 1").is_some());
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
        let holder = crate::bind::find_holder(sa("127.255.255.254:1"));
        assert_eq!(holder, crate::bind::Holder::default());
    }
}
