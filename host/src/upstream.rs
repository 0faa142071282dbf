//! Upstreams: named sets of endpoints, how one is picked, the pooled
//! connections to them, and what the proxy learns about their health.

mod balance;
mod circuit;
mod endpoint;
mod health;
mod pool;
mod retry;

use std::sync::Arc;

use arc_swap::ArcSwap;

use http::{HeaderMap, HeaderName, Method, StatusCode};

use crate::config::{
    Balancer, CircuitBreakerConfig, HealthConfig, PassiveConfig, PoolConfig, RetryConfig, Target, UpstreamConfig,
    UpstreamTimeouts,
};
use crate::metrics::{EndpointLabels, Metrics, TransitionLabels, UpstreamLabels};
use crate::plugin::Plugin;

pub use balance::{Balance, ConsistentHash, LeastConnections, Pick, RoundRobin, Weighted, eligible};
pub use circuit::{Circuit, CircuitState};
pub use endpoint::{Endpoint, InFlight};
pub(crate) use pool::Answer;
pub(crate) use pool::chain;
pub(crate) use pool::h1;
pub use pool::{Destination, Pool, PoolError, UpstreamTls};
pub use retry::RetryBudget;

/// One upstream, built from its `[upstreams.NAME]` table.
#[derive(Debug)]
pub struct Upstream {
    name: Arc<str>,
    /// The endpoints now and their balancer, swapped whole when the set
    /// changes; each request works on the snapshot it started with.
    set: ArcSwap<EndpointSet>,
    balancer_config: Balancer,
    circuit_config: Option<CircuitBreakerConfig>,
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
    /// Tasks that work for this upstream (discovery watches), stopped when
    /// it is dropped, so that a long watch does not outlive a reload.
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// Woken when the set of endpoints changes, so that the health checker
    /// probes newcomers at once instead of at its next interval.
    changed: Arc<tokio::sync::Notify>,
    pool_config: PoolConfig,
    tls_config: crate::config::UpstreamTls,
    /// TLS settings, kept for the health checker's own connections.
    tls: Option<pool::UpstreamTls>,
    protocol: crate::config::UpstreamProtocol,
    http2_config: Option<crate::config::Http2Config>,
    metrics: Metrics,
}

/// The endpoints for `targets`: those already in `old` keep their live
/// state under the new weight and `down` flag; newcomers start fresh, and
/// out of rotation until their first passing probe when `hold_newcomers`
/// (active checks on an upstream that is already serving), as Envoy's do:
/// discovery lists instances that are still starting.
fn carry(
    targets: &[Target],
    old: Option<&EndpointSet>,
    circuit: Option<&CircuitBreakerConfig>,
    hold_newcomers: bool,
) -> Vec<Endpoint> {
    targets
        .iter()
        .map(
            |t| match old.and_then(|o| o.endpoints.iter().find(|e| e.url == t.url)) {
                Some(kept) => kept.reconfigured(t.weight, t.down),
                None => {
                    let endpoint = Endpoint::new(t.url.clone(), t.weight, t.down).with_circuit(circuit);
                    if hold_newcomers {
                        endpoint.set_healthy(false);
                    }
                    endpoint
                }
            },
        )
        .collect()
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

/// The endpoints an upstream has at one moment, with the built-in balancer
/// built for exactly these (a hash ring, weights).
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Endpoint>,
    balancer: Box<dyn Balance>,
    generation: u64,
}

impl EndpointSet {
    fn new(endpoints: Vec<Endpoint>, config: &Balancer, generation: u64) -> Self {
        Self {
            balancer: balance::build(config, &endpoints),
            endpoints,
            generation,
        }
    }

    /// The endpoints, in config order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The index of the endpoint the built-in balancer picks, or `None`
    /// when no endpoint is eligible.
    pub fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        self.balancer.pick(&self.endpoints, pick)
    }

    /// Changes whenever the set changes (balancer plugins cache per
    /// generation).
    pub fn generation(&self) -> u64 {
        self.generation
    }
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
    ///
    /// On a reload, `previous` is the upstream of the same name in the
    /// config being replaced: endpoints that stay keep their live state
    /// (health, ejection, circuit, in flight), the pool is shared when its
    /// settings did not change, and an upstream fed by discovery starts
    /// with the previous set until its back end answers again.
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        balancer_plugin: Option<Arc<Plugin>>,
        metrics: &Metrics,
        tls: Option<pool::UpstreamTls>,
        previous: Option<&Upstream>,
    ) -> Self {
        let circuit_config = config.circuit_breaker.clone();
        let previous_set = previous.map(Upstream::current);
        let targets: Vec<Target> = match (&config.discovery, &previous_set) {
            (Some(_), Some(set)) => set.endpoints.iter().map(Endpoint::target).collect(),
            _ => config.targets.clone(),
        };
        let endpoints = carry(
            &targets,
            previous_set.as_deref(),
            circuit_config.as_ref(),
            config.health.is_some() && previous.is_some(),
        );
        let hash_by = match &config.balancer {
            Balancer::IpHash => HashBy::ClientIp,
            Balancer::HashHeader(h) => HeaderName::from_bytes(h.as_bytes()).map_or(HashBy::Nothing, HashBy::Header),
            Balancer::HashCookie(c) => HashBy::Cookie(c.clone()),
            _ => HashBy::Nothing,
        };
        let tls_for_probes = tls.clone();
        let pool = match previous {
            Some(p)
                if p.pool_config == config.pool
                    && p.timeouts == config.timeouts
                    && p.tls_config == config.tls
                    && p.protocol == config.protocol
                    && p.http2_config == config.http2 =>
            {
                p.pool.clone()
            }
            _ => Pool::new(
                &config.pool,
                &config.timeouts,
                metrics
                    .connections
                    .get_or_create_owned(&crate::metrics::ConnectionLabels { kind: "upstream" }),
                tls,
                config.protocol,
                config.http2.as_ref(),
            ),
        };
        let generation = previous_set.as_ref().map_or(0, |s| s.generation + 1);
        Self {
            name: name.into(),
            set: ArcSwap::from_pointee(EndpointSet::new(endpoints, &config.balancer, generation)),
            balancer_config: config.balancer.clone(),
            circuit_config,
            balancer_plugin,
            hash_by,
            pool,
            pool_config: config.pool.clone(),
            tls_config: config.tls.clone(),
            tls: tls_for_probes,
            protocol: config.protocol,
            http2_config: config.http2.clone(),
            timeouts: config.timeouts.clone(),
            retry: config.retry.clone(),
            budget: RetryBudget::new(config.retry.budget_percent),
            passive: config.passive.clone(),
            health: config.health.clone(),
            tasks: std::sync::Mutex::default(),
            changed: Arc::default(),
            metrics: metrics.clone(),
        }
    }

    /// Ties `task` to this upstream: it is aborted when the upstream is
    /// dropped.
    pub fn own_task(&self, task: &tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task.abort_handle());
    }

    /// The endpoints now.
    pub fn current(&self) -> Arc<EndpointSet> {
        self.set.load_full()
    }

    /// Replaces the set of endpoints (a reload, or discovery). Endpoints
    /// that stay keep their live state (in flight, health, ejection,
    /// circuit) and, since the pool is keyed by address, their pooled
    /// connections; endpoints that go finish the requests they have, and
    /// their idle connections expire.
    pub fn set_targets(&self, targets: &[Target]) {
        let old = self.current();
        let endpoints = carry(
            targets,
            Some(&old),
            self.circuit_config.as_ref(),
            self.health.is_some() && old.generation > 0,
        );
        let added: Vec<&str> = endpoints
            .iter()
            .filter(|e| !old.endpoints.iter().any(|o| o.url == e.url))
            .map(|e| &**e.label())
            .collect();
        let removed: Vec<&str> = old
            .endpoints
            .iter()
            .filter(|o| !endpoints.iter().any(|e| e.url == o.url))
            .map(|e| &**e.label())
            .collect();
        tracing::info!(
            upstream = &*self.name,
            ?added,
            ?removed,
            endpoints = endpoints.len(),
            "endpoints changed"
        );
        self.set.store(Arc::new(EndpointSet::new(
            endpoints,
            &self.balancer_config,
            old.generation + 1,
        )));
        self.changed.notify_waiters();
    }

    /// Starts the active health checker, if the upstream has one; it stops
    /// by itself when the upstream is dropped.
    pub fn start_health_checks(self: &Arc<Self>) {
        if let Some(config) = self.health.clone() {
            tokio::spawn(health::run(
                Arc::downgrade(self),
                config,
                self.tls.clone(),
                self.protocol,
            ));
        }
    }

    /// Notified whenever the set of endpoints changes.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changed)
    }

    /// The upstream's name, as in `[upstreams.NAME]`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The balancer plugin, when the upstream has one.
    pub fn balancer_plugin(&self) -> Option<&Arc<Plugin>> {
        self.balancer_plugin.as_ref()
    }

    /// The key consistent hashing routes this request by, if the balancer
    /// hashes and the request has one.
    /// `added` holds the headers the proxy adds beside the client's map.
    pub fn hash_key(
        &self,
        headers: &HeaderMap,
        added: &[(http::HeaderName, http::HeaderValue)],
        client: std::net::IpAddr,
    ) -> Option<Vec<u8>> {
        match &self.hash_by {
            HashBy::Nothing => None,
            HashBy::ClientIp => Some(client.to_string().into_bytes()),
            HashBy::Header(name) => added
                .iter()
                .find_map(|(n, v)| (n == name).then_some(v))
                .or_else(|| headers.get(name))
                .map(|v| v.as_bytes().to_vec()),
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

    /// Tries in all for one request, the first included.
    pub fn attempts(&self) -> u32 {
        self.retry.attempts
    }

    /// Whether a response with `status` should be retried for a request
    /// that is safe to repeat.
    pub fn retries_status(&self, safe: bool, status: StatusCode) -> bool {
        safe && self.retry.retry_on.contains(&status.as_u16())
    }

    /// Whether `path` is under one of `retry.safe_paths`.
    pub fn is_safe_path(&self, path: &str) -> bool {
        self.retry.safe_paths.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// The protocol spoken to the endpoints.
    pub fn protocol(&self) -> crate::config::UpstreamProtocol {
        self.protocol
    }

    /// The retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Records the outcome of a request on `endpoint` for the circuit
    /// breaker and passive detection, which ejects it after too many
    /// consecutive failures unless that would put more than
    /// `max_ejected_percent` of the upstream out.
    pub fn record(&self, endpoint: &Endpoint, success: bool) {
        if let Some(state) = endpoint.record_circuit(success) {
            tracing::warn!(
                upstream = &*self.name,
                endpoint = &**endpoint.label(),
                ?state,
                "circuit breaker changed state"
            );
        }
        let p = &self.passive;
        let Some(length) = endpoint.record(success, p.failures, p.eject.get()) else {
            return;
        };
        let set = self.current();
        let ejected = set.endpoints.iter().filter(|e| e.is_ejected()).count();
        if ejected * 100 > p.max_ejected_percent as usize * set.endpoints.len() {
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
        self.metrics.ejections.get_or_create(&self.labels(endpoint)).inc();
    }

    fn labels(&self, endpoint: &Endpoint) -> EndpointLabels {
        EndpointLabels {
            upstream: (&self.name).into(),
            endpoint: endpoint.label().into(),
        }
    }

    /// Counts the time from sending a request to `endpoint` to its
    /// response head.
    pub fn record_latency(&self, endpoint: &Endpoint, took: std::time::Duration) {
        endpoint
            .latency(|| {
                self.metrics
                    .upstream_duration
                    .get_or_create_owned(&self.labels(endpoint))
            })
            .observe(took.as_secs_f64());
    }

    /// Counts an attempt after the first.
    pub fn record_retry(&self) {
        self.metrics
            .retries
            .get_or_create(&UpstreamLabels {
                upstream: (&self.name).into(),
            })
            .inc();
    }

    /// Counts an active health check verdict that changed `endpoint`.
    pub(crate) fn record_transition(&self, endpoint: &Endpoint, healthy: bool) {
        let EndpointLabels { upstream, endpoint } = self.labels(endpoint);
        self.metrics
            .health_transitions
            .get_or_create(&TransitionLabels {
                upstream,
                endpoint,
                to: if healthy { "healthy" } else { "unhealthy" },
            })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn upstream(targets: &str) -> Upstream {
        let toml = format!(
            "[upstreams.u]\ntargets = [{targets}]\npassive = {{ failures = 1, eject = \"60s\", max_ejected_percent = 100 }}\n\
             [[routes]]\nupstream = \"u\"\n"
        );
        let config = Config::parse(Path::new("t.toml"), &toml).expect("config");
        Upstream::new("u", &config.upstreams["u"], None, &Metrics::new(), None, None)
    }

    fn targets(toml: &str) -> Vec<Target> {
        let config = Config::parse(
            Path::new("t.toml"),
            &format!("[upstreams.u]\ntargets = [{toml}]\n[[routes]]\nupstream = \"u\"\n"),
        )
        .expect("config");
        config.upstreams["u"].targets.clone()
    }

    #[tokio::test]
    async fn a_new_set_keeps_what_was_learned_about_endpoints_that_stay() {
        let up = upstream("\"http://127.0.0.1:1001\", \"http://127.0.0.1:1002\", \"http://127.0.0.1:1003\"");
        let before = up.current();
        let (a, b) = (&before.endpoints()[0], &before.endpoints()[1]);
        up.record(a, false);
        assert!(a.is_ejected());
        let in_flight = b.begin();

        up.set_targets(&targets(
            "{ url = \"http://127.0.0.1:1001\" }, { url = \"http://127.0.0.1:1002\", weight = 5 }, \"http://127.0.0.1:1004\"",
        ));
        let after = up.current();
        assert_eq!(after.generation(), before.generation() + 1);
        let labels: Vec<&str> = after.endpoints().iter().map(|e| &**e.label()).collect();
        assert_eq!(
            labels,
            [
                "http://127.0.0.1:1001",
                "http://127.0.0.1:1002",
                "http://127.0.0.1:1004"
            ]
        );
        assert!(after.endpoints()[0].is_ejected(), "still ejected after the change");
        assert_eq!(after.endpoints()[1].in_flight(), 1, "in-flight count carried over");
        assert_eq!(after.endpoints()[1].weight, 5, "new weight applies");
        drop(in_flight);
        assert_eq!(after.endpoints()[1].in_flight(), 0);

        // The removed endpoint is never picked again; the ejected one neither.
        for _ in 0..10 {
            let i = after.pick(&Pick::default()).expect("an endpoint");
            assert_ne!(i, 0);
        }
        // A request that started on the old set still sees it whole.
        assert_eq!(before.endpoints().len(), 3);
        assert_eq!(&**before.endpoints()[2].label(), "http://127.0.0.1:1003");
    }
}
