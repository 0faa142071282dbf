//! Config errors that point at the file, line and key, like a compiler.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// Something wrong with a configuration file: where, which key, and why.
///
/// Displayed as
///
/// ```text
/// plumeway.toml:12:12: routes[0].upstream: unknown upstream "userz" (declared: "users")
///    |
/// 12 | upstream = "userz"
///    |            ^^^^^^^
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(Box<Located>);

/// The parts of a [`ConfigError`]; boxed so that `Result<Config, ConfigError>`
/// stays small on the happy path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    file: PathBuf,
    /// 1-based line and column, when the place is known.
    position: Option<(usize, usize)>,
    /// The dotted key path, e.g. `routes[0].upstream`; empty for the whole file.
    key: String,
    message: String,
    /// The offending source line and the span to underline within it.
    snippet: Option<(String, Range<usize>)>,
}

/// Errors found while checking a parsed config, before they are tied to a file.
///
/// Validation works on the serde model, which has no spans; it names the key
/// path and [`ConfigError::locate`] finds the line afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The dotted key path, as in [`ConfigError::key`].
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// An error at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// An error that is not tied to a place in a file, such as an unreadable file.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self(Box::new(Located {
            file: file.to_owned(),
            position: None,
            key: String::new(),
            message: message.into(),
            snippet: None,
        }))
    }

    /// An error at byte `span` of `source`.
    pub fn at_span(file: &Path, source: &str, span: Range<usize>, key: String, message: String) -> Self {
        let start = span.start.min(source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..].find('\n').map_or(source.len(), |i| start + i);
        let line_no = source[..start].matches('\n').count() + 1;
        let col = source[line_start..start].chars().count() + 1;
        let line = source[line_start..line_end].trim_end_matches('\r').to_owned();
        let under_start = start - line_start;
        let under_end = (span.end.min(line_end) - line_start)
            .max(under_start + 1)
            .min(line.len().max(under_start + 1));
        Self(Box::new(Located {
            file: file.to_owned(),
            position: Some((line_no, col)),
            key,
            message,
            snippet: Some((line, under_start..under_end)),
        }))
    }

    /// Ties a validation error to the line of its key in `source`.
    pub fn locate(file: &Path, source: &str, invalid: Invalid) -> Self {
        match find_key(source, &invalid.key) {
            Some(span) => Self::at_span(file, source, span, invalid.key, invalid.message),
            None => {
                let mut err = Self::whole_file(file, invalid.message);
                err.0.key = invalid.key;
                err
            }
        }
    }

    /// The file the config came from.
    pub fn file(&self) -> &Path {
        &self.0.file
    }

    /// The 1-based line, when the place is known.
    pub fn line(&self) -> Option<usize> {
        self.0.position.map(|(line, _)| line)
    }

    /// The dotted key path, e.g. `routes[0].upstream`; empty for the whole file.
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// What is wrong, in words a user can act on.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        write!(f, "{}", e.file.display())?;
        if let Some((line, col)) = e.position {
            write!(f, ":{line}:{col}")?;
        }
        if !e.key.is_empty() {
            write!(f, ": {}", e.key)?;
        }
        write!(f, ": {}", e.message)?;
        if let (Some((line, _)), Some((text, under))) = (e.position, &e.snippet) {
            let gutter = " ".repeat(line.to_string().len());
            let pad: String = text[..under.start.min(text.len())]
                .chars()
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let width = text.get(under.clone()).map_or(1, |s| s.chars().count().max(1));
            write!(
                f,
                "\n{gutter} |\n{line} | {text}\n{gutter} | {pad}{}",
                "^".repeat(width)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The span of the value at a dotted key path such as `routes[1].match.host`,
/// or of the deepest part of the path that exists.
fn find_key(source: &str, key: &str) -> Option<Range<usize>> {
    let root = DeTable::parse(source).ok()?;
    let mut best: Option<Range<usize>> = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for part in split_key(key) {
        match part {
            KeyPart::Field(name) => {
                let t = match (table, value) {
                    (Some(t), _) => t,
                    (None, Some(v)) => v.as_table()?,
                    (None, None) => return best,
                };
                let Some((k, v)) = t.get_key_value(name) else {
                    return best;
                };
                // A key that names a table points best at the key itself; a
                // leaf points at its value.
                best = Some(if v.get_ref().is_table() { k.span() } else { v.span() });
                table = None;
                value = Some(v.get_ref());
            }
            KeyPart::Index(i) => {
                let Some(item) = value.and_then(DeValue::as_array).and_then(|a| a.get(i)) else {
                    return best;
                };
                best = Some(item.span());
                table = None;
                value = Some(item.get_ref());
            }
        }
    }
    best
}

enum KeyPart<'a> {
    Field(&'a str),
    Index(usize),
}

/// Splits `routes[0].match.path_prefix` into its parts; quoted keys are not
/// produced by our paths, so plain splitting on `.` and `[` is enough.
fn split_key(key: &str) -> Vec<KeyPart<'_>> {
    let mut parts = Vec::new();
    for segment in key.split('.').filter(|s| !s.is_empty()) {
        let mut rest = segment;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                parts.push(KeyPart::Field(&rest[..open]));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    parts.push(KeyPart::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else {
            parts.push(KeyPart::Field(rest));
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nmatch = { path_prefix = \"/a\" }\nupstream = \"x\"\n\n[[routes]]\nupstream = \"nope\"\n";

    #[test]
    fn finds_array_of_tables_entries() {
        let span = find_key(SRC, "routes[1].upstream").unwrap();
        assert_eq!(&SRC[span], "\"nope\"");
        let span = find_key(SRC, "routes[0].match.path_prefix").unwrap();
        assert_eq!(&SRC[span], "\"/a\"");
    }

    #[test]
    fn displays_file_line_key_and_caret() {
        let err = ConfigError::locate(
            Path::new("p.toml"),
            SRC,
            Invalid::new("routes[1].upstream", "unknown upstream \"nope\""),
        );
        assert_eq!(
            err.to_string(),
            "p.toml:9:12: routes[1].upstream: unknown upstream \"nope\"\n  |\n9 | upstream = \"nope\"\n  |            ^^^^^^"
        );
    }
}
