//! `builtin = "headers"`: sets, appends and removes headers. Listed in a
//! route's `request = [...]` it edits the request; in `response = [...]`
//! the response.
//!
//! ```toml
//! config = { set = { "x-gateway" = "plumeway" }, append = { "x-chain" = "a" }, remove = ["x-internal"] }
//! ```
//! Order: remove, then set, then append.

use std::collections::BTreeMap;

use plumeway_sdk::{
    Action, Config, Error, Headers, Plugin, Request, RequestFilter, Response, ResponseAction, ResponseFilter, serde,
};

/// The plugin.
#[derive(Debug)]
pub struct HeaderEdits {
    // Pairs in a list, not the config's maps: walking a B-tree on every
    // call cost more than the edits it holds (perf, bench/RESULTS.md).
    set: Vec<(String, String)>,
    append: Vec<(String, String)>,
    remove: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    append: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl Plugin for HeaderEdits {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.set.is_empty() && s.append.is_empty() && s.remove.is_empty() {
            return Err("nothing to do: give at least one of set, append, remove".into());
        }
        Ok(Self {
            set: s.set.into_iter().collect(),
            append: s.append.into_iter().collect(),
            remove: s.remove,
        })
    }
}

impl HeaderEdits {
    fn apply(&self, headers: &mut Headers<'_>) -> Result<(), Error> {
        for name in &self.remove {
            headers.remove(name)?;
        }
        for (name, value) in &self.set {
            headers.set(name, value)?;
        }
        for (name, value) in &self.append {
            headers.append(name, value)?;
        }
        Ok(())
    }
}

impl RequestFilter for HeaderEdits {
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        self.apply(req.headers_mut())?;
        Ok(Action::Continue)
    }
}

impl ResponseFilter for HeaderEdits {
    fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, Error> {
        self.apply(res.headers_mut())?;
        Ok(ResponseAction::Continue)
    }
}

plumeway_sdk::export!(HeaderEdits: RequestFilter, ResponseFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_sets_and_appends() {
        let p = HeaderEdits::init(Config::from_json(
            r#"{"set":{"x-gateway":"plumeway"},"append":{"x-chain":"b"},"remove":["x-internal"]}"#,
        ))
        .unwrap();
        let mut req = Request::builder("GET", "/")
            .header("x-internal", "secret")
            .header("x-chain", "a")
            .header("x-gateway", "old")
            .build();
        assert_eq!(p.on_request(&mut req).unwrap(), Action::Continue);
        let h = req.headers();
        assert!(!h.has("x-internal"));
        assert_eq!(h.get("x-gateway").as_deref(), Some("plumeway"));
        assert_eq!(h.get_all("x-chain"), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn refuses_an_empty_config_and_framing_headers() {
        assert!(HeaderEdits::init(Config::from_json("{}")).is_err());
        let p = HeaderEdits::init(Config::from_json(r#"{"set":{"content-length":"1"}}"#)).unwrap();
        let mut res = Response::builder(200).build();
        assert!(p.on_response(&mut res).is_err());
    }
}
