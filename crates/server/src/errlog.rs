//! The error log: one line for each request or connection the daemon refused, abandoned or
//! timed out, in HTTP.sys's httperr format (spec §7.2), emitted on the `httperr` tracing
//! target.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use portshare_router::{Reason, Version};

/// One httperr entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) version: Option<Version>,
    pub(crate) method: Option<&'a [u8]>,
    pub(crate) uri: Option<&'a [u8]>,
    pub(crate) status: Option<u16>,
    pub(crate) reason: Reason,
    pub(crate) queue: Option<&'a str>,
}

impl Entry<'_> {
    /// The line, without its line end.
    pub(crate) fn line(&self, now: SystemTime) -> String {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut s = String::with_capacity(128);
        let (y, mo, d) = crate::pages::civil(secs / 86400);
        let t = secs % 86400;
        let _ = write!(
            s,
            "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} {} {} {} {} ",
            t / 3600,
            t / 60 % 60,
            t % 60,
            self.client.ip(),
            self.client.port(),
            self.local.ip(),
            self.local.port(),
        );
        s.push_str(match self.version {
            Some(Version::Http10) => "HTTP/1.0",
            Some(_) => "HTTP/1.1",
            None => "-",
        });
        s.push(' ');
        field(&mut s, self.method, 255);
        s.push(' ');
        field(&mut s, self.uri, 4096);
        match self.status {
            Some(code) => {
                let _ = write!(s, " {code} - ");
            }
            None => s.push_str(" - - "),
        }
        s.push_str(self.reason.as_str());
        s.push(' ');
        field(&mut s, self.queue.map(str::as_bytes), 4096);
        s
    }

    /// Writes the entry to the log.
    pub(crate) fn emit(&self) {
        tracing::info!(target: "httperr", "{}", self.line(SystemTime::now()));
    }
}

/// Appends a field: `-` when missing or empty, spaces and controls as `+`, truncated.
fn field(s: &mut String, value: Option<&[u8]>, max: usize) {
    match value {
        None | Some([]) => s.push('-'),
        Some(v) => {
            for &b in v.iter().take(max) {
                s.push(if b <= b' ' || b == 0x7f || b >= 0x80 {
                    '+'
                } else {
                    b as char
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn line_format() {
        let e = Entry {
            client: "192.0.2.10:51234".parse().unwrap(),
            local: "192.0.2.1:80".parse().unwrap(),
            version: Some(Version::Http11),
            method: Some(b"GET"),
            uri: Some(b"/x y"),
            status: Some(400),
            reason: Reason::Hostname,
            queue: None,
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_714_564_801);
        assert_eq!(
            e.line(t),
            "2024-05-01 12:00:01 192.0.2.10 51234 192.0.2.1 80 HTTP/1.1 GET /x+y 400 - Hostname -"
        );
        let e = Entry {
            version: None,
            method: None,
            uri: None,
            status: None,
            reason: Reason::TimerConnectionIdle,
            queue: Some("app"),
            ..e
        };
        assert!(
            e.line(t)
                .ends_with(" 80 - - - - - Timer_ConnectionIdle app")
        );
    }
}
