//! The route table as the control plane keeps it: two copies, so that a change costs what
//! the change is, not what the table holds.
//!
//! Connections read the published copy through [`Shared::table`](crate::shared::Shared)
//! without a lock. The daemon changes the other copy, publishes it by swapping the two, and
//! brings the copy it got back up to date by replaying the changes it lacks. It replays at
//! its next change, by when the connections that were routing on that copy have let go: a
//! lookup holds the table while it routes one request, never across an await. Were one
//! still holding it, or were there more changes to replay than the table has entries, the
//! copy is cloned instead, which is what every change cost before; a change never waits
//! for a connection.

use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portshare_router::{Registration, RouteTable, TableError, UrlPrefix};

/// How often a change looks again for the connections still holding the copy it is to
/// change before it clones the copy instead. Each look yields the thread once.
const LOOKS: u32 = 64;

/// The daemon's route table: the newest state through `Deref`, changed by the methods
/// here and made visible to connections by [`publish`](Routes::publish).
pub(crate) struct Routes<V> {
    /// The copy connections read (the last one published).
    published: Arc<RouteTable<V>>,
    /// The other copy: ahead of `published` by `log` while `ahead`, else behind it by
    /// `log`.
    back: Arc<RouteTable<V>>,
    log: Vec<Change<V>>,
    ahead: bool,
}

/// One change, kept to be replayed on the other copy.
enum Change<V> {
    Add(Arc<UrlPrefix>, V),
    Remove(Arc<UrlPrefix>),
    Reserve(UrlPrefix),
    Unreserve(UrlPrefix),
}

impl<V: Clone> Change<V> {
    fn apply(self, table: &mut RouteTable<V>) {
        // Each change succeeded on the other copy, which held the same entries.
        let replayed = match self {
            Change::Add(prefix, value) => table.add_shared(prefix, value),
            Change::Remove(prefix) => table.remove(&prefix).map(drop),
            Change::Reserve(prefix) => table.reserve(prefix),
            Change::Unreserve(prefix) => table.unreserve(&prefix).map(drop),
        };
        debug_assert!(replayed.is_ok(), "the two copies differ: {replayed:?}");
    }
}

impl<V: Clone> Routes<V> {
    /// An empty table; connections read an empty one until the first publish.
    pub(crate) fn new() -> Routes<V> {
        Routes {
            published: Arc::new(RouteTable::new()),
            back: Arc::new(RouteTable::new()),
            log: Vec::new(),
            ahead: false,
        }
    }

    /// [`RouteTable::add`]: both copies share the prefix.
    pub(crate) fn add(
        &mut self,
        prefix: impl Into<Arc<UrlPrefix>>,
        value: V,
    ) -> Result<(), TableError> {
        let prefix = prefix.into();
        self.writable().add_shared(prefix.clone(), value.clone())?;
        self.log.push(Change::Add(prefix, value));
        Ok(())
    }

    /// [`RouteTable::remove`].
    pub(crate) fn remove(&mut self, prefix: &UrlPrefix) -> Result<Registration<V>, TableError> {
        let removed = self.writable().remove(prefix)?;
        // The table's own prefix, shared: no copy of it for the log.
        self.log
            .push(Change::Remove(removed.shared_prefix().clone()));
        Ok(removed)
    }

    /// [`RouteTable::reserve`].
    pub(crate) fn reserve(&mut self, prefix: UrlPrefix) -> Result<(), TableError> {
        self.writable().reserve(prefix.clone())?;
        self.log.push(Change::Reserve(prefix));
        Ok(())
    }

    /// [`RouteTable::unreserve`].
    pub(crate) fn unreserve(&mut self, prefix: &UrlPrefix) -> Result<UrlPrefix, TableError> {
        let unreserved = self.writable().unreserve(prefix)?;
        self.log.push(Change::Unreserve(prefix.clone()));
        Ok(unreserved)
    }

    /// Makes the changes since the last publish visible to connections, all at once.
    pub(crate) fn publish(&mut self, to: &ArcSwap<RouteTable<V>>) {
        if !self.ahead {
            return;
        }
        std::mem::swap(&mut self.published, &mut self.back);
        to.store(self.published.clone());
        // `back` now lacks what `log` holds, until the next change replays it.
        self.ahead = false;
    }

    /// The copy to change, up to date: the changes it lacks replayed, or a clone of the
    /// published copy when connections still hold it or the changes outnumber the table.
    fn writable(&mut self) -> &mut RouteTable<V> {
        if !self.ahead {
            let replay = self.log.len() <= self.published.len().max(64) && self.let_go(&self.back);
            if replay {
                let table = Arc::make_mut(&mut self.back);
                for change in self.log.drain(..) {
                    change.apply(table);
                }
            } else {
                self.back = Arc::new(RouteTable::clone(&self.published));
                self.log.clear();
            }
            self.ahead = true;
        }
        // Ours alone, but `make_mut` clones rather than fail were it not.
        Arc::make_mut(&mut self.back)
    }

    /// True once no connection holds `table` (the daemon's `Arc` is the only one), looking
    /// [`LOOKS`] times.
    fn let_go(&self, table: &Arc<RouteTable<V>>) -> bool {
        for _ in 0..LOOKS {
            if Arc::strong_count(table) == 1 {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }
}

impl<V> Deref for Routes<V> {
    type Target = RouteTable<V>;

    /// The newest state: the copy being changed while it is ahead of the published one.
    fn deref(&self) -> &RouteTable<V> {
        if self.ahead {
            &self.back
        } else {
            &self.published
        }
    }
}

impl<V> std::fmt::Debug for Routes<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("registrations", &self.published.len())
            .field("unreplayed", &self.log.len())
            .field("ahead", &self.ahead)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> UrlPrefix {
        UrlPrefix::parse(s).expect("prefix")
    }

    /// The registrations and reservations of a table, sorted, to compare copies.
    fn entries(t: &RouteTable<u32>) -> Vec<String> {
        let mut out: Vec<String> = t
            .iter()
            .map(|r| format!("{} {}", r.prefix(), r.value()))
            .chain(t.reservations().map(|r| format!("reserved {r}")))
            .collect();
        out.sort();
        out
    }

    /// A small deterministic generator, so a failure replays.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn both_copies_follow_every_change_and_connections_see_each_publish() {
        let shared = ArcSwap::from_pointee(RouteTable::<u32>::new());
        let mut routes = Routes::new();
        let mut model: RouteTable<u32> = RouteTable::new();
        let mut rng = Lcg(7);
        // A connection that holds a copy across a publish now and then.
        let mut held = None;
        for step in 0..4_000u32 {
            let url = format!("http://+:80/t{}/", rng.next(300));
            let prefix = p(&url);
            match rng.next(4) {
                0 | 1 => assert_eq!(
                    routes.add(prefix.clone(), step).is_ok(),
                    model.add(prefix, step).is_ok()
                ),
                2 => assert_eq!(
                    routes.remove(&prefix).is_ok(),
                    model.remove(&prefix).is_ok()
                ),
                _ => {
                    let url = format!("http://+:80/t{}/r/", rng.next(50));
                    let prefix = p(&url);
                    if rng.next(2) == 0 {
                        assert_eq!(
                            routes.reserve(prefix.clone()).is_ok(),
                            model.reserve(prefix).is_ok()
                        );
                    } else {
                        assert_eq!(
                            routes.unreserve(&prefix).is_ok(),
                            model.unreserve(&prefix).is_ok()
                        );
                    }
                }
            }
            assert_eq!(
                entries(&routes),
                entries(&model),
                "the newest state, at {step}"
            );
            if rng.next(3) == 0 {
                routes.publish(&shared);
                assert_eq!(
                    entries(&shared.load()),
                    entries(&model),
                    "published, at {step}"
                );
                held = match rng.next(4) {
                    0 => Some(shared.load_full()),
                    _ => None,
                };
            }
        }
        drop(held);
        routes.publish(&shared);
        let last = p("http://+:80/last/");
        routes.add(last.clone(), 0).expect("add");
        model.add(last, 0).expect("add");
        routes.publish(&shared);
        assert_eq!(entries(&shared.load()), entries(&model));
        // The copy behind catches up when the next change begins.
        routes.writable();
        assert_eq!(entries(&routes.back), entries(&routes.published));
    }

    #[test]
    fn a_copy_a_connection_holds_is_cloned_not_waited_for() {
        let shared = ArcSwap::from_pointee(RouteTable::<u32>::new());
        let mut routes = Routes::new();
        routes.add(p("http://+:80/a/"), 1).expect("add");
        routes.publish(&shared);
        let reader = shared.load_full();
        routes.add(p("http://+:80/b/"), 2).expect("add");
        routes.publish(&shared);
        // `reader` still holds the first copy: the next change leaves it as it was.
        routes.add(p("http://+:80/c/"), 3).expect("add");
        assert_eq!(entries(&reader), ["http://+:80/a/ 1"]);
        routes.publish(&shared);
        assert_eq!(
            entries(&shared.load()),
            ["http://+:80/a/ 1", "http://+:80/b/ 2", "http://+:80/c/ 3"]
        );
    }

    #[test]
    fn nothing_is_published_before_publish() {
        let shared = ArcSwap::from_pointee(RouteTable::<u32>::new());
        let mut routes = Routes::new();
        routes.add(p("http://+:80/a/"), 1).expect("add");
        assert!(shared.load().is_empty());
        assert_eq!(routes.len(), 1);
        routes.publish(&shared);
        assert_eq!(shared.load().len(), 1);
    }
}
