//! Behind a load balancer: PROXY protocol listeners (`[[listener]] proxy_protocol = true`)
//! with hand-written v1 and v2 headers and with HAProxy in front (`send-proxy`,
//! `send-proxy-v2`, two daemons on 127.0.0.2 and 127.0.0.3), connections without a valid
//! header closed, a slow header cut by HeaderWait, https behind PROXY v2; and trusted
//! proxies (`[[trusted_proxy]]`) whose forwarding headers are believed, while the same
//! headers from another address are not.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// An echo upstream, and a daemon on 127.0.0.1 with an upstream queue `p` on
/// `http://+:PORT/p/` forwarding to it, PORT requiring the PROXY header; `extra` is more
/// configuration.
fn proxied_daemon(extra: &str) -> (Daemon, u16, EchoServer) {
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let echo = EchoServer::start(AnyListener::Tcp(up));
    let (d, port) = Daemon::builder().spawn_on_free_port(|port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n{extra}\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             proxy_protocol = true\n\n[[queue]]\nname = \"p\"\n\
             urls = [\"http://+:{port}/p/\"]\nupstream = \"127.0.0.1:{up_port}\"\n"
        )
    });
    (d, port, echo)
}

/// A connection to 127.0.0.1:`port` from the loopback address `from`.
fn connect_from(from: &str, port: u16) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let src: SocketAddr = format!("{from}:0").parse().expect("address");
    s.bind(&src.into()).expect("bind the client");
    let dst: SocketAddr = ([127, 0, 0, 1], port).into();
    s.connect(&dst.into()).expect("connect");
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    t
}

fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// A v2 TCP4 header from `src`:`sport` to 10.9.9.9:80, with a NOOP TLV.
fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut block = src.to_vec();
    block.extend_from_slice(&[10, 9, 9, 9]);
    block.extend_from_slice(&sport.to_be_bytes());
    block.extend_from_slice(&80u16.to_be_bytes());
    block.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']);
    v2(1, 0x11, &block)
}

fn get(c: &mut TcpStream, target: &str, extra: &str) -> Echoed {
    let req = format!("GET {target} HTTP/1.1\r\nHost: h.example\r\n{extra}\r\n");
    c.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    let (status, head, body) = read_response(c, &mut buf, false);
    assert_eq!(status, 200, "{head}{}", String::from_utf8_lossy(&body));
    Echoed::parse(&body)
}

#[test]
fn v1_and_v2_headers_name_the_client_and_routing_keeps_the_real_address() {
    let (d, port, _echo) = proxied_daemon("");
    // v1: the header's source is the client; its destination changes nothing.
    let mut c = connect(port);
    c.write_all(b"PROXY TCP4 192.0.2.7 10.9.9.9 4242 80\r\n")
        .expect("send");
    let e = get(&mut c, "/p/a", "");
    assert_eq!(e.one("portshare-client-addr"), "192.0.2.7:4242");
    assert_eq!(e.one("x-forwarded-for"), "192.0.2.7");
    assert!(
        e.one("forwarded").contains("for=192.0.2.7"),
        "{:?}",
        e.headers
    );
    assert_eq!(e.one("portshare-local-addr"), format!("127.0.0.1:{port}"));
    // Keep-alive: the next request carries the same client.
    let e = get(&mut c, "/p/b", "");
    assert_eq!(e.one("portshare-client-addr"), "192.0.2.7:4242");

    // v1 TCP6.
    let mut c = connect(port);
    c.write_all(b"PROXY TCP6 2001:db8::5 2001:db8::1 5555 80\r\n")
        .expect("send");
    let e = get(&mut c, "/p/", "");
    assert_eq!(e.one("portshare-client-addr"), "[2001:db8::5]:5555");
    assert_eq!(e.one("x-forwarded-for"), "2001:db8::5");

    // v2, the request in the same segment as the header.
    let mut c = connect(port);
    let mut bytes = v2_tcp4([198, 51, 100, 9], 6000);
    bytes.extend_from_slice(b"GET /p/v2 HTTP/1.1\r\nHost: h\r\n\r\n");
    c.write_all(&bytes).expect("send");
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    assert_eq!(e.one("portshare-client-addr"), "198.51.100.9:6000");
    assert_eq!(e.one("portshare-local-addr"), format!("127.0.0.1:{port}"));

    // v2 LOCAL (a health check): the socket's own addresses.
    let mut c = connect(port);
    c.write_all(&v2(0, 0x00, &[])).expect("send");
    let e = get(&mut c, "/p/", "");
    assert!(
        e.one("portshare-client-addr").starts_with("127.0.0.1:"),
        "{:?}",
        e.headers
    );
    // v1 UNKNOWN likewise.
    let mut c = connect(port);
    c.write_all(b"PROXY UNKNOWN\r\n").expect("send");
    let e = get(&mut c, "/p/", "");
    assert!(e.one("portshare-client-addr").starts_with("127.0.0.1:"));
    drop(d);
}

#[test]
fn a_connection_without_a_valid_header_is_closed_unanswered() {
    let (d, port, _echo) = proxied_daemon("");
    let cases: [&[u8]; 6] = [
        b"GET /p/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"PROXY TCP4 1.2.3.4\r\nGET /p/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET /p/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        b"\r\n\r\n\0\r\nQUIT\n\x13\x11\x00\x00",
        &[b'x'; 300],
    ];
    for bytes in cases {
        let mut c = connect(port);
        c.write_all(bytes).expect("send");
        let closed = read_until_close(&mut c, "a bad header");
        assert!(
            closed.bytes.is_empty(),
            "answered {:?} to {:?}",
            closed.text(),
            String::from_utf8_lossy(bytes)
        );
    }
    // Truncated: the connection ends inside the header.
    for bytes in [
        &b"PROXY TCP4 192.0"[..],
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x01",
    ] {
        let mut c = connect(port);
        c.write_all(bytes).expect("send");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let closed = read_until_close(&mut c, "a truncated header");
        assert!(closed.bytes.is_empty(), "{}", closed.text());
    }
    // The daemon is still well and serves a good connection.
    let mut c = connect(port);
    c.write_all(b"PROXY TCP4 192.0.2.1 10.0.0.1 1 80\r\n")
        .expect("send");
    let e = get(&mut c, "/p/", "");
    assert_eq!(e.one("portshare-client-addr"), "192.0.2.1:1");
    drop(d);
}

#[test]
fn a_slow_header_is_cut_by_header_wait_and_logged() {
    let (d, port, _echo) = proxied_daemon("\n[timers]\nheader_wait = 1\n");
    let mut c = connect(port);
    c.write_all(b"PROXY TCP4 192.0").expect("send");
    let closed = read_until_close(&mut c, "a slow header");
    assert!(closed.bytes.is_empty(), "{}", closed.text());
    let found = eventually(10, || {
        d.errlog_text()
            .lines()
            .any(|l| l.contains("Timer_HeaderWait") && l.contains(&format!(" {port} ")))
    });
    assert!(found, "no Timer_HeaderWait line:\n{}", d.errlog_text());
}

#[test]
fn https_behind_a_proxy_v2_header() {
    let dir = TempDir::new("proxy-https");
    let cert = crate::tls::cert(&dir.0, "c", &["h.example"]);
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let _echo = EchoServer::start(AnyListener::Tcp(up));
    let (d, port) = Daemon::builder().spawn_on_free_port(|port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n[[listener]]\naddress = \"0.0.0.0:{port}\"\n\
             proxy_protocol = true\n\n{}\n[[queue]]\nname = \"s\"\n\
             urls = [\"https://+:{port}/s/\"]\nupstream = \"127.0.0.1:{up_port}\"\n",
            crate::tls::pair(&format!("ipport = \"0.0.0.0:{port}\""), &cert)
        )
    });
    let mut tcp = connect(port);
    tcp.write_all(&v2_tcp4([203, 0, 113, 50], 7000))
        .expect("send");
    let mut s = crate::tls::tls_over(tcp, Some("h.example"), None).expect("handshake");
    let (status, head, body) = crate::tls::request(&mut s, "h.example", "/s/x", "");
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    assert_eq!(e.one("portshare-client-addr"), "203.0.113.50:7000");
    assert_eq!(e.one("x-forwarded-proto"), "https");
    drop(d);
}

#[test]
fn forwarding_headers_are_believed_from_a_trusted_proxy_only() {
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let _echo = EchoServer::start(AnyListener::Tcp(up));
    let (d, port) = Daemon::builder().spawn_on_free_port(|port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n[[trusted_proxy]]\nranges = [\"127.0.0.2/32\", \"10.0.0.0/8\"]\n\n\
             [[queue]]\nname = \"t\"\nurls = [\"http://+:{port}/t/\"]\nupstream = \"127.0.0.1:{up_port}\"\n"
        )
    });
    let forged =
        "X-Forwarded-For: 198.51.100.1, 203.0.113.9, 10.1.2.3\r\nX-Forwarded-Proto: https\r\n";
    // From the trusted proxy: the right-most untrusted address is the client, and the
    // scheme it names is what the upstream is told (routing stayed on http).
    let mut c = connect_from("127.0.0.2", port);
    let e = get(&mut c, "/t/", forged);
    assert_eq!(e.one("x-forwarded-for"), "203.0.113.9");
    assert_eq!(e.one("portshare-client-addr"), "203.0.113.9:0");
    assert_eq!(e.one("x-forwarded-proto"), "https");
    assert!(e.one("forwarded").contains("for=203.0.113.9"));
    let e = get(&mut c, "/t/", "Forwarded: for=\"[2001:db8::9]:1234\"\r\n");
    assert_eq!(e.one("x-forwarded-for"), "2001:db8::9");

    // The attack: a client that is no trusted proxy cannot forge its address.
    let mut c = connect_from("127.0.0.3", port);
    let e = get(&mut c, "/t/", forged);
    assert_eq!(e.one("x-forwarded-for"), "127.0.0.3");
    assert!(e.one("portshare-client-addr").starts_with("127.0.0.3:"));
    assert_eq!(e.one("x-forwarded-proto"), "http");
    let all = format!("{:?}", e.headers);
    assert!(
        !all.contains("203.0.113.9") && !all.contains("198.51.100.1") && !all.contains("https"),
        "{all}"
    );
    drop(d);
}

/// Whether HAProxy can run here. Under CI=true its absence fails the test; elsewhere it
/// is skipped with a note.
fn haproxy_here() -> bool {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "haproxy is not installed and CI=true: .ci/run installs it"
        );
        eprintln!("haproxy is not installed: skipped");
    }
    found
}

/// HAProxy in the foreground with `config`, stopped when dropped.
struct Haproxy(Child);

impl Haproxy {
    fn start(dir: &Path, config: &str, ports: &[u16]) -> Haproxy {
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let h = Haproxy(child);
        for &p in ports {
            assert!(
                eventually(10, || TcpStream::connect(("127.0.0.1", p)).is_ok()),
                "haproxy does not listen on {p}"
            );
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HAPROXY_DEFAULTS: &str = "global\n    maxconn 64\n\ndefaults\n    mode tcp\n    \
    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n";

#[test]
fn haproxy_send_proxy_and_send_proxy_v2_name_the_client() {
    if !haproxy_here() {
        return;
    }
    let (d, port, _echo) = proxied_daemon("");
    let dir = TempDir::new("haproxy-1");
    let (v1, v2) = (free_port(), free_port());
    let config = format!(
        "{HAPROXY_DEFAULTS}frontend v1\n    bind 127.0.0.1:{v1}\n    default_backend v1\n\n\
         backend v1\n    server d 127.0.0.1:{port} send-proxy\n\n\
         frontend v2\n    bind 127.0.0.1:{v2}\n    default_backend v2\n\n\
         backend v2\n    server d 127.0.0.1:{port} send-proxy-v2\n"
    );
    let _h = Haproxy::start(&dir.0, &config, &[v1, v2]);
    for front in [v1, v2] {
        let mut c = connect_from("127.0.0.5", front);
        let me = c.local_addr().expect("addr");
        let e = get(&mut c, "/p/", "");
        assert_eq!(
            e.one("portshare-client-addr"),
            me.to_string(),
            "via {front}"
        );
        assert_eq!(e.one("x-forwarded-for"), "127.0.0.5");
    }
    drop(d);
}

#[test]
fn two_daemons_behind_haproxy_on_127_0_0_2_and_127_0_0_3() {
    if !haproxy_here() {
        return;
    }
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let _echo = EchoServer::start(AnyListener::Tcp(up));
    let port = free_port();
    let daemon = |ip: &str| {
        Daemon::builder()
            .iplisten(ip)
            .config(format!(
                "[[listener]]\naddress = \"0.0.0.0:{port}\"\nproxy_protocol = true\n\n\
                 [[queue]]\nname = \"site\"\nurls = [\"http://+:{port}/\"]\n\
                 upstream = \"127.0.0.1:{up_port}\"\n"
            ))
            .spawn()
    };
    let (a, b) = (daemon("127.0.0.2"), daemon("127.0.0.3"));
    let dir = TempDir::new("haproxy-2");
    let front = free_port();
    let config = format!(
        "{HAPROXY_DEFAULTS}frontend site\n    bind 127.0.0.1:{front}\n    default_backend hosts\n\n\
         backend hosts\n    balance roundrobin\n    \
         server a 127.0.0.2:{port} send-proxy-v2\n    server b 127.0.0.3:{port} send-proxy-v2\n"
    );
    let _h = Haproxy::start(&dir.0, &config, &[front]);
    let mut hosts = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let mut c = connect_from("127.0.0.9", front);
        let me = c.local_addr().expect("addr");
        let e = get(&mut c, "/x", "");
        assert_eq!(e.one("portshare-client-addr"), me.to_string());
        hosts.insert(e.one("portshare-local-addr").to_owned());
    }
    let want: std::collections::BTreeSet<String> =
        [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")].into();
    assert_eq!(hosts, want, "round robin reaches both hosts");
    drop((a, b));
}

/// A header that arrives a byte at a time is read whole, and the request after it served.
#[test]
fn a_header_sent_a_byte_at_a_time_is_read_whole() {
    let (d, port, _echo) = proxied_daemon("");
    let mut c = connect(port);
    for b in b"PROXY TCP4 192.0.2.44 10.0.0.1 321 80\r\n" {
        c.write_all(&[*b]).expect("send");
    }
    let e = get(&mut c, "/p/", "");
    assert_eq!(e.one("portshare-client-addr"), "192.0.2.44:321");
    drop(d);
}

/// A reload that turns `proxy_protocol` on applies to the next connection: one without a
/// header is then closed; turning it off serves plain connections again.
#[test]
fn a_reload_turns_the_header_requirement_on_and_off_for_new_connections() {
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let _echo = EchoServer::start(AnyListener::Tcp(up));
    let port = free_port();
    let config = |listener: bool| {
        let listener = if listener {
            format!("[[listener]]\naddress = \"127.0.0.1:{port}\"\nproxy_protocol = true\n\n")
        } else {
            String::new()
        };
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n{listener}[[queue]]\nname = \"r\"\n\
             urls = [\"http://+:{port}/r/\"]\nupstream = \"127.0.0.1:{up_port}\"\n"
        )
    };
    let d = Daemon::builder().config(config(false)).spawn();
    let mut c = connect(port);
    let e = get(&mut c, "/r/", "");
    assert!(e.one("portshare-client-addr").starts_with("127.0.0.1:"));

    d.write_config(&config(true));
    let (status, body) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    let mut plain = connect(port);
    plain
        .write_all(b"GET /r/ HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    let closed = read_until_close(&mut plain, "no header after the reload");
    assert!(closed.bytes.is_empty(), "{}", closed.text());
    let mut c = connect(port);
    c.write_all(b"PROXY TCP4 192.0.2.8 127.0.0.1 8 80\r\n")
        .expect("send");
    assert_eq!(
        get(&mut c, "/r/", "").one("portshare-client-addr"),
        "192.0.2.8:8"
    );

    d.write_config(&config(false));
    let (status, body) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    let mut c = connect(port);
    assert!(
        get(&mut c, "/r/", "")
            .one("portshare-client-addr")
            .starts_with("127.0.0.1:")
    );
}

/// Over HTTP/2 (curl, ALPN h2) the same rule holds: a trusted peer's `X-Forwarded-For` is
/// believed, an untrusted one's is not.
#[test]
fn trusted_proxies_hold_over_http2_too() {
    let curl = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !curl {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "curl is not installed and CI=true: .ci/run installs it"
        );
        return;
    }
    let dir = TempDir::new("proxy-h2");
    let cert = crate::tls::cert(&dir.0, "c", &["h.example"]);
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let _echo = EchoServer::start(AnyListener::Tcp(up));
    let (d, port) = Daemon::builder().spawn_on_free_port(|port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n[[trusted_proxy]]\nranges = [\"127.0.0.2\"]\n\n{}\n\
             [[queue]]\nname = \"s\"\nurls = [\"https://+:{port}/s/\"]\n\
             upstream = \"127.0.0.1:{up_port}\"\n",
            crate::tls::pair(&format!("ipport = \"0.0.0.0:{port}\""), &cert)
        )
    });
    let fetch = |from: &str| {
        let out = Command::new("curl")
            .args(["-sk", "--http2", "--max-time", "20", "--interface", from])
            .args(["-H", "X-Forwarded-For: 203.0.113.77"])
            .args(["-w", "\n--version %{http_version}"])
            .arg(format!("https://127.0.0.1:{port}/s/"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let trusted = fetch("127.0.0.2");
    assert!(trusted.ends_with("--version 2"), "{trusted}");
    assert!(
        trusted.contains("x-forwarded-for: 203.0.113.77\r\n"),
        "{trusted}"
    );
    assert!(
        trusted.contains("portshare-client-addr: 203.0.113.77:0\r\n"),
        "{trusted}"
    );
    let untrusted = fetch("127.0.0.3");
    assert!(
        untrusted.contains("x-forwarded-for: 127.0.0.3\r\n"),
        "{untrusted}"
    );
    assert!(!untrusted.contains("203.0.113.77"), "{untrusted}");
    drop(d);
}
