//! Case folding by simple per-character upper-casing, the comparison HTTP.sys uses for
//! hosts and paths.
//!
//! A character whose upper case is more than one character (`ß` → `SS`) stays as it is,
//! so folding never changes a string's length in characters and stored upper-case keys
//! compare equal to the requests that reach them.

/// Upper-cases one character the simple way.
#[inline]
pub(crate) fn upcase(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Returns `s` folded to upper case.
pub(crate) fn fold(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_uppercase();
    }
    s.chars().map(upcase).collect()
}

/// True when `raw`, folded, equals `folded` (which is already folded).
#[inline]
pub(crate) fn eq_folded(folded: &str, raw: &str) -> bool {
    if raw.is_ascii() {
        return folded.len() == raw.len()
            && folded
                .bytes()
                .zip(raw.bytes())
                .all(|(f, r)| f == r.to_ascii_uppercase());
    }
    let mut f = folded.chars();
    for c in raw.chars() {
        if f.next() != Some(upcase(c)) {
            return false;
        }
    }
    f.next().is_none()
}

/// Hashes upper-cased text without building the upper-cased copy.
///
/// The hash is defined on the folded UTF-8 bytes, read as little-endian 64-bit words, so an
/// ASCII segment is hashed a word at a time (upper-cased with a few bit operations) and any
/// other text byte by byte, with the same result for the same folded text. The seed is
/// random per table, so nobody can pick colliding segments in advance.
///
/// Paths are hashed as a chain: [`segment`](FoldHasher::segment) extends the chain value of
/// the segments before by one more, and [`edge`](FoldHasher::edge) finishes it with the
/// site's root. So the hash of every step of a walk is known from the path alone, before
/// the node of the step before is read: the probes of one walk do not wait on each other,
/// and a walk through a table too large for the caches overlaps its misses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldHasher {
    seed: u64,
}

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
const FINAL: u64 = 0xD6E8_FEB8_6659_FD93;

/// The most bytes of an ASCII segment kept as words for comparison.
pub(crate) const WORDS_LEN: usize = 24;

impl FoldHasher {
    /// A hasher with a random seed.
    pub(crate) fn new() -> FoldHasher {
        use core::hash::BuildHasher;
        FoldHasher {
            seed: foldhash::fast::RandomState::default().hash_one(0x5eed_u64),
        }
    }

    /// The chain value of the empty path.
    #[inline]
    pub(crate) fn start(&self) -> u64 {
        self.seed
    }

    /// Extends the chain value `chain` by the folded form of `raw`; `ascii` must be
    /// `raw.is_ascii()`.
    #[inline]
    pub(crate) fn segment(&self, chain: u64, raw: &str, ascii: bool) -> u64 {
        if ascii {
            return self.ascii_segment(chain, raw.as_bytes()).0;
        }
        let mut state = State {
            h: chain,
            word: 0,
            n: 0,
        };
        let mut len = 0;
        for c in raw.chars() {
            let mut buf = [0u8; 4];
            for &b in upcase(c).encode_utf8(&mut buf).as_bytes() {
                state.push(b);
                len += 1;
            }
        }
        state.end(len)
    }

    /// [`segment`](FoldHasher::segment) for ASCII bytes, also returning the first
    /// [`WORDS_LEN`] upper-cased bytes as zero-padded little-endian words: equal words and
    /// lengths mean equal folded segments.
    #[inline(always)]
    pub(crate) fn ascii_segment(&self, chain: u64, bytes: &[u8]) -> (u64, [u64; 3]) {
        let n = bytes.len();
        // Three words in registers: indexing an array by a count would send it through
        // memory, and reading it back whole would wait on the stores.
        let w0 = upper_ascii_word(word_at(bytes, 0));
        let w1 = upper_ascii_word(word_at(bytes, 1));
        let w2 = upper_ascii_word(word_at(bytes, 2));
        if n > WORDS_LEN {
            let mut state = State {
                h: chain,
                word: 0,
                n: 0,
            };
            let mut chunks = bytes.chunks_exact(8);
            for w in &mut chunks {
                state.mix(upper_ascii_word(word_at(w, 0)));
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                state.word = upper_ascii_word(tail_word(rest));
            }
            return (state.end(n), [w0, w1, w2]);
        }
        // The words push() and end() would take, with the partial one last.
        let full = n / 8;
        let mut h = chain;
        if full >= 1 {
            h = mix(h, w0);
        }
        if full >= 2 {
            h = mix(h, w1);
        }
        if full >= 3 {
            h = mix(h, w2);
        }
        let last = match (n % 8, full) {
            (0, _) => 0,
            (_, 0) => w0,
            (_, 1) => w1,
            _ => w2,
        };
        (mix(h, last ^ ((n as u64) << 56)), [w0, w1, w2])
    }

    /// The hash of the step whose chain value is `chain`, in the tree rooted at `root`.
    #[inline]
    pub(crate) fn edge(&self, chain: u64, root: u32) -> u64 {
        let m = u128::from(chain ^ u64::from(root).wrapping_mul(MUL)) * u128::from(FINAL);
        (m as u64) ^ ((m >> 64) as u64)
    }

    /// Hashes `tag` with the folded form of `raw`; `ascii` must be `raw.is_ascii()`.
    #[inline]
    pub(crate) fn hash(&self, tag: u32, raw: &str, ascii: bool) -> u64 {
        self.edge(self.segment(self.seed, raw, ascii), tag)
    }
}

struct State {
    h: u64,
    word: u64,
    n: u32,
}

impl State {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.h = mix(self.h, word);
    }

    #[inline]
    fn push(&mut self, b: u8) {
        self.word |= u64::from(b) << (8 * self.n);
        self.n += 1;
        if self.n == 8 {
            let w = self.word;
            self.word = 0;
            self.n = 0;
            self.mix(w);
        }
    }

    /// Mixes in the last partial word and the length: the chain value after the segment.
    #[inline]
    fn end(mut self, len: usize) -> u64 {
        let w = self.word;
        self.mix(w ^ ((len as u64) << 56));
        self.h
    }
}

#[inline(always)]
fn mix(h: u64, word: u64) -> u64 {
    (h.rotate_left(23) ^ word).wrapping_mul(MUL)
}

/// The `k`th eight bytes of `bytes` as a little-endian word, zero-padded past the end.
#[inline(always)]
fn word_at(bytes: &[u8], k: usize) -> u64 {
    let at = 8 * k;
    match bytes.get(at..at + 8) {
        Some(&[a, b, c, d, e, f, g, h]) => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
        _ if at < bytes.len() => tail_word(&bytes[at..]),
        _ => 0,
    }
}

/// Up to seven bytes as a zero-padded little-endian word, read with two overlapping loads
/// rather than a copy of variable length.
#[inline(always)]
fn tail_word(rest: &[u8]) -> u64 {
    let n = rest.len();
    debug_assert!((1..8).contains(&n));
    let le32 = |at: usize| {
        u64::from(u32::from_le_bytes([
            rest[at],
            rest[at + 1],
            rest[at + 2],
            rest[at + 3],
        ]))
    };
    if n >= 4 {
        // The bytes the two loads share are the same, so OR-ing them is harmless.
        le32(0) | le32(n - 4) << (8 * (n - 4))
    } else {
        let (mid, last) = (n / 2, n - 1);
        u64::from(rest[0]) | u64::from(rest[mid]) << (8 * mid) | u64::from(rest[last]) << (8 * last)
    }
}

/// Upper-cases the ASCII letters of eight ASCII bytes at once.
#[inline]
fn upper_ascii_word(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Bytes are below 0x80, so these additions never carry into the next byte.
    let at_least_a = w.wrapping_add(ONES * (0x80 - u64::from(b'a')));
    let above_z = w.wrapping_add(ONES * (0x80 - u64::from(b'z') - 1));
    let lower = at_least_a & !above_z & (ONES * 0x80);
    w - (lower >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_upcases() {
        assert_eq!(fold("/App/x"), "/APP/X");
    }

    #[test]
    fn sharp_s_stays() {
        assert_eq!(upcase('ß'), 'ß');
        assert_eq!(fold("straße"), "STRAßE");
    }

    #[test]
    fn cyrillic_upcases() {
        assert_eq!(fold("/ф"), "/Ф");
        assert!(eq_folded("Ф", "ф"));
    }

    #[test]
    fn eq_folded_checks_length() {
        assert!(!eq_folded("AB", "a"));
        assert!(!eq_folded("A", "ab"));
        assert!(!eq_folded("Ф", "фф"));
    }

    #[test]
    fn hash_ignores_case() {
        let h = FoldHasher::new();
        let hash = |s: &str| h.hash(1, s, s.is_ascii());
        assert_eq!(hash("abc"), hash("ABC"));
        assert_eq!(hash("orders-and-more"), hash("ORDERS-and-MORE"));
        assert_eq!(hash(&"é".repeat(40)), hash(&"É".repeat(40)));
        assert_ne!(hash("abc"), h.hash(2, "abc", true));
        assert_ne!(hash("abc"), hash("abcd"));
        assert_ne!(hash("a"), hash("a\0"));
    }

    #[test]
    fn ascii_and_unicode_paths_agree() {
        // 'ſ' upper-cases to ASCII 'S': both ways must hash the same bytes the same way.
        let h = FoldHasher::new();
        let long_s = "ſ".repeat(19);
        let ascii = "S".repeat(19);
        assert!(eq_folded(&ascii, &long_s));
        assert_eq!(h.hash(0, &long_s, false), h.hash(0, &ascii, true));
    }

    #[test]
    fn tail_words() {
        for n in 1..8 {
            let bytes: Vec<u8> = (1..=n).collect();
            let mut padded = [0u8; 8];
            padded[..bytes.len()].copy_from_slice(&bytes);
            assert_eq!(tail_word(&bytes), u64::from_le_bytes(padded), "{n} bytes");
        }
    }

    #[test]
    fn ascii_steps_agree_with_the_generic_path() {
        let h = FoldHasher::new();
        for s in [
            "a",
            "ab",
            "abc",
            "abcd",
            "abcdefg",
            "abcdefgh",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            let (chain, words) = h.ascii_segment(7, s.as_bytes());
            let upper = s.to_ascii_uppercase();
            assert_eq!(chain, h.segment(7, &upper, false), "{s}");
            let mut expect = [0u8; 24];
            let n = upper.len().min(24);
            expect[..n].copy_from_slice(&upper.as_bytes()[..n]);
            let got: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(got, expect, "{s}");
        }
    }

    #[test]
    fn word_upper_casing() {
        let w = u64::from_le_bytes(*b"az{`AZ09");
        assert_eq!(upper_ascii_word(w).to_le_bytes(), *b"AZ{`AZ09");
    }
}
