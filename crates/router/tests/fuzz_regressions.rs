//! Inputs the fuzz targets (`fuzz/`) found, kept as named cases.

use std::net::SocketAddr;

use portshare_router::{
    Dispatch, Endpoint, RequestHead, RequestHost, RouteTable, Scheme, UrlOptions, UrlPrefix,
    Version,
};

/// A host label whose fourth byte is inside a multi-byte character (`tesф`: `ф` is bytes
/// 3..5) made the `xn--` test slice a `str` off a character boundary and panic, on the
/// Host header of any request.
#[test]
fn fuzz_regression_request_host_label_split_inside_a_character() {
    for host in ["tesф", "tesф.test", "a.exaф:80", "127ф.test", "xnф.test"] {
        let parsed = RequestHost::parse(host.as_bytes()).expect("a Unicode host name");
        assert_eq!(
            parsed.name(),
            host.split(':').next().expect("split yields one")
        );
    }

    let mut table = RouteTable::new();
    table
        .add("http://+:80/".parse::<UrlPrefix>().expect("parses"), ())
        .expect("adds");
    let endpoint = Endpoint::new(Scheme::Http, SocketAddr::from(([127, 0, 0, 1], 80)));
    let head = RequestHead::new(b"GET", b"/", Version::Http11, Some("tesф.test".as_bytes()));
    let got = table.dispatch(&endpoint, &head, &UrlOptions::default());
    assert!(matches!(got, Dispatch::Deliver(_)), "{got:?}");
}

/// The same slice in the prefix grammar's punycode check panicked on registering
/// `http://exaф.test:80/`.
#[test]
fn fuzz_regression_prefix_host_label_split_inside_a_character() {
    for s in [
        "http://exaф.test:80/",
        "https://B.Tesф.test:443/x/",
        "http://127ф:80/",
    ] {
        let p: UrlPrefix = s.parse().expect("a Unicode host name");
        assert_eq!(p.to_string(), s);
    }
    // The check itself still holds.
    assert!("http://xn--e1a.test:80/".parse::<UrlPrefix>().is_err());
}
