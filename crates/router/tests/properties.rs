//! Property tests: canonicalization is idempotent, the winner does not depend on the order
//! of registration, the tree walk agrees with the specification's literal algorithm, and
//! no input makes the parsers panic.

use std::net::SocketAddr;

use portshare_router::{
    Dispatch, Endpoint, RequestHead, RequestHost, RouteTable, Scheme, UrlOptions, UrlPrefix,
    Verdict, Version, encode_path,
};
use proptest::prelude::*;

/// Bytes biased toward what canonicalization cares about.
fn url_bytes() -> impl Strategy<Value = Vec<u8>> {
    let atom = prop_oneof![
        4 => Just(b"/".to_vec()),
        2 => Just(b".".to_vec()),
        2 => Just(b"..".to_vec()),
        1 => Just(b"\\".to_vec()),
        2 => Just(b"%2e".to_vec()),
        2 => Just(b"%2F".to_vec()),
        1 => Just(b"%5c".to_vec()),
        1 => Just(b"%25".to_vec()),
        1 => Just(b"%u0444".to_vec()),
        1 => Just(b"%E9".to_vec()),
        1 => Just(b"%D0%A4".to_vec()),
        1 => Just(b"%20".to_vec()),
        1 => Just(b"?".to_vec()),
        1 => Just("ф".as_bytes().to_vec()),
        4 => "[a-cA-C]{1,3}".prop_map(String::into_bytes),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(atom, 0..16).prop_map(|parts| {
        let mut v = b"/".to_vec();
        for p in parts {
            v.extend(p);
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn canonicalization_is_idempotent(raw in url_bytes()) {
        let opts = UrlOptions::default();
        if let Ok(first) = opts.canonicalize(&raw) {
            let again = encode_path(first.path());
            let second = opts.canonicalize(again.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{again:?} refused: {e}")))?;
            prop_assert_eq!(first.path(), second.path());
        }
    }

    #[test]
    fn no_bytes_panic_the_canonicalizer(raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = UrlOptions::default().canonicalize(&raw);
        let _ = RequestHost::parse(&raw);
    }

    #[test]
    fn no_string_panics_the_prefix_parser(s in "\\PC{0,40}") {
        let _ = UrlPrefix::parse(&s);
    }

    #[test]
    fn no_prefix_shaped_string_panics_the_parser(
        s in "(https?|HTTP|ftp)?(://)?(\\+|\\*|\\[[:0-9a-f%]{0,8}\\]?|[a-z0-9.]{0,8})(:[0-9]{0,6})?(/[a-z%.]{0,4}){0,3}/?"
    ) {
        let _ = UrlPrefix::parse(&s);
    }

    #[test]
    fn winner_does_not_depend_on_registration_order(
        (prefixes, shuffled) in prefix_set().prop_flat_map(|set| {
            let shuffled = Just(set.clone()).prop_shuffle();
            (Just(set), shuffled)
        }),
        requests in prop::collection::vec(request(), 1..12),
    ) {
        let build = |order: &[String]| {
            let mut t = RouteTable::new();
            for p in order {
                t.add(p.parse::<UrlPrefix>().expect("generated prefixes parse"), p.clone())
                    .expect("generated sets are free of duplicates");
            }
            t
        };
        let a = build(&prefixes);
        let b = build(&shuffled);
        let opts = UrlOptions::default();
        for (ip, host, target) in &requests {
            let endpoint = Endpoint::new(Scheme::Http, SocketAddr::new(ip.parse().expect("ip"), 80));
            let head = RequestHead::new(b"GET", target.as_bytes(), Version::Http11, host.as_deref().map(str::as_bytes));
            let left = outcome(&a.dispatch(&endpoint, &head, &opts));
            let right = outcome(&b.dispatch(&endpoint, &head, &opts));
            prop_assert_eq!(&left, &right);
            let oracle = match a.explain(&endpoint, &head, &opts).verdict() {
                Verdict::Deliver(r) => format!("-> {}", r.value().to_uppercase()),
                Verdict::Reject(r) => r.to_string(),
                _ => "refused".into(),
            };
            prop_assert_eq!(&left, &oracle);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn removing_leaves_the_table_of_what_remains(
        prefixes in prefix_set(),
        keep in prop::collection::vec(any::<bool>(), 24),
        requests in prop::collection::vec(request(), 1..12),
    ) {
        let mut churned = RouteTable::new();
        let mut fresh = RouteTable::new();
        for p in &prefixes {
            churned.add(p.parse::<UrlPrefix>().expect("parses"), p.clone()).expect("no duplicates");
        }
        for (p, keep) in prefixes.iter().zip(&keep) {
            if *keep {
                fresh.add(p.parse::<UrlPrefix>().expect("parses"), p.clone()).expect("no duplicates");
            } else {
                churned.remove(&p.parse::<UrlPrefix>().expect("parses")).expect("registered");
            }
        }
        let opts = UrlOptions::default();
        for (ip, host, target) in &requests {
            let endpoint = Endpoint::new(Scheme::Http, SocketAddr::new(ip.parse().expect("ip"), 80));
            let head = RequestHead::new(b"GET", target.as_bytes(), Version::Http11, host.as_deref().map(str::as_bytes));
            prop_assert_eq!(
                outcome(&churned.dispatch(&endpoint, &head, &opts)),
                outcome(&fresh.dispatch(&endpoint, &head, &opts))
            );
        }
    }
}

/// A set of http prefixes on port 80 over small alphabets, so they overlap a lot; free of
/// duplicates (compared as HTTP.sys compares).
fn prefix_set() -> impl Strategy<Value = Vec<String>> {
    let host = prop_oneof![
        Just("+"),
        Just("*"),
        Just("a.test"),
        Just("B.test"),
        Just("127.0.0.1"),
        Just("127.0.0.2"),
    ];
    let path = prop::collection::vec(
        prop_oneof![Just("a"), Just("A"), Just("b"), Just("ф")],
        0..4,
    );
    prop::collection::vec((host, path), 1..24).prop_map(|items| {
        let mut seen = std::collections::HashSet::new();
        items
            .into_iter()
            .map(|(h, segs)| {
                let mut p = format!("http://{h}:80/");
                for s in segs {
                    p.push_str(s);
                    p.push('/');
                }
                p
            })
            .filter(|p| seen.insert(p.to_uppercase()))
            .collect()
    })
}

fn request() -> impl Strategy<Value = (&'static str, Option<String>, String)> {
    let ip = prop_oneof![Just("127.0.0.1"), Just("127.0.0.2"), Just("127.0.0.3")];
    let host = prop_oneof![
        Just(None),
        Just(Some("a.test".to_owned())),
        Just(Some("A.TEST:81".to_owned())),
        Just(Some("b.test".to_owned())),
        Just(Some("c.test".to_owned())),
        Just(Some("127.0.0.2".to_owned())),
    ];
    let target = prop::collection::vec(
        prop_oneof![
            Just("a"),
            Just("B"),
            Just("b"),
            Just("Ф"),
            Just("c"),
            Just("..")
        ],
        0..5,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")));
    (ip, host, target)
}

fn outcome(d: &Dispatch<'_, '_, String>) -> String {
    match d {
        Dispatch::Deliver(d) => format!("-> {}", d.registration().value().to_uppercase()),
        Dispatch::Reject(r) => r.to_string(),
        _ => "refused".into(),
    }
}
