//! `builtin = "cors"`: Cross-Origin Resource Sharing for a route.
//!
//! ```toml
//! config = { allow_origins = ["https://app.example"], allow_methods = ["GET", "POST"],
//!            allow_headers = ["content-type"], expose_headers = [], allow_credentials = false,
//!            max_age = 600 }
//! ```
//! List it in both `request = [...]` (answers preflights) and
//! `response = [...]` (adds the allow headers to actual responses).
//! A preflight from an origin, method or header that is not allowed gets
//! 403 and never reaches the upstream.

use plumeway_sdk::{
    Action, Config, Error, LocalResponse, Plugin, Request, RequestFilter, Response, ResponseAction, ResponseFilter,
    serde,
};

/// The plugin.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<String>,
    headers: Vec<String>,
    expose: Vec<String>,
    credentials: bool,
    max_age: u32,
}

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {
    allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default = "default_max_age")]
    max_age: u32,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn default_max_age() -> u32 {
    600
}

impl Plugin for Cors {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.allow_origins.is_empty() {
            return Err("allow_origins must list at least one origin (or \"*\")".into());
        }
        let any_origin = s.allow_origins.iter().any(|o| o == "*");
        if any_origin && s.allow_credentials {
            return Err("allow_origins = [\"*\"] cannot be combined with allow_credentials = true".into());
        }
        Ok(Self {
            any_origin,
            origins: s.allow_origins,
            methods: s.allow_methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            headers: s.allow_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            expose: s.expose_headers,
            credentials: s.allow_credentials,
            max_age: s.max_age,
        })
    }
}

impl Cors {
    fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o == origin)
    }

    /// The `Access-Control-Allow-Origin` value for an allowed origin.
    fn allow_origin<'a>(&self, origin: &'a str) -> &'a str {
        if self.any_origin { "*" } else { origin }
    }

    fn preflight(&self, req: &Request<'_>, origin: &str, method: &str) -> LocalResponse {
        let requested: Vec<String> = req
            .headers()
            .get("access-control-request-headers")
            .map(|h| {
                h.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let allowed = self.origin_allowed(origin)
            && self.methods.iter().any(|m| m == method)
            && requested.iter().all(|h| self.headers.contains(h));
        if !allowed {
            return LocalResponse::new(403)
                .header("vary", "origin")
                .header("content-type", "text/plain; charset=utf-8")
                .body("403 Forbidden: CORS preflight rejected\n");
        }
        let mut res = LocalResponse::new(204)
            .header("access-control-allow-origin", self.allow_origin(origin))
            .header("access-control-allow-methods", self.methods.join(", "))
            .header("access-control-max-age", self.max_age.to_string())
            .header("vary", "origin");
        if !self.headers.is_empty() {
            res = res.header("access-control-allow-headers", self.headers.join(", "));
        }
        if self.credentials {
            res = res.header("access-control-allow-credentials", "true");
        }
        res
    }
}

impl RequestFilter for Cors {
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        let Some(origin) = req.headers().get("origin") else {
            return Ok(Action::Continue);
        };
        if req.method() == "OPTIONS"
            && let Some(method) = req.headers().get("access-control-request-method")
        {
            return Ok(Action::Respond(self.preflight(req, &origin, &method)));
        }
        if self.origin_allowed(&origin) {
            // The response filter may run in another pooled instance, so the
            // origin travels with the request.
            req.stash(origin.into_bytes());
        }
        Ok(Action::Continue)
    }
}

impl ResponseFilter for Cors {
    fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, Error> {
        let Some(origin) = res.stash().map(|s| String::from_utf8_lossy(s).into_owned()) else {
            return Ok(ResponseAction::Continue);
        };
        let h = res.headers_mut();
        h.set("access-control-allow-origin", self.allow_origin(&origin))?;
        h.append("vary", "origin")?;
        if self.credentials {
            h.set("access-control-allow-credentials", "true")?;
        }
        if !self.expose.is_empty() {
            h.set("access-control-expose-headers", self.expose.join(", "))?;
        }
        Ok(ResponseAction::Continue)
    }
}

plumeway_sdk::export!(Cors: RequestFilter, ResponseFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::init(Config::from_json(
            r#"{"allow_origins":["https://app.example"],"allow_headers":["content-type"],"expose_headers":["x-total"]}"#,
        ))
        .unwrap()
    }

    fn preflight(origin: &str, method: &str, headers: &str) -> LocalResponse {
        let mut req = Request::builder("OPTIONS", "/x")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .build();
        match cors().on_request(&mut req).unwrap() {
            Action::Respond(r) => r,
            other => panic!("expected a preflight answer, got {other:?}"),
        }
    }

    #[test]
    fn answers_allowed_preflight_and_rejects_others() {
        let ok = preflight("https://app.example", "POST", "Content-Type");
        assert_eq!(ok.status, 204);
        assert!(
            ok.headers
                .contains(&("access-control-allow-origin".into(), b"https://app.example".to_vec()))
        );
        assert_eq!(preflight("https://evil.example", "POST", "").status, 403);
        assert_eq!(preflight("https://app.example", "DELETE", "").status, 403);
        assert_eq!(preflight("https://app.example", "POST", "x-secret").status, 403);
    }

    #[test]
    fn actual_response_gets_allow_headers_through_the_stash() {
        let mut req = Request::builder("GET", "/x")
            .header("origin", "https://app.example")
            .build();
        assert_eq!(cors().on_request(&mut req).unwrap(), Action::Continue);
        let stash = req.stashed().unwrap().to_vec();
        let mut res = Response::builder(200).stash(stash).build();
        cors().on_response(&mut res).unwrap();
        assert_eq!(
            res.headers().get("access-control-allow-origin").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            res.headers().get("access-control-expose-headers").as_deref(),
            Some("x-total")
        );
    }
}
