//! `portshare sslcert add | delete | show` (`netsh http add|delete|show sslcert`), and the
//! text `show sslcert` prints.
//!
//! The command reads the PEM files (and a central store folder's `*.pem`) with its caller's
//! own rights and sends their contents; the daemon keeps its own copies and never opens a
//! path the caller names. The file names travel beside the contents for messages only.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portshare_proto::control::path;
use portshare_proto::sslcert::{
    AddSslCert, BindingKey, BindingParams, BindingSource, ClientCert, DeleteSslCert, MAX_ADD_BYTES,
    MAX_CCS_FILES, MinTls, PemFile, PemFolder, SslCertInfo, SslCertList,
};
use portshare_proto::text::printable;

use crate::client::ControlArg;

/// Arguments of `portshare sslcert`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    verb: Verb,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Bind a certificate (`netsh http add sslcert`): kept in the daemon's state file,
    /// serving new handshakes at once. Administrators only.
    Add(Add),
    /// Delete a binding added with `sslcert add` (`netsh http delete sslcert`).
    Delete {
        /// ipport=IP:PORT, hostnameport=NAME:PORT or ccs=PORT.
        #[arg(value_name = "BINDING")]
        binding: BindingKey,
    },
    /// The bindings in force (`netsh http show sslcert`), as `portshare show sslcert`.
    Show {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Add {
    /// ipport=IP:PORT (`0.0.0.0:PORT` and `[::]:PORT` for any address), hostnameport=NAME:PORT
    /// (chosen by SNI) or ccs=PORT (a central store folder, looked up by SNI).
    #[arg(value_name = "BINDING")]
    binding: BindingKey,
    /// The certificate chain, PEM, leaf first (ipport and hostnameport).
    #[arg(long, value_name = "FILE", conflicts_with = "folder")]
    cert: Option<PathBuf>,
    /// The certificate's private key, PEM (ipport and hostnameport).
    #[arg(long, value_name = "FILE", conflicts_with = "folder")]
    key: Option<PathBuf>,
    /// A central store folder (ccs): its NAME.pem files, chain and key in each;
    /// `_.example.com.pem` serves *.example.com.
    #[arg(long, value_name = "DIR")]
    folder: Option<PathBuf>,
    /// Ask clients for a certificate (`clientcertnegotiation`). Default: ignore.
    #[arg(long, value_enum, value_name = "ignore|request|require", default_value_t = ClientCertArg::Ignore)]
    client_cert: ClientCertArg,
    /// The CAs client certificates must chain to, PEM (with request or require).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Do not offer HTTP/2 (`disablehttp2`).
    #[arg(long)]
    no_http2: bool,
    /// The lowest TLS version accepted. Default: 1.2.
    #[arg(long, value_name = "1.2|1.3", value_parser = ["1.2", "1.3"], default_value = "1.2")]
    min_tls: String,
    /// Resume sessions by tickets too (`enablesessionticket`).
    #[arg(long)]
    session_tickets: bool,
    /// Answer 421 to a request whose Host is not the SNI name.
    #[arg(long)]
    require_sni_match: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientCertArg {
    Ignore,
    Request,
    Require,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let client = args.control.client();
    match args.verb {
        Verb::Add(add) => {
            let body = match request(&add) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("portshare sslcert add: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match client.call::<SslCertInfo>("POST", path::SSLCERT, Some(&body)) {
                Ok(info) => {
                    let mut out = String::from("SSL Certificate successfully added\n\n");
                    binding_text(&mut out, &info);
                    crate::print(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => e.report("sslcert add"),
            }
        }
        Verb::Delete { binding } => {
            let body = DeleteSslCert { binding };
            match client.call::<()>("DELETE", path::SSLCERT, Some(&body)) {
                Ok(()) => {
                    crate::print("SSL Certificate successfully deleted\n");
                    ExitCode::SUCCESS
                }
                Err(e) => e.report("sslcert delete"),
            }
        }
        Verb::Show { json } => crate::show::sslcert(&client, json),
    }
}

/// The request `sslcert add` sends: the files read, their sizes held to what the daemon
/// takes, so that an oversized folder is refused here with its reason.
fn request(add: &Add) -> Result<AddSslCert, String> {
    let params = BindingParams {
        client_cert: match add.client_cert {
            ClientCertArg::Ignore => ClientCert::Ignore,
            ClientCertArg::Request => ClientCert::Request,
            ClientCertArg::Require => ClientCert::Require,
        },
        http2: !add.no_http2,
        min_tls: if add.min_tls == "1.3" {
            MinTls::Tls13
        } else {
            MinTls::Tls12
        },
        session_tickets: add.session_tickets,
        require_sni_match: add.require_sni_match,
    };
    let ccs = matches!(add.binding, BindingKey::Ccs { .. });
    let mut budget = MAX_ADD_BYTES;
    let mut read = |p: &Path| read_pem(p, &mut budget);
    let (cert, key, folder) = if ccs {
        let Some(dir) = &add.folder else {
            return Err(format!("{}: needs --folder DIR", add.binding));
        };
        let folder = read_folder(dir, &mut read)?;
        (None, None, Some(folder))
    } else {
        let (Some(c), Some(k)) = (&add.cert, &add.key) else {
            return Err(format!(
                "{}: needs --cert FILE and --key FILE (PEM)",
                add.binding
            ));
        };
        if add.folder.is_some() {
            return Err(format!("{}: --folder is for ccs=PORT only", add.binding));
        }
        (Some(read(c)?), Some(read(k)?), None)
    };
    let client_ca = match (&add.client_ca, params.client_cert) {
        (Some(ca), _) => Some(read(ca)?),
        (None, ClientCert::Ignore) => None,
        (None, how) => {
            return Err(format!(
                "--client-cert {how} needs --client-ca FILE (the CAs client certificates \
                 chain to)"
            ));
        }
    };
    Ok(AddSslCert {
        binding: add.binding.clone(),
        params,
        cert,
        key,
        client_ca,
        folder,
    })
}

/// Reads a PEM file with the caller's rights, counting it against what one request holds.
fn read_pem(p: &Path, budget: &mut usize) -> Result<PemFile, String> {
    let too_big = || {
        format!(
            "{}: the files of one binding hold at most {} KiB together",
            p.display(),
            MAX_ADD_BYTES / 1024
        )
    };
    let file = std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let mut bytes = Vec::new();
    // One byte past what is left tells "too big" without reading a huge file whole.
    file.take(*budget as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if bytes.len() > *budget {
        return Err(too_big());
    }
    *budget -= bytes.len();
    let pem = String::from_utf8(bytes)
        .map_err(|_| format!("{}: not PEM (the file is not text)", p.display()))?;
    Ok(PemFile {
        name: p.display().to_string(),
        pem,
    })
}

/// A central store folder's `*.pem` files, in name order.
fn read_folder(
    dir: &Path,
    read: &mut impl FnMut(&Path) -> Result<PemFile, String>,
) -> Result<PemFolder, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "pem") && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(format!("{}: holds no *.pem file", dir.display()));
    }
    if paths.len() > MAX_CCS_FILES {
        return Err(format!(
            "{}: more than {MAX_CCS_FILES} certificates",
            dir.display()
        ));
    }
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let mut f = read(&p)?;
        // In the folder, a file is known by its own name.
        f.name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push(f);
    }
    Ok(PemFolder {
        name: dir.display().to_string(),
        files,
    })
}

/// `show sslcert`: each binding as `netsh http show sslcert` lists it.
pub(crate) fn list_text(list: &SslCertList) -> String {
    let mut out = String::from("SSL Certificate bindings:\n-------------------------\n\n");
    if list.bindings.is_empty() {
        out.push_str("    (none)\n");
    }
    for b in &list.bindings {
        binding_text(&mut out, b);
        out.push('\n');
    }
    out
}

/// One binding's lines.
fn binding_text(out: &mut String, b: &SslCertInfo) {
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "    {name:<29}: {value}");
    };
    match &b.binding {
        BindingKey::IpPort(a) => line("IP:port", &a.to_string()),
        BindingKey::HostnamePort { host, port } => line("Hostname:port", &format!("{host}:{port}")),
        BindingKey::Ccs { port } => line("Central Certificate Store", &port.to_string()),
        other => line("Binding", &other.to_string()),
    }
    if let Some(c) = &b.cert {
        line("Certificate Subject", &printable(&c.subject));
        let sans = if c.sans.is_empty() {
            "(none)".to_owned()
        } else {
            printable(&c.sans.join(", ")).into_owned()
        };
        line("Subject Alternative Names", &sans);
        line("Not After", &c.not_after);
        line("Certificate Hash", &c.sha1);
        line("Certificate SHA-256", &c.sha256);
    }
    if let Some(f) = &b.folder {
        line("Certificate Folder", &printable(f));
        let names = if b.ccs_names.is_empty() {
            "(none)".to_owned()
        } else {
            printable(&b.ccs_names.join(", ")).into_owned()
        };
        line("Certificate Names", &names);
    }
    let p = &b.params;
    line(
        "Negotiate Client Certificate",
        match p.client_cert {
            ClientCert::Ignore => "Disabled",
            ClientCert::Request => "Request",
            ClientCert::Require => "Require",
            _ => "Unknown",
        },
    );
    line("HTTP/2", enabled(p.http2));
    line("Minimum TLS Version", &p.min_tls.to_string());
    line("Session Tickets", enabled(p.session_tickets));
    line("Require SNI Match", enabled(p.sni_must_match()));
    line(
        "Source",
        match b.source {
            BindingSource::Config => "configuration file",
            BindingSource::Api => "state file (sslcert add)",
            _ => "unknown",
        },
    );
    if let Some(a) = &b.acme {
        line("ACME", &a.state.to_string());
        if let Some(t) = &a.valid_until {
            line("ACME Valid Until", t);
        }
        if let Some(t) = &a.next_attempt {
            line("ACME Next Attempt", t);
        }
        if let Some(e) = &a.last_error {
            line(
                "ACME Last Error",
                &format!("{} ({} failed in a row)", printable(e), a.failures),
            );
        }
    }
    for w in &b.warnings {
        line("Warning", &printable(w));
    }
}

fn enabled(b: bool) -> &'static str {
    if b { "Enabled" } else { "Disabled" }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use portshare_proto::sslcert::CertSummary;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        verb: Verb,
    }

    fn info() -> SslCertInfo {
        SslCertInfo {
            binding: "ipport=0.0.0.0:443".parse().expect("key"),
            params: BindingParams::default(),
            cert: Some(CertSummary {
                subject: "CN=a.example".into(),
                sans: vec!["a.example".into(), "b.example".into()],
                not_before: "2025-01-01T00:00:00Z".into(),
                not_after: "2030-01-01T00:00:00Z".into(),
                sha1: "ab".repeat(20),
                sha256: "cd".repeat(32),
            }),
            folder: None,
            ccs_names: vec![],
            source: BindingSource::Config,
            acme: None,
            warnings: vec![],
        }
    }

    #[test]
    fn show_reads_like_netsh() {
        let mut ccs = info();
        ccs.binding = "ccs=8443".parse().expect("key");
        ccs.cert = None;
        ccs.folder = Some("/var/lib/portshare/sslcert/ccs-8443".into());
        ccs.ccs_names = vec!["*.example".into(), "a.example".into()];
        ccs.source = BindingSource::Api;
        ccs.params.client_cert = ClientCert::Require;
        ccs.params.http2 = false;
        ccs.warnings =
            vec!["a.example.pem: the certificate expired at 2020-01-01T00:00:00Z".into()];
        let list = SslCertList {
            bindings: vec![info(), ccs],
        };
        let hash = "ab".repeat(20);
        let sha = "cd".repeat(32);
        assert_eq!(
            list_text(&list),
            format!(
                "SSL Certificate bindings:
-------------------------

    IP:port                      : 0.0.0.0:443
    Certificate Subject          : CN=a.example
    Subject Alternative Names    : a.example, b.example
    Not After                    : 2030-01-01T00:00:00Z
    Certificate Hash             : {hash}
    Certificate SHA-256          : {sha}
    Negotiate Client Certificate : Disabled
    HTTP/2                       : Enabled
    Minimum TLS Version          : 1.2
    Session Tickets              : Disabled
    Require SNI Match            : Disabled
    Source                       : configuration file

    Central Certificate Store    : 8443
    Certificate Folder           : /var/lib/portshare/sslcert/ccs-8443
    Certificate Names            : *.example, a.example
    Negotiate Client Certificate : Require
    HTTP/2                       : Disabled
    Minimum TLS Version          : 1.2
    Session Tickets              : Disabled
    Require SNI Match            : Enabled
    Source                       : state file (sslcert add)
    Warning                      : a.example.pem: the certificate expired at 2020-01-01T00:00:00Z

"
            )
        );
        assert_eq!(
            list_text(&SslCertList::default()),
            "SSL Certificate bindings:\n-------------------------\n\n    (none)\n"
        );
    }

    #[test]
    fn text_other_accounts_chose_is_escaped() {
        let mut b = info();
        if let Some(c) = b.cert.as_mut() {
            c.subject = "CN=\x1b[2Jx".into();
        }
        let text = list_text(&SslCertList { bindings: vec![b] });
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    #[test]
    fn add_reads_the_files_and_checks_the_shape() {
        let dir = std::env::temp_dir().join(format!("ps-sslcert-cli-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("store")).expect("dir");
        std::fs::write(dir.join("c.pem"), "CERT").expect("write");
        std::fs::write(dir.join("k.pem"), "KEY").expect("write");
        std::fs::write(dir.join("store/a.example.pem"), "A").expect("write");
        std::fs::write(dir.join("store/readme.txt"), "x").expect("write");
        let d = dir.display();
        let parse = |args: &str| {
            let mut v = vec!["x"];
            v.extend(args.split_whitespace());
            let Verb::Add(add) = Cli::try_parse_from(v).expect("parses").verb else {
                panic!("add");
            };
            request(&add)
        };
        let r = parse(&format!(
            "add ipport=0.0.0.0:443 --cert {d}/c.pem --key {d}/k.pem --no-http2 --min-tls 1.3"
        ))
        .expect("request");
        assert_eq!(r.cert.as_ref().map(|f| f.pem.as_str()), Some("CERT"));
        assert_eq!(
            r.key.as_ref().map(|f| f.name.clone()),
            Some(format!("{d}/k.pem"))
        );
        assert!(!r.params.http2 && r.params.min_tls == MinTls::Tls13);

        let r = parse(&format!("add ccs=443 --folder {d}/store")).expect("request");
        let files = r.folder.expect("folder").files;
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].name.as_str(), files[0].pem.as_str()),
            ("a.example.pem", "A")
        );

        let e = parse(&format!("add ipport=0.0.0.0:443 --cert {d}/c.pem")).unwrap_err();
        assert!(e.contains("--key"), "{e}");
        let e = parse("add ccs=443").unwrap_err();
        assert!(e.contains("--folder"), "{e}");
        let e = parse(&format!(
            "add ipport=0.0.0.0:443 --cert {d}/c.pem --key {d}/k.pem --client-cert require"
        ))
        .unwrap_err();
        assert!(e.contains("--client-ca"), "{e}");
        let e = parse(&format!(
            "add ipport=0.0.0.0:443 --cert {d}/none --key {d}/k.pem"
        ))
        .unwrap_err();
        assert!(e.contains("none"), "{e}");

        std::fs::write(dir.join("big.pem"), vec![b'a'; MAX_ADD_BYTES]).expect("write");
        let e = parse(&format!(
            "add ipport=0.0.0.0:443 --cert {d}/big.pem --key {d}/k.pem"
        ))
        .unwrap_err();
        assert!(e.contains("at most"), "{e}");
        assert!(Cli::try_parse_from(["x", "add", "ipport=1.2.3.4"]).is_err());
        assert!(Cli::try_parse_from(["x", "add", "ccs=1", "--min-tls", "1.1"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
