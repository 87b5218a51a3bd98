//! The state view's filters: `GET /v1/state?queue=NAME&port=P&url=PREFIX`, so that a
//! daemon holding many registrations can be asked about a few of them.

use serde::{Deserialize, Serialize};

/// What `GET /v1/state` narrows its view to; every field left out selects everything.
/// Filters combine: a URL is shown when it matches every one given.
///
/// - `queue`: the queue of that name (an unnamed queue by the name the view shows for
///   it), and the URLs it holds;
/// - `port`: URLs on that port, the queues holding one, the listening sockets, bind
///   failures and reservations of that port;
/// - `url`: URLs whose canonical form begins with this text (ASCII case aside: paths
///   route without regard to case), the queues holding one, and the reservations that
///   begin with it.
///
/// A queue shown under `port` or `url` lists only its URLs that match them. The view says
/// which filter made it ([`ServiceState::filter`](super::ServiceState::filter)); the
/// unfiltered view is complete. What the caller may see of each queue is the same either
/// way.
///
/// In the query, values are `%XX`-encoded as [`StateFilter::query`] writes them; `+` is a
/// plus sign, as in `http://+:80/`.
///
/// ```
/// use portshare_proto::control::StateFilter;
///
/// let f = StateFilter { queue: Some("my app".into()), port: Some(8080), url: None };
/// assert_eq!(f.query(), "?queue=my%20app&port=8080");
/// assert_eq!(StateFilter::parse("queue=my%20app&port=8080"), Ok(f));
/// assert!(StateFilter::parse("port=http").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFilter {
    /// Only this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only URLs that begin with this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The longest value a filter takes, in bytes once decoded: more than any queue name or
/// URL prefix the daemon holds.
const MAX_VALUE: usize = 4096;

impl StateFilter {
    /// True when the filter selects everything.
    pub fn is_empty(&self) -> bool {
        self.queue.is_none() && self.port.is_none() && self.url.is_none()
    }

    /// The query that asks for this filter: empty for none, else `?` and the filters.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(q) = &self.queue {
            parts.push(format!("queue={}", super::path::encode(q)));
        }
        if let Some(p) = self.port {
            parts.push(format!("port={p}"));
        }
        if let Some(u) = &self.url {
            parts.push(format!("url={}", super::path::encode(u)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    /// `GET`'s path for this filter: [`STATE`](super::path::STATE) and [`query`](Self::query).
    pub fn path(&self) -> String {
        format!("{}{}", super::path::STATE, self.query())
    }

    /// Reads a query (without its `?`).
    ///
    /// # Errors
    ///
    /// What is wrong, for an ERROR_INVALID_PARAMETER: a name other than `queue`, `port` or
    /// `url`, one given twice or without a value, an empty value or one longer than 4096
    /// bytes, a port that is not 1 to 65535, an escape that is not `%XX` or text that is
    /// not UTF-8.
    pub fn parse(query: &str) -> Result<StateFilter, String> {
        let mut f = StateFilter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((name, raw)) = pair.split_once('=') else {
                return Err(format!(
                    "state filter {:?} has no value: expected NAME=VALUE",
                    crate::text::printable(pair)
                ));
            };
            let value = super::path::decode_name(raw).ok_or_else(|| {
                format!(
                    "state filter {name}: {:?} is not valid percent-encoded UTF-8",
                    crate::text::printable(raw)
                )
            })?;
            if value.is_empty() {
                return Err(format!("state filter {name} is empty"));
            }
            if value.len() > MAX_VALUE {
                return Err(format!(
                    "state filter {name} is {} bytes long; at most {MAX_VALUE}",
                    value.len()
                ));
            }
            let twice = || format!("state filter {name} is given twice");
            match name {
                "queue" if f.queue.is_some() => return Err(twice()),
                "queue" => f.queue = Some(value),
                "port" if f.port.is_some() => return Err(twice()),
                "port" => {
                    let port = value.parse::<u16>().ok().filter(|p| *p != 0);
                    let Some(port) = port else {
                        return Err(format!(
                            "state filter port = {:?}: expected a port from 1 to 65535",
                            crate::text::printable(&value)
                        ));
                    };
                    f.port = Some(port);
                }
                "url" if f.url.is_some() => return Err(twice()),
                "url" => f.url = Some(value),
                other => {
                    return Err(format!(
                        "unknown state filter {:?}: expected queue, port or url",
                        crate::text::printable(other)
                    ));
                }
            }
        }
        Ok(f)
    }

    /// Whether a URL in canonical form, on `port`, held by queue `queue`, is shown.
    pub fn shows_url(&self, url: &str, port: u16, queue: &str) -> bool {
        self.queue.as_deref().is_none_or(|q| q == queue) && self.shows_url_text(url, port)
    }

    /// Whether a URL (or reservation) in canonical form, on `port`, passes the `port` and
    /// `url` filters, whatever its queue.
    pub fn shows_url_text(&self, url: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
            && self.url.as_deref().is_none_or(|begins| {
                url.len() >= begins.len()
                    && url.as_bytes()[..begins.len()].eq_ignore_ascii_case(begins.as_bytes())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::StateFilter;

    #[test]
    fn filters_round_trip_through_the_query() {
        let all = StateFilter {
            queue: Some("a b&c=d%/é".into()),
            port: Some(65535),
            url: Some("http://+:80/x y/".into()),
        };
        let q = all.query();
        assert!(q.starts_with("?queue=a%20b%26c%3Dd%25%2F%C3%A9&port=65535&url="));
        assert_eq!(StateFilter::parse(&q[1..]), Ok(all));
        assert_eq!(StateFilter::default().query(), "");
        assert_eq!(StateFilter::parse(""), Ok(StateFilter::default()));
        assert!(StateFilter::default().is_empty());
        // `+` is a plus sign, as in a URL prefix's strong wildcard.
        let plus = StateFilter::parse("url=http://+:80/").expect("parses");
        assert_eq!(plus.url.as_deref(), Some("http://+:80/"));
        assert_eq!(
            StateFilter::parse("url=http%3A%2F%2F%2B%3A80%2F").expect("parses"),
            plus
        );
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (query, says) in [
            ("port=0", "1 to 65535"),
            ("port=65536", "1 to 65535"),
            ("port=http", "1 to 65535"),
            ("port=", "empty"),
            ("queue=", "empty"),
            ("queue", "no value"),
            ("queue=a&queue=b", "twice"),
            ("url=%zz", "percent-encoded"),
            ("url=%FF", "percent-encoded"),
            ("name=a", "unknown state filter"),
        ] {
            let e = StateFilter::parse(query).expect_err(query);
            assert!(e.contains(says), "{query}: {e}");
        }
        let long = format!("url={}", "a".repeat(4097));
        assert!(StateFilter::parse(&long).is_err());
    }

    #[test]
    fn urls_match_every_filter_given() {
        let f = StateFilter::parse("port=8080&url=HTTP://%2B:8080/Ten").expect("parses");
        assert!(f.shows_url("http://+:8080/tenant1/", 8080, "q"));
        assert!(!f.shows_url("http://+:8080/other/", 8080, "q"));
        assert!(!f.shows_url("http://+:8081/tenant1/", 8081, "q"));
        let q = StateFilter::parse("queue=q").expect("parses");
        assert!(q.shows_url("http://+:1/", 1, "q") && !q.shows_url("http://+:1/", 1, "r"));
        assert!(q.shows_url_text("http://+:1/", 1));
        assert!(StateFilter::default().shows_url("anything", 1, "any"));
    }
}
