//! Case folding by simple per-character upper-casing, the comparison HTTP.sys uses for
//! hosts and paths.
//!
//! A character whose upper case is more than one character (`ß` → `SS`) stays as it is,
//! so folding never changes a string's length in characters and stored upper-case keys
//! compare equal to the requests that reach them.

use core::hash::{BuildHasher, Hasher};

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

/// Hashes `tag` and the folded form of `raw` without allocating.
///
/// The folded bytes are fed to the hasher in fixed 64-byte blocks, so the same folded text
/// always hashes the same whatever case it arrived in.
#[inline]
pub(crate) fn hash_folded<S: BuildHasher>(state: &S, tag: u32, raw: &str) -> u64 {
    let mut h = state.build_hasher();
    h.write_u32(tag);
    let mut buf = [0u8; 64];
    let mut n = 0;
    if raw.is_ascii() {
        for chunk in raw.as_bytes().chunks(64) {
            for (d, s) in buf.iter_mut().zip(chunk) {
                *d = s.to_ascii_uppercase();
            }
            h.write(&buf[..chunk.len()]);
        }
        h.write_usize(raw.len());
        return h.finish();
    }
    let mut len = 0;
    for c in raw.chars() {
        let u = upcase(c);
        if n + u.len_utf8() > buf.len() {
            h.write(&buf[..n]);
            n = 0;
        }
        n += u.encode_utf8(&mut buf[n..]).len();
        len += u.len_utf8();
        if n == buf.len() {
            h.write(&buf[..n]);
            n = 0;
        }
    }
    if n > 0 {
        h.write(&buf[..n]);
    }
    h.write_usize(len);
    h.finish()
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
    fn hash_ignores_case_and_block_boundaries() {
        let s = foldhash::fast::FixedState::with_seed(7);
        let long_lower = "é".repeat(40);
        let long_upper = "É".repeat(40);
        assert_eq!(
            hash_folded(&s, 1, &long_lower),
            hash_folded(&s, 1, &long_upper)
        );
        assert_eq!(hash_folded(&s, 1, "abc"), hash_folded(&s, 1, "ABC"));
        assert_ne!(hash_folded(&s, 1, "abc"), hash_folded(&s, 2, "abc"));
        // 'ſ' folds to ASCII 'S': both branches must produce the same blocks.
        let long_s = "ſ".repeat(70);
        let ascii = "S".repeat(70);
        assert!(eq_folded(&ascii, &long_s));
        assert_eq!(hash_folded(&s, 0, &long_s), hash_folded(&s, 0, &ascii));
    }
}
