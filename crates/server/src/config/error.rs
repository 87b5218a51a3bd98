//! Where in configuration text a refused value is, and the error that says so.

/// Why configuration text was refused: where, and what is wrong.
///
/// `Display` reads `line N: message` (just the message when the line is unknown). For text
/// that does not parse as TOML it is the parser's report instead, with the line, the
/// column and the line itself marked; the parser's error is then the
/// [`source`](std::error::Error::source).
///
/// # Examples
///
/// ```
/// use portshare_server::Config;
///
/// let err = Config::from_toml("[limits]\nmax_field_length = 10\n").unwrap_err();
/// assert_eq!((err.line, err.key.as_str()), (Some(2), "limits.max_field_length"));
/// assert_eq!(err.to_string(), "line 2: limits.max_field_length = 10: expected 64 to 65534");
///
/// let err = Config::from_toml("[[queue]]\nname = \"a\"\nlength = \"many\"\n").unwrap_err();
/// assert_eq!((err.line, err.key.as_str()), (Some(3), "queue[0].length"));
/// assert!(err.to_string().starts_with("TOML parse error at line 3"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The 1-based line at fault, when there is text to find it in.
    pub line: Option<usize>,
    /// The key at fault as a dotted path: `admin_group`, `limits.max_field_length`, and
    /// for the `n`th (from 0) table of an array of tables, `queue[n].length`. Empty when
    /// the text does not parse so far that a key can be told.
    pub key: String,
    /// What is wrong and what is expected, naming the key.
    pub message: String,
    /// The TOML parser's error, for text that does not parse.
    parse: Option<Box<toml::de::Error>>,
}

impl ConfigError {
    /// Text that does not parse, or has a key or a type the configuration does not know.
    pub(super) fn parse(text: &str, e: toml::de::Error) -> ConfigError {
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| before.bytes().filter(|&b| b == b'\n').count() + 1);
        ConfigError {
            line,
            key: line.map(|l| key_at(text, l)).unwrap_or_default(),
            message: e.message().to_owned(),
            parse: Some(Box::new(e)),
        }
    }
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (&self.parse, self.line) {
            (Some(e), _) => e.fmt(f),
            (None, Some(line)) => write!(f, "line {line}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.parse
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A value the configuration may not hold, found by checking a parsed configuration: the message,
/// and the table and key it is in, to find its line by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    /// The table (`limits`, or the `n`th `[[queue]]`) and the key.
    key: (Option<(&'static str, Option<usize>)>, &'static str),
    /// What is wrong and what is expected, naming the key.
    message: String,
}

impl Fault {
    pub(crate) fn at(
        table: Option<(&'static str, Option<usize>)>,
        key: &'static str,
        message: impl Into<String>,
    ) -> Fault {
        Fault {
            key: (table, key),
            message: message.into(),
        }
    }

    /// The error, with its line in `text` when there is text.
    pub(super) fn locate(self, text: Option<&str>) -> ConfigError {
        let (table, name) = self.key;
        let key = match table {
            None => name.to_owned(),
            Some((t, None)) => format!("{t}.{name}"),
            Some((t, Some(n))) => format!("{t}[{n}].{name}"),
        };
        ConfigError {
            line: text.and_then(|text| line_of(text, &self.key)),
            key,
            message: self.message,
            parse: None,
        }
    }
}

/// The dotted key set on 1-based `line` of TOML `text`, as [`ConfigError::key`] spells
/// it; empty when that line sets no key.
fn key_at(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for raw in text.lines().take(line.saturating_sub(1)) {
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("[[") {
            let t = rest.split("]]").next().unwrap_or("").trim().to_owned();
            let n = counts.entry(t.clone()).or_insert(0);
            table = format!("{t}[{n}]");
            *n += 1;
        } else if let Some(rest) = raw.strip_prefix('[') {
            table = rest.split(']').next().unwrap_or("").trim().to_owned();
        }
    }
    let here = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let Some((name, _)) = here.split_once('=') else {
        return String::new();
    };
    let name = name.trim();
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (bare, table.is_empty()) {
        (false, _) => String::new(),
        (true, true) => name.to_owned(),
        (true, false) => format!("{table}.{name}"),
    }
}

/// The 1-based line of `key` in TOML `text`: the line that sets it inside its table (the
/// `n`th `[[array]]` for an array of tables), else the table's header line.
fn line_of(
    text: &str,
    key: &(Option<(&'static str, Option<usize>)>, &'static str),
) -> Option<usize> {
    let (table, name) = *key;
    let mut current: Option<(String, Option<usize>)> = None;
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut header = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("[[") {
            let t = rest.split("]]").next().unwrap_or("").trim().to_owned();
            let n = counts.entry(t.clone()).or_insert(0);
            current = Some((t, Some(*n)));
            *n += 1;
        } else if let Some(rest) = line.strip_prefix('[') {
            current = Some((rest.split(']').next().unwrap_or("").trim().to_owned(), None));
        } else {
            let here = match (&current, table) {
                (None, None) => true,
                (Some((t, n)), Some((want, wn))) => t == want && *n == wn,
                _ => false,
            };
            if here
                && line.split('=').next().is_some_and(|k| k.trim() == name)
                && line.contains('=')
            {
                return Some(i + 1);
            }
            continue;
        }
        let is_table = match (&current, table) {
            (Some((t, n)), Some((want, wn))) => t == want && *n == wn,
            _ => false,
        };
        if is_table && header.is_none() {
            header = Some(i + 1);
        }
    }
    header
}
