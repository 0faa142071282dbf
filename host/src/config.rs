//! The configuration file: its serde model, and the one pass that checks it.
//!
//! Parsing follows one rule: a config is checked when it is read. Unknown
//! keys are errors, values parse themselves ([`Duration`], [`Size`],
//! [`Target`]), and [`Config::validate`] checks what crosses tables (a route
//! naming an upstream that does not exist). Every error names the file, the
//! line and the key.

mod discovery;
mod duration;
mod error;
mod ops;
mod plugin;
mod route;
mod server;
mod size;
mod upstream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use discovery::{ConsulDiscovery, DiscoveryConfig, DnsDiscovery, DnsRecord, EtcdDiscovery};
pub use duration::Duration;
pub use error::{ConfigError, Invalid};
pub use ops::{AccessLogConfig, AccessLogFormat, AdminConfig};
pub use plugin::{Isolation, MAX_PLUGIN_MEMORY, OnFailure, PluginConfig, PluginLimits};
pub use route::{MatchConfig, RateLimit, RouteConfig};
pub use server::{Certificate, EncodedSlash, Http2Config, Limits, PathPolicy, ServerConfig, ServerTimeouts, ServerTls};
pub use size::Size;
pub use upstream::{
    Balancer, CircuitBreakerConfig, HealthConfig, PassiveConfig, PoolConfig, RetryConfig, StatusRange, Target,
    TargetUrl, UpstreamConfig, UpstreamProtocol, UpstreamTimeouts, UpstreamTls,
};

/// A whole plumeway configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, client limits and timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[plugins.NAME]`: WebAssembly plugins that routes and upstreams use.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `[upstreams.NAME]`: named sets of endpoints.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[[routes]]`: matched longest path prefix first.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `[admin]`: metrics, the JSON API, the dashboard and reloads; off
    /// unless present.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// `[access_log]`: one line per request.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Where the config came from, so that problems found after parsing
    /// (a plugin that fails to load) can still point at a line.
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// The file a config was read from and its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file, as given.
    pub file: PathBuf,
    /// Its contents.
    pub source: String,
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole_file(path, format!("cannot read the file: {e}")))?;
        Self::parse(path, &source)
    }

    /// Parses and validates `source`; `file` is used in error messages.
    pub fn parse(file: &Path, source: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(source).map_err(|e| toml_error(file, source, e, String::new()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            toml_error(file, source, e.into_inner(), key)
        })?;
        let mut config = config
            .validate()
            .map_err(|invalid| ConfigError::locate(file, source, invalid))?;
        config.origin = Some(Arc::new(Origin {
            file: file.to_owned(),
            source: source.to_owned(),
        }));
        Ok(config)
    }

    /// Ties a problem found after parsing to its place in the file.
    pub fn locate(&self, invalid: Invalid) -> ConfigError {
        match &self.origin {
            Some(o) => ConfigError::locate(&o.file, &o.source, invalid),
            None => ConfigError::locate(Path::new("(config)"), "", invalid),
        }
    }

    /// The directory relative paths in the config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.origin
            .as_ref()
            .and_then(|o| o.file.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Checks what a single value cannot check by itself; returns the first
    /// problem in file order.
    pub fn validate(self) -> Result<Self, Invalid> {
        let mut errors = Vec::new();
        self.server.validate(&mut errors);
        for (name, plugin) in &self.plugins {
            check_name("plugins", name, &mut errors);
            plugin.validate(name, &mut errors);
        }
        for (name, upstream) in &self.upstreams {
            check_name("upstreams", name, &mut errors);
            upstream.validate(name, &mut errors);
            if let Balancer::Plugin(plugin) = &upstream.balancer
                && !self.plugins.contains_key(plugin)
            {
                errors.push(Invalid::new(
                    format!("upstreams.{name}.balancer.plugin"),
                    format!("unknown plugin {plugin:?} ({})", declared(self.plugins.keys())),
                ));
            }
        }
        if self.routes.is_empty() {
            errors.push(Invalid::new(
                "routes",
                "no routes: add at least one [[routes]] table with an upstream",
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(i, &mut errors);
            for (key, plugin) in route.plugin_refs(i) {
                if !self.plugins.contains_key(plugin) {
                    errors.push(Invalid::new(
                        key,
                        format!("unknown plugin {plugin:?} ({})", declared(self.plugins.keys())),
                    ));
                }
            }
            if !self.upstreams.contains_key(&route.upstream) {
                errors.push(Invalid::new(
                    format!("routes[{i}].upstream"),
                    format!(
                        "unknown upstream {:?} ({})",
                        route.upstream,
                        declared(self.upstreams.keys())
                    ),
                ));
            }
        }
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(self),
        }
    }

    /// The name a route is known by in logs: its `name`, else `route-N`.
    pub fn route_name(&self, index: usize) -> String {
        self.routes
            .get(index)
            .and_then(|r| r.name.clone())
            .unwrap_or_else(|| format!("route-{index}"))
    }
}

/// Names of tables (`[upstreams.NAME]`) appear in logs, metrics and other
/// keys, so they are kept to a plain alphabet.
fn check_name(section: &str, name: &str, errors: &mut Vec<Invalid>) {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        errors.push(Invalid::new(
            format!("{section}.{name}"),
            format!("invalid name {name:?}: use letters, digits, '-' and '_'"),
        ));
    }
}

fn declared<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if names.is_empty() {
        "none is declared".to_owned()
    } else {
        format!("declared: {}", names.join(", "))
    }
}

fn toml_error(file: &Path, source: &str, e: toml::de::Error, key: String) -> ConfigError {
    let message = e.message().trim_end().to_owned();
    match e.span() {
        Some(span) => ConfigError::at_span(file, source, span, key, message),
        None => ConfigError::locate(file, source, Invalid { key, message }),
    }
}
