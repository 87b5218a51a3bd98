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
/// The hash is defined on the folded UTF-8 bytes, taken 16 at a time as two little-endian
/// words (the last block zero-padded, with the length mixed in), each block costing one
/// 64×64→128-bit multiply. An ASCII segment is read and upper-cased a block at a time with
/// a few bit operations, any other text byte by byte, with the same result for the same
/// folded text. The seeds are random per table, so nobody can pick colliding segments in
/// advance.
///
/// Paths are hashed as a chain: [`start`](FoldHasher::start) gives the chain value of a
/// tree's root, and [`key`](FoldHasher::key) extends a chain value by one segment; the
/// chain value after a segment is the hash of the edge that segment takes. So the hash of
/// every step of a walk is known from the path alone, not from the edge found before it:
/// the processor can start a step's probe before the previous one's cache miss is served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldHasher {
    seed: u64,
    /// Mixed into the second word of every block.
    block: u64,
}

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// The most bytes of a folded segment kept as words for comparison.
pub(crate) const WORDS_LEN: usize = 16;

/// [`Key::len`] of a segment not kept as words: longer than [`WORDS_LEN`] bytes, or not
/// ASCII once folded.
pub(crate) const LONG: u8 = 31;

/// What a walk compares one segment by: its chain value, and its folded bytes as words when
/// they fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Key {
    /// The chain value after this segment: the hash of the edge it takes.
    pub(crate) chain: u64,
    /// The folded segment as zero-padded little-endian words when `len` is not [`LONG`];
    /// equal words and lengths mean equal folded segments.
    pub(crate) words: [u64; 2],
    /// The folded length in bytes (1 to [`WORDS_LEN`]), or [`LONG`].
    pub(crate) len: u8,
}

impl FoldHasher {
    /// A hasher with random seeds.
    pub(crate) fn new() -> FoldHasher {
        use core::hash::BuildHasher;
        let random = foldhash::fast::RandomState::default();
        FoldHasher {
            seed: random.hash_one(0x5eed_u64),
            // Odd, so it is never zero.
            block: random.hash_one(0xb10c_u64) | 1,
        }
    }

    /// The chain value of the empty path in the tree (or table) named `root`.
    #[inline(always)]
    pub(crate) fn start(&self, root: u32) -> u64 {
        fold_mul(self.seed ^ u64::from(root), MUL)
    }

    /// Mixes one 16-byte block into `chain`; `last` is the segment's length for its last
    /// block, 0 for the others.
    #[inline(always)]
    fn block(&self, chain: u64, w0: u64, w1: u64, last: usize) -> u64 {
        fold_mul(chain ^ w0, w1 ^ self.block ^ (last as u64).rotate_right(8))
    }

    /// The [`Key`] of `raw` after the chain value `chain`; `ascii` must be `raw.is_ascii()`.
    #[inline]
    pub(crate) fn key(&self, chain: u64, raw: &str, ascii: bool) -> Key {
        if ascii {
            return self.ascii_key(chain, raw.as_bytes());
        }
        let mut h = chain;
        let mut block = [0u64; 2];
        let mut len = 0;
        let mut words = [0u64; 2];
        let mut folded_ascii = true;
        for c in raw.chars() {
            let mut buf = [0u8; 4];
            for &b in upcase(c).encode_utf8(&mut buf).as_bytes() {
                if len > 0 && len % 16 == 0 {
                    h = self.block(h, block[0], block[1], 0);
                    block = [0; 2];
                }
                block[len % 16 / 8] |= u64::from(b) << (8 * (len % 8));
                if len < WORDS_LEN {
                    words = block;
                }
                folded_ascii &= b.is_ascii();
                len += 1;
            }
        }
        let inline = folded_ascii && len <= WORDS_LEN;
        Key {
            chain: self.block(h, block[0], block[1], len),
            words: if inline { words } else { [0; 2] },
            len: if inline { len as u8 } else { LONG },
        }
    }

    /// [`key`](FoldHasher::key) for ASCII bytes.
    #[inline]
    pub(crate) fn ascii_key(&self, chain: u64, bytes: &[u8]) -> Key {
        let mut h = chain;
        let mut blocks = bytes.chunks(16);
        let last = blocks.next_back().unwrap_or_default();
        for b in blocks {
            let (w0, w1) = split(first_16(b));
            h = self.block(h, upper_ascii(w0), upper_ascii(w1), 0);
        }
        let (w0, w1) = split(first_16(last));
        let (w0, w1) = (upper_ascii(w0), upper_ascii(w1));
        let n = bytes.len();
        let inline = (1..=WORDS_LEN).contains(&n);
        Key {
            chain: self.block(h, w0, w1, n),
            words: if inline { [w0, w1] } else { [0; 2] },
            len: if inline { n as u8 } else { LONG },
        }
    }

    /// Reads the segment of `path` that starts at byte `start` (after a `/`) and hashes it
    /// onto `chain` in the same pass: its key and where it ends (the next `/` or the end).
    ///
    /// A segment of up to [`WORDS_LEN`] ASCII bytes is found, folded and hashed as one
    /// 16-byte block; longer and non-ASCII segments take the byte-wise way.
    #[inline(always)]
    pub(crate) fn next_key(&self, chain: u64, path: &str, start: usize) -> (Key, usize) {
        let bytes = path.as_bytes();
        let rest = bytes.len().saturating_sub(start);
        let (a, b) = split(window(bytes, start));
        let slash = match first_byte(a, b'/') {
            8 => 8 + first_byte(b, b'/'),
            i => i,
        };
        let n = slash.min(rest);
        // Past 16 bytes without a '/', the segment's end is not known yet.
        if (slash < WORDS_LEN || rest <= WORDS_LEN) && n > 0 {
            let (a, b) = (low_bytes(a, n), low_bytes(b, n.saturating_sub(8)));
            if (a | b) & HIGHS == 0 {
                let (w0, w1) = (upper_ascii(a), upper_ascii(b));
                let key = Key {
                    chain: self.block(chain, w0, w1, n),
                    words: [w0, w1],
                    len: n as u8,
                };
                return (key, start + n);
            }
        }
        let end = bytes
            .get(start..)
            .and_then(|tail| tail.iter().position(|&b| b == b'/'))
            .map_or(bytes.len(), |i| start + i);
        // '/' is ASCII, so both ends are character boundaries.
        let seg = path.get(start..end).unwrap_or_default();
        (self.key(chain, seg, seg.is_ascii()), end)
    }

    /// Hashes `tag` with the folded form of `raw`; `ascii` must be `raw.is_ascii()`.
    #[inline]
    pub(crate) fn hash(&self, tag: u32, raw: &str, ascii: bool) -> u64 {
        self.key(self.start(tag), raw, ascii).chain
    }
}

/// The high and low halves of the 128-bit product, exclusive-or'ed.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

#[inline(always)]
fn split(block: u128) -> (u64, u64) {
    (block as u64, (block >> 64) as u64)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = ONES * 0x80;

/// The 16 bytes of `bytes` from `at` as a little-endian number, zero-padded past the end.
#[inline(always)]
fn window(bytes: &[u8], at: usize) -> u128 {
    // One load of the last 16 bytes from `at`, shifted, when the path is long enough.
    if let Some(last) = bytes.len().checked_sub(16) {
        let from = at.min(last);
        if let Some(&w) = bytes
            .get(from..from + 16)
            .and_then(|w| <&[u8; 16]>::try_from(w).ok())
        {
            return u128::from_le_bytes(w) >> (8 * (at - from).min(15));
        }
    }
    first_16(bytes.get(at..).unwrap_or_default())
}

/// The first 16 bytes of `bytes` as a little-endian number, zero-padded past the end.
#[inline(always)]
fn first_16(bytes: &[u8]) -> u128 {
    match bytes.split_at_checked(8) {
        Some((lo, hi)) => u128::from(first_8(lo)) | u128::from(first_8(hi)) << 64,
        None => u128::from(first_8(bytes)),
    }
}

/// The first 8 bytes of `bytes` as a little-endian word, zero-padded past the end, read
/// with at most two overlapping loads rather than a copy of variable length.
#[inline(always)]
fn first_8(bytes: &[u8]) -> u64 {
    let le32 = |at: usize| {
        u64::from(u32::from_le_bytes([
            bytes[at],
            bytes[at + 1],
            bytes[at + 2],
            bytes[at + 3],
        ]))
    };
    match *bytes {
        [a, b, c, d, e, f, g, h, ..] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
        // The bytes the two loads share are the same, so OR-ing them is harmless.
        [_, _, _, _, ..] => le32(0) | le32(bytes.len() - 4) << (8 * (bytes.len() - 4)),
        [a, b, c] => u64::from(a) | u64::from(b) << 8 | u64::from(c) << 16,
        [a, b] => u64::from(a) | u64::from(b) << 8,
        [a] => u64::from(a),
        [] => 0,
    }
}

/// The index of the first byte of `w` equal to `c`, or 8.
#[inline(always)]
fn first_byte(w: u64, c: u8) -> usize {
    let x = w ^ (ONES * u64::from(c));
    // Exact for the lowest zero byte; a borrow can only mark bytes above it.
    let zero = x.wrapping_sub(ONES) & !x & HIGHS;
    (zero.trailing_zeros() / 8) as usize
}

/// The low `k` bytes of `w` (all of them from 8 on).
#[inline(always)]
fn low_bytes(w: u64, k: usize) -> u64 {
    match k {
        0 => 0,
        1..8 => w & ((1u64 << (8 * k)) - 1),
        _ => w,
    }
}

/// Upper-cases the ASCII letters of 8 ASCII bytes at once.
#[inline(always)]
fn upper_ascii(w: u64) -> u64 {
    // Bytes are below 0x80, so these additions never carry into the next byte.
    let at_least_a = w.wrapping_add(ONES * (0x80 - u64::from(b'a')));
    let above_z = w.wrapping_add(ONES * (0x80 - u64::from(b'z') - 1));
    let lower = at_least_a & !above_z & HIGHS;
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
    fn short_loads() {
        for n in 0..=20u8 {
            let bytes: Vec<u8> = (1..=n).collect();
            let mut padded = [0u8; 16];
            let k = bytes.len().min(16);
            padded[..k].copy_from_slice(&bytes[..k]);
            assert_eq!(first_16(&bytes), u128::from_le_bytes(padded), "{n} bytes");
            for at in 0..bytes.len() {
                let mut padded = [0u8; 16];
                let k = (bytes.len() - at).min(16);
                padded[..k].copy_from_slice(&bytes[at..at + k]);
                assert_eq!(
                    window(&bytes, at),
                    u128::from_le_bytes(padded),
                    "{n} at {at}"
                );
            }
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
            "abcdefghi",
            "abcdefghijklmno",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            let key = h.ascii_key(7, s.as_bytes());
            let upper = s.to_ascii_uppercase();
            assert_eq!(key, h.key(7, &upper, false), "{s}");
            assert_eq!(key, h.key(7, s, true), "{s}");
            if s.len() <= WORDS_LEN {
                let mut expect = [0u8; 16];
                expect[..upper.len()].copy_from_slice(upper.as_bytes());
                let got: Vec<u8> = key.words.iter().flat_map(|w| w.to_le_bytes()).collect();
                assert_eq!(got, expect, "{s}");
                assert_eq!(usize::from(key.len), s.len());
            } else {
                assert_eq!(key.len, LONG);
            }
        }
    }

    #[test]
    fn non_ascii_that_folds_to_ascii_keeps_words() {
        let h = FoldHasher::new();
        // 'ſ' upper-cases to 'S': the key is the one of "SS".
        assert_eq!(h.key(3, "ſſ", false), h.ascii_key(3, b"ss"));
        assert_eq!(h.key(3, "фф", false).len, LONG);
        assert_eq!(h.key(3, &"ſ".repeat(17), false).len, LONG);
    }

    #[test]
    fn next_key_splits_and_hashes_like_key() {
        let h = FoldHasher::new();
        for path in [
            "/a",
            "/a/",
            "/abc/de",
            "/abcdefgh/x",
            "/abcdefghijklmno/x",
            "/abcdefghijklmnop",
            "/abcdefghijklmnop/",
            "/abcdefghijklmnopq/r",
            "/0123456789abcdefghijklmnopqrstuvwxyz/z",
            "/ф/é/x",
            "/aф/ſ",
            "/App/V1/Users/42/1234567/x",
        ] {
            let mut start = 1;
            let mut chain = h.start(0);
            while start < path.len() {
                let (key, end) = h.next_key(chain, path, start);
                let seg = &path[start..end];
                assert!(!seg.contains('/'), "{path}: {seg}");
                assert!(end == path.len() || path.as_bytes()[end] == b'/', "{path}");
                assert_eq!(key, h.key(chain, seg, seg.is_ascii()), "{path}: {seg}");
                chain = key.chain;
                start = end + 1;
            }
        }
    }

    #[test]
    fn first_bytes() {
        let w = u64::from_le_bytes(*b"ab/c/d\x80\x2f");
        assert_eq!(first_byte(w, b'/'), 2);
        assert_eq!(first_byte(u64::from_le_bytes(*b"abcdefgh"), b'/'), 8);
        let mut high = [0x80u8; 8];
        high[1] = 0xAF;
        high[6] = b'/';
        assert_eq!(first_byte(u64::from_le_bytes(high), b'/'), 6);
    }

    #[test]
    fn word_upper_casing() {
        let w = u64::from_le_bytes(*b"az{`AZ09");
        assert_eq!(upper_ascii(w).to_le_bytes(), *b"AZ{`AZ09");
        let w = u64::from_le_bytes(*b"@[_~\x7fmn/");
        assert_eq!(upper_ascii(w).to_le_bytes(), *b"@[_~\x7fMN/");
    }
}
