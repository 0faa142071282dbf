//! Picks the route for a request: host, path prefix, methods, headers.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Request};

use crate::config::{Config, RouteConfig};

/// The compiled routing table, tried in priority order.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<Entry<T>>,
    /// Whether any route matches on the host: if none does, no request's
    /// host is looked up.
    by_host: bool,
}

#[derive(Debug)]
struct Entry<T> {
    matcher: Matcher,
    target: Arc<T>,
}

/// The conditions of one route, compiled from its `match` table.
#[derive(Debug)]
pub struct Matcher {
    /// Prefix without a trailing `/` (empty for the root), so that the
    /// segment check below is one comparison.
    prefix: String,
    host: Option<HostMatch>,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Declaration order, the last tie-breaker.
    index: usize,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl<T> Router<T> {
    /// Builds the table from `config`, pairing each route with the value
    /// `make(index, route)` returns for it.
    ///
    /// Priority: longest path prefix first; then an exact host before a
    /// wildcard host before no host; then the route with more conditions;
    /// then declaration order.
    pub fn new(config: &Config, mut make: impl FnMut(usize, &RouteConfig) -> T) -> Self {
        let mut routes: Vec<Entry<T>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Entry {
                matcher: Matcher::new(i, r),
                target: Arc::new(make(i, r)),
            })
            .collect();
        routes.sort_by_key(|e| e.matcher.priority());
        let by_host = routes.iter().any(|e| e.matcher.host.is_some());
        Self { routes, by_host }
    }

    /// The route for `req`, or `None` when no route matches (a 404).
    pub fn route<B>(&self, req: &Request<B>) -> Option<&Arc<T>> {
        let host = if self.by_host {
            request_host(req.uri(), req.headers()).map(strip_port)
        } else {
            None
        };
        let path = req.uri().path();
        self.routes
            .iter()
            .find(|e| e.matcher.matches(req, host, path))
            .map(|e| &e.target)
    }
}

impl Matcher {
    fn new(index: usize, route: &RouteConfig) -> Self {
        let m = &route.matcher;
        let host = m.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => HostMatch::Exact(h),
            }
        });
        // Validation has checked every method and header, so a value that
        // still fails to parse here is skipped rather than trusted.
        let methods = m.methods.as_ref().map(|ms| {
            ms.iter()
                .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                .collect()
        });
        let headers = m
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        Self {
            prefix: m.path_prefix.trim_end_matches('/').to_owned(),
            host,
            methods,
            headers,
            index,
        }
    }

    fn priority(&self) -> (std::cmp::Reverse<usize>, u8, std::cmp::Reverse<usize>, usize) {
        let host_rank = match self.host {
            Some(HostMatch::Exact(_)) => 0,
            Some(HostMatch::Suffix(_)) => 1,
            None => 2,
        };
        let conditions = usize::from(self.methods.is_some()) + self.headers.len();
        (
            std::cmp::Reverse(self.prefix.len()),
            host_rank,
            std::cmp::Reverse(conditions),
            self.index,
        )
    }

    fn matches<B>(&self, req: &Request<B>, host: Option<&str>, path: &str) -> bool {
        path_has_prefix(path, &self.prefix)
            && self
                .host
                .as_ref()
                .is_none_or(|h| host.is_some_and(|host| h.matches(host)))
            && self.methods.as_ref().is_none_or(|ms| ms.contains(req.method()))
            && self
                .headers
                .iter()
                .all(|(k, v)| req.headers().get_all(k).iter().any(|got| got == v))
    }
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            // `*.example.com` matches `a.example.com`, not `example.com`.
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Segment-aware prefix test: `/api` matches `/api` and `/api/x`, not `/apix`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The host a request is for: the `Host` header (HTTP/1.1) or the URI's
/// authority (HTTP/2 `:authority`, absolute-form HTTP/1.1).
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    request_host_with(uri, headers.get(http::header::HOST))
}

/// [`request_host`] given the request's `Host` value (`host`) rather than
/// its headers.
pub fn request_host_with<'a>(uri: &'a http::Uri, host: Option<&'a http::HeaderValue>) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|h| h.to_str().ok()))
}

/// [`request_host`] as a header value, for the upstream's `Host`: the
/// client's own value, shared rather than copied, when it came as `Host`.
pub fn request_host_value(uri: &http::Uri, headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    match uri.authority() {
        Some(authority) => http::HeaderValue::from_str(authority.as_str()).ok(),
        None => headers.get(http::header::HOST).cloned(),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal: keep the brackets' content intact.
        return host.split(']').next().map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(toml: &str) -> Router<String> {
        let config = Config::parse(Path::new("t.toml"), toml).unwrap();
        Router::new(&config, |i, _| config.route_name(i))
    }

    fn pick(r: &Router<String>, method: &str, host: &str, path: &str) -> Option<String> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(())
            .unwrap();
        r.route(&req).map(|t| t.as_str().to_owned())
    }

    const UP: &str = "[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n";

    #[test]
    fn longest_prefix_wins_and_segments_count() {
        let r = router(&format!(
            "{UP}[[routes]]\nname=\"root\"\nupstream=\"u\"\n[[routes]]\nname=\"api\"\nmatch={{path_prefix=\"/api\"}}\nupstream=\"u\"\n[[routes]]\nname=\"users\"\nmatch={{path_prefix=\"/api/users/\"}}\nupstream=\"u\"\n"
        ));
        assert_eq!(pick(&r, "GET", "x", "/api/users/7").as_deref(), Some("users"));
        assert_eq!(pick(&r, "GET", "x", "/api/users").as_deref(), Some("users"));
        assert_eq!(pick(&r, "GET", "x", "/api/orders").as_deref(), Some("api"));
        assert_eq!(pick(&r, "GET", "x", "/api").as_deref(), Some("api"));
        assert_eq!(pick(&r, "GET", "x", "/apix").as_deref(), Some("root"));
    }

    #[test]
    fn host_and_method_conditions() {
        let r = router(&format!(
            "{UP}[[routes]]\nname=\"wild\"\nmatch={{host=\"*.example.com\"}}\nupstream=\"u\"\n[[routes]]\nname=\"exact\"\nmatch={{host=\"api.example.com\", methods=[\"GET\"]}}\nupstream=\"u\"\n"
        ));
        assert_eq!(pick(&r, "GET", "API.example.com:8080", "/").as_deref(), Some("exact"));
        assert_eq!(pick(&r, "POST", "api.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(pick(&r, "GET", "example.com", "/"), None);
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
