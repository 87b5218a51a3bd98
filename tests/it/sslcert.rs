//! Certificate bindings through the control API and `portshare sslcert`: add, show and
//! delete as an administrator, what other accounts may do, where the daemon keeps the
//! material, restarts, the configuration's precedence, and an oversized request.
//!
//! Certificates are made here (rcgen); handshakes are made by a rustls client that
//! accepts any certificate and reports the one it was given.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use portshare_proto::control::path;
use serde_json::{Value, json};

/// A self-signed certificate for `names`: its PEM chain, its PEM key and its DER.
struct Cert {
    pem: String,
    key: String,
    der: Vec<u8>,
}

fn cert(names: &[&str]) -> Cert {
    let c = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("rcgen");
    Cert {
        pem: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
        der: c.cert.der().to_vec(),
    }
}

/// Writes `cert` as `DIR/NAME.crt` and `DIR/NAME.key`, readable by every account (the
/// CLI reads them with its caller's rights); their paths.
fn write_cert(dir: &Path, name: &str, cert: &Cert) -> (PathBuf, PathBuf) {
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, &cert.pem).expect("write cert");
    std::fs::write(&k, &cert.key).expect("write key");
    for p in [&c, &k] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    (c, k)
}

/// Accepts any server certificate; the handshake's caller reads it from the connection.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS handshake with 127.0.0.1:`port`, sending `sni` (an IP literal sends none): the
/// leaf certificate the daemon presented, or why the handshake failed.
fn handshake(port: u16, sni: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("a server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("no certificate")?;
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(leaf)
}

/// `portshare ARGS --control SOCKET`, as `prefix` says (`as_uid(..)`, or nothing).
fn cli_as(prefix: &[String], exe: &Path, control: &Path, args: &[&str]) -> Output {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(args)
        .arg("--control")
        .arg(control)
        .env_remove("PORTSHARE_CONTROL")
        .output()
        .expect("portshare runs")
}

fn cli(control: &Path, args: &[&str]) -> Output {
    cli_as(&[], &portshare_bin(), control, args)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(control: &Path, args: &[&str]) -> String {
    let out = cli(control, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A daemon whose folder every account may reach, with an https queue on a free port
/// (registered as root through the API, so the port listens): the daemon, the port and
/// the session holding the queue.
fn https_daemon(tag: &str, config: &str) -> (Daemon, u16, Ctl) {
    let d = Daemon::builder()
        .dir(TempDir::open_to_all(tag))
        .config(config.to_owned())
        .spawn();
    let port = free_port();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "site" }));
    let (status, body) = ctl.add_url("site", &format!("https://+:{port}/"));
    assert_eq!(status, 201, "{body}");
    (d, port, ctl)
}

fn sslcert_dir(d: &Daemon) -> PathBuf {
    d.dir.0.join("sslcert")
}

fn show_json(d: &Daemon) -> Value {
    let (status, body) = d.ctl().call("GET", path::SSLCERT, None);
    assert_eq!(status, 200, "{body}");
    body
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

#[test]
fn added_as_root_a_binding_serves_at_once_shows_and_deletes() {
    let (d, port, _site) = https_daemon("sslcert-add", "");
    let files = TempDir::new("sslcert-files");
    let a = cert(&["a.example"]);
    let (c, k) = write_cert(&files.0, "a", &a);
    assert!(handshake(port, "a.example").is_err(), "no binding yet");

    let binding = format!("ipport=0.0.0.0:{port}");
    let added = ok(
        &d.control,
        &[
            "sslcert",
            "add",
            &binding,
            "--cert",
            c.to_str().expect("path"),
            "--key",
            k.to_str().expect("path"),
            "--min-tls",
            "1.2",
        ],
    );
    assert!(
        added.starts_with("SSL Certificate successfully added"),
        "{added}"
    );
    // No reload: the next handshake gets it, with SNI or without.
    assert_eq!(handshake(port, "a.example").as_deref(), Ok(&a.der[..]));
    assert_eq!(handshake(port, "127.0.0.1").as_deref(), Ok(&a.der[..]));

    let shown = ok(&d.control, &["show", "sslcert"]);
    let sha1 = {
        let list = show_json(&d);
        let b = &list["bindings"][0];
        assert_eq!(b["binding"], binding.as_str(), "{list}");
        assert_eq!(b["source"], "api", "{list}");
        assert_eq!(b["cert"]["sans"], json!(["a.example"]), "{list}");
        assert!(
            b.get("key").is_none() && !list.to_string().contains("PRIVATE"),
            "{list}"
        );
        b["cert"]["sha1"].as_str().expect("sha1").to_owned()
    };
    for line in [
        format!("    IP:port                      : 0.0.0.0:{port}"),
        "    Subject Alternative Names    : a.example".into(),
        format!("    Certificate Hash             : {sha1}"),
        "    HTTP/2                       : Enabled".into(),
        "    Source                       : state file (sslcert add)".into(),
    ] {
        assert!(shown.contains(&line), "{line:?} in:\n{shown}");
    }
    let json_out: Value =
        serde_json::from_str(&ok(&d.control, &["sslcert", "show", "--json"])).expect("JSON");
    assert_eq!(json_out, show_json(&d));

    // The same key again: 183, as netsh.
    let again = cli(
        &d.control,
        &[
            "sslcert",
            "add",
            &binding,
            "--cert",
            c.to_str().unwrap(),
            "--key",
            k.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("183"), "{}", text(&again));

    ok(&d.control, &["sslcert", "delete", &binding]);
    assert!(handshake(port, "a.example").is_err(), "deleted, yet served");
    let (status, body) = d
        .ctl()
        .call("DELETE", path::SSLCERT, Some(json!({ "binding": binding })));
    assert_eq!((status, body["code"].as_u64()), (404, Some(2)), "{body}");
    assert_eq!(show_json(&d)["bindings"], json!([]));
}

#[test]
fn stored_files_are_private_named_by_the_daemon_and_kept_across_a_restart() {
    let (d, port, site) = https_daemon("sslcert-keep", "");
    let files = TempDir::new("sslcert-files");
    let h = cert(&["h.example"]);
    let (c, k) = write_cert(&files.0, "h", &h);
    let store = files.0.join("store");
    std::fs::create_dir(&store).expect("store");
    let w = cert(&["*.w.example"]);
    std::fs::write(store.join("_.w.example.pem"), format!("{}{}", w.pem, w.key)).expect("write");
    ok(
        &d.control,
        &[
            "sslcert",
            "add",
            &format!("hostnameport=h.example:{port}"),
            "--cert",
            c.to_str().unwrap(),
            "--key",
            k.to_str().unwrap(),
        ],
    );
    ok(
        &d.control,
        &[
            "sslcert",
            "add",
            &format!("ccs={port}"),
            "--folder",
            store.to_str().unwrap(),
        ],
    );
    assert_eq!(handshake(port, "h.example").as_deref(), Ok(&h.der[..]));
    assert_eq!(handshake(port, "x.w.example").as_deref(), Ok(&w.der[..]));

    let dir = sslcert_dir(&d);
    assert_eq!(mode(&dir), 0o700);
    let mut names: Vec<String> = walk(&dir)
        .iter()
        .map(|p| {
            assert_eq!(mode(p), 0o600, "{}", p.display());
            p.strip_prefix(&dir).unwrap().display().to_string()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("ccs-{port}/_.w.example.pem"),
            format!("hostnameport-h.example-{port}.cert.pem"),
            format!("hostnameport-h.example-{port}.key.pem"),
        ]
    );
    let state = std::fs::read_to_string(d.dir.0.join("state.toml")).expect("state file");
    assert!(!state.contains("PRIVATE KEY"), "{state}");

    drop(site);
    let d = d.restart();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "site" }));
    let (status, body) = ctl.add_url("site", &format!("https://+:{port}/"));
    assert_eq!(status, 201, "{body}");
    let list = show_json(&d);
    assert_eq!(list["bindings"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(handshake(port, "h.example").as_deref(), Ok(&h.der[..]));
    assert_eq!(handshake(port, "y.w.example").as_deref(), Ok(&w.der[..]));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn other_accounts_may_show_but_not_add_or_delete() {
    if !can_switch_uid() {
        return;
    }
    let (d, port, _site) = https_daemon("sslcert-uid", "");
    // The CLI and the files where the other account may reach them.
    let exe = d.dir.0.join("portshare");
    std::fs::copy(portshare_bin(), &exe).expect("copy the CLI");
    let a = cert(&["a.example"]);
    let (c, k) = write_cert(&d.dir.0, "a", &a);
    let binding = format!("ipport=0.0.0.0:{port}");
    let uid = as_uid(60_123);
    let add = [
        "sslcert",
        "add",
        &binding,
        "--cert",
        c.to_str().unwrap(),
        "--key",
        k.to_str().unwrap(),
    ];
    let out = retry_busy(|| cli_as(&uid, &exe, &d.control, &add));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("ERROR_ACCESS_DENIED") || text(&out).contains("(5)"),
        "{}",
        text(&out)
    );
    assert!(handshake(port, "a.example").is_err());

    ok(&d.control, &add);
    let out = retry_busy(|| cli_as(&uid, &exe, &d.control, &["sslcert", "delete", &binding]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("admin group"), "{}", text(&out));
    assert_eq!(handshake(port, "a.example").as_deref(), Ok(&a.der[..]));

    let out = retry_busy(|| cli_as(&uid, &exe, &d.control, &["show", "sslcert"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("0.0.0.0:{port}")),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("PRIVATE"), "{}", text(&out));
}

/// Runs a freshly copied binary, again while the copy is still busy (ETXTBSY).
fn retry_busy(mut run: impl FnMut() -> Output) -> Output {
    for _ in 0..50 {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut run));
        if let Ok(out) = out {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    run()
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_naming_the_file() {
    let (d, port, _site) = https_daemon("sslcert-bad", "");
    let files = TempDir::new("sslcert-files");
    let a = cert(&["a.example"]);
    let b = cert(&["b.example"]);
    let (c, _) = write_cert(&files.0, "a", &a);
    let (_, wrong) = write_cert(&files.0, "b-wrong", &b);
    let junk = files.0.join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n!!\n").expect("write");
    let binding = format!("ipport=127.0.0.1:{port}");
    let out = cli(
        &d.control,
        &[
            "sslcert",
            "add",
            &binding,
            "--cert",
            c.to_str().unwrap(),
            "--key",
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(wrong.to_str().unwrap()) && said.contains("not the key"),
        "{said}"
    );
    assert!(
        !said.contains(&sslcert_dir(&d).display().to_string()),
        "{said}"
    );

    let out = cli(
        &d.control,
        &[
            "sslcert",
            "add",
            &binding,
            "--cert",
            junk.to_str().unwrap(),
            "--key",
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("junk.pem"), "{}", text(&out));

    // Nothing kept of the refused material, nothing bound.
    let left = std::fs::read_dir(sslcert_dir(&d))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
    assert_eq!(show_json(&d)["bindings"], json!([]));
    assert!(handshake(port, "a.example").is_err());
}

#[test]
fn the_configurations_binding_shadows_the_state_files_and_is_not_deleted_by_the_api() {
    let (d, port, _site) = https_daemon("sslcert-shadow", "");
    let files = TempDir::new("sslcert-files");
    let api_cert = cert(&["api.example"]);
    let file_cert = cert(&["file.example"]);
    let (ac, ak) = write_cert(&files.0, "api", &api_cert);
    let (fc, fk) = write_cert(&files.0, "file", &file_cert);
    std::fs::set_permissions(&fk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let binding = format!("ipport=0.0.0.0:{port}");
    ok(
        &d.control,
        &[
            "sslcert",
            "add",
            &binding,
            "--cert",
            ac.to_str().unwrap(),
            "--key",
            ak.to_str().unwrap(),
        ],
    );
    assert_eq!(
        handshake(port, "api.example").as_deref(),
        Ok(&api_cert.der[..])
    );

    d.write_config(&format!(
        "[[sslcert]]\nipport = \"0.0.0.0:{port}\"\ncert = {:?}\nkey = {:?}\n",
        fc.display().to_string(),
        fk.display().to_string()
    ));
    let (status, report) = d.ctl().call("POST", path::RELOAD, None);
    assert_eq!(status, 200, "{report}");
    let warned = report["warnings"].to_string();
    assert!(
        warned.contains(&binding) && warned.contains("state file") && warned.contains("overridden"),
        "{report}"
    );
    assert_eq!(
        handshake(port, "x.example").as_deref(),
        Ok(&file_cert.der[..])
    );
    let list = show_json(&d);
    assert_eq!(list["bindings"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["bindings"][0]["source"], "config", "{list}");

    let (status, body) = d
        .ctl()
        .call("DELETE", path::SSLCERT, Some(json!({ "binding": binding })));
    assert_eq!((status, body["code"].as_u64()), (403, Some(5)), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("configuration file"),
        "{body}"
    );
    let out = cli(
        &d.control,
        &[
            "sslcert",
            "add",
            &binding,
            "--cert",
            ac.to_str().unwrap(),
            "--key",
            ak.to_str().unwrap(),
        ],
    );
    assert!(text(&out).contains("183"), "{}", text(&out));
    assert_eq!(
        handshake(port, "x.example").as_deref(),
        Ok(&file_cert.der[..])
    );
}

/// The daemon's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The head of the daemon's answer on `s`, or what came before the connection ended.
fn answer_head(s: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while find(&buf, b"\r\n\r\n").is_none() {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn an_oversized_add_is_refused_without_growing_the_daemon() {
    let (d, _port, _site) = https_daemon("sslcert-big", "");
    let pid = d.proc.child.id();
    let before = rss_kib(pid);
    let chunk = vec![b'A'; 64 * 1024];
    // Announced too long: refused before the body is read.
    for _ in 0..16 {
        let mut s = UnixStream::connect(&d.control).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "POST {} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            path::SSLCERT,
            256 << 20
        )
        .expect("head");
        let _ = s.write_all(&chunk);
        let answer = answer_head(&mut s);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    // Chunked, never announced: cut at the cap. Each sends 8 MiB at most.
    for _ in 0..8 {
        let mut s = UnixStream::connect(&d.control).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        // Past the cap the daemon reads no more: a write that waits this long ends the
        // sending.
        s.set_write_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        write!(
            s,
            "POST {} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            path::SSLCERT
        )
        .expect("head");
        for _ in 0..128 {
            let sent = write!(s, "{:x}\r\n", chunk.len())
                .and_then(|()| s.write_all(&chunk))
                .and_then(|()| s.write_all(b"\r\n"));
            if sent.is_err() {
                break;
            }
        }
        let answer = answer_head(&mut s);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
    }
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("daemon RSS growth: {grown} KiB");
    assert!(grown < 32 * 1024, "the daemon grew by {grown} KiB");
    assert_eq!(show_json(&d)["bindings"], json!([]));
}
