//! The control API's paths, for the daemon that routes them and the clients that build them.
//!
//! The fixed ones are constants. A queue's path carries the queue's name as one path
//! segment, every byte but unreserved ASCII (`A-Z a-z 0-9 - . _ ~`) `%XX`-encoded, so any
//! name makes a path: [`queue`] builds it, [`split_queue`] and [`decode_name`] take it apart.
//!
//! ```
//! use portshare_proto::control::path;
//!
//! let p = path::queue("my app", path::URLS);
//! assert_eq!(p, "/v1/queues/my%20app/urls");
//! let (segment, rest) = path::split_queue(&p).ok_or("not a queue's path")?;
//! assert_eq!((path::decode_name(segment).as_deref(), rest), (Some("my app"), path::URLS));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// `GET`: the state view ([`ServiceState`](super::ServiceState)).
pub const STATE: &str = "/v1/state";
/// `GET`: the counters ([`Metrics`](super::Metrics)).
pub const METRICS: &str = "/v1/metrics";
/// `GET`, `POST`, `DELETE`: the URL reservations.
pub const URLACL: &str = "/v1/urlacl";
/// `GET`, `POST`, `DELETE`: the IP listen list.
pub const IPLISTEN: &str = "/v1/iplisten";
/// `GET`, `POST`, `DELETE`: the certificate bindings (see [`crate::sslcert`]).
pub const SSLCERT: &str = "/v1/sslcert";
/// `POST`: read the configuration file again.
pub const RELOAD: &str = "/v1/reload";
/// `POST`: create or open a queue. A queue's own path is below it: see [`queue`].
pub const QUEUES: &str = "/v1/queues";

/// After a queue's path: its URLs (`POST` adds one, `DELETE` removes one).
pub const URLS: &str = "/urls";
/// After a queue's path: its access list (`POST`).
pub const ACCESS: &str = "/access";
/// After a queue's path: declare a held upstream queue ready, or hold it again (`POST`).
pub const READY: &str = "/ready";
/// After a queue's path: attach a worker (`POST` with `Upgrade`).
pub const ATTACH: &str = "/attach";

/// `/v1/queues/{name}{rest}`, the name encoded as one segment; `rest` is empty or one of
/// [`URLS`], [`ACCESS`], [`READY`], [`ATTACH`].
pub fn queue(name: &str, rest: &str) -> String {
    let mut path = String::with_capacity(QUEUES.len() + 1 + name.len() * 3 + rest.len());
    path.push_str(QUEUES);
    path.push('/');
    push_encoded(&mut path, name);
    path.push_str(rest);
    path
}

/// `text` with every byte but unreserved ASCII `%XX`-encoded, as a queue's path segment or
/// a query's value carries it; [`decode_name`] undoes it.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    push_encoded(&mut out, text);
    out
}

fn push_encoded(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Takes `/v1/queues/{segment}{rest}` apart: the name's segment, still encoded, and what
/// follows it (empty, or starting with `/`). `None` for a path not below [`QUEUES`].
pub fn split_queue(path: &str) -> Option<(&str, &str)> {
    let below = path.strip_prefix(QUEUES)?.strip_prefix('/')?;
    Some(below.split_at(below.find('/').unwrap_or(below.len())))
}

/// A queue name from its path segment: `%XX` escapes (either case) decoded, other bytes
/// kept. `None` when an escape is cut short or not hex, or the result is not UTF-8.
pub fn decode_name(segment: &str) -> Option<String> {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_percent_encoded() {
        assert_eq!(queue("myapp", URLS), "/v1/queues/myapp/urls");
        assert_eq!(queue("app-1_x.y~", ""), "/v1/queues/app-1_x.y~");
        assert_eq!(
            queue("a b/c?d%é~_.-", ATTACH),
            "/v1/queues/a%20b%2Fc%3Fd%25%C3%A9~_.-/attach"
        );
    }

    #[test]
    fn queue_paths_round_trip() {
        let mut names: Vec<String> = [
            "",
            "a",
            "%",
            "%2F",
            "/",
            "a/b",
            "~anon-1",
            " ",
            "é",
            "日本",
            "\u{1F600}",
            "\u{7F}\u{0}",
            "a%zz",
        ]
        .map(str::to_owned)
        .to_vec();
        // Every one-byte name, and a two-character name for a spread of characters.
        names.extend((0..=0x7F_u8).map(|b| char::from(b).to_string()));
        names.extend(
            (0..=0x10FFFF_u32)
                .step_by(97)
                .filter_map(char::from_u32)
                .map(|c| format!("{c}x{c}")),
        );
        for name in &names {
            for rest in ["", URLS, ACCESS, ATTACH] {
                let p = queue(name, rest);
                let (segment, after) = split_queue(&p).expect("a queue's path");
                assert_eq!(after, rest, "{name:?}");
                assert!(!segment.contains('/'), "{name:?} -> {segment:?}");
                assert!(segment.bytes().all(|b| is_unreserved(b) || b == b'%'));
                assert_eq!(decode_name(segment).as_deref(), Some(name.as_str()), "{p}");
            }
        }
    }

    #[test]
    fn decoding_refuses_what_no_encoder_writes() {
        assert_eq!(decode_name("a%2fb").as_deref(), Some("a/b"));
        assert_eq!(decode_name("a+b").as_deref(), Some("a+b"));
        for bad in ["%", "%2", "%zz", "%+1", "a%-1", "%C3", "%FF", "%C3%28"] {
            assert_eq!(decode_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn splitting() {
        assert_eq!(split_queue("/v1/queues/q"), Some(("q", "")));
        assert_eq!(split_queue("/v1/queues/q/urls/x"), Some(("q", "/urls/x")));
        assert_eq!(split_queue("/v1/queues/"), Some(("", "")));
        assert_eq!(split_queue("/v1/queues"), None);
        assert_eq!(split_queue("/v1/queuesq"), None);
        assert_eq!(split_queue("/v1/state"), None);
    }
}
