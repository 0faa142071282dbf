//! `builtin = "api-key"`: answers 401 unless the request carries a valid
//! key. `config = { header = "x-api-key", keys = ["secret"] }`. The key
//! header is removed before the request goes upstream, so backends never
//! see credentials (`forward_key = true` keeps it).

use plumeway_sdk::{Action, Config, Error, LocalResponse, Plugin, Request, RequestFilter, serde};

/// The plugin.
#[derive(Debug)]
pub struct ApiKey {
    header: String,
    keys: Vec<Vec<u8>>,
    forward_key: bool,
}

#[derive(serde::Deserialize)]
#[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<String>,
    #[serde(default)]
    forward_key: bool,
}

fn default_header() -> String {
    "x-api-key".into()
}

impl Plugin for ApiKey {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.keys.is_empty() || s.keys.iter().any(String::is_empty) {
            return Err("keys must list at least one non-empty key".into());
        }
        Ok(Self {
            header: s.header,
            keys: s.keys.into_iter().map(String::into_bytes).collect(),
            forward_key: s.forward_key,
        })
    }
}

/// Compares without stopping at the first differing byte, so response time
/// does not tell an attacker how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RequestFilter for ApiKey {
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        let given = req.headers().get_all(&self.header);
        let valid = given.len() == 1 && self.keys.iter().any(|k| constant_time_eq(k, &given[0]));
        if !valid {
            let reason = if given.is_empty() {
                "missing API key"
            } else {
                "invalid API key"
            };
            return Ok(Action::Respond(
                LocalResponse::new(401)
                    .header("www-authenticate", format!("ApiKey header=\"{}\"", self.header))
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(format!("401 Unauthorized: {reason}\n")),
            ));
        }
        if !self.forward_key {
            req.headers_mut().remove(&self.header)?;
        }
        Ok(Action::Continue)
    }
}

plumeway_sdk::export!(ApiKey: RequestFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> ApiKey {
        ApiKey::init(Config::from_json(r#"{"keys":["s3cret","other"]}"#)).unwrap()
    }

    #[test]
    fn valid_key_passes_and_is_not_forwarded() {
        let mut req = Request::builder("GET", "/").header("x-api-key", "other").build();
        assert_eq!(plugin().on_request(&mut req).unwrap(), Action::Continue);
        assert!(!req.headers().has("x-api-key"));
    }

    #[test]
    fn missing_or_wrong_key_gets_401() {
        for req in [
            Request::builder("GET", "/").build(),
            Request::builder("GET", "/").header("x-api-key", "s3cre").build(),
            Request::builder("GET", "/")
                .header("x-api-key", "s3cret")
                .header("x-api-key", "s3cret")
                .build(),
        ] {
            let mut req = req;
            match plugin().on_request(&mut req).unwrap() {
                Action::Respond(r) => {
                    assert_eq!(r.status, 401);
                    assert!(
                        r.headers
                            .iter()
                            .any(|(n, v)| n == "www-authenticate" && v == b"ApiKey header=\"x-api-key\"")
                    );
                }
                other => panic!("expected 401, got {other:?}"),
            }
        }
    }
}
