//! `[upstreams.NAME]`: where requests go and how connections to them behave.

use std::fmt;

use http::uri::{Authority, Scheme, Uri};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{DiscoveryConfig, DnsRecord, Duration, Invalid};

/// `[upstreams.NAME]`: a set of endpoints that serve the same thing.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `targets = ["http://127.0.0.1:9001", { url = "http://127.0.0.1:9002", weight = 3 }]`;
    /// or leave it out and name a `discovery` back end.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// `discovery = { file = { path = "instances.toml" } }`: where the
    /// endpoints come from when `targets` is not given.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    /// `tls = { ca = "ca.pem", sni = "api.internal", client_cert = "c.pem", client_key = "c.key" }`:
    /// how `https://` targets are verified and what the proxy presents.
    #[serde(default)]
    pub tls: UpstreamTls,
    /// `protocol = "http1" | "h2c" | "h2" | "auto"`: how the proxy speaks to
    /// the endpoints. `h2c` is HTTP/2 with prior knowledge on plain TCP,
    /// `h2` is HTTP/2 over TLS, `auto` takes what TLS's ALPN agrees (HTTP/1.1
    /// on plain TCP).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// `http2 = { max_concurrent_streams = 100, initial_stream_window = "1MiB",
    /// initial_connection_window = "4MiB", max_local_error_reset_streams = 100 }`:
    /// streams per connection (another connection opens when all are full;
    /// `h2c` and `h2`), flow control and reset limits on HTTP/2 connections
    /// to the endpoints, as `[server.http2]` sets them towards clients
    /// (`max_pending_reset_streams` applies to servers only). When absent:
    /// 100 streams, hyper's windows (2 MiB stream, 5 MiB connection).
    #[serde(default)]
    pub http2: Option<super::Http2Config>,
    /// `balancer = "round-robin"`.
    #[serde(default)]
    pub balancer: Balancer,
    /// `timeouts = { connect = "1s", response_header = "15s" }`.
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// `pool = { idle_timeout = "90s", max_idle_per_endpoint = 64 }`.
    #[serde(default)]
    pub pool: PoolConfig,
    /// `retry = { attempts = 2, budget_percent = 20, retry_on = [502, 503] }`.
    #[serde(default)]
    pub retry: RetryConfig,
    /// `passive = { failures = 5, eject = "30s", max_ejected_percent = 50 }`:
    /// outlier detection from live traffic.
    #[serde(default)]
    pub passive: PassiveConfig,
    /// `health = { path = "/healthz", interval = "2s", timeout = "1s",
    /// method = "GET", expected_status = "200-399", healthy = 2, unhealthy = 3 }`:
    /// active health checks; off when absent.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// `circuit_breaker = { failure_ratio = 0.5, min_requests = 20, window = "10s",
    /// open_for = "10s", half_open_requests = 1 }`: per endpoint; off when absent.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
}

/// A circuit breaker per endpoint: after `failure_ratio` of at least
/// `min_requests` requests in a `window` fail, the endpoint gets no traffic
/// for `open_for`; then `half_open_requests` probes decide whether it
/// closes again.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Share of failed requests (0 to 1) that opens the breaker.
    pub failure_ratio: f64,
    /// Requests in the window before the ratio counts.
    pub min_requests: u32,
    /// The window outcomes are counted in.
    pub window: Duration,
    /// How long an open breaker rejects before probing.
    pub open_for: Duration,
    /// Probe requests let through at once when half-open.
    pub half_open_requests: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
            half_open_requests: 1,
        }
    }
}

/// Retries on another endpoint. A request is retried only when it is safe:
/// the connection failed before anything was sent (any method whose body can
/// be sent again), or the method is idempotent (GET, HEAD, OPTIONS, PUT,
/// DELETE) and no response byte has reached the client.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, the first included; 1 turns retries off.
    pub attempts: u32,
    /// Retries at most this share of requests (per upstream), so retries
    /// cannot multiply an outage. A few retries are always allowed.
    pub budget_percent: u32,
    /// Also retry idempotent requests answered with these statuses
    /// (502, 503 and 504 only).
    pub retry_on: Vec<u16>,
    /// Path prefixes whose requests are safe to repeat whatever their
    /// method, e.g. gRPC methods that only read: `["/shop.Catalog/Get"]`.
    /// Their bodies are held (up to `server.limits.max_body`) so that a
    /// retry can send them again; list unary calls only.
    pub safe_paths: Vec<String>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20,
            retry_on: Vec::new(),
            safe_paths: Vec::new(),
        }
    }
}

/// Outlier detection: endpoints that keep failing are taken out for a while.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PassiveConfig {
    /// Consecutive failures (connect errors, resets, timeouts, 5xx) that
    /// eject an endpoint; 0 turns passive detection off.
    pub failures: u32,
    /// How long the first ejection lasts; each repeat lasts longer
    /// (×2, ×3, … up to ×10).
    pub eject: Duration,
    /// Never eject more than this share of an upstream's endpoints, so a
    /// bad deploy cannot take all traffic down.
    pub max_ejected_percent: u32,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            eject: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// Active health checks: one probe per endpoint every `interval`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path probed, e.g. `/healthz`.
    pub path: String,
    /// Time between probes (jittered by up to 10%).
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Time a probe may take.
    #[serde(default = "default_probe_timeout")]
    pub timeout: Duration,
    /// Method of the probe.
    #[serde(default = "default_method")]
    pub method: String,
    /// Statuses that count as healthy: `200` or `"200-399"`.
    #[serde(default)]
    pub expected_status: StatusRange,
    /// Consecutive good probes that bring an unhealthy endpoint back.
    #[serde(default = "two")]
    pub healthy: u32,
    /// Consecutive bad probes that take a healthy endpoint out.
    #[serde(default = "three")]
    pub unhealthy: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_method() -> String {
    "GET".into()
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

/// A status or an inclusive range of statuses: `200` or `"200-399"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest status accepted.
    pub min: u16,
    /// Highest status accepted.
    pub max: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        Self { min: 200, max: 399 }
    }
}

impl StatusRange {
    /// Whether `status` is in the range.
    pub fn contains(self, status: u16) -> bool {
        (self.min..=self.max).contains(&status)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status such as 200 or a range such as \"200-399\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                let s = u16::try_from(v).ok().filter(|s| (100..=599).contains(s));
                s.map(|s| StatusRange { min: s, max: s })
                    .ok_or_else(|| E::custom(format!("status {v} is not 100 to 599")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                let bad = || E::custom(format!("invalid status range {v:?}; write it like \"200-399\""));
                let (a, b) = v.split_once('-').unwrap_or((v, v));
                let min: u16 = a.trim().parse().map_err(|_| bad())?;
                let max: u16 = b.trim().parse().map_err(|_| bad())?;
                if !(100..=599).contains(&min) || !(100..=599).contains(&max) || min > max {
                    return Err(bad());
                }
                Ok(StatusRange { min, max })
            }
        }
        de.deserialize_any(Visitor)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}-{}", self.min, self.max))
    }
}

/// The protocol spoken to an upstream's endpoints.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP, streams multiplexed.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 when ALPN agrees on it, else HTTP/1.1.
    Auto,
}

impl UpstreamProtocol {
    /// Whether every request goes out as HTTP/2.
    pub fn is_h2_only(self) -> bool {
        matches!(self, Self::H2c | Self::H2)
    }
}

/// TLS towards an upstream's `https://` targets. Certificates are verified
/// against the system's roots (or `ca`) by default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTls {
    /// A PEM file of CA certificates to trust instead of the system's.
    pub ca: Option<std::path::PathBuf>,
    /// The name sent as SNI and verified against the certificate; the
    /// target's host by default.
    pub sni: Option<String>,
    /// A client certificate chain to present (mutual TLS), with its key.
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    pub client_key: Option<std::path::PathBuf>,
    /// `insecure_skip_verify = true` accepts any certificate. Logged loudly:
    /// it gives up what TLS is for.
    pub insecure_skip_verify: bool,
}

/// One endpoint of an upstream: `"http://host:port"` or
/// `{ url = "http://host:port", weight = 2, down = false }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Scheme and authority; a target has no path.
    pub url: TargetUrl,
    /// Relative share of traffic (≥ 1), used by weighted balancers.
    pub weight: u32,
    /// `down = true` keeps the target in the config but sends it nothing,
    /// the way an operator takes a server out of rotation without deleting it.
    pub down: bool,
}

/// A target URL: `http://HOST:PORT` (the port defaults to 80).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port, with the port always present.
    pub authority: Authority,
}

/// How an endpoint is picked for each request:
/// `balancer = "round-robin" | "weighted" | "least-connections" | "ip-hash"`,
/// or `{ hash_header = "x-user" }`, `{ hash_cookie = "session" }`,
/// `{ plugin = "NAME" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balancer {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's): shares by weight, no bursts.
    Weighted,
    /// Fewest requests in flight relative to weight; ties broken at random.
    LeastConnections,
    /// Consistent hashing on the client's IP address.
    IpHash,
    /// Consistent hashing on a request header's value.
    HashHeader(String),
    /// Consistent hashing on a cookie's value.
    HashCookie(String),
    /// A balancer plugin from `[plugins.NAME]`.
    Plugin(String),
}

impl<'de> Deserialize<'de> for Balancer {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            plugin: Option<String>,
            hash_header: Option<String>,
            hash_cookie: Option<String>,
        }

        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Balancer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED_BALANCER)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Balancer, E> {
                match v {
                    "round-robin" => Ok(Balancer::RoundRobin),
                    "weighted" => Ok(Balancer::Weighted),
                    "least-connections" => Ok(Balancer::LeastConnections),
                    "ip-hash" => Ok(Balancer::IpHash),
                    other => Err(E::custom(format!(
                        "unknown balancer {other:?}; expected {EXPECTED_BALANCER}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Balancer, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match (t.plugin, t.hash_header, t.hash_cookie) {
                    (Some(p), None, None) => Ok(Balancer::Plugin(p)),
                    (None, Some(h), None) if !h.is_empty() => Ok(Balancer::HashHeader(h)),
                    (None, None, Some(c)) if !c.is_empty() => Ok(Balancer::HashCookie(c)),
                    _ => Err(serde::de::Error::custom(format!(
                        "give exactly one of plugin, hash_header, hash_cookie (non-empty); expected {EXPECTED_BALANCER}"
                    ))),
                }
            }
        }
        de.deserialize_any(Visitor)
    }
}

const EXPECTED_BALANCER: &str = "\"round-robin\", \"weighted\", \"least-connections\", \"ip-hash\", \
     { hash_header = \"NAME\" }, { hash_cookie = \"NAME\" } or { plugin = \"NAME\" }";

impl Serialize for Balancer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let table = |s: S, key: &str, value: &str| {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(key, value)?;
            m.end()
        };
        match self {
            Balancer::RoundRobin => s.serialize_str("round-robin"),
            Balancer::Weighted => s.serialize_str("weighted"),
            Balancer::LeastConnections => s.serialize_str("least-connections"),
            Balancer::IpHash => s.serialize_str("ip-hash"),
            Balancer::HashHeader(h) => table(s, "hash_header", h),
            Balancer::HashCookie(c) => table(s, "hash_cookie", c),
            Balancer::Plugin(p) => table(s, "plugin", p),
        }
    }
}

/// Timeouts towards an upstream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTimeouts {
    /// Time to open a TCP connection; beyond it the client gets 504.
    pub connect: Duration,
    /// Time from sending the request until the response head arrives;
    /// beyond it the client gets 504 and the connection is dropped.
    pub response_header: Duration,
    /// Time for the whole exchange up to the response head, retries
    /// included; beyond it the client gets 504.
    pub request: Duration,
    /// Time the response body may go without sending a byte; beyond it the
    /// response is aborted (never ended cleanly) and the connection dropped.
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            request: Duration::from_secs(120),
            idle: Duration::from_secs(60),
        }
    }
}

/// The keep-alive pool of connections to each endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// An idle connection is closed after this long. `idle_timeout = "90s"`.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint at most. `max_idle_per_endpoint = 64`.
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 64,
        }
    }
}

impl UpstreamConfig {
    pub(super) fn validate(&self, name: &str, errors: &mut Vec<Invalid>) {
        let key = format!("upstreams.{name}");
        if self.retry.attempts == 0 {
            errors.push(Invalid::new(
                format!("{key}.retry.attempts"),
                "must be at least 1 (1 means no retries)",
            ));
        }
        if self.retry.budget_percent > 100 {
            errors.push(Invalid::new(format!("{key}.retry.budget_percent"), "must be 0 to 100"));
        }
        for (i, path) in self.retry.safe_paths.iter().enumerate() {
            if !path.starts_with('/') {
                errors.push(Invalid::new(
                    format!("{key}.retry.safe_paths[{i}]"),
                    format!("a path prefix starts with \"/\", e.g. \"/{path}\""),
                ));
            }
        }
        for (i, status) in self.retry.retry_on.iter().enumerate() {
            if !matches!(status, 502..=504) {
                errors.push(Invalid::new(
                    format!("{key}.retry.retry_on[{i}]"),
                    format!("{status} cannot be retried; only 502, 503 and 504 can"),
                ));
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            if !(cb.failure_ratio > 0.0 && cb.failure_ratio <= 1.0) {
                errors.push(Invalid::new(
                    format!("{key}.circuit_breaker.failure_ratio"),
                    "must be above 0 and at most 1",
                ));
            }
            if cb.min_requests == 0 || cb.half_open_requests == 0 {
                errors.push(Invalid::new(
                    format!("{key}.circuit_breaker"),
                    "min_requests and half_open_requests must be at least 1",
                ));
            }
        }
        if self.passive.max_ejected_percent > 100 {
            errors.push(Invalid::new(
                format!("{key}.passive.max_ejected_percent"),
                "must be 0 to 100",
            ));
        }
        if let Some(h) = &self.health {
            if !h.path.starts_with('/') {
                errors.push(Invalid::new(format!("{key}.health.path"), "must start with \"/\""));
            }
            if h.healthy == 0 || h.unhealthy == 0 {
                errors.push(Invalid::new(
                    format!("{key}.health"),
                    "healthy and unhealthy must be at least 1",
                ));
            }
            if http::Method::from_bytes(h.method.as_bytes()).is_err() {
                errors.push(Invalid::new(
                    format!("{key}.health.method"),
                    format!("invalid method {:?}", h.method),
                ));
            }
            if h.interval < Duration::from_millis(10) {
                errors.push(Invalid::new(format!("{key}.health.interval"), "must be at least 10ms"));
            }
        }
        if let Some(h2) = &self.http2 {
            h2.validate(&format!("{key}.http2"), errors);
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            errors.push(Invalid::new(
                format!("{key}.tls"),
                "give client_cert and client_key together",
            ));
        }
        match (&self.discovery, self.targets.is_empty()) {
            (None, true) => errors.push(Invalid::new(
                format!("{key}.targets"),
                "an upstream needs at least one target, e.g. targets = [\"http://127.0.0.1:9001\"], or a discovery back end",
            )),
            (Some(DiscoveryConfig::Dns(d)), true) if d.record == DnsRecord::A && d.port.is_none() => {
                errors.push(Invalid::new(
                    format!("{key}.discovery.dns.port"),
                    "A records carry no port: give port = N (or use type = \"srv\")",
                ))
            }
            (Some(DiscoveryConfig::Etcd(e)), true) if e.prefix.is_empty() => errors.push(Invalid::new(
                format!("{key}.discovery.etcd.prefix"),
                "give a key prefix, e.g. prefix = \"/services/users/\"",
            )),
            (Some(DiscoveryConfig::Consul(c)), true) if c.service.is_empty() => errors.push(Invalid::new(
                format!("{key}.discovery.consul.service"),
                "give the service name",
            )),
            (Some(DiscoveryConfig::Consul(c)), true)
                if c.wait < Duration::from_secs(1) || c.wait > Duration::from_secs(600) =>
            {
                errors.push(Invalid::new(
                    format!("{key}.discovery.consul.wait"),
                    "must be between 1s and 10m (Consul caps a blocking query at 10 minutes)",
                ))
            }
            (Some(_), false) => errors.push(Invalid::new(
                format!("{key}.discovery"),
                "give either targets or discovery, not both",
            )),
            _ => {}
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|o| o.url == t.url) {
                errors.push(Invalid::new(
                    format!("{key}.targets[{i}]"),
                    format!("{} is listed twice", t.url),
                ));
            }
        }
    }
}

impl TargetUrl {
    /// Parses `http://HOST[:PORT]` (no path, no query, no user info).
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|e| format!("invalid target URL {s:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("invalid target URL {s:?}: it needs a scheme, e.g. \"http://{s}\""))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!(
                "invalid target URL {s:?}: scheme {scheme:?} is not supported; use http:// or https://"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("invalid target URL {s:?}: it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("invalid target URL {s:?}: user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "invalid target URL {s:?}: a target is scheme://host:port without a path; rewrite paths with a plugin"
            ));
        }
        let authority = if authority.port_u16().is_some() {
            authority.clone()
        } else {
            let port = if scheme == Scheme::HTTPS { 443 } else { 80 };
            format!("{}:{port}", authority.host())
                .parse()
                .map_err(|e| format!("invalid target URL {s:?}: {e}"))?
        };
        Ok(Self { scheme, authority })
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl Target {
    /// A target from its parts, as a config table or a discovery record
    /// gives them: a weight of at least 1 and a valid URL.
    pub fn new(url: &str, weight: u32, down: bool) -> Result<Self, String> {
        if weight == 0 {
            return Err("weight must be at least 1; use down = true to send a target nothing".to_owned());
        }
        Ok(Self {
            url: TargetUrl::parse(url)?,
            weight,
            down,
        })
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            #[serde(default = "one")]
            weight: u32,
            #[serde(default)]
            down: bool,
        }
        fn one() -> u32 {
            1
        }

        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL string or a table { url = \"...\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Target, E> {
                let url = TargetUrl::parse(v).map_err(E::custom)?;
                Ok(Target {
                    url,
                    weight: 1,
                    down: false,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Target, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Target::new(&t.url, t.weight, t.down).map_err(serde::de::Error::custom)
            }
        }
        de.deserialize_any(Visitor)
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Target", 3)?;
        st.serialize_field("url", &self.url.to_string())?;
        st.serialize_field("weight", &self.weight)?;
        st.serialize_field("down", &self.down)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let t = TargetUrl::parse("http://127.0.0.1").unwrap();
        assert_eq!(t.to_string(), "http://127.0.0.1:80");
        assert!(TargetUrl::parse("127.0.0.1:80").unwrap_err().contains("needs a scheme"));
        assert!(TargetUrl::parse("http://h:1/x").unwrap_err().contains("without a path"));
        assert!(TargetUrl::parse("ftp://h:1").unwrap_err().contains("not supported"));
    }
}
