//! Punycode (RFC 3492) decoding, for hosts that arrive in their ASCII-compatible form.

use std::borrow::Cow;

const BASE: u32 = 36;
const T_MIN: u32 = 1;
const T_MAX: u32 = 26;
const SKEW: u32 = 38;
const DAMP: u32 = 700;
const INITIAL_BIAS: u32 = 72;
const INITIAL_N: u32 = 128;

/// Turns every `xn--` label of a host name into Unicode; `None` when one does not decode.
pub(crate) fn to_unicode(host: &str) -> Option<Cow<'_, str>> {
    // On bytes: a label's fourth byte may be inside a character (`tesф`).
    let is_ace = |l: &str| {
        l.as_bytes()
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"xn--"))
    };
    if !host.split('.').any(is_ace) {
        return Some(Cow::Borrowed(host));
    }
    let mut out = String::with_capacity(host.len());
    for (i, label) in host.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if is_ace(label) {
            out.push_str(&decode(&label[4..])?);
        } else {
            out.push_str(label);
        }
    }
    Some(Cow::Owned(out))
}

/// Decodes one punycode label (without its `xn--`).
fn decode(input: &str) -> Option<String> {
    if input.is_empty() || !input.is_ascii() {
        return None;
    }
    let (basic, extended) = match input.rfind('-') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => ("", input),
    };
    let mut output: Vec<char> = basic.chars().collect();
    let mut n = INITIAL_N;
    let mut i: u32 = 0;
    let mut bias = INITIAL_BIAS;
    let mut digits = extended.bytes();
    let mut next = digits.next();
    while next.is_some() {
        let old_i = i;
        let mut w: u32 = 1;
        let mut k = BASE;
        loop {
            let digit = match next? {
                b @ b'a'..=b'z' => u32::from(b - b'a'),
                b @ b'A'..=b'Z' => u32::from(b - b'A'),
                b @ b'0'..=b'9' => u32::from(b - b'0') + 26,
                _ => return None,
            };
            next = digits.next();
            i = i.checked_add(digit.checked_mul(w)?)?;
            let t = if k <= bias {
                T_MIN
            } else if k >= bias + T_MAX {
                T_MAX
            } else {
                k - bias
            };
            if digit < t {
                break;
            }
            w = w.checked_mul(BASE - t)?;
            k += BASE;
        }
        let len = u32::try_from(output.len()).ok()? + 1;
        bias = adapt(i - old_i, len, old_i == 0);
        n = n.checked_add(i / len)?;
        i %= len;
        output.insert(usize::try_from(i).ok()?, char::from_u32(n)?);
        i += 1;
    }
    Some(output.into_iter().collect())
}

fn adapt(delta: u32, points: u32, first: bool) -> u32 {
    let mut delta = if first { delta / DAMP } else { delta / 2 };
    delta += delta / points;
    let mut k = 0;
    while delta > ((BASE - T_MIN) * T_MAX) / 2 {
        delta /= BASE - T_MIN;
        k += BASE;
    }
    k + (BASE - T_MIN + 1) * delta / (delta + SKEW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_samples() {
        assert_eq!(decode("bcher-kva").as_deref(), Some("bücher"));
        assert_eq!(decode("mnchen-3ya").as_deref(), Some("münchen"));
        assert_eq!(decode("wgv71a119e").as_deref(), Some("日本語"));
        assert_eq!(
            decode("ihqwcrb4cv8a8dqg056pqjye").as_deref(),
            Some("他们为什么不说中文")
        );
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(decode(""), None);
        assert_eq!(decode("!!"), None);
        assert_eq!(decode("99999999999999"), None);
    }

    #[test]
    fn plain_hosts_are_borrowed() {
        assert!(matches!(to_unicode("example.com"), Some(Cow::Borrowed(_))));
        assert_eq!(
            to_unicode("www.xn--mnchen-3ya.de").as_deref(),
            Some("www.münchen.de")
        );
    }
}
