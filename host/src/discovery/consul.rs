//! `discovery = { consul = { address = "http://127.0.0.1:8500", service = "users" } }`:
//! the service's instances whose health checks all pass, from Consul's
//! health HTTP API, followed with blocking queries (`index` + `wait`): the
//! agent holds each query until the service changes or `wait` passes.
//!
//! Registration uses the agent API with a TTL check that this process
//! renews; an instance whose owner dies turns critical after the TTL and
//! drops out of every proxy's set.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::json;

use super::http::Client;
use super::{Discovery, Error, Registration, canonical};
use crate::config::{ConsulDiscovery, Target, TargetUrl};

/// Blocking queries that return at once with the same index (a busy
/// cluster, or an agent that ignores `index`) are spaced at least this far
/// apart, so that following a service never becomes a busy loop.
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(100);

/// The `consul` back end.
pub struct Consul {
    client: Client,
    config: ConsulDiscovery,
    /// `X-Consul-Index` of the last answer; 0 before the first.
    index: u64,
    last_query: Option<tokio::time::Instant>,
    /// TTL checks this process keeps passing (or failing), by service ID.
    checks: Arc<Mutex<HashMap<String, Check>>>,
}

struct Check {
    passing: Arc<std::sync::atomic::AtomicBool>,
    heartbeat: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the whole config: it may hold a token.
        f.debug_struct("Consul")
            .field("address", &self.config.address)
            .field("service", &self.config.service)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Consul {
    /// A back end for `config`; nothing is asked until the first call.
    pub fn new(config: &ConsulDiscovery) -> Self {
        let mut headers = Vec::new();
        if let Some(token) = &config.token {
            match HeaderValue::from_str(token) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    headers.push((HeaderName::from_static("x-consul-token"), value));
                }
                Err(_) => tracing::warn!("the Consul token is not a valid header value; sending none"),
            }
        }
        Self {
            client: Client::new(headers),
            config: config.clone(),
            index: 0,
            last_query: None,
            checks: Arc::default(),
        }
    }

    /// `/v1/health/service/NAME?passing=true&…`, blocking when `index` is set.
    fn health_query(&self, index: u64) -> String {
        let mut q = format!("/v1/health/service/{}?passing=true", encode(&self.config.service));
        if let Some(tag) = &self.config.tag {
            let _ = write!(q, "&tag={}", encode(tag));
        }
        if let Some(dc) = &self.config.dc {
            let _ = write!(q, "&dc={}", encode(dc));
        }
        if index > 0 {
            let _ = write!(q, "&index={index}&wait={}s", self.config.wait.get().as_secs().max(1));
        }
        q
    }

    async fn query(&mut self, index: u64) -> Result<Vec<Target>, Error> {
        if let Some(last) = self.last_query {
            tokio::time::sleep_until(last + MIN_QUERY_INTERVAL).await;
        }
        self.last_query = Some(tokio::time::Instant::now());
        // Consul adds up to wait/16 of jitter to a blocking query.
        let timeout = if index > 0 {
            self.config.wait.get() + self.config.wait.get() / 16 + self.config.timeout.get()
        } else {
            self.config.timeout.get()
        };
        let path = self.health_query(index);
        let (entries, headers): (Vec<ServiceEntry>, _) = self
            .client
            .json(Method::GET, &self.config.address, &path, None, timeout)
            .await?;
        let new_index = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::Failed(format!("GET {}{path}: no X-Consul-Index", self.config.address)))?;
        // Consul's rules for blocking queries: an index that went backwards
        // (a reset, a new leader) starts over; zero is never waited on.
        self.index = if new_index < self.index { 0 } else { new_index.max(1) };
        let mut targets = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(target) = self.target(&entry) {
                targets.push(target);
            }
        }
        Ok(canonical(targets))
    }

    /// The entry as a target, or `None` when a filter excludes it (checked
    /// here too: `passing` and `tag` are asked of the server, but an agent
    /// that ignored them must not route to failing instances).
    fn target(&self, entry: &ServiceEntry) -> Option<Target> {
        let s = &entry.service;
        if entry.checks.iter().any(|c| c.status != "passing") {
            return None;
        }
        if let Some(tag) = &self.config.tag
            && !s.tags.iter().any(|t| t == tag)
        {
            return None;
        }
        if self.config.meta.iter().any(|(k, v)| s.meta.get(k) != Some(v)) {
            return None;
        }
        let host = if s.address.is_empty() {
            &entry.node.address
        } else {
            &s.address
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let weight = s.weights.as_ref().map_or(1, |w| w.passing.max(1));
        match Target::new(&format!("http://{host}:{}", s.port), weight, false) {
            Ok(target) => Some(target),
            Err(err) => {
                tracing::warn!(service = %s.id, error = %err, "Consul instance has no usable address; skipped");
                None
            }
        }
    }

    async fn put(&self, path: &str, body: Option<Vec<u8>>) -> Result<(), Error> {
        self.client
            .call(Method::PUT, &self.config.address, path, body, self.config.timeout.get())
            .await?
            .success(&Method::PUT, &self.config.address, path)?;
        Ok(())
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        // Checks are left to expire: a dropped back end is a dead owner.
        for (_, check) in self.checks.lock().unwrap_or_else(PoisonError::into_inner).drain() {
            check.heartbeat.abort();
        }
    }
}

impl Discovery for Consul {
    const KIND: &'static str = "consul";

    async fn resolve(&mut self) -> Result<Vec<Target>, Error> {
        self.index = 0;
        self.query(0).await
    }

    async fn watch(&mut self) -> Result<Vec<Target>, Error> {
        let index = self.index;
        self.query(index.max(1)).await
    }

    async fn register(&self, instance: &Registration) -> Result<(), Error> {
        let ttl = instance.ttl.max(Duration::from_secs(1));
        let host = instance
            .url
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = instance.url.authority.port_u16().unwrap_or(80);
        let mut service = json!({
            "ID": instance.id,
            "Name": self.config.service,
            "Address": host,
            "Port": port,
            "Meta": instance.metadata,
            "Weights": { "Passing": instance.weight, "Warning": 1 },
            "Check": {
                "CheckID": check_id(&instance.id),
                "Name": "plumeway TTL",
                "TTL": format!("{}s", ttl.as_secs()),
                "Status": "passing",
                // Consul's floor for this setting; until then a dead
                // instance is critical, which the proxy already skips.
                "DeregisterCriticalServiceAfter": format!("{}s", ttl.as_secs().max(60) * 2),
            },
        });
        if let Some(tag) = &self.config.tag {
            service["Tags"] = json!([tag]);
        }
        let body = serde_json::to_vec(&service).map_err(|e| e.to_string())?;
        self.put("/v1/agent/service/register", Some(body)).await?;
        let passing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let heartbeat = tokio::spawn(heartbeat(
            self.client.clone(),
            self.config.address.clone(),
            check_id(&instance.id),
            ttl,
            passing.clone(),
            self.config.timeout.get(),
        ))
        .abort_handle();
        let old = self
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance.id.clone(), Check { passing, heartbeat });
        if let Some(old) = old {
            old.heartbeat.abort();
        }
        tracing::info!(instance = %instance, ttl = ?ttl, "registered in Consul");
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), Error> {
        if let Some(check) = self.checks.lock().unwrap_or_else(PoisonError::into_inner).remove(id) {
            check.heartbeat.abort();
        }
        self.put(&format!("/v1/agent/service/deregister/{}", encode(id)), None)
            .await?;
        tracing::info!(id, "deregistered from Consul");
        Ok(())
    }

    async fn set_health(&self, id: &str, passing: bool) -> Result<(), Error> {
        if let Some(check) = self.checks.lock().unwrap_or_else(PoisonError::into_inner).get(id) {
            check.passing.store(passing, std::sync::atomic::Ordering::Relaxed);
        }
        let verb = if passing { "pass" } else { "fail" };
        self.put(&format!("/v1/agent/check/{verb}/{}", encode(&check_id(id))), None)
            .await
    }
}

/// The ID of the TTL check registered with service `id` (Consul's own
/// default for a check declared with its service).
fn check_id(id: &str) -> String {
    format!("service:{id}")
}

/// Reports the check's state every third of its TTL.
async fn heartbeat(
    client: Client,
    address: TargetUrl,
    check: String,
    ttl: Duration,
    passing: Arc<std::sync::atomic::AtomicBool>,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let verb = if passing.load(std::sync::atomic::Ordering::Relaxed) {
            "pass"
        } else {
            "fail"
        };
        let path = format!("/v1/agent/check/{verb}/{}", encode(&check));
        let outcome = client.call(Method::PUT, &address, &path, None, timeout).await;
        if let Err(err) = outcome.and_then(|r| r.success(&Method::PUT, &address, &path).map(drop)) {
            tracing::warn!(check, error = %err, "Consul TTL check not renewed");
        }
    }
}

/// Percent-encodes everything but unreserved characters, for a path
/// segment or a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// The parts of `/v1/health/service/NAME` that the proxy reads.

#[derive(Deserialize)]
struct ServiceEntry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
    #[serde(rename = "Checks", default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Tags", default, deserialize_with = "null_default")]
    tags: Vec<String>,
    #[serde(rename = "Meta", default, deserialize_with = "null_default")]
    meta: BTreeMap<String, String>,
    #[serde(rename = "Weights")]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: u32,
}

#[derive(Deserialize)]
struct HealthCheck {
    #[serde(rename = "Status")]
    status: String,
}

/// Consul writes `null` for an empty list or map.
fn null_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(de: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("users"), "users");
        assert_eq!(encode("a b&c=d/e"), "a%20b%26c%3Dd%2Fe");
    }
}
