//! Explanations: why a request went where it did, candidate by candidate.
//!
//! This follows the specification's routing algorithm literally (filter every entry, take
//! the longest), apart from the table's tree walk, so the two can check each other.

use core::fmt;

use crate::canon::{Target, UrlOptions};
use crate::fold::fold;
use crate::prefix::{Category, Host, UrlPrefix};
use crate::reason::{Reason, Rejection};
use crate::request::{Endpoint, RequestHead, cooked_url, prepare};
use crate::table::{Registration, RouteTable};

/// The full account of one routing decision.
#[derive(Debug)]
pub struct Explanation<'t, 'a, T> {
    target: Option<Target<'a>>,
    cooked_url: Option<String>,
    verdict: Verdict<'t, T>,
    trace: Vec<CategoryTrace<'t, T>>,
}

impl<'t, 'a, T> Explanation<'t, 'a, T> {
    /// The canonicalized target, `None` when canonicalization (or the method check before
    /// it) failed.
    pub fn target(&self) -> Option<&Target<'a>> {
        self.target.as_ref()
    }

    /// The cooked URL, when the target and host were valid.
    pub fn cooked_url(&self) -> Option<&str> {
        self.cooked_url.as_deref()
    }

    /// The decision.
    pub fn verdict(&self) -> &Verdict<'t, T> {
        &self.verdict
    }

    /// Each category in precedence order, with its candidates; empty when the request was
    /// refused before routing.
    pub fn trace(&self) -> &[CategoryTrace<'t, T>] {
        &self.trace
    }
}

/// What happens to the request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Verdict<'t, T> {
    /// Delivered to this registration.
    Deliver(&'t Registration<T>),
    /// Answered by the service.
    Reject(Rejection),
    /// Nothing listens on this scheme and port.
    Refused,
}

/// The candidates of one category.
#[derive(Debug)]
pub struct CategoryTrace<'t, T> {
    /// The category.
    pub category: Category,
    /// Its registrations and reservations on the request's scheme and port, longest first.
    pub candidates: Vec<Candidate<'t, T>>,
}

/// One registration or reservation, and what became of it.
#[derive(Debug)]
pub struct Candidate<'t, T> {
    /// Its prefix.
    pub prefix: &'t UrlPrefix,
    /// The registration, or `None` for a reservation.
    pub registration: Option<&'t Registration<T>>,
    /// Why it won or lost.
    pub outcome: Outcome,
}

/// Why a candidate won or lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It decided the request.
    Won,
    /// It matched, but a longer prefix of its category won.
    Shorter,
    /// A registration of the same URL serves instead of this reservation.
    Tie,
    /// Its path does not cover the request's path.
    PathMismatch,
    /// Its host name is not the request's host.
    HostMismatch,
    /// The request has no host (HTTP/1.0 without Host), so no explicit name can match.
    NoHost,
    /// Its address is not the connection's local address.
    OtherAddress,
    /// An earlier category decided.
    NotReached,
}

impl Outcome {
    /// A short phrase: `"won"`, `"shorter"`, `"path mismatch"`...
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Won => "won",
            Outcome::Shorter => "shorter",
            Outcome::Tie => "registration of the same URL serves",
            Outcome::PathMismatch => "path mismatch",
            Outcome::HostMismatch => "host mismatch",
            Outcome::NoHost => "no host",
            Outcome::OtherAddress => "other local address",
            Outcome::NotReached => "not reached",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<T> RouteTable<T> {
    /// Explains where a request goes and why each other candidate lost.
    ///
    /// The verdict is always the one [`dispatch`](RouteTable::dispatch) reaches.
    ///
    /// # Examples
    ///
    /// ```
    /// use portshare_router::{Endpoint, Outcome, RequestHead, RouteTable, Scheme, UrlOptions, Version};
    ///
    /// let mut table = RouteTable::new();
    /// table.add("http://+:80/a/".parse()?, ())?;
    /// table.add("http://example.com:80/a/b/".parse()?, ())?;
    /// let endpoint = Endpoint::new(Scheme::Http, "127.0.0.1:80".parse()?);
    /// let head = RequestHead::new(b"GET", b"/a/b/c", Version::Http11, Some(b"example.com"));
    /// let why = table.explain(&endpoint, &head, &UrlOptions::default());
    /// assert_eq!(why.trace()[0].candidates[0].outcome, Outcome::Won);
    /// assert_eq!(why.trace()[1].candidates[0].outcome, Outcome::NotReached);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn explain<'t, 'a>(
        &'t self,
        endpoint: &Endpoint,
        head: &RequestHead<'a>,
        opts: &UrlOptions,
    ) -> Explanation<'t, 'a, T> {
        let prepared = prepare(head, opts);
        if !self.listens(endpoint.scheme, endpoint.local.port()) {
            let (target, cooked) = match prepared {
                Ok(p) => {
                    let url = cooked_url(endpoint, p.host.as_ref(), &p.target);
                    (Some(p.target), Some(url))
                }
                Err((_, target)) => (target, None),
            };
            return Explanation {
                target,
                cooked_url: cooked,
                verdict: Verdict::Refused,
                trace: Vec::new(),
            };
        }
        let (target, host) = match prepared {
            Ok(p) => (p.target, p.host),
            Err((rejection, target)) => {
                return Explanation {
                    target,
                    cooked_url: None,
                    verdict: Verdict::Reject(rejection),
                    trace: Vec::new(),
                };
            }
        };
        let local_ip = endpoint.local.ip().to_canonical();
        let path = format!("{}/", fold(target.routing_path()));
        let host_name = host
            .as_ref()
            .filter(|h| h.ip().is_none())
            .map(|h| fold(h.name()));
        // host_ok of the specification; Err says why not.
        let host_ok = |p: &UrlPrefix| match p.host() {
            Host::Strong | Host::Weak => Ok(()),
            Host::Name(_) => match &host_name {
                None if host.is_none() => Err(Outcome::NoHost),
                Some(h) if *h == p.folded_host() => Ok(()),
                _ => Err(Outcome::HostMismatch),
            },
            Host::Ip(ip) if ip.to_canonical() == local_ip => Ok(()),
            Host::Ip(_) => Err(Outcome::OtherAddress),
        };
        let path_ok = |p: &UrlPrefix| path.starts_with(p.folded_path());

        let mut verdict = None;
        let mut trace = Vec::with_capacity(4);
        for category in Category::ORDER {
            let mut candidates: Vec<Candidate<'t, T>> = self
                .entries_on(endpoint.scheme, endpoint.local.port())
                .filter(|(p, _)| p.category() == category)
                .map(|(prefix, registration)| Candidate {
                    prefix,
                    registration,
                    outcome: Outcome::NotReached,
                })
                .collect();
            candidates.sort_by(|a, b| {
                path_len(b.prefix)
                    .cmp(&path_len(a.prefix))
                    .then(b.registration.is_some().cmp(&a.registration.is_some()))
                    .then(a.prefix.as_str().cmp(b.prefix.as_str()))
            });
            if verdict.is_none() {
                let mut best: Option<usize> = None;
                for (i, c) in candidates.iter_mut().enumerate() {
                    c.outcome = match host_ok(c.prefix) {
                        Err(why) => why,
                        Ok(()) if !path_ok(c.prefix) => Outcome::PathMismatch,
                        // Sorted longest first, registrations before reservations.
                        Ok(()) if best.is_none() => {
                            best = Some(i);
                            Outcome::Won
                        }
                        Ok(()) => Outcome::Shorter,
                    };
                }
                if let Some(b) = best {
                    let winner_len = path_len(candidates[b].prefix);
                    for c in &mut candidates {
                        if c.outcome == Outcome::Shorter
                            && c.registration.is_none()
                            && path_len(c.prefix) == winner_len
                        {
                            c.outcome = Outcome::Tie;
                        }
                    }
                    verdict = Some(match candidates[b].registration {
                        Some(reg) => Verdict::Deliver(reg),
                        None => Verdict::Reject(Rejection::new(503, Reason::NotAvailable)),
                    });
                }
            }
            trace.push(CategoryTrace {
                category,
                candidates,
            });
        }
        let verdict = verdict.unwrap_or_else(|| {
            let serves_host = self
                .entries_on(endpoint.scheme, endpoint.local.port())
                .any(|(p, reg)| reg.is_some() && host_ok(p).is_ok());
            Verdict::Reject(if serves_host {
                Rejection::new(404, Reason::NotFound)
            } else {
                Rejection::new(400, Reason::Hostname)
            })
        });
        Explanation {
            cooked_url: Some(cooked_url(endpoint, host.as_ref(), &target)),
            target: Some(target),
            verdict,
            trace,
        }
    }
}

fn path_len(p: &UrlPrefix) -> usize {
    p.path().chars().count()
}
