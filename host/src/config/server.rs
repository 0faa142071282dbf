//! `[server]`: listeners, limits and client-side timeouts.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::{Duration, Invalid, Size};

/// `[server]`: where plumeway listens and how it treats clients.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `listen = "127.0.0.1:8080"` or `listen = ["127.0.0.1:8080", "[::1]:8080"]`.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// `limits = { max_header_bytes = "64KiB", max_headers = 100, max_body = "10MiB" }`.
    pub limits: Limits,
    /// `timeouts = { header_read = "10s", shutdown = "30s" }`.
    pub timeouts: ServerTimeouts,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            limits: Limits::default(),
            timeouts: ServerTimeouts::default(),
        }
    }
}

/// Limits on what a client may send.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Bytes of request head (request line and headers) read at most; beyond
    /// it the client gets 431. `max_header_bytes = "64KiB"`.
    pub max_header_bytes: Size,
    /// Number of request headers at most; beyond it the client gets 431.
    /// `max_headers = 100`.
    pub max_headers: usize,
    /// Request body size at most; a larger declared body gets 413 before any
    /// upstream is contacted, a larger streamed body is cut off with an error.
    /// `max_body = "10MiB"`.
    pub max_body: Size,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: Size::kib(64),
            max_headers: 100,
            max_body: Size::mib(10),
        }
    }
}

/// Timeouts towards clients.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTimeouts {
    /// Time a client has to send a complete request head. `header_read = "10s"`.
    pub header_read: Duration,
    /// How long shutdown waits for in-flight requests before it gives up on
    /// them. `shutdown = "30s"`.
    pub shutdown: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            shutdown: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self, errors: &mut Vec<Invalid>) {
        if self.listen.is_empty() {
            errors.push(Invalid::new("server.listen", "at least one listen address is needed"));
        }
        for (i, addr) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(addr) {
                errors.push(Invalid::new(
                    format!("server.listen[{i}]"),
                    format!("{addr} is listed twice"),
                ));
            }
        }
        // hyper refuses a read buffer smaller than 8 KiB (it panics), so say so here.
        if self.limits.max_header_bytes < Size::kib(8) {
            errors.push(Invalid::new("server.limits.max_header_bytes", "must be at least 8KiB"));
        }
        if self.limits.max_headers == 0 {
            errors.push(Invalid::new("server.limits.max_headers", "must be at least 1"));
        }
    }
}

/// Accepts `"addr"` or `["addr", ...]`.
fn one_or_many<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(de)
        .map_err(|_| serde::de::Error::custom("expected an address such as \"127.0.0.1:8080\" or a list of them"))?
    {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| {
            s.parse::<SocketAddr>().map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid listen address {s:?}; write it as IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""
                ))
            })
        })
        .collect()
}
