//! The edge table: every step down every site's tree, in one open-addressing array.
//!
//! An edge is a 32-byte [`Slot`], two to a cache line and never across two, holding all a
//! walk compares and needs next: a tag from the edge's hash, the parent and child nodes,
//! what the child holds, whether it is a leaf, and the upper-cased segment itself when it
//! fits in 16 bytes. A probe that finds its edge in its home slot reads one cache line.
//!
//! The top 23 bits of the hash, the key, pick the home slot by scaling (`key * homes >>
//! 23`), so the table can have any number of slots: it grows to 70% full when it would pass
//! 90%, which keeps it about as small as the edges themselves. Slots are kept in key order:
//! an edge sits at or after its home, behind every edge with a smaller key (linear probing
//! in Robin Hood order). A probe reads from the home on and stops at the first slot with a
//! larger key (an empty slot has the largest), so a probe for an absent edge ends where a
//! present one would be, mostly in the same cache line. Removal shifts the edges after it
//! back, so there are no tombstones, and growing needs nothing but the keys the slots hold.

use crate::fold::Key;

/// No node, no registration.
pub(crate) const NONE: u32 = u32::MAX;
/// [`Slot::entry`] of a node with a reservation and no registration.
pub(crate) const RESERVED: u32 = u32::MAX - 1;

/// Tag bit: the child has no children.
const LEAF: u32 = 0x80;
/// An empty slot's tag: the largest key, so probes stop there.
const EMPTY_TAG: u32 = u32::MAX;
/// Bits of an edge's key: fewer than the 24 above the tag's low byte, so every key is
/// below the empty slot's.
const KEY_BITS: u32 = 23;
/// Slots after the last home, so the edges of the last homes need not wrap around.
const SPARE: usize = 64;

/// One edge: parent to child, keyed by the child's segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
pub(crate) struct Slot {
    /// The 24-bit key from the edge's hash, then [`LEAF`] and the segment key's length;
    /// [`EMPTY_TAG`] when the slot is empty.
    tag: u32,
    /// The node the edge leaves.
    pub(crate) parent: u32,
    /// The node the edge reaches.
    pub(crate) child: u32,
    /// What the child holds: the index of its registration, [`RESERVED`], or [`NONE`].
    pub(crate) entry: u32,
    /// The folded segment, unless the key's length is [`LONG`](crate::fold::LONG): then
    /// the child node holds it.
    pub(crate) words: [u64; 2],
}

impl Slot {
    const EMPTY: Slot = Slot {
        tag: EMPTY_TAG,
        parent: NONE,
        child: NONE,
        entry: NONE,
        words: [0; 2],
    };

    /// A new edge, to a child with no entry and no children.
    pub(crate) fn new(hash: u64, key: &Key, parent: u32, child: u32) -> Slot {
        Slot {
            tag: tag(hash, key) | LEAF,
            parent,
            child,
            entry: NONE,
            words: key.words,
        }
    }

    /// True when the slot holds the edge of `key` whose hash is `hash`, from `parent`, as
    /// far as the slot can tell: for a [`LONG`](crate::fold::LONG) key the child's segment
    /// must still be compared.
    #[inline(always)]
    pub(crate) fn matches(&self, hash: u64, key: &Key, parent: u32) -> bool {
        self.tag & !LEAF == tag(hash, key) && self.parent == parent && self.words == key.words
    }

    /// True when no slot from this one on can hold an edge whose hash is `hash`: this one
    /// is empty or has a larger key.
    #[inline(always)]
    pub(crate) fn past(&self, hash: u64) -> bool {
        self.tag >> 8 > key(hash)
    }

    /// The child has no children: a walk stops there.
    #[inline(always)]
    pub(crate) fn leaf(&self) -> bool {
        self.tag & LEAF != 0
    }

    pub(crate) fn set_leaf(&mut self, leaf: bool) {
        self.tag = (self.tag & !LEAF) | if leaf { LEAF } else { 0 };
    }

    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.tag == EMPTY_TAG
    }
}

/// The key of an edge whose hash is `hash`: its top [`KEY_BITS`] bits.
#[inline(always)]
fn key(hash: u64) -> u32 {
    (hash >> (64 - KEY_BITS)) as u32
}

/// The tag a slot holding the edge of `key` with hash `hash` has, leaving out [`LEAF`].
#[inline(always)]
fn tag(hash: u64, segment: &Key) -> u32 {
    key(hash) << 8 | u32::from(segment.len)
}

/// The open-addressing table of [`Slot`]s.
#[derive(Clone, Default, Debug)]
pub(crate) struct Edges {
    /// `homes` slots, then [`SPARE`] more; none when nothing was ever added.
    slots: Vec<Slot>,
    homes: usize,
    len: usize,
}

impl Edges {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A view for walks: the slots, and where a hash's probe starts.
    #[inline(always)]
    pub(crate) fn view(&self) -> View<'_> {
        View {
            slots: &self.slots,
            homes: self.homes as u64,
        }
    }

    /// The index of the edge whose hash is `hash` for which `found` holds. `found` is only
    /// asked about slots that may hold such an edge.
    #[inline(always)]
    pub(crate) fn find(&self, hash: u64, mut found: impl FnMut(&Slot) -> bool) -> Option<usize> {
        let view = self.view();
        let mut i = view.home(hash);
        loop {
            let slot = view.slots.get(i)?;
            if slot.past(hash) {
                return None;
            }
            if found(slot) {
                return Some(i);
            }
            i += 1;
        }
    }

    /// The slot of the edge reaching `child`, whose hash is `hash`.
    pub(crate) fn find_child(&self, hash: u64, child: u32) -> Option<usize> {
        self.find(hash, |s| s.child == child)
    }

    pub(crate) fn get(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i]
    }

    /// Adds an edge whose hash is `hash`.
    pub(crate) fn insert(&mut self, hash: u64, slot: Slot) {
        if 10 * (self.len + 1) > 9 * self.homes {
            self.grow(self.len + 1);
        }
        while !self.place(hash, slot) {
            self.grow(self.homes + self.homes / 8 + SPARE);
        }
        self.len += 1;
    }

    /// Puts `slot` in order, shifting the edges after it up to the next empty slot; false
    /// when there is none before the last slot, which stays empty.
    fn place(&mut self, hash: u64, slot: Slot) -> bool {
        let key = key(hash);
        let mut at = self.view().home(hash);
        while self.slots[at].tag >> 8 <= key {
            at += 1;
        }
        let last = self.slots.len() - 1;
        let Some(empty) = (at..last).find(|&i| self.slots[i].is_empty()) else {
            return false;
        };
        self.slots.copy_within(at..empty, at + 1);
        self.slots[at] = slot;
        true
    }

    /// Rebuilds the table at 70% full for `len` edges (or more, if an edge would not fit).
    fn grow(&mut self, len: usize) {
        let mut homes = (len * 10 / 7).max(16);
        loop {
            let mut slots = vec![Slot::EMPTY; homes + SPARE];
            // The slots are in key order, so each edge goes at its home or right after the
            // edge before it.
            let mut next = 0;
            let fits = self.slots.iter().filter(|s| !s.is_empty()).all(|s| {
                let at = next.max(home(s.tag >> 8, homes as u64));
                next = at + 1;
                match slots.get_mut(at) {
                    Some(free) if at + 1 < homes + SPARE => {
                        *free = *s;
                        true
                    }
                    _ => false,
                }
            });
            if fits {
                self.slots = slots;
                self.homes = homes;
                return;
            }
            homes += homes / 8;
        }
    }

    /// Removes the edge in slot `i`, moving back the edges after it that are not at their
    /// home.
    pub(crate) fn remove(&mut self, i: usize) {
        let homes = self.homes as u64;
        let mut hole = i;
        while let Some(next) = self.slots.get(hole + 1)
            && !next.is_empty()
            && home(next.tag >> 8, homes) <= hole
        {
            self.slots[hole] = *next;
            hole += 1;
        }
        self.slots[hole] = Slot::EMPTY;
        self.len -= 1;
    }
}

/// The home of an edge with 24-bit key `key` in a table of `homes` homes.
#[inline(always)]
fn home(key: u32, homes: u64) -> usize {
    ((u64::from(key) * homes) >> KEY_BITS) as usize
}

/// The slots of an [`Edges`], for a walk to probe.
#[derive(Clone, Copy)]
pub(crate) struct View<'e> {
    pub(crate) slots: &'e [Slot],
    homes: u64,
}

impl View<'_> {
    /// Where the probe for an edge whose hash is `hash` starts.
    #[inline(always)]
    pub(crate) fn home(&self, hash: u64) -> usize {
        home(key(hash), self.homes)
    }
}

#[cfg(test)]
impl Edges {
    /// Asserts the table's invariants: every edge at or after its home, keys in order, the
    /// last slot empty, the count right.
    pub(crate) fn check(&self) {
        let mut prev = 0;
        let mut count = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.is_empty() {
                continue;
            }
            count += 1;
            let k = s.tag >> 8;
            assert!(home(k, self.homes as u64) <= i, "slot {i} before its home");
            assert!(k >= prev, "slot {i} out of order");
            prev = k;
        }
        assert_eq!(count, self.len);
        assert!(self.slots.last().is_none_or(Slot::is_empty));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::FoldHasher;

    #[test]
    fn slots_share_no_cache_line() {
        assert_eq!(size_of::<Slot>(), 32);
        assert_eq!(align_of::<Slot>(), 32);
    }

    #[test]
    fn many_edges_in_order() {
        let hasher = FoldHasher::new();
        let key = hasher.ascii_key(0, b"x");
        let mut edges = Edges::default();
        let hash = |c: u32| hasher.start(c);
        for c in 0..5000 {
            edges.insert(hash(c), Slot::new(hash(c), &key, 0, c));
        }
        edges.check();
        assert!(edges.slots.len() < 5000 * 10 / 7 + 2 * SPARE + 1000);
        for c in (0..5000).step_by(3) {
            let i = edges.find_child(hash(c), c).expect("present");
            edges.remove(i);
        }
        edges.check();
        for c in 0..5000 {
            assert_eq!(edges.find_child(hash(c), c).is_some(), c % 3 != 0, "{c}");
        }
    }

    /// Every edge is found from its home after inserts and removals with colliding homes.
    #[test]
    fn removal_keeps_every_edge_reachable() {
        let hasher = FoldHasher::new();
        let key = hasher.ascii_key(0, b"x");
        // Hashes by child: few distinct homes, so long runs and wrap-around.
        let hash = |child: u32| (u64::from(child % 5) * 7 + 13) << 40 | u64::from(child);
        let mut edges = Edges::default();
        let mut live = Vec::new();
        for child in 0..200u32 {
            edges.insert(hash(child), Slot::new(hash(child), &key, 0, child));
            live.push(child);
            if child % 3 == 2 {
                let gone = live.remove((child as usize * 7) % live.len());
                let i = edges.find_child(hash(gone), gone).expect("present");
                edges.remove(i);
            }
            for &c in &live {
                assert!(edges.find_child(hash(c), c).is_some(), "{c} lost");
            }
            edges.check();
        }
        assert_eq!(edges.len(), live.len());
        for c in live {
            let i = edges.find_child(hash(c), c).expect("present");
            edges.remove(i);
        }
        assert!(edges.is_empty());
        assert!(edges.slots.iter().all(Slot::is_empty));
    }
}
