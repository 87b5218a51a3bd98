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
