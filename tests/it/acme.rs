//! Certificates obtained and renewed by ACME, end to end against Debian's `pebble` (a test
//! CA speaking ACME) with `pebble-challtestsrv` as its DNS server, both on 127.0.0.1 with
//! ports picked here, validating for real (HTTP-01, and TLS-ALPN-01, against the daemon).
//!
//! Pebble's own https uses a certificate of a CA this test makes (rcgen), which the daemon
//! is told to trust (`[acme] ca`). Pebble validates through a small relay made here, which
//! sits between pebble's validation requests and the daemon's challenge port: before it
//! passes a validation request on, it asks the daemon the same path with another Host, so
//! the test sees what the daemon answers while the challenge is pending; after the order,
//! the same tokens are asked again.
//!
//! Without `pebble` these tests skip with a note, and fail under `CI=true` (`.ci/run`
//! installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::harness::*;

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether pebble is installed: `None` means skip (with a note), and fails under CI.
fn have_pebble() -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|p| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "pebble and pebble-challtestsrv are needed under CI (apt-get install pebble)"
        );
        eprintln!("skipping: pebble is not installed (apt-get install pebble)");
    }
    found
}

/// What the relay saw: each validation request's token, the daemon's answer to it with
/// the right Host (`right`) and with another Host (`other`).
#[derive(Debug, Default, Clone)]
struct Seen {
    token: String,
    right: String,
    other: String,
}

/// Pebble, its DNS server and the relay in front of the daemon's challenge port.
struct Pebble {
    _dns: Killed,
    _pebble: Killed,
    dir: TempDir,
    port: u16,
    management: u16,
    /// The test CA pebble's https certificate chains to.
    ca: std::path::PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A CA, and a certificate it signed for 127.0.0.1, as PEM files in `dir`: `ca.pem`,
/// `pebble.pem`, `pebble.key`.
fn test_ca(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portshare test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf
        .signed_by(&key, &rcgen::Issuer::from_params(&ca, &ca_key))
        .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("pebble.pem"), leaf.pem()).expect("write");
    std::fs::write(dir.join("pebble.key"), key.serialize_pem()).expect("write");
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    assert!(
        eventually(20, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "{what} did not listen on {port}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

impl Pebble {
    /// Starts pebble (certificates valid `validity` seconds) and its DNS server; pebble
    /// validates HTTP-01 through a relay to `challenge_port` on 127.0.0.1.
    fn start(validity: u64, challenge_port: u16) -> Pebble {
        Pebble::start_with(validity, challenge_port, free_port())
    }

    /// As [`Pebble::start`], validating TLS-ALPN-01 on `tls_port`.
    fn start_with(validity: u64, challenge_port: u16, tls_port: u16) -> Pebble {
        let dir = TempDir::new("pebble");
        test_ca(&dir.0);
        let dns = free_port();
        let dns_log = dir.0.join("challtestsrv.log");
        let dns_proc = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&dns_log).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let dns_proc = Killed(dns_proc);
        wait_listening(dns, "pebble-challtestsrv", &dns_log);

        let seen = Arc::new(Mutex::new(Vec::new()));
        let relay = relay(challenge_port, seen.clone());
        let (port, management) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.0.join("pebble.pem"),
                "privateKey": dir.0.join("pebble.key"),
                "httpPort": relay,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity,
            }
        });
        let config_path = dir.0.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write");
        let log = dir.0.join("pebble.log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // Real validation, without pebble's random sleeps and refused nonces, and
            // every order validated anew.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.0.join("pebble.err")).expect("log"))
            .spawn()
            .expect("start pebble");
        let pebble = Killed(pebble);
        wait_listening(port, "pebble", &log);
        wait_listening(management, "pebble's management", &log);
        let ca = dir.0.join("ca.pem");
        Pebble {
            _dns: dns_proc,
            _pebble: pebble,
            dir,
            port,
            management,
            ca,
            seen,
        }
    }

    /// The `[acme]` table for this pebble.
    fn acme_table(&self, http_port: u16) -> String {
        format!(
            "[acme]\ndirectory = \"https://127.0.0.1:{}/dir\"\ncontact = [\"mailto:admin@app.test\"]\n\
             ca = {:?}\nhttp_port = {http_port}\n",
            self.port,
            self.ca.display().to_string()
        )
    }

    /// Pebble's root, which the certificates it issues chain to, from its management
    /// endpoint.
    fn root(&self) -> CertificateDer<'static> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).expect("ca") {
            roots.add(c.expect("pem")).expect("root");
        }
        let mut s = tls_client(roots, self.management, "127.0.0.1");
        s.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut text = Vec::new();
        let _ = s.read_to_end(&mut text);
        let text = String::from_utf8_lossy(&text);
        let pem = text
            .find("-----BEGIN")
            .map(|i| &text[i..])
            .expect("a PEM root");
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("root PEM")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("pebble.log")).unwrap_or_default()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to 127.0.0.1:`port` that verifies the server against `roots` for
/// `name`.
fn tls_client(roots: rustls::RootCertStore, port: u16, name: &str) -> Tls {
    try_tls_client(roots, port, name).expect("handshake")
}

fn try_tls_client(roots: rustls::RootCertStore, port: u16, name: &str) -> Result<Tls, String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned()).expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// One GET over an open connection.
fn request(s: &mut Tls, host: &str, target: &str) -> (u16, Vec<u8>) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    s.flush().expect("flush");
    let mut buf = Vec::new();
    let (status, _, body) = read_response(s, &mut buf, false);
    (status, body)
}

/// One GET on a new plain connection to 127.0.0.1:`port`; the whole answer as text, or
/// the error.
fn plain_get(port: u16, host: &str, target: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return "(refused)".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The relay pebble validates through: for each request, asks the daemon the same path
/// with another Host first, then passes the request on and relays the answer. Returns its
/// port.
fn relay(to: u16, seen: Arc<Mutex<Vec<Seen>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("relay");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for client in l.incoming().take(64) {
            let Ok(mut client) = client else { continue };
            let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(client.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
            let mut host = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.strip_prefix("Host:").or_else(|| h.strip_prefix("host:")) {
                    host = v.trim().to_owned();
                }
            }
            let token = target
                .strip_prefix("/.well-known/acme-challenge/")
                .unwrap_or("")
                .to_owned();
            let other = plain_get(to, "other.test", &target);
            let right = plain_get(to, &host, &target);
            seen.lock().expect("seen").push(Seen {
                token,
                right: right.clone(),
                other,
            });
            let _ = client.write_all(right.as_bytes());
        }
    });
    port
}

/// The daemon's `show sslcert` entry of `key`.
fn sslcert(d: &Daemon, key: &str) -> Value {
    let (status, body) = d.ctl().call("GET", "/v1/sslcert", None);
    assert_eq!(status, 200, "{body}");
    body["bindings"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["binding"] == key).cloned())
        .unwrap_or(Value::Null)
}

/// The body of an HTTP answer.
fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn a_certificate_is_obtained_for_pending_challenges_of_its_host_only() {
    if !have_pebble() {
        return;
    }
    let http = free_port();
    let pebble = Pebble::start(3600, http);
    let acme = pebble.acme_table(http);
    let (d, tls) = Daemon::builder().tag("acme").spawn_on_free_port(|tls| {
        format!(
            "[[sslcert]]\nhostnameport = \"app.test:{tls}\"\nacme = true\n\n{acme}\n\
             [[queue]]\nname = \"s\"\nurls = [\"https://+:{tls}/\"]\nupstream = \"127.0.0.1:9\"\n"
        )
    });
    let key = format!("hostnameport=app.test:{tls}");
    assert!(
        eventually(60, || sslcert(&d, &key)["acme"]["state"] == "valid"),
        "no certificate: {}\n{}\n{}",
        sslcert(&d, &key),
        d.log(),
        pebble.log()
    );
    let info = sslcert(&d, &key);
    assert!(info["acme"]["valid_until"].is_string(), "{info}");
    assert!(info["acme"]["next_attempt"].is_string(), "{info}");
    assert_eq!(info["cert"]["sans"][0], "app.test", "{info}");

    // The account and the certificate are the daemon's alone.
    use std::os::unix::fs::PermissionsExt;
    let folder = d.dir.0.join("acme");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&folder), 0o700);
    let stem = format!("hostnameport-app.test-{tls}");
    for f in [
        "account.json".to_owned(),
        format!("{stem}.cert.pem"),
        format!("{stem}.key.pem"),
    ] {
        assert_eq!(mode(&folder.join(&f)), 0o600, "{f}");
    }
    let (_, shown) = d.ctl().call("GET", "/v1/sslcert", None);
    assert!(!shown.to_string().contains("PRIVATE KEY"), "{shown}");

    // A client that trusts pebble's root, and nothing else, accepts it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.root()).expect("root");
    let s = tls_client(roots.clone(), tls, "app.test");
    drop(s);
    // Another name is not served (no binding): the handshake fails.
    assert!(try_tls_client(roots, tls, "other.test").is_err());

    // While pending, the daemon answered the token for app.test only.
    let seen = pebble.seen();
    assert!(!seen.is_empty(), "pebble validated nothing");
    for s in &seen {
        assert!(
            s.right.starts_with("HTTP/1.1 200") && body_of(&s.right).starts_with(&s.token),
            "the pending challenge was not answered: {s:?}"
        );
        assert!(!s.token.is_empty());
        assert!(
            !s.other.contains(&format!("{}.", s.token)),
            "another host was given the key authorization: {s:?}"
        );
    }
    // The challenge port was bound for the order only: nothing is registered on it.
    assert!(
        eventually(10, || port_free(http)),
        "the challenge port is still bound"
    );
}

#[test]
fn renewal_swaps_the_certificate_and_open_connections_keep_working() {
    if !have_pebble() {
        return;
    }
    let http = free_port();
    // Renewed two thirds into 24 seconds.
    let pebble = Pebble::start(24, http);
    let acme = pebble.acme_table(http);
    let up = TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let _echo = EchoServer::start(AnyListener::Tcp(up));
    // The challenge port is registered too: challenges are answered before routing, and
    // everything else is routed.
    let (d, tls) = Daemon::builder()
        .tag("acme-renew")
        .spawn_on_free_port(|tls| {
            format!(
                "[[sslcert]]\nhostnameport = \"app.test:{tls}\"\nacme = true\n\n{acme}\n\
             [[queue]]\nname = \"s\"\nurls = [\"https://+:{tls}/\", \"http://+:{http}/\"]\n\
             upstream = \"127.0.0.1:{up_port}\"\n"
            )
        });
    let key = format!("hostnameport=app.test:{tls}");
    assert!(
        eventually(60, || sslcert(&d, &key)["acme"]["state"] == "valid"),
        "no certificate: {}\n{}",
        sslcert(&d, &key),
        d.log()
    );
    let first = sslcert(&d, &key)["cert"]["sha256"].clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.root()).expect("root");
    let mut open = tls_client(roots.clone(), tls, "app.test");
    let (status, _) = request(&mut open, "app.test", "/before");
    assert_eq!(status, 200);
    let old_leaf = open.conn.peer_certificates().expect("cert")[0].clone();

    assert!(
        eventually(60, || {
            let info = sslcert(&d, &key);
            info["cert"]["sha256"] != first && info["acme"]["issued"].as_u64() >= Some(2)
        }),
        "not renewed: {}\n{}",
        sslcert(&d, &key),
        d.log()
    );
    // The connection made before goes on; a new one gets the new certificate.
    let (status, _) = request(&mut open, "app.test", "/after");
    assert_eq!(status, 200);
    let fresh = tls_client(roots, tls, "app.test");
    assert_ne!(
        fresh.conn.peer_certificates().expect("cert")[0],
        old_leaf,
        "a new connection still gets the old certificate"
    );
    // Tokens no order holds any more are routed as usual (here: to the upstream).
    let seen = pebble.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    for s in &seen {
        assert!(body_of(&s.right).starts_with(&s.token), "{s:?}");
        let later = plain_get(
            http,
            "app.test",
            &format!("/.well-known/acme-challenge/{}", s.token),
        );
        assert!(
            !body_of(&later).starts_with(&format!("{}.", s.token)),
            "an ended challenge is still answered: {later}"
        );
        assert!(later.starts_with("HTTP/1.1 200"), "not routed: {later}");
    }
}

#[test]
fn a_failing_directory_shows_its_error_and_is_retried() {
    // Nothing listens on the directory's port: every attempt fails at once.
    let dead = free_port();
    let (d, tls) = Daemon::builder()
        .tag("acme-fail")
        .spawn_on_free_port(|tls| {
            format!(
                "[[sslcert]]\nhostnameport = \"app.test:{tls}\"\nacme = true\n\n\
             [acme]\ndirectory = \"https://127.0.0.1:{dead}/dir\"\nhttp_port = {}\n",
                free_port()
            )
        });
    let key = format!("hostnameport=app.test:{tls}");
    assert!(
        eventually(30, || sslcert(&d, &key)["acme"]["failures"].as_u64()
            >= Some(2)),
        "no retry: {}\n{}",
        sslcert(&d, &key),
        d.log()
    );
    let info = sslcert(&d, &key);
    assert_eq!(info["acme"]["state"], "failed", "{info}");
    assert!(
        info["acme"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{info}"
    );
    assert!(info["acme"]["next_attempt"].is_string(), "{info}");
    assert!(info["cert"].is_null(), "{info}");
    // The CLI says it too.
    let out = Command::new(portshare_bin())
        .args(["show", "sslcert"])
        .arg("--control")
        .arg(&d.control)
        .output()
        .expect("show sslcert");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ACME") && text.contains("failed") && text.contains("ACME Last Error"),
        "{text}"
    );
}

#[test]
fn tls_alpn_01_is_answered_on_the_https_port() {
    if !have_pebble() {
        return;
    }
    let tls = free_port();
    let pebble = Pebble::start_with(3600, free_port(), tls);
    let acme = format!(
        "{}tls_port = {tls}\ntls_alpn = true\n",
        pebble.acme_table(free_port())
    );
    let d = Daemon::builder()
        .tag("acme-alpn")
        .config(format!(
            "[[sslcert]]\nhostnameport = \"app.test:{tls}\"\nacme = true\n\n{acme}\n\
             [[queue]]\nname = \"s\"\nurls = [\"https://+:{tls}/\"]\nupstream = \"127.0.0.1:9\"\n"
        ))
        .spawn();
    let key = format!("hostnameport=app.test:{tls}");
    assert!(
        eventually(60, || sslcert(&d, &key)["acme"]["state"] == "valid"),
        "no certificate: {}\n{}\n{}",
        sslcert(&d, &key),
        d.log(),
        pebble.log()
    );
    assert!(pebble.seen().is_empty(), "HTTP-01 was used");
    assert!(
        d.log().contains("tls-alpn-01 challenge answered"),
        "{}",
        d.log()
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.root()).expect("root");
    drop(tls_client(roots, tls, "app.test"));
}
