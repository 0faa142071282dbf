//! Upstreams: named sets of endpoints, how one is picked, and the pooled
//! connections to them.

mod balance;
mod pool;

use std::sync::Arc;

use crate::config::{TargetUrl, UpstreamConfig, UpstreamTimeouts};
use crate::plugin::Plugin;

pub use balance::{Balance, RoundRobin};
pub use pool::{Pool, PoolError};

/// One upstream, built from its `[upstreams.NAME]` table.
#[derive(Debug)]
pub struct Upstream {
    name: Arc<str>,
    endpoints: Vec<Endpoint>,
    balancer: Box<dyn Balance>,
    /// `balancer = { plugin = "NAME" }`: asked first; the built-in balancer
    /// is the fallback when the plugin's failure is skipped.
    balancer_plugin: Option<Arc<Plugin>>,
    pool: Pool,
    timeouts: UpstreamTimeouts,
}

/// One place an upstream's requests can go.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it is.
    pub url: TargetUrl,
    /// Relative share of traffic.
    pub weight: u32,
    /// Configured out of rotation (`down = true`).
    pub down: bool,
    /// `url` as a string, kept once for logs instead of formatted per request.
    label: Arc<str>,
}

impl Upstream {
    /// Builds the upstream named `name` from its config, with the loaded
    /// balancer plugin when the config names one.
    pub fn new(name: &str, config: &UpstreamConfig, balancer_plugin: Option<Arc<Plugin>>) -> Self {
        let endpoints = config
            .targets
            .iter()
            .map(|t| Endpoint {
                label: t.url.to_string().into(),
                url: t.url.clone(),
                weight: t.weight,
                down: t.down,
            })
            .collect();
        Self {
            name: name.into(),
            endpoints,
            balancer: Box::new(RoundRobin::default()),
            balancer_plugin,
            pool: Pool::new(&config.pool, &config.timeouts),
            timeouts: config.timeouts.clone(),
        }
    }

    /// The upstream's name, as in `[upstreams.NAME]`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The index of the endpoint for the next request by the built-in
    /// balancer, or `None` when no endpoint can take traffic.
    pub fn pick_builtin(&self) -> Option<usize> {
        self.balancer.pick(&self.endpoints)
    }

    /// The balancer plugin, when the upstream has one.
    pub fn balancer_plugin(&self) -> Option<&Arc<Plugin>> {
        self.balancer_plugin.as_ref()
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
}

impl Endpoint {
    /// Whether the balancer may send this endpoint traffic.
    pub fn is_available(&self) -> bool {
        !self.down
    }

    /// `http://host:port`, for logs and error messages.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }
}
