//! https: the TLS handshake of a connection to an https port, the choice of its
//! certificate binding, and the hand-off of the finished session to the HTTP/1 loop
//! (`crate::conn`), which never learns about certificates.
//!
//! - [`store`]: the bindings in force ([`Bindings`]), built from `[[sslcert]]` tables and
//!   asked which one serves a handshake (spec §10);
//! - [`cert`]: certificate and key files, their checks, and `show sslcert`'s summary.
//!
//! A handshake runs in its connection's task under the `HeaderWait` timer, counted from
//! the accept: a client that opens connections and never finishes a handshake holds a
//! connection place for that long and nothing else. rustls's `Acceptor` reads the
//! ClientHello first, so the binding is chosen by its SNI name and the local address
//! before any certificate is sent. With no binding, rustls ends the handshake with a
//! fatal `access_denied` alert and the daemon logs one line (at most one each
//! [`MISS_LOG_EVERY`]) naming the SNI name and the local address.
//!
//! # The crypto provider: aws-lc-rs
//!
//! Measured on the shared 2-core build machine with rustls 0.23.48 and each provider's
//! default key exchange, a P-256 ECDSA certificate, client and server in one thread in
//! memory (so each figure pays for both ends); medians of three runs, the machine being
//! noisy (runs varied by up to 2×):
//!
//! | | ring 0.17 | aws-lc-rs 1.16 |
//! |---|---|---|
//! | full TLS 1.3 handshakes/s | 377 | 1,235 |
//! | full TLS 1.2 handshakes/s | 315 | 910 |
//! | bulk TLS 1.3 AES-256-GCM, MB/s (encrypt + decrypt) | 749 | 679 |
//! | clean debug build of rustls + rcgen | 15 s | 60 s |
//! | clean release build of rustls + rcgen | 43 s | 119 s |
//!
//! aws-lc-rs does three times the handshakes, which is what an https port's cost is made
//! of (bulk is a tie within the noise), and it negotiates the post-quantum hybrid
//! X25519MLKEM768 by default, where rustls 0.23.48 deprecates ring's provider for lacking
//! it. Its price is build time: 45 s more for a clean debug build, paid once per clean
//! build and not per change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use portshare_proto::sslcert::dns_name;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::LazyConfigAcceptor;

use crate::accept::Throttle;
use crate::conn::{Io, TlsInfo, TlsStream};
use crate::errlog;
use crate::shared::Shared;

mod cert;
mod store;

pub(crate) use cert::{load_pair, rfc3339, validity};
pub(crate) use store::Bindings;

/// How often a handshake that no binding serves may be logged.
pub(crate) const MISS_LOG_EVERY: Duration = Duration::from_secs(10);

static MISSES: Throttle = Throttle::new(MISS_LOG_EVERY);

/// The crypto provider every configuration is built with.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The ALPN protocols a binding offers, most preferred first: `h2` unless the binding turns
/// HTTP/2 off (HTTP.sys's `disablehttp2`), then `http/1.1`. A client that offers neither
/// is served HTTP/1.1.
pub(crate) fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

/// The certificate that answers a TLS-ALPN-01 challenge for `host` (RFC 8737 §3): self
/// signed, `host` its only SAN, the key authorization's SHA-256 in its critical
/// acmeIdentifier extension.
pub(crate) fn acme_alpn_key(
    host: &str,
    key_authorization_digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        key_authorization_digest,
    )];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The configuration of a TLS-ALPN-01 answer: the challenge certificate, `acme-tls/1`
/// only, TLS 1.2 or 1.3, no resumption.
fn acme_alpn_config(key: Arc<rustls::sign::CertifiedKey>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)))
        })
        // The provider is aws-lc-rs's default, which supports the default versions.
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    config.alpn_protocols = vec![crate::challenge::ACME_TLS_ALPN.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.max_early_data_size = 0;
    Arc::new(config)
}

/// Serves a connection to an https port: the handshake under `HeaderWait`, then HTTP/1.1
/// (or HTTP/2, by ALPN) over the session.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    let settings = shared.settings.load_full();
    let until = settings.timers.header_wait.fires_at(Instant::now());
    let done = {
        let stop = shared.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if shared.stopping() {
            return;
        }
        tokio::select! {
            r = timeout_at(until, handshake(&shared, tcp, local)) => r,
            () = &mut stop => return,
        }
    };
    shared.metrics.handshake(matches!(done, Ok(Some(_))));
    let (stream, info) = match done {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            errlog::Entry {
                client: peer,
                local,
                version: None,
                method: None,
                uri: None,
                status: None,
                reason: portshare_router::Reason::TimerHeaderWait,
                queue: None,
            }
            .emit(&settings.errlog);
            return;
        }
    };
    drop(settings);
    if info.alpn_h2 {
        // HTTP/2 owns the stream while it serves and drops it when it is done; it comes
        // back here for a lingering close.
        let (back, returned) = tokio::sync::oneshot::channel();
        let stream = ComesBack {
            io: Some(stream),
            back: Some(back),
        };
        // Boxed: an HTTP/1 session's task need not be as large as HTTP/2's state.
        Box::pin(serve_h2(shared, stream, peer, local, info.info)).await;
        if let Ok(stream) = returned.await {
            linger(stream).await;
        }
    } else {
        let io = Io::Tls(Box::new(stream));
        crate::conn::serve_io(shared, io, peer, local, Some(Box::new(info.info))).await;
    }
}

/// After HTTP/2 has let go of a connection (its GOAWAY and last frames written), ends the
/// session (close_notify and the FIN) and closes lingering, as HTTP/1 does (see
/// [`crate::conn::linger`]): a window update or a ping's answer left unread would reset the
/// connection.
async fn linger(mut stream: TlsStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if stream.shutdown().await.is_ok() {
            crate::conn::linger(&mut stream).await;
        }
    })
    .await;
}

/// A stream lent out: when the borrower drops it, it goes back through `back`.
struct ComesBack {
    io: Option<TlsStream>,
    back: Option<tokio::sync::oneshot::Sender<TlsStream>>,
}

impl Drop for ComesBack {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            let _ = back.send(io);
        }
    }
}

impl tokio::io::AsyncRead for ComesBack {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl tokio::io::AsyncWrite for ComesBack {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            None => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => std::pin::Pin::new(io).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// The hand-off of an HTTP/2 session (ALPN chose `h2`) to the HTTP/2 connection.
async fn serve_h2(
    shared: Arc<Shared>,
    stream: ComesBack,
    peer: SocketAddr,
    local: SocketAddr,
    info: TlsInfo,
) {
    crate::h2::serve(shared, stream, peer, local, info).await;
}

/// What the hand-off needs of a finished handshake.
struct Done {
    info: TlsInfo,
    alpn_h2: bool,
}

/// Reads the ClientHello, picks the binding, finishes the handshake. `None` when it
/// failed (logged at debug; a miss of every binding at warn, throttled).
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    local: SocketAddr,
) -> Option<(TlsStream, Done)> {
    let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await {
        Ok(s) => s,
        Err(error) => {
            tracing::debug!(%error, "tls: no ClientHello");
            return None;
        }
    };
    let hello = start.client_hello();
    // rustls has checked the name's syntax; the daemon's own check lower-cases it and
    // holds it to the rules a ccs file name is looked up by.
    let sent_sni = hello.server_name().is_some();
    let sni = hello.server_name().and_then(dns_name);
    // A pending TLS-ALPN-01 challenge: the challenge certificate, and nothing more.
    let offers_acme = hello
        .alpn()
        .is_some_and(|mut a| a.any(|p| p == crate::challenge::ACME_TLS_ALPN));
    if offers_acme {
        let key = shared
            .challenges
            .load()
            .alpn_answer(local.port(), sni.as_deref())
            .cloned();
        if let Some(key) = key {
            tracing::info!(
                sni = sni.as_deref().unwrap_or(""),
                "acme: tls-alpn-01 challenge answered"
            );
            let _ = start.into_stream(acme_alpn_config(key)).await;
            return None;
        }
    }
    let bindings = shared.tls.load();
    let (config, params) = match bindings.select(sni.as_deref(), local) {
        Some(b) => (b.config.clone(), b.params),
        None => {
            if let Some(held_back) = MISSES.pass() {
                tracing::warn!(
                    sni = sni.as_deref().unwrap_or(if sent_sni { "(invalid)" } else { "" }),
                    %local,
                    held_back,
                    "tls: no certificate binding serves this connection; handshake refused"
                );
            }
            (bindings.refusing(), Default::default())
        }
    };
    drop(bindings);
    let stream = match start.into_stream(config).await {
        Ok(s) => s,
        Err(error) => {
            tracing::debug!(%error, "tls: handshake failed");
            return None;
        }
    };
    let (_, session) = stream.get_ref();
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    };
    let cipher = session
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown");
    let alpn = session.alpn_protocol().unwrap_or_default();
    let header = format!(
        "version={version}; cipher={cipher}; sni={}; alpn={}",
        sni.as_deref().unwrap_or(""),
        String::from_utf8_lossy(alpn)
    );
    let client_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Bytes::from(cert::base64(c.as_ref())));
    let done = Done {
        alpn_h2: alpn == b"h2",
        info: TlsInfo {
            header: Bytes::from(header),
            client_cert,
            sni: sni.map(String::into_boxed_str),
            require_sni_match: params.sni_must_match(),
        },
    };
    Some((stream, done))
}
