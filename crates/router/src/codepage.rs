//! The ANSI code page fallback of URL decoding (`EnableNonUTF8`).

/// A single-byte code page that decoded URL bytes fall back to when they are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CodePage {
    /// Windows-1252, the ANSI code page of Western-European Windows installations.
    #[default]
    Windows1252,
    /// ISO-8859-1: every byte is the code point of the same value.
    Latin1,
}

impl CodePage {
    /// The character a byte stands for in this code page.
    ///
    /// The five bytes Windows-1252 leaves unassigned (0x81, 0x8D, 0x8F, 0x90, 0x9D) map to
    /// the C1 control characters of the same value, as Windows converts them; the
    /// restricted-character check then refuses them.
    pub fn decode(self, b: u8) -> char {
        match self {
            CodePage::Latin1 => char::from(b),
            CodePage::Windows1252 => match b {
                0x80..=0x9F => WINDOWS_1252_HIGH[usize::from(b - 0x80)],
                _ => char::from(b),
            },
        }
    }
}

/// Windows-1252 from 0x80 to 0x9F; the rest of the page equals Latin-1.
const WINDOWS_1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}',
    '\u{0090}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euro_and_latin() {
        assert_eq!(CodePage::Windows1252.decode(0x80), '€');
        assert_eq!(CodePage::Windows1252.decode(0xE9), 'é');
        assert_eq!(CodePage::Windows1252.decode(0x41), 'A');
        assert_eq!(CodePage::Latin1.decode(0x80), '\u{80}');
    }

    #[test]
    fn unassigned_bytes_are_c1_controls() {
        for b in [0x81u8, 0x8D, 0x8F, 0x90, 0x9D] {
            assert_eq!(CodePage::Windows1252.decode(b) as u32, u32::from(b));
        }
    }
}
