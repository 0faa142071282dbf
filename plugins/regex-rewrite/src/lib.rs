//! `builtin = "regex-rewrite"`: rewrites the path with a regular expression.
//! `config = { pattern = "^/old/(.*)$", replacement = "/new/$1" }`. The
//! pattern is matched against the path (without query); the query is kept.
//! A path that does not match is left alone.

use plumeway_sdk::{Config, Error, Plugin, Request, Rewrite, serde};
use regex_lite::Regex;

/// The plugin.
#[derive(Debug)]
pub struct RegexRewrite {
    pattern: Regex,
    replacement: String,
}

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {
    pattern: String,
    replacement: String,
}

impl Plugin for RegexRewrite {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let pattern = Regex::new(&s.pattern).map_err(|e| format!("invalid pattern {:?}: {e}", s.pattern))?;
        Ok(Self {
            pattern,
            replacement: s.replacement,
        })
    }
}

impl Rewrite for RegexRewrite {
    fn rewrite(&self, req: &Request<'_>) -> Result<Option<String>, Error> {
        let path = req.path();
        if !self.pattern.is_match(path) {
            return Ok(None);
        }
        let new = self.pattern.replace(path, self.replacement.as_str());
        if !new.starts_with('/') {
            return Err(Error::new(format!(
                "rewrote {path:?} to {new:?}, which does not start with \"/\""
            )));
        }
        Ok(Some(match req.query() {
            Some(q) => format!("{new}?{q}"),
            None => new.into_owned(),
        }))
    }
}

plumeway_sdk::export!(RegexRewrite: Rewrite);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(pattern: &str, replacement: &str) -> RegexRewrite {
        let json = format!(r#"{{"pattern":{pattern:?},"replacement":{replacement:?}}}"#);
        RegexRewrite::init(Config::from_json(json)).unwrap()
    }

    #[test]
    fn rewrites_matching_paths_and_keeps_the_query() {
        let p = plugin("^/old/(.*)$", "/new/$1");
        let req = Request::builder("GET", "/old/a/b?q=1").build();
        assert_eq!(p.rewrite(&req).unwrap().as_deref(), Some("/new/a/b?q=1"));
        assert_eq!(p.rewrite(&Request::builder("GET", "/other").build()).unwrap(), None);
    }

    #[test]
    fn a_result_without_leading_slash_is_an_error() {
        let p = plugin("^/(.*)$", "$1");
        assert!(p.rewrite(&Request::builder("GET", "/x").build()).is_err());
    }

    #[test]
    fn a_bad_pattern_is_a_config_error() {
        let err = RegexRewrite::init(Config::from_json(r#"{"pattern":"(","replacement":"/"}"#)).unwrap_err();
        assert!(err.starts_with("invalid pattern \"(\""), "{err}");
    }
}
