//! A plugin's `config` table.

use serde::de::DeserializeOwned;

/// The plugin's `config = { ... }` table from the proxy's TOML, as the
/// plugin receives it in [`crate::Plugin::init`].
///
/// ```
/// #[derive(Debug, plumeway_sdk::serde::Deserialize)]
/// #[serde(crate = "plumeway_sdk::serde", deny_unknown_fields)]
/// struct Strip { prefix: String }
///
/// let config = plumeway_sdk::Config::from_json(r#"{"prefix": "/api"}"#);
/// let strip: Strip = config.parse().unwrap();
/// assert_eq!(strip.prefix, "/api");
/// let err = plumeway_sdk::Config::from_json(r#"{"prefx": "/api"}"#).parse::<Strip>().unwrap_err();
/// assert!(err.contains("unknown field `prefx`"), "{err}");
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    json: String,
}

impl Config {
    /// A config from its JSON text (what the host sends).
    pub fn from_json(json: impl Into<String>) -> Self {
        Self { json: json.into() }
    }

    /// The config parsed into `T`; the error is a message for the user.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.json.trim().is_empty() { "{}" } else { &self.json };
        serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.json
    }
}
