//! One access log line: its values, W3C extended or JSON, escaped so no client can break
//! or forge a line.

use super::*;

/// A line's values.
pub(super) struct Line<'a> {
    pub(super) now: SystemTime,
    pub(super) local: SocketAddr,
    pub(super) client: IpAddr,
    pub(super) method: &'a [u8],
    pub(super) stem: &'a [u8],
    pub(super) query: &'a [u8],
    pub(super) agent: &'a [u8],
    pub(super) referer: &'a [u8],
    pub(super) status: Option<u32>,
    pub(super) win32: u32,
    pub(super) taken_ms: u64,
    pub(super) queue: &'a [u8],
}

impl Line<'_> {
    pub(super) fn w3c(&self) -> String {
        let mut s = String::with_capacity(160 + self.agent.len());
        crate::pages::stamp(&mut s, self.now);
        let _ = write!(s, " {} ", self.local.ip().to_canonical());
        for v in [self.method, self.stem, self.query] {
            w3c_value(&mut s, v);
            s.push(' ');
        }
        let _ = write!(s, "{} {} ", self.local.port(), self.client);
        for v in [self.agent, self.referer] {
            w3c_value(&mut s, v);
            s.push(' ');
        }
        match self.status {
            Some(code) => {
                let _ = write!(s, "{code}");
            }
            None => s.push('-'),
        }
        let _ = write!(s, " {} {} ", self.win32, self.taken_ms);
        w3c_value(&mut s, self.queue);
        s
    }

    pub(super) fn json(&self) -> String {
        let mut date = String::with_capacity(20);
        crate::pages::stamp(&mut date, self.now);
        let (day, time) = date.split_at(10);
        let text = |v: &[u8]| match v {
            [] => serde_json::Value::Null,
            v => serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
        };
        let mut o = serde_json::Map::new();
        let [
            d,
            t,
            sip,
            method,
            stem,
            query,
            sport,
            cip,
            agent,
            referer,
            status,
            win32,
            taken,
            queue,
        ] = FIELDS;
        o.insert(d.into(), day.into());
        o.insert(t.into(), time.trim_start().into());
        o.insert(
            sip.into(),
            self.local.ip().to_canonical().to_string().into(),
        );
        o.insert(method.into(), text(self.method));
        o.insert(stem.into(), text(self.stem));
        o.insert(query.into(), text(self.query));
        o.insert(sport.into(), self.local.port().into());
        o.insert(cip.into(), self.client.to_string().into());
        o.insert(agent.into(), text(self.agent));
        o.insert(referer.into(), text(self.referer));
        o.insert(status.into(), self.status.into());
        o.insert(win32.into(), self.win32.into());
        o.insert(taken.into(), self.taken_ms.into());
        o.insert(queue.into(), text(self.queue));
        // A map of strings and numbers always serializes.
        serde_json::to_string(&o).unwrap_or_default()
    }
}

/// Appends a W3C value: `-` when empty, a space as `+`, bytes outside printable ASCII as
/// `%XX`.
pub(super) fn w3c_value(s: &mut String, v: &[u8]) {
    if v.is_empty() {
        s.push('-');
        return;
    }
    for &b in v {
        match b {
            b' ' => s.push('+'),
            0x21..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "%{b:02X}");
            }
        }
    }
}
