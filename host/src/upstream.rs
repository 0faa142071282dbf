//! Upstreams: named sets of endpoints, how one is picked, the pooled
//! connections to them, and what the proxy learns about their health.

mod balance;
mod circuit;
mod endpoint;
mod health;
mod pool;
mod retry;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, StatusCode};

use crate::config::{Balancer, HealthConfig, PassiveConfig, RetryConfig, UpstreamConfig, UpstreamTimeouts};
use crate::plugin::Plugin;

pub use balance::{Balance, ConsistentHash, LeastConnections, Pick, RoundRobin, Weighted, eligible};
pub use circuit::{Circuit, CircuitState};
pub use endpoint::{Endpoint, InFlight};
pub use pool::{Pool, PoolError};
pub use retry::RetryBudget;

/// One upstream, built from its `[upstreams.NAME]` table.
#[derive(Debug)]
pub struct Upstream {
    name: Arc<str>,
    endpoints: Vec<Endpoint>,
    balancer: Box<dyn Balance>,
    /// `balancer = { plugin = "NAME" }`: asked first; the built-in balancer
    /// is the fallback when the plugin's failure is skipped.
    balancer_plugin: Option<Arc<Plugin>>,
    hash_by: HashBy,
    pool: Pool,
    timeouts: UpstreamTimeouts,
    retry: RetryConfig,
    budget: RetryBudget,
    passive: PassiveConfig,
    health: Option<HealthConfig>,
}

/// Where consistent hashing finds its key.
#[derive(Debug)]
enum HashBy {
    Nothing,
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

impl Upstream {
    /// Builds the upstream named `name` from its config, with the loaded
    /// balancer plugin when the config names one. Active health checks start
    /// with [`Upstream::start_health_checks`].
    pub fn new(name: &str, config: &UpstreamConfig, balancer_plugin: Option<Arc<Plugin>>) -> Self {
        let endpoints: Vec<Endpoint> = config
            .targets
            .iter()
            .map(|t| Endpoint::new(t.url.clone(), t.weight, t.down).with_circuit(config.circuit_breaker.as_ref()))
            .collect();
        let hash_by = match &config.balancer {
            Balancer::IpHash => HashBy::ClientIp,
            Balancer::HashHeader(h) => HeaderName::from_bytes(h.as_bytes()).map_or(HashBy::Nothing, HashBy::Header),
            Balancer::HashCookie(c) => HashBy::Cookie(c.clone()),
            _ => HashBy::Nothing,
        };
        Self {
            name: name.into(),
            balancer: balance::build(&config.balancer, &endpoints),
            endpoints,
            balancer_plugin,
            hash_by,
            pool: Pool::new(&config.pool, &config.timeouts),
            timeouts: config.timeouts.clone(),
            retry: config.retry.clone(),
            budget: RetryBudget::new(config.retry.budget_percent),
            passive: config.passive.clone(),
            health: config.health.clone(),
        }
    }

    /// Starts the active health checker, if the upstream has one; it stops
    /// by itself when the upstream is dropped.
    pub fn start_health_checks(self: &Arc<Self>) {
        if let Some(config) = self.health.clone() {
            tokio::spawn(health::run(Arc::downgrade(self), config));
        }
    }

    /// The upstream's name, as in `[upstreams.NAME]`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The index of the endpoint for the next request by the built-in
    /// balancer, or `None` when no endpoint can take traffic.
    pub fn pick_builtin(&self, pick: &Pick<'_>) -> Option<usize> {
        self.balancer.pick(&self.endpoints, pick)
    }

    /// The balancer plugin, when the upstream has one.
    pub fn balancer_plugin(&self) -> Option<&Arc<Plugin>> {
        self.balancer_plugin.as_ref()
    }

    /// The key consistent hashing routes this request by, if the balancer
    /// hashes and the request has one.
    pub fn hash_key(&self, headers: &HeaderMap, client: std::net::IpAddr) -> Option<Vec<u8>> {
        match &self.hash_by {
            HashBy::Nothing => None,
            HashBy::ClientIp => Some(client.to_string().into_bytes()),
            HashBy::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
            HashBy::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes().to_vec()),
        }
    }

    /// The connection pool shared by all of this upstream's endpoints.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Timeouts towards this upstream.
    pub fn timeouts(&self) -> &UpstreamTimeouts {
        &self.timeouts
    }

    /// All endpoints, in config order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Tries in all for one request, the first included.
    pub fn attempts(&self) -> u32 {
        self.retry.attempts
    }

    /// Whether a response with `status` should be retried for `method`.
    pub fn retries_status(&self, method: &Method, status: StatusCode) -> bool {
        is_idempotent(method) && self.retry.retry_on.contains(&status.as_u16())
    }

    /// The retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Records the outcome of a request on endpoint `i` for passive
    /// detection, ejecting it after too many consecutive failures unless
    /// that would put more than `max_ejected_percent` of the upstream out.
    pub fn record(&self, i: usize, success: bool) {
        let p = &self.passive;
        let Some(endpoint) = self.endpoints.get(i) else { return };
        if let Some(state) = endpoint.record_circuit(success) {
            tracing::warn!(
                upstream = &*self.name,
                endpoint = &**endpoint.label(),
                ?state,
                "circuit breaker changed state"
            );
        }
        let Some(length) = endpoint.record(success, p.failures, p.eject.get()) else {
            return;
        };
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        if ejected * 100 > p.max_ejected_percent as usize * self.endpoints.len() {
            endpoint.readmit();
            tracing::warn!(
                upstream = &*self.name,
                endpoint = &**endpoint.label(),
                "endpoint keeps failing but is not ejected: max_ejected_percent reached"
            );
            return;
        }
        tracing::warn!(
            upstream = &*self.name,
            endpoint = &**endpoint.label(),
            eject_for = ?length,
            "endpoint ejected after consecutive failures"
        );
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110
/// §9.2.2), so a retry after the request may have reached a backend is safe.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
