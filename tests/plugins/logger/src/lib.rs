//! Logs each request and reports the context attributes and the request
//! line it can see in `x-seen-*` headers: the request's, to the backend;
//! as a response filter, the response's, to the client, with the
//! response's fields as it reads them. In `x-seen-init`, what the
//! `headers` functions gave it in `init`, where no hook is running.

use plumeway_sdk::{
    Action, Config, Error, Plugin, Request, RequestFilter, Response, ResponseAction, ResponseFilter, context,
};

/// The plugin.
#[derive(Debug)]
pub struct Logger {
    tag: String,
    init_saw: String,
}

impl Plugin for Logger {
    fn init(config: Config) -> Result<Self, String> {
        #[derive(plumeway_sdk::serde::Deserialize)]
        #[serde(crate = "plumeway_sdk::serde")]
        struct Settings {
            #[serde(default)]
            tag: String,
        }
        let s: Settings = config.parse()?;
        // The contract's functions as such: the SDK lends headers only to
        // a hook.
        use plumeway_sdk::__private::bindings::imports::plumeway::plugin::headers;
        let init_saw = format!(
            "get {}, has {}, set {:?}, all {}",
            headers::get("host").len(),
            headers::has("host"),
            headers::set_one("x-init", b"1"),
            headers::copy_all().len()
        );
        Ok(Self { tag: s.tag, init_saw })
    }
}

impl RequestFilter for Logger {
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        plumeway_sdk::info!("logger {} saw {} {}", self.tag, req.method(), req.path());
        for name in ["route", "plugin", "client-ip", "request-id"] {
            let value = context::attribute(name).unwrap_or_else(|| "-".into());
            req.headers_mut().set(&format!("x-seen-{name}"), value)?;
        }
        let line = format!(
            "{} {} {}",
            req.method(),
            req.path_with_query(),
            req.authority().unwrap_or("-")
        );
        req.headers_mut().set("x-seen-line", line)?;
        req.headers_mut().set("x-seen-init", &self.init_saw)?;
        Ok(Action::Continue)
    }
}

impl ResponseFilter for Logger {
    fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, Error> {
        // The request as forwarded: its `Host` is the one the host set
        // aside, as the response's headers are the ones lent.
        let req = res.request();
        let line = format!(
            "{} {} {}",
            req.method,
            req.path_with_query,
            req.authority.as_deref().unwrap_or("-")
        );
        // The response's fields as this filter reads them, sorted, but for
        // the ones that change from one response to the next or are ours.
        let mut fields: Vec<String> = res
            .headers()
            .to_vec()
            .into_iter()
            .filter(|(name, _)| name != "date" && !name.starts_with("x-seen-"))
            .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(&value)))
            .collect();
        fields.sort();
        res.headers_mut().set("x-seen-line", line)?;
        res.headers_mut().set("x-seen-fields", fields.join("; "))?;
        Ok(ResponseAction::Continue)
    }
}

plumeway_sdk::export!(Logger: RequestFilter, ResponseFilter);
