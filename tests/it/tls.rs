//! https: certificate bindings chosen at the handshake (SNI, exact address, wildcard,
//! central store), what applications behind an https port see, SNI against Host, client
//! certificates, a reload swapping a certificate, the file checks, and a client that never
//! finishes its handshake. Certificates are made here (rcgen); the client is rustls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::harness::{
    AnyListener, Daemon, EchoServer, Echoed, TempDir, free_port, portshare_bin, read_response,
};

/// A certificate for `names`, its PEM files written to `dir` as `tag.crt` and `tag.key`.
pub(crate) struct Cert {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) crt: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

pub(crate) fn cert(dir: &Path, tag: &str, names: &[&str]) -> Cert {
    let made = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("rcgen");
    let crt = dir.join(format!("{tag}.crt"));
    let key = dir.join(format!("{tag}.key"));
    let cert_pem = made.cert.pem();
    let key_pem = made.signing_key.serialize_pem();
    std::fs::write(&crt, &cert_pem).expect("write cert");
    write_private(&key, &key_pem);
    Cert {
        der: made.cert.der().clone(),
        crt,
        key,
        cert_pem,
        key_pem,
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Accepts any server certificate: the tests look at which one was served.
#[derive(Debug)]
pub(crate) struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS client connection to 127.0.0.1:port; `sni` None sends no SNI. `client` is a
/// client certificate to offer.
pub(crate) type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(port: u16, sni: Option<&str>, client: Option<&Cert>) -> Result<Tls, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tls_over(tcp, sni, client)
}

/// A TLS client session over `tcp`, its handshake done (as [`tls_connect`]).
pub(crate) fn tls_over(
    tcp: TcpStream,
    sni: Option<&str>,
    client: Option<&Cert>,
) -> Result<Tls, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert));
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.der.clone()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("a PEM key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).expect("name"),
        // An IP address as the name: rustls sends no SNI then.
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// The leaf the server presented.
fn served(s: &Tls) -> CertificateDer<'static> {
    s.conn.peer_certificates().expect("a certificate")[0]
        .clone()
        .into_owned()
}

/// One request over an open TLS connection.
pub(crate) fn request(
    s: &mut Tls,
    host: &str,
    target: &str,
    extra: &str,
) -> (u16, String, Vec<u8>) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).expect("send");
    s.flush().expect("flush");
    let mut buf = Vec::new();
    read_response(s, &mut buf, false)
}

/// A daemon with an upstream queue `s` on `https://+:PORT/s/` forwarding to an echo
/// server, and the `[[sslcert]]` tables `sslcert(port)` gives.
fn https_daemon(sslcert: impl Fn(u16) -> String) -> (Daemon, u16, EchoServer) {
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let up_port = up.local_addr().expect("addr").port();
    let echo = EchoServer::start(AnyListener::Tcp(up));
    let (d, port) = Daemon::builder().spawn_on_free_port(|port| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n{}\n[[queue]]\nname = \"s\"\n\
             urls = [\"https://+:{port}/s/\"]\nupstream = \"127.0.0.1:{up_port}\"\n",
            sslcert(port)
        )
    });
    (d, port, echo)
}

pub(crate) fn pair(key: &str, c: &Cert) -> String {
    format!(
        "[[sslcert]]\n{key}\ncert = {:?}\nkey = {:?}\n",
        c.crt.display().to_string(),
        c.key.display().to_string()
    )
}

#[test]
fn sni_picks_its_binding_then_the_address_then_the_wildcard() {
    let dir = TempDir::new("tls-select");
    let a = cert(&dir.0, "a", &["a.example"]);
    let b = cert(&dir.0, "b", &["b.example"]);
    let exact = cert(&dir.0, "exact", &["exact.example"]);
    let any = cert(&dir.0, "any", &["any.example"]);
    let other = free_port();
    let (d, port, _echo) = https_daemon(|port| {
        [
            pair(&format!("hostnameport = \"a.example:{port}\""), &a),
            pair(&format!("hostnameport = \"b.example:{port}\""), &b),
            pair(&format!("ipport = \"127.0.0.1:{port}\""), &exact),
            pair(&format!("ipport = \"0.0.0.0:{port}\""), &any),
            pair(&format!("ipport = \"0.0.0.0:{other}\""), &any),
        ]
        .concat()
    });
    // SNI names pick their hostnameport bindings, whatever the address.
    assert_eq!(
        served(&tls_connect(port, Some("a.example"), None).unwrap()),
        a.der
    );
    assert_eq!(
        served(&tls_connect(port, Some("B.Example"), None).unwrap()),
        b.der
    );
    // No SNI, or a name no binding has: the exact address wins over the wildcard.
    assert_eq!(served(&tls_connect(port, None, None).unwrap()), exact.der);
    assert_eq!(
        served(&tls_connect(port, Some("c.example"), None).unwrap()),
        exact.der
    );

    // The wildcard when no exact address is bound: a second https port.
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({"name": "w"}));
    let (status, body) = ctl.add_url("w", &format!("https://+:{other}/w/"));
    assert_eq!(status, 201, "{body}");
    assert!(
        body["warnings"].as_array().is_none_or(|w| w.is_empty()),
        "{body}"
    );
    assert_eq!(served(&tls_connect(other, None, None).unwrap()), any.der);
}

#[test]
fn apps_behind_https_see_the_session_and_the_scheme() {
    let dir = TempDir::new("tls-headers");
    let a = cert(&dir.0, "a", &["a.example"]);
    let (_d, port, _echo) =
        https_daemon(|port| pair(&format!("hostnameport = \"a.example:{port}\""), &a));
    let mut s = tls_connect(port, Some("a.example"), None).unwrap();
    let (status, head, body) = request(
        &mut s,
        "a.example",
        "/s/x",
        "Portshare-Tls: forged\r\nX-Forwarded-Proto: http\r\nPortshare-Client-Cert: forged\r\n",
    );
    assert_eq!(status, 200, "{head}");
    let e = Echoed::parse(&body);
    let tls = e.one("portshare-tls");
    assert!(tls.starts_with("version=TLSv1.3; cipher=TLS13_"), "{tls}");
    assert!(tls.ends_with("; sni=a.example; alpn="), "{tls}");
    assert!(e.all("portshare-client-cert").is_empty(), "{:?}", e.headers);
    assert_eq!(e.one("x-forwarded-proto"), "https");
    assert!(
        e.one("forwarded").contains("proto=https"),
        "{}",
        e.one("forwarded")
    );
    assert_eq!(
        e.one("portshare-url-prefix").to_ascii_lowercase(),
        format!("https://+:{port}/s/")
    );
    // The same session serves the next request (keep-alive over TLS).
    let (status, _, _) = request(&mut s, "a.example", "/s/y", "");
    assert_eq!(status, 200);
}

#[test]
fn no_binding_fails_the_handshake_only_and_is_logged_once() {
    let dir = TempDir::new("tls-miss");
    let a = cert(&dir.0, "a", &["a.example"]);
    let (d, port, _echo) =
        https_daemon(|port| pair(&format!("hostnameport = \"a.example:{port}\""), &a));
    for _ in 0..3 {
        let e = tls_connect(port, Some("nobody.example"), None).unwrap_err();
        assert!(
            e.to_lowercase().contains("alert") || e.contains("Denied"),
            "{e}"
        );
        assert!(tls_connect(port, None, None).is_err());
    }
    // Others' handshakes go on.
    let mut s = tls_connect(port, Some("a.example"), None).unwrap();
    assert_eq!(request(&mut s, "a.example", "/s/", "").0, 200);
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no certificate binding"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("nobody.example") && lines[0].contains("127.0.0.1"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_port_serves_http_or_https_and_an_uncovered_https_port_warns() {
    let d = Daemon::start();
    let port = free_port();
    let mut ctl = d.ctl();
    ctl.create_queue(serde_json::json!({"name": "q"}));
    let (status, body) = ctl.add_url("q", &format!("https://+:{port}/a/"));
    assert_eq!(status, 201, "{body}");
    let warnings = body["warnings"].to_string();
    assert!(
        warnings.contains("no certificate binding covers port"),
        "{body}"
    );
    let (status, body) = ctl.add_url("q", &format!("http://+:{port}/b/"));
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("183"), "{body}");
    let state = d.state().to_string();
    assert!(
        state.contains("no certificate binding covers port"),
        "{state}"
    );
    // And the handshake fails: nothing covers the port.
    assert!(tls_connect(port, Some("a.example"), None).is_err());
}

#[test]
fn host_may_differ_from_sni_unless_the_binding_requires_a_match() {
    let dir = TempDir::new("tls-sni-host");
    let a = cert(&dir.0, "a", &["a.example"]);
    let b = cert(&dir.0, "b", &["b.example"]);
    let (d, port, _echo) = https_daemon(|port| {
        pair(&format!("hostnameport = \"a.example:{port}\""), &a)
            + &pair(
                &format!("hostnameport = \"b.example:{port}\"\nrequire_sni_match = true"),
                &b,
            )
    });
    // HTTP.sys's default: SNI and Host need not agree.
    let mut s = tls_connect(port, Some("a.example"), None).unwrap();
    assert_eq!(request(&mut s, "other.example", "/s/", "").0, 200);
    // A binding that requires them to.
    let mut s = tls_connect(port, Some("b.example"), None).unwrap();
    assert_eq!(
        request(&mut s, &format!("B.example:{port}"), "/s/", "").0,
        200
    );
    let (status, head, body) = request(&mut s, "a.example", "/s/", "");
    assert_eq!(status, 421, "{head}");
    assert!(
        head.starts_with("HTTP/1.1 421 Misdirected Request\r\n"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("Misdirected Request"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.errlog_text().contains(" 421 ") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.errlog_text().contains("421 - Misdirected"),
        "{}",
        d.errlog_text()
    );
}

#[test]
fn client_certificates_required_optional_absent() {
    let dir = TempDir::new("tls-client");
    let a = cert(&dir.0, "a", &["a.example"]);
    let b = cert(&dir.0, "b", &["b.example"]);
    let ca = cert(&dir.0, "ca", &["client.example"]);
    let stranger = cert(&dir.0, "stranger", &["client.example"]);
    let ca_file = ca.crt.display().to_string();
    let (_d, port, _echo) = https_daemon(|port| {
        pair(
            &format!(
                "hostnameport = \"a.example:{port}\"\nclient_cert = \"require\"\nclient_ca = {ca_file:?}"
            ),
            &a,
        ) + &pair(
            &format!(
                "hostnameport = \"b.example:{port}\"\nclient_cert = \"request\"\nclient_ca = {ca_file:?}"
            ),
            &b,
        )
    });
    // Required: with the certificate the app gets it; without one, or with one of another
    // CA, no request gets through.
    let mut s = tls_connect(port, Some("a.example"), Some(&ca)).unwrap();
    let (status, _, body) = request(&mut s, "a.example", "/s/", "");
    assert_eq!(status, 200);
    let e = Echoed::parse(&body);
    let sent = e.one("portshare-client-cert");
    let expected: String = ca
        .cert_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert_eq!(sent, expected);
    for client in [None, Some(&stranger)] {
        // TLS 1.3: the server's verdict on the client comes with the first read.
        let outcome = tls_connect(port, Some("a.example"), client).and_then(|mut s| {
            s.write_all(b"GET /s/ HTTP/1.1\r\nHost: a.example\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => Ok(()),
                Ok(_) => Err("closed".into()),
                Err(e) => Err(e.to_string()),
            }
        });
        assert!(
            outcome.is_err(),
            "a client without a good certificate got an answer"
        );
    }
    // Requested: without a certificate the request goes through, without the header.
    let mut s = tls_connect(port, Some("b.example"), None).unwrap();
    let (status, _, body) = request(&mut s, "b.example", "/s/", "");
    assert_eq!(status, 200);
    assert!(Echoed::parse(&body).all("portshare-client-cert").is_empty());
    let mut s = tls_connect(port, Some("b.example"), Some(&ca)).unwrap();
    let (status, _, body) = request(&mut s, "b.example", "/s/", "");
    assert_eq!(status, 200);
    assert_eq!(Echoed::parse(&body).one("portshare-client-cert"), expected);
}

#[test]
fn a_central_store_finds_files_by_name_and_wildcard() {
    let dir = TempDir::new("tls-ccs");
    let store = dir.0.join("ccs");
    std::fs::create_dir(&store).expect("mkdir");
    let one = cert(&dir.0, "one", &["one.example"]);
    let wild = cert(&dir.0, "wild", &["*.wild.example"]);
    write_private(
        &store.join("one.example.pem"),
        &(one.cert_pem.clone() + &one.key_pem),
    );
    write_private(
        &store.join("_.wild.example.pem"),
        &(wild.cert_pem.clone() + &wild.key_pem),
    );
    // Named after no DNS name: never indexed.
    write_private(&store.join("..pem"), &(one.cert_pem.clone() + &one.key_pem));
    let folder = store.display().to_string();
    let (_d, port, _echo) =
        https_daemon(|port| format!("[[sslcert]]\nccs = {port}\nfolder = {folder:?}\n"));
    assert_eq!(
        served(&tls_connect(port, Some("ONE.example"), None).unwrap()),
        one.der
    );
    assert_eq!(
        served(&tls_connect(port, Some("x.wild.example"), None).unwrap()),
        wild.der
    );
    // A name not in the index is a miss; so is no SNI (ccs needs a name).
    assert!(tls_connect(port, Some("two.example"), None).is_err());
    assert!(tls_connect(port, Some("a.b.wild.example"), None).is_err());
    assert!(tls_connect(port, None, None).is_err());
    let mut s = tls_connect(port, Some("one.example"), None).unwrap();
    assert_eq!(request(&mut s, "one.example", "/s/", "").0, 200);
}

#[test]
fn a_reload_swaps_the_certificate_for_new_connections_only() {
    let dir = TempDir::new("tls-reload");
    let old = cert(&dir.0, "old", &["a.example"]);
    let new = cert(&dir.0, "new", &["a.example"]);
    let (crt, key) = (dir.0.join("a.crt"), dir.0.join("a.key"));
    std::fs::copy(&old.crt, &crt).expect("copy");
    std::fs::copy(&old.key, &key).expect("copy");
    let a = Cert {
        crt: crt.clone(),
        key: key.clone(),
        ..cert(&dir.0, "unused", &["a.example"])
    };
    let (d, port, _echo) =
        https_daemon(|port| pair(&format!("hostnameport = \"a.example:{port}\""), &a));
    let mut open = tls_connect(port, Some("a.example"), None).unwrap();
    assert_eq!(served(&open), old.der);
    assert_eq!(request(&mut open, "a.example", "/s/", "").0, 200);
    // Same paths, new files.
    std::fs::copy(&new.crt, &crt).expect("copy");
    std::fs::copy(&new.key, &key).expect("copy");
    let (status, body) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        served(&tls_connect(port, Some("a.example"), None).unwrap()),
        new.der
    );
    // The open session goes on.
    assert_eq!(request(&mut open, "a.example", "/s/", "").0, 200);
    // A key that is not the certificate's: the reload is refused, the old one stays.
    std::fs::copy(&old.key, &key).expect("copy");
    let (status, body) = d.ctl().call("POST", "/v1/reload", None);
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("a.key"), "{body}");
    assert_eq!(
        served(&tls_connect(port, Some("a.example"), None).unwrap()),
        new.der
    );
}

fn check_config(dir: &Path, text: &str) -> (bool, String) {
    let file = dir.join("check.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(portshare_bin())
        .args(["check-config", &file.display().to_string()])
        .output()
        .expect("portshare runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_bad_files_and_warns_of_risky_ones() {
    let dir = TempDir::new("tls-check");
    let a = cert(&dir.0, "a", &["a.example"]);
    let b = cert(&dir.0, "b", &["b.example"]);
    let table = |crt: &Path, key: &Path| {
        format!(
            "[[sslcert]]\nhostnameport = \"a.example:8443\"\ncert = {:?}\nkey = {:?}\n",
            crt.display().to_string(),
            key.display().to_string()
        )
    };
    let (ok, err) = check_config(&dir.0, &table(&a.crt, &a.key));
    assert!(ok && err.is_empty(), "{err}");
    let (ok, err) = check_config(&dir.0, &table(&a.crt, &b.key));
    assert!(
        !ok && err.contains("b.key") && err.contains("not the key"),
        "{err}"
    );
    let missing = dir.0.join("missing.key");
    let (ok, err) = check_config(&dir.0, &table(&a.crt, &missing));
    assert!(
        !ok && err.contains("missing.key") && err.contains("cannot read"),
        "{err}"
    );
    let junk = dir.0.join("junk.crt");
    std::fs::write(&junk, "not pem").expect("write");
    let (ok, err) = check_config(&dir.0, &table(&junk, &a.key));
    assert!(!ok && err.contains("junk.crt"), "{err}");
    // Risky but usable: a key others may read, a name outside the SANs.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, err) = check_config(
        &dir.0,
        &table(&a.crt, &a.key).replace("a.example:", "c.example:"),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("readable by other users"),
        "{err}"
    );
    assert!(err.contains("c.example is not among"), "{err}");
    // Two ways to find a binding in one table: refused with its line.
    let (ok, err) = check_config(
        &dir.0,
        "[[sslcert]]\nccs = 443\nipport = \"0.0.0.0:443\"\nfolder = \"/x\"\n",
    );
    assert!(!ok && err.contains("exactly one of"), "{err}");
}

#[test]
fn an_expired_certificate_warns() {
    let dir = TempDir::new("tls-expired");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let c = params.self_signed(&key).expect("cert");
    let crt = dir.0.join("old.crt");
    let k = dir.0.join("old.key");
    std::fs::write(&crt, c.pem()).expect("write");
    write_private(&k, &key.serialize_pem());
    let text = format!(
        "[[sslcert]]\nipport = \"0.0.0.0:8443\"\ncert = {:?}\nkey = {:?}\n",
        crt.display().to_string(),
        k.display().to_string()
    );
    let (ok, err) = check_config(&dir.0, &text);
    assert!(ok, "{err}");
    assert!(err.contains("expired at 2002-01-01T00:00:00Z"), "{err}");
}

/// An attack: clients that open connections and never finish the handshake (or never
/// start it) are cut by HeaderWait, and a real client is served meanwhile.
#[test]
fn unfinished_handshakes_are_cut_by_the_timer_and_hold_nobody_back() {
    let dir = TempDir::new("tls-stall");
    let a = cert(&dir.0, "a", &["a.example"]);
    let (d, port, _echo) = https_daemon(|port| {
        format!(
            "[timers]\nheader_wait = 2\n\n{}",
            pair(&format!("ipport = \"0.0.0.0:{port}\""), &a)
        )
    });
    let mut stalled = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        if i % 2 == 0 {
            // The start of a ClientHello record, and no more.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .expect("send");
        }
        stalled.push(s);
    }
    let mut s = tls_connect(port, Some("a.example"), None).unwrap();
    assert_eq!(request(&mut s, "a.example", "/s/", "").0, 200);
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        // Closed (or reset) by the daemon: never an answer.
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("a stalled handshake got {n} bytes"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.errlog_text().contains("Timer_HeaderWait") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.errlog_text().contains("Timer_HeaderWait"),
        "{}",
        d.errlog_text()
    );
}
