//! Certificates the daemon obtains and renews itself by ACME (RFC 8555): the
//! `[[sslcert]]` tables with `acme = true`, and the `[acme]` table's account.
//!
//! - One task per such binding, on the daemon's runtime, never under the daemon's lock:
//!   it waits until its certificate is due (none yet, or two thirds of its lifetime gone),
//!   orders one, answers the HTTP-01 challenges, writes the certificate and its key, and
//!   swaps the bindings in for new handshakes as a reload does (established sessions keep
//!   theirs). A failed attempt is retried after [`FIRST_RETRY`], doubling up to
//!   [`LAST_RETRY`]; the last error shows in `show sslcert` until an attempt succeeds.
//! - HTTP-01 is answered by the daemon's own connections (`crate::challenge`): only the
//!   tokens of orders in progress, only for the name each was issued for, only on
//!   `[acme] http_port`, only until the order ends. If nothing is registered on that port,
//!   it is bound for the order's duration and let go after, as the last registration would
//!   let it go. With `tls_alpn = true`, TLS-ALPN-01 the same way on `[acme] tls_port`:
//!   a handshake offering `acme-tls/1` for a pending host gets its challenge certificate.
//! - The account's key and each certificate's key are kept in the `acme` folder (0700)
//!   beside the state file, each file 0600, under names made from the binding key
//!   (`sslcerts::stem`) and nothing a client or a server sent.
//! - The ACME client is instant-acme: maintained, async on tokio and hyper, and it signs
//!   with aws-lc-rs and speaks https with rustls, which the daemon already has.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use portshare_proto::sslcert::{AcmeState, AcmeStatus, BindingKey};

use super::reload::Report;
use super::sslcerts::{private_dir, stem, write_private};
use super::*;
use crate::challenge::Challenges;
use crate::config::{AcmeConfig, SslCertConfig};

/// The wait before the first retry of a failed attempt; it doubles with each failure.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(5);

/// The longest wait between two attempts.
pub(super) const LAST_RETRY: Duration = Duration::from_secs(3600);

/// How long an order may take to become ready, and its certificate to be issued.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// What the ACME tasks were started from: the `[acme]` table and the ACME bindings.
type StartedFrom = (AcmeConfig, Vec<BindingKey>);

/// The daemon's ACME tasks and what `show sslcert` tells of them. Its locks are its own,
/// each held for a copy or an insert, never while the daemon's lock is.
#[derive(Debug, Default)]
pub(super) struct AcmeRun {
    /// Each binding's state.
    status: Mutex<HashMap<BindingKey, AcmeStatus>>,
    /// The tasks, and what they were started from (a reload that changes nothing of it
    /// leaves them be).
    tasks: Mutex<(Vec<JoinHandle<()>>, Option<StartedFrom>)>,
    /// The challenges pending, as published to the connections.
    pending: Mutex<Challenges>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When a certificate valid from `from` until `until` is renewed: two thirds into its
/// lifetime.
pub(super) fn renewal_at(from: i64, until: i64) -> i64 {
    from + (until - from).max(0) * 2 / 3
}

/// The wait after `failures` failed attempts in a row.
pub(super) fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    (FIRST_RETRY * factor).min(LAST_RETRY)
}

/// Where an ACME binding's files are.
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn of(dir: &Path, key: &BindingKey) -> Files {
        let stem = stem(key);
        Files {
            cert: dir.join(format!("{stem}.cert.pem")),
            key: dir.join(format!("{stem}.key.pem")),
        }
    }
}

/// The account file: its directory beside the credentials, so that a new directory gets
/// a new account.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// An error of the ACME exchange, as `show sslcert` tells it.
fn acme_error(e: instant_acme::Error) -> String {
    portshare_proto::text::printable(&e.to_string()).into_owned()
}

/// Takes the challenge tokens of one order out of the table, and lets the challenge port
/// go, when the order ends however it ends (an abort included).
struct Held {
    daemon: Arc<Daemon>,
    port: Option<u16>,
    tokens: Vec<(String, String)>,
    /// Hosts of TLS-ALPN-01 challenges.
    alpn: Vec<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.tokens.is_empty() || !self.alpn.is_empty() {
            let mut pending = lock(&self.daemon.acme.pending);
            for t in &self.tokens {
                pending.tokens.remove(t);
            }
            for h in &self.alpn {
                pending.alpn.remove(h);
            }
            self.daemon.publish_challenges(&mut pending);
        }
        if let Some(port) = self.port {
            self.daemon.acme_release_port(port);
        }
    }
}

impl Daemon {
    /// The folder the ACME account and certificates are kept in: `acme` beside the state
    /// file.
    pub(super) fn acme_dir(&self) -> PathBuf {
        self.state_file
            .parent()
            .unwrap_or(Path::new("."))
            .join("acme")
    }

    /// An ACME table as the bindings are built from it: with its certificate and key if
    /// they are there and usable, without (serving nothing yet) if not.
    pub(super) fn acme_table(&self, table: &SslCertConfig, report: &mut Report) -> SslCertConfig {
        let mut t = table.clone();
        let Ok(key) = t.binding_key() else {
            return t;
        };
        let files = Files::of(&self.acme_dir(), &key);
        if files.cert.exists() && files.key.exists() {
            t.cert = Some(files.cert);
            t.key = Some(files.key);
            if let Err(e) = crate::tls::Bindings::load(std::slice::from_ref(&t)) {
                report.warn(format!(
                    "sslcert {key}: the certificate obtained by ACME cannot be used ({e}): \
                     a new one is ordered"
                ));
                t.cert = None;
                t.key = None;
            }
        }
        t
    }

    /// Starts (or starts again) the ACME tasks for the configuration in force: at start,
    /// and after a reload that changed the `[acme]` table or the ACME bindings.
    pub(crate) fn acme_start(self: &Arc<Self>) {
        let (acme, keys) = {
            let st = self.lock();
            let keys: Vec<BindingKey> = st
                .config
                .sslcerts
                .iter()
                .filter(|t| t.acme)
                .filter_map(|t| t.binding_key().ok())
                .collect();
            (st.config.acme.clone(), keys)
        };
        let mut tasks = lock(&self.acme.tasks);
        let now = acme.clone().map(|a| (a, keys.clone()));
        if tasks.1 == now {
            return;
        }
        for t in tasks.0.drain(..) {
            t.abort();
        }
        tasks.1 = now;
        lock(&self.acme.status).retain(|k, _| keys.contains(k));
        let Some(acme) = acme else {
            return;
        };
        for key in keys {
            let BindingKey::HostnamePort { host, .. } = &key else {
                continue;
            };
            let host = host.to_string();
            let d = self.clone();
            let config = acme.clone();
            tasks.0.push(tokio::spawn(
                async move { d.acme_task(config, key, host).await },
            ));
        }
    }

    /// `show sslcert`'s ACME status of `key`.
    pub(super) fn acme_status(&self, key: &BindingKey) -> Option<AcmeStatus> {
        lock(&self.acme.status).get(key).cloned()
    }

    fn set_status(&self, key: &BindingKey, f: impl FnOnce(&mut AcmeStatus)) {
        let mut all = lock(&self.acme.status);
        let s = all.entry(key.clone()).or_insert_with(|| AcmeStatus {
            state: AcmeState::Pending,
            valid_until: None,
            next_attempt: None,
            last_error: None,
            failures: 0,
            issued: 0,
        });
        f(s);
    }

    /// One binding's life: wait until due, order, retry with backoff.
    async fn acme_task(self: Arc<Self>, config: AcmeConfig, key: BindingKey, host: String) {
        let files = Files::of(&self.acme_dir(), &key);
        let mut failures: u32 = 0;
        loop {
            let served = crate::tls::validity(&files.cert).filter(|&(_, until)| until > now_secs());
            let mut due = served.map_or(now_secs(), |(from, until)| renewal_at(from, until));
            if failures > 0 {
                due = now_secs() + backoff(failures).as_secs() as i64;
            }
            self.set_status(&key, |s| {
                s.valid_until = served.map(|(_, until)| crate::tls::rfc3339(until));
                s.next_attempt = Some(crate::tls::rfc3339(due.max(now_secs())));
                s.state = match (served, failures) {
                    (Some(_), _) => AcmeState::Valid,
                    (None, 0) => AcmeState::Pending,
                    (None, _) => AcmeState::Failed,
                };
            });
            let wait = (due - now_secs()).max(0) as u64;
            if wait > 0 {
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            self.set_status(&key, |s| {
                if served.is_none() {
                    s.state = AcmeState::Pending;
                }
            });
            tracing::info!(binding = %key, "acme: ordering a certificate");
            match self.acme_order(&config, &key, &host, &files).await {
                Ok(()) => {
                    failures = 0;
                    self.set_status(&key, |s| {
                        s.last_error = None;
                        s.failures = 0;
                        s.issued += 1;
                    });
                    let d = self.clone();
                    let swapped = tokio::task::spawn_blocking(move || d.acme_swap()).await;
                    match swapped {
                        Ok(Ok(())) => {
                            tracing::info!(binding = %key, "acme: certificate obtained and in force")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(binding = %key, error = %e, "acme: the bindings cannot be built")
                        }
                        Err(e) => {
                            tracing::warn!(binding = %key, error = %e, "acme: the bindings cannot be built")
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(binding = %key, error = %e, failures, "acme: no certificate");
                    self.set_status(&key, |s| {
                        s.last_error = Some(e);
                        s.failures = failures;
                    });
                }
            }
        }
    }

    /// Builds the bindings anew, with the certificates obtained so far, and swaps them in
    /// for new handshakes. Blocking: on the blocking pool.
    fn acme_swap(&self) -> Result<(), String> {
        let _one_at_a_time = self.one_change();
        let (config, saved) = {
            let st = self.lock();
            (st.config.clone(), st.saved.sslcert.clone())
        };
        let mut report = Report::default();
        let bindings = self.sslcert_bindings(&config, &saved, None, &mut report)?;
        self.shared.tls.store(Arc::new(bindings));
        Ok(())
    }

    /// The account: the one kept for this directory, or a new one, then kept.
    async fn acme_account(&self, config: &AcmeConfig) -> Result<Account, String> {
        let dir = self.acme_dir();
        let path = dir.join("account.json");
        let builder = || match &config.ca {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| format!("acme.ca {}: {}", ca.display(), acme_error(e))),
            None => Account::builder().map_err(acme_error),
        };
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedAccount>(&b).ok())
            .filter(|s| s.directory == config.directory);
        if let Some(saved) = saved {
            return builder()?
                .from_credentials(saved.credentials)
                .await
                .map_err(acme_error);
        }
        let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                config.directory.clone(),
                None,
            )
            .await
            .map_err(acme_error)?;
        let text = serde_json::to_vec(&SavedAccount {
            directory: config.directory.clone(),
            credentials,
        })
        .map_err(|e| e.to_string())?;
        private_dir(&dir)?;
        write_private(&path, &text)?;
        tracing::info!(directory = %config.directory, "acme: account created");
        Ok(account)
    }

    /// One order: challenges answered, certificate written.
    async fn acme_order(
        self: &Arc<Self>,
        config: &AcmeConfig,
        key: &BindingKey,
        host: &str,
        files: &Files,
    ) -> Result<(), String> {
        let account = self.acme_account(config).await?;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(acme_error)?;
        let mut held = Held {
            daemon: self.clone(),
            port: None,
            tokens: Vec::new(),
            alpn: Vec::new(),
        };
        let (kind, port) = if config.tls_alpn {
            (ChallengeType::TlsAlpn01, config.tls_port)
        } else {
            (ChallengeType::Http01, config.http_port)
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(acme_error)?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("the authorization is {other:?}")),
                }
                let mut challenge = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
                let token = challenge.token.clone();
                let key_authorization = challenge.key_authorization();
                let alpn_key = if config.tls_alpn {
                    Some(crate::tls::acme_alpn_key(
                        host,
                        key_authorization.digest().as_ref(),
                    )?)
                } else {
                    None
                };
                if held.port.is_none() {
                    self.acme_hold_port(port)?;
                    held.port = Some(port);
                }
                {
                    let mut pending = lock(&self.acme.pending);
                    match alpn_key {
                        Some(k) => {
                            pending.alpn.insert(host.to_owned(), k);
                            held.alpn.push(host.to_owned());
                        }
                        None => {
                            let answer: Arc<str> = Arc::from(key_authorization.as_str());
                            pending
                                .tokens
                                .insert((host.to_owned(), token.clone()), answer);
                            held.tokens.push((host.to_owned(), token));
                        }
                    }
                    self.publish_challenges(&mut pending);
                }
                challenge.set_ready().await.map_err(acme_error)?;
            }
        }
        let retry = RetryPolicy::default().timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retry).await.map_err(acme_error)?;
        if status != OrderStatus::Ready {
            let mut why = format!("the order is {status:?}");
            let mut authorizations = order.authorizations();
            while let Some(Ok(authz)) = authorizations.next().await {
                for c in &authz.challenges {
                    if let Some(e) = &c.error {
                        why = format!("{why}: {}", e.detail.as_deref().unwrap_or("(no detail)"));
                    }
                }
            }
            return Err(portshare_proto::text::printable(&why).into_owned());
        }
        drop(held);
        let key_pem = order.finalize().await.map_err(acme_error)?;
        let chain = order.poll_certificate(&retry).await.map_err(acme_error)?;
        // The new pair is checked before it replaces the old one.
        let dir = self.acme_dir();
        private_dir(&dir)?;
        let new = Files {
            cert: files.cert.with_extension("new"),
            key: files.key.with_extension("new"),
        };
        write_private(&new.cert, chain.as_bytes())?;
        write_private(&new.key, key_pem.as_bytes())?;
        if let Err(e) = crate::tls::load_pair(&new.cert, &new.key, Some(host)) {
            let _ = std::fs::remove_file(&new.cert);
            let _ = std::fs::remove_file(&new.key);
            return Err(format!("{key}: the certificate issued cannot be used: {e}"));
        }
        std::fs::rename(&new.key, &files.key)
            .and_then(|()| std::fs::rename(&new.cert, &files.cert))
            .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
        Ok(())
    }

    /// Publishes the pending challenges to the connections.
    fn publish_challenges(&self, pending: &mut Challenges) {
        let ports = self
            .lock()
            .config
            .acme
            .as_ref()
            .map_or((80, 443), |a| (a.http_port, a.tls_port));
        (pending.port, pending.tls_port) = ports;
        self.shared.challenges.store(Arc::new(pending.clone()));
    }

    /// Holds `port` open for challenges: bound now if nothing registered binds it.
    fn acme_hold_port(&self, port: u16) -> Result<(), String> {
        let mut st = self.lock();
        let st = &mut *st;
        let count = st.acme_ports.get(&port).copied().unwrap_or(0);
        if count == 0 && !Daemon::port_registered(st, port) {
            let mut held = None;
            self.bind_port(st, port, &mut held).map_err(|e| {
                format!("cannot listen on the challenge port {port}: {}", e.message)
            })?;
            tracing::info!(port, "acme: challenge port bound for an order");
        }
        st.acme_ports.insert(port, count + 1);
        Ok(())
    }

    /// Lets go of `port` once no order holds it and nothing is registered on it.
    fn acme_release_port(&self, port: u16) {
        let mut st = self.lock();
        let st = &mut *st;
        let count = st.acme_ports.get(&port).copied().unwrap_or(0);
        if count <= 1 {
            st.acme_ports.remove(&port);
            if !Daemon::port_registered(st, port) {
                Daemon::release_port(st, port);
            }
        } else {
            st.acme_ports.insert(port, count - 1);
        }
    }

    /// Whether a registration of either scheme listens on `port`.
    pub(super) fn port_registered(st: &State, port: u16) -> bool {
        st.table.listens(Scheme::Http, port) || st.table.listens(Scheme::Https, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        assert_eq!(renewal_at(1000, 1090), 1060);
        assert_eq!(renewal_at(0, 90 * 86400), 60 * 86400);
        assert_eq!(renewal_at(1000, 900), 1000);
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(backoff(1), FIRST_RETRY);
        assert_eq!(backoff(2), FIRST_RETRY * 2);
        assert_eq!(backoff(3), FIRST_RETRY * 4);
        assert_eq!(backoff(40), LAST_RETRY);
    }
}
