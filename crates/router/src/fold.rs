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
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldHasher {
    seed: u64,
}

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
const FINAL: u64 = 0xD6E8_FEB8_6659_FD93;

impl FoldHasher {
    /// A hasher with a random seed.
    pub(crate) fn new() -> FoldHasher {
        use core::hash::BuildHasher;
        FoldHasher {
            seed: foldhash::fast::RandomState::default().hash_one(0x5eed_u64),
        }
    }

    /// Hashes `tag` (a parent node, or a table of hosts) with the folded form of `raw`;
    /// `ascii` must be `raw.is_ascii()`.
    #[inline]
    pub(crate) fn hash(&self, tag: u32, raw: &str, ascii: bool) -> u64 {
        let mut state = State {
            h: self.seed ^ u64::from(tag).wrapping_mul(MUL),
            word: 0,
            n: 0,
        };
        let len;
        if ascii {
            let bytes = raw.as_bytes();
            let mut words = bytes.chunks_exact(8);
            for w in &mut words {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                state.mix(upper_ascii_word(u64::from_le_bytes(b)));
            }
            let rest = words.remainder();
            if !rest.is_empty() {
                // The same zero-padded word push() would build, in one step.
                let mut b = [0u8; 8];
                b[..rest.len()].copy_from_slice(rest);
                state.word = upper_ascii_word(u64::from_le_bytes(b));
            }
            len = bytes.len();
        } else {
            let mut n = 0;
            for c in raw.chars() {
                let mut buf = [0u8; 4];
                for &b in upcase(c).encode_utf8(&mut buf).as_bytes() {
                    state.push(b);
                    n += 1;
                }
            }
            len = n;
        }
        state.finish(len)
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
        self.h = (self.h.rotate_left(23) ^ word).wrapping_mul(MUL);
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

    #[inline]
    fn finish(mut self, len: usize) -> u64 {
        let w = self.word;
        self.mix(w ^ ((len as u64) << 56));
        let m = u128::from(self.h) * u128::from(FINAL);
        (m as u64) ^ ((m >> 64) as u64)
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
    fn word_upper_casing() {
        let w = u64::from_le_bytes(*b"az{`AZ09");
        assert_eq!(upper_ascii_word(w).to_le_bytes(), *b"AZ{`AZ09");
    }
}
