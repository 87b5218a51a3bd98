//! What an application receives of the client's request headers: which pass, the host
//! routing used in place of the client's, and repeated headers joined (spec §3.3, §3.4).
//!
//! This module owns those rules, for workers and upstreams alike. It must not add headers
//! of the daemon's own (the `portshare-*` metadata and the forwarding headers are the
//! exchanges'), nor know how they are sent.

use portshare_proto::header;
use portshare_proto::wire::RequestHeadWriter;

use crate::head::Head;
use crate::relay::tokens;

/// The request headers an application gets, in order: those that [`passes`], with the
/// host routing used as the Host header. For an absolute-form target that is its
/// `authority`, which replaces the client's Host value where it stood, or comes first when
/// the client sent none (RFC 9112 §3.2.2: the Host header is ignored then; spec §2.2).
/// Otherwise the client's headers go as they are.
pub(super) fn app_headers<'h>(
    head: &Head<'h>,
    authority: Option<&'h [u8]>,
) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + use<'h> {
    let added = authority
        .filter(|_| head.host().is_none())
        .map(|a| (&b"Host"[..], a));
    let replaced = head
        .headers()
        .filter(|(n, _)| passes(n))
        .map(move |(n, v)| match authority {
            Some(a) if n.eq_ignore_ascii_case(b"host") => (n, a),
            _ => (n, v),
        });
    added.into_iter().chain(replaced)
}

/// The host routing used, as the client wrote it (with its port, if any), for
/// `X-Forwarded-Host` and `Forwarded: host=`: the authority of an absolute-form target,
/// else the Host header; `None` for HTTP/1.0 without a Host (or with an empty one).
pub(super) fn routed_host<'h>(head: &Head<'h>, authority: Option<&'h [u8]>) -> Option<&'h [u8]> {
    authority.or(head.host().filter(|h| !h.is_empty()))
}

/// Writes `fields`, a repeated one once, its values joined with ", ", where it first
/// stood (spec §3.4). Sorting groups the names, so a head of thousands of headers costs
/// n log n, not n².
pub(super) fn write_joined<'h>(
    w: &mut RequestHeadWriter<'_>,
    fields: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) {
    let fields: Vec<(&[u8], &[u8])> = fields.collect();
    let folded = |i: usize| fields[i].0.iter().map(u8::to_ascii_lowercase);
    let mut order: Vec<usize> = (0..fields.len()).collect();
    order.sort_by(|&a, &b| folded(a).cmp(folded(b)).then(a.cmp(&b)));
    // The next field of the same name, in order; and whether a field is its name's first.
    let mut next = vec![None; fields.len()];
    let mut first = vec![true; fields.len()];
    for pair in order.windows(2) {
        if fields[pair[0]].0.eq_ignore_ascii_case(fields[pair[1]].0) {
            next[pair[0]] = Some(pair[1]);
            first[pair[1]] = false;
        }
    }
    let mut joined = Vec::new();
    for (i, &(name, value)) in fields.iter().enumerate() {
        if !first[i] {
            continue;
        }
        if next[i].is_none() {
            w.header(name, value);
            continue;
        }
        joined.clear();
        joined.extend_from_slice(value);
        let mut at = next[i];
        while let Some(j) = at {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(fields[j].1);
            at = next[j];
        }
        w.header(name, &joined);
    }
}

/// The protocols an HTTP/1.1 request offers to switch to (spec §16): its `Upgrade` values,
/// joined, when its `Connection` lists `upgrade`; `h2c` left out, as HTTP.sys does not
/// speak it, so no application is ever offered it. `None` when nothing is offered: the
/// request is plain HTTP, and a worker's `101` to it is refused.
pub(crate) fn upgrade_offer(head: &Head<'_>) -> Option<Vec<u8>> {
    if head.version() != portshare_router::Version::Http11 {
        return None;
    }
    let asked = head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .any(|(_, v)| tokens(v).any(|t| t.eq_ignore_ascii_case(b"upgrade")));
    if !asked {
        return None;
    }
    let mut offer = Vec::new();
    for (_, v) in head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"upgrade"))
    {
        for t in tokens(v).filter(|t| !t.eq_ignore_ascii_case(b"h2c")) {
            if !offer.is_empty() {
                offer.extend_from_slice(b", ");
            }
            offer.extend_from_slice(t);
        }
    }
    (!offer.is_empty()).then_some(offer)
}

/// Whether two header names of `head` may be the same: exact for up to 32 headers (names
/// compared in place, mostly by length alone), and assumed beyond.
pub(super) fn may_repeat(head: &Head<'_>) -> bool {
    let mut names: [&[u8]; 32] = [&[]; 32];
    for (i, (name, _)) in head.headers().enumerate() {
        let Some(slot) = names.get_mut(i) else {
            return true;
        };
        *slot = name;
        if names[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return true;
        }
    }
    false
}

/// Whether an inbound request header goes on to the application: not the reserved
/// `portshare-*` space, no forwarding headers a client could forge, no hop-by-hop headers.
pub(super) fn passes(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"proxy-connection",
        b"expect",
        b"forwarded",
    ];
    if name.len() >= header::PREFIX.len()
        && name[..header::PREFIX.len()].eq_ignore_ascii_case(header::PREFIX.as_bytes())
    {
        return false;
    }
    if name.len() >= 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") {
        return false;
    }
    !HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{Parsed, parse_head};

    #[test]
    fn an_upgrade_is_offered_without_h2c() {
        let offer = |text: &str| {
            let limits = crate::HeadLimits::default();
            let Ok(Parsed::Complete { head, .. }) = parse_head(text.as_bytes(), &limits) else {
                panic!("head: {text}");
            };
            upgrade_offer(&head).map(|o| String::from_utf8(o).unwrap())
        };
        let ws = "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n";
        assert_eq!(
            offer(&format!("{ws}Upgrade: websocket\r\n\r\n")).as_deref(),
            Some("websocket")
        );
        assert_eq!(
            offer(&format!("{ws}Upgrade: h2c, foo/2\r\nUpgrade: bar\r\n\r\n")).as_deref(),
            Some("foo/2, bar")
        );
        assert_eq!(offer(&format!("{ws}Upgrade: h2c\r\n\r\n")), None);
        assert_eq!(
            offer(&format!("{ws}Upgrade: H2C, websocket\r\n\r\n")).as_deref(),
            Some("websocket")
        );
        assert_eq!(offer(&format!("{ws}\r\n")), None);
        // No `Connection: upgrade`, or HTTP/1.0: no offer.
        assert_eq!(
            offer("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"),
            None
        );
        assert_eq!(
            offer("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            None
        );
    }

    #[test]
    fn repeated_names_are_found_case_insensitively() {
        let check = |text: String| {
            let limits = crate::HeadLimits::default();
            let Ok(Parsed::Complete { head, .. }) = parse_head(text.as_bytes(), &limits) else {
                panic!("head: {text}");
            };
            may_repeat(&head)
        };
        let head = |fields: &str| format!("GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
        assert!(!check(head(
            "Accept: a\r\nAccept-Language: b\r\nX-Ab: c\r\nX-Ba: d\r\n"
        )));
        assert!(check(head("Accept: a\r\nX: b\r\naccept: c\r\n")));
        assert!(check(head(
            "X-Long-Name: a\r\nY: b\r\nZ: c\r\nx-long-NAME: d\r\n"
        )));
        // Past 32 headers it is assumed, distinct or not.
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(check(head(&many)));
    }

    #[test]
    fn forged_and_hop_by_hop_request_headers_stay_behind() {
        for name in [
            &b"Portshare-Raw-Url"[..],
            b"portshare-anything",
            b"X-Forwarded-For",
            b"x-forwarded-proto",
            b"Forwarded",
            b"Connection",
            b"Transfer-Encoding",
            b"Expect",
        ] {
            assert!(!passes(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"Host"[..],
            b"Content-Length",
            b"X-Forwarded",
            b"portshare",
            b"Accept",
        ] {
            assert!(passes(name), "{}", String::from_utf8_lossy(name));
        }
    }

    /// The headers [`app_headers`] gives for `fields` in an HTTP/1.x head, and the host
    /// [`routed_host`] forwards, with the absolute-form `authority` routing used, if any.
    fn for_app(
        version: &str,
        fields: &str,
        authority: Option<&'static [u8]>,
    ) -> (Vec<String>, Option<String>) {
        let text = format!("GET http://a.example:81/x {version}\r\n{fields}\r\n");
        let limits = crate::HeadLimits::default();
        let Ok(Parsed::Complete { head, .. }) = parse_head(text.as_bytes(), &limits) else {
            panic!("head: {text}");
        };
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers = app_headers(&head, authority)
            .map(|(n, v)| format!("{}: {}", lossy(n), lossy(v)))
            .collect();
        (headers, routed_host(&head, authority).map(lossy))
    }

    #[test]
    fn the_app_gets_the_host_routing_used() {
        let authority = Some(&b"a.example:81"[..]);
        // Regression: the client's own Host went on beside an absolute-form target.
        let (headers, host) = for_app(
            "HTTP/1.1",
            "X-A: 1\r\nHost: evil.example\r\nX-B: 2\r\n",
            authority,
        );
        assert_eq!(headers, ["X-A: 1", "Host: a.example:81", "X-B: 2"]);
        assert_eq!(host.as_deref(), Some("a.example:81"));
        // The client's spelling of the name is kept.
        let (headers, _) = for_app("HTTP/1.1", "hOST: evil.example\r\n", authority);
        assert_eq!(headers, ["hOST: a.example:81"]);
        // No Host at all: the authority comes first.
        let (headers, host) = for_app("HTTP/1.0", "X-A: 1\r\n", authority);
        assert_eq!(headers, ["Host: a.example:81", "X-A: 1"]);
        assert_eq!(host.as_deref(), Some("a.example:81"));
        // Routed by the Host header: it goes as sent.
        let (headers, host) = for_app("HTTP/1.1", "Host: h:8080\r\nX-A: 1\r\n", None);
        assert_eq!(headers, ["Host: h:8080", "X-A: 1"]);
        assert_eq!(host.as_deref(), Some("h:8080"));
        // HTTP/1.0 without a host: none is made up, and none forwarded.
        let (headers, host) = for_app("HTTP/1.0", "X-A: 1\r\n", None);
        assert_eq!(headers, ["X-A: 1"]);
        assert_eq!(host, None);
        let (headers, host) = for_app("HTTP/1.0", "Host:\r\n", None);
        assert_eq!(headers, ["Host: "]);
        assert_eq!(host, None);
    }
}

#[cfg(test)]
mod joined {
    use bytes::BytesMut;
    use portshare_proto::wire::{self, Frame, RequestHead, RequestHeadWriter};

    use crate::head::{HeadLimits, Parsed, parse_head};

    /// The headers the application gets for `fields`, through the worker wire.
    fn delivered(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for (n, v) in fields {
            raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut limits = HeadLimits::default();
        limits.max_request_bytes(1 << 20);
        let Ok(Parsed::Complete { head, .. }) = parse_head(&raw, &limits) else {
            panic!("head does not parse");
        };
        let mut frame = BytesMut::new();
        let mut w =
            RequestHeadWriter::new(&mut frame, 1, true, b"GET", b"/", wire::Version::Http11);
        super::write_joined(&mut w, super::app_headers(&head, None));
        w.finish();
        let Ok(Some(Frame::Head { payload, .. })) = wire::decode(&mut frame) else {
            panic!("no head frame");
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        RequestHead::decode(payload)
            .expect("request head")
            .headers
            .iter()
            .map(|(n, v)| (text(n), text(v)))
            .collect()
    }

    #[test]
    fn repeated_headers_are_joined_where_they_first_stood() {
        let got = delivered(&[
            ("Host", "h"),
            ("Accept", "a"),
            ("X-One", "1"),
            ("accept", "b"),
            ("Connection", "close"),
            ("ACCEPT", "c"),
        ]);
        let want = [("Host", "h"), ("Accept", "a, b, c"), ("X-One", "1")];
        assert_eq!(
            got,
            want.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec()
        );
    }

    #[test]
    fn a_repeated_header_beside_an_absolute_form_host() {
        let raw = b"GET http://a.example/ HTTP/1.1\r\nX: 1\r\nHost: evil\r\nx: 2\r\n\r\n";
        let Ok(Parsed::Complete { head, .. }) = parse_head(raw, &HeadLimits::default()) else {
            panic!("head does not parse");
        };
        let mut frame = BytesMut::new();
        let mut w =
            RequestHeadWriter::new(&mut frame, 1, true, b"GET", b"/", wire::Version::Http11);
        super::write_joined(&mut w, super::app_headers(&head, Some(b"a.example")));
        w.finish();
        let Ok(Some(Frame::Head { payload, .. })) = wire::decode(&mut frame) else {
            panic!("no head frame");
        };
        let got: Vec<(Vec<u8>, Vec<u8>)> = RequestHead::decode(payload)
            .expect("request head")
            .headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [("X", "1, 2"), ("Host", "a.example")]
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn thousands_of_headers_keep_their_order() {
        let names: Vec<String> = (0..3000).map(|i| format!("x-{}", i % 1000)).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let got = delivered(&fields);
        assert_eq!(got.len(), 1000);
        for (i, (n, v)) in got.iter().enumerate() {
            assert_eq!(
                (n.as_str(), v.as_str()),
                (format!("x-{i}").as_str(), "v, v, v")
            );
        }
    }
}
