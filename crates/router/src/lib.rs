//! HTTP.sys-exact URL prefix routing: the prefix grammar, URL canonicalization, the route
//! table with its precedence rules, and URL ACL decisions.
//!
//! ```
//! use portshare_router::{Dispatch, Endpoint, RequestHead, RouteTable, Scheme, UrlOptions, Version};
//!
//! let mut table = RouteTable::new();
//! table.add("http://+:80/app1/".parse()?, "app1")?;
//! table.add("http://+:80/app2/".parse()?, "app2")?;
//!
//! let endpoint = Endpoint::new(Scheme::Http, "127.0.0.1:80".parse()?);
//! let head = RequestHead::new(b"GET", b"/app1/%2e%2e/app2/x", Version::Http11, Some(b"h"));
//! match table.dispatch(&endpoint, &head, &UrlOptions::default()) {
//!     Dispatch::Deliver(d) => {
//!         assert_eq!(*d.registration().value(), "app2");
//!         assert_eq!(d.target().path(), "/app2/x");
//!     }
//!     other => panic!("not delivered: {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Prefixes
//!
//! A prefix is `scheme://host:port/path/`: `http` or `https` in lower case, a port from 1 to
//! 65535 with no leading zero, and a path that ends in `/`. The host decides the category:
//! `+` (strong wildcard), a name (explicit), an IP literal (IP-bound) or `*` (weak
//! wildcard). Hosts and paths compare case-insensitively, by simple per-character
//! upper-casing. Anything else is refused with the Win32 error HTTP.sys gives
//! ([`PrefixError::win32`]).
//!
//! # Routing
//!
//! The categories are tried in order `+`, explicit, IP-bound, `*`; the first with any match
//! decides, and within it the longest matching path wins. Paths match on whole segments:
//! `/app/` takes `/app`, `/app/` and `/app/x`, never `/application`. The host is the
//! absolute-form authority or the Host header (its port ignored); IP-bound prefixes match
//! the connection's local address, not the host. Reservations take part: one that wins
//! with no registration of the same URL answers 503. When nothing matches, the answer is 404
//! if some registration serves the host, else 400 Invalid Hostname; when nothing is
//! registered on the scheme and port at all, nothing listens.
//!
//! # Canonicalization
//!
//! Before routing, the path is decoded once (`%XX`, `%uNNNN`), turned into characters
//! (UTF-8, else the Windows-1252 fallback), checked for control characters, `\` and `%2F`
//! become `/`, runs of `/` collapse, and dot segments are resolved, in that order; `..`
//! above the root is refused. See [`UrlOptions`].
//!
//! # Speed
//!
//! Routing walks one tree per category with one probe per path segment, over a single
//! open-addressing table of 32-byte edges keyed by (parent, upper-cased segment): a probe
//! usually reads one cache line, and a walk reads nothing else until it ends, stopping at a
//! leaf. Each segment is found, upper-cased and hashed in one pass, 16 bytes at a time.
//! Lookups take `&self`, take no lock and allocate nothing for a path that needs no
//! decoding. The common request (an origin-form ASCII path already in canonical form, a
//! plain host name) is recognized in a few branch-free passes instead of byte by byte.
//!
//! The cost of a lookup grows with the URL, not with the number of registrations, as long
//! as the table is in cache. Measured by `benches/router.rs` (criterion medians, a shared
//! 2-core x86-64 virtual machine; dispatch of a ~40-byte path with its Host header):
//!
//! | registrations | 10 | 1,000 | 100,000 |
//! |---|---|---|---|
//! | `hot_shallow` (1-segment prefix) | 45 ns | 56 ns | 45 ns |
//! | `hot_deep` (4-segment prefix) | 69 ns | 71 ns | 71 ns |
//! | `hot_miss` (404) | 58 ns | 59 ns | 58 ns |
//! | `random_hit` (paths over the whole table) | 69 ns | 103 ns | 211 ns |
//!
//! `random_hit` at 100,000 registrations is bound by memory latency: the table (about
//! 11 MB) does not fit the caches such a machine lends one program, and each level of a
//! walk, and the registration, may be a miss to memory. It also varies most from run to
//! run, from 160 to 360 ns.
//!
//! `matchit` was measured as the path index on the same workload. Its bare lookup is
//! faster than this crate's whole canonicalize-and-route on a hot path (16 to 55 ns), and
//! slower on `random_hit` over 100,000 prefixes (about 780 ns). It was not chosen because it
//! cannot state HTTP.sys's rules: it matches bytes case-sensitively (every lookup would
//! first upper-case the path into a buffer), it knows no hosts, categories or reservations,
//! and a prefix must be spelled as three routes (`P`, `P/`, `P/{*rest}`) whose conflicts it
//! refuses where HTTP.sys accepts the prefixes.
//!
//! Changes and decisions are flat too (`benches/changes.rs`): a URL ACL decision takes
//! 0.1 to 0.2 µs with 10 or 10,000 reservations ([`UrlAcl`] finds the governing reservation
//! by looking up the URL's path prefixes, not by scanning), and adding or removing a
//! registration does not depend on the table's size. A table is published to readers by
//! swapping an `Arc`; to avoid cloning it for each change, keep two and replay each change
//! on the other after a swap, as the daemon does, sharing prefixes between them with
//! [`RouteTable::add_shared`].

mod acl;
mod canon;
mod chars;
mod codepage;
mod edges;
mod error;
mod explain;
mod fold;
mod host;
mod prefix;
mod punycode;
mod reason;
mod request;
mod table;

pub use acl::{Account, Ace, AclError, Caller, Governing, Reservation, UrlAcl};
pub use canon::{
    SEGMENT_MAX_COUNT_LIMIT, SEGMENT_MAX_LENGTH_LIMIT, Target, TargetForm, UrlError, UrlOptions,
    encode_path,
};
pub use codepage::CodePage;
pub use error::{PrefixError, Win32Error};
pub use explain::{Candidate, CategoryTrace, Explanation, Outcome, Verdict};
pub use host::{InvalidHost, RequestHost};
pub use prefix::{Category, Host, Scheme, UrlPrefix};
pub use reason::{Reason, Rejection};
pub use request::{Delivery, Dispatch, Endpoint, RequestHead, Version, check_method};
pub use table::{Registration, RouteTable, TableError};
