//! `[[routes]]`: which requests go where.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Invalid;

/// One `[[routes]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and metrics; defaults to `route-N` (its position).
    #[serde(default)]
    pub name: Option<String>,
    /// `match = { path_prefix = "/api", host = "api.example.com", methods = ["GET"] }`.
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// `upstream = "users"`: the `[upstreams.NAME]` that serves this route.
    pub upstream: String,
    /// `rewrite = "strip-api"`: a path-rewrite plugin, run first.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// `request = ["auth", "add-header"]`: request-filter plugins, in order.
    #[serde(default)]
    pub request: Vec<String>,
    /// `response = ["security-headers"]`: response-filter plugins, in order.
    #[serde(default)]
    pub response: Vec<String>,
    /// `on_error = "json-errors"`: the error-handler plugin.
    #[serde(default)]
    pub on_error: Option<String>,
    /// `websocket = true`: WebSocket upgrades on this route are carried to
    /// the upstream; without it an upgrade is an ordinary request with the
    /// upgrade headers removed.
    #[serde(default)]
    pub websocket: bool,
    /// `strip_headers = ["authorization", "cookie"]`: request headers
    /// removed before forwarding, for upstreams that must not see them.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// `rate_limit = { rate = 100, burst = 200, by = "client_ip" }`: a token
    /// bucket per key; beyond it the client gets 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A route's rate limit: `rate` requests per second on average, bursts of
/// up to `burst`, counted per `by`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second refilled.
    pub rate: f64,
    /// Requests allowed at once (the bucket's size); defaults to `rate`.
    pub burst: Option<u32>,
    /// `"route"` (one bucket for everyone, the default), `"client_ip"`, or
    /// `"header:NAME"` (one bucket per value, e.g. an API key; requests
    /// without the header share one bucket).
    #[serde(default = "by_route")]
    pub by: String,
}

fn by_route() -> String {
    "route".to_owned()
}

/// What a request must look like to take a route. Every condition given must
/// hold; an empty `match` takes every request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MatchConfig {
    /// `path_prefix = "/api"`: matches `/api`, `/api/…` and `/api?…` but not
    /// `/apix` (a prefix ending in `/` matches everything below it). The
    /// longest matching prefix wins.
    pub path_prefix: String,
    /// `host = "api.example.com"` or `host = "*.example.com"`; compared
    /// without the port, case-insensitively.
    pub host: Option<String>,
    /// `methods = ["GET", "HEAD"]`.
    pub methods: Option<Vec<String>>,
    /// `headers = { "x-tenant" = "blue" }`: each header present with exactly
    /// this value.
    pub headers: BTreeMap<String, String>,
}

impl Default for MatchConfig {
    fn default() -> Self {
        Self {
            path_prefix: "/".into(),
            host: None,
            methods: None,
            headers: BTreeMap::new(),
        }
    }
}

impl RouteConfig {
    /// Every plugin the route names, with the key that names it.
    pub fn plugin_refs(&self, i: usize) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        if let Some(p) = &self.rewrite {
            refs.push((format!("routes[{i}].rewrite"), p.as_str()));
        }
        for (j, p) in self.request.iter().enumerate() {
            refs.push((format!("routes[{i}].request[{j}]"), p.as_str()));
        }
        for (j, p) in self.response.iter().enumerate() {
            refs.push((format!("routes[{i}].response[{j}]"), p.as_str()));
        }
        if let Some(p) = &self.on_error {
            refs.push((format!("routes[{i}].on_error"), p.as_str()));
        }
        refs
    }

    pub(super) fn validate(&self, i: usize, errors: &mut Vec<Invalid>) {
        for (j, name) in self.strip_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(Invalid::new(
                    format!("routes[{i}].strip_headers[{j}]"),
                    format!("invalid header name {name:?}"),
                ));
            }
        }
        if let Some(limit) = &self.rate_limit {
            if !(limit.rate > 0.0 && limit.rate.is_finite()) {
                errors.push(Invalid::new(
                    format!("routes[{i}].rate_limit.rate"),
                    "must be a positive number of requests per second",
                ));
            }
            if limit.burst == Some(0) {
                errors.push(Invalid::new(
                    format!("routes[{i}].rate_limit.burst"),
                    "must be at least 1",
                ));
            }
            let by = limit.by.as_str();
            let header_ok = by
                .strip_prefix("header:")
                .is_some_and(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok());
            if !(by == "route" || by == "client_ip" || header_ok) {
                errors.push(Invalid::new(
                    format!("routes[{i}].rate_limit.by"),
                    format!("{by:?}: use \"route\", \"client_ip\" or \"header:NAME\""),
                ));
            }
        }
        let key = format!("routes[{i}].match");
        let m = &self.matcher;
        if !m.path_prefix.starts_with('/') {
            errors.push(Invalid::new(
                format!("{key}.path_prefix"),
                format!("a path prefix starts with \"/\", e.g. \"/{}\"", m.path_prefix),
            ));
        }
        if let Some(host) = &m.host {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
                errors.push(Invalid::new(
                    format!("{key}.host"),
                    format!("invalid host {host:?}; write a name such as \"api.example.com\" or \"*.example.com\", without port"),
                ));
            }
        }
        if let Some(methods) = &m.methods {
            if methods.is_empty() {
                errors.push(Invalid::new(
                    format!("{key}.methods"),
                    "an empty method list matches nothing; remove it to match every method",
                ));
            }
            for (j, method) in methods.iter().enumerate() {
                if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
                    errors.push(Invalid::new(
                        format!("{key}.methods[{j}]"),
                        format!("invalid method {method:?}"),
                    ));
                }
            }
        }
        for (name, value) in &m.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(Invalid::new(
                    format!("{key}.headers"),
                    format!("invalid header name {name:?}"),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                errors.push(Invalid::new(
                    format!("{key}.headers"),
                    format!("invalid value for header {name:?}"),
                ));
            }
        }
    }
}
