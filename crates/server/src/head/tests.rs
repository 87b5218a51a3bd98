use proptest::prelude::*;
use proptest::sample::select;

use super::*;
use Reason::*;

/// What a case expects: more bytes, a complete head, or a rejection (status, reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    More,
    Done,
    No(u16, Reason),
}
use Want::{Done, More, No};

fn verdict(buf: &[u8], limits: &HeadLimits) -> Want {
    match parse_head(buf, limits) {
        Ok(Parsed::Partial) => More,
        Ok(Parsed::Complete { .. }) => Done,
        Err(e) => No(e.rejection().status, e.rejection().reason),
    }
}

fn complete(buf: &[u8]) -> (Head<'_>, usize) {
    match parse_head(buf, &HeadLimits::default()) {
        Ok(Parsed::Complete { head, len }) => (head, len),
        other => panic!("{:?}: {other:?}", buf.escape_ascii().to_string()),
    }
}

fn limits(request_bytes: usize, field_length: usize) -> HeadLimits {
    let mut limits = HeadLimits::default();
    limits
        .max_request_bytes(request_bytes)
        .max_field_length(field_length);
    limits
}

/// Request line, headers and their verdicts with the default limits.
#[rustfmt::skip]
const VERDICTS: &[(&str, &[u8], Want)] = &[
    // Request line.
    ("simple_get", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", Done),
    ("lf_only_line_ends", b"GET / HTTP/1.1\nHost: h\n\n", Done),
    ("mixed_line_ends", b"GET / HTTP/1.1\r\nHost: h\n\r\n", Done),
    ("whitespace_after_version", b"GET / HTTP/1.1 \t \r\n\r\n", Done),
    ("leading_empty_lines_skipped", b"\r\n\nGET / HTTP/1.1\r\n\r\n", Done),
    ("no_headers_at_all", b"GET / HTTP/1.0\r\n\r\n", Done),
    ("space_in_target", b"GET /a b HTTP/1.1\r\n\r\n", No(400, BadRequest)),
    ("two_spaces_before_target", b"GET  / HTTP/1.1\r\n\r\n", No(400, BadRequest)),
    ("two_spaces_before_version", b"GET /  HTTP/1.1\r\n\r\n", No(400, BadRequest)),
    ("tab_in_target", b"GET /a\tb HTTP/1.1\r\n\r\n", No(400, BadRequest)),
    ("control_byte_in_target", b"GET /a\x01 HTTP/1.1\r\n\r\n", No(400, Url)),
    ("nul_in_target", b"GET /a\x00 HTTP/1.1\r\n\r\n", No(400, Url)),
    ("del_in_target", b"GET /a\x7f HTTP/1.1\r\n\r\n", No(400, Url)),
    ("bare_cr_in_target", b"GET /a\rb HTTP/1.1\r\n\r\n", No(400, InvalidCrLf)),
    ("utf8_in_target_passes", "GET /ф?q=é HTTP/1.1\r\n\r\n".as_bytes(), Done),
    ("latin1_in_target_passes", b"GET /\xe9t\xe9 HTTP/1.1\r\n\r\n", Done),
    ("no_version", b"GET /\r\n\r\n", No(400, BadRequest)),
    ("no_version_lf", b"GET /\n\n", No(400, BadRequest)),
    ("only_method", b"GET\r\n\r\n", No(400, Verb)),
    ("lower_case_method_kept", b"get / HTTP/1.1\r\n\r\n", Done),
    ("unknown_method_kept", b"xyzzy / HTTP/1.1\r\n\r\n", Done),
    ("separator_in_method", b"GE(T / HTTP/1.1\r\n\r\n", No(400, Verb)),
    ("separator_in_method_partial", b"GE(", No(400, Verb)),
    ("empty_method", b" / HTTP/1.1\r\n\r\n", No(400, Verb)),
    ("tls_hello_is_a_bad_verb", b"\x16\x03\x01\x02\x00\x01", No(400, Verb)),
    ("version_lower_case", b"GET / http/1.1\r\n\r\n", No(400, BadRequest)),
    ("version_0_1", b"GET / HTTP/0.1\r\n\r\n", No(400, BadRequest)),
    ("version_1_1_1", b"GET / HTTP/1.1.1\r\n\r\n", No(400, BadRequest)),
    ("version_garbage", b"GET / garbage\r\n\r\n", No(400, BadRequest)),
    ("version_then_text", b"GET / HTTP/1.1 x\r\n\r\n", No(400, BadRequest)),
    ("version_1_2", b"GET / HTTP/1.2\r\n\r\n", Done),
    ("version_1_9", b"GET / HTTP/1.9\r\n\r\n", Done),
    ("version_2_0", b"GET / HTTP/2.0\r\n\r\n", No(505, VersionNotSupported)),
    ("version_2_2", b"GET / HTTP/2.2\r\n\r\n", No(505, VersionNotSupported)),
    ("version_3_0", b"GET / HTTP/3.0\r\n\r\n", No(505, VersionNotSupported)),
    ("bare_cr_after_version", b"GET / HTTP/1.1\rX\r\n\r\n", No(400, InvalidCrLf)),
    // Header lines.
    ("header_without_colon", b"GET / HTTP/1.1\r\nHost h\r\n\r\n", No(400, Header)),
    ("header_without_colon_lf", b"GET / HTTP/1.1\nHost\n\n", No(400, Header)),
    ("empty_header_name", b"GET / HTTP/1.1\r\n: v\r\n\r\n", No(400, Header)),
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", No(400, Header)),
    ("tab_before_colon", b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", No(400, Header)),
    ("separator_in_header_name", b"GET / HTTP/1.1\r\nHo(st: h\r\n\r\n", No(400, Header)),
    ("high_byte_in_header_name", b"GET / HTTP/1.1\r\nH\xe9: h\r\n\r\n", No(400, Header)),
    ("control_char_in_value", b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", No(400, Header)),
    ("nul_in_value", b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n", No(400, Header)),
    ("del_in_value", b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", No(400, Header)),
    ("bare_cr_in_value", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", No(400, InvalidCrLf)),
    ("tab_in_value_passes", b"GET / HTTP/1.1\r\nX: a\tb\r\n\r\n", Done),
    ("obs_text_in_value_passes", b"GET / HTTP/1.1\r\nX: \xe9\xff\r\n\r\n", Done),
    ("empty_value_passes", b"GET / HTTP/1.1\r\nX:\r\nY: \r\n\r\n", Done),
    ("obs_fold_refused", b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", No(400, Header)),
    ("obs_fold_tab_refused", b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", No(400, Header)),
    ("obs_fold_first_line", b"GET / HTTP/1.1\r\n X: a\r\n\r\n", No(400, Header)),
    ("two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", No(400, Hostname)),
    ("two_same_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", No(400, Hostname)),
    ("missing_host_left_to_routing", b"GET / HTTP/1.1\r\n\r\n", Done),
    // Body framing.
    ("content_length_not_a_number", b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", No(400, Number)),
    ("content_length_negative", b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", No(400, Number)),
    ("content_length_plus", b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", No(400, Number)),
    ("content_length_empty", b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", No(400, Number)),
    ("content_length_inner_space", b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", No(400, Number)),
    ("content_length_empty_item", b"POST / HTTP/1.1\r\nContent-Length: 5,\r\n\r\n", No(400, Number)),
    ("content_length_overflow", b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n", No(400, Number)),
    ("content_length_repeated_differ", b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", No(400, Header)),
    ("content_length_list_differ", b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", No(400, Header)),
    ("transfer_encoding_gzip_chunked", b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", No(501, NotImplemented)),
    ("transfer_encoding_garbage", b"POST / HTTP/1.1\r\nTransfer-Encoding: garbage\r\n\r\n", No(501, NotImplemented)),
    ("transfer_encoding_empty", b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", No(501, NotImplemented)),
    ("transfer_encoding_chunked_twice", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", No(501, NotImplemented)),
    ("transfer_encoding_two_headers", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", No(501, NotImplemented)),
    ("length_and_chunked_refused", b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", No(400, Header)),
    ("chunked_and_length_refused", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", No(400, Header)),
    ("post_without_length", b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", No(411, LengthRequired)),
    ("put_without_length", b"PUT / HTTP/1.1\r\nHost: h\r\n\r\n", No(411, LengthRequired)),
    ("post_1_9_without_length", b"POST / HTTP/1.9\r\n\r\n", No(411, LengthRequired)),
    // Partial heads.
    ("empty_buffer", b"", More),
    ("empty_line_only", b"\r\n", More),
    ("method_only", b"GET", More),
    ("method_and_space", b"GET ", More),
    ("in_target", b"GET /ab", More),
    ("in_version", b"GET / HTTP/1", More),
    ("cr_after_version", b"GET / HTTP/1.1\r", More),
    ("request_line_only", b"GET / HTTP/1.1\r\n", More),
    ("in_header_name", b"GET / HTTP/1.1\r\nHo", More),
    ("in_header_value", b"GET / HTTP/1.1\r\nHost: h", More),
    ("cr_after_header", b"GET / HTTP/1.1\r\nHost: h\r", More),
    ("cr_of_blank_line", b"GET / HTTP/1.1\r\nHost: h\r\n\r", More),
];

#[test]
fn verdicts() {
    for &(name, input, want) in VERDICTS {
        assert_eq!(verdict(input, &HeadLimits::default()), want, "{name}");
    }
}

/// Limits: (name, MaxRequestBytes, MaxFieldLength, input, verdict).
#[rustfmt::skip]
const SIZES: &[(&str, usize, usize, &[u8], Want)] = &[
    ("head_at_max_request_bytes", 18, 16, b"GET / HTTP/1.1\r\n\r\n", Done),
    ("head_over_max_request_bytes", 17, 16, b"GET / HTTP/1.1\r\n\r\n", No(400, RequestLength)),
    ("blank_line_past_max_request_bytes", 15, 16, b"GET / HTTP/1.1\n\n", No(400, RequestLength)),
    ("partial_at_max_request_bytes", 20, 16, b"GET / HTTP/1.1\r\nX: a", More),
    ("partial_over_max_request_bytes", 20, 16, b"GET / HTTP/1.1\r\nX: aaaaaaa", No(400, RequestLength)),
    ("method_over_max_request_bytes", 4, 4, b"OPTIONS", No(400, RequestLength)),
    ("earlier_error_wins_over_size", 20, 16, b"GET / HTTP/1.1\r\nX y\r\nZ: aaaaaaaaaa", No(400, Header)),
    ("field_at_max_field_length", 99, 16, b"GET / HTTP/1.1\r\nX: 0123456789abcde\r\n\r\n", Done),
    ("field_over_max_field_length", 99, 16, b"GET / HTTP/1.1\r\nX: 0123456789abcdef\r\n\r\n", No(400, FieldLength)),
    ("field_whitespace_not_counted", 99, 16, b"GET / HTTP/1.1\r\nX:  0123456789abcde \t\r\n\r\n", Done),
    ("field_over_while_partial", 99, 16, b"GET / HTTP/1.1\r\nX: 0123456789abcdef", No(400, FieldLength)),
    ("name_over_max_field_length", 99, 16, b"GET / HTTP/1.1\r\n0123456789abcdefg", No(400, FieldLength)),
    ("target_at_max_field_length", 99, 16, b"GET /123456789abcdef HTTP/1.1\r\n\r\n", Done),
    ("target_over_max_field_length", 99, 16, b"GET /123456789abcdefg HTTP/1.1\r\n\r\n", No(414, UrlLength)),
    ("target_over_while_partial", 99, 16, b"GET /123456789abcdefg", No(414, UrlLength)),
    ("target_over_past_max_request_bytes", 16, 16, b"GET /123456789abcdefg HTTP/1.1\r\n", No(414, UrlLength)),
    ("target_fits_but_line_too_long", 16, 16, b"GET /123456789abcdef HTTP/1.1\r\n", No(400, RequestLength)),
    ("target_partial_past_max_request_bytes", 16, 16, b"GET /123456789abcde", More),
    ("request_bytes_lower_field_length", 20, 99, b"GET /123456789abcdefghijk HTTP/1.1", No(414, UrlLength)),
    ("zero_limits", 0, 0, b"G", No(400, RequestLength)),
    ("zero_limits_empty", 0, 0, b"", More),
];

#[test]
fn sizes() {
    for &(name, request_bytes, field_length, input, want) in SIZES {
        let limits = limits(request_bytes, field_length);
        assert_eq!(verdict(input, &limits), want, "{name}");
    }
}

/// (name, input, body framing).
#[rustfmt::skip]
const BODIES: &[(&str, &[u8], Body)] = &[
    ("get_without_body", b"GET / HTTP/1.1\r\n\r\n", Body::None),
    ("content_length", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", Body::Length(5)),
    ("content_length_zero", b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", Body::Length(0)),
    ("content_length_leading_zeros", b"PUT / HTTP/1.1\r\nContent-Length: 007\r\n\r\n", Body::Length(7)),
    ("content_length_max", b"PUT / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n", Body::Length(u64::MAX)),
    ("content_length_same_twice", b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", Body::Length(5)),
    ("content_length_same_in_list", b"POST / HTTP/1.1\r\nContent-Length: 5 , 05\r\n\r\n", Body::Length(5)),
    ("chunked", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", Body::Chunked),
    ("chunked_any_case_and_ows", b"POST / HTTP/1.1\r\ntransfer-encoding: \t ChUnKeD \r\n\r\n", Body::Chunked),
    ("chunked_over_http_1_0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Body::Chunked),
    ("post_1_0_without_length", b"POST / HTTP/1.0\r\n\r\n", Body::None),
    ("lower_case_post_is_unknown_verb", b"post / HTTP/1.1\r\n\r\n", Body::None),
    ("delete_without_length", b"DELETE / HTTP/1.1\r\n\r\n", Body::None),
];

#[test]
fn bodies() {
    for &(name, input, body) in BODIES {
        assert_eq!(complete(input).0.body(), body, "{name}");
    }
}

/// (name, input, keep-alive).
#[rustfmt::skip]
const KEEP_ALIVE: &[(&str, &[u8], bool)] = &[
    ("http11_default", b"GET / HTTP/1.1\r\n\r\n", true),
    ("http11_close", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
    ("http11_close_any_case_in_list", b"GET / HTTP/1.1\r\nConnection: Upgrade , CLOSE\r\n\r\n", false),
    ("http11_close_in_second_header", b"GET / HTTP/1.1\r\nConnection: x\r\nConnection: close\r\n\r\n", false),
    ("http11_closed_not_close", b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", true),
    ("http10_default", b"GET / HTTP/1.0\r\n\r\n", false),
    ("http10_keep_alive", b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
    ("http10_keep_alive_in_list", b"GET / HTTP/1.0\r\nConnection: foo,keep-alive\r\n\r\n", true),
    ("http10_keep_alive_and_close", b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false),
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding is served, then closed.
    ("http10_chunked_closes", b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n", false),
    ("http11_chunked_keeps", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", true),
];

#[test]
fn keep_alive() {
    for &(name, input, keep) in KEEP_ALIVE {
        assert_eq!(complete(input).0.keep_alive(), keep, "{name}");
    }
}

/// (name, input, expects 100 Continue).
#[rustfmt::skip]
const EXPECT: &[(&str, &[u8], bool)] = &[
    ("expect_continue", b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", true),
    ("expect_continue_any_case", b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nexpect:  100-Continue \r\n\r\n", true),
    ("expect_other_value", b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 200-ok\r\n\r\n", false),
    ("expect_none", b"PUT / HTTP/1.1\r\nContent-Length: 1\r\n\r\n", false),
    ("expect_ignored_in_http10", b"PUT / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", false),
];

#[test]
fn expect_continue() {
    for &(name, input, expect) in EXPECT {
        assert_eq!(complete(input).0.expect_continue(), expect, "{name}");
    }
}

#[test]
fn fields_of_a_complete_head() {
    let buf = b"\r\nPATCH /a/%2e?x=\xe9 HTTP/1.5\r\nHost:  example.com:8080 \r\nX-A: 1\r\n\
                X-Empty:\r\nx-a:\t2 3\t\r\n\r\nbody";
    let (head, len) = complete(buf);
    assert_eq!(head.method(), b"PATCH");
    assert_eq!(head.target(), b"/a/%2e?x=\xe9");
    assert_eq!(head.version(), Version::Http11);
    assert_eq!(head.host(), Some(&b"example.com:8080"[..]));
    let headers: Vec<_> = head.headers().collect();
    assert_eq!(
        headers,
        [
            (&b"Host"[..], &b"example.com:8080"[..]),
            (b"X-A", b"1"),
            (b"X-Empty", b""),
            (b"x-a", b"2 3"),
        ]
    );
    assert_eq!(head.header(b"x-empty"), Some(&b""[..]));
    assert_eq!(head.header(b"X-A"), Some(&b"1"[..]));
    assert_eq!(head.header(b"Missing"), None);
    assert_eq!(&buf[len..], b"body");
    let routed = head.request_head();
    assert_eq!(
        (routed.method, routed.target),
        (head.method(), head.target())
    );
    assert_eq!(
        (routed.version, routed.host),
        (Version::Http11, head.host())
    );
}

#[test]
fn repeated_headers_join_with_comma_space() {
    let (head, _) = complete(b"GET / HTTP/1.1\r\nA: 1\r\nB: x\r\na: 2 \r\nA:\r\nA: 3\r\n\r\n");
    assert_eq!(head.joined(b"a").as_deref(), Some(&b"1, 2, , 3"[..]));
    assert!(matches!(head.joined(b"B"), Some(Cow::Borrowed(b"x"))));
    assert_eq!(head.joined(b"C"), None);
}

#[test]
fn pipelined_request_is_left_alone() {
    let buf = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n";
    let (head, len) = complete(buf);
    assert_eq!(head.target(), b"/1");
    assert_eq!(complete(&buf[len..]).0.target(), b"/2");
}

#[test]
fn many_headers_have_no_count_limit() {
    let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..5000 {
        buf.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    let mut limits = HeadLimits::default();
    limits.max_request_bytes(1 << 20);
    let Ok(Parsed::Complete { head, len }) = parse_head(&buf, &limits) else {
        panic!("not complete");
    };
    assert_eq!((head.headers().count(), len), (5000, buf.len()));
    assert_eq!(head.header(b"x-4999"), Some(&b"4999"[..]));
    // With the default MaxRequestBytes the same head is too long.
    assert_eq!(
        verdict(&buf, &HeadLimits::default()),
        No(400, RequestLength)
    );
}

#[test]
fn limits_default_and_lowering() {
    let mut limits = HeadLimits::default();
    assert_eq!(
        (limits.request_bytes(), limits.field_length()),
        (16384, 16384)
    );
    limits.max_request_bytes(1000);
    assert_eq!(limits.field_length(), 1000);
    limits.max_field_length(64);
    assert_eq!(limits.field_length(), 64);
    limits.max_field_length(5000).max_request_bytes(2000);
    assert_eq!(
        (limits.request_bytes(), limits.field_length()),
        (2000, 2000)
    );
}

#[test]
fn error_display_and_parts() {
    let err = parse_head(b"GET / HTTP/1.1\r\nAb\r\n\r\n", &HeadLimits::default()).unwrap_err();
    assert_eq!(
        err.rejection(),
        Rejection {
            status: 400,
            reason: Header
        }
    );
    assert_eq!(err.detail(), "header line without ':'");
    assert_eq!(err.to_string(), "400 Header: header line without ':'");
    let err = parse_head(b"GET / HTTP/2.0\r\n\r\n", &HeadLimits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "505 Version_N/S: HTTP version 2 or above in a text request line"
    );
}

#[test]
fn debug_shows_text() {
    let (head, _) = complete(b"GET /\xe9 HTTP/1.1\r\nHost: h\r\n\r\n");
    let debug = format!("{head:?}");
    assert!(debug.contains(r#"target: "/\xe9""#), "{debug}");
    assert!(debug.contains(r#"("Host", "h")"#), "{debug}");
}

/// Pieces that make heads, broken ones included, for the property tests.
const FRAGMENTS: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"get",
    b" ",
    b"/",
    b"/a",
    b"\r\n",
    b"\n",
    b"\r",
    b"\t",
    b":",
    b": ",
    b",",
    b"5",
    b"x",
    b"\x00",
    b"\x7f",
    b"\xe9",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"chunked",
    b"Connection",
    b"close",
    b"Expect",
    b"100-continue",
    b"GET / HTTP/1.1\r\n",
    b"\r\n\r\n",
];

/// How fragment inputs start, so that the property tests get past the request line.
const OPENINGS: &[&[u8]] = &[
    b"",
    b"GET ",
    b"GET /",
    b"GET / HTTP/1.1\r\n",
    b"POST /a HTTP/1.0\n",
    b"PUT /x HTTP/1.1\r\nHost: h\r\n",
];

/// A valid request (without POST/PUT, so no 411): its bytes and its (name, value) headers.
fn valid_request() -> impl Strategy<Value = (Vec<u8>, Vec<(String, String)>)> {
    let method = select(vec![
        "GET", "HEAD", "DELETE", "OPTIONS", "xyzzy", "M-SEARCH",
    ]);
    let target = prop::collection::vec(prop_oneof![Just(b'/'), b'!'..=b'~', 0x80u8..=0xFF], 0..40);
    let version = select(vec!["HTTP/1.0", "HTTP/1.1", "HTTP/1.9"]);
    let eol = || select(vec!["\r\n", "\n"]);
    let header = (
        "X-[A-Za-z0-9!#$%&'*+.^_`|~-]{0,12}",
        "[ \t]{0,2}",
        "([!-~]([ \t!-~]{0,20}[!-~])?)?",
        "[ \t]{0,2}",
        eol(),
    );
    (
        0..3usize,
        method,
        target,
        version,
        "[ \t]{0,2}",
        eol(),
        prop::collection::vec(header, 0..8),
        eol(),
    )
        .prop_map(|(empty, method, target, version, ws, eol, headers, last)| {
            let mut buf = b"\r\n".repeat(empty);
            buf.extend_from_slice(method.as_bytes());
            buf.extend_from_slice(b" /");
            buf.extend_from_slice(
                &target
                    .into_iter()
                    .filter(|&b| b != b' ')
                    .collect::<Vec<_>>(),
            );
            buf.extend_from_slice(format!(" {version}{ws}{eol}").as_bytes());
            let mut fields = Vec::new();
            for (name, before, value, after, eol) in headers {
                buf.extend_from_slice(format!("{name}:{before}{value}{after}{eol}").as_bytes());
                fields.push((name, value));
            }
            buf.extend_from_slice(last.as_bytes());
            (buf, fields)
        })
}

proptest! {
    #[test]
    fn no_input_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        request_bytes in 0..700usize,
        field_length in 0..700usize,
    ) {
        let _ = parse_head(&bytes, &limits(request_bytes, field_length));
        let _ = parse_head(&bytes, &HeadLimits::default());
    }

    #[test]
    fn verdicts_never_change_as_bytes_arrive(
        opening in select(OPENINGS),
        parts in prop::collection::vec(select(FRAGMENTS), 0..40),
        request_bytes in 0..300usize,
        field_length in 0..300usize,
    ) {
        let buf = [opening, &parts.concat()].concat();
        let limits = limits(request_bytes, field_length);
        let whole = parse_head(&buf, &limits);
        for end in 0..buf.len() {
            match parse_head(&buf[..end], &limits) {
                Ok(Parsed::Partial) => {}
                prefix => prop_assert_eq!(&prefix, &whole, "prefix of {} bytes", end),
            }
        }
    }

    #[test]
    fn valid_request_split_anywhere(
        (head_bytes, fields) in valid_request(),
        body in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let limits = HeadLimits::default();
        for end in 0..head_bytes.len() {
            prop_assert_eq!(parse_head(&head_bytes[..end], &limits), Ok(Parsed::Partial));
        }
        let whole = parse_head(&head_bytes, &limits);
        let Ok(Parsed::Complete { head, len }) = whole else {
            return Err(TestCaseError::fail(format!("{whole:?}")));
        };
        prop_assert_eq!(len, head_bytes.len());
        let got: Vec<_> = head.headers().collect();
        let want: Vec<_> = fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        prop_assert_eq!(got, want);
        let mut with_body = head_bytes.clone();
        with_body.extend_from_slice(&body);
        prop_assert_eq!(parse_head(&with_body, &limits), whole);
    }
}
