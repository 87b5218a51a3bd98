//! The control-socket client every operator command shares: one HTTP/1.1 request with an
//! optional JSON body on the daemon's Unix socket, one answer read back.
//!
//! Each request opens its own connection and sends `Connection: close`; the answer is read
//! by `Content-Length`, by chunks, or to the end of the stream, whichever the daemon uses.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use portshare_proto::control::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The `--control` flag every client verb takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ControlArg {
    /// The daemon's control socket. Default: $PORTSHARE_CONTROL, else the per-user socket
    /// if it exists, else /run/portshare/control.sock.
    #[arg(long, value_name = "PATH", global = true)]
    pub(crate) control: Option<PathBuf>,
}

impl ControlArg {
    /// A client for the socket named, or found the way every client finds it.
    pub(crate) fn client(&self) -> Client {
        Client::new(self.control.clone().unwrap_or_else(|| {
            portshare_proto::control_socket_for_client(|k| std::env::var_os(k), Path::exists)
        }))
    }
}

/// A client of one daemon's control socket.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    path: PathBuf,
}

/// What went wrong talking to the daemon.
#[derive(Debug)]
pub(crate) enum Error {
    /// The socket cannot be connected to.
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The connection broke, or the answer is not HTTP or not the JSON expected.
    Protocol(String),
    /// The daemon refused the request.
    Api(ApiError),
    /// A failure status without the API's error body.
    Status { status: u16, body: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { path, source } => write!(
                f,
                "cannot reach the daemon at {}: {source} (is `portshare serve` running? \
                 --control or PORTSHARE_CONTROL name another socket)",
                path.display()
            ),
            Error::Protocol(msg) => f.write_str(msg),
            Error::Api(error) => error.fmt(f),
            Error::Status { status, body } if body.is_empty() => {
                write!(f, "the daemon answered {status}")
            }
            Error::Status { status, body } => write!(f, "the daemon answered {status}: {body}"),
        }
    }
}

impl Error {
    /// What the operator can do about it after `portshare <verb>` failed, when something
    /// obvious comes to mind. Root denied has nothing to gain from "run as root": the
    /// daemon's message says why.
    pub(crate) fn hint(&self, verb: &str, root: bool) -> Option<&'static str> {
        let Error::Api(error) = self else {
            return None;
        };
        if error.is_access_denied() {
            if root {
                return None;
            }
            return Some(if verb.starts_with("urlacl") {
                "run as root or a member of the admin group, or ask for a reservation: \
                 portshare urlacl add URL --user NAME --delegate yes"
            } else {
                "run as root or a member of the admin group"
            });
        }
        if error.is_file_not_found() && error.message.starts_with("no control endpoint") {
            return Some(
                "the daemon does not know this request: it is older than this command; \
                 restart it from the same build",
            );
        }
        None
    }

    /// Prints `portshare <verb>: <error>` and the hint on stderr; exit code 1.
    pub(crate) fn report(&self, verb: &str) -> ExitCode {
        eprintln!("portshare {verb}: {self}");
        let root = std::fs::metadata("/proc/self")
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        if let Some(hint) = self.hint(verb, root) {
            eprintln!("hint: {hint}");
        }
        ExitCode::FAILURE
    }
}

/// One answer: the status and the body's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Client {
    pub(crate) fn new(path: PathBuf) -> Client {
        Client { path }
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `GET target`, the 2xx answer's JSON decoded.
    pub(crate) fn get<T: DeserializeOwned>(&self, target: &str) -> Result<T, Error> {
        self.call("GET", target, None::<&()>)
    }

    /// `GET target`, the 2xx answer's JSON text as it came, once checked to be JSON.
    pub(crate) fn get_json_text(&self, target: &str) -> Result<String, Error> {
        let answer = self.raw("GET", target, None::<&()>)?;
        let text = String::from_utf8(answer.body)
            .map_err(|e| Error::Protocol(format!("the daemon's answer is not UTF-8: {e}")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
            Error::Protocol(format!(
                "the daemon's answer to GET {target} is not JSON ({e}): {text}"
            ))
        })?;
        Ok(text)
    }

    /// `method target` with `body` as JSON; the 2xx answer's JSON decoded. A 204 decodes
    /// as JSON `null`, so ask for `()` there.
    pub(crate) fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let answer = self.raw(method, target, body)?;
        let text: &[u8] = if answer.body.is_empty() {
            b"null"
        } else {
            &answer.body
        };
        serde_json::from_slice(text).map_err(|e| {
            Error::Protocol(format!(
                "the daemon's answer to {method} {target} is not what this command expects \
                 ({e}): {}",
                String::from_utf8_lossy(&answer.body)
            ))
        })
    }

    /// `method target` with `body` as JSON; the answer when it is 2xx, else the daemon's
    /// error.
    pub(crate) fn raw(
        &self,
        method: &str,
        target: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Answer, Error> {
        let body = match body {
            Some(b) => serde_json::to_vec(b)
                .map_err(|e| Error::Protocol(format!("cannot encode the request: {e}")))?,
            None => Vec::new(),
        };
        let mut stream = UnixStream::connect(&self.path).map_err(|source| Error::Unreachable {
            path: self.path.clone(),
            source,
        })?;
        // A reload may rebind ports; a minute is generous and still ends a hung daemon.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
        let broken =
            |e: std::io::Error| Error::Protocol(format!("the control connection broke: {e}"));
        stream
            .write_all(&request(method, target, &body))
            .map_err(broken)?;
        let answer = read_answer(&mut BufReader::new(stream)).map_err(|e| match e {
            ReadError::Io(e) => broken(e),
            ReadError::Malformed(m) => {
                Error::Protocol(format!("the daemon's answer is not HTTP/1.1: {m}"))
            }
        })?;
        if (200..300).contains(&answer.status) {
            return Ok(answer);
        }
        Err(match serde_json::from_slice::<ApiError>(&answer.body) {
            Ok(error) => Error::Api(error),
            Err(_) => Error::Status {
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body).trim().to_owned(),
            },
        })
    }
}

/// The request's bytes.
fn request(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: portshare\r\nConnection: close\r\n");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH" | "DELETE") {
        out.push_str("Content-Type: application/json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Malformed(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

/// Most bytes accepted in the head and in the body: the state of a busy daemon is large,
/// but not this large.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Reads one final answer (interim 1xx answers are skipped).
fn read_answer(r: &mut impl BufRead) -> Result<Answer, ReadError> {
    loop {
        let (status, headers) = read_head(r)?;
        if (100..200).contains(&status) {
            continue;
        }
        let header = |name: &str| {
            headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        let chunked = header("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(r)?
        } else if let Some(len) = header("content-length").first() {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| ReadError::Malformed(format!("Content-Length {len:?}")))?;
            if len > MAX_BODY {
                return Err(ReadError::Malformed(format!("a body of {len} bytes")));
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            r.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
            body
        };
        return Ok(Answer { status, body });
    }
}

/// The status line and the headers, up to the blank line.
fn read_head(r: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>), ReadError> {
    let mut total = 0;
    let mut status_line = line(r, &mut total)?;
    // Tolerate blank lines before the status line.
    while status_line.is_empty() {
        status_line = line(r, &mut total)?;
    }
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ReadError::Malformed(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let l = line(r, &mut total)?;
        if l.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| ReadError::Malformed(format!("header line {l:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

/// One line without its CRLF (or LF); an error at the end of the stream.
fn line(r: &mut impl BufRead, total: &mut usize) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    let n = r
        .take((MAX_HEAD - *total) as u64)
        .read_until(b'\n', &mut buf)?;
    *total += n;
    if n == 0 || !buf.ends_with(b"\n") {
        return Err(if *total >= MAX_HEAD {
            ReadError::Malformed("a head over 64 KiB".into())
        } else {
            ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())
        });
    }
    buf.pop();
    if buf.ends_with(b"\r") {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A chunked body, trailers skipped.
fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut total = 0;
    loop {
        let size_line = line(r, &mut total)?;
        total = 0;
        let digits = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(digits, 16)
            .map_err(|_| ReadError::Malformed(format!("chunk size {size_line:?}")))?;
        if size == 0 {
            // Trailers, then the blank line.
            while !line(r, &mut total)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::Malformed("a body over 64 MiB".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        if !line(r, &mut total)?.is_empty() {
            return Err(ReadError::Malformed("no CRLF after a chunk".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(raw: &[u8]) -> Result<Answer, ReadError> {
        read_answer(&mut &raw[..])
    }

    fn ok(raw: &[u8]) -> (u16, String) {
        let a = answer(raw).expect("an answer");
        (a.status, String::from_utf8(a.body).expect("UTF-8"))
    }

    #[test]
    fn content_length() {
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing"),
            (200, "{}".into())
        );
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3;x=y\r\n{\"a\r\n5\r\n\":1}\n\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(ok(raw), (201, "{\"a\":1}\n".into()));
    }

    #[test]
    fn close_delimited() {
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\n\r\n[1,2]"), (200, "[1,2]".into()));
    }

    #[test]
    fn no_content_has_no_body() {
        assert_eq!(
            ok(b"HTTP/1.1 204 No Content\r\n\r\nignored"),
            (204, String::new())
        );
    }

    #[test]
    fn interim_answers_are_skipped() {
        let raw =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(ok(raw), (403, "x".into()));
    }

    #[test]
    fn bare_lf_lines() {
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\ncontent-length: 1\n\nz"),
            (200, "z".into())
        );
    }

    #[test]
    fn malformed_and_short_answers() {
        assert!(matches!(
            answer(b"SSH-2.0\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            answer(b"HTTP/1.1 200 OK\r\n"),
            Err(ReadError::Io(_))
        ));
        assert!(matches!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"),
            Err(ReadError::Io(_))
        ));
        assert!(matches!(
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn requests_carry_a_length_when_they_may_have_a_body() {
        assert_eq!(
            request("GET", "/v1/state", b""),
            b"GET /v1/state HTTP/1.1\r\nHost: portshare\r\nConnection: close\r\n\r\n"
        );
        let post = String::from_utf8(request("POST", "/v1/reload", b"")).expect("text");
        assert!(post.contains("Content-Length: 0\r\n"), "{post}");
        let patch = String::from_utf8(request("PATCH", "/v1/queues/a", b"{}")).expect("text");
        assert!(patch.ends_with("Content-Length: 2\r\n\r\n{}"), "{patch}");
    }

    #[test]
    fn hints() {
        let api = |code, message: &str| {
            Error::Api(ApiError {
                code,
                name: "X".into(),
                message: message.into(),
            })
        };
        let urlacl = api(5, "denied").hint("urlacl add", false).unwrap_or("");
        assert!(
            urlacl.starts_with(
                "run as root or a member of the admin group, or ask for a reservation: \
                 portshare urlacl add URL"
            ),
            "{urlacl}"
        );
        assert_eq!(
            api(5, "denied").hint("queue disable", false),
            Some("run as root or a member of the admin group")
        );
        assert_eq!(api(5, "denied").hint("urlacl delete", true), None);
        assert!(
            api(2, "no control endpoint GET /v1/urlacl")
                .hint("show urlacl", true)
                .is_some_and(|h| h.contains("older"))
        );
        assert_eq!(api(2, "no queue named x").hint("queue enable", false), None);
        let shown = api(5, "denied").to_string();
        assert_eq!(shown, "denied (5 X)");
    }

    #[test]
    fn unreachable_names_the_socket() {
        let client = Client::new("/nonexistent/portshare/control.sock".into());
        let err = client
            .get::<serde_json::Value>("/v1/state")
            .expect_err("no daemon there");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach the daemon at /nonexistent/portshare/control.sock"),
            "{text}"
        );
    }

    /// A one-shot daemon on a temporary socket: reads one request, answers `answer`.
    fn one_shot(answer: &'static [u8]) -> (Client, std::thread::JoinHandle<String>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "portshare-client-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let cleanup = path.clone();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let _ = std::fs::remove_file(&cleanup);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            // The tests' requests all carry a body ending in `}` or none at all.
            while !(req.ends_with(b"}") || req.ends_with(b"Content-Length: 0\r\n\r\n")) {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&req));
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).expect("write");
            String::from_utf8(req).expect("text")
        });
        (Client::new(path), server)
    }

    #[test]
    fn api_errors_come_back_typed() {
        let (client, server) = one_shot(
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 56\r\n\r\n\
              {\"code\":183,\"name\":\"ERROR_ALREADY_EXISTS\",\"message\":\"m\"}",
        );
        let body = serde_json::json!({ "url": "http://+:80/a/" });
        let err = client
            .call::<()>("POST", "/v1/urlacl", Some(&body))
            .expect_err("409");
        let req = server.join().expect("server");
        assert!(req.starts_with("POST /v1/urlacl HTTP/1.1\r\n"), "{req}");
        assert!(
            req.ends_with("\r\n\r\n{\"url\":\"http://+:80/a/\"}"),
            "{req}"
        );
        match err {
            Error::Api(error) => {
                assert_eq!(error.code, 183);
                assert_eq!(error.to_string(), "m (183 ERROR_ALREADY_EXISTS)");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_content_decodes_as_unit_and_non_json_errors_keep_the_text() {
        let (client, server) = one_shot(b"HTTP/1.1 204 No Content\r\n\r\n");
        client
            .call::<()>("DELETE", "/v1/urlacl", Some(&serde_json::json!({})))
            .expect("204");
        server.join().expect("server");
        let (client, server) =
            one_shot(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\noops");
        let err = client
            .call::<()>("POST", "/v1/reload", Some(&serde_json::json!({})))
            .expect_err("502");
        server.join().expect("server");
        assert_eq!(err.to_string(), "the daemon answered 502: oops");
    }
}
