//! One endpoint of an upstream and what the proxy knows about it right now:
//! requests in flight, active health, passive ejection.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::metrics::ShardedHistogram;

use tokio::time::Instant;

use super::circuit::{Circuit, CircuitState};
use crate::config::{CircuitBreakerConfig, TargetUrl};

/// One place an upstream's requests can go.
///
/// A cheap handle: clones share the live state (in flight, health,
/// ejection, circuit breaker), so an endpoint that stays when the set of
/// endpoints changes keeps everything the proxy learned about it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where it is.
    pub url: TargetUrl,
    /// Relative share of traffic.
    pub weight: u32,
    /// Configured out of rotation (`down = true`).
    pub down: bool,
    /// `url` as a string, kept once for logs instead of formatted per request.
    label: Arc<str>,
    /// `url` as the pool looks connections up by, hashed once.
    pool_target: super::pool::Destination,
    state: Arc<State>,
    circuit: Option<Arc<Circuit>>,
}

/// Live state, shared with the request guards and the health checker.
#[derive(Debug)]
struct State {
    in_flight: AtomicU32,
    /// Requests sent to it since it joined, for the admin API's rates.
    requests: AtomicU64,
    /// Set by active health checks; endpoints start healthy.
    healthy: AtomicBool,
    /// Passive detection: consecutive failures, and until when (ms after
    /// `epoch`) the endpoint is ejected; 0 when it is not.
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    /// `plumeway_upstream_duration_seconds` for this endpoint, found in
    /// its family once: finding it per request hashed two labels with
    /// SipHash under a lock.
    latency: OnceLock<ShardedHistogram>,
}

/// Counts a request as in flight to an endpoint until dropped (the guard
/// travels with the response body, so streaming responses count too).
#[derive(Debug)]
pub struct InFlight {
    state: Arc<State>,
}

impl Endpoint {
    /// An endpoint that starts healthy, with nothing in flight.
    pub fn new(url: TargetUrl, weight: u32, down: bool) -> Self {
        let state = State {
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            latency: OnceLock::new(),
        };
        Self {
            label: url.to_string().into(),
            pool_target: super::pool::Destination::new(url.scheme.clone(), url.authority.clone()),
            url,
            weight,
            down,
            state: Arc::new(state),
            circuit: None,
        }
    }

    /// The target this endpoint was made from.
    pub fn target(&self) -> crate::config::Target {
        crate::config::Target {
            url: self.url.clone(),
            weight: self.weight,
            down: self.down,
        }
    }

    /// The same endpoint (same live state) with a new weight and `down`
    /// flag, for a changed config.
    pub fn reconfigured(&self, weight: u32, down: bool) -> Self {
        Self {
            weight,
            down,
            ..self.clone()
        }
    }

    /// Gives the endpoint a circuit breaker.
    pub fn with_circuit(mut self, config: Option<&CircuitBreakerConfig>) -> Self {
        self.circuit = config.map(|c| Arc::new(Circuit::new(c.clone())));
        self
    }

    /// The circuit breaker's state, when the endpoint has one.
    pub fn circuit(&self) -> Option<CircuitState> {
        self.circuit.as_deref().map(Circuit::state)
    }

    /// Counts a request sent to the endpoint (for a half-open breaker).
    pub fn dispatched(&self) {
        if let Some(c) = &self.circuit {
            c.dispatched();
        }
    }

    /// Records an outcome with the circuit breaker; the new state when it
    /// changed.
    pub fn record_circuit(&self, success: bool) -> Option<CircuitState> {
        self.circuit.as_ref().and_then(|c| c.record(success))
    }

    /// Whether the balancer may send this endpoint traffic: not configured
    /// down, healthy by active checks, not ejected by passive detection, and
    /// its circuit breaker (if any) not open.
    pub fn is_available(&self) -> bool {
        !self.down && self.is_healthy() && !self.is_ejected() && self.circuit.as_deref().is_none_or(Circuit::admits)
    }

    /// `http://host:port`, for logs and error messages.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The endpoint's latency histogram, from `resolve` the first time.
    pub(crate) fn latency(&self, resolve: impl FnOnce() -> ShardedHistogram) -> &ShardedHistogram {
        self.state.latency.get_or_init(resolve)
    }

    /// Where the upstream's pool sends this endpoint's requests.
    pub fn pool_target(&self) -> &super::pool::Destination {
        &self.pool_target
    }

    /// Requests in flight to this endpoint now.
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Starts counting one request; it stops when the guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            state: Arc::clone(&self.state),
        }
    }

    /// Requests sent to this endpoint so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// The active health checks' verdict.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// Records the active health checks' verdict; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.state.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Whether passive detection has taken the endpoint out for now.
    pub fn is_ejected(&self) -> bool {
        let until = self.state.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Records a request that reached a verdict on this endpoint. After
    /// `threshold` consecutive failures the endpoint is ejected for
    /// `base × number of ejections so far` (capped at ten times `base`), so
    /// an endpoint that keeps failing stays out longer. Returns the
    /// ejection's length when this failure ejected it.
    pub fn record(&self, success: bool, threshold: u32, base: Duration) -> Option<Duration> {
        if success {
            self.state.failures.store(0, Ordering::Relaxed);
            return None;
        }
        let failures = self.state.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || failures < threshold || self.is_ejected() {
            return None;
        }
        let n = self.state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = base.saturating_mul(n.min(10));
        let until = self.now_ms() + u64::try_from(length.as_millis()).unwrap_or(u64::MAX / 2).max(1);
        self.state.ejected_until_ms.store(until, Ordering::Relaxed);
        self.state.failures.store(0, Ordering::Relaxed);
        Some(length)
    }

    /// Ends an ejection early (used when too many endpoints would be out).
    pub fn readmit(&self) {
        self.state.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.state.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
