//! `[admin]` and `[access_log]`: what operators use to watch and steer a
//! running proxy.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[admin]`: the admin listener (metrics, JSON API, dashboard, reload).
/// Off unless the table is present; it listens on loopback by default,
/// since it can reload the config and shows the whole of it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `listen = "127.0.0.1:9901"`.
    pub listen: SocketAddr,
    /// `watch_config = true`: reload when the config file changes, as well
    /// as on SIGHUP and `POST /reload`.
    pub watch_config: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            watch_config: false,
        }
    }
}

/// `[access_log]`: one line per request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `enabled = false` turns it off.
    pub enabled: bool,
    /// `format = "text"` (a log event on target `plumeway::access`, with
    /// the other logs), `"json"` (one JSON object per line) or `"common"`
    /// (NCSA combined log format plus plumeway's fields, as nginx writes).
    pub format: AccessLogFormat,
    /// Where `json` and `common` lines go: a file, appended to (relative to
    /// the config file), or standard output when absent.
    pub path: Option<PathBuf>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            format: AccessLogFormat::Text,
            path: None,
        }
    }
}

/// How access log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// A structured log event, formatted by the logger.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// NCSA combined log format, then `rt=… urt=… route=… …`.
    Common,
}
