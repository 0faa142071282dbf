//! `[plugins.NAME]`: a WebAssembly component and how it may run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Duration, Invalid, Size};

/// `[plugins.NAME]`: one plugin, usable by any route under its name.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// `builtin = "strip-prefix"`: a plugin shipped inside plumeway.
    pub builtin: Option<String>,
    /// `path = "plugins/auth.wasm"`: a component file, relative to the
    /// config file.
    pub path: Option<PathBuf>,
    /// `config = { ... }`: handed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// `limits = { memory = "32MiB", time = "20ms", fuel = 1000000, body = "1MiB" }`.
    #[serde(default)]
    pub limits: PluginLimits,
    /// `isolation = "pooled"` (instances reused across requests, the
    /// default) or `"per-request"` (a fresh instance for every call).
    #[serde(default)]
    pub isolation: Isolation,
    /// `on_failure = "fail"` (the request fails, the default) or `"skip"`
    /// (log it and go on as if the plugin were not there).
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// What a plugin may use per call.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Linear memory of an instance at most; growing past it fails the call.
    pub memory: Size,
    /// Wall-clock time of one call at most.
    pub time: Duration,
    /// Optional instruction budget of one call (deterministic, unlike time).
    pub fuel: Option<u64>,
    /// Largest body buffered for the plugin (request bodies are also held
    /// to `server.limits.max_body`). A larger response body gives 502.
    pub body: Size,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory: Size::mib(32),
            time: Duration::from_millis(20),
            fuel: None,
            body: Size::mib(1),
        }
    }
}

/// How instances are shared between requests.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Warm instances are reused (fast; globals live on between requests).
    #[default]
    Pooled,
    /// A fresh instance for every call (about 10 µs more per call).
    PerRequest,
}

/// What a plugin failure does to the request.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// The request fails (the route's error handler runs, else 500).
    #[default]
    Fail,
    /// The failure is logged and the plugin is skipped for this request.
    Skip,
}

/// The largest memory limit a plugin may ask for; the engine reserves
/// address space for it in every instance slot.
pub const MAX_PLUGIN_MEMORY: Size = Size::mib(512);

impl PluginConfig {
    pub(super) fn validate(&self, name: &str, errors: &mut Vec<Invalid>) {
        let key = format!("plugins.{name}");
        match (&self.builtin, &self.path) {
            (None, None) => errors.push(Invalid::new(
                key.clone(),
                "a plugin needs `builtin = \"NAME\"` or `path = \"file.wasm\"`",
            )),
            (Some(_), Some(_)) => errors.push(Invalid::new(
                format!("{key}.path"),
                "give either `builtin` or `path`, not both",
            )),
            _ => {}
        }
        let limits = &self.limits;
        if limits.memory > MAX_PLUGIN_MEMORY || limits.memory < Size::mib(1) {
            errors.push(Invalid::new(
                format!("{key}.limits.memory"),
                format!("must be between 1MiB and {MAX_PLUGIN_MEMORY}"),
            ));
        }
        if limits.time < Duration::from_millis(1) || limits.time > Duration::from_secs(60) {
            errors.push(Invalid::new(
                format!("{key}.limits.time"),
                "must be between 1ms and 60s",
            ));
        }
        if limits.fuel == Some(0) {
            errors.push(Invalid::new(
                format!("{key}.limits.fuel"),
                "must be at least 1 (or left out)",
            ));
        }
    }

    /// The `config` table as the JSON text the plugin's `init` receives.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_owned())
    }
}
