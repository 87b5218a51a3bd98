//! One TCP socket looked up by its addresses through `NETLINK_SOCK_DIAG` (sock_diag(7)),
//! for [`crate::owner`]: the kernel finds it in its hash tables in microseconds, where a
//! read of `/proc/net/tcp` walks every socket of the host (milliseconds, and more the more
//! connections there are). `owner` falls back to [`crate::procfs`] when this fails (a
//! kernel without `inet_diag`).
//!
//! A lookup by exact addresses may answer with the listening socket of the local address
//! when no connection matches, so only an answer for the very connection asked about is
//! taken.

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use crate::procfs::SockEntry;

/// A netlink socket for lookups, one request at a time.
#[derive(Debug)]
pub(crate) struct Diag {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl Diag {
    pub(crate) fn open() -> io::Result<Diag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(Diag {
            socket,
            sequence: 0,
            buf: vec![0; 8192],
        })
    }

    /// The connection whose local address is `local` and whose peer is `remote` (an IPv4
    /// connection served by a dual-stack socket included), or `None` when there is none.
    pub(crate) fn find(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<SockEntry>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.sequence;
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: SocketId {
                    source_port: local.port(),
                    destination_port: remote.port(),
                    source_address: local.ip(),
                    destination_address: remote.ip(),
                    interface_id: 0,
                    // INET_DIAG_NOCOOKIE: any socket with these addresses.
                    cookie: [0xff; 8],
                },
            })
            .into(),
        );
        request.finalize();
        let mut out = vec![0; request.buffer_len()];
        request.serialize(&mut out);
        self.socket.send(&out, 0)?;
        // One answer per request: the socket, or an error (ENOENT when there is none).
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let answer = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[..n])
                .map_err(|e| io::Error::other(format!("sock_diag answer: {e}")))?;
            if answer.header.sequence_number != self.sequence {
                continue;
            }
            return match answer.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    let same = id.source_port == local.port()
                        && id.destination_port == remote.port()
                        && unmapped(id.destination_address) == unmapped(remote.ip());
                    Ok(same.then(|| SockEntry {
                        local,
                        remote,
                        state: r.header.state,
                        uid: r.header.uid,
                        inode: u64::from(r.header.inode),
                    }))
                }
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) if code.get() == -libc::ENOENT => Ok(None),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    None => Ok(None),
                },
                other => Err(io::Error::other(format!(
                    "sock_diag answered {}",
                    other.message_type()
                ))),
            };
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps.
fn unmapped(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::procfs::TCP_ESTABLISHED;

    #[test]
    fn a_connection_is_found_by_its_addresses_and_a_listener_is_not_taken_for_one() {
        let mut diag = Diag::open().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, local) = (client.peer_addr().unwrap(), client.local_addr().unwrap());
        let (accepted, _) = listener.accept().unwrap();

        let found = diag.find(server, local).unwrap().unwrap();
        assert_eq!(found.state, TCP_ESTABLISHED);
        assert_eq!(found.uid, nix::unistd::geteuid().as_raw());
        assert_ne!(found.inode, 0);
        let ours = diag.find(local, server).unwrap().unwrap();
        assert_eq!(ours.state, TCP_ESTABLISHED);

        // No connection from this port: the kernel may name the listener, which is no
        // answer.
        let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(diag.find(server, elsewhere).unwrap(), None);
        drop((accepted, client));
    }

    #[test]
    fn a_dual_stack_listener_serves_ipv4_connections() {
        let Ok(listener) = TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, local) = (client.peer_addr().unwrap(), client.local_addr().unwrap());
        let found = diag_find(server, local);
        assert_eq!(found.map(|e| e.state), Some(TCP_ESTABLISHED));
    }

    fn diag_find(local: SocketAddr, remote: SocketAddr) -> Option<SockEntry> {
        Diag::open().unwrap().find(local, remote).unwrap()
    }
}
