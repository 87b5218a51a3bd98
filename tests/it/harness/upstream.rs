//! An upstream server for upstream queues to forward to: [`EchoServer`] answers each
//! request with the request as it arrived, and [`Echoed`] reads that answer back; and a
//! daemon forwarding to it ([`daemon_with_upstream`]).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::daemon::{Daemon, TempDir};
use super::http::find;

/// Starts a daemon in `dir` whose configuration holds one upstream queue `legacy` on
/// `http://+:PORT/legacy/`, forwarding to `upstream` (as written in the file).
pub fn daemon_with_upstream(dir: TempDir, port: u16, upstream: &str) -> Daemon {
    Daemon::builder()
        .dir(dir)
        .config(format!(
            "iplisten = [\"127.0.0.1\"]\n\n[[queue]]\nname = \"legacy\"\n\
             urls = [\"http://+:{port}/legacy/\"]\nupstream = \"{upstream}\"\n"
        ))
        .spawn()
}

/// A byte stream a test server can serve.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A listener for the test's upstream server: TCP or Unix.
pub enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl AnyListener {
    fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            AnyListener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                Ok(Box::new(s))
            }
            AnyListener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                Ok(Box::new(s))
            }
        }
    }

    fn set_nonblocking(&self) {
        match self {
            AnyListener::Tcp(l) => l.set_nonblocking(true),
            AnyListener::Unix(l) => l.set_nonblocking(true),
        }
        .expect("nonblocking listener");
    }
}

/// A tiny HTTP/1.1 server (keep-alive) that answers each request with its request line and
/// headers as received, then `--body--\n`, then the request body (de-chunked).
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(listener: AnyListener) -> EchoServer {
        listener.set_nonblocking();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(s) => {
                        std::thread::spawn(move || echo_connection(s));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EchoServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads more bytes; false at the end of the stream or on an error.
fn more(s: &mut dyn Stream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match s.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn echo_connection(mut s: Box<dyn Stream>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !more(&mut *s, &mut buf) {
                return;
            }
        };
        let head: Vec<u8> = buf.drain(..head_end).collect();
        let lower = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut body = Vec::new();
        if let Some(n) = length {
            while buf.len() < n {
                if !more(&mut *s, &mut buf) {
                    return;
                }
            }
            body.extend(buf.drain(..n));
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&buf, b"\r\n") {
                        break i;
                    }
                    if !more(&mut *s, &mut buf) {
                        return;
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let Ok(size) =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                else {
                    return;
                };
                buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailers (none expected), then the blank line.
                    loop {
                        if let Some(i) = find(&buf, b"\r\n") {
                            let blank = i == 0;
                            buf.drain(..i + 2);
                            if blank {
                                break;
                            }
                        } else if !more(&mut *s, &mut buf) {
                            return;
                        }
                    }
                    break;
                }
                while buf.len() < size + 2 {
                    if !more(&mut *s, &mut buf) {
                        return;
                    }
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
            }
        }
        let mut out = head;
        out.extend_from_slice(b"--body--\n");
        out.extend_from_slice(&body);
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Echo: yes\r\nContent-Length: {}\r\n\r\n",
            out.len()
        );
        if s.write_all(reply.as_bytes()).is_err() || s.write_all(&out).is_err() {
            return;
        }
    }
}

/// What the echo server saw: request line, header lines (lower-cased names), body.
pub struct Echoed {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Echoed {
    pub fn parse(raw: &[u8]) -> Echoed {
        let split = find(raw, b"\r\n\r\n--body--\n").expect("echo body marker");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw[split + 4 + 9..].to_vec();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Echoed {
            request_line,
            headers,
            body,
        }
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn one(&self, name: &str) -> &str {
        let all = self.all(name);
        assert_eq!(all.len(), 1, "{name}: {all:?} in {:?}", self.headers);
        all[0]
    }
}

/// One request as a [`Scripted`] upstream got it: its head, and the connection to read the
/// rest from and answer on.
pub struct Exchange<'a> {
    /// The connection's number, from 0.
    pub conn: usize,
    pub head: String,
    /// Bytes read past the head.
    pub rest: &'a mut Vec<u8>,
    pub s: &'a mut std::net::TcpStream,
}

impl Exchange<'_> {
    /// Reads the request body as its head frames it (Content-Length or chunked), de-chunked.
    pub fn body(&mut self) -> Vec<u8> {
        let lower = self.head.to_ascii_lowercase();
        let mut chunk = [0u8; 16384];
        let mut more = |s: &mut std::net::TcpStream, rest: &mut Vec<u8>| {
            let n = s.read(&mut chunk).expect("read the request body");
            assert!(n > 0, "closed mid-body");
            rest.extend_from_slice(&chunk[..n]);
        };
        if let Some(n) = header_in(&lower, "content-length") {
            let n: usize = n.parse().expect("a length");
            while self.rest.len() < n {
                more(self.s, self.rest);
            }
            return self.rest.drain(..n).collect();
        }
        if !lower.contains("transfer-encoding: chunked") {
            return Vec::new();
        }
        let mut body = Vec::new();
        loop {
            let Some(end) = find(self.rest, b"\r\n") else {
                more(self.s, self.rest);
                continue;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.rest[..end])
                    .expect("ascii")
                    .trim(),
                16,
            )
            .expect("chunk size");
            if size == 0 {
                while find(self.rest, b"\r\n\r\n").is_none() && self.rest.len() < end + 4 {
                    more(self.s, self.rest);
                }
                let _ = self.rest.drain(..end + 4);
                return body;
            }
            while self.rest.len() < end + 2 + size + 2 {
                more(self.s, self.rest);
            }
            body.extend_from_slice(&self.rest[end + 2..end + 2 + size]);
            self.rest.drain(..end + 2 + size + 2);
        }
    }
}

/// A header's value in a lower-cased head.
fn header_in<'a>(lower: &'a str, name: &str) -> Option<&'a str> {
    lower.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}

/// A test upstream that answers by script, misbehaving on purpose: on 127.0.0.1, a thread
/// per connection, which reads each request head and hands it to `answer`; `answer` says
/// whether the connection goes on (`true`) or closes. Every head received is kept.
pub struct Scripted {
    pub addr: String,
    pub heads: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    pub fn start(answer: impl Fn(&mut Exchange<'_>) -> bool + Send + Sync + 'static) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr").to_string();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(answer);
        let (flag, seen) = (stop.clone(), heads.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = 0;
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                let (answer, seen, conn) = (answer.clone(), seen.clone(), conns);
                conns += 1;
                std::thread::spawn(move || {
                    let mut rest = Vec::new();
                    let mut chunk = [0u8; 16384];
                    loop {
                        let end = loop {
                            if let Some(i) = find(&rest, b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk) {
                                Ok(n) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        };
                        let raw: Vec<u8> = rest.drain(..end).collect();
                        let head = String::from_utf8_lossy(&raw).into_owned();
                        seen.lock().expect("heads").push(raw);
                        let mut x = Exchange {
                            conn,
                            head,
                            rest: &mut rest,
                            s: &mut s,
                        };
                        if !answer(&mut x) {
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    /// The request heads received so far, lossily as text.
    pub fn heads(&self) -> Vec<String> {
        let heads = self.heads.lock().expect("heads");
        heads
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
