//! TLS load for the https bench: how many handshakes a server completes per second, each
//! followed by one HTTP/1.1 request, with full handshakes or resumed sessions.
//!
//! ```text
//! tls_load --ca cert.pem --sni bench.test --conns 16 --secs 10 [--resume] https://127.0.0.1:8443/app/hello
//! ```
//!
//! Every task connects, handshakes, sends one `GET` with `Connection: close`, reads the answer
//! to its end and starts over, until the time is up. With `--resume` the tasks share one
//! session cache, so after the first handshake the server is asked to resume. The last line
//! is `RESULT handshakes resumed failed seconds`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Handshakes per second against an https server.
#[derive(Parser)]
struct Args {
    /// The CA (or self-signed certificate) the server's chain ends in, PEM.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// The name sent as SNI and checked against the certificate.
    #[arg(long, value_name = "NAME")]
    sni: String,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Ask the server to resume sessions (one cache shared by all tasks).
    #[arg(long)]
    resume: bool,
    /// Runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `https://IP:PORT/path`.
    url: String,
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    /// The first failure, to say why.
    first_error: std::sync::Mutex<Option<String>>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rest = args
        .url
        .strip_prefix("https://")
        .ok_or("the URL must start with https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority.parse()?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca)? {
        roots.add(cert?)?;
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !args.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(args.sni.clone())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.sni
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..args.conns {
            let (connector, name, request) = (connector.clone(), name.clone(), request.clone());
            let (counts, stop) = (counts.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let once = async {
                        let tcp = TcpStream::connect(addr).await?;
                        tcp.set_nodelay(true)?;
                        let mut tls = connector.connect(name.clone(), tcp).await?;
                        let resumed =
                            tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
                        tls.write_all(request.as_bytes()).await?;
                        let mut ok = None;
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) => break,
                                Ok(n) => {
                                    ok.get_or_insert(buf[..n].starts_with(b"HTTP/1.1 200"));
                                }
                                // A server may close without close_notify after its answer.
                                Err(_) if ok.is_some() => break,
                                Err(e) => return Err(e),
                            }
                        }
                        if ok != Some(true) {
                            return Err(std::io::Error::other("not a 200"));
                        }
                        Ok::<bool, std::io::Error>(resumed)
                    };
                    match tokio::time::timeout(Duration::from_secs(5), once).await {
                        Ok(Ok(resumed)) => {
                            counts.done.fetch_add(1, Ordering::Relaxed);
                            if resumed {
                                counts.resumed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        failed => {
                            if counts.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                let why = match failed {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => "timed out".to_owned(),
                                };
                                *counts.first_error.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(why);
                            }
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let done = counts.done.load(Ordering::Relaxed);
    println!(
        "{:.0} handshakes/s ({} resumed, {} failed)",
        done as f64 / secs,
        counts.resumed.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed)
    );
    if let Some(why) = counts
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        eprintln!("first failure: {why}");
    }
    println!(
        "RESULT {done} {} {} {secs:.3}",
        counts.resumed.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed)
    );
    Ok(())
}
