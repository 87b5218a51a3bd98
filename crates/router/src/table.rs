//! The route table: registrations and reservations, and longest-prefix lookup.
//!
//! Each (scheme, port) has up to four kinds of *sites*, one per category: the `+` site, one
//! site per explicit host name, one per IP address, and the `*` site. A site is the root of
//! a tree with one node per path segment. All trees share one node arena and one table of
//! edges keyed by (parent node, upper-cased segment), so a lookup costs one probe per
//! segment of the request's path, whatever the number of registrations.
//!
//! A walk reads the edge table and nothing else until it ends: an edge's slot holds its
//! key, its child, whether the child is a leaf (the walk stops there) and the index of the
//! child's registration. Nodes are only read for a segment too long or too far from ASCII
//! to fit in a slot. The hash of each step chains from the root over the path's segments
//! (see [`FoldHasher`]), computed while the segment is found and upper-cased, a 16-byte
//! block at a time. Registrations sit in their own array, their prefixes boxed, so the one
//! a walk ends on is a 16-byte read for a small value.
//!
//! Memory, not arithmetic, bounds a lookup in a large table: with the 100,000 registrations
//! of `benches/router.rs` the edges take 9.3 MB and the registrations 1.5 MB, so a path
//! drawn at random can miss the caches once per segment and once more for its registration.

use core::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::{HashMap, HashTable};

use crate::edges::{Edges, NONE, RESERVED, Slot, View};
use crate::error::Win32Error;
use crate::fold::{FoldHasher, Key, LONG, eq_folded};
use crate::host::RequestHost;
use crate::prefix::{Host, Scheme, UrlPrefix};

/// Hash tag of explicit host names, apart from every node id.
const HOST_TAG: u32 = u32::MAX - 1;

/// A registered prefix and the value it delivers to (a queue, a URL context...).
#[derive(Debug, Clone)]
pub struct Registration<T> {
    /// Behind a pointer, so the registrations array stays small: a lookup reads only
    /// `value` and the pointer. Shared, so that tables holding the same registration, and
    /// their owner's own books, keep one prefix between them.
    prefix: Arc<UrlPrefix>,
    value: T,
}

impl<T> Registration<T> {
    /// The prefix as registered.
    pub fn prefix(&self) -> &UrlPrefix {
        &self.prefix
    }

    /// The value given when registering.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The prefix, shared with whoever else holds it.
    pub fn shared_prefix(&self) -> &Arc<UrlPrefix> {
        &self.prefix
    }

    /// Splits into prefix and value.
    pub fn into_parts(self) -> (UrlPrefix, T) {
        (Arc::unwrap_or_clone(self.prefix), self.value)
    }
}

/// Registrations and reservations, routed by HTTP.sys's rules.
///
/// `route` takes `&self` and allocates nothing; share one table between threads behind an
/// `Arc` and publish a new one after changes (for example with `arc-swap`).
///
/// # Examples
///
/// ```
/// use portshare_router::{Endpoint, RequestHead, RouteTable, Scheme, UrlOptions, Version};
///
/// let mut table = RouteTable::new();
/// table.add("http://+:80/app1/".parse()?, "app1")?;
/// table.add("http://*:80/".parse()?, "fallback")?;
///
/// let endpoint = Endpoint::new(Scheme::Http, "127.0.0.1:80".parse()?);
/// let head = RequestHead::new(b"GET", b"/APP1/x", Version::Http11, Some(b"example.com"));
/// let delivery = table.dispatch(&endpoint, &head, &UrlOptions::default()).delivery().unwrap();
/// assert_eq!(*delivery.registration().value(), "app1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RouteTable<T> {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Registrations by index; [`Node::registration`] and [`Slot::entry`] point here.
    registrations: Vec<Option<Registration<T>>>,
    free_registrations: Vec<u32>,
    edges: Edges,
    ports: HashMap<(Scheme, u16), Port>,
    hasher: FoldHasher,
    count: usize,
}

/// A tree node: what a walk needs of it is copied into the edge that reaches it.
#[derive(Clone)]
struct Node {
    parent: u32,
    children: u32,
    /// The index of its registration in [`RouteTable::registrations`], or [`NONE`].
    registration: u32,
    /// Hash of the edge from the parent, to find it again when pruning.
    edge_hash: u64,
    /// The upper-cased segment of the edge from the parent when the edge cannot hold it
    /// (a [`LONG`] key).
    segment: Option<Box<str>>,
    reservation: Option<Box<UrlPrefix>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.registration == NONE && self.reservation.is_none() && self.children == 0
    }

    /// What a walk reaching this node finds: [`Slot::entry`].
    #[inline]
    fn entry(&self) -> u32 {
        match (self.registration, &self.reservation) {
            (NONE, Some(_)) => RESERVED,
            (r, _) => r,
        }
    }
}

#[derive(Clone, Copy)]
struct Site {
    node: u32,
    /// Registrations (not reservations) in this site.
    registrations: u32,
}

#[derive(Clone)]
struct NamedSite {
    hash: u64,
    folded: Box<str>,
    site: Site,
}

/// The sites of one scheme and port.
#[derive(Default, Clone)]
pub(crate) struct Port {
    strong: Option<Site>,
    explicit: HashTable<NamedSite>,
    ip: HashMap<IpAddr, Site>,
    weak: Option<Site>,
    registrations: u32,
    entries: u32,
}

/// Where a prefix's site lives inside its port.
enum SiteKey<'p> {
    Strong,
    Explicit(&'p str),
    Ip(IpAddr),
    Weak,
}

impl<'p> SiteKey<'p> {
    fn of(prefix: &'p UrlPrefix) -> SiteKey<'p> {
        match prefix.host() {
            Host::Strong => SiteKey::Strong,
            Host::Weak => SiteKey::Weak,
            Host::Name(_) => SiteKey::Explicit(prefix.folded_host()),
            Host::Ip(ip) => SiteKey::Ip(ip.to_canonical()),
        }
    }
}

/// What a lookup found, before the request-level answers are chosen.
#[derive(Debug)]
pub(crate) enum Lookup<'t, T> {
    /// A registration won.
    Registration(&'t Registration<T>),
    /// A reservation with no registration won: 503.
    Reserved,
    /// The host matched a registration, no path did: 404.
    NotFound,
    /// No registration serves this host: 400 Invalid Hostname.
    Hostname,
}

impl<T> Default for RouteTable<T> {
    fn default() -> RouteTable<T> {
        RouteTable::new()
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> RouteTable<T> {
        RouteTable {
            nodes: Vec::new(),
            free: Vec::new(),
            registrations: Vec::new(),
            free_registrations: Vec::new(),
            edges: Edges::default(),
            ports: HashMap::default(),
            hasher: FoldHasher::new(),
            count: 0,
        }
    }

    /// The number of registrations.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Checks what [`add`](RouteTable::add) would check, without adding: the other scheme on
    /// the same port, then a duplicate.
    ///
    /// # Errors
    ///
    /// See [`add`](RouteTable::add).
    pub fn check_add(&self, prefix: &UrlPrefix) -> Result<(), TableError> {
        let other = (prefix.scheme().other(), prefix.port());
        if self.ports.get(&other).is_some_and(|p| p.entries > 0) {
            let existing = self
                .entries()
                .find(|p| (p.scheme(), p.port()) == other)
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            return Err(TableError::SchemeConflict { existing });
        }
        if let Some(reg) = self.get(prefix) {
            return Err(TableError::AlreadyRegistered {
                existing: reg.prefix.as_str().to_owned(),
            });
        }
        Ok(())
    }

    /// Registers a prefix.
    ///
    /// # Errors
    ///
    /// [`TableError::SchemeConflict`] when the port is reserved or registered for the other
    /// scheme, [`TableError::AlreadyRegistered`] when the same prefix is registered (both
    /// `ERROR_ALREADY_EXISTS`, 183).
    pub fn add(&mut self, prefix: UrlPrefix, value: T) -> Result<(), TableError> {
        self.add_shared(Arc::new(prefix), value)
    }

    /// [`add`](RouteTable::add) for a prefix the caller keeps too: the table holds this
    /// `Arc`, no copy of it, so tables holding the same registrations share their prefixes.
    ///
    /// # Errors
    ///
    /// As [`add`](RouteTable::add).
    pub fn add_shared(&mut self, prefix: Arc<UrlPrefix>, value: T) -> Result<(), TableError> {
        self.check_add(&prefix)?;
        let node = self.insert_path(&prefix, true);
        let registration = Some(Registration { prefix, value });
        let index = match self.free_registrations.pop() {
            Some(i) => {
                self.registrations[i as usize] = registration;
                i
            }
            None => {
                let i = u32::try_from(self.registrations.len())
                    .ok()
                    .filter(|&i| i < RESERVED)
                    .expect("fewer than 4 billion registrations");
                self.registrations.push(registration);
                i
            }
        };
        self.nodes[node as usize].registration = index;
        self.sync_edge(node);
        self.count += 1;
        Ok(())
    }

    /// Removes a registration and gives back what it held.
    ///
    /// # Errors
    ///
    /// [`TableError::NotRegistered`] (`ERROR_FILE_NOT_FOUND`, 2) when it is not registered.
    pub fn remove(&mut self, prefix: &UrlPrefix) -> Result<Registration<T>, TableError> {
        let not_found = || TableError::NotRegistered {
            prefix: prefix.as_str().to_owned(),
        };
        let node = self.find(prefix).ok_or_else(not_found)?;
        let index = self.nodes[node as usize].registration;
        let reg = self
            .registrations
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(not_found)?;
        self.free_registrations.push(index);
        self.nodes[node as usize].registration = NONE;
        self.count -= 1;
        self.sync_edge(node);
        self.release(prefix, node, true);
        Ok(reg)
    }

    /// Adds a reservation: a prefix that takes part in routing, answering 503 when it wins
    /// with no registration of the same URL.
    ///
    /// # Errors
    ///
    /// [`TableError::AlreadyReserved`] (183) when the same URL is reserved.
    pub fn reserve(&mut self, prefix: UrlPrefix) -> Result<(), TableError> {
        if let Some(res) = self
            .find(&prefix)
            .and_then(|n| self.nodes[n as usize].reservation.as_ref())
        {
            return Err(TableError::AlreadyReserved {
                existing: res.as_str().to_owned(),
            });
        }
        let node = self.insert_path(&prefix, false);
        self.nodes[node as usize].reservation = Some(Box::new(prefix));
        self.sync_edge(node);
        Ok(())
    }

    /// Removes a reservation.
    ///
    /// # Errors
    ///
    /// [`TableError::NotReserved`] (2) when it is not reserved.
    pub fn unreserve(&mut self, prefix: &UrlPrefix) -> Result<UrlPrefix, TableError> {
        let not_found = || TableError::NotReserved {
            prefix: prefix.as_str().to_owned(),
        };
        let node = self.find(prefix).ok_or_else(not_found)?;
        let res = self.nodes[node as usize]
            .reservation
            .take()
            .ok_or_else(not_found)?;
        self.sync_edge(node);
        self.release(prefix, node, false);
        Ok(*res)
    }

    /// The registration of exactly this prefix (compared as HTTP.sys does).
    pub fn get(&self, prefix: &UrlPrefix) -> Option<&Registration<T>> {
        let node = self.find(prefix)?;
        self.registration(self.nodes[node as usize].registration)
    }

    /// The registration at `index`, if any.
    #[inline]
    fn registration(&self, index: u32) -> Option<&Registration<T>> {
        self.registrations.get(index as usize)?.as_ref()
    }

    /// True when exactly this URL is reserved.
    pub fn is_reserved(&self, prefix: &UrlPrefix) -> bool {
        self.find(prefix)
            .is_some_and(|n| self.nodes[n as usize].reservation.is_some())
    }

    /// Every registration, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Registration<T>> {
        self.registrations.iter().flatten()
    }

    /// Every reservation, in no particular order.
    pub fn reservations(&self) -> impl Iterator<Item = &UrlPrefix> {
        self.nodes.iter().filter_map(|n| n.reservation.as_deref())
    }

    /// True when something is registered on this scheme and port: a listener is needed.
    pub fn listens(&self, scheme: Scheme, port: u16) -> bool {
        self.port(scheme, port).is_some()
    }

    /// The port's sites, when something is registered on it.
    pub(crate) fn port(&self, scheme: Scheme, port: u16) -> Option<&Port> {
        self.ports
            .get(&(scheme, port))
            .filter(|p| p.registrations > 0)
    }

    /// The (scheme, port) pairs that have registrations.
    pub fn ports(&self) -> impl Iterator<Item = (Scheme, u16)> + '_ {
        self.ports
            .iter()
            .filter(|(_, p)| p.registrations > 0)
            .map(|(k, _)| *k)
    }

    /// Every registration and reservation prefix.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &UrlPrefix> {
        self.iter()
            .map(Registration::prefix)
            .chain(self.reservations())
    }

    /// Registrations and reservations on one scheme and port, for explanations.
    pub(crate) fn entries_on(
        &self,
        scheme: Scheme,
        port: u16,
    ) -> impl Iterator<Item = (&UrlPrefix, Option<&Registration<T>>)> {
        let regs = self.iter().map(|r| (r.prefix(), Some(r)));
        let res = self.reservations().map(|p| (p, None));
        regs.chain(res)
            .filter(move |(p, _)| p.scheme() == scheme && p.port() == port)
    }

    /// Finds the request's winner: category by category, the longest matching prefix.
    #[inline]
    pub(crate) fn lookup(
        &self,
        p: &Port,
        local_ip: IpAddr,
        host: Option<&RequestHost<'_>>,
        path: &str,
    ) -> Lookup<'_, T> {
        // The strong site first: most requests end there, before the Host is hashed.
        if let Some(hit) = p.strong.and_then(|site| self.hit(site, path)) {
            return hit;
        }
        let named = match host {
            Some(h) if h.ip().is_none() => self.named_site(p, h.name()),
            _ => None,
        };
        let ip = p.ip.get(&local_ip.to_canonical()).copied();
        for site in [named, ip, p.weak].into_iter().flatten() {
            if let Some(hit) = self.hit(site, path) {
                return hit;
            }
        }
        let serves_host = [p.strong, named, ip, p.weak]
            .into_iter()
            .flatten()
            .any(|s| s.registrations > 0);
        if serves_host {
            Lookup::NotFound
        } else {
            Lookup::Hostname
        }
    }

    /// The entry that wins inside one site, if any.
    #[inline]
    fn hit(&self, site: Site, path: &str) -> Option<Lookup<'_, T>> {
        match self.longest(site.node, path) {
            NONE => None,
            // A registration wins over a reservation of the same URL.
            index => Some(match self.registration(index) {
                Some(reg) => Lookup::Registration(reg),
                None => Lookup::Reserved,
            }),
        }
    }

    fn named_site(&self, port: &Port, name: &str) -> Option<Site> {
        let hash = self.hasher.hash(HOST_TAG, name, name.is_ascii());
        port.explicit
            .find(hash, |s| eq_folded(&s.folded, name))
            .map(|s| s.site)
    }

    /// What the deepest node with an entry on the path from `root` along `path`'s segments
    /// holds ([`Slot::entry`]), or [`NONE`].
    #[inline]
    fn longest(&self, root: u32, path: &str) -> u32 {
        let mut best = self.nodes[root as usize].entry();
        let view = self.edges.view();
        let mut node = root;
        let mut chain = self.hasher.start(root);
        let mut start = 1;
        while start < path.len() {
            let (key, end) = self.hasher.next_key(chain, path, start);
            chain = key.chain;
            let Some(slot) = self.probe(view, node, &key, path, start..end) else {
                break;
            };
            node = slot.child;
            if slot.entry != NONE {
                best = slot.entry;
            }
            if slot.leaf() {
                break;
            }
            start = end + 1;
        }
        best
    }

    /// The slot of the edge from `node` keyed by `key`, the key of `path[seg]`.
    #[inline(always)]
    fn probe<'s>(
        &self,
        view: View<'s>,
        node: u32,
        key: &Key,
        path: &str,
        seg: core::ops::Range<usize>,
    ) -> Option<&'s Slot> {
        let hash = key.chain;
        let mut i = view.home(hash);
        loop {
            let slot = view.slots.get(i)?;
            if slot.matches(hash, key, node)
                && (key.len != LONG || self.long_matches(slot, path.get(seg.clone())?))
            {
                return Some(slot);
            }
            if slot.past(hash) {
                return None;
            }
            i += 1;
        }
    }

    /// True when the child of `slot`, an edge with a [`LONG`] key, has segment `seg`.
    #[cold]
    fn long_matches(&self, slot: &Slot, seg: &str) -> bool {
        self.nodes[slot.child as usize]
            .segment
            .as_deref()
            .is_some_and(|folded| eq_folded(folded, seg))
    }

    /// The slot of the edge from `node` keyed by `key`, `seg`'s key.
    fn edge(&self, node: u32, key: &Key, seg: &str) -> Option<usize> {
        let hash = key.chain;
        self.edges.find(hash, |slot| {
            slot.matches(hash, key, node) && (key.len != LONG || self.long_matches(slot, seg))
        })
    }

    /// The node of exactly this prefix, if its path exists.
    fn find(&self, prefix: &UrlPrefix) -> Option<u32> {
        let port = self.ports.get(&(prefix.scheme(), prefix.port()))?;
        let root = self.site(port, &SiteKey::of(prefix))?.node;
        let mut node = root;
        let mut chain = self.hasher.start(root);
        for seg in prefix.folded_segments() {
            let key = self.hasher.key(chain, seg, seg.is_ascii());
            chain = key.chain;
            let slot = self.edge(node, &key, seg)?;
            node = self.edges.get(slot).child;
        }
        Some(node)
    }

    /// Creates the site and nodes down to `prefix`'s path; returns the last node.
    fn insert_path(&mut self, prefix: &UrlPrefix, registration: bool) -> u32 {
        let root = self.site_root(prefix, registration);
        let mut node = root;
        let mut chain = self.hasher.start(root);
        for seg in prefix.folded_segments() {
            let key = self.hasher.key(chain, seg, seg.is_ascii());
            chain = key.chain;
            if let Some(slot) = self.edge(node, &key, seg) {
                node = self.edges.get(slot).child;
                continue;
            }
            let hash = chain;
            let child = self.alloc(node, hash);
            if key.len == LONG {
                self.nodes[child as usize].segment = Some(seg.into());
            }
            self.nodes[node as usize].children += 1;
            self.sync_edge(node);
            self.edges.insert(hash, Slot::new(hash, &key, node, child));
            node = child;
        }
        node
    }

    /// The root node of `prefix`'s site, created if needed; counts the new entry.
    fn site_root(&mut self, prefix: &UrlPrefix, registration: bool) -> u32 {
        let key = (prefix.scheme(), prefix.port());
        let site_key = SiteKey::of(prefix);
        let existing = self
            .ports
            .get(&key)
            .and_then(|port| self.site(port, &site_key));
        let root = match existing {
            Some(site) => site.node,
            None => self.alloc(NONE, 0),
        };
        let hash = self.host_hash(&site_key);
        let port = self.ports.entry(key).or_default();
        port.entries += 1;
        port.registrations += u32::from(registration);
        let fresh = Site {
            node: root,
            registrations: 0,
        };
        let site = match site_key {
            SiteKey::Strong => port.strong.get_or_insert(fresh),
            SiteKey::Weak => port.weak.get_or_insert(fresh),
            SiteKey::Ip(ip) => port.ip.entry(ip).or_insert(fresh),
            SiteKey::Explicit(name) => {
                &mut port
                    .explicit
                    .entry(hash, |s| *s.folded == *name, |s| s.hash)
                    .or_insert_with(|| NamedSite {
                        hash,
                        folded: name.into(),
                        site: fresh,
                    })
                    .into_mut()
                    .site
            }
        };
        site.registrations += u32::from(registration);
        root
    }

    /// Uncounts an entry that was just cleared from `node`, and prunes what is left empty.
    fn release(&mut self, prefix: &UrlPrefix, mut node: u32, registration: bool) {
        while self.nodes[node as usize].is_empty() && self.nodes[node as usize].parent != NONE {
            let n = &self.nodes[node as usize];
            let (parent, hash) = (n.parent, n.edge_hash);
            if let Some(slot) = self.edges.find_child(hash, node) {
                self.edges.remove(slot);
            }
            self.nodes[parent as usize].children -= 1;
            self.free.push(node);
            node = parent;
            self.sync_edge(node);
        }
        let root_empty = self.nodes[node as usize].is_empty();
        if root_empty {
            self.free.push(node);
        }
        let key = (prefix.scheme(), prefix.port());
        let site_key = SiteKey::of(prefix);
        let hash = self.host_hash(&site_key);
        let Some(port) = self.ports.get_mut(&key) else {
            return;
        };
        port.entries -= 1;
        port.registrations -= u32::from(registration);
        match site_key {
            SiteKey::Strong if root_empty => port.strong = None,
            SiteKey::Weak if root_empty => port.weak = None,
            SiteKey::Ip(ip) if root_empty => drop(port.ip.remove(&ip)),
            SiteKey::Explicit(name) if root_empty => {
                if let Ok(entry) = port.explicit.find_entry(hash, |s| *s.folded == *name) {
                    entry.remove();
                }
            }
            SiteKey::Strong => uncount(port.strong.as_mut(), registration),
            SiteKey::Weak => uncount(port.weak.as_mut(), registration),
            SiteKey::Ip(ip) => uncount(port.ip.get_mut(&ip), registration),
            SiteKey::Explicit(name) => uncount(
                port.explicit
                    .find_mut(hash, |s| *s.folded == *name)
                    .map(|s| &mut s.site),
                registration,
            ),
        }
        if port.entries == 0 {
            self.ports.remove(&key);
        }
    }

    fn site(&self, port: &Port, key: &SiteKey<'_>) -> Option<Site> {
        match *key {
            SiteKey::Strong => port.strong,
            SiteKey::Weak => port.weak,
            SiteKey::Ip(ip) => port.ip.get(&ip).copied(),
            SiteKey::Explicit(name) => self.named_site(port, name),
        }
    }

    fn host_hash(&self, key: &SiteKey<'_>) -> u64 {
        match *key {
            SiteKey::Explicit(name) => self.hasher.hash(HOST_TAG, name, name.is_ascii()),
            _ => 0,
        }
    }

    /// Copies whether `node` has an entry and children into the edge leading to it.
    fn sync_edge(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        let (entry, leaf) = (n.entry(), n.children == 0);
        if n.parent != NONE
            && let Some(i) = self.edges.find_child(n.edge_hash, node)
        {
            let slot = self.edges.get_mut(i);
            slot.entry = entry;
            slot.set_leaf(leaf);
        }
    }

    fn alloc(&mut self, parent: u32, edge_hash: u64) -> u32 {
        let node = Node {
            parent,
            children: 0,
            registration: NONE,
            edge_hash,
            segment: None,
            reservation: None,
        };
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                let i = u32::try_from(self.nodes.len())
                    .ok()
                    .filter(|&i| i != NONE)
                    .expect("fewer than 4 billion nodes");
                self.nodes.push(node);
                i
            }
        }
    }
}

fn uncount(site: Option<&mut Site>, registration: bool) {
    if let Some(site) = site {
        site.registrations -= u32::from(registration);
    }
}

impl<T: fmt::Debug> fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field(
                "registrations",
                &self.iter().map(|r| r.prefix.as_str()).collect::<Vec<_>>(),
            )
            .field(
                "reservations",
                &self.reservations().map(|r| r.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a registration or reservation could not be added or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableError {
    /// The same prefix is already registered.
    AlreadyRegistered {
        /// The registration already there, as it was written.
        existing: String,
    },
    /// The port is reserved or registered for the other scheme.
    SchemeConflict {
        /// A prefix of the other scheme on that port.
        existing: String,
    },
    /// The same URL is already reserved.
    AlreadyReserved {
        /// The reservation already there.
        existing: String,
    },
    /// Removing a registration that does not exist.
    NotRegistered {
        /// The prefix asked for.
        prefix: String,
    },
    /// Removing a reservation that does not exist.
    NotReserved {
        /// The prefix asked for.
        prefix: String,
    },
}

impl TableError {
    /// The Win32 error HTTP.sys returns.
    pub fn win32(&self) -> Win32Error {
        match self {
            TableError::AlreadyRegistered { .. }
            | TableError::SchemeConflict { .. }
            | TableError::AlreadyReserved { .. } => Win32Error::AlreadyExists,
            TableError::NotRegistered { .. } | TableError::NotReserved { .. } => {
                Win32Error::FileNotFound
            }
        }
    }
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::AlreadyRegistered { existing } => {
                write!(f, "{existing} is already registered")
            }
            TableError::SchemeConflict { existing } => write!(
                f,
                "the port is taken by {existing}: one port serves either http or https"
            ),
            TableError::AlreadyReserved { existing } => write!(f, "{existing} is already reserved"),
            TableError::NotRegistered { prefix } => write!(f, "{prefix} is not registered"),
            TableError::NotReserved { prefix } => write!(f, "{prefix} is not reserved"),
        }
    }
}

impl std::error::Error for TableError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> UrlPrefix {
        s.parse().unwrap()
    }

    fn winner(t: &RouteTable<&'static str>, port: u16, host: Option<&str>, path: &str) -> String {
        let host = host.map(|h| RequestHost::parse(h.as_bytes()).unwrap());
        let Some(p) = t.port(Scheme::Http, port) else {
            return "refused".into();
        };
        match t.lookup(p, "127.0.0.1".parse().unwrap(), host.as_ref(), path) {
            Lookup::Registration(r) => r.value.to_string(),
            Lookup::Reserved => "503".into(),
            Lookup::NotFound => "404".into(),
            Lookup::Hostname => "400".into(),
        }
    }

    #[test]
    fn longest_on_segment_boundaries() {
        let mut t = RouteTable::new();
        t.add(p("http://+:80/"), "root").unwrap();
        t.add(p("http://+:80/app/"), "app").unwrap();
        t.add(p("http://+:80/app/sub/"), "sub").unwrap();
        assert_eq!(winner(&t, 80, Some("h"), "/app"), "app");
        assert_eq!(winner(&t, 80, Some("h"), "/APP/"), "app");
        assert_eq!(winner(&t, 80, Some("h"), "/app/sub/x"), "sub");
        assert_eq!(winner(&t, 80, Some("h"), "/application"), "root");
        assert_eq!(winner(&t, 81, Some("h"), "/"), "refused");
    }

    #[test]
    fn remove_prunes_and_releases_the_port() {
        let mut t = RouteTable::new();
        t.add(p("http://x.test:80/a/b/"), "ab").unwrap();
        t.add(p("http://x.test:80/a/"), "a").unwrap();
        assert_eq!(t.remove(&p("http://X.TEST:80/A/B/")).unwrap().value, "ab");
        assert_eq!(winner(&t, 80, Some("x.test"), "/a/b/c"), "a");
        t.remove(&p("http://x.test:80/a/")).unwrap();
        assert_eq!(winner(&t, 80, Some("x.test"), "/a/b/c"), "refused");
        assert!(t.ports.is_empty());
        assert!(t.edges.is_empty());
        assert_eq!(t.free.len(), t.nodes.len());
        assert_eq!(
            t.remove(&p("http://x.test:80/a/")).unwrap_err().win32(),
            Win32Error::FileNotFound
        );
    }

    #[test]
    fn nodes_are_reused() {
        let mut t = RouteTable::new();
        for _ in 0..10 {
            t.add(p("http://+:80/a/b/c/"), "x").unwrap();
            t.remove(&p("http://+:80/a/b/c/")).unwrap();
        }
        assert!(t.nodes.len() <= 5, "{}", t.nodes.len());
    }

    #[test]
    fn duplicates_and_scheme_conflicts() {
        let mut t = RouteTable::new();
        t.add(p("http://localhost:8080/"), "a").unwrap();
        let err = t.add(p("http://LOCALHOST:8080/"), "b").unwrap_err();
        assert_eq!(
            err,
            TableError::AlreadyRegistered {
                existing: "http://localhost:8080/".into()
            }
        );
        let err = t.add(p("https://+:8080/"), "c").unwrap_err();
        assert_eq!(err.win32(), Win32Error::AlreadyExists);
        assert!(err.to_string().contains("http://localhost:8080/"));
        // The same path in another category is no conflict.
        t.add(p("http://+:8080/"), "d").unwrap();
    }

    #[test]
    fn reservations_capture_routing() {
        let mut t = RouteTable::new();
        t.add(p("http://+:80/"), "root").unwrap();
        t.reserve(p("http://+:80/Temporary_Listen_Addresses/"))
            .unwrap();
        assert_eq!(
            winner(&t, 80, Some("h"), "/temporary_listen_addresses/x"),
            "503"
        );
        t.add(p("http://+:80/Temporary_Listen_Addresses/"), "tla")
            .unwrap();
        assert_eq!(
            winner(&t, 80, Some("h"), "/Temporary_Listen_Addresses/x"),
            "tla"
        );
        t.remove(&p("http://+:80/Temporary_Listen_Addresses/"))
            .unwrap();
        t.unreserve(&p("http://+:80/Temporary_Listen_Addresses/"))
            .unwrap();
        assert_eq!(
            winner(&t, 80, Some("h"), "/Temporary_Listen_Addresses/x"),
            "root"
        );
        assert!(t.reserve(p("http://+:80/")).is_ok());
        assert!(t.reserve(p("http://+:80/")).is_err());
    }

    #[test]
    fn reservation_alone_does_not_listen() {
        let mut t: RouteTable<&str> = RouteTable::new();
        t.reserve(p("http://+:80/")).unwrap();
        assert_eq!(winner(&t, 80, Some("h"), "/"), "refused");
        assert!(!t.listens(Scheme::Http, 80));
    }

    #[test]
    fn not_found_versus_hostname() {
        let mut t = RouteTable::new();
        t.add(p("http://localhost:8080/api/"), "api").unwrap();
        assert_eq!(winner(&t, 8080, Some("localhost"), "/"), "404");
        assert_eq!(winner(&t, 8080, Some("other"), "/"), "400");
        assert_eq!(winner(&t, 8080, None, "/"), "400");
    }

    #[test]
    fn unicode_hosts_and_paths_fold() {
        let mut t = RouteTable::new();
        t.add(p("http://bücher.example:80/фото/"), "photos")
            .unwrap();
        assert_eq!(winner(&t, 80, Some("BÜCHER.example"), "/ФОТО/1"), "photos");
        assert_eq!(
            winner(&t, 80, Some("xn--bcher-kva.example"), "/фото/1"),
            "photos"
        );
    }

    /// Thousands of prefixes added, removed, reserved and released in a random order, with
    /// segments of every length around the inline limit and ones that fold: every request
    /// routes as the explanation (a linear search by the rules) says, and the edge table
    /// keeps its order.
    #[test]
    fn churn_agrees_with_the_rules() {
        use crate::canon::UrlOptions;
        use crate::explain::Verdict;
        use crate::request::{Dispatch, Endpoint, RequestHead, Version};

        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let long = "x".repeat(40);
        let words = [
            "a",
            "A",
            "b",
            "api",
            "V1",
            "abcdefgh",
            "abcdefghi",
            "ABCDEFGHIJKLMNO",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            &long,
            "ф",
            "Ф",
            "ſ",
            "s",
            "ss",
            "straße",
            "fooſ",
            "FOOS",
            "é",
            "app.x",
        ];
        let hosts = ["+", "*", "a.test", "127.0.0.1"];
        let prefix = |next: &mut dyn FnMut(usize) -> usize| {
            let mut p = format!("http://{}:80/", hosts[next(hosts.len())]);
            for _ in 0..next(5) {
                p.push_str(words[next(words.len())]);
                p.push('/');
            }
            p.parse::<UrlPrefix>().expect("generated prefixes parse")
        };
        let mut t = RouteTable::new();
        let mut live: Vec<UrlPrefix> = Vec::new();
        let mut reserved: Vec<UrlPrefix> = Vec::new();
        for round in 0..4000 {
            match next(10) {
                0..6 => {
                    let p = prefix(&mut next);
                    if t.add(p.clone(), p.as_str().to_owned()).is_ok() {
                        live.push(p);
                    }
                }
                6 | 7 if !live.is_empty() => {
                    let p = live.swap_remove(next(live.len()));
                    assert!(t.remove(&p).is_ok(), "{p}");
                }
                8 => {
                    let p = prefix(&mut next);
                    if t.reserve(p.clone()).is_ok() {
                        reserved.push(p);
                    }
                }
                _ if !reserved.is_empty() => {
                    let p = reserved.swap_remove(next(reserved.len()));
                    assert!(t.unreserve(&p).is_ok(), "{p}");
                }
                _ => {}
            }
            if round % 500 == 499 {
                t.edges.check();
            }
        }
        assert_eq!(t.len(), live.len());
        assert!(t.edges.len() > 100, "{}", t.edges.len());
        t.edges.check();

        let opts = UrlOptions::default();
        let request_hosts = [Some("a.test"), Some("A.TEST:80"), Some("b.test"), None];
        let mut delivered = 0;
        for _ in 0..3000 {
            let mut path = String::new();
            for _ in 0..next(7) {
                path.push('/');
                let w = words[next(words.len())];
                // Requests vary the case the way HTTP.sys ignores it.
                path.push_str(&match next(3) {
                    0 => w.to_uppercase(),
                    1 => w.to_lowercase(),
                    _ => w.to_owned(),
                });
            }
            if path.is_empty() || next(4) == 0 {
                path.push('/');
            }
            let target = encode_target(&path);
            let local = if next(2) == 0 {
                "127.0.0.1:80"
            } else {
                "127.0.0.2:80"
            };
            let endpoint = Endpoint::new(Scheme::Http, local.parse().expect("address"));
            let host = request_hosts[next(request_hosts.len())].map(str::as_bytes);
            let version = if host.is_none() {
                Version::Http10
            } else {
                Version::Http11
            };
            let head = RequestHead::new(b"GET", target.as_bytes(), version, host);
            let routed = match t.dispatch(&endpoint, &head, &opts) {
                Dispatch::Deliver(d) => {
                    delivered += 1;
                    d.registration().value().clone()
                }
                Dispatch::Reject(r) => r.to_string(),
                Dispatch::Refused => "refused".into(),
            };
            let explained = match t.explain(&endpoint, &head, &opts).verdict() {
                Verdict::Deliver(r) => r.value().clone(),
                Verdict::Reject(r) => r.to_string(),
                _ => "refused".into(),
            };
            assert_eq!(routed, explained, "{target}");
        }
        assert!(delivered > 1000, "{delivered}");
    }

    /// `path` with its non-ASCII characters percent-encoded, as a request line carries it.
    fn encode_target(path: &str) -> String {
        crate::canon::encode_path(path).into_owned()
    }
}
