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
    /// `paths = { merge_slashes = true, encoded_slash = "keep" }`: how
    /// request paths are normalised before routing.
    pub paths: PathPolicy,
    /// `http2 = { max_concurrent_streams = 100, ... }`: HTTP/2 from clients.
    pub http2: Http2Config,
    /// `trusted_proxies = ["10.0.0.0/8"]`: peers whose `X-Forwarded-For`
    /// and `Forwarded` headers are kept (and appended to); from any other
    /// peer they are replaced, so a client cannot forge its address.
    #[serde(deserialize_with = "cidrs", serialize_with = "display_all")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `tls = { listen = ["0.0.0.0:8443"], certificates = [...] }`: TLS
    /// listeners (HTTP/1.1 and HTTP/2 by ALPN), beside the plain ones.
    pub tls: Option<ServerTls>,
    /// `workers = 1`: threads serving requests. One runs everything on a
    /// single thread, the cheapest per request when the proxy has one core
    /// to itself; when absent, one per CPU.
    pub workers: Option<usize>,
}

/// TLS termination.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// Where TLS connections are accepted.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Certificates, picked by the SNI name the client sends; the first one
    /// answers clients that send no name or one no certificate lists.
    pub certificates: Vec<Certificate>,
}

/// One certificate and its key, PEM files relative to the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// SNI names this certificate answers: `"api.example.com"` or
    /// `"*.example.com"`.
    #[serde(default)]
    pub names: Vec<String>,
}

/// How request paths are normalised. Routing and the forwarded path
/// always see the same normalised path.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PathPolicy {
    /// Collapse `//` into `/`, as nginx's `merge_slashes`.
    pub merge_slashes: bool,
    /// What `%2F` (an encoded `/`) means: `"keep"` it encoded (not a
    /// separator, the default), `"reject"` the request (400) or `"decode"`
    /// it into a separator.
    pub encoded_slash: EncodedSlash,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_slash: EncodedSlash::Keep,
        }
    }
}

/// The `%2F` policy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlash {
    /// Left encoded: part of a segment, never a separator.
    #[default]
    Keep,
    /// The request is refused with 400.
    Reject,
    /// Turned into `/` before routing.
    Decode,
}

/// HTTP/2 limits towards clients (Envoy's edge defaults).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Flow-control window of each stream.
    pub initial_stream_window: Size,
    /// Flow-control window of the whole connection.
    pub initial_connection_window: Size,
    /// Streams a client may open and reset before the proxy answers them
    /// (rapid-reset, CVE-2023-44487); beyond it the connection is closed.
    pub max_pending_reset_streams: usize,
    /// Streams the proxy may have to reset because of the client's errors
    /// before it closes the connection.
    pub max_local_error_reset_streams: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            initial_stream_window: Size::kib(64),
            initial_connection_window: Size::mib(1),
            max_pending_reset_streams: 20,
            max_local_error_reset_streams: 100,
        }
    }
}

fn cidrs<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let list = Vec::<String>::deserialize(de)?;
    list.iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid network {s:?}; write an address or CIDR, e.g. \"10.0.0.0/8\" or \"127.0.0.1\""
                    ))
                })
        })
        .collect()
}

fn display_all<S: serde::Serializer>(nets: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            limits: Limits::default(),
            timeouts: ServerTimeouts::default(),
            paths: PathPolicy::default(),
            http2: Http2Config::default(),
            trusted_proxies: Vec::new(),
            tls: None,
            workers: None,
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
    /// Bytes of request target (path and query) at most; beyond it the
    /// client gets 414. `max_uri_bytes = "8KiB"`.
    pub max_uri_bytes: Size,
    /// Connections open at once per listener at most; beyond it new ones
    /// are closed at once. `max_connections = 16384`.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: Size::kib(64),
            max_headers: 100,
            max_body: Size::mib(10),
            max_uri_bytes: Size::kib(8),
            max_connections: 16_384,
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
    /// Longest pause in a request body from the client; beyond it the
    /// request fails with 408. `body_idle = "30s"`.
    pub body_idle: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            shutdown: Duration::from_secs(30),
            body_idle: Duration::from_secs(30),
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
        if let Some(tls) = &self.tls {
            if tls.listen.is_empty() {
                errors.push(Invalid::new(
                    "server.tls.listen",
                    "at least one listen address is needed",
                ));
            }
            if tls.certificates.is_empty() {
                errors.push(Invalid::new(
                    "server.tls.certificates",
                    "at least one certificate is needed, e.g. [{ cert = \"site.pem\", key = \"site.key\" }]",
                ));
            }
            for addr in &tls.listen {
                if self.listen.contains(addr) {
                    errors.push(Invalid::new(
                        "server.tls.listen",
                        format!("{addr} is also a plain listener"),
                    ));
                }
            }
        }
        if self.limits.max_connections == 0 {
            errors.push(Invalid::new("server.limits.max_connections", "must be at least 1"));
        }
        self.http2.validate("server.http2", errors);
        if self.workers == Some(0) {
            errors.push(Invalid::new("server.workers", "must be at least 1"));
        }
    }
}

/// The largest HTTP/2 flow-control window: the protocol's 31-bit limit.
const MAX_WINDOW: u32 = u32::MAX >> 1;

impl Http2Config {
    /// Checks the stream cap (at least 1) and the windows: at least the
    /// protocol's 64 KiB default, at most its 31-bit limit. `key` is the
    /// table they sit in.
    pub(super) fn validate(&self, key: &str, errors: &mut Vec<Invalid>) {
        if self.max_concurrent_streams == 0 {
            errors.push(Invalid::new(
                format!("{key}.max_concurrent_streams"),
                "must be at least 1",
            ));
        }
        for (name, size) in [
            ("initial_stream_window", self.initial_stream_window),
            ("initial_connection_window", self.initial_connection_window),
        ] {
            if size < Size::kib(64) || size.get() > u64::from(MAX_WINDOW) {
                errors.push(Invalid::new(format!("{key}.{name}"), "must be between 64KiB and 2GiB"));
            }
        }
    }

    /// The stream window as HTTP/2 carries it.
    pub fn stream_window(&self) -> u32 {
        window(self.initial_stream_window)
    }

    /// The connection window as HTTP/2 carries it.
    pub fn connection_window(&self) -> u32 {
        window(self.initial_connection_window)
    }
}

/// A validated window as a `u32` (clamped, should validation be skipped).
fn window(size: Size) -> u32 {
    u32::try_from(size.get()).unwrap_or(MAX_WINDOW).min(MAX_WINDOW)
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
