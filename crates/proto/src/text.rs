//! Text from other accounts, made safe to show: queue names, command lines and user names
//! reach an administrator's terminal and the daemon's log, and a local user must not be
//! able to put terminal escape sequences or bidirectional overrides there. And numbers with
//! their nouns, singular or plural ([`count`]).
//!
//! ```
//! use portshare_proto::text::{is_hidden, printable};
//!
//! assert_eq!(printable("app\u{1b}[2J"), "app\\u{1b}[2J");
//! assert_eq!(printable("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
//! assert_eq!(printable("plain é"), "plain é");
//! assert!(is_hidden('\u{2066}') && is_hidden('\n') && !is_hidden('é'));
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters of Unicode general category Cf (format), as of Unicode 16: invisible
/// characters that change how text around them is shown, the bidirectional controls among
/// them. Inclusive ranges, sorted.
const FORMAT: &[(char, char)] = &[
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// Whether `c` is a control (Cc) or format (Cf) character: one that a terminal acts on or
/// that reorders or hides the text around it.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || FORMAT
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// `s` with every [hidden](is_hidden) character written as `\u{XXXX}`, as Rust writes it.
/// Borrows when there is nothing to escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_hidden(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `n` and the noun that goes with it: `1 registration`, `2 registrations`, `0 queues`.
///
/// ```
/// use portshare_proto::text::count;
///
/// assert_eq!(count(1u32, "queue", "queues"), "1 queue");
/// assert_eq!(count(0u64, "queue", "queues"), "0 queues");
/// ```
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_table_is_sorted_and_disjoint() {
        for pair in FORMAT.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
    }

    #[test]
    fn controls_and_format_characters_are_hidden() {
        for c in [
            '\0',
            '\u{7}',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9b}',
            '\u{ad}',
            '\u{200b}',
            '\u{200e}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            assert!(is_hidden(c), "{:x}", u32::from(c));
        }
        for c in [
            'a',
            ' ',
            '~',
            'é',
            '中',
            '\u{2065}',
            '\u{1f600}',
            '\u{fffd}',
        ] {
            assert!(!is_hidden(c), "{:x}", u32::from(c));
        }
    }

    #[test]
    fn escapes_are_visible_and_plain_text_is_borrowed() {
        assert!(matches!(
            printable("nginx -g daemon off;"),
            Cow::Borrowed(_)
        ));
        assert_eq!(printable("\u{1b}]0;owned\u{7}"), "\\u{1b}]0;owned\\u{7}");
        assert_eq!(printable("a\tb\r\n"), "a\\u{9}b\\u{d}\\u{a}");
    }
}
