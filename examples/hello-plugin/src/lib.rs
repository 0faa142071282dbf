//! hello-plugin: greets every request and signs every response.
//!
//! ```toml
//! [plugins.hello]
//! path = "examples/hello-plugin/target/wasm32-wasip2/release/hello_plugin.wasm"
//! config = { greeting = "hi from wasm" }
//! ```
//! Listed in `request = ["hello"]` it adds `x-hello: <greeting>` to the
//! request; in `response = ["hello"]` it adds `x-hello-plugin: 1`.

use plumeway_sdk::{
    Action, Config, Error, Plugin, Request, RequestFilter, Response, ResponseAction, ResponseFilter, serde,
};

/// The plugin: built once per instance from its config.
#[derive(Debug)]
pub struct Hello {
    greeting: String,
}

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello".into()
}

impl Plugin for Hello {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        Ok(Self { greeting: s.greeting })
    }
}

impl RequestFilter for Hello {
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        req.headers_mut().set("x-hello", &self.greeting)?;
        Ok(Action::Continue)
    }
}

impl ResponseFilter for Hello {
    fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, Error> {
        res.headers_mut().set("x-hello-plugin", "1")?;
        Ok(ResponseAction::Continue)
    }
}

plumeway_sdk::export!(Hello: RequestFilter, ResponseFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_requests_and_signs_responses() {
        let hello = Hello::init(Config::from_json(r#"{"greeting":"hi"}"#)).unwrap();
        let mut req = Request::builder("GET", "/").build();
        assert_eq!(hello.on_request(&mut req).unwrap(), Action::Continue);
        assert_eq!(req.headers().get("x-hello").as_deref(), Some("hi"));

        let mut res = Response::builder(200).build();
        assert_eq!(hello.on_response(&mut res).unwrap(), ResponseAction::Continue);
        assert_eq!(res.headers().get("x-hello-plugin").as_deref(), Some("1"));
    }

    #[test]
    fn rejects_unknown_config_keys() {
        let err = Hello::init(Config::from_json(r#"{"greting":"typo"}"#)).unwrap_err();
        assert!(err.contains("unknown field `greting`"), "{err}");
    }
}
