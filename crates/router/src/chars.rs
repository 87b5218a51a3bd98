//! Byte and character classes that both prefixes and request targets use: hex digits of
//! percent-escapes, and the characters HTTP.sys refuses in a decoded URL. A leaf: it imports
//! nothing of the crate, so `prefix` and `canon` need not import each other.

/// The byte two hex digits spell, or `None` when either is not one.
pub(crate) fn hex_pair(a: u8, b: u8) -> Option<u8> {
    Some(hex_digit(a)? << 4 | hex_digit(b)?)
}

/// The value of one hex digit, either case.
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True for the characters HTTP.sys refuses after decoding unless `AllowRestrictedChars`:
/// U+0000–U+001F and U+007F–U+009F.
pub(crate) fn is_restricted(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(hex_pair(b'2', b'F'), Some(0x2F));
        assert_eq!(hex_pair(b'a', b'0'), Some(0xA0));
        assert_eq!(hex_pair(b'g', b'0'), None);
        assert!(is_restricted('\u{7f}') && is_restricted('\0') && !is_restricted(' '));
    }
}
