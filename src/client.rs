//! The control-socket client every operator command shares: the SDK's [`Control`] on a
//! current-thread runtime, one request with an optional JSON body per connection, and the
//! command's own error messages and hints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use portshare_client::Control;
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
        let root = nix::unistd::geteuid().is_root();
        if let Some(hint) = self.hint(verb, root) {
            eprintln!("hint: {hint}");
        }
        ExitCode::FAILURE
    }
}

/// The longest a request may take, connecting included: a reload may rebind ports, and a
/// minute is generous for that while it still ends the wait on a hung daemon.
const WAIT: Duration = Duration::from_secs(60);

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
        let body = self.raw("GET", target, None::<&()>)?;
        let text = String::from_utf8(body.to_vec())
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
        let text: &[u8] = if answer.is_empty() { b"null" } else { &answer };
        serde_json::from_slice(text).map_err(|e| {
            Error::Protocol(format!(
                "the daemon's answer to {method} {target} is not what this command expects \
                 ({e}): {}",
                String::from_utf8_lossy(&answer)
            ))
        })
    }

    /// `method target` with `body` as JSON, on a connection of its own that closes after
    /// the answer; the answer's body when it is 2xx, else the daemon's error.
    pub(crate) fn raw(
        &self,
        method: &str,
        target: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Bytes, Error> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::Protocol(format!("cannot encode the request: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Protocol(format!("cannot start the runtime: {e}")))?;
        let exchange = async {
            let mut control = Control::connect(&self.path).await?;
            control.send(method, target, body).await
        };
        let answer = runtime
            .block_on(async { tokio::time::timeout(WAIT, exchange).await })
            .map_err(|_| {
                Error::Protocol(format!(
                    "the control connection broke: no answer within {} s",
                    WAIT.as_secs()
                ))
            })?
            .map_err(Error::from_sdk)?;
        let (parts, body) = answer.into_parts();
        if parts.status.is_success() {
            return Ok(body);
        }
        Err(match serde_json::from_slice::<ApiError>(&body) {
            Ok(error) => Error::Api(error),
            Err(_) => Error::Status {
                status: parts.status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            },
        })
    }
}

impl Error {
    /// The SDK's failure to exchange a request, told as this command tells it.
    fn from_sdk(e: portshare_client::Error) -> Error {
        use portshare_client::Error as Sdk;
        match e {
            Sdk::Connect { path, source } => Error::Unreachable { path, source },
            Sdk::Api(error) => Error::Api(error),
            Sdk::Http { source, .. } if source.is_parse() => {
                Error::Protocol(format!("the daemon's answer is not HTTP/1.1: {source}"))
            }
            Sdk::Http { source, .. } => {
                Error::Protocol(format!("the control connection broke: {source}"))
            }
            Sdk::Io(e) => Error::Protocol(format!("the control connection broke: {e}")),
            Sdk::Request(e) => Error::Protocol(format!("cannot encode the request: {e}")),
            Sdk::Protocol(m) => Error::Protocol(format!("the control connection broke: {m}")),
            other => Error::Protocol(format!("the control connection broke: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn hints() {
        let api = |code, message: &str| {
            Error::Api(ApiError {
                code,
                name: "X".into(),
                message: message.into(),
                index: None,
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

    /// A one-shot daemon on a temporary socket: reads one request, answers `answer` and
    /// closes the connection.
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
            while !(req.ends_with(b"}") || req.ends_with(b"\r\n\r\n")) {
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
                assert!(error.is_already_exists());
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

    #[test]
    fn chunked_and_close_delimited_answers() {
        let (client, server) = one_shot(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;x=y\r\n{\"a\r\n5\r\n\":1}\n\r\n0\r\nX-T: 1\r\n\r\n",
        );
        assert_eq!(
            client.get_json_text("/v1/state").expect("chunked"),
            "{\"a\":1}\n"
        );
        server.join().expect("server");
        let (client, server) = one_shot(b"HTTP/1.1 200 OK\r\n\r\n[1,2]");
        assert_eq!(
            client.get::<Vec<u32>>("/v1/state").expect("to the end"),
            [1, 2]
        );
        server.join().expect("server");
    }

    #[test]
    fn interim_answers_are_skipped() {
        let (client, server) = one_shot(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 1\r\n\r\nx",
        );
        let err = client.get::<()>("/v1/state").expect_err("403");
        server.join().expect("server");
        assert_eq!(err.to_string(), "the daemon answered 403: x");
    }

    #[test]
    fn malformed_and_short_answers() {
        let (client, server) = one_shot(b"SSH-2.0\r\n\r\n");
        let err = client.get::<()>("/v1/state").expect_err("not HTTP");
        server.join().expect("server");
        assert!(
            err.to_string()
                .starts_with("the daemon's answer is not HTTP/1.1: "),
            "{err}"
        );
        let (client, server) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
        let err = client.get::<()>("/v1/state").expect_err("cut short");
        server.join().expect("server");
        assert!(
            err.to_string()
                .starts_with("the control connection broke: "),
            "{err}"
        );
        let (client, server) = one_shot(b"HTTP/1.1 200 OK\r\n");
        let err = client.get::<()>("/v1/state").expect_err("no head");
        server.join().expect("server");
        assert!(
            err.to_string()
                .starts_with("the control connection broke: "),
            "{err}"
        );
    }
}
