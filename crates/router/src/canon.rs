//! URL canonicalization: from the raw request-target to the cooked path routing uses.
//!
//! The steps run in HTTP.sys's order (spec §3.1): request-target form, split of the query,
//! raw byte checks, one round of percent-decoding (with `%uNNNN`), bytes to characters
//! (UTF-8, then the code page), restricted characters, `\` to `/`, collapse of `//`, dot
//! segments, segment limits. The order matters: `/app1%2F..%2Fapp2/` ends in `/app2/`, so
//! a request can never reach an application by a path that canonicalizes outside its prefix.
//!
//! Most targets need none of it: an origin-form path of plain ASCII with no `%`, `\`, `//`
//! or dot segment is already cooked. A few branch-free passes over the bytes, which the
//! compiler turns into vector code, recognize such a target and borrow it as it is; anything
//! else goes through the steps one by one.

use std::borrow::Cow;

use crate::chars::{hex_digit, hex_pair, is_restricted};
use crate::codepage::CodePage;
use crate::reason::{Reason, Rejection};

/// The URL-parsing knobs of HTTP.sys's registry, with its defaults.
///
/// # Examples
///
/// ```
/// use portshare_router::UrlOptions;
///
/// let mut opts = UrlOptions::default();
/// opts.segment_max_length(64).percent_u(false);
/// let target = opts.canonicalize(b"/app1/%2e%2e/app2//x?q=%2F")?;
/// assert_eq!(target.path(), "/app2/x");
/// assert_eq!(target.query(), Some(&b"q=%2F"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct UrlOptions {
    percent_u: bool,
    code_page: Option<CodePage>,
    favor_utf8: bool,
    allow_restricted_chars: bool,
    segment_max_length: usize,
    segment_max_count: usize,
    max_url_length: usize,
}

impl Default for UrlOptions {
    fn default() -> UrlOptions {
        UrlOptions {
            percent_u: true,
            code_page: Some(CodePage::Windows1252),
            favor_utf8: true,
            allow_restricted_chars: false,
            segment_max_length: 260,
            segment_max_count: 255,
            max_url_length: 16384,
        }
    }
}

/// The largest `UrlSegmentMaxLength`; 0 also means this.
pub const SEGMENT_MAX_LENGTH_LIMIT: usize = 32766;
/// The largest `UrlSegmentMaxCount`; 0 also means this.
pub const SEGMENT_MAX_COUNT_LIMIT: usize = 16383;

impl UrlOptions {
    /// Decode `%uNNNN` escapes (`PercentUAllowed`). Default: true.
    pub fn percent_u(&mut self, yes: bool) -> &mut Self {
        self.percent_u = yes;
        self
    }

    /// The code page decoded bytes fall back to when they are not UTF-8, or `None` to refuse
    /// such URLs (`EnableNonUTF8`=0). Default: Windows-1252.
    pub fn code_page(&mut self, page: Option<CodePage>) -> &mut Self {
        self.code_page = page;
        self
    }

    /// Try UTF-8 before the code page (`FavorUTF8`). Default: true.
    pub fn favor_utf8(&mut self, yes: bool) -> &mut Self {
        self.favor_utf8 = yes;
        self
    }

    /// Let decoded control characters through (`AllowRestrictedChars`). Default: false.
    pub fn allow_restricted_chars(&mut self, yes: bool) -> &mut Self {
        self.allow_restricted_chars = yes;
        self
    }

    /// Longest path segment, in UTF-16 units as Windows counts characters, after decoding
    /// (`UrlSegmentMaxLength`); 0 means the maximum, 32766. Default: 260.
    pub fn segment_max_length(&mut self, n: usize) -> &mut Self {
        self.segment_max_length = match n {
            0 => SEGMENT_MAX_LENGTH_LIMIT,
            n => n.min(SEGMENT_MAX_LENGTH_LIMIT),
        };
        self
    }

    /// Most path segments (`UrlSegmentMaxCount`); 0 means the maximum, 16383. Default: 255.
    pub fn segment_max_count(&mut self, n: usize) -> &mut Self {
        self.segment_max_count = match n {
            0 => SEGMENT_MAX_COUNT_LIMIT,
            n => n.min(SEGMENT_MAX_COUNT_LIMIT),
        };
        self
    }

    /// Longest request-target in bytes before it is answered with 414; HTTP.sys bounds the
    /// URL by `MaxFieldLength`. Default: 16384.
    pub fn max_url_length(&mut self, n: usize) -> &mut Self {
        self.max_url_length = n;
        self
    }

    /// Canonicalizes a raw request-target.
    ///
    /// The result borrows from `raw`; it allocates only when the path needs decoding or
    /// normalizing.
    ///
    /// # Errors
    ///
    /// A [`UrlError`] with the status and httperr reason HTTP.sys answers with: 414
    /// `URL_Length` for an over-long target, 400 `BadRequest` for whitespace that breaks
    /// the request line, 400 `URL` for everything else.
    #[inline]
    pub fn canonicalize<'a>(&self, raw: &'a [u8]) -> Result<Target<'a>, UrlError> {
        if raw.len() > self.max_url_length {
            return Err(UrlError::TooLong);
        }
        // Branch-free, so it runs a vector at a time; what it finds is looked at below.
        let flags = byte_flags(raw);
        if flags & CONTROL != 0
            && let Some(&b) = raw.iter().find(|&&b| b < 0x20 || b == 0x7F || b == b' ')
        {
            return Err(if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                UrlError::BreaksRequestLine
            } else {
                UrlError::ControlByte
            });
        }
        match self.plain_origin(raw, flags) {
            Some(target) => Ok(target),
            None => self.canonicalize_checked(raw),
        }
    }

    /// [`canonicalize`](UrlOptions::canonicalize) after the length and control-byte checks,
    /// step by step.
    fn canonicalize_checked<'a>(&self, raw: &'a [u8]) -> Result<Target<'a>, UrlError> {
        let (form, rest) = match raw {
            b"*" => {
                return Ok(Target {
                    raw,
                    form: TargetForm::Asterisk,
                    path: Cow::Borrowed("*"),
                    query: None,
                });
            }
            [b'/', ..] => (TargetForm::Origin, raw),
            _ => split_absolute(raw)?,
        };
        let scan = Scan::of(rest);
        let (path, query) = match scan.query {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let path = if path.is_empty() {
            Cow::Borrowed("/")
        } else {
            self.cook(path, &scan)?
        };
        Ok(Target {
            raw,
            form,
            path,
            query,
        })
    }

    /// The common case, decided without the byte-by-byte [`Scan`]: an origin-form target
    /// whose path is ASCII and already cooked (no `%`, `\`, `//` or dot segment) and too
    /// short to break a segment limit. `None` when the target needs the full treatment.
    #[inline]
    fn plain_origin<'a>(&self, raw: &'a [u8], flags: u8) -> Option<Target<'a>> {
        if raw.first() != Some(&b'/') {
            return None;
        }
        let (path, query, flags) = if flags & QUERY == 0 {
            (raw, None, flags)
        } else {
            let q = raw.iter().position(|&b| b == b'?')?;
            let path = &raw[..q];
            (path, Some(&raw[q + 1..]), byte_flags(path))
        };
        // A segment is at least one byte and its '/': shorter paths cannot break a limit.
        let short =
            path.len() <= self.segment_max_length && path.len() / 2 <= self.segment_max_count;
        if flags & ODD != 0 || !short || slash_pairs(path) {
            return None;
        }
        Some(Target {
            raw,
            form: TargetForm::Origin,
            path: Cow::Borrowed(core::str::from_utf8(path).ok()?),
            query,
        })
    }

    fn cook<'a>(&self, path: &'a [u8], scan: &Scan) -> Result<Cow<'a, str>, UrlError> {
        let text = core::str::from_utf8(path).map_err(|_| UrlError::NotUtf8)?;
        let restricted = || !self.allow_restricted_chars && text.chars().any(is_restricted);
        if scan.clean && (scan.ascii || !restricted()) {
            if scan.ascii {
                if scan.segments > self.segment_max_count {
                    return Err(UrlError::TooManySegments);
                }
                if scan.longest > self.segment_max_length {
                    return Err(UrlError::SegmentTooLong);
                }
            } else {
                self.check_segments(text)?;
            }
            return Ok(Cow::Borrowed(text));
        }
        let decoded = self.decode(path)?;
        if !self.allow_restricted_chars && decoded.chars().any(is_restricted) {
            return Err(UrlError::Restricted);
        }
        let cooked = normalize(&decoded)?;
        self.check_segments(&cooked)?;
        Ok(Cow::Owned(cooked))
    }

    fn check_segments(&self, path: &str) -> Result<(), UrlError> {
        let mut count = 0;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            count += 1;
            if count > self.segment_max_count {
                return Err(UrlError::TooManySegments);
            }
            let units = if seg.is_ascii() {
                seg.len()
            } else {
                seg.chars().map(char::len_utf16).sum()
            };
            if units > self.segment_max_length {
                return Err(UrlError::SegmentTooLong);
            }
        }
        Ok(())
    }

    /// Percent-decodes once and turns the bytes into characters.
    fn decode(&self, path: &[u8]) -> Result<String, UrlError> {
        let mut bytes = Vec::with_capacity(path.len());
        // Byte ranges that came from %u escapes: already characters, never re-read through
        // the code page.
        let mut wide: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < path.len() {
            if path[i] != b'%' {
                bytes.push(path[i]);
                i += 1;
                continue;
            }
            if self.percent_u && matches!(path.get(i + 1), Some(b'u' | b'U')) {
                let (c, used) = percent_u(&path[i..])?;
                let start = bytes.len();
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                wide.push((start, bytes.len()));
                i += used;
                continue;
            }
            let hex = path.get(i + 1..i + 3).ok_or(UrlError::BadEscape)?;
            bytes.push(hex_pair(hex[0], hex[1]).ok_or(UrlError::BadEscape)?);
            i += 3;
        }
        let utf8 = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|e| e.into_bytes());
        let page = |bytes: &[u8], page: CodePage| {
            let mut s = String::with_capacity(bytes.len());
            let mut spans = wide.iter().peekable();
            let mut j = 0;
            while j < bytes.len() {
                if let Some(&&(start, end)) = spans.peek()
                    && start == j
                {
                    s.push_str(core::str::from_utf8(&bytes[start..end]).unwrap_or_default());
                    spans.next();
                    j = end;
                    continue;
                }
                s.push(page.decode(bytes[j]));
                j += 1;
            }
            s
        };
        match (self.favor_utf8, self.code_page) {
            (_, None) => utf8(bytes).map_err(|_| UrlError::Undecodable),
            (true, Some(cp)) => Ok(utf8(bytes).unwrap_or_else(|b| page(&b, cp))),
            (false, Some(cp)) => Ok(page(&bytes, cp)),
        }
    }
}

/// Percent-encodes a cooked path for a request line: every byte that is not an RFC 3986
/// path character (`%`, `?`, `#`, space, non-ASCII...) becomes `%XX`. Canonicalizing the
/// result gives back the same cooked path; a path that needs nothing is borrowed.
///
/// # Examples
///
/// ```
/// use portshare_router::encode_path;
///
/// assert_eq!(encode_path("/base path/100%/ф"), "/base%20path/100%25/%D1%84");
/// assert_eq!(encode_path("/plain/x.html"), "/plain/x.html");
/// ```
pub fn encode_path(path: &str) -> Cow<'_, str> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
    if path.bytes().all(keep) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + 16);
    for b in path.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Cow::Owned(out)
}

/// [`byte_flags`]: a control byte or space.
const CONTROL: u8 = 1;
/// [`byte_flags`]: a `?`.
const QUERY: u8 = 2;
/// [`byte_flags`]: a `%`, a `\` or a byte outside ASCII.
const ODD: u8 = 4;

/// Which kinds of bytes `bytes` holds. Each kind is its own branch-free pass over a
/// boolean, a loop the compiler runs a vector at a time.
#[inline]
fn byte_flags(bytes: &[u8]) -> u8 {
    let control = bytes
        .iter()
        .fold(false, |acc, &b| acc | (b <= b' ') | (b == 0x7F));
    let query = bytes.iter().fold(false, |acc, &b| acc | (b == b'?'));
    let odd = bytes.iter().fold(false, |acc, &b| {
        acc | (b == b'%') | (b == b'\\') | (b >= 0x80)
    });
    (u8::from(control) * CONTROL) | (u8::from(query) * QUERY) | (u8::from(odd) * ODD)
}

/// True when `path` has a `/` followed by `/` or `.`: an empty or maybe a dot segment.
#[inline]
fn slash_pairs(path: &[u8]) -> bool {
    let next = path.get(1..).unwrap_or_default();
    path.iter().zip(next).fold(false, |acc, (&a, &b)| {
        acc | ((a == b'/') & ((b == b'/') | (b == b'.')))
    })
}

/// What one pass over a raw path (and the query after it) tells.
struct Scan {
    /// Where the `?` is, if any.
    query: Option<usize>,
    /// Already cooked: starts with `/`, no `%`, `\`, `//` or dot segment.
    clean: bool,
    ascii: bool,
    segments: usize,
    /// The longest segment, in bytes.
    longest: usize,
}

/// Byte classes for the scan: a segment ends, the path needs decoding, a non-ASCII byte.
const END: u8 = 1;
const ESCAPE: u8 = 2;
const HIGH: u8 = 4;
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'/' as usize] = END;
    t[b'?' as usize] = END;
    t[b'%' as usize] = ESCAPE;
    t[b'\\' as usize] = ESCAPE;
    let mut b = 0x80;
    while b < 256 {
        t[b] = HIGH;
        b += 1;
    }
    t
};

impl Scan {
    /// Scans `rest` (path, then maybe `?query`) once, up to the `?`.
    fn of(rest: &[u8]) -> Scan {
        let mut scan = Scan {
            query: None,
            clean: rest.first() == Some(&b'/'),
            ascii: true,
            segments: 0,
            longest: 0,
        };
        let mut flags = 0u8;
        let mut start = 1;
        let mut i = 1;
        loop {
            let class = rest.get(i).map_or(END, |&b| CLASS[usize::from(b)]);
            if class & END == 0 {
                flags |= class;
                i += 1;
                continue;
            }
            let seg = rest.get(start..i).unwrap_or_default();
            let last = i >= rest.len() || rest[i] == b'?';
            if seg.is_empty() {
                // Only the segment after a trailing slash may be empty.
                scan.clean &= last;
            } else {
                scan.segments += 1;
                scan.longest = scan.longest.max(seg.len());
                scan.clean &= seg != b"." && seg != b"..";
            }
            if last {
                scan.query = (i < rest.len()).then_some(i);
                break;
            }
            i += 1;
            start = i;
        }
        scan.clean &= flags & ESCAPE == 0;
        scan.ascii = flags & HIGH == 0;
        scan
    }
}

/// Decodes `%uNNNN`, or a surrogate pair `%uD8xx%uDCxx`; returns the character and the
/// number of bytes used.
fn percent_u(s: &[u8]) -> Result<(char, usize), UrlError> {
    let unit = |s: &[u8]| -> Result<u16, UrlError> {
        let hex = s.get(2..6).ok_or(UrlError::BadEscape)?;
        hex.iter().try_fold(0u16, |acc, &b| {
            Ok(acc << 4 | u16::from(hex_digit(b).ok_or(UrlError::BadEscape)?))
        })
    };
    let hi = unit(s)?;
    if let Some(c) = char::from_u32(u32::from(hi)) {
        return Ok((c, 6));
    }
    // A surrogate: only a high one followed by an escaped low one makes a character.
    if (0xD800..0xDC00).contains(&hi) && matches!(s.get(6..8), Some([b'%', b'u' | b'U'])) {
        let lo = unit(&s[6..])?;
        if (0xDC00..0xE000).contains(&lo) {
            let c = 0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
            return char::from_u32(c)
                .map(|c| (c, 12))
                .ok_or(UrlError::BadEscape);
        }
    }
    Err(UrlError::BadEscape)
}

/// Turns `\` into `/`, collapses runs of `/`, then removes dot segments.
fn normalize(decoded: &str) -> Result<String, UrlError> {
    let mut out = String::with_capacity(decoded.len() + 1);
    // Byte offsets in `out` where each kept segment starts (after its '/').
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing = true;
    for seg in decoded.split(['/', '\\']).filter(|s| !s.is_empty()) {
        match seg {
            "." => trailing = true,
            ".." => {
                let start = starts.pop().ok_or(UrlError::AboveRoot)?;
                out.truncate(start - 1);
                trailing = true;
            }
            _ => {
                out.push('/');
                starts.push(out.len());
                out.push_str(seg);
                trailing = false;
            }
        }
    }
    if trailing || decoded.ends_with(['/', '\\']) {
        out.push('/');
    }
    Ok(out)
}

fn split_absolute(raw: &[u8]) -> Result<(TargetForm<'_>, &[u8]), UrlError> {
    let after = [&b"http://"[..], b"https://"]
        .iter()
        .find(|s| raw.len() >= s.len() && raw[..s.len()].eq_ignore_ascii_case(s))
        .map(|s| &raw[s.len()..])
        .ok_or(UrlError::Form)?;
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.is_empty() {
        return Err(UrlError::Form);
    }
    if rest.first() == Some(&b'?') {
        return Err(UrlError::QueryAfterAuthority);
    }
    Ok((TargetForm::Absolute { authority }, rest))
}

/// The form of a request-target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetForm<'a> {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query`: the authority is the host routing uses.
    Absolute {
        /// `host[:port]` as sent.
        authority: &'a [u8],
    },
    /// `*`, for `OPTIONS *`: routed as `/`, delivered with path `*`.
    Asterisk,
}

/// A canonicalized request-target.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    raw: &'a [u8],
    form: TargetForm<'a>,
    path: Cow<'a, str>,
    query: Option<&'a [u8]>,
}

impl<'a> Target<'a> {
    /// The target exactly as received (the raw URL).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Origin-form, absolute-form or `*`.
    pub fn form(&self) -> TargetForm<'a> {
        self.form
    }

    /// The cooked path: decoded, normalized, Unicode; `*` for an asterisk target.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path routing matches on: the cooked path, or `/` for `*`.
    pub fn routing_path(&self) -> &str {
        match self.form {
            TargetForm::Asterisk => "/",
            _ => &self.path,
        }
    }

    /// The raw query after `?`, never decoded; `None` when there is no `?`.
    pub fn query(&self) -> Option<&'a [u8]> {
        self.query
    }

    /// Takes ownership of the cooked path.
    pub fn into_path(self) -> Cow<'a, str> {
        self.path
    }
}

/// Why a request-target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UrlError {
    /// Longer than the URL limit: 414 `URL_Length`.
    TooLong,
    /// A space or line break inside the target breaks the request line: 400 `BadRequest`.
    BreaksRequestLine,
    /// A raw control byte: 400 `URL`.
    ControlByte,
    /// Raw bytes that are not UTF-8 in the path: 400 `URL`.
    NotUtf8,
    /// A `%` not followed by two hex digits, or a bad `%u` escape: 400 `URL`.
    BadEscape,
    /// Decoded bytes that are neither UTF-8 nor allowed in the code page: 400 `URL`.
    Undecodable,
    /// A decoded control character: 400 `URL`.
    Restricted,
    /// `..` climbing above the root: 400 `URL`.
    AboveRoot,
    /// A segment above `UrlSegmentMaxLength`: 400 `URL`.
    SegmentTooLong,
    /// More segments than `UrlSegmentMaxCount`: 400 `URL`.
    TooManySegments,
    /// Neither `/…`, `http://…`, `https://…` nor `*`: 400 `URL`.
    Form,
    /// `http://host?query`, a query right after the authority: 400 `URL`.
    QueryAfterAuthority,
}

impl UrlError {
    /// The response HTTP.sys sends.
    pub fn rejection(self) -> Rejection {
        match self {
            UrlError::TooLong => Rejection::new(414, Reason::UrlLength),
            UrlError::BreaksRequestLine => Rejection::new(400, Reason::BadRequest),
            _ => Rejection::new(400, Reason::Url),
        }
    }
}

impl core::fmt::Display for UrlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            UrlError::TooLong => "request URL is longer than the URL limit",
            UrlError::BreaksRequestLine => "whitespace inside the request-target",
            UrlError::ControlByte => "control byte in the request-target",
            UrlError::NotUtf8 => "raw bytes in the path that are not UTF-8",
            UrlError::BadEscape => "malformed percent escape",
            UrlError::Undecodable => "decoded path is neither UTF-8 nor in the code page",
            UrlError::Restricted => "decoded control character in the path",
            UrlError::AboveRoot => "'..' climbs above the root",
            UrlError::SegmentTooLong => "path segment longer than UrlSegmentMaxLength",
            UrlError::TooManySegments => "more path segments than UrlSegmentMaxCount",
            UrlError::Form => "request-target is not origin-form, absolute-form or '*'",
            UrlError::QueryAfterAuthority => "query directly after the authority",
        })
    }
}

impl std::error::Error for UrlError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn cook(raw: &[u8]) -> Result<String, UrlError> {
        UrlOptions::default()
            .canonicalize(raw)
            .map(|t| t.path().to_owned())
    }

    #[test]
    fn plain_path_is_borrowed() {
        let opts = UrlOptions::default();
        let t = opts.canonicalize(b"/app/x.html?a=b").unwrap();
        assert!(matches!(t.path, Cow::Borrowed(_)));
        assert_eq!(t.query(), Some(&b"a=b"[..]));
    }

    #[test]
    fn raw_utf8_is_borrowed() {
        let t = UrlOptions::default()
            .canonicalize("/ф/é".as_bytes())
            .unwrap();
        assert!(matches!(t.path, Cow::Borrowed("/ф/é")));
        let t = UrlOptions::default().canonicalize(b"/a/").unwrap();
        assert!(matches!(t.path, Cow::Borrowed("/a/")));
    }

    #[test]
    fn dot_dot_resolves() {
        assert_eq!(cook(b"/a/b/../c").unwrap(), "/a/c");
    }

    #[test]
    fn escaped_dots_resolve() {
        assert_eq!(cook(b"/app1/%2e%2e/app2/x").unwrap(), "/app2/x");
        assert_eq!(cook(b"/app1/%2E%2E/app2/x").unwrap(), "/app2/x");
        assert_eq!(cook(b"/base/call/.%2e/ball").unwrap(), "/base/ball");
    }

    #[test]
    fn escaped_slash_is_a_separator() {
        assert_eq!(cook(b"/app1%2F..%2Fapp2/x").unwrap(), "/app2/x");
        assert_eq!(cook(b"/base%2fball/x").unwrap(), "/base/ball/x");
    }

    #[test]
    fn backslash_is_a_separator() {
        assert_eq!(cook(b"/app1\\..\\app2\\x").unwrap(), "/app2/x");
        assert_eq!(cook(b"/base%5cball//path1").unwrap(), "/base/ball/path1");
    }

    #[test]
    fn slashes_collapse_before_dots() {
        assert_eq!(cook(b"/app2/call//../x").unwrap(), "/app2/x");
        assert_eq!(cook(b"///base//path").unwrap(), "/base/path");
        assert_eq!(cook(b"/a//").unwrap(), "/a/");
    }

    #[test]
    fn trailing_dot_segments_leave_a_slash() {
        assert_eq!(cook(b"/a/b/..").unwrap(), "/a/");
        assert_eq!(cook(b"/a/.").unwrap(), "/a/");
        assert_eq!(cook(b"/.").unwrap(), "/");
        assert_eq!(cook(b"/a/./b").unwrap(), "/a/b");
        assert_eq!(cook(b"/a/..b/...").unwrap(), "/a/..b/...");
    }

    #[test]
    fn climbing_above_root_is_refused() {
        assert_eq!(cook(b"/app1/../../app2/"), Err(UrlError::AboveRoot));
        assert_eq!(cook(b"/.."), Err(UrlError::AboveRoot));
        assert_eq!(cook(b"/%2e%2e/x"), Err(UrlError::AboveRoot));
    }

    #[test]
    fn decoded_once() {
        assert_eq!(cook(b"/%252e%252e/app2/x").unwrap(), "/%2e%2e/app2/x");
        assert_eq!(cook(b"/%252F").unwrap(), "/%2F");
    }

    #[test]
    fn malformed_escapes() {
        for raw in [
            &b"/%"[..],
            b"/%A",
            b"/path%XY",
            b"/%%32",
            b"/foo/%u",
            b"/%u12",
            b"/%u12G4",
        ] {
            assert_eq!(cook(raw), Err(UrlError::BadEscape), "{raw:?}");
        }
    }

    #[test]
    fn percent_u_decodes() {
        assert_eq!(cook(b"/%u0061pp").unwrap(), "/app");
        assert_eq!(cook(b"/%uD83D%uDE00").unwrap(), "/\u{1F600}");
        assert_eq!(cook(b"/%uD83D"), Err(UrlError::BadEscape));
        let mut off = UrlOptions::default();
        off.percent_u(false);
        assert_eq!(
            off.canonicalize(b"/%u0061").unwrap_err(),
            UrlError::BadEscape
        );
    }

    #[test]
    fn utf8_then_code_page() {
        assert_eq!(cook(b"/%D0%A4").unwrap(), "/Ф");
        assert_eq!(cook(b"/%C0%A4").unwrap(), "/À¤");
        assert_eq!(cook(b"/%E9t%E9").unwrap(), "/été");
        assert_eq!(cook(b"/%F0%8F%8F%BF"), Err(UrlError::Restricted));
        let mut strict = UrlOptions::default();
        strict.code_page(None);
        assert_eq!(
            strict.canonicalize(b"/%E9").unwrap_err(),
            UrlError::Undecodable
        );
    }

    #[test]
    fn percent_u_survives_code_page_fallback() {
        assert_eq!(cook(b"/%E9%u0444").unwrap(), "/éф");
    }

    #[test]
    fn restricted_characters() {
        for raw in [
            &b"/%00"[..],
            b"/%1F",
            b"/%7F",
            b"/%C2%85",
            "/\u{85}".as_bytes(),
        ] {
            assert_eq!(cook(raw), Err(UrlError::Restricted), "{raw:?}");
        }
        let mut lax = UrlOptions::default();
        lax.allow_restricted_chars(true);
        assert_eq!(lax.canonicalize(b"/%01").unwrap().path(), "/\u{1}");
    }

    #[test]
    fn raw_bytes() {
        assert_eq!(cook(b"/a b"), Err(UrlError::BreaksRequestLine));
        assert_eq!(cook(b"/\x01"), Err(UrlError::ControlByte));
        assert_eq!(cook(b"/\xe1"), Err(UrlError::NotUtf8));
        assert_eq!(cook(b"/\xe9t\xe9"), Err(UrlError::NotUtf8));
    }

    #[test]
    fn query_stays_raw() {
        let t = UrlOptions::default()
            .canonicalize("/app/x?y=%2F..%2F..&z=é".as_bytes())
            .unwrap();
        assert_eq!(t.path(), "/app/x");
        assert_eq!(t.query(), Some("y=%2F..%2F..&z=é".as_bytes()));
    }

    #[test]
    fn absolute_form() {
        let t = UrlOptions::default()
            .canonicalize(b"http://Host:5001")
            .unwrap();
        assert_eq!(t.path(), "/");
        assert_eq!(
            t.form(),
            TargetForm::Absolute {
                authority: b"Host:5001"
            }
        );
        let t = UrlOptions::default()
            .canonicalize(b"HTTPS://h/a/../b?x")
            .unwrap();
        assert_eq!(t.path(), "/b");
        assert_eq!(
            UrlOptions::default()
                .canonicalize(b"http://h:1?x")
                .unwrap_err(),
            UrlError::QueryAfterAuthority
        );
        assert_eq!(
            UrlOptions::default()
                .canonicalize(b"http:///x")
                .unwrap_err(),
            UrlError::Form
        );
    }

    #[test]
    fn other_forms() {
        let t = UrlOptions::default().canonicalize(b"*").unwrap();
        assert_eq!((t.path(), t.routing_path()), ("*", "/"));
        assert_eq!(
            UrlOptions::default().canonicalize(b"").unwrap_err(),
            UrlError::Form
        );
        assert_eq!(
            UrlOptions::default().canonicalize(b"x/y").unwrap_err(),
            UrlError::Form
        );
        assert_eq!(
            UrlOptions::default().canonicalize(b"*x").unwrap_err(),
            UrlError::Form
        );
    }

    #[test]
    fn segment_limits() {
        let mut opts = UrlOptions::default();
        opts.segment_max_length(3).segment_max_count(2);
        assert!(opts.canonicalize(b"/abc/def/").is_ok());
        assert_eq!(
            opts.canonicalize(b"/abcd").unwrap_err(),
            UrlError::SegmentTooLong
        );
        assert_eq!(
            opts.canonicalize(b"/a/b/c").unwrap_err(),
            UrlError::TooManySegments
        );
        // Counted after decoding: %61 is one character.
        assert!(opts.canonicalize(b"/%61%61%61").is_ok());
        // Counted in UTF-16 units, as Windows counts characters.
        assert_eq!(
            opts.canonicalize("/\u{1F600}\u{1F600}".as_bytes())
                .unwrap_err(),
            UrlError::SegmentTooLong
        );
        let defaults = UrlOptions::default();
        let long = format!("/{}", "a".repeat(261));
        assert_eq!(
            defaults.canonicalize(long.as_bytes()).unwrap_err(),
            UrlError::SegmentTooLong
        );
        let many = "/a".repeat(256);
        assert_eq!(
            defaults.canonicalize(many.as_bytes()).unwrap_err(),
            UrlError::TooManySegments
        );
    }

    /// The shortcut for plain targets gives what the step-by-step way gives.
    #[test]
    fn plain_origin_agrees_with_the_full_way() {
        let mut small = UrlOptions::default();
        small.segment_max_length(3).segment_max_count(2);
        let mut inputs: Vec<Vec<u8>> = [
            &b"/"[..],
            b"/a",
            b"/a/",
            b"/app/x.html",
            b"/app/x.html?a=b",
            b"/app/x?",
            b"/?",
            b"/?q=%2F..%2F",
            b"/a/.b",
            b"/a/./b",
            b"/a/..",
            b"/a/.",
            b"/a//b",
            b"/a/b/",
            b"/abc/def/",
            b"/abcd",
            b"/a/b/c",
            b"/a%20b",
            b"/a\\b",
            b"/\xc3\xa9",
            b"/a?b/../c",
            b"/a.b/c..d/...",
            b"/api/users/xyz/abc/12345678/1234567/1234",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        // Every short string over the characters that matter.
        let alphabet = b"/.a?%\\";
        for len in 1..=5 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut s = vec![b'/'];
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                inputs.push(s);
            }
        }
        let mut taken = 0;
        for opts in [UrlOptions::default(), small] {
            for raw in &inputs {
                let Some(fast) = opts.plain_origin(raw, byte_flags(raw)) else {
                    continue;
                };
                taken += 1;
                let full = opts
                    .canonicalize_checked(raw)
                    .expect("plain targets are valid");
                assert_eq!(fast.path(), full.path(), "{raw:?}");
                assert!(matches!(fast.path, Cow::Borrowed(_)), "{raw:?}");
                assert_eq!(fast.query(), full.query(), "{raw:?}");
                assert_eq!(
                    (fast.form(), fast.raw()),
                    (full.form(), full.raw()),
                    "{raw:?}"
                );
            }
        }
        assert!(taken > 500, "{taken}");
    }

    #[test]
    fn url_length_limit() {
        let mut opts = UrlOptions::default();
        opts.max_url_length(8);
        assert!(opts.canonicalize(b"/1234567").is_ok());
        let err = opts.canonicalize(b"/12345678").unwrap_err();
        assert_eq!(err.rejection(), Rejection::new(414, Reason::UrlLength));
    }
}
