//! Prometheus metrics: what happened (counters, histograms), kept by one
//! [`Metrics`] that lives as long as the process, across config reloads.
//!
//! What is true now (endpoint health, circuit state, requests in flight)
//! is not counted on the hot path but read from the running config when
//! `/metrics` is scraped, by [`Metrics::encode`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod sharded;

pub use sharded::{ShardedCounter, ShardedHistogram};

/// A label value that is shared or static, never copied, per request.
#[derive(Clone, Debug)]
pub enum Label {
    /// A fixed value (`-`, a method).
    Static(&'static str),
    /// A name from the config (route, upstream, endpoint).
    Shared(Arc<str>),
}

impl Label {
    /// The value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
        }
    }
}

// Equal values are one series however they are held.
impl PartialEq for Label {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Label {}

impl std::hash::Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl From<&Arc<str>> for Label {
    fn from(s: &Arc<str>) -> Self {
        Self::Shared(Arc::clone(s))
    }
}

impl From<&str> for Label {
    fn from(s: &str) -> Self {
        Self::Shared(s.into())
    }
}

/// Labels of `plumeway_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's name, or `-` when none matched.
    pub route: Label,
    /// The upstream, or `-` when none was reached.
    pub upstream: Label,
    /// The endpoint that answered last, or `-`.
    pub endpoint: Label,
    /// The request method (uncommon ones as `OTHER`, so that clients
    /// cannot grow the series without bound).
    pub method: Label,
    /// `1xx` … `5xx`.
    pub status: &'static str,
}

/// The labels of one request as the proxy holds them, borrowed: a request
/// is counted by comparing these with the label sets the thread counted
/// into last, and a [`RequestLabels`], three names cloned, is made only
/// for a set not among them.
#[derive(Clone, Copy, Debug)]
pub struct RequestKey<'a> {
    /// The route's name, if one matched.
    pub route: Option<&'a Arc<str>>,
    /// The upstream, if one was reached.
    pub upstream: Option<&'a Arc<str>>,
    /// The endpoint that answered last, if any.
    pub endpoint: Option<&'a Arc<str>>,
    /// From [`method_label`].
    pub method: &'static str,
    /// From [`status_class`].
    pub status: &'static str,
}

impl RequestKey<'_> {
    fn matches(&self, labels: &RequestLabels) -> bool {
        // A name from the config is usually the very string the set holds:
        // equal pointers need no bytes compared.
        fn same(label: &Label, value: &str) -> bool {
            let held = label.as_str();
            std::ptr::eq(held, value) || held == value
        }
        fn name(n: Option<&Arc<str>>) -> &str {
            n.map_or("-", |n| n)
        }
        labels.status == self.status
            && same(&labels.method, self.method)
            && same(&labels.endpoint, name(self.endpoint))
            && same(&labels.route, name(self.route))
            && same(&labels.upstream, name(self.upstream))
    }

    fn labels(&self) -> RequestLabels {
        let label = |n: Option<&Arc<str>>| n.map_or(Label::Static("-"), Label::from);
        RequestLabels {
            route: label(self.route),
            upstream: label(self.upstream),
            endpoint: label(self.endpoint),
            method: Label::Static(self.method),
            status: self.status,
        }
    }
}

/// Labels with a route only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name.
    pub route: Label,
}

/// Labels with an upstream only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream's name.
    pub upstream: Label,
}

/// Labels of one endpoint of one upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The upstream's name.
    pub upstream: Label,
    /// The endpoint's URL.
    pub endpoint: Label,
}

/// Labels of a health transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The upstream's name.
    pub upstream: Label,
    /// The endpoint's URL.
    pub endpoint: Label,
    /// `healthy` or `unhealthy`: the state entered.
    pub to: &'static str,
}

/// Labels with a plugin only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's name, as in `[plugins.NAME]`.
    pub plugin: Label,
}

/// Labels of a plugin failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginFailureLabels {
    /// The plugin's name.
    pub plugin: Label,
    /// `trap`, `timeout`, `memory`, `fuel`, `error`, `invalid-output` or
    /// `instantiate`.
    pub kind: &'static str,
}

/// Labels of open connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `client`, `upstream` or `websocket`.
    pub kind: &'static str,
}

/// Labels of config reloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

type Histograms<L> = Family<L, ShardedHistogram, fn() -> ShardedHistogram>;

/// Every metric plumeway keeps. Cloning shares the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Requests answered.
    pub requests: Family<RequestLabels, ShardedCounter>,
    /// Tells these series from another [`Metrics`]'s in [`RECENT`].
    id: u64,
    /// From the request head to the end of the response body.
    pub request_duration: Histograms<RouteLabels>,
    /// From sending the request upstream to its response head.
    pub upstream_duration: Histograms<EndpointLabels>,
    /// Attempts after the first.
    pub retries: Family<UpstreamLabels, Counter>,
    /// Active health check verdicts that changed an endpoint's state.
    pub health_transitions: Family<TransitionLabels, Counter>,
    /// Passive ejections (outlier detection).
    pub ejections: Family<EndpointLabels, Counter>,
    /// Plugin calls, whatever their outcome.
    pub plugin_calls: Family<PluginLabels, ShardedCounter>,
    /// Plugin calls that failed, by kind.
    pub plugin_failures: Family<PluginFailureLabels, Counter>,
    /// Plugin call latency, instance checkout included.
    pub plugin_duration: Histograms<PluginLabels>,
    /// Connections open now.
    pub connections: Family<ConnectionLabels, Gauge>,
    /// Config reloads.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Requests whose response is not over yet.
    pub requests_in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency() -> ShardedHistogram {
    // 100µs to ~52s, doubling: covers a plugin call and a slow upstream.
    ShardedHistogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 20,
    ))
}

fn plugin_latency() -> ShardedHistogram {
    // 2µs to ~1s, doubling: plugin calls are microseconds when healthy.
    ShardedHistogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_002, 2.0, 20,
    ))
}

impl Metrics {
    /// Empty series.
    pub fn new() -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            requests: Family::default(),
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            request_duration: Family::new_with_constructor(latency),
            upstream_duration: Family::new_with_constructor(latency),
            retries: Family::default(),
            health_transitions: Family::default(),
            ejections: Family::default(),
            plugin_calls: Family::default(),
            plugin_failures: Family::default(),
            plugin_duration: Family::new_with_constructor(plugin_latency),
            connections: Family::default(),
            reloads: Family::default(),
            requests_in_flight: Gauge::default(),
        }
    }

    /// The registry to encode: every family, under `plumeway_`.
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("plumeway");
        r.register("requests", "Requests answered", self.requests.clone());
        r.register(
            "request_duration_seconds",
            "Time from the request head to the end of the response body",
            self.request_duration.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head",
            self.upstream_duration.clone(),
        );
        r.register("retries", "Upstream attempts after the first", self.retries.clone());
        r.register(
            "health_transitions",
            "Endpoint state changes from active health checks",
            self.health_transitions.clone(),
        );
        r.register(
            "ejections",
            "Endpoints ejected by passive health checks",
            self.ejections.clone(),
        );
        r.register("plugin_calls", "Plugin calls", self.plugin_calls.clone());
        r.register(
            "plugin_failures",
            "Plugin calls that failed, by kind",
            self.plugin_failures.clone(),
        );
        r.register(
            "plugin_call_duration_seconds",
            "Plugin call latency",
            self.plugin_duration.clone(),
        );
        r.register("open_connections", "Connections open now", self.connections.clone());
        r.register("config_reloads", "Config reloads", self.reloads.clone());
        r.register(
            "requests_in_flight",
            "Requests whose response is not over yet",
            self.requests_in_flight.clone(),
        );
        r
    }

    /// The Prometheus text exposition (version 0.0.4): the kept series,
    /// then the live state of `upstreams` as gauges.
    pub fn encode(&self, upstreams: &[Arc<crate::upstream::Upstream>]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry()).is_err() {
            out.push_str("# encoding failed\n");
        }
        live_state(&mut out, upstreams);
        out
    }

    /// Requests whose response is not over yet.
    pub fn in_flight(&self) -> i64 {
        self.requests_in_flight.get()
    }

    /// Counts one request.
    pub fn request(&self, key: RequestKey<'_>, route: Option<&ShardedHistogram>, took: Duration) {
        RECENT.with_borrow_mut(|recent| {
            if let Some(i) = recent.iter().position(|(id, l, _)| *id == self.id && key.matches(l)) {
                recent[i].2.inc();
                return;
            }
            let labels = key.labels();
            let counter = self.requests.get_or_create_owned(&labels);
            counter.inc();
            if recent.len() == RECENT_SETS {
                recent.pop();
            }
            recent.insert(0, (self.id, labels, counter));
        });
        if let Some(h) = route {
            h.observe(took.as_secs_f64());
        }
    }
}

/// How many label sets of `plumeway_requests_total` each thread keeps at
/// hand: a route's endpoints, say.
const RECENT_SETS: usize = 8;

thread_local! {
    /// The request counters this thread counted into last. Finding one in
    /// the family hashes its five labels with SipHash under a lock, on every
    /// request; most requests repeat a label set seen a moment ago, and
    /// comparing a few short strings is cheaper.
    static RECENT: std::cell::RefCell<Vec<(u64, RequestLabels, ShardedCounter)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `1xx` … `5xx` for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The method as a bounded label.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Per-endpoint gauges read at scrape time.
fn live_state(out: &mut String, upstreams: &[Arc<crate::upstream::Upstream>]) {
    type Read = fn(&crate::upstream::Endpoint) -> i64;
    let gauges: [(&str, &str, Read); 5] = [
        (
            "plumeway_endpoint_healthy",
            "1 if active health checks pass (or none are configured)",
            |e| i64::from(e.is_healthy()),
        ),
        (
            "plumeway_endpoint_ejected",
            "1 while passive health checks keep the endpoint out",
            |e| i64::from(e.is_ejected()),
        ),
        (
            "plumeway_endpoint_available",
            "1 if the endpoint may take traffic now",
            |e| i64::from(e.is_available()),
        ),
        (
            "plumeway_endpoint_circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            |e| match e.circuit() {
                Some(crate::upstream::CircuitState::Open) => 2,
                Some(crate::upstream::CircuitState::HalfOpen) => 1,
                _ => 0,
            },
        ),
        (
            "plumeway_endpoint_in_flight",
            "Requests in flight to the endpoint",
            |e| i64::from(e.in_flight()),
        ),
    ];
    let sets: Vec<_> = upstreams.iter().map(|u| (u.name().clone(), u.current())).collect();
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} gauge");
        for (upstream, set) in &sets {
            for e in set.endpoints() {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",endpoint=\"{}\"}} {}",
                    escape(upstream),
                    escape(e.label()),
                    value(e)
                );
            }
        }
    }
}

/// Escapes a label value for the text format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(names: &'a [Arc<str>], endpoint: usize, status: &'static str) -> RequestKey<'a> {
        RequestKey {
            route: Some(&names[0]),
            upstream: Some(&names[1]),
            endpoint: Some(&names[2 + endpoint]),
            method: "GET",
            status,
        }
    }

    #[test]
    fn requests_count_into_their_own_series_and_registry() {
        let (one, two) = (Metrics::new(), Metrics::new());
        let took = Duration::from_millis(1);
        // The route, the upstream, then more endpoints than a thread keeps
        // label sets at hand.
        let names: Vec<Arc<str>> = ["r".to_owned(), "u".to_owned()]
            .into_iter()
            .chain((0..RECENT_SETS + 2).map(|i| format!("e{i}")))
            .map(Arc::from)
            .collect();
        // Each set in turn, twice.
        for _ in 0..2 {
            for e in 0..RECENT_SETS + 2 {
                one.request(key(&names, e, "2xx"), None, took);
            }
        }
        one.request(key(&names, 0, "5xx"), None, took);
        // A set this thread just counted for `one` is another series in `two`.
        let last = RECENT_SETS + 1;
        two.request(key(&names, last, "2xx"), None, took);
        // The same values in other allocations are the same series.
        let copies: Vec<Arc<str>> = names.iter().map(|n| Arc::from(&**n)).collect();
        one.request(key(&copies, 1, "2xx"), None, took);
        // No route: counted under `-`.
        one.request(
            RequestKey {
                route: None,
                ..key(&names, 1, "2xx")
            },
            None,
            took,
        );
        let count = |m: &Metrics, k: RequestKey<'_>| m.requests.get_or_create(&k.labels()).get();
        assert_eq!(count(&one, key(&names, 0, "2xx")), 2);
        assert_eq!(count(&one, key(&names, 1, "2xx")), 3);
        assert_eq!(count(&one, key(&names, last, "2xx")), 2);
        assert_eq!(count(&one, key(&names, 0, "5xx")), 1);
        assert_eq!(
            count(
                &one,
                RequestKey {
                    route: None,
                    ..key(&names, 1, "2xx")
                }
            ),
            1
        );
        let dash = RequestLabels {
            route: Label::Static("-"),
            ..key(&names, 1, "2xx").labels()
        };
        assert_eq!(one.requests.get_or_create(&dash).get(), 1);
        assert_eq!(count(&two, key(&names, last, "2xx")), 1);
        assert_eq!(count(&two, key(&names, 1, "2xx")), 0);
    }
}
