//! `builtin = "json-errors"`, for a route's `on_error`: answers proxy
//! errors with a JSON body,
//! `{"status":502,"error":"connection_refused","request_id":"..."}`.
//! A failed plugin is named in the error (`plugin_failed`) but its message
//! is not, since it may carry internals.

use plumeway_sdk::{Config, Error, ErrorHandler, ErrorKind, LocalResponse, Plugin, ProxyError, Request, serde};

/// The plugin.
#[derive(Debug)]
pub struct JsonErrors;

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {}

impl Plugin for JsonErrors {
    fn init(config: Config) -> Result<Self, String> {
        let _: Settings = config.parse()?;
        Ok(Self)
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

impl ErrorHandler for JsonErrors {
    fn on_error(&self, _req: &Request<'_>, err: &ProxyError) -> Result<LocalResponse, Error> {
        let detail = match &err.kind {
            ErrorKind::PluginFailed(plugin) => format!(",\"plugin\":\"{}\"", escape(plugin)),
            _ => String::new(),
        };
        let body = format!(
            "{{\"status\":{},\"error\":\"{}\"{detail},\"request_id\":\"{}\"}}\n",
            err.status,
            err.kind.as_str(),
            escape(&err.request_id)
        );
        Ok(LocalResponse::new(err.status)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .body(body))
    }
}

plumeway_sdk::export!(JsonErrors: ErrorHandler);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_kind_and_request_id() {
        let err = ProxyError {
            kind: ErrorKind::PluginFailed("auth\"x".into()),
            status: 500,
            upstream: None,
            endpoint: None,
            attempts: 0,
            request_id: "r-1".into(),
        };
        let res = JsonErrors
            .on_error(&Request::builder("GET", "/").build(), &err)
            .unwrap();
        assert_eq!(res.status, 500);
        assert_eq!(
            String::from_utf8(res.body).unwrap(),
            "{\"status\":500,\"error\":\"plugin_failed\",\"plugin\":\"auth\\\"x\",\"request_id\":\"r-1\"}\n"
        );
    }
}
