//! The responses the daemon writes itself: HTTP.sys's error pages (spec §4.1), interim
//! responses, and the `Date` header.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use portshare_router::{Reason, Rejection};

/// The daemon's `Server` header value.
const SERVER: &str = concat!("portshare/", env!("CARGO_PKG_VERSION"));

/// Where the daemon's `Server` header goes: HTTP.sys's `DisableServerHeader` (spec §4,
/// §11), whose 0, 1 and 2 are the variants in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerHeader {
    /// On the daemon's own responses, and on an application's response that has none.
    Everywhere,
    /// On an application's response that has none; not on the daemon's own.
    AppsOnly,
    /// Nowhere: only an application's own `Server` header is ever sent.
    Nowhere,
}

impl ServerHeader {
    /// The choice `DisableServerHeader = value` makes (the configuration checks 0 to 2;
    /// anything above 2 is taken as 2).
    pub(crate) fn from_registry(value: u8) -> ServerHeader {
        match value {
            0 => ServerHeader::Everywhere,
            1 => ServerHeader::AppsOnly,
            _ => ServerHeader::Nowhere,
        }
    }

    /// The value on the daemon's own responses, if any.
    pub(crate) fn own(self) -> Option<&'static str> {
        (self == ServerHeader::Everywhere).then_some(SERVER)
    }

    /// The value added to an application's response that has no `Server`, if any.
    pub(crate) fn apps(self) -> Option<&'static str> {
        (self != ServerHeader::Nowhere).then_some(SERVER)
    }
}

/// Title, heading and text of the page for a rejection.
fn wording(status: u16, reason: Reason) -> (&'static str, &'static str, &'static str) {
    match (status, reason) {
        (400, Reason::Hostname) => (
            "Bad Request",
            "Bad Request - Invalid Hostname",
            "The request hostname is invalid.",
        ),
        (400, Reason::Url) => (
            "Bad Request",
            "Bad Request - Invalid URL",
            "The request URL is invalid.",
        ),
        (400, Reason::RequestLength) => (
            "Bad Request",
            "Bad Request - Request Too Long",
            "The size of the request headers is too long.",
        ),
        (400, Reason::FieldLength) => (
            "Bad Request",
            "Bad Request - Header Field Too Long",
            "A header field in the request is too long.",
        ),
        (400, _) => ("Bad Request", "Bad Request", "The request is badly formed."),
        (404, _) => (
            "Not Found",
            "Not Found",
            "The requested resource is not found.",
        ),
        (421, _) => (
            "Misdirected Request",
            "Misdirected Request",
            "The request host is not the name this connection was opened for.",
        ),
        (411, _) => (
            "Length Required",
            "Length Required",
            "The request must be chunked or have a content length.",
        ),
        (414, _) => (
            "Request URL Too Long",
            "Request URL Too Long",
            "The request URL is too long.",
        ),
        (502, Reason::UpstreamOwner) => (
            "Bad Gateway",
            "Bad Gateway",
            "The server this request is forwarded to may not serve it.",
        ),
        (502, _) => (
            "Bad Gateway",
            "Bad Gateway",
            "The upstream server did not answer as HTTP/1.1 asks.",
        ),
        (501, _) => (
            "Not Implemented",
            "Not Implemented",
            "The request is not supported by this server.",
        ),
        (503, Reason::QueueFull) => (
            "Service Unavailable",
            "Service Unavailable - Queue Full",
            "The service is unavailable.",
        ),
        (503, Reason::Disabled) => (
            "Service Unavailable",
            "Service Unavailable - Disabled",
            "The service is unavailable.",
        ),
        (503, Reason::ConnLimit) => (
            "Service Unavailable",
            "Service Unavailable - Connection Limit",
            "The service is unavailable.",
        ),
        (503, Reason::AppShutdown) => (
            "Service Unavailable",
            "Service Unavailable - Shutting Down",
            "The service is unavailable.",
        ),
        (505, _) => (
            "HTTP Version Not Supported",
            "HTTP Version Not Supported",
            "The HTTP version of the request is not supported.",
        ),
        _ => (
            "Service Unavailable",
            "Service Unavailable",
            "The service is unavailable.",
        ),
    }
}

/// How much a 503 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// The standard page (HTTP.sys's Limited verbosity, and every non-503 page).
    Standard,
    /// The cause in the status line and heading (Full verbosity).
    Cause,
}

/// Appends the complete error response for `rejection`, ending with `Connection: close`.
/// `retry_after` (seconds) is added to 503s; `server` is the `Server` header's value, if
/// one is sent.
pub(crate) fn error_page(
    out: &mut BytesMut,
    rejection: Rejection,
    detail: Detail,
    retry_after: Option<u64>,
    server: Option<&str>,
) {
    let status = rejection.status;
    let (body, phrase) = page_body(rejection, detail);
    out.put_slice(format!("HTTP/1.1 {status} {phrase}\r\n").as_bytes());
    out.put_slice(b"Content-Type: text/html; charset=us-ascii\r\n");
    put_server_and_date(out, server);
    out.put_slice(b"Connection: close\r\n");
    if let Some(secs) = retry_after.filter(|_| status == 503) {
        out.put_slice(format!("Retry-After: {secs}\r\n").as_bytes());
    }
    out.put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(body.as_bytes());
}

/// The body of the daemon's page for `rejection`, and the reason phrase its status line
/// carries (HTTP/1 only).
pub(crate) fn page_body(rejection: Rejection, detail: Detail) -> (String, &'static str) {
    let status = rejection.status;
    let (title, mut heading, text) = wording(status, rejection.reason);
    if status == 503 && detail == Detail::Standard {
        heading = "Service Unavailable";
    }
    let body = format!(
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n\
         <HTML><HEAD><TITLE>{title}</TITLE>\r\n\
         <META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n\
         <BODY><h2>{heading}</h2>\r\n\
         <hr><p>HTTP Error {status}. {text}</p>\r\n\
         </BODY></HTML>\r\n"
    );
    // The status line says what the title says; with Full verbosity a 503 names its cause.
    let phrase = if status == 503 && detail == Detail::Cause {
        heading
    } else {
        title
    };
    (body, phrase)
}

/// Appends `308 Permanent Redirect` to `location`, with no body; `close` adds
/// `Connection: close`.
pub(crate) fn redirect(out: &mut BytesMut, location: &[u8], server: Option<&str>, close: bool) {
    out.put_slice(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: ");
    out.put_slice(location);
    out.put_slice(b"\r\n");
    put_server_and_date(out, server);
    if close {
        out.put_slice(b"Connection: close\r\n");
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
}

/// Appends `200 OK` with an ACME HTTP-01 key authorization (`crate::challenge`) as
/// `text/plain`, ending with `Connection: close`; `head` leaves the body out (a HEAD
/// request), keeping its length.
pub(crate) fn acme_answer(out: &mut BytesMut, answer: &str, server: Option<&str>, head: bool) {
    out.put_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n");
    put_server_and_date(out, server);
    out.put_slice(
        format!(
            "Connection: close\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        )
        .as_bytes(),
    );
    if !head {
        out.put_slice(answer.as_bytes());
    }
}

/// The `Server` field (when `server` is given) and the `Date` field of the daemon's own
/// responses, each ending its line.
fn put_server_and_date(out: &mut BytesMut, server: Option<&str>) {
    if let Some(server) = server {
        out.put_slice(b"Server: ");
        out.put_slice(server.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Date: ");
    put_date(out);
    out.put_slice(b"\r\n");
}

/// `HTTP/1.1 100 Continue`, sent when a request that expects it is handed to an application.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

thread_local! {
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends the current time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted
/// at most once a second per thread.
pub(crate) fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != now {
            *cell = (now, format_date(now));
        }
        out.put_slice(&cell.1);
    });
}

fn format_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    let (year, month, day) = civil(days);
    let mut out = [0u8; 29];
    let two = |n: u64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(u64::from(day)));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    let y = year.clamp(0, 9999) as u64;
    out[12..14].copy_from_slice(&two(y / 100));
    out[14..16].copy_from_slice(&two(y % 100));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(h));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(m));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(s));
    out[25..].copy_from_slice(b" GMT");
    out
}

/// Appends `YYYY-MM-DD hh:mm:ss`, in UTC: the time of the error log's and the access log's
/// lines.
pub(crate) fn stamp(s: &mut String, now: SystemTime) {
    use std::fmt::Write as _;
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil(secs / 86400);
    let t = secs % 86400;
    let _ = write!(
        s,
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    );
}

/// The civil date (year, month 1–12, day 1–31) of a count of days since 1970-01-01.
pub(crate) fn civil(days: u64) -> (i64, u32, u32) {
    // Howard Hinnant's days-from-civil, inverted.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(status: u16, reason: Reason) -> (String, String) {
        let mut out = BytesMut::new();
        error_page(
            &mut out,
            Rejection { status, reason },
            Detail::Standard,
            Some(3),
            ServerHeader::Everywhere.own(),
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[test]
    fn disable_server_header_reads_as_the_registry_value() {
        let choices = [0, 1, 2].map(|v| {
            let h = ServerHeader::from_registry(v);
            (h.own().is_some(), h.apps().is_some())
        });
        assert_eq!(choices, [(true, true), (false, true), (false, false)]);
        let mut out = BytesMut::new();
        let rejection = Rejection {
            status: 404,
            reason: Reason::NotFound,
        };
        error_page(&mut out, rejection, Detail::Standard, None, None);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(!text.to_ascii_lowercase().contains("server:"), "{text}");
    }

    #[test]
    fn page_lengths_match_http_sys() {
        for (status, reason, len) in [
            (400, Reason::BadRequest, 311),
            (400, Reason::Hostname, 334),
            (400, Reason::Url, 324),
            (400, Reason::RequestLength, 346),
            (404, Reason::NotFound, 315),
            (503, Reason::QueueFull, 326),
            (414, Reason::UrlLength, 329),
        ] {
            let (head, body) = page(status, reason);
            assert_eq!(body.len(), len, "{status} {reason}");
            assert!(head.contains(&format!("Content-Length: {len}")));
            assert!(head.contains("Connection: close"));
        }
    }

    #[test]
    fn hostname_page_is_byte_exact() {
        let (head, body) = page(400, Reason::Hostname);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert_eq!(
            body,
            "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Bad Request</TITLE>\r\n<META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n<BODY><h2>Bad Request - Invalid Hostname</h2>\r\n<hr><p>HTTP Error 400. The request hostname is invalid.</p>\r\n</BODY></HTML>\r\n"
        );
    }

    #[test]
    fn retry_after_only_on_503() {
        assert!(
            page(503, Reason::QueueFull)
                .0
                .contains("Retry-After: 3\r\n")
        );
        assert!(!page(404, Reason::NotFound).0.contains("Retry-After"));
    }

    #[test]
    fn an_acme_answer_carries_date_and_server_like_every_page() {
        let mut out = BytesMut::new();
        acme_answer(&mut out, "tok.key", Some("portshare/1"), false);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nServer: portshare/1\r\n"), "{text}");
        assert!(text.contains("\r\nDate: "), "{text}");
        assert!(text.ends_with("Content-Length: 7\r\n\r\ntok.key"), "{text}");
        let mut head = BytesMut::new();
        acme_answer(&mut head, "tok.key", None, true);
        let head = String::from_utf8(head.to_vec()).unwrap();
        assert!(!head.contains("Server:"), "{head}");
        assert!(head.ends_with("Content-Length: 7\r\n\r\n"), "{head}");
    }

    #[test]
    fn dates() {
        assert_eq!(&format_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_date(1_709_210_096),
            b"Thu, 29 Feb 2024 12:34:56 GMT"
        );
    }
}
