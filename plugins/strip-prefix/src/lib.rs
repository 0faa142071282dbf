//! `builtin = "strip-prefix"`: removes a leading path prefix before the
//! request goes upstream. `config = { prefix = "/api" }`: `/api/users?x=1`
//! becomes `/users?x=1`, `/api` becomes `/`, and `/apix` is left alone
//! (prefixes match whole segments).

use plumeway_sdk::{Config, Error, Plugin, Request, Rewrite, serde};

/// The plugin.
#[derive(Debug)]
pub struct StripPrefix {
    prefix: String,
}

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {
    prefix: String,
}

impl Plugin for StripPrefix {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if !s.prefix.starts_with('/') {
            return Err(format!("prefix must start with \"/\", got {:?}", s.prefix));
        }
        Ok(Self {
            prefix: s.prefix.trim_end_matches('/').to_owned(),
        })
    }
}

impl Rewrite for StripPrefix {
    fn rewrite(&self, req: &Request<'_>) -> Result<Option<String>, Error> {
        // One scan for the `?`, not one for the path and one for the query.
        let (path, query) = req.path_and_query();
        let Some(rest) = path.strip_prefix(&self.prefix) else {
            return Ok(None);
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Ok(None);
        }
        let path = if rest.is_empty() { "/" } else { rest };
        Ok(Some(match query {
            Some(q) => [path, "?", q].concat(),
            None => path.to_owned(),
        }))
    }
}

plumeway_sdk::export!(StripPrefix: Rewrite);

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(prefix: &str, path: &str) -> Option<String> {
        let p = StripPrefix::init(Config::from_json(format!(r#"{{"prefix":"{prefix}"}}"#))).unwrap();
        p.rewrite(&Request::builder("GET", path).build()).unwrap()
    }

    #[test]
    fn strips_whole_segments_and_keeps_the_query() {
        assert_eq!(strip("/api", "/api/users?x=1").as_deref(), Some("/users?x=1"));
        assert_eq!(strip("/api/", "/api/users").as_deref(), Some("/users"));
        assert_eq!(strip("/api", "/api").as_deref(), Some("/"));
        assert_eq!(strip("/api", "/api?x").as_deref(), Some("/?x"));
        assert_eq!(strip("/api", "/apix"), None);
        assert_eq!(strip("/api", "/other"), None);
    }

    #[test]
    fn rejects_a_prefix_without_slash() {
        let err = StripPrefix::init(Config::from_json(r#"{"prefix":"api"}"#)).unwrap_err();
        assert_eq!(err, "prefix must start with \"/\", got \"api\"");
    }
}
