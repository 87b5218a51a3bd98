//! The crate's error: why the daemon could not start, or a configuration file could not be
//! loaded. What a client or an application does wrong never comes back as one of these: the
//! daemon answers it on the wire.

use std::fmt;

/// A boxed cause.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why the daemon could not start ([`run`](crate::run), [`serve_until`](crate::serve_until)),
/// or a configuration file could not be loaded ([`Config::from_file`](crate::Config::from_file)).
///
/// Ask what it is with [`is_config`](Error::is_config) and [`is_bind`](Error::is_bind); the
/// cause, when there is one, is its [`source`](std::error::Error::source): an
/// [`io::Error`](std::io::Error), a [`ConfigError`](crate::ConfigError), a TOML parser's
/// error. `Display` is one line for the operator that already ends with the cause's text,
/// so print it alone rather than with the chain.
///
/// # Examples
///
/// ```
/// use portshare_server::{Config, ConfigError};
///
/// let err = Config::from_file("/nonexistent/portshare.toml".as_ref()).unwrap_err();
/// assert!(err.is_config() && !err.is_bind());
/// assert!(err.to_string().starts_with("cannot read /nonexistent/portshare.toml: "));
///
/// let dir = std::env::temp_dir().join(format!("portshare-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let file = dir.join("bad.toml");
/// std::fs::write(&file, "[limits]\nmax_field_length = 10\n")?;
/// let err = Config::from_file(&file).unwrap_err();
/// let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<ConfigError>());
/// assert_eq!(source.and_then(|e| e.line), Some(2));
/// assert!(err.to_string().starts_with(&format!("{}: line 2: ", file.display())));
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    /// What failed, naming the file or socket: the text before the cause's.
    context: String,
    source: Option<Cause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The configuration file or the state file cannot be read, does not parse or check,
    /// or declares queues that cannot be created.
    Config,
    /// The control socket cannot be bound.
    Bind,
    /// The process cannot run at all: no runtime, too low an open-file limit.
    Start,
}

impl Error {
    /// True when the configuration is at fault: the configuration file or the state file
    /// cannot be read, does not parse, holds a value out of range, or declares a queue the
    /// daemon cannot create. Fix the file and start again.
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// True when the control socket cannot be bound: another daemon listens on it, or its
    /// folder cannot be created or written. Give this daemon its own `--control`.
    pub fn is_bind(&self) -> bool {
        self.inner.kind == Kind::Bind
    }

    pub(crate) fn config(context: impl Into<String>) -> Error {
        Error::new(Kind::Config, context.into())
    }

    pub(crate) fn bind(context: impl Into<String>) -> Error {
        Error::new(Kind::Bind, context.into())
    }

    pub(crate) fn start(context: impl Into<String>) -> Error {
        Error::new(Kind::Start, context.into())
    }

    /// The same error, caused by `source`.
    pub(crate) fn with(mut self, source: impl Into<Cause>) -> Error {
        self.inner.source = Some(source.into());
        self
    }

    fn new(kind: Kind, context: String) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                context,
                source: None,
            }),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = f.debug_tuple("portshare_server::Error");
        t.field(&self.inner.kind).field(&self.inner.context);
        if let Some(source) = &self.inner.source {
            t.field(source);
        }
        t.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.context)?;
        match &self.inner.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_messages_and_sources() {
        let e = Error::bind("cannot listen on /x.sock")
            .with(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(e.is_bind() && !e.is_config());
        assert_eq!(e.to_string(), "cannot listen on /x.sock: permission denied");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        let e = Error::config("queue \"q\": not created");
        assert!(e.is_config() && std::error::Error::source(&e).is_none());
        assert_eq!(e.to_string(), "queue \"q\": not created");
        let e = Error::start("the open-file limit is 10");
        assert!(!e.is_config() && !e.is_bind());
        assert!(format!("{e:?}").contains("Start"), "{e:?}");
    }

    #[test]
    fn it_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
