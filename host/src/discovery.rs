//! Service discovery: where an upstream's endpoints come from when the
//! config does not list them.
//!
//! Every back end implements [`Discovery`]: resolve the instances now, wait
//! for the next change, and (where the back end keeps a registry) register,
//! deregister and set the health of an instance. One driver, [`start`],
//! runs any of them for an upstream: it resolves once when the config loads,
//! then follows changes and hands every new set to
//! [`Upstream::set_targets`], which keeps what the proxy knows about
//! endpoints that stay and drains the others. A back end that fails keeps
//! the last good set (DNS: for its hold period) and is retried with backoff.

mod consul;
mod dns;
mod etcd;
mod file;
mod http;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{DiscoveryConfig, Target, TargetUrl};
use crate::upstream::Upstream;

pub use consul::Consul;
pub use dns::Dns;
pub use etcd::Etcd;
pub use file::File;

/// Why a discovery call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The back end cannot do this (a file has no registry).
    #[error("the {0} back end does not support {1}")]
    Unsupported(&'static str, &'static str),
    /// The back end was asked and did not give a usable answer.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

/// An instance to register with a back end that keeps a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Unique within the service: the key under etcd's prefix, Consul's
    /// service ID.
    pub id: String,
    /// Where the instance serves.
    pub url: TargetUrl,
    /// Its relative share of traffic.
    pub weight: u32,
    /// Free-form labels (Consul service metadata, etcd's `metadata`).
    pub metadata: BTreeMap<String, String>,
    /// How long the registry keeps the instance after its owner stops
    /// renewing it (etcd's lease, Consul's TTL check): a process that dies
    /// disappears by itself.
    pub ttl: Duration,
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.url)
    }
}

/// A discovery back end. Implementations live one per file next to this
/// one; the driver that feeds an upstream from any of them is [`start`].
pub trait Discovery: Send + 'static {
    /// The back end's name in logs and errors.
    const KIND: &'static str;
    /// First wait after a failed call, doubled after each failure up to
    /// [`Discovery::MAX_RETRY`].
    const FIRST_RETRY: Duration = Duration::from_millis(500);
    /// The longest wait between retries.
    const MAX_RETRY: Duration = Duration::from_secs(30);

    /// The instances now. An empty set is an answer (every instance left),
    /// not an error; back ends for which empty means "something is wrong"
    /// (an empty file, a name without records) return an error instead.
    fn resolve(&mut self) -> impl Future<Output = Result<Vec<Target>, Error>> + Send;

    /// Waits until the set may have changed and returns it then. Back ends
    /// with change notifications (file events, etcd watches, Consul
    /// blocking queries) wait for one; DNS waits for the TTL.
    fn watch(&mut self) -> impl Future<Output = Result<Vec<Target>, Error>> + Send;

    /// Adds `instance` to the registry and keeps it there (renewing its
    /// lease or TTL) while this value lives; when the owner dies, the
    /// registry drops it after `instance.ttl`.
    fn register(&self, instance: &Registration) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = instance;
        async { Err(Error::Unsupported(Self::KIND, "register")) }
    }

    /// Removes the instance `id` from the registry.
    fn deregister(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = id;
        async { Err(Error::Unsupported(Self::KIND, "deregister")) }
    }

    /// Marks the registered instance `id` as passing (served) or failing
    /// (left out of every proxy's set).
    fn set_health(&self, id: &str, passing: bool) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (id, passing);
        async { Err(Error::Unsupported(Self::KIND, "set-health")) }
    }
}

/// Resolves `upstream`'s instances now and keeps following them until the
/// upstream is dropped. Only the file back end fails here: a missing or
/// malformed instances file is a config mistake, while a DNS server, etcd
/// or Consul that does not answer yet leaves the upstream answering 503
/// until it does, rather than keeping the proxy from starting.
pub async fn start(upstream: &Arc<Upstream>, config: &DiscoveryConfig, base_dir: &Path) -> Result<(), Error> {
    match config {
        DiscoveryConfig::File { path } => follow(upstream, File::new(&base_dir.join(path))?, true, None).await,
        DiscoveryConfig::Dns(dns) => follow(upstream, Dns::new(dns)?, false, Some(dns.hold.get())).await,
        DiscoveryConfig::Etcd(etcd) => follow(upstream, Etcd::new(etcd), false, None).await,
        DiscoveryConfig::Consul(consul) => follow(upstream, Consul::new(consul), false, None).await,
    }
}

async fn follow<D: Discovery>(
    upstream: &Arc<Upstream>,
    mut backend: D,
    required: bool,
    hold: Option<Duration>,
) -> Result<(), Error> {
    let mut current = Vec::new();
    let mut last_good = None;
    match backend.resolve().await {
        Ok(targets) => {
            upstream.set_targets(&targets);
            current = targets;
            last_good = Some(Instant::now());
        }
        Err(err) if required => return Err(err),
        Err(err) => tracing::warn!(
            upstream = &**upstream.name(),
            discovery = D::KIND,
            error = %err,
            "discovery did not answer; the upstream has no endpoint until it does"
        ),
    }
    let task = tokio::spawn(run(Arc::downgrade(upstream), backend, current, last_good, hold));
    upstream.own_task(&task);
    Ok(())
}

/// The follow loop. It also stops by itself when the upstream is gone,
/// though [`Upstream::own_task`] usually aborts it first.
async fn run<D: Discovery>(
    upstream: Weak<Upstream>,
    mut backend: D,
    mut current: Vec<Target>,
    mut last_good: Option<Instant>,
    hold: Option<Duration>,
) {
    let mut retry = D::FIRST_RETRY;
    loop {
        let outcome = backend.watch().await;
        let Some(up) = upstream.upgrade() else { return };
        match outcome {
            Ok(targets) => {
                if targets != current {
                    up.set_targets(&targets);
                    current = targets;
                }
                last_good = Some(Instant::now());
                retry = D::FIRST_RETRY;
            }
            Err(err) => {
                let expired = hold.is_some_and(|hold| last_good.is_none_or(|t| t.elapsed() >= hold));
                if expired && !current.is_empty() {
                    tracing::warn!(upstream = &**up.name(), discovery = D::KIND, error = %err,
                        "discovery still failing after the hold period: dropping the last good set");
                    up.set_targets(&[]);
                    current.clear();
                } else {
                    tracing::warn!(upstream = &**up.name(), discovery = D::KIND, error = %err, retry_in = ?retry,
                        "discovery failed; keeping the last good set");
                }
                drop(up);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(D::MAX_RETRY);
            }
        }
    }
}

/// One instance as the file and etcd back ends store it:
/// `{"url": "http://10.0.0.5:8080", "weight": 1, "down": false, "metadata": {}}`.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Record {
    url: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    down: bool,
    /// Free-form labels, for humans and tools; the proxy does not read them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

impl Record {
    fn target(&self) -> Result<Target, String> {
        Target::new(&self.url, self.weight, self.down)
    }

    fn of(instance: &Registration) -> Self {
        Self {
            url: instance.url.to_string(),
            weight: instance.weight,
            down: false,
            metadata: instance
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        }
    }
}

/// Sorts instances into a stable order, so that the same set in another
/// order (DNS, Consul) is no change.
fn canonical(mut targets: Vec<Target>) -> Vec<Target> {
    targets.sort_by_cached_key(|t| t.url.to_string());
    targets.dedup_by(|a, b| a.url == b.url);
    targets
}
